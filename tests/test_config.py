# -*- test-case-name: tests.test_config -*-
"""
Tests for L{txproxy.config}: flags and TOML into validated objects, and the
one-line errors for every kind of mistake.
"""

from __future__ import annotations

import os
import socket
import tempfile
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from txproxy import config
from txproxy.config import ConfigError, fromFlags, fromTOML, loadFile


class ValueParsingTests(SynchronousTestCase):
    def test_rates(self) -> None:
        """
        Rates are N/s, N/m or N/h, fractions allowed, and convert to tokens
        per second.
        """
        self.assertEqual(config.parseRate("10/s").perSecond, 10)
        self.assertEqual(config.parseRate("0.5/s").perSecond, 0.5)
        self.assertEqual(config.parseRate("120/m").perSecond, 2)
        self.assertAlmostEqual(config.parseRate("36/h").perSecond, 0.01)

    def test_badRates(self) -> None:
        """
        Anything else is a one-line error naming the value.
        """
        for bad in ["10", "10/d", "x/s", "-1/s", "0/s", "inf/s", "nan/s", ""]:
            e = self.assertRaises(ConfigError, config.parseRate, bad)
            self.assertIn("bad rate", str(e))
            self.assertNotIn("\n", str(e))

    def test_ports(self) -> None:
        """
        Port lists take single ports and ranges; C{*} is any port.
        """
        ports = config.parsePorts("443,8443,9000-9100")
        for p in (443, 8443, 9000, 9050, 9100):
            self.assertIn(p, ports)
        for p in (80, 8999, 9101, 0):
            self.assertNotIn(p, ports)
        self.assertIn(22, config.parsePorts("*"))
        self.assertNotIn(70000, config.parsePorts("*"))

    def test_badPorts(self) -> None:
        """
        Out-of-range ports, reversed ranges and junk are rejected.
        """
        for bad in ["", "0", "65536", "100-50", "a", "1,,2", "1-2-3"]:
            self.assertRaises(ConfigError, config.parsePorts, bad)

    def test_cidrs(self) -> None:
        """
        CIDR sets match IPv4 and IPv6 addresses, IPv4-mapped IPv6 as IPv4,
        and never match junk.
        """
        nets = config.parseCIDRs(["10.0.0.0/8", "::1", "2001:db8::/32"])
        self.assertIn("10.1.2.3", nets)
        self.assertIn("::ffff:10.1.2.3", nets)
        self.assertIn("::1", nets)
        self.assertIn("2001:db8::5", nets)
        self.assertNotIn("11.0.0.1", nets)
        self.assertNotIn("not an ip", nets)
        self.assertRaises(ConfigError, config.parseCIDRs, ["10.0.0.0/33"])

    def test_routes(self) -> None:
        """
        Routes parse host, optional prefix and a pool of URLs.
        """
        r = config.parseRoute("API.example.com/v1=http://10.0.0.1:8080,https://[::1]:8443")
        self.assertEqual(r.host, "api.example.com")
        self.assertEqual(r.prefix, "/v1")
        self.assertEqual(
            r.upstreams,
            (config.UpstreamURL("http", "10.0.0.1", 8080), config.UpstreamURL("https", "::1", 8443)),
        )
        self.assertEqual(config.parseRoute("*.example.com=http://a").upstreams[0].port, 80)
        self.assertEqual(config.parseRoute("*=tcp://a:1").host, "*")

    def test_badRoutes(self) -> None:
        """
        Malformed routes are one-line errors.
        """
        for bad in ["a.test", "=http://x:1", "a=", "a=ftp://x:1", "a=tcp://x", "a*b=http://x",
                    "a=http://x:99999", "a=http://x:1/path", "a=http://[::1:80"]:
            e = self.assertRaises(ConfigError, config.parseRoute, bad)
            self.assertNotIn("\n", str(e))


class FlagTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        """
        With no flags: one forward listener on tcp:3128 with the documented
        defaults.
        """
        c = fromFlags([], [])
        (listener,) = c.listeners
        self.assertEqual(listener.listen, ("tcp:3128",))
        self.assertEqual(listener.mode, "forward")
        self.assertIn(443, listener.connectPorts)
        self.assertNotIn(80, listener.connectPorts)
        self.assertEqual(listener.maxHeadSize, 65536)
        self.assertEqual(c.drainTimeout, 30)

    def test_repeatableOptions(self) -> None:
        """
        Repeatable flags accumulate in order; every --listen shares one
        listener config.
        """
        c = fromFlags(["tcp:1", "tcp:2"], [("deny-dest", "10.0.0.0/8"), ("deny-dest", "::1")])
        (listener,) = c.listeners
        self.assertEqual(listener.listen, ("tcp:1", "tcp:2"))
        self.assertIn("10.9.9.9", listener.denyDest)
        self.assertIn("::1", listener.denyDest)

    def test_burstDefaultsToOneSecondOfRate(self) -> None:
        """
        Without --burst the bucket holds one second of the rate, at least 1.
        """
        self.assertEqual(fromFlags([], [("rate", "10/s")]).listeners[0].effectiveBurst, 10)
        self.assertEqual(fromFlags([], [("rate", "0.5/s")]).listeners[0].effectiveBurst, 1)
        self.assertEqual(fromFlags([], [("rate", "1/s"), ("burst", "5")]).listeners[0].effectiveBurst, 5)

    def test_crossChecks(self) -> None:
        """
        Options that make no sense together are rejected with a reason.
        """
        cases = [
            ([("mode", "tcp")], "needs at least one --upstream"),
            ([("upstream", "tcp:a:1")], "only for mode tcp"),
            ([("mode", "reverse")], "needs at least one --route"),
            ([("route", "a=http://b")], "only for modes reverse and sni"),
            ([("mode", "sni"), ("route", "a=http://b:1")], "not allowed in mode sni"),
            ([("mode", "reverse"), ("route", "a=tcp://b:1")], "not allowed in mode reverse"),
            ([("burst", "5")], "--burst needs --rate"),
            ([("proxy-protocol-send", "v1")], "not for mode forward"),
            ([("mode", "tcp"), ("upstream", "tcp:a:1"), ("auth", "f")], "only for mode forward"),
            ([("mode", "bogus")], "expected one of"),
            ([("connect-timeout", "0")], "must be"),
            ([("connect-timeout", "soon")], "expected a number"),
            ([("max-head-size", "10")], "at least 256"),
            ([("redis", "http://x")], "bad Redis URL"),
            ([("redis", "redis://x:1/abc")], "database must be a number"),
        ]
        for options, message in cases:
            e = self.assertRaises(ConfigError, fromFlags, [], options)
            self.assertIn(message, str(e), options)

    def test_configExcludesListenerFlags(self) -> None:
        """
        --config and listener flags don't mix; process flags override the
        file.
        """
        path = self._write('[[listeners]]\nlisten = ["tcp:1"]\n')
        e = self.assertRaises(ConfigError, fromFlags, [], [("mode", "tcp")], path)
        self.assertIn("cannot be combined with --config", str(e))
        self.assertRaises(ConfigError, fromFlags, ["tcp:2"], [], path)
        c = fromFlags([], [("drain-timeout", "5")], path)
        self.assertEqual(c.drainTimeout, 5)
        self.assertEqual(c.configFile, path)

    def _write(self, text: str) -> str:
        fd, path = tempfile.mkstemp(suffix=".toml")
        os.write(fd, text.encode())
        os.close(fd)
        self.addCleanup(os.remove, path)
        return path


