#!/usr/bin/env python3
"""
Run ``twistd`` (the arguments after CONTROL) with one bench-only control:
on SIGUSR1 the proxy reads CONTROL (``off``, ``sample0`` or ``sample1``)
and, at the next turn of the event loop, gives every listener factory that
tracer: none, a tracer at ratio 0, or the tracer the process was started
with (``--trace-otlp ... --trace-sample 1``), sharing its exporter.

``bench_tracing.py --processes toggle`` uses it to measure the three
variants in one process, alternating between wrk runs (no request in
flight), so that the variants are compared without the process-to-process
spread of fresh processes (bench/README.md).

  python bench/tracing_toggle.py CONTROL -n --pidfile= txproxy --trace-otlp URL ...
"""

import gc
import signal
import sys


def main() -> None:
    control = sys.argv[1]
    sys.argv = ["twistd"] + sys.argv[2:]
    tracers = {}

    def apply() -> None:
        from txproxy._factory import ListenerFactory
        from txproxy.tracing import Tracer

        with open(control) as f:
            variant = f.read().strip()
        factories = [o for o in gc.get_objects() if isinstance(o, ListenerFactory)]
        if not tracers:
            started = next(f.tracer for f in factories if f.tracer is not None)
            tracers.update(off=None, sample1=started, sample0=Tracer(0.0, started.exporter))
        for factory in factories:
            factory.tracer = tracers[variant]
        with open(control + ".applied", "w") as f:
            f.write(variant)

    def onSignal(signum: int, frame: object) -> None:
        from twisted.internet import reactor

        reactor.callFromThread(apply)

    signal.signal(signal.SIGUSR1, onSignal)
    from twisted.scripts.twistd import run

    run()


if __name__ == "__main__":
    main()
