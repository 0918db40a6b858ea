"""
Connection cost in instructions and system calls (issue 18), robust on a
shared machine where wall-clock rates are noise.

* ``--what instructions``: the proxy (``python -m twisted txproxy``, forward
  mode for CONNECT tunnels, ``--mode tcp`` for tcp) runs under
  ``valgrind --tool=callgrind --instr-atstart=no``; after start-up and a
  warm-up, instrumentation is switched on (``callgrind_control -i on``),
  ``connrate -H N`` opens N connections/tunnels (each one 64-byte echo round
  trip), holds them and closes them, instrumentation is switched off, and
  the instructions executed by the proxy (``Ir``, user space) are divided
  by N.
* ``--what syscalls``: the same load with ``strace -c -f`` attached to the
  proxy (not under valgrind): system calls per connection, by name.

Run from the repository root::

    python bench/bench_instructions.py --what instructions --n 500
    python bench/bench_instructions.py --what syscalls --n 2000

Only loopback; every process is started here and stopped by its PID.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
from typing import Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import benchlib as B  # noqa: E402
from bench_idle_memory import PYTHONS, connrateTarget, proxyArgs  # noqa: E402


def load(port: int, mode: str, echo: int, n: int) -> dict:
    """
    Open N connections/tunnels (one echo each), hold them, close them all.
    """
    argv = [B.tool("connrate"), "-p", str(port), "-c", "50", "-H", str(n), "-t", "600", "-T", "60000"]
    target = connrateTarget(mode, echo)
    if target:
        argv += ["-C", target]
    p = subprocess.run(argv, input=b"", capture_output=True, timeout=900)
    lines = p.stdout.decode().splitlines()
    import json

    return json.loads(lines[0]) if lines else {"error": p.stderr.decode()[-200:]}


def openFiles(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def settle(pid: int, base: int, limit: float = 60.0) -> None:
    """
    Wait (at most C{limit} seconds) until the proxy holds no more
    descriptors than C{base} (every connection of the load is closed), or
    their count has not changed for 5 seconds.
    """
    end = time.monotonic() + limit
    last, since = openFiles(pid), time.monotonic()
    while time.monotonic() < end:
        count = openFiles(pid)
        if count <= base:
            break
        if count != last:
            last, since = count, time.monotonic()
        elif time.monotonic() - since > 5:
            break  # (steady above the start: descriptors the proxy opened meanwhile)
        time.sleep(0.2)
    time.sleep(0.5)


def startProxy(prefix: List[str], python: str, mode: str, echo: int, tmp: str, timeout: float) -> "tuple[B.Server, int]":
    port = B.free_port()
    env = dict(os.environ, PYTHONPATH=B.REPO)
    server = B.Server(f"txproxy-{mode}", prefix + [python, "-m", "twisted", "txproxy"] + proxyArgs(mode, port, echo),
                      B.PROXY_CPU, tmp, env=env, cwd=B.REPO)
    B.start_and_wait(server, port, timeout)
    return server, port


def valgrindPid(server: B.Server) -> int:
    """
    The valgrind process's PID (taskset and nice exec, so it is the
    server's own PID).
    """
    return server.pid


def instructions(python: str, mode: str, n: int, be: B.Backend, tmp: str, warmup: int = 50) -> dict:
    out = os.path.join(tmp, f"callgrind.{mode}.out")
    prefix = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]
    if "pypy" in python:
        prefix.append("--smc-check=all")  # (the JIT writes code)
    server, port = startProxy(prefix, python, mode, be.echo, tmp, 300)
    try:
        pid = valgrindPid(server)
        base = openFiles(pid)
        for _ in range(max(1, warmup // 2000)):
            load(port, mode, be.echo, min(warmup, 2000))  # warm-up: first-use caches, imports, PyPy's JIT
            settle(pid, base, 300)
        subprocess.run(["callgrind_control", "-i", "on", str(pid)], check=True, capture_output=True, timeout=60)
        res = load(port, mode, be.echo, n)
        settle(pid, base, 300)  # the last closes
        subprocess.run(["callgrind_control", "-i", "off", str(pid)], check=True, capture_output=True, timeout=60)
        dump = subprocess.run(["callgrind_control", "-d", str(pid)], capture_output=True, timeout=120)
        time.sleep(1)
    finally:
        server.stop(30)
    total = 0
    for name in os.listdir(tmp):
        if name.startswith(os.path.basename(out)):
            with open(os.path.join(tmp, name)) as f:
                for line in f:
                    if line.startswith("summary:") or line.startswith("totals:"):
                        total = max(total, int(line.split()[1]))
    return {"held": res.get("held"), "errors": res.get("errors"), "instructions": total,
            "per_conn": total / res["held"] if res.get("held") else None, "dump": dump.returncode}


def syscalls(python: str, mode: str, n: int, be: B.Backend, tmp: str) -> dict:
    server, port = startProxy([], python, mode, be.echo, tmp, 30)
    out = os.path.join(tmp, f"strace.{mode}")
    try:
        base = openFiles(server.pid)
        load(port, mode, be.echo, 50)
        settle(server.pid, base)
        st = subprocess.Popen(["strace", "-c", "-f", "-p", str(server.pid), "-o", out],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.5)
        res = load(port, mode, be.echo, n)
        settle(server.pid, base)
        st.send_signal(signal.SIGINT)
        st.wait(30)
    finally:
        server.stop()
    calls: Dict[str, int] = {}
    with open(out) as f:
        for line in f:
            m = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:(\d+)\s+)?(\w+)\s*$", line)
            if m and m.group(3) != "total":
                calls[m.group(3)] = int(m.group(1))
    held = res.get("held") or 0
    perConn = {k: v / held for k, v in sorted(calls.items(), key=lambda kv: -kv[1])} if held else {}
    # epoll_wait (and accept4's EAGAIN) depend on batching, not on the code path.
    core = sum(v for k, v in perConn.items() if k != "epoll_wait")
    return {"held": held, "calls": calls, "per_conn": perConn, "per_conn_total_without_epoll_wait": core,
            "accept4_errors_note": "accept4 includes the EAGAIN that ends each accept batch"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--what", default="instructions,syscalls")
    ap.add_argument("--modes", default="connect,tcp")
    ap.add_argument("--python", default="cpython", choices=sorted(PYTHONS))
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--warmup", type=int, default=None,
                    help="connections before measuring (default 50; 4000 on PyPy, for its JIT)")
    args = ap.parse_args()
    B.build_tools()
    tmp = B.mktemp("instr")
    be = B.Backend(tmp)
    results: Dict[str, Dict[str, Optional[dict]]] = {}
    try:
        for what in args.what.split(","):
            for mode in args.modes.split(","):
                python = PYTHONS[args.python]
                if what == "instructions":
                    warmup = args.warmup if args.warmup is not None else (4000 if args.python == "pypy" else 50)
                    res = instructions(python, mode, args.n, be, tmp, warmup)
                else:
                    res = syscalls(python, mode, args.n, be, tmp)
                results.setdefault(what, {})[mode] = res
                if what == "instructions":
                    print(f"{args.python} {mode:8s} instructions/conn: {res['per_conn'] or 0:,.0f}"
                          f"  (N={res['held']}, errors {res['errors']})", flush=True)
                else:
                    detail = " ".join(f"{k}={v:.2f}" for k, v in res["per_conn"].items())
                    print(f"{args.python} {mode:8s} syscalls/conn: {res['per_conn_total_without_epoll_wait']:.2f}"
                          f" without epoll_wait  ({detail})", flush=True)
    finally:
        be.stop()
        B.cleanup_temps()
    results["machine"] = B.machine_info()  # type: ignore[assignment]
    print("wrote", B.write_json("bench_instructions", results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