class TOMLTests(SynchronousTestCase):
    def test_fullFile(self) -> None:
        """
        A file with several listeners, routes and process settings parses
        into the same objects the flags make.
        """
        data: Any = {
            "admin": "tcp:9901:interface=127.0.0.1",
            "redis": "redis://127.0.0.1:6379/0",
            "drain_timeout": 5,
            "access_log": "-",
            "access_log_format": "json",
            "listeners": [
                {"listen": ["tcp:3128"], "connect_ports": "443,8443", "rate": "10/s", "burst": 20,
                 "allow": ["10.0.0.0/8"], "idle_timeout": 30},
                {"listen": "tcp:2222", "mode": "tcp", "upstreams": ["tcp:10.0.0.5:22"], "name": "ssh"},
                {"listen": ["tcp:8080"], "mode": "reverse", "routes": [
                    {"host": "a.test", "prefix": "/api", "upstreams": ["http://127.0.0.1:9000"],
                     "balance": "leastconn", "health_check": {"type": "http", "path": "/health", "rise": 1}},
                ]},
            ],
        }
        c = fromTOML(data)
        self.assertEqual(c.admin, ("tcp:9901:interface=127.0.0.1",))
        self.assertEqual(c.accessLogFormat, "json")
        first, ssh, rev = c.listeners
        self.assertEqual(first, fromFlags(["tcp:3128"], [
            ("connect-ports", "443,8443"), ("rate", "10/s"), ("burst", "20"), ("allow", "10.0.0.0/8"),
            ("idle-timeout", "30"), ("name", "listener0")]).listeners[0])
        self.assertEqual(ssh.name, "ssh")
        self.assertEqual(ssh.listen, ("tcp:2222",))
        route = rev.routes[0]
        self.assertEqual(route.balance, "leastconn")
        self.assertEqual(route.healthCheck, config.HealthCheck(kind="http", path="/health", rise=1))

    def test_upstreamCA(self) -> None:
        """
        C{upstream_ca} in a listener table is C{--upstream-ca}; a non-string
        names its path.
        """
        c = fromTOML({"listeners": [{"listen": ["tcp:8080"], "mode": "reverse", "upstream_ca": "ca.pem",
                                     "routes": [{"host": "*", "upstreams": ["https://127.0.0.1:9000"]}]}]})
        self.assertEqual(c.listeners[0].upstreamCA, "ca.pem")
        flags = fromFlags(["tcp:8080"], [("mode", "reverse"), ("route", "*=https://127.0.0.1:9000"),
                                         ("upstream-ca", "ca.pem")])
        self.assertEqual(flags.listeners[0].upstreamCA, "ca.pem")
        e = self.assertRaises(ConfigError, fromTOML, {"listeners": [{"listen": ["tcp:1"], "upstream_ca": 1}]})
        self.assertIn("upstream_ca", str(e))

    def test_errorsNameTheirPath(self) -> None:
        """
        Unknown keys and type errors name the key path.
        """
        cases = [
            ({"listeners": [{}, {"mode": "reverse", "routes": [{"host": "a", "upstrems": []}]}]},
             "listeners[1].routes[0].upstrems: unknown key"),
            ({"listeners": [{"burst": "x", "rate": "1/s"}]}, "listeners[0].burst: expected a number"),
            ({"listeners": [{"allow": ["10.0.0.0/8", "nope"]}]}, "listeners[0].allow[1]"),
            ({"listeners": [{"idle_timeout": True}]}, "listeners[0].idle_timeout"),
            ({"listeners": [{"mode": "reverse", "routes": [{"host": "a", "upstreams": ["http://x"],
                                                           "health_check": {"rise": 0}}]}]},
             "listeners[0].routes[0].health_check.rise"),
            ({"listenrs": []}, "listenrs: unknown key"),
            ({}, "at least one [[listeners]]"),
            ({"listeners": [{"name": "a"}, {"name": "a"}]}, "used twice"),
            ({"listeners": [{"listen": []}]}, "listeners[0].listen"),
            ({"workers": 0, "listeners": [{}]}, "workers"),
        ]
        for data, message in cases:
            e = self.assertRaises(ConfigError, fromTOML, data)
            self.assertIn(message, str(e))

    def test_socketTuningKeys(self) -> None:
        """
        C{tcp_nodelay}, C{keepalive}, the keep-alive timers and the buffer
        sizes are listener keys of the file (default: no-delay on,
        keep-alive off, kernel buffers).
        """
        default = fromTOML({"listeners": [{}]}).listeners[0]
        self.assertEqual(
            (default.tcpNoDelay, default.keepAlive, default.keepAliveIdle, default.sendBuffer, default.receiveBuffer),
            (True, False, None, None, None),
        )
        keys = {"tcp_nodelay": False, "keepalive": True, "send_buffer": 262144, "receive_buffer": 1024}
        if hasattr(socket, "TCP_KEEPIDLE"):
            keys.update(keepalive_idle=60, keepalive_interval=10, keepalive_count=5)
        listener = fromTOML({"listeners": [keys]}).listeners[0]
        self.assertEqual(
            (listener.tcpNoDelay, listener.keepAlive, listener.sendBuffer, listener.receiveBuffer),
            (False, True, 262144, 1024),
        )
        if hasattr(socket, "TCP_KEEPIDLE"):
            self.assertEqual(
                (listener.keepAliveIdle, listener.keepAliveInterval, listener.keepAliveCount), (60, 10, 5)
            )

    def test_socketTuningErrorsNameTheirPath(self) -> None:
        """
        Bad tuning values are one-line errors naming the key path: not a
        boolean, not a whole number, zero or negative, absurdly large, or a
        keep-alive timer without C{keepalive = true}.
        """
        cases = [
            ({"tcp_nodelay": "yes"}, "listeners[1].tcp_nodelay: expected true or false, got 'yes'"),
            ({"keepalive": 1}, "listeners[1].keepalive: expected true or false"),
            ({"send_buffer": 0}, "listeners[1].send_buffer: must be at least 1024, got 0"),
            ({"send_buffer": -5}, "listeners[1].send_buffer: must be at least 1024"),
            ({"receive_buffer": 2**31}, "listeners[1].receive_buffer: must be at most 1073741824"),
            ({"receive_buffer": "64k"}, "listeners[1].receive_buffer: expected a number"),
            ({"receive_buffer": 65536.5}, "listeners[1].receive_buffer: expected a whole number"),
            ({"keepalive": True, "keepalive_idle": 0}, "listeners[1].keepalive_idle: must be at least 1"),
            ({"keepalive": True, "keepalive_interval": 40000}, "listeners[1].keepalive_interval: must be at most 32767"),
            ({"keepalive": True, "keepalive_count": 128}, "listeners[1].keepalive_count: must be at most 127"),
            ({"keepalive_idle": 60}, "listeners[1].keepalive_idle: needs keepalive = true"),
            ({"keepalive": False, "keepalive_count": 3}, "listeners[1].keepalive_count: needs keepalive = true"),
            ({"tcp-nodelay": True}, "listeners[1].tcp-nodelay: unknown key"),
        ]
        for keys, message in cases:
            e = self.assertRaises(ConfigError, fromTOML, {"listeners": [{}, keys]})
            self.assertIn(message, str(e), keys)
            self.assertNotIn("\n", str(e))

    def test_upstreamTablesWithProxyProtocol(self) -> None:
        """
        tcp-mode C{upstreams} and route C{upstreams} (sni and reverse) may
        mix strings and tables (C{endpoint}/C{url} and
        C{proxy_protocol_send}: C{v1}, C{v2} or C{none}); a route's own
        C{proxy_protocol_send} may be C{none}.
        """
        c = fromTOML({"listeners": [
            {"mode": "tcp", "proxy_protocol_send": "v1", "upstreams": [
                "tcp:10.0.0.5:22",
                {"endpoint": "tcp:10.0.0.6:22", "proxy_protocol_send": "v2"},
                {"endpoint": " tcp:10.0.0.7:22", "proxy_protocol_send": "none"},
                {"endpoint": "tcp:10.0.0.8:22"},
            ]},
            {"mode": "sni", "routes": [{"host": "a.test", "proxy_protocol_send": "none", "upstreams": [
                {"url": "tcp://10.0.0.9:443", "proxy_protocol_send": "v2"}, "tcp://10.0.0.10:443",
            ]}]},
        ]})
        tcp, sni = c.listeners
        self.assertEqual(tcp.upstreams, ("tcp:10.0.0.5:22", "tcp:10.0.0.6:22", " tcp:10.0.0.7:22", "tcp:10.0.0.8:22"))
        self.assertEqual(tcp.proxyProtocolSend, "v1")
        self.assertEqual(tcp.proxyProtocolByUpstream, (("tcp:10.0.0.6:22", "v2"), ("tcp:10.0.0.7:22", "none")))
        route = sni.routes[0]
        self.assertEqual([str(u) for u in route.upstreams], ["tcp://10.0.0.9:443", "tcp://10.0.0.10:443"])
        self.assertEqual(route.proxyProtocolByUpstream, (("tcp://10.0.0.9:443", "v2"),))
        self.assertEqual(route.proxyProtocolSend, "none")
        plain = fromTOML({"listeners": [{"mode": "tcp", "upstreams": ["tcp:10.0.0.5:22"]}]}).listeners[0]
        self.assertEqual(plain.proxyProtocolByUpstream, ())
        reverse = fromTOML({"listeners": [{"mode": "reverse", "proxy_protocol_send": "v1", "routes": [
            {"host": "a.test", "proxy_protocol_send": "v2", "upstreams": [
                {"url": "http://10.0.0.11:80", "proxy_protocol_send": "none"}, "http://10.0.0.12:80"]},
        ]}]}).listeners[0]
        self.assertEqual(reverse.proxyProtocolSend, "v1")
        self.assertEqual(reverse.routes[0].proxyProtocolSend, "v2")
        self.assertEqual(reverse.routes[0].proxyProtocolByUpstream, (("http://10.0.0.11:80", "none"),))

    def test_upstreamTableErrorsNameTheirPath(self) -> None:
        """
        Mistakes in upstream tables name their key path.
        """
        tcp = {"mode": "tcp"}
        cases = [
            (dict(tcp, upstreams=[{"endpoint": "tcp:a:1", "proxy_protocol_send": "v3"}]),
             "listeners[1].upstreams[0].proxy_protocol_send: expected one of v1, v2, none, got 'v3'"),
            (dict(tcp, upstreams=["tcp:a:1", {"url": "tcp:a:2"}]), "listeners[1].upstreams[1].url: unknown key"),
            (dict(tcp, upstreams=[{"proxy_protocol_send": "v1"}]), "listeners[1].upstreams[0].endpoint: missing"),
            (dict(tcp, upstreams=[{"endpoint": 22}]),
             "listeners[1].upstreams[0].endpoint: expected a non-empty string"),
            (dict(tcp, upstreams=["tcp:a:1", {"endpoint": "tcp:a:1", "proxy_protocol_send": "v1"}]),
             "listeners[1].upstreams[1]: tcp:a:1 is also upstreams[0], with another proxy_protocol_send"),
            (dict(tcp, upstreams=["tcp:a:1"], proxy_protocol_send="none"),
             "listeners[1].proxy_protocol_send: expected one of v1, v2, got 'none'"),
            ({"mode": "sni", "routes": [{"host": "a", "upstreams": [{"url": "tcp://a:1", "proxy_protocol": "v1"}]}]},
             "listeners[1].routes[0].upstreams[0].proxy_protocol: unknown key"),
            ({"mode": "sni", "routes": [{"host": "a", "upstreams": [{"url": "tcp:/a", "proxy_protocol_send": "v1"}]}]},
             "listeners[1].routes[0].upstreams[0].url: bad upstream URL"),
            ({"mode": "sni", "routes": [{"host": "a", "upstreams": [{"proxy_protocol_send": "v1"}]}]},
             "listeners[1].routes[0].upstreams[0].url: missing"),
            ({"mode": "sni", "routes": [{"host": "a", "proxy_protocol_send": "v9", "upstreams": ["tcp://a:1"]}]},
             "listeners[1].routes[0].proxy_protocol_send: expected one of v1, v2, none"),
        ]
        for keys, message in cases:
            e = self.assertRaises(ConfigError, fromTOML, {"listeners": [{}, keys]})
            self.assertIn(message, str(e), keys)
            self.assertNotIn("\n", str(e))

    def test_socketTuningHasNoFlags(self) -> None:
        """
        The tuning keys are the file's only: no flag spells them.
        """
        for name in ("tcp-nodelay", "keepalive", "keepalive-idle", "send-buffer", "receive-buffer"):
            self.assertNotIn(name, config.LISTENER_OPTION_NAMES)
            e = self.assertRaises(ConfigError, fromFlags, [], [(name, "1")])
            self.assertIn(f"unknown option --{name}", str(e))

    def test_loadFileErrors(self) -> None:
        """
        Unreadable files and invalid TOML are one-line errors naming the file.
        """
        e = self.assertRaises(ConfigError, loadFile, "/nonexistent/x.toml")
        self.assertIn("cannot read config file", str(e))
        fd, path = tempfile.mkstemp(suffix=".toml")
        os.write(fd, b"[[listeners]\n")
        os.close(fd)
        self.addCleanup(os.remove, path)
        e = self.assertRaises(ConfigError, loadFile, path)
        self.assertIn("invalid TOML", str(e))
        self.assertNotIn("\n", str(e))


