#!/usr/bin/env python3
"""
TCP relay benchmark (issue 4): txproxy --mode tcp against HAProxy (mode tcp,
nbthread 1), socat, stock twisted.protocols.portforward, and no proxy, in one
run.

Every relay runs on core 1 (taskset); the C load generators, the C backend,
redis-server and redis-benchmark run on core 0.  The relay is restarted for
each test with the right upstream.  For each relay:

  bulk     one connection, BULK bytes (default 1 GiB) client -> sink; GB/s
           (10^9 bytes/s) and the ratio to no proxy
  connrate CLIENTS parallel clients repeating connect + 64-byte echo + close
           for SECONDS; connections/s
  memory   HOLD idle relayed connections (default 9,000; socat forks a process
           per connection, so it holds 1,000); growth of the relay's memory per
           connection (VmRSS for one process, Pss summed over a process tree)
  ping     redis-benchmark -t ping_inline -c 50 -n PING_N through the relay to
           a redis-server we start: requests/s (per-message relay cost)

All relays are started and warmed up first; each measurement then runs in
REPEATS rounds, each round measuring every relay once (interleaved, so other
load on this shared machine hits all alike); median and min-max.  Next to each
rate: the relay's CPU (share of its one core), core 1's total busy share
(other load shows up there), core 0's use by generator + backend.

  python3 bench/bench_tcp.py [--quick] [--only direct,txproxy,haproxy,socat,portforward,...]
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as B  # noqa: E402


# ------------------------------------------------------------------ relays

def start_txproxy(python: str):
    def start(tmp: str, port: int, upstream: int):
        env, cwd = B.txproxy_env(python, tmp)
        return B.Server("txproxy", [
            python, "-m", "twisted", "txproxy", "--mode", "tcp",
            "--listen", f"tcp:{port}:interface=127.0.0.1:backlog=1024",
            "--upstream", f"tcp:127.0.0.1:{upstream}"], B.PROXY_CPU, tmp, env=env, cwd=cwd)
    return start


def start_haproxy(tmp: str, port: int, upstream: int):
    conf = os.path.join(tmp, "haproxy.cfg")
    with open(conf, "w") as f:
        f.write(f"""\
global
  nbthread 1
  maxconn 9500
defaults
  mode tcp
  timeout connect 5s
  timeout client 600s
  timeout server 600s
frontend relay
  bind 127.0.0.1:{port}
  default_backend upstream
backend upstream
  server s1 127.0.0.1:{upstream}
