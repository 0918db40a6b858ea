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

bulk and setup are repeated REPEATS times (median, min-max).  The proxy's
CPU use (fraction of its one core) and core 0's use (generator + backend)
are printed next to each rate: a proxy near 100% is the bottleneck; core 0
near 100% with the proxy well below means the load generator is the limit.

  python3 bench/bench_connect.py [--quick] [--only direct,txproxy,squid,...]
"""

from __future__ import annotations

import argparse
import os
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
        env = dict(os.environ, PYTHONPATH=B.REPO)
        return B.Server("txproxy", txproxy_cmd(python, port), B.PROXY_CPU, tmp, env=env, cwd=B.REPO)
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

def run_peer(peer: B.Peer, be: B.Backend, args) -> dict:
    res: dict = {"note": peer.note}
    why = peer.available()
    if why:
        print(f"# skipping {peer.name}: {why}", flush=True)
        return {"skipped": why}
    if peer.python:
        res["txproxy_origin"] = B.txproxy_origin(peer.python)
    bg = B.wait_quiet(args.wait_quiet)
    res["background_busy"] = bg
    if max(bg.get(B.GEN_CPU, 0), bg.get(B.PROXY_CPU, 0)) >= 0.15:
        print(f"# WARNING {peer.name}: other load before the run: core0 {bg.get(B.GEN_CPU, 0):.0%}, "
              f"core1 {bg.get(B.PROXY_CPU, 0):.0%} busy -- numbers are disturbed", flush=True)
    tmp = B.mktemp(peer.name)
    bulk_port = be.source if args.bulk_mode == "recv" else be.sink
    sink, echo = f"127.0.0.1:{bulk_port}", f"127.0.0.1:{be.echo}"
    server = None
    if peer.start is None:
        port, pid, via_sink, via_echo = None, None, None, None
    else:
        port = B.free_port()
        try:
            server = B.start_and_wait(peer.start(tmp, port), port, timeout=30)
        except Exception as e:  # noqa: BLE001
            print(f"# skipping {peer.name}: failed to start: {e}", flush=True)
            return {"skipped": f"failed to start: {e}"}
        pid, via_sink, via_echo = server.pid, sink, echo
        res["command"] = " ".join(server.argv)
        res["rss_start_kb"] = B.rss_kb(pid)
    bport = port or bulk_port
    eport = port or be.echo
    try:
        # warm-up: code paths, allocator, JIT
        B.log(f"[{peer.name}] warm-up")
        B.bulk(bport, 256 << 20, via_sink, args.bulk_mode)
        B.connrate(eport, 2.0 + peer.warmup, min(args.clients, 32), via_echo)
        if peer.warmup:
            B.bulk(bport, 1 << 30, via_sink, args.bulk_mode)

        B.log(f"[{peer.name}] bulk {args.repeats} x {args.bulk} bytes")
        samples = [B.measured(lambda: B.bulk(bport, args.bulk, via_sink, args.bulk_mode), pid,
                              be.pid, "gbps") for _ in range(args.repeats)]
        res["bulk_gbps"] = B.summarize(samples)

        B.log(f"[{peer.name}] set-up rate {args.repeats} x {args.seconds}s, {args.clients} clients")
        samples = [B.measured(lambda: B.connrate(eport, args.seconds, args.clients, via_echo), pid,
                              be.pid, "rate") for _ in range(args.repeats)]
        res["setup_per_s"] = B.summarize(samples)
        res["setup_p99_ms"] = [s.extra.get("p99_ms") for s in samples]

        if pid and args.hold:
            B.log(f"[{peer.name}] memory: holding {args.hold} tunnels")
            res["memory"] = B.hold_memory(pid, port, args.hold, target=echo)
        if server is not None and not server.alive():
            res["died"] = server.log_tail()
    finally:
        if server is not None:
            res["log_tail"] = server.log_tail(5)
            server.stop()
    return res


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
    ap.add_argument("--nice", type=int, default=0,
                    help="run proxies, generators and backends at this niceness (e.g. -10 on a "
                         "shared machine: every peer gets the same; default 0)")
    ap.add_argument("--wait-quiet", type=float, default=60.0,
                    help="before each peer, wait up to this many seconds for both cores to be "
                         "under 15%% busy (default 60); the load seen is reported")
    ap.add_argument("--hold", type=int, help="tunnels held for the memory test (default 9000, 0 skips)")
    args = ap.parse_args()
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
    t0 = time.time()
    try:
        for peer in peers:
            results[peer.name] = run_peer(peer, be, args)
    finally:
        be.stop()

    direct = results.get("direct", {}).get("bulk_gbps", {}).get("median")
    headers = ["proxy", "bg c0/c1", "bulk GB/s med (min-max)", "/direct", "cpu", "core1",
               "tunnels/s med (min-max)", "cpu", "core1", "core0", "KiB/tunnel (held)"]
    rows = []
    for name, r in results.items():
        if "skipped" in r:
            rows.append([name, "", "skipped: " + r["skipped"].splitlines()[0][:70]] + [""] * 8)
            continue
        b, s, m = r.get("bulk_gbps", {}), r.get("setup_per_s", {}), r.get("memory", {})
        ratio = f"{b['median'] / direct:.2f}" if direct and "median" in b else "-"
        mem = "-"
        if "kb_per_conn" in m:
            mem = f"{m['kb_per_conn']:.1f} ({m['held']}{', Pss' if m.get('metric', '').startswith('Pss') else ''})"
        elif m:
            mem = f"failed ({m.get('held')})"
        bg = r.get("background_busy", {})
        rows.append([name, f"{B.pct(bg.get(B.GEN_CPU))}/{B.pct(bg.get(B.PROXY_CPU))}", B.cell(b, ".2f"), ratio, B.pct(b.get("proxy_cpu")), B.pct(b.get("core1_busy")),
                     B.cell(s, ".0f"), B.pct(s.get("proxy_cpu")), B.pct(s.get("core1_busy")),
                     B.pct(s.get("core0_cpu")), mem])
    print()
    print(f"CONNECT tunnels, one core per proxy; {args.repeats} repeat(s); bulk {args.bulk} bytes "
          f"({args.bulk_mode}); set-up: {args.clients} clients x {args.seconds:g}s")
    table = B.print_table(headers, rows)
    print("cpu = the proxy's process tree (share of one core); core1 = core 1 busy from /proc/stat "
          "(proxy + softirq + anything else: other load shows as core1 >> cpu, also in the direct row); "
          "core0 = generator + backend processes; bg = both cores' busy share in the second before the peer "
          "started (other people's load). GB = 10^9 bytes.")
    data = {"bench": "connect", "args": vars(args), "machine": B.machine_info(),
            "elapsed_s": round(time.time() - t0, 1), "results": results, "table": table}
    print("JSON:", B.write_json("bench_connect", data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