class MaxHeadersTests(SynchronousTestCase):
    def test_flagAndFile(self) -> None:
        """
        --max-headers (flag) and max_headers (per listener in the file) set
        ListenerConfig.maxHeaders; the default is 256.
        """
        self.assertEqual(fromFlags([], []).listeners[0].maxHeaders, 256)
        self.assertEqual(fromFlags([], [("max-headers", "32")]).listeners[0].maxHeaders, 32)
        c = fromTOML({"listeners": [{"listen": ["tcp:1"], "max_headers": 7}]})
        self.assertEqual(c.listeners[0].maxHeaders, 7)

    def test_badValues(self) -> None:
        """
        --max-headers takes a whole number of at least 1.
        """
        for bad in ["0", "-3", "many", "1.5"]:
            e = self.assertRaises(ConfigError, fromFlags, [], [("max-headers", bad)])
            self.assertIn("--max-headers", str(e))


class HTTP2OptionTests(SynchronousTestCase):
    """
    C{--http2 on|off} and C{--h2-max-streams N}: per listener, from the
    flags and from the file, validated with one-line errors naming the
    option, and refused outside the HTTP modes.
    """

    def test_defaults(self) -> None:
        """
        Without either option an HTTP listener has HTTP/2 on with 100
        concurrent streams; the record's own defaults are the same.
        """
        listener = fromFlags([], []).listeners[0]
        self.assertIs(listener.http2, True)
        self.assertEqual(listener.h2MaxStreams, 100)
        bare = config.ListenerConfig(listen=("tcp:1",))
        self.assertIs(bare.http2, True)
        self.assertEqual(bare.h2MaxStreams, 100)

    def test_flags(self) -> None:
        """
        C{--http2 off} turns HTTP/2 off, C{--http2 on} keeps it on, and
        C{--h2-max-streams} takes a whole number from 1 to 2**31-1, in
        forward and reverse mode alike.
        """
        self.assertIs(fromFlags([], [("http2", "off")]).listeners[0].http2, False)
        self.assertIs(fromFlags([], [("http2", "on")]).listeners[0].http2, True)
        self.assertEqual(fromFlags([], [("h2-max-streams", "1")]).listeners[0].h2MaxStreams, 1)
        top = fromFlags([], [("h2-max-streams", str(2**31 - 1))]).listeners[0]
        self.assertEqual(top.h2MaxStreams, 2**31 - 1)
        reverse = fromFlags(
            [], [("mode", "reverse"), ("route", "*=http://127.0.0.1:1"), ("http2", "off")]
        ).listeners[0]
        self.assertIs(reverse.http2, False)

    def test_file(self) -> None:
        """
        In the file, C{http2} takes C{true}/C{false} or C{"on"}/C{"off"}
        (like C{x_forwarded_for}) and C{h2_max_streams} a whole number, per
        listener.
        """
        c = fromTOML({"listeners": [
            {"listen": ["tcp:1"], "http2": False},
            {"listen": ["tcp:2"], "http2": "off"},
            {"listen": ["tcp:3"], "http2": "on", "h2_max_streams": 7},
            {"listen": ["tcp:4"]},
        ]})
        self.assertEqual([l.http2 for l in c.listeners], [False, False, True, True])
        self.assertEqual([l.h2MaxStreams for l in c.listeners], [100, 100, 7, 100])

    def test_badFlagValues(self) -> None:
        """
        A bad value is a one-line error naming the option and the value.
        """
        for option, bad, detail in [
            ("http2", "maybe", "expected on or off"),
            ("http2", "", "expected on or off"),
            ("h2-max-streams", "0", "at least 1"),
            ("h2-max-streams", "-5", "at least 1"),
            ("h2-max-streams", "many", "expected a number"),
            ("h2-max-streams", "1.5", "expected a number"),
            ("h2-max-streams", str(2**31), "at most 2147483647"),
        ]:
            e = self.assertRaises(ConfigError, fromFlags, [], [(option, bad)])
            self.assertIn(f"--{option}", str(e))
            self.assertIn(detail, str(e))
            self.assertNotIn("\n", str(e))

    def test_badFileValues(self) -> None:
        """
        In the file the errors name the key's path.
        """
        for keys, message in [
            ({"http2": "sometimes"}, "listeners[0].http2: expected on or off"),
            ({"h2_max_streams": 0}, "listeners[0].h2_max_streams: must be at least 1"),
            ({"h2_max_streams": True}, "listeners[0].h2_max_streams: expected a number"),
            ({"h2_max_streams": 2.5}, "listeners[0].h2_max_streams: expected a whole number"),
            ({"h2_max_streams": 2**31}, "listeners[0].h2_max_streams: must be at most 2147483647"),
        ]:
            e = self.assertRaises(ConfigError, fromTOML, {"listeners": [dict({"listen": ["tcp:1"]}, **keys)]})
            self.assertTrue(str(e).startswith(message + ", got "), str(e))
            self.assertNotIn("\n", str(e))

    def test_refusedOutsideHTTPModes(self) -> None:
        """
        Given in a mode that does not speak HTTP to clients (tcp,
        transparent, sni), either option, on or off, is a start-up error
        naming it and the mode: it is never silently ignored.  The defaults
        there are harmless and not an error.
        """
        modes = {
            "tcp": [("mode", "tcp"), ("upstream", "tcp:127.0.0.1:1")],
            "transparent": [("mode", "transparent")],
            "sni": [("mode", "sni"), ("route", "*=tcp://127.0.0.1:1")],
        }
        for mode, base in modes.items():
            fromFlags([], base)
            for option, value in [("http2", "off"), ("http2", "on"), ("h2-max-streams", "10")]:
                e = self.assertRaises(ConfigError, fromFlags, [], base + [(option, value)])
                self.assertEqual(
                    str(e),
                    f"--{option} is only for modes forward and reverse, which speak HTTP to clients (mode is {mode})",
                )
        e = self.assertRaises(ConfigError, fromTOML, {"listeners": [
            {"listen": ["tcp:1"]},
            {"listen": ["tcp:2"], "mode": "tcp", "upstreams": ["tcp:127.0.0.1:1"], "http2": False},
        ]})
        self.assertIn("listeners[1]: --http2 is only for modes forward and reverse", str(e))

    def test_maxStreamsNeedsHTTP2(self) -> None:
        """
        C{--h2-max-streams} with C{--http2 off} is an error (it would do
        nothing), in either order.
        """
        for options in ([("http2", "off"), ("h2-max-streams", "5")], [("h2-max-streams", "5"), ("http2", "off")]):
            e = self.assertRaises(ConfigError, fromFlags, [], options)
            self.assertEqual(str(e), "--h2-max-streams needs --http2 on")

    def test_notWithConfigFile(self) -> None:
        """
        Like every listener option, the flags cannot be combined with
        C{--config}.
        """
        e = self.assertRaises(ConfigError, fromFlags, [], [("http2", "off")], "x.toml")
        self.assertIn("--http2 cannot be combined with --config", str(e))


