#!/usr/bin/env python3
"""
CONNECT-tunnel benchmark (issue 2): txproxy forward mode against squid,
tinyproxy, pproxy and proxy.py, and a direct connection, in one run.

Every proxy runs on core 1 (taskset); the C load generators and the C
backend run on core 0.  For each proxy:

  bulk     one CONNECT tunnel, BULK bytes (default 1 GiB) client -> sink;
           GB/s (10^9 bytes/s) and the ratio to a direct connection
  setup    CLIENTS parallel clients repeating CONNECT + 200 + 64-byte echo
           + close for SECONDS; tunnels/s
  memory   open HOLD tunnels (default 9,000; the fd cap is 20,000 per
           process) after the other tests warmed the proxy up; RSS growth of
           the proxy's process tree / tunnels (KiB per tunnel)

All proxies are started and warmed up first; bulk and setup then run in
REPEATS rounds, each round measuring every proxy once (interleaved, so other
load on this shared machine hits all alike); median and min-max.  The proxy's
CPU use (fraction of its one core) and core 0's use (generator + backend)
are printed next to each rate: a proxy near 100% is the bottleneck; core 0
near 100% with the proxy well below means the load generator is the limit.

  python3 bench/bench_connect.py [--quick] [--only direct,txproxy,squid,...]
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as B  # noqa: E402


# ------------------------------------------------------------------ peers

def txproxy_cmd(python: str, port: int) -> list[str]:
    return [python, "-m", "twisted", "txproxy",
            "--listen", f"tcp:{port}:interface=127.0.0.1:backlog=1024",
            "--connect-ports", "*"]


def start_txproxy(python: str):
    def start(tmp: str, port: int, **_):
        env, cwd = B.txproxy_env(python, tmp)
        return B.Server("txproxy", txproxy_cmd(python, port), B.PROXY_CPU, tmp, env=env, cwd=cwd)
    return start


def start_squid(tmp: str, port: int, **_):
    conf = os.path.join(tmp, "squid.conf")
    with open(conf, "w") as f:
        f.write(f"""\
http_port 127.0.0.1:{port}
workers 1
http_access allow all
cache deny all
cache_mem 8 MB
access_log none
cache_store_log none
cache_log {tmp}/cache.log
pid_filename {tmp}/squid.pid
coredump_dir {tmp}
netdb_filename none
max_filedescriptors 20000
shutdown_lifetime 0 seconds
via off
forwarded_for delete
visible_hostname txbench
""")
    # -N: no daemon, a single process (no coordinator/kid processes)
    return B.Server("squid", ["squid", "-N", "-f", conf], B.PROXY_CPU, tmp)


def start_tinyproxy(tmp: str, port: int, **_):
    conf = os.path.join(tmp, "tinyproxy.conf")
    with open(conf, "w") as f:
        # no ConnectPort line: CONNECT to any port is allowed
        f.write(f"""\
