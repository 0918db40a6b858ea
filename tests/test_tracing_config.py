"""
Tests for the tracing options: C{--trace-otlp} and C{--trace-sample} on the
command line and as C{trace_otlp}/C{trace_sample} in the TOML file
(process-wide), their one-line errors, C{--help}, the service wiring, the
metrics and the access log's JSON fields.
"""

from __future__ import annotations

import io
import json
import os
import sys
import tempfile

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from txproxy.accesslog import AccessRecord, formatCombined, formatJSON
from txproxy.config import ConfigError, fromFlags, fromTOML
from txproxy.metrics import Metrics
from txproxy.runtime import tap
from txproxy.runtime.service import ProxyService
from txproxy.tracing import BatchExporter, TracingCollector, TracingService

URL = "http://127.0.0.1:4318/v1/traces"


class OptionsTests(SynchronousTestCase):
    """
    Parsing and checking the options.
    """

    def test_flags(self) -> None:
        """
        The flags set the process-wide values; tracing is off by default.
        """
        c = fromFlags([], [("trace-otlp", URL), ("trace-sample", "0.25")])
        self.assertEqual((c.traceOtlp, c.traceSample), (URL, 0.25))
        c = fromFlags([], [])
        self.assertEqual((c.traceOtlp, c.traceSample), (None, 1.0))

    def test_toml(self) -> None:
        """
        The TOML file takes C{trace_otlp} and C{trace_sample} at the top
        level (not per listener).
        """
        c = fromTOML({"trace_otlp": URL, "trace_sample": 0, "listeners": [{"listen": ["tcp:1"]}]})
        self.assertEqual((c.traceOtlp, c.traceSample), (URL, 0.0))
        e = self.assertRaises(ConfigError, fromTOML, {"listeners": [{"listen": ["tcp:1"], "trace_otlp": URL}]})
        self.assertIn("unknown key", str(e))

    def test_badValues(self) -> None:
        """
        A ratio outside 0..1 or not a number, a URL that is not http(s), and
        a ratio without a URL are errors naming the option.
        """
        for options, needle in [
            ([("trace-otlp", URL), ("trace-sample", "1.5")], "--trace-sample: must be from 0 to 1"),
            ([("trace-otlp", URL), ("trace-sample", "-0.1")], "--trace-sample: must be zero or more"),
            ([("trace-otlp", URL), ("trace-sample", "half")], "--trace-sample: expected a number"),
            ([("trace-otlp", "ftp://x/")], "--trace-otlp: bad URL"),
            ([("trace-otlp", "127.0.0.1:4318")], "--trace-otlp: bad URL"),
            ([("trace-otlp", "http://h:99999/")], "--trace-otlp: bad URL"),
            ([("trace-sample", "0.5")], "--trace-sample needs --trace-otlp"),
        ]:
            e = self.assertRaises(ConfigError, fromFlags, [], options)
            self.assertIn(needle, str(e), options)
        e = self.assertRaises(ConfigError, fromTOML, {"trace_sample": 0.5, "listeners": [{"listen": ["tcp:1"]}]})
        self.assertIn("trace_sample needs trace_otlp", str(e))

    def test_flagOverridesFile(self) -> None:
        """
        With C{--config}, the flags may still set the tracing options; a
        ratio needs a URL from either.
        """
        folder = tempfile.mkdtemp()
        path = os.path.join(folder, "c.toml")
        with open(path, "w") as f:
            f.write(f'trace_otlp = "{URL}"\n[[listeners]]\nlisten = ["tcp:1"]\n')
        c = fromFlags([], [("trace-sample", "0.1")], configFile=path)
        self.assertEqual((c.traceOtlp, c.traceSample), (URL, 0.1))
        with open(path, "w") as f:
            f.write('[[listeners]]\nlisten = ["tcp:1"]\n')
        self.assertRaises(ConfigError, fromFlags, [], [("trace-sample", "0.1")], configFile=path)

    def test_commandLineErrorIsOneLine(self) -> None:
        """
        On the command line a mistake is one line on stderr and exit 2.
        """
        err = io.StringIO()
        self.patch(sys, "__stderr__", err)
        e = self.assertRaises(SystemExit, tap.Options().parseOptions,
                              ["--trace-otlp", URL, "--trace-sample", "2"])
        self.assertEqual(e.code, 2)
        self.assertEqual(err.getvalue().count("\n"), 1)
        self.assertIn("--trace-sample", err.getvalue())

    def test_help(self) -> None:
        """
        C{--help} lists both options.
        """
        text = str(tap.Options())
        self.assertIn("--trace-otlp", text)
        self.assertIn("--trace-sample", text)


class ServiceTests(SynchronousTestCase):
    """
    The proxy service builds one tracer for every listener.
    """

    def test_wiring(self) -> None:
        """
        With C{--trace-otlp}, a L{TracingService} is a child of the proxy
        service and every listener's factory holds its tracer; without, no
        factory has one.
        """
        config = fromFlags(["tcp:0"], [("trace-otlp", URL), ("trace-sample", "0.5")])
        service = ProxyService(config, Clock())
        self.assertIsInstance(service.tracing, TracingService)
        self.assertEqual(service.tracer.sampler.ratio, 0.5)
        self.assertIn(service.tracing, list(service))
        for factory in service.factories.values():
            self.assertIs(factory.tracer, service.tracer)
        admin = ProxyService(fromFlags(["tcp:0"], [("trace-otlp", URL), ("admin", "tcp:0")]), Clock())
        self.assertIn("txproxy_trace_spans_dropped_total", admin.metrics.exposition().decode())
        off = ProxyService(fromFlags(["tcp:0"], []), Clock())
        self.assertIsNone(off.tracing)
        for factory in off.factories.values():
            self.assertIsNone(factory.tracer)

    def test_droppedMetric(self) -> None:
        """
        C{txproxy_trace_spans_dropped_total} reads the exporter's count.
        """
        metrics = Metrics(processMetrics=False)
        exporter = BatchExporter(lambda body: None, Clock())  # type: ignore[arg-type,return-value]
        exporter.dropped = 7
        exporter.exported = 3
        metrics.registry.register(TracingCollector(exporter, metrics.worker))
        text = metrics.exposition().decode()
        self.assertIn('txproxy_trace_spans_dropped_total{worker="0"} 7.0', text)
        self.assertIn('txproxy_trace_spans_exported_total{worker="0"} 3.0', text)
        self.assertNotIn("txproxy_trace_spans", Metrics(processMetrics=False).exposition().decode())


class AccessLogTests(SynchronousTestCase):
    """
    The access log's trace fields.
    """

    def test_json(self) -> None:
        """
        JSON lines carry C{trace_id} and C{span_id} when tracing gave them,
        and neither key otherwise; the combined format is unchanged.
        """
        traced = AccessRecord("1.2.3.4", "GET", "/", 200, 0.0, traceId="a" * 32, spanId="b" * 16)
        line = json.loads(formatJSON(traced))
        self.assertEqual((line["trace_id"], line["span_id"]), ("a" * 32, "b" * 16))
        self.assertNotIn("traceId", line)
        plain = AccessRecord("1.2.3.4", "GET", "/", 200, 0.0)
        self.assertNotIn("trace_id", json.loads(formatJSON(plain)))
        self.assertEqual(formatCombined(traced), formatCombined(plain))