class DenyDestTests(SynchronousTestCase):
    def test_unspecifiedCountsAsLoopback(self) -> None:
        """
        For --deny-dest, 0.0.0.0, :: and ::ffff:0.0.0.0 (and a zone-indexed
        ::) are in a set that holds a loopback address (127.0.0.1 or ::1),
        whichever family it names; other addresses are plain members.
        """
        both = config.parseCIDRs(["127.0.0.0/8", "::1"])
        v4 = config.parseCIDRs(["127.0.0.0/8"])
        v6 = config.parseCIDRs(["::1"])
        for s in (both, v4, v6):
            for address in ["0.0.0.0", "::", "::ffff:0.0.0.0", "0:0:0:0:0:0:0:0", "::%lo"]:
                self.assertTrue(s.deniesDestination(address), (str(s), address))
        self.assertTrue(both.deniesDestination("127.0.0.2"))
        self.assertTrue(both.deniesDestination("::ffff:127.0.0.1"))
        self.assertFalse(both.deniesDestination("192.0.2.1"))
        self.assertFalse(both.deniesDestination("not an address"))
        other = config.parseCIDRs(["10.0.0.0/8"])
        self.assertFalse(other.deniesDestination("0.0.0.0"))
        self.assertFalse(other.deniesDestination("::"))
        self.assertFalse(config.CIDRSet().deniesDestination("0.0.0.0"))

    def test_onlyForForwardAndTransparent(self) -> None:
        """
        --deny-dest in tcp, sni or reverse mode (flags or a listener of the
        file) is a one-line error naming the option and the mode; forward
        and transparent take it.
        """
        cases = [
            [("mode", "tcp"), ("upstream", "tcp:192.0.2.1:22")],
            [("mode", "sni"), ("route", "a.test=tcp://192.0.2.1:443")],
            [("mode", "reverse"), ("route", "a.test=http://192.0.2.1:80")],
        ]
        for options in cases:
            e = self.assertRaises(ConfigError, fromFlags, [], options + [("deny-dest", "10.0.0.0/8")])
            self.assertIn("--deny-dest is only for modes forward and transparent", str(e))
            self.assertIn(f"mode is {options[0][1]}", str(e))
            self.assertNotIn("\n", str(e))
        for mode in ("forward", "transparent"):
            listener = fromFlags([], [("mode", mode), ("deny-dest", "10.0.0.0/8")]).listeners[0]
            self.assertIn("10.1.1.1", listener.denyDest)
        e = self.assertRaises(
            ConfigError,
            fromTOML,
            {"listeners": [{"listen": ["tcp:1"], "mode": "tcp", "upstreams": ["tcp:192.0.2.1:22"],
                            "deny_dest": ["127.0.0.0/8"]}]},
        )
        self.assertIn("listeners[0]: --deny-dest is only for modes forward and transparent", str(e))