Port {port}
Listen 127.0.0.1
Timeout 600
MaxClients 10000
Allow 127.0.0.1
LogLevel Critical
LogFile "{tmp}/tinyproxy.log"
PidFile "{tmp}/tinyproxy.pid"
DisableViaHeader Yes
""")
    return B.Server("tinyproxy", ["tinyproxy", "-d", "-c", conf], B.PROXY_CPU, tmp)


def start_pproxy(tmp: str, port: int, **_):
    # pproxy would install uvloop's loop if importable; setup-peers.sh keeps
    # uvloop out of /tmp/peervenv (pproxy 2.7.9 + uvloop fail on Python 3.11)
    return B.Server("pproxy", [f"{B.PEERVENV}/pproxy", "-l", f"http://127.0.0.1:{port}"],
                    B.PROXY_CPU, tmp)


def start_proxypy(tmp: str, port: int, **_):
    return B.Server("proxy.py", [
        f"{B.PEERVENV}/proxy", "--hostname", "127.0.0.1", "--port", str(port),
        "--num-acceptors", "1", "--num-workers", "1", "--backlog", "1024",
        "--open-file-limit", "20000", "--log-level", "WARNING",
        # defaults close a tunnel idle for 1 s (cleanup) / 10 s: the memory
        # test needs idle tunnels to stay open
        "--inactive-conn-cleanup-timeout", "600", "--timeout", "600",
        "--data-dir", tmp], B.PROXY_CPU, tmp, env=dict(os.environ, HOME=tmp))


PEERS = [
    B.Peer("direct", None, lambda: None, note="no proxy: client straight to the backend"),
    B.Peer("txproxy", start_txproxy(B.CPY), lambda: B.txproxy_available(B.CPY), python=B.CPY,
           note="CPython /tmp/venv"),
    B.Peer("txproxy-compiled", start_txproxy(B.COMPILED), lambda: B.txproxy_available(B.COMPILED),
           python=B.COMPILED, note="CPython, compiled build (.venv-compiled)"),
    B.Peer("txproxy-pypy", start_txproxy(B.PYPY), lambda: B.txproxy_available(B.PYPY), python=B.PYPY,
           warmup=8.0, note="PyPy /tmp/pypyvenv"),
    B.Peer("squid", start_squid, lambda: B.have("squid"), note="squid -N (one process)"),
    B.Peer("tinyproxy", start_tinyproxy, lambda: B.have("tinyproxy"),
           note="one thread per connection"),
    B.Peer("pproxy", start_pproxy, lambda: B.have(f"{B.PEERVENV}/pproxy"), note="asyncio (no uvloop)"),
    B.Peer("proxy.py", start_proxypy, lambda: B.have(f"{B.PEERVENV}/proxy"),
           note="--num-acceptors 1 --num-workers 1, idle timeouts raised to 600 s"),
]


# ------------------------------------------------------------------ run

class Running:
    """One started peer (or the direct baseline) and its samples."""

    def __init__(self, peer: B.Peer, be: B.Backend, args):
        self.peer, self.name = peer, peer.name
        self.res: dict = {"note": peer.note}
        self.server = None
        self.ok = False
        why = peer.available()
        if why:
            print(f"# skipping {peer.name}: {why}", flush=True)
            self.res = {"skipped": why}
            return
        if peer.python:
            self.res["txproxy_origin"] = B.txproxy_origin(peer.python)
        bulk_port = be.source if args.bulk_mode == "recv" else be.sink
        sink, self.echo = f"127.0.0.1:{bulk_port}", f"127.0.0.1:{be.echo}"
        if peer.start is None:
            self.port, self.pid, self.via_sink, self.via_echo = None, None, None, None
        else:
            self.port = B.free_port()
            try:
                self.server = B.start_and_wait(peer.start(B.mktemp(peer.name), self.port),
                                               self.port, timeout=30)
            except Exception as e:  # noqa: BLE001
                print(f"# skipping {peer.name}: failed to start: {e}", flush=True)
                self.res = {"skipped": f"failed to start: {e}"}
                return
            self.pid, self.via_sink, self.via_echo = self.server.pid, sink, self.echo
            self.res["command"] = " ".join(self.server.argv)
            self.res["rss_start_kb"] = B.rss_kb(self.pid)
        self.bport = self.port or bulk_port
        self.eport = self.port or be.echo
        self.ok = True
        self.bulk: list = []
        self.setup: list = []

    def stop(self) -> None:
        if self.server is not None:
            if not self.server.alive():
                self.res["died"] = self.server.log_tail()
            self.res["log_tail"] = self.server.log_tail(5)
            self.server.stop()


def run_all(peers: list, be: B.Backend, args, results: dict, background: dict) -> None:
    running = []
    try:
        for peer in peers:
            r = Running(peer, be, args)
            results[peer.name] = r.res
            if r.ok:
                running.append(r)
        for r in running:
            # warm-up: code paths, allocator, JIT
            B.log(f"[{r.name}] warm-up")
            B.bulk(r.bport, 256 << 20, r.via_sink, args.bulk_mode)
            B.connrate(r.eport, 2.0 + r.peer.warmup, min(args.clients, 32), r.via_echo)
            if r.peer.warmup:
                B.bulk(r.bport, 1 << 30, r.via_sink, args.bulk_mode)

        def do_bulk(r):
            B.log(f"[{r.name}] bulk {args.bulk} bytes")
            r.bulk.append(B.measured(lambda: B.bulk(r.bport, args.bulk, r.via_sink, args.bulk_mode),
                                     r.pid, be.pid, "gbps"))

        def do_setup(r):
            B.log(f"[{r.name}] set-up rate {args.seconds}s, {args.clients} clients")
            r.setup.append(B.measured(lambda: B.connrate(r.eport, args.seconds, args.clients,
                                                         r.via_echo), r.pid, be.pid, "rate"))

        background["bulk"] = B.rounds(running, args, "bulk", do_bulk)
        background["setup"] = B.rounds(running, args, "set-up", do_setup)
        for r in running:
            r.res["bulk_gbps"] = B.summarize(r.bulk)
            r.res["setup_per_s"] = B.summarize(r.setup)
            r.res["setup_p99_ms"] = [x.extra.get("p99_ms") for x in r.setup]
        if args.hold:
            background["memory"] = []
            for r in running:
                if r.pid:
                    background["memory"].append(B.wait_quiet(args.wait_quiet))
                    B.log(f"[{r.name}] memory: holding {args.hold} tunnels")
                    r.res["memory"] = B.hold_memory(r.pid, r.port, args.hold, target=r.echo)
    finally:
        for r in running:
            r.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 repeat, 3 s runs, 3000 held tunnels")
    ap.add_argument("--only", help="comma-separated peers: " + ",".join(p.name for p in PEERS))
    ap.add_argument("--repeats", type=int)
    ap.add_argument("--seconds", type=float, help="length of one set-up rate run (default 5)")
    ap.add_argument("--clients", type=int, default=64, help="parallel set-up clients (default 64)")
    ap.add_argument("--bulk", type=int, default=1 << 30, help="bytes per bulk run (default 1 GiB)")
    ap.add_argument("--bulk-mode", choices=["send", "recv"], default="send",
                    help="send: client -> sink (default); recv: source -> client")
    ap.add_argument("--keep-temp", action="store_true",
                    help="keep the /tmp/txbench-* dirs (configs and logs) after the run")
    ap.add_argument("--nice", type=int, default=0,
                    help="run proxies, generators and backends at this niceness (e.g. -10 on a "
                         "shared machine: every peer gets the same; default 0)")
    ap.add_argument("--wait-quiet", type=float, default=60.0,
                    help="before each round, wait up to this many seconds for both cores to be "
                         "under 15%% busy (default 60); the load seen is reported")
    ap.add_argument("--hold", type=int, help="tunnels held for the memory test (default 9000, 0 skips)")
    args = ap.parse_args()
    # a SIGTERM (e.g. from `timeout`) unwinds normally, so every server we
    # started is stopped by the finally blocks
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    B.NICE = args.nice
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.seconds = args.seconds or (3.0 if args.quick else 5.0)
    if args.hold is None:
        args.hold = 3000 if args.quick else 9000
    if not 1 <= args.repeats <= 20 or not 0.5 <= args.seconds <= 120 or not 0 <= args.hold <= 9500:
        ap.error("repeats 1-20, seconds 0.5-120, hold 0-9500")
    peers = PEERS
    if args.only:
        names = args.only.split(",")
        unknown = set(names) - {p.name for p in PEERS}
        if unknown:
            ap.error("unknown peer(s): " + ",".join(sorted(unknown)))
        peers = [p for p in PEERS if p.name in names]

    B.build_tools()
    tmp = B.mktemp("backend")
    be = B.Backend(tmp)
    results: dict = {}
    background: dict = {}
    t0 = time.time()
    machine = B.machine_info()
    try:
        run_all(peers, be, args, results, background)
    finally:
        be.stop()
        if not args.keep_temp:
            B.cleanup_temps()

    direct = results.get("direct", {}).get("bulk_gbps", {}).get("median")
    headers = ["proxy", "bulk GB/s med (min-max)", "/direct", "cpu", "core1", "cpu s/GB",
               "tunnels/s med (min-max)", "cpu", "core1", "core0", "cpu us/tunnel", "KiB/tunnel (held)"]
    rows = []
    for name, r in results.items():
        if "skipped" in r:
            rows.append([name, "skipped: " + r["skipped"].splitlines()[0][:70]] + [""] * 10)
            continue
        b, s, m = r.get("bulk_gbps", {}), r.get("setup_per_s", {}), r.get("memory", {})
        ratio = f"{b['median'] / direct:.2f}" if direct and "median" in b else "-"
        mem = "-"
        if "kb_per_conn" in m:
            mem = f"{m['kb_per_conn']:.1f} ({m['held']}{', Pss' if m.get('metric', '').startswith('Pss') else ''})"
        elif m:
            mem = f"failed ({m.get('held')})"
        rows.append([name, B.cell(b, ".2f"), ratio, B.pct(b.get("proxy_cpu")), B.pct(b.get("core1_busy")),
                     B.per_unit(b, 1, ".2f"),
                     B.cell(s, ".0f"), B.pct(s.get("proxy_cpu")), B.pct(s.get("core1_busy")),
                     B.pct(s.get("core0_cpu")), B.per_unit(s, 1e6), mem])
    print()
    print(f"CONNECT tunnels, one core per proxy; {args.repeats} repeat(s); bulk {args.bulk} bytes "
          f"({args.bulk_mode}); set-up: {args.clients} clients x {args.seconds:g}s")
    table = B.print_table(headers, rows)
    print("cpu = the proxy's process tree (share of one core); core1 = core 1 busy from /proc/stat "
          "(proxy + softirq + anything else: other load shows as core1 >> cpu, also in the direct row); "
          "core0 = generator + backend processes; cpu s/GB and cpu us/tunnel = the proxy's own CPU per unit "
          "of work (robust to other load). GB = 10^9 bytes. Peers measured interleaved, round by round.")
    bgtxt = "; ".join(f"{k}: " + " ".join(f"{B.pct(b.get(B.GEN_CPU))}/{B.pct(b.get(B.PROXY_CPU))}" for b in v)
                      for k, v in background.items())
    print(f"background busy core0/core1 before each round (other people's load; >15% = disturbed): {bgtxt}")
    machine["loadavg_at_end"] = open("/proc/loadavg").read().split()[:3]
    data = {"bench": "connect", "args": vars(args), "machine": machine,
            "background_busy_before_rounds": background,
            "elapsed_s": round(time.time() - t0, 1), "results": results, "table": table}
    print("JSON:", B.write_json("bench_connect", data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
