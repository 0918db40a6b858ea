"""
Shared plumbing for bench_connect.py and bench_tcp.py.

Everything runs on 127.0.0.1.  The proxy under test is pinned to core 1
(PROXY_CPU); load generators and backends to core 0 (GEN_CPU).  Every
server is started by us, on its own port, with its own config in a temp
directory, and stopped by its PID.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "out")
REPO = os.path.dirname(HERE)
PROXY_CPU = "1"
GEN_CPU = "0"
NICE = 0  # set by --nice: run everything we start at this niceness (negative: ahead of other load)


def pinned(cpu: str) -> list[str]:
    """Command prefix: pin to `cpu` (and renice when --nice was given)."""
    pre = ["nice", "-n", str(NICE)] if NICE else []
    return pre + ["taskset", "-c", cpu]
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024

CPY = "/tmp/venv/bin/python"
PYPY = "/tmp/pypyvenv/bin/python"
#: The compiled build (mypyc), as scripts/test installs it (`pip install .`,
#: not editable); refresh it after changing the code:
#:   .venv-compiled/bin/python -m pip install -q .
COMPILED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        ".venv-compiled", "bin", "python")
#: PyPy's minor-GC nursery for every PyPy process we start (see Server).
PYPY_NURSERY = "32M"
PEERVENV = "/tmp/peervenv/bin"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- C tools

def build_tools() -> None:
    """Compile bench/c/*.c into bench/out/ when missing or stale."""
    os.makedirs(OUT, exist_ok=True)
    for name in ("backend", "connrate", "bulk"):
        src = os.path.join(HERE, "c", name + ".c")
        dst = os.path.join(OUT, name)
        if not os.path.exists(dst) or os.path.getmtime(dst) < os.path.getmtime(src):
            subprocess.run(["gcc", "-O2", "-Wall", "-o", dst, src], check=True)


def tool(name: str) -> str:
    return os.path.join(OUT, name)


# ---------------------------------------------------------------- /proc

def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                st = f.read()
        except OSError:
            continue
        ppid = int(st[st.rindex(")") + 2:].split()[1])
        kids.setdefault(ppid, []).append(int(d))
    return kids


def tree(pid: int) -> list[int]:
    kids = _children_map()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def cpu_seconds(pid: int) -> float:
    """utime+stime (+ reaped children's) summed over the live process tree."""
    total = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                st = f.read()
        except OSError:
            continue
        fields = st[st.rindex(")") + 2:].split()
        # fields[0] is state (field 3); utime is field 14 -> index 11
        total += sum(int(x) for x in fields[11:15])
    return total / CLK_TCK


def cpu_busy() -> dict[str, float]:
    """Busy (non-idle, non-iowait) seconds per CPU, from /proc/stat."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                parts = line.split()
                vals = [int(x) for x in parts[1:9]]
                out[parts[0][3:]] = (sum(vals) - vals[3] - vals[4]) / CLK_TCK
    return out


def pss_kb(pid: int) -> int:
    """Pss summed over the process tree, in KiB (shared pages split between
    processes: the honest total for a forking proxy such as socat)."""
    total = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            continue
    return total


def background_busy(seconds: float = 1.0) -> dict[str, float]:
    """Busy share of each core over `seconds` while we run nothing."""
    a = cpu_busy()
    time.sleep(seconds)
    b = cpu_busy()
    return {c: round((b[c] - a[c]) / seconds, 3) for c in b}


def wait_quiet(max_wait: float, threshold: float = 0.15) -> dict[str, float]:
    """Wait (at most max_wait s) until cores 0 and 1 are both below
    `threshold` busy for 2 s in a row; return the last reading."""
    end = time.monotonic() + max_wait
    bg = background_busy(1.0)
    quiet = 0
    while True:
        if bg.get(GEN_CPU, 0) < threshold and bg.get(PROXY_CPU, 0) < threshold:
            quiet += 1
            if quiet >= 2:
                return bg
        else:
            quiet = 0
        if time.monotonic() >= end:
            return bg
        bg = background_busy(1.0)


def rss_kb(pid: int) -> int:
    """VmRSS summed over the process tree, in KiB."""
    total = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            continue
    return total


# ---------------------------------------------------------------- processes

def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port: int, timeout: float = 15.0, proc: Optional[subprocess.Popen] = None) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False


class Server:
    """A process we started (pinned with taskset) and stop by its PID."""

    def __init__(self, name: str, argv: list[str], cpu: str, tmpdir: str,
                 env: Optional[dict] = None, cwd: Optional[str] = None,
                 stdout=None):
        self.name = name
        self.argv = pinned(cpu) + argv
        if os.path.basename(argv[0]).startswith("pypy") or argv[0].startswith(os.path.dirname(PYPY)):
            # What docs/performance.rst recommends for PyPy (the default
            # nursery here is 1 MB); PYPY_GC_NURSERY in our own environment
            # wins, e.g. PYPY_GC_NURSERY= for PyPy's default.
            env = dict(os.environ if env is None else env)
            env.setdefault("PYPY_GC_NURSERY", os.environ.get("PYPY_GC_NURSERY", PYPY_NURSERY))
            if not env["PYPY_GC_NURSERY"]:
                del env["PYPY_GC_NURSERY"]
        self.logpath = os.path.join(tmpdir, name + ".log")
        self._log = open(self.logpath, "wb")
        self.proc = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL,
            stdout=stdout if stdout is not None else self._log,
            stderr=self._log, env=env, cwd=cwd or tmpdir,
            start_new_session=True)
        self.pid = self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, n: int = 15) -> str:
        try:
            with open(self.logpath, "rb") as f:
                return b"\n".join(f.read().splitlines()[-n:]).decode("utf-8", "replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 8.0) -> None:
        if self.proc.poll() is None:
            # only this process (it forwards to its own children, e.g. socat's
            # forks are reaped by it); kill leftovers of its tree by PID after
            pids = tree(self.pid)
            try:
                os.kill(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait(5)
            for p in pids[1:]:
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self._log.close()


class Backend:
    """bench/out/backend on core 0: echo, sink and source ports."""

    def __init__(self, tmpdir: str, max_seconds: int = 3600):
        self.server = Server("backend", [tool("backend"), "-t", str(max_seconds)],
                             GEN_CPU, tmpdir, stdout=subprocess.PIPE)
        line = self.server.proc.stdout.readline().decode()
        if not line.startswith("READY"):
            raise RuntimeError("backend did not start: " + self.server.log_tail())
        kv = dict(part.split("=") for part in line.split()[1:])
        self.echo, self.sink, self.source = int(kv["echo"]), int(kv["sink"]), int(kv["source"])
        self.pid = self.server.pid

    def stop(self) -> None:
        self.server.stop()


# ---------------------------------------------------------------- load runs

def _run_json(argv: list[str], timeout: float) -> dict:
    try:
        p = subprocess.run(pinned(GEN_CPU) + argv, capture_output=True,
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": "timeout"}
    lines = p.stdout.decode().strip().splitlines()
    if not lines:
        return {"error": (p.stderr.decode().strip() or f"exit {p.returncode}")[-300:]}
    res = json.loads(lines[-1])
    if p.returncode and "error" not in res:
        res["error"] = f"exit {p.returncode}"
    return res


def connrate(port: int, seconds: float, clients: int, target: Optional[str] = None,
             payload: int = 64) -> dict:
    argv = [tool("connrate"), "-p", str(port), "-c", str(clients), "-t", str(seconds),
            "-s", str(payload)]
    if target:
        argv += ["-C", target]
    return _run_json(argv, seconds + 30)


def bulk(port: int, nbytes: int, target: Optional[str] = None, mode: str = "send",
         timeout: float = 120) -> dict:
    argv = [tool("bulk"), "-p", str(port), "-n", str(nbytes), "-m", mode, "-T", str(timeout)]
    if target:
        argv += ["-C", target]
    return _run_json(argv, timeout + 10)


@dataclass
class Sample:
    value: Optional[float]
    proxy_cpu: Optional[float] = None     # fraction of one core
    core0: Optional[float] = None         # generator + backend CPU, fraction of one core
    core1: Optional[float] = None         # core 1 busy, all causes (proxy, softirq, other processes)
    extra: dict = field(default_factory=dict)


def measured(fn: Callable[[], dict], proxy_pid: Optional[int], backend_pid: Optional[int],
             key: str) -> Sample:
    """Run fn() and read the proxy's and the backend's CPU use around it."""
    p0 = cpu_seconds(proxy_pid) if proxy_pid else None
    b0 = cpu_seconds(backend_pid) if backend_pid else None
    k0 = cpu_busy()
    t0 = time.monotonic()
    res = fn()
    wall = time.monotonic() - t0
    k1 = cpu_busy()
    pcpu = (cpu_seconds(proxy_pid) - p0) / wall if proxy_pid else None
    bcpu = (cpu_seconds(backend_pid) - b0) / wall if backend_pid else 0.0
    c1 = (k1.get(PROXY_CPU, 0) - k0.get(PROXY_CPU, 0)) / wall
    if "error" in res:
        return Sample(None, pcpu, None, c1, res)
    secs = res.get("seconds") or wall
    # the generator's own CPU is over its measuring window; scale to wall
    core0 = res.get("gen_cpu", 0.0) * secs / wall + bcpu
    return Sample(res[key], pcpu, core0, c1, res)


def summarize(samples: list[Sample]) -> dict:
    vals = [s.value for s in samples if s.value is not None]
    cpus = [s.proxy_cpu for s in samples if s.proxy_cpu is not None and s.value is not None]
    c0 = [s.core0 for s in samples if s.core0 is not None and s.value is not None]
    out = {"n": len(vals), "samples": vals}
    if vals:
        out.update(median=statistics.median(vals), min=min(vals), max=max(vals))
    if cpus:
        out["proxy_cpu"] = statistics.median(cpus)
        # the proxy's own CPU per unit of work (per GB, per connection, per
        # request): much less sensitive to other load than the rate itself
        per = [s.proxy_cpu / s.value for s in samples
               if s.proxy_cpu is not None and s.value]
        if per:
            out["cpu_per_unit"] = statistics.median(per)
    if c0:
        out["core0_cpu"] = statistics.median(c0)
    c1 = [s.core1 for s in samples if s.core1 is not None and s.value is not None]
    if c1:
        out["core1_busy"] = statistics.median(c1)
    errs = [s.extra.get("error") for s in samples if s.extra.get("error")]
    if errs:
        out["errors"] = errs
    nerr = sum(s.extra.get("errors", 0) for s in samples)
    if nerr:
        out["cycle_errors"] = nerr
    return out


def hold_memory(proxy_pid: int, port: int, count: int, clients: int = 200,
                target: Optional[str] = None, settle: float = 1.5,
                limit_s: float = 120) -> dict:
    """Open `count` connections (tunnels, with target) through the proxy, keep
    them, and report the proxy tree's RSS growth per connection."""
    time.sleep(settle)
    base, base_pss, base_procs = rss_kb(proxy_pid), pss_kb(proxy_pid), len(tree(proxy_pid))
    argv = pinned(GEN_CPU) + [tool("connrate"), "-p", str(port), "-c", str(clients),
            "-H", str(count), "-t", str(limit_s), "-T", "10000"]
    if target:
        argv += ["-C", target]
    p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    try:
        first = json.loads(p.stdout.readline().decode() or '{"error": "no output"}')
        time.sleep(settle)
        held_rss, held_pss, held_procs = rss_kb(proxy_pid), pss_kb(proxy_pid), len(tree(proxy_pid))
        p.stdin.close()
        last = p.stdout.readline().decode()
        p.wait(30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    held = first.get("held", 0)
    res = {"base_rss_kb": base, "held_rss_kb": held_rss, "held": held,
           "base_pss_kb": base_pss, "held_pss_kb": held_pss,
           "processes": [base_procs, held_procs],
           "wanted": count, "errors": first.get("errors"), "open_seconds": first.get("seconds")}
    if last:
        res["closed_by_peer_while_held"] = json.loads(last).get("closed_by_peer")
    if held:
        res["rss_kb_per_conn"] = (held_rss - base) / held
        res["pss_kb_per_conn"] = (held_pss - base_pss) / held
        # one process: VmRSS as asked; a process tree: Pss, so shared pages
        # are not counted once per process
        res["kb_per_conn"] = res["rss_kb_per_conn"] if held_procs == 1 else res["pss_kb_per_conn"]
        res["metric"] = "VmRSS" if held_procs == 1 else "Pss (process tree)"
    return res


def redis_bench(port: int, requests: int, clients: int = 50, timeout: float = 120) -> dict:
    """redis-benchmark -t ping_inline through `port`; requests/s and its own CPU."""
    argv = pinned(GEN_CPU) + ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port),
            "-t", "ping_inline", "-c", str(clients), "-n", str(requests), "--csv"]
    import resource
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        return {"error": "timeout"}
    wall = time.monotonic() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)  # only this child was reaped meanwhile
    gen_cpu = (r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime) / wall
    for line in out.decode().splitlines():
        parts = [x.strip('"') for x in line.split(",")]
        if parts and parts[0] == "PING_INLINE":
            res = {"rps": float(parts[1]), "seconds": wall, "gen_cpu": gen_cpu}
            if len(parts) > 7:
                res["p50_ms"], res["p99_ms"] = float(parts[4]), float(parts[6])
            return res
    return {"error": (err.decode() or out.decode()).strip()[-300:] or f"exit {p.returncode}"}


def rounds(running: list, args, what: str, fn) -> list:
    """Interleave: round r measures every peer once (order reversed on odd
    rounds), so slow drifts and other people's load hit all peers alike."""
    bgs = []
    for rep in range(args.repeats):
        bg = wait_quiet(args.wait_quiet)
        bgs.append(bg)
        flag = "" if max(bg.get(GEN_CPU, 0), bg.get(PROXY_CPU, 0)) < 0.15 else \
            "  WARNING: machine busy before this round, numbers disturbed"
        log(f"{what} round {rep + 1}/{args.repeats}: background core0 {bg.get(GEN_CPU, 0):.0%} "
              f"core1 {bg.get(PROXY_CPU, 0):.0%}{flag}")
        order = running if rep % 2 == 0 else list(reversed(running))
        for r in order:
            fn(r)
    return bgs


# ---------------------------------------------------------------- peers

@dataclass
class Peer:
    """How to start one proxy.  start(tmpdir, listen_port, **ctx) -> Server."""
    name: str
    start: Optional[Callable[..., Server]]
    available: Callable[[], Optional[str]]   # None if usable, else why not
    warmup: float = 0.0                      # extra seconds of load before measuring (JIT)
    note: str = ""
    python: Optional[str] = None             # txproxy rows: the interpreter


def txproxy_origin(python: str) -> str:
    """Which txproxy code and Twisted `python` runs (with PYTHONPATH=REPO)."""
    p = subprocess.run([python, "-c", "import sys, txproxy, twisted; print(sys.version.split()[0], "
                        "'twisted', twisted.__version__, txproxy.__file__)"],
                       capture_output=True, text=True, cwd=REPO, timeout=60,
                       env=dict(os.environ, PYTHONPATH=REPO))
    commit = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True, timeout=10).stdout.strip()
    dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "txproxy", "twisted"],
                           capture_output=True, text=True, timeout=10).stdout.strip()
    return f"{p.stdout.strip()} @ {commit}{' + uncommitted changes' if dirty else ''}"


def have(cmd: str) -> Optional[str]:
    return None if shutil.which(cmd) or os.path.exists(cmd) else f"{cmd} not installed"


def txproxy_env(python: str, tmp: str) -> tuple[dict, str]:
    """
    Environment and working directory for a txproxy process run by `python`:
    the checkout itself (PYTHONPATH=REPO) except for the compiled build,
    which must import its installed extensions, not the checkout's sources.
    """
    if python == COMPILED:
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)
        env.pop("TXPROXY_PURE", None)
        return env, tmp
    return dict(os.environ, PYTHONPATH=REPO), REPO


def txproxy_available(python: str) -> Optional[str]:
    if not os.path.exists(python):
        return f"{python} missing"
    if python == COMPILED:
        p = subprocess.run([python, "-c", "import sys, txproxy, twisted.plugins.txproxy_plugin; "
                            "sys.exit(not txproxy.COMPILED)"], capture_output=True, cwd="/", timeout=60,
                           env=txproxy_env(python, "/")[0])
        return "txproxy in .venv-compiled does not run compiled" if p.returncode else None
    if not os.path.exists(os.path.join(REPO, "twisted", "plugins", "txproxy_plugin.py")):
        return "twisted/plugins/txproxy_plugin.py not there yet"
    p = subprocess.run([python, "-c", "import txproxy, twisted.plugins.txproxy_plugin"],
                       capture_output=True, cwd=REPO, timeout=60)
    if p.returncode:
        return f"txproxy not importable by {python}: " + p.stderr.decode().strip().splitlines()[-1][:200]
    return None


def start_and_wait(server: Server, port: int, timeout: float = 20.0) -> Server:
    if not wait_port(port, timeout, server.proc):
        tail = server.log_tail()
        server.stop()
        raise RuntimeError(f"{server.name} did not listen on {port}:\n{tail}")
    return server


_TEMPS: list[str] = []


def cleanup_temps() -> None:
    """Remove the temp dirs (configs, logs) made by mktemp in this run."""
    while _TEMPS:
        shutil.rmtree(_TEMPS.pop(), ignore_errors=True)


def mktemp(prefix: str) -> str:
    d = tempfile.mkdtemp(prefix=f"txbench-{prefix}-")
    _TEMPS.append(d)
    os.chmod(d, 0o777)  # squid drops to the proxy user and writes its logs here
    return d


# ---------------------------------------------------------------- output

def fmt(v: Optional[float], spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec)


def cell(summary: dict, spec: str, scale: float = 1.0) -> str:
    if "median" not in summary:
        return "failed" if summary.get("errors") else "-"
    m, lo, hi = (summary[k] * scale for k in ("median", "min", "max"))
    if summary["n"] == 1:
        return format(m, spec)
    return f"{format(m, spec)} ({format(lo, spec)}-{format(hi, spec)})"


def per_unit(summary: dict, scale: float, spec: str = ".0f") -> str:
    v = summary.get("cpu_per_unit")
    return "-" if v is None else format(v * scale, spec)


def pct(v: Optional[float]) -> str:
    return "-" if v is None else f"{100 * v:.0f}%"


def print_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    lines = [" | ".join(h.ljust(w) for h, w in zip(headers, widths)),
             "-+-".join("-" * w for w in widths)]
    for r in rows:
        lines.append(" | ".join(c.ljust(w) for c, w in zip(r, widths)))
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def machine_info() -> dict:
    info = {"nproc": os.cpu_count(), "kernel": os.uname().release, "nice": NICE,
            "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        with open("/proc/loadavg") as f:
            info["loadavg_at_start"] = f.read().split()[:3]
    except OSError:
        pass
    try:
        info["txproxy_commit"] = subprocess.run(
            ["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True,
            text=True, timeout=10).stdout.strip()
    except Exception:
        pass
    return info


def write_json(name: str, data: dict) -> str:
    os.makedirs(OUT, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = os.path.join(OUT, f"{name}-{stamp}.json")
    with open(path, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
    latest = os.path.join(OUT, f"{name}-latest.json")
    with open(latest, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
    return path