def _reverse(route: Any) -> Any:
    return {"listeners": [{"listen": ["tcp:1"], "mode": "reverse", "routes": [route]}]}


class WireValueTests(SynchronousTestCase):
    """
    Configured strings that become part of a request line or a header
    field are checked at load: a CR LF or a space can never inject a field
    or split a request upstream.
    """

    ROUTE = {"host": "a.test", "upstreams": ["http://192.0.2.1:80"]}

    def assertRejected(self, route: Any, field: str) -> str:
        e = self.assertRaises(ConfigError, fromTOML, _reverse(dict(self.ROUTE, **route)))
        self.assertIn(f"listeners[0].routes[0].{field}", str(e))
        self.assertNotIn("\n", str(e))
        self.assertNotIn("\r", str(e))
        return str(e)

    def test_hostRewrite(self) -> None:
        """
        C{host_rewrite} must be a Host value: a host name or IP address,
        an optional port, IPv6 in brackets.
        """
        for bad in ["a\r\nX-Injected: yes", "a b", "a.test\n", "a.test:http", "a.test:0", "2001:db8::1", "a..b", "x/y"]:
            message = self.assertRejected({"host_rewrite": bad}, "host_rewrite")
            self.assertIn("not a Host value", message)
        for good in ["a.test", "A.Test:8080", "192.0.2.1", "[2001:db8::1]:443", "bücher.example"]:
            c = fromTOML(_reverse(dict(self.ROUTE, host_rewrite=good)))
            self.assertEqual(c.listeners[0].routes[0].hostRewrite, good)

    def test_healthCheckPath(self) -> None:
        """
        C{health_check.path} must be a URI path (a query allowed), every
        other byte percent-encoded.
        """
        for bad in ["/health\r\nX-Injected: yes", "/a b", "/\x00", "/caf\u00e9", "/%zz", "health"]:
            self.assertRejected({"health_check": {"type": "http", "path": bad}}, "health_check.path")
        for good in ["/", "/healthz", "/status?full=1&x=%20y", "/a;b=c/d@e"]:
            c = fromTOML(_reverse(dict(self.ROUTE, health_check={"type": "http", "path": good})))
            hc = c.listeners[0].routes[0].healthCheck
            assert hc is not None
            self.assertEqual(hc.path, good)

    def test_routePrefix(self) -> None:
        """
        A route's path prefix (file and flag) is a URI path without query.
        """
        for bad in ["/a b", "/a\r\nX: y", "/a?b", "/a#b"]:
            self.assertRejected({"prefix": bad}, "prefix")
            e = self.assertRaises(ConfigError, config.parseRoute, f"a.test{bad}=http://192.0.2.1:80")
            self.assertIn("path prefix", str(e))
        self.assertEqual(config.parseRoute("a.test/api/v1=http://192.0.2.1").prefix, "/api/v1")

    def test_upstreamURLHost(self) -> None:
        """
        An upstream URL's host (the Host of health checks, of requests that
        named none, and the TLS server name) is a host name or an IP
        address.
        """
        for bad in ["http://a\r\nX-Injected: yes:80", "http://a b:80", "https://a\tb", "http://[not-v6]:80",
                    "http://a..b:80"]:
            e = self.assertRaises(ConfigError, config.parseUpstreamURL, bad)
            self.assertIn("bad upstream URL", str(e))
            self.assertNotIn("\n", str(e))
            self.assertRejected({"upstreams": [bad]}, "upstreams[0]")
        self.assertEqual(config.parseUpstreamURL("http://Backend_1.test:8080").host, "backend_1.test")
        self.assertEqual(config.parseUpstreamURL("https://[2001:db8::1]").host, "2001:db8::1")

    def test_routeHost(self) -> None:
        """
        A route's host pattern holds no control characters or spaces.
        """
        for bad in ["a\r\nb", "a\tb", "*.a\x00"]:
            e = self.assertRaises(ConfigError, fromTOML, _reverse(dict(self.ROUTE, host=bad)))
            self.assertIn("is not a host name", str(e))