""")
    return B.Server("haproxy", ["haproxy", "-db", "-f", conf], B.PROXY_CPU, tmp)


def start_socat(tmp: str, port: int, upstream: int):
    return B.Server("socat", [
        "socat", f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,backlog=1024",
        f"TCP:127.0.0.1:{upstream}"], B.PROXY_CPU, tmp)


def start_portforward(python: str):
    def start(tmp: str, port: int, upstream: int):
        return B.Server("portforward", [
            python, os.path.join(B.HERE, "portforward_runner.py"), str(port), "127.0.0.1",
            str(upstream), "1024"], B.PROXY_CPU, tmp)
    return start


PEERS = [
    B.Peer("direct", None, lambda: None, note="no relay"),
    B.Peer("txproxy", start_txproxy(B.CPY), lambda: B.txproxy_available(B.CPY), python=B.CPY,
           note="--mode tcp, CPython /tmp/venv"),
    B.Peer("txproxy-compiled", start_txproxy(B.COMPILED), lambda: B.txproxy_available(B.COMPILED),
           python=B.COMPILED, note="--mode tcp, CPython compiled build (.venv-compiled)"),
    B.Peer("txproxy-pypy", start_txproxy(B.PYPY), lambda: B.txproxy_available(B.PYPY), python=B.PYPY,
           warmup=8.0, note="--mode tcp, PyPy /tmp/pypyvenv"),
    B.Peer("haproxy", start_haproxy, lambda: B.have("haproxy"), note="mode tcp, nbthread 1"),
    B.Peer("socat", start_socat, lambda: B.have("socat"), note="fork per connection"),
    B.Peer("portforward", start_portforward(B.CPY), lambda: B.have(B.CPY),
           note="twisted.protocols.portforward, CPython, epoll"),
    B.Peer("portforward-pypy", start_portforward(B.PYPY), lambda: B.have(B.PYPY), warmup=8.0,
           note="twisted.protocols.portforward, PyPy (not run by default)"),
]
DEFAULT = [p.name for p in PEERS if p.name != "portforward-pypy"]
HOLD_CAP = {"socat": 1000}


# ------------------------------------------------------------------ run

class Session:
    """One relay process pointed at one upstream port (or none: direct)."""

    def __init__(self, peer: B.Peer, upstream: int, res: dict, key: str):
        self.server = None
        self.pid = None
        self.port = upstream
        if peer.start is None:
            return
        tmp = B.mktemp(f"{peer.name}-{key}")
        port = B.free_port()
        self.server = B.start_and_wait(peer.start(tmp, port, upstream), port, timeout=30)
        self.pid, self.port = self.server.pid, port
        res.setdefault("commands", {})[key] = " ".join(self.server.argv)

    def close(self, res: dict, key: str) -> None:
        if self.server is not None:
            if not self.server.alive():
                res.setdefault("died", {})[key] = self.server.log_tail()
            self.server.stop()


def run_all(peers: list, be: B.Backend, redis_port: int, redis_pid, args, results: dict,
            background: dict) -> None:
    """Start every relay (one process per upstream: sink, echo, redis), warm
    them up, then measure interleaved, round by round."""
    tests = args.tests
    up = {"bulk": be.source if args.bulk_mode == "recv" else be.sink, "echo": be.echo,
          "ping": redis_port}
    wanted = [k for k, t in (("bulk", {"bulk"}), ("echo", {"connrate", "memory"}), ("ping", {"ping"}))
              if t & tests]
    running = []  # (peer, res, {key: Session})
    try:
        for peer in peers:
            why = peer.available()
            if why:
                print(f"# skipping {peer.name}: {why}", flush=True)
                results[peer.name] = {"skipped": why}
                continue
            res: dict = {"note": peer.note}
            results[peer.name] = res
            if peer.python:
                res["txproxy_origin"] = B.txproxy_origin(peer.python)
            sessions = {}
            try:
                for key in wanted:
                    sessions[key] = Session(peer, up[key], res, key)
            except RuntimeError as e:
                print(f"# {peer.name} failed: {e}", flush=True)
                res["failed"] = str(e)
                for key, s in sessions.items():
                    s.close(res, key)
                continue
            running.append((peer, res, sessions))
            res["samples"] = {"bulk": [], "conn": [], "ping": []}

        for peer, res, ss in running:
            B.log(f"[{peer.name}] warm-up")
            if "bulk" in ss:
                B.bulk(ss["bulk"].port, (1 << 30) if peer.warmup else (256 << 20), None, args.bulk_mode)
            if "echo" in ss:
                B.connrate(ss["echo"].port, 2.0 + peer.warmup, min(args.clients, 32))
            if "ping" in ss:
                B.redis_bench(ss["ping"].port, max(args.ping_n // 4, 20000) * (4 if peer.warmup else 1))

        # rounds() wants objects with .name; wrap the tuples
        class R:
            def __init__(self, t):
                self.peer, self.res, self.ss = t
                self.name = self.peer.name
        rs = [R(t) for t in running]

        def do_bulk(r):
            s = r.ss["bulk"]
            B.log(f"[{r.name}] bulk {args.bulk} bytes")
            r.res["samples"]["bulk"].append(B.measured(
                lambda: B.bulk(s.port, args.bulk, None, args.bulk_mode), s.pid, be.pid, "gbps"))

        def do_conn(r):
            s = r.ss["echo"]
            B.log(f"[{r.name}] connrate {args.seconds}s, {args.clients} clients")
            r.res["samples"]["conn"].append(B.measured(
                lambda: B.connrate(s.port, args.seconds, args.clients), s.pid, be.pid, "rate"))

        def do_ping(r):
            s = r.ss["ping"]
            B.log(f"[{r.name}] redis-benchmark ping_inline -n {args.ping_n}")
            r.res["samples"]["ping"].append(B.measured(
                lambda: B.redis_bench(s.port, args.ping_n), s.pid, redis_pid, "rps"))

        if "bulk" in tests:
            background["bulk"] = B.rounds(rs, args, "bulk", do_bulk)
        if "connrate" in tests:
            background["connrate"] = B.rounds(rs, args, "connrate", do_conn)
        if "ping" in tests:
            background["ping"] = B.rounds(rs, args, "ping", do_ping)
        if "memory" in tests and args.hold:
            background["memory"] = []
            for r in rs:
                s = r.ss["echo"]
                if s.pid:
                    background["memory"].append(B.wait_quiet(args.wait_quiet))
                    n = min(args.hold, HOLD_CAP.get(r.name, args.hold))
                    B.log(f"[{r.name}] memory: holding {n} connections")
                    r.res["memory"] = B.hold_memory(s.pid, s.port, n)
        for r in rs:
            smp = r.res.pop("samples")
            for key, name in (("bulk", "bulk_gbps"), ("conn", "conn_per_s"), ("ping", "ping_per_s")):
                if smp[key]:
                    r.res[name] = B.summarize(smp[key])
            if smp["conn"]:
                r.res["conn_p99_ms"] = [x.extra.get("p99_ms") for x in smp["conn"]]
    finally:
        for peer, res, ss in running:
            for key, s in ss.items():
                s.close(res, key)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 repeat, 3 s runs, 3000 held, 50k PINGs")
    ap.add_argument("--only", help="comma-separated relays: " + ",".join(p.name for p in PEERS)
                    + " (default: all but portforward-pypy)")
    ap.add_argument("--tests", default="bulk,connrate,memory,ping",
                    help="comma-separated subset of bulk,connrate,memory,ping")
    ap.add_argument("--repeats", type=int)
    ap.add_argument("--seconds", type=float, help="length of one connection-rate run (default 5)")
    ap.add_argument("--clients", type=int, default=64, help="parallel connrate clients (default 64)")
    ap.add_argument("--bulk", type=int, default=1 << 30, help="bytes per bulk run (default 1 GiB)")
    ap.add_argument("--bulk-mode", choices=["send", "recv"], default="send")
    ap.add_argument("--hold", type=int, help="connections held for the memory test (default 9000)")
    ap.add_argument("--ping-n", type=int, help="requests per redis-benchmark run (default 200000)")
    ap.add_argument("--keep-temp", action="store_true",
                    help="keep the /tmp/txbench-* dirs (configs and logs) after the run")
    ap.add_argument("--nice", type=int, default=0,
                    help="run proxies, generators and backends at this niceness (e.g. -10 on a "
                         "shared machine: every peer gets the same; default 0)")
    ap.add_argument("--wait-quiet", type=float, default=60.0,
                    help="before each round, wait up to this many seconds for both cores to be "
                         "under 15%% busy (default 60); the load seen is reported")
    args = ap.parse_args()
    # a SIGTERM (e.g. from `timeout`) unwinds normally, so every server we
    # started is stopped by the finally blocks
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    B.NICE = args.nice
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.seconds = args.seconds or (3.0 if args.quick else 5.0)
    if args.hold is None:
        args.hold = 3000 if args.quick else 9000
    args.ping_n = args.ping_n or (50000 if args.quick else 200000)
    args.tests = set(args.tests.split(","))
    if args.tests - {"bulk", "connrate", "memory", "ping"}:
        ap.error("unknown test in --tests")
    if (not 1 <= args.repeats <= 20 or not 0.5 <= args.seconds <= 120 or not 0 <= args.hold <= 9500
            or not 1000 <= args.ping_n <= 5_000_000):
        ap.error("repeats 1-20, seconds 0.5-120, hold 0-9500, ping-n 1000-5000000")
    names = args.only.split(",") if args.only else DEFAULT
    unknown = set(names) - {p.name for p in PEERS}
    if unknown:
        ap.error("unknown relay(s): " + ",".join(sorted(unknown)))
    peers = [p for p in PEERS if p.name in names]

    B.build_tools()
    tmp = B.mktemp("backends")
    be = B.Backend(tmp)
    redis = None
    results: dict = {}
    background: dict = {}
    t0 = time.time()
    machine = B.machine_info()
    try:
        redis_port = B.free_port()
        if "ping" in args.tests:
            if B.have("redis-server") or B.have("redis-benchmark"):
                print("# redis-server/redis-benchmark missing: no ping test", flush=True)
                args.tests.discard("ping")
            else:
                redis = B.start_and_wait(B.Server("redis-server", [
                    "redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
                    "--save", "", "--appendonly", "no", "--protected-mode", "no",
                    "--dir", tmp, "--maxclients", "10000", "--loglevel", "warning"],
                    B.GEN_CPU, tmp), redis_port)
        run_all(peers, be, redis_port, redis.pid if redis else None, args, results, background)
    finally:
        if redis is not None:
            redis.stop()
        be.stop()
        if not args.keep_temp:
            B.cleanup_temps()

    base = {k: results.get("direct", {}).get(k, {}).get("median")
            for k in ("bulk_gbps", "conn_per_s", "ping_per_s")}
    headers = ["relay", "bulk GB/s med (min-max)", "/direct", "cpu", "core1", "cpu s/GB",
               "conn/s med (min-max)", "cpu", "core1", "core0", "cpu us/conn",
               "PING/s med (min-max)", "cpu", "core0", "cpu us/req", "KiB/conn (held)"]
    rows = []
    for name, r in results.items():
        if "skipped" in r:
            rows.append([name, "skipped: " + r["skipped"].splitlines()[0][:70]] + [""] * 14)
            continue
        if "failed" in r and not any(k in r for k in ("bulk_gbps", "conn_per_s", "ping_per_s")):
            rows.append([name, "failed: " + r["failed"].splitlines()[-1][:70]] + [""] * 14)
            continue
        b, c, p, m = (r.get(k, {}) for k in ("bulk_gbps", "conn_per_s", "ping_per_s", "memory"))
        ratio = f"{b['median'] / base['bulk_gbps']:.2f}" if base["bulk_gbps"] and "median" in b else "-"
        mem = "-"
        if "kb_per_conn" in m:
            mem = f"{m['kb_per_conn']:.1f} ({m['held']}{', Pss' if m.get('metric', '').startswith('Pss') else ''})"
        elif m:
            mem = f"failed ({m.get('held')})"
        rows.append([name, B.cell(b, ".2f"), ratio, B.pct(b.get("proxy_cpu")), B.pct(b.get("core1_busy")),
                     B.per_unit(b, 1, ".2f"),
                     B.cell(c, ".0f"), B.pct(c.get("proxy_cpu")), B.pct(c.get("core1_busy")),
                     B.pct(c.get("core0_cpu")), B.per_unit(c, 1e6),
                     B.cell(p, ".0f"), B.pct(p.get("proxy_cpu")), B.pct(p.get("core0_cpu")),
                     B.per_unit(p, 1e6, ".1f"), mem])
    print()
    print(f"TCP relays, one core per relay; {args.repeats} repeat(s); bulk {args.bulk} bytes "
          f"({args.bulk_mode}); connrate {args.clients} clients x {args.seconds:g}s; "
          f"redis-benchmark -t ping_inline -c 50 -n {args.ping_n}")
    table = B.print_table(headers, rows)
    print("cpu = the relay's process tree (share of one core); core1 = core 1 busy from /proc/stat "
          "(relay + softirq + anything else); core0 = generator + backend (or redis-benchmark + "
          "redis-server); cpu s/GB, us/conn, us/req = the relay's own CPU per unit of work (robust to "
          "other load). GB = 10^9 bytes. Relays measured interleaved, round by round.")
    bgtxt = "; ".join(f"{k}: " + " ".join(f"{B.pct(b.get(B.GEN_CPU))}/{B.pct(b.get(B.PROXY_CPU))}" for b in v)
                      for k, v in background.items())
    print(f"background busy core0/core1 before each round (other people's load; >15% = disturbed): {bgtxt}")
    machine["loadavg_at_end"] = open("/proc/loadavg").read().split()[:3]
    data = {"bench": "tcp", "args": {k: (sorted(v) if isinstance(v, set) else v) for k, v in vars(args).items()},
            "machine": machine, "background_busy_before_rounds": background,
            "elapsed_s": round(time.time() - t0, 1),
            "results": results, "table": table}
    print("JSON:", B.write_json("bench_tcp", data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
