"""
Idle memory per tunnel (issue 18): what one idle CONNECT tunnel and one idle
``--mode tcp`` connection cost the proxy, measured two ways.

* **RSS** (CPython and PyPy): a real ``python -m twisted txproxy`` process
  (forward mode for CONNECT, ``--mode tcp`` for tcp) on loopback, the C echo
  backend (``bench/out/backend``) as origin.  After a warm-up (``connrate``
  for ``--warmup`` seconds: the allocator's arenas and the JIT settle), the
  proxy's VmRSS is read, ``connrate -H N`` opens N connections/tunnels (each
  does one 64-byte echo round trip) and holds them, and VmRSS is read again:
  (growth) / N.  Each repeat uses a fresh proxy process (a second hold in
  the same process reuses the first one's freed memory); the median is
  reported.
* **tracemalloc** (CPython only): the same proxy runs *inside* a child of
  this script (``--child``) with ``tracemalloc`` on; snapshots before and
  while the N connections are held give bytes per tunnel, broken down by
  allocation site, and a ``gc`` census gives the objects per tunnel by
  type.  This is the map of *which* objects cost what.

Run from the repository root::

    python bench/bench_idle_memory.py                      # both interpreters, both modes
    python bench/bench_idle_memory.py --only cpython --n 2000 --repeats 3
    python bench/bench_idle_memory.py --tracemalloc-only --modes connect

Everything listens on 127.0.0.1; every process is started here and stopped
by its PID.  ``ulimit -n`` is checked first: the proxy holds 2N descriptors,
the client N, the backend N.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from typing import Any, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import benchlib as B  # noqa: E402

PYTHONS = {
    "cpython": os.environ.get("TXPROXY_BENCH_CPYTHON", "/work/main/.venv/bin/python"),
    "pypy": os.environ.get("TXPROXY_BENCH_PYPY", "/work/main/.venv-pypy/bin/python"),
}


def proxyArgs(mode: str, port: int, echo: int) -> List[str]:
    listen = f"tcp:{port}:interface=127.0.0.1:backlog=1024"
    if mode == "connect":
        return ["--listen", listen, "--connect-ports", "*"]
    return ["--mode", "tcp", "--listen", listen, "--upstream", f"tcp:127.0.0.1:{echo}"]


def connrateTarget(mode: str, echo: int) -> Optional[str]:
    return f"127.0.0.1:{echo}" if mode == "connect" else None


def warm(port: int, mode: str, echo: int, seconds: float) -> dict:
    if seconds <= 0:
        return {}
    return B.connrate(port, seconds, 32, connrateTarget(mode, echo))


# ------------------------------------------------------------ RSS (a real twistd)

def holdStart(port: int, n: int, target: Optional[str]) -> "tuple[subprocess.Popen, dict]":
    """
    Start C{connrate -H n} against C{port}; return it (holding) and its
    first report once the N connections are established.
    """
    argv = B.pinned(B.GEN_CPU) + [B.tool("connrate"), "-p", str(port), "-c", "100", "-H", str(n),
                                  "-t", "120", "-T", "10000"]
    if target:
        argv += ["-C", target]
    p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = json.loads(p.stdout.readline().decode() or '{"error": "no output"}')  # type: ignore[union-attr]
    return p, first


def holdStop(p: subprocess.Popen) -> None:
    try:
        p.stdin.close()  # type: ignore[union-attr]
        p.wait(30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def rssOnce(python: str, mode: str, n: int, be: B.Backend, warmup: float, tmp: str, settle: float = 1.0) -> dict:
    """
    One fresh proxy: warm up, then hold N/4 connections (they absorb the
    memory the start-up and warm-up freed, which new connections would
    otherwise reuse for free), read VmRSS, hold the other 3N/4, read VmRSS
    again: the I{marginal} bytes per connection, (growth) / (3N/4).  The
    plain (growth from before the first hold) / N is reported too.
    """
    port = B.free_port()
    env = pypyEnv(python, dict(os.environ, PYTHONPATH=B.REPO))
    server = B.Server(f"txproxy-{mode}", [python, "-m", "twisted", "txproxy"] + proxyArgs(mode, port, be.echo),
                      B.PROXY_CPU, tmp, env=env, cwd=B.REPO)
    holds: List[subprocess.Popen] = []
    try:
        B.start_and_wait(server, port)
        w = warm(port, mode, be.echo, warmup)
        time.sleep(settle)
        target = connrateTarget(mode, be.echo)
        rss0 = B.rss_kb(server.pid)
        n1 = n // 4
        p1, first1 = holdStart(port, n1, target)
        holds.append(p1)
        time.sleep(settle)
        rss1 = B.rss_kb(server.pid)
        p2, first2 = holdStart(port, n - n1, target)
        holds.append(p2)
        time.sleep(settle)
        rss2 = B.rss_kb(server.pid)
        h1, h2 = first1.get("held", 0), first2.get("held", 0)
        res: Dict[str, Any] = {"rss_kb": [rss0, rss1, rss2], "held": [h1, h2],
                               "errors": [first1.get("errors"), first2.get("errors")],
                               "warmup": {k: w.get(k) for k in ("cycles_per_s", "errors") if k in w}}
        if h2:
            res["marginal_bytes"] = (rss2 - rss1) * 1024 / h2
        if h1 + h2:
            res["average_bytes"] = (rss2 - rss0) * 1024 / (h1 + h2)
        return res
    finally:
        for p in holds:
            holdStop(p)
        server.stop()


# ------------------------------------------------------------ tracemalloc (in a child)

def child(mode: str, echo: int, frames: int) -> None:
    """
    Run the proxy in this process with tracemalloc on; commands on stdin:
    C{base} and C{held N} (snapshot, print JSON), C{quit}.
    """
    import platform

    pypy = platform.python_implementation() == "PyPy"
    if not pypy:
        import tracemalloc

    from twisted.internet import reactor

    from txproxy.runtime.tap import Options, makeService

    port = B.free_port()
    options = Options()
    options.parseOptions(proxyArgs(mode, port, echo))
    service = makeService(options)
    service.startService()
    state: Dict[str, Any] = {}

    def census() -> Counter:
        gc.collect()
        return Counter(type(o).__qualname__ if type(o).__module__ == "builtins"
                       else f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.get_objects())

    def command(line: str) -> None:
        try:
            run(line)
        except BaseException as e:
            print(json.dumps({"error": f"{type(e).__name__}: {e}"}), flush=True)

    def run(line: str) -> None:
        words = line.split()
        if not words:
            return
        if pypy and words[0] in ("base", "held"):
            # PyPy: no tracemalloc; RSS as the load left it, then after a
            # full collection, and the GC's own count of live object bytes.
            rss = B.rss_kb(os.getpid())
            gc.collect()
            gc.collect()
            stats = gc.get_stats()._s  # (the raw numbers: the attributes are formatted text)
            now = {"rss_kb": rss, "rss_after_collect_kb": B.rss_kb(os.getpid()),
                   "gc_arena": stats.total_arena_memory, "gc_raw": stats.total_rawmalloced_memory,
                   "gc_total": stats.total_gc_memory}
            if words[0] == "base":
                state["pypy"] = now
                print(json.dumps({"ok": True}), flush=True)
                return
            held = int(words[1])
            base = state["pypy"]
            out = {k: (now[k] - base[k]) * (1024 if k.startswith("rss") else 1) / held for k in now}
            print(json.dumps({"pypy_per_conn": out, "base": base, "held_stats": now}), flush=True)
            return
        if words[0] == "base":
            gc.collect()
            state["census"] = census()
            state["snap"] = tracemalloc.take_snapshot()
            print(json.dumps({"ok": True}), flush=True)
        elif words[0] == "held":
            held = int(words[1])
            gc.collect()
            snap = tracemalloc.take_snapshot()
            after = census()
            filters = [tracemalloc.Filter(False, tracemalloc.__file__)]
            base = state["snap"].filter_traces(filters)
            snap = snap.filter_traces(filters)
            total = sum(s.size_diff for s in snap.compare_to(base, "filename"))
            sites = []
            def where(frame: Any) -> str:
                name = frame.filename
                for prefix in (B.REPO + "/", "site-packages/", "lib/python3.11/", "lib/pypy3.9/"):
                    if prefix in name:
                        name = name.split(prefix, 1)[1]
                return f"{name}:{frame.lineno}"

            for stat in snap.compare_to(base, "traceback" if frames > 1 else "lineno")[:30]:
                if stat.size_diff <= 0:
                    continue
                sites.append({
                    "site": " < ".join(where(f) for f in list(stat.traceback)[::-1][:frames]),
                    "bytes_per_conn": round(stat.size_diff / held, 1),
                    "blocks_per_conn": round(stat.count_diff / held, 2),
                })
            objects = []
            diff = after - state["census"]
            for name, count in diff.most_common(40):
                if count / held >= 0.5:
                    objects.append({"type": name, "per_conn": round(count / held, 2)})
            # The instance attributes of the per-connection objects (read
            # last: reading __dict__ builds the dict where CPython had none).
            attributes = {}
            for o in gc.get_objects():
                t = type(o)
                if str(t.__module__).startswith(("txproxy", "twisted.internet.tcp")) and hasattr(o, "__dict__"):
                    name = f"{t.__module__}.{t.__qualname__}"
                    entry = attributes.setdefault(name, {"n": 0, "names": set()})
                    entry["n"] += 1
                    entry["names"].update(vars(o))
            attrs = {k: {"instances": v["n"], "distinct_names": len(v["names"]), "names": sorted(v["names"])}
                     for k, v in attributes.items() if v["n"] >= held // 2}
            print(json.dumps({"bytes_per_conn": total / held, "sites": sites, "objects": objects,
                              "attributes": attrs}), flush=True)
        elif words[0] == "quit":
            reactor.stop()

    def readCommands() -> None:
        for line in sys.stdin:
            reactor.callFromThread(command, line)
        reactor.callFromThread(reactor.stop)

    if not pypy:
        tracemalloc.start(frames)
    print(json.dumps({"port": port}), flush=True)
    threading.Thread(target=readCommands, daemon=True).start()
    reactor.run()


def pypyEnv(python: str, env: Dict[str, str]) -> Dict[str, str]:
    """
    PyPy processes run with the nursery docs/performance.rst recommends
    (C{PYPY_GC_NURSERY} in our own environment wins; empty: PyPy's default).
    """
    if python == PYTHONS["pypy"]:
        env.setdefault("PYPY_GC_NURSERY", B.PYPY_NURSERY)
        if not env["PYPY_GC_NURSERY"]:
            del env["PYPY_GC_NURSERY"]
    return env


def tracemallocOnce(python: str, mode: str, n: int, be: B.Backend, warmup: float, tmp: str, frames: int) -> dict:
    env = pypyEnv(python, dict(os.environ, PYTHONPATH=B.REPO))
    argv = B.pinned(B.PROXY_CPU) + [python, os.path.abspath(__file__), "--child", mode, "--echo", str(be.echo),
                                    "--frames", str(frames)]
    errlog = open(os.path.join(tmp, f"child-{mode}.log"), "wb")
    p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errlog, env=env,
                         cwd=B.REPO, start_new_session=True)
    assert p.stdin is not None and p.stdout is not None

    def ask(line: str) -> dict:
        p.stdin.write(line.encode() + b"\n")  # type: ignore[union-attr]
        p.stdin.flush()  # type: ignore[union-attr]
        return json.loads(p.stdout.readline().decode() or '{"error": "child died"}')  # type: ignore[union-attr]

    try:
        port = json.loads(p.stdout.readline().decode() or "{}").get("port")
        if port is None or not B.wait_port(port, 20, p):
            raise RuntimeError("in-process proxy did not start; see " + errlog.name)
        warm(port, mode, be.echo, warmup)
        time.sleep(0.5)
        ask("base")
        hold, first = holdStart(port, n, connrateTarget(mode, be.echo))
        try:
            time.sleep(1.0)
            held = first.get("held", 0)
            res = ask(f"held {held}") if held else {"error": "nothing held"}
            res["held"] = held
        finally:
            holdStop(hold)
        return res
    finally:
        try:
            p.stdin.close()
        except OSError:
            pass
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        errlog.close()


# ------------------------------------------------------------ main

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=4000, help="connections/tunnels held (default 4000)")
    ap.add_argument("--repeats", type=int, default=3, help="fresh proxy processes per RSS row (median)")
    ap.add_argument("--modes", default="connect,tcp")
    ap.add_argument("--only", default="cpython,pypy", help="interpreters for the RSS rows")
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds of connect/close load before measuring")
    ap.add_argument("--pypy-warmup", type=float, default=6.0)
    ap.add_argument("--frames", type=int, default=1, help="tracemalloc frames kept per allocation")
    ap.add_argument("--no-tracemalloc", action="store_true")
    ap.add_argument("--tracemalloc-only", action="store_true")
    ap.add_argument("--pypy-gc", action="store_true",
                    help="also run the proxy in-process on PyPy: RSS before and after a full collection, and"
                         " the GC's live bytes, per connection")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--echo", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.echo, args.frames)
        return 0

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 2 * args.n + 200
    if soft < need:
        B.log(f"ulimit -n is {soft}; the proxy needs about {need} descriptors for --n {args.n}")
        return 2
    B.build_tools()
    tmp = B.mktemp("idle")
    modes = [m for m in args.modes.split(",") if m]
    results: Dict[str, Any] = {"n": args.n, "machine": B.machine_info(), "rss": {}, "tracemalloc": {}}
    be = B.Backend(tmp)
    try:
        if not args.tracemalloc_only:
            for name in [x for x in args.only.split(",") if x in PYTHONS]:
                python = PYTHONS[name]
                why = B.txproxy_available(python)
                if why:
                    B.log(f"skipping {name}: {why}")
                    continue
                results["origin_" + name] = B.txproxy_origin(python)
                warmup = args.warmup + (args.pypy_warmup if name == "pypy" else 0)
                for mode in modes:
                    samples = []
                    for r in range(args.repeats):
                        res = rssOnce(python, mode, args.n, be, warmup, tmp)
                        samples.append(res)
                        B.log(f"{name} {mode} #{r + 1}: held {res.get('held')} "
                              f"marginal {res.get('marginal_bytes', float('nan')):.0f} B/conn, "
                              f"average {res.get('average_bytes', float('nan')):.0f}")
                    per = [s["marginal_bytes"] for s in samples if "marginal_bytes" in s]
                    avg = [s["average_bytes"] for s in samples if "average_bytes" in s]
                    results["rss"][f"{name}/{mode}"] = {
                        "median_bytes": statistics.median(per) if per else None,
                        "min": min(per) if per else None, "max": max(per) if per else None,
                        "average_median_bytes": statistics.median(avg) if avg else None,
                        "samples": samples,
                    }
        if not args.no_tracemalloc:
            for mode in modes:
                res = tracemallocOnce(PYTHONS["cpython"], mode, args.n, be, args.warmup, tmp, args.frames)
                results["tracemalloc"][mode] = res
        if args.pypy_gc:
            results["pypy_gc"] = {}
            for mode in modes:
                res = tracemallocOnce(PYTHONS["pypy"], mode, args.n, be, args.warmup + args.pypy_warmup, tmp, 1)
                results["pypy_gc"][mode] = res
    finally:
        be.stop()
        B.cleanup_temps()

    print()
    print(f"idle memory per connection, N = {args.n} (bytes; RSS: median (min-max) over fresh processes of the"
          f" growth from N/4 to N held, / (3N/4))")
    for key, row in results["rss"].items():
        if row["median_bytes"] is None:
            print(f"  {key:16s} RSS: no sample")
            continue
        print(f"  {key:16s} RSS marginal {row['median_bytes']:7.0f}  ({row['min']:.0f}-{row['max']:.0f}),"
              f" average over N {row['average_median_bytes']:7.0f}")
    for mode, res in results["tracemalloc"].items():
        if "bytes_per_conn" not in res:
            print(f"  cpython/{mode:8s} tracemalloc: {res}")
            continue
        print(f"  cpython/{mode:8s} tracemalloc {res['bytes_per_conn']:7.0f} B/conn; top sites:")
        for s in res["sites"][:15]:
            print(f"      {s['bytes_per_conn']:7.1f} B {s['blocks_per_conn']:5.2f} blk  {s['site']}")
        for name, a in res.get("attributes", {}).items():
            print(f"    {name}: {a['distinct_names']} instance attribute names")
        print("    objects per connection:")
        for o in res["objects"]:
            print(f"      {o['per_conn']:5.2f}  {o['type']}")
    for mode, res in results.get("pypy_gc", {}).items():
        per = res.get("pypy_per_conn")
        if per is None:
            print(f"  pypy/{mode:8s} in-process: {res}")
            continue
        print(f"  pypy/{mode:8s} in-process: RSS {per['rss_kb']:.0f} B/conn as left by the load,"
              f" {per['rss_after_collect_kb']:.0f} after gc.collect(); GC live objects"
              f" {per['gc_arena'] + per['gc_raw']:.0f} B/conn (arenas {per['gc_arena']:.0f},"
              f" raw-malloced {per['gc_raw']:.0f})")
    path = B.write_json("bench_idle_memory", results)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
