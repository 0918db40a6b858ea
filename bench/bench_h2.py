#!/usr/bin/env python3
"""
HTTP/2 benchmark (issue 14): txproxy's HTTP/2 serving against HAProxy and
nginx, side by side in one run, every proxy reverse-proxying to the same
HTTP/1.1 origin as bench_http.py (one nginx worker on core 0 answering
`return 200 "hello world\\n"`).

Every proxy runs on core 1 (taskset), h2load and the origin on core 0.  Each
proxy listens three times: HTTP/1.1 in clear, HTTP/2 with prior knowledge in
clear (h2c), and TLS 1.3 offering ALPN h2,http/1.1:

  txproxy       --mode reverse --route '*=http://127.0.0.1:ORIGIN', one
                --listen tcp: for HTTP/1.1, one for h2c (the same listener
                kind: txproxy recognises the preface), one ssl: (CPython, and
                PyPy with --pypy)
  haproxy       nbthread 1; bind ... (h1), bind ... proto h2 (h2c),
                bind ... ssl crt F alpn h2,http/1.1 (TLS)
  nginx 1.22    worker_processes 1; listen ... (h1), listen ... http2 (h2c),
                listen ... ssl http2 (TLS); upstream keepalive 64

Measurements (interleaved rounds, medians, ratios within this run):

  h2-tls   h2load -t1 -c50 -m10 https://...  (must say "Application protocol: h2")
  h2c      h2load -t1 -c50 -m10 http://...   (prior knowledge; "h2c")
  h1       h2load -t1 --h1 -c50 -m1 http://... keep-alive HTTP/1.1, one request
           at a time per connection (like wrk -c50 in bench_http.py); --h1-streams
           N pipelines N instead
  memory   RSS growth per idle HTTP/2 client connection: N connections (h2c,
           then TLS) that completed the SETTINGS exchange both ways, held open
           (this script's --hold-client mode, pinned to core 0)

Columns: req/s (median, min-max), p99 latency in ms (h2load's summary has no
p99: from its --log-file, every request of the run), the proxy's CPU
microseconds per request (utime+stime of its process tree from /proc/PID/stat
before and after, over requests that succeeded), the proxy's CPU (share of
one core) and h2load + origin CPU on core 0.  A row whose proxy does not
start, does not negotiate the protocol asked for, or fails requests is
reported as "failed: <why>" and the run goes on.  JSON goes to bench/out/.

  /tmp/venv/bin/python bench/bench_h2.py [--quick] [--pypy] [--only NAME,...]

--only takes measurement names (h2-tls, h2c, h1, memory) and/or peer names
(txproxy, txproxy-pypy, haproxy, nginx).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import signal
import socket
import ssl
import statistics
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as B  # noqa: E402
import bench_http as BH  # noqa: E402  (origin, certificate, HAProxy/nginx plumbing)

CLIENTS = 50
STREAMS = 10
MEASURES = {
    "h2-tls": "HTTP/2 over TLS (ALPN h2), h2load -c{c} -m{m}",
    "h2c": "HTTP/2 with prior knowledge (h2c), h2load -c{c} -m{m}",
    "h1": "HTTP/1.1 keep-alive, h2load --h1 -c{c} -m{h1}",
}
EXPECT = {"h2-tls": "h2", "h2c": "h2c", "h1": "http/1.1"}
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


# ------------------------------------------------------------------ h2load

def percentile(values: list, q: float) -> Optional[float]:
    """Nearest-rank percentile of `values` (q in 0-100)."""
    if not values:
        return None
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(q / 100 * len(s) + 0.5)) - 1))
    return s[k]


def h2load(url: str, measure: str, seconds: float, args, logdir: str) -> dict:
    """One h2load run on core 0: req/s, p50/p99 from the per-request log,
    the protocol it negotiated, failures, its own CPU."""
    logf = os.path.join(logdir, f"h2load-{measure}-{time.monotonic_ns()}.log")
    streams = args.h1_streams if measure == "h1" else args.streams
    argv = B.pinned(B.GEN_CPU) + ["h2load", "-t1", f"-c{args.clients}", f"-m{streams}",
                                  "-D", f"{max(1, int(round(seconds)))}", "--log-file", logf]
    if measure == "h1":
        argv.append("--h1")
    argv.append(url)
    c0 = _children_cpu()
    t0 = time.monotonic()
    try:
        p = subprocess.run(argv, capture_output=True, timeout=seconds + 60)
    except subprocess.TimeoutExpired:
        return {"error": "h2load timeout"}
    wall = time.monotonic() - t0
    gen_cpu = (_children_cpu() - c0) / wall
    out = p.stdout.decode(errors="replace")
    res: dict = {"seconds": wall, "gen_cpu": gen_cpu, "command": " ".join(argv)}
    m = re.search(r"^finished in ([\d.]+)(m?s), ([\d.]+) req/s", out, re.M)
    req = re.search(r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                    r"(\d+) errored, (\d+) timeout", out, re.M)
    proto = re.search(r"^Application protocol: (\S+)", out, re.M)
    codes = re.search(r"^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out, re.M)
    if not (m and req):
        tail = (p.stderr.decode(errors="replace") + out).strip().splitlines()
        return dict(res, error=" / ".join(tail[-4:])[-300:] or f"h2load exit {p.returncode}")
    total, _, done, ok, failed, errored, timeouts = (int(x) for x in req.groups())
    twoxx = int(codes.group(1)) if codes else 0
    res.update(rps=float(m.group(3)), requests=total, succeeded=ok, failed=failed, errored=errored,
               timeouts=timeouts, status_2xx=twoxx, protocol=proto.group(1) if proto else None)
    durations = []
    try:
        with open(logf) as f:
            for line in f:
                cols = line.split("\t")
                if len(cols) >= 3 and cols[1].startswith("2"):
                    durations.append(int(cols[2]))
        os.remove(logf)
    except (OSError, ValueError) as e:
        res["log_error"] = str(e)
    if durations:
        res["p50_ms"] = percentile(durations, 50) / 1000
        res["p99_ms"] = percentile(durations, 99) / 1000
        res["logged"] = len(durations)
    want = EXPECT[measure]
    if res["protocol"] != want:
        res["error"] = f"negotiated {res['protocol'] or 'nothing'}, not {want}"
    elif ok == 0 or twoxx < ok:
        res["error"] = f"{ok} succeeded, {twoxx} 2xx of {total} ({failed} failed, {errored} errored)"
        if ok == 0 and measure != "h1":
            res["error"] += "; probe: " + probe(url, measure == "h2-tls")
    elif failed + errored + timeouts > 0.01 * max(total, 1):
        res["error"] = f"{failed} failed, {errored} errored, {timeouts} timeouts of {total}"
    return res


def probe(url: str, tls: bool) -> str:
    """Why HTTP/2 fails there, in a few words: one connection attempting the
    SETTINGS exchange (h2load does not say)."""
    port = int(url.rsplit(":", 1)[1].strip("/"))
    try:
        open_h2(port, tls, timeout=5).close()
    except Exception as e:  # noqa: BLE001 - the reason is the answer
        return str(e)[:120] or type(e).__name__
    return "SETTINGS exchange completed, yet no request succeeded"


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


# ------------------------------------------------------------------ peers

def start_txproxy(python: str):
    def start(tmp: str, ports: dict, ctx: BH.Ctx) -> B.Server:
        argv = BH.twistd(python) + [
            "--mode", "reverse", "--route", f"*=http://127.0.0.1:{ctx.origin}",
            "--listen", f"tcp:{ports['h1']}:interface=127.0.0.1:backlog=1024",
            "--listen", f"tcp:{ports['h2c']}:interface=127.0.0.1:backlog=1024",
            "--listen", f"ssl:{ports['tls']}:privateKey={ctx.key}:certKey={ctx.cert}:interface=127.0.0.1:backlog=1024",
        ]
        return B.Server("txproxy", argv, B.PROXY_CPU, tmp, env=dict(os.environ, PYTHONPATH=B.REPO), cwd=B.REPO)
    return start


def start_haproxy(tmp: str, ports: dict, ctx: BH.Ctx) -> B.Server:
    pem = os.path.join(tmp, "haproxy.pem")
    with open(pem, "w") as f:
        f.write(open(ctx.cert).read() + open(ctx.key).read())
    conf = os.path.join(tmp, "haproxy.cfg")
    with open(conf, "w") as f:
        f.write(BH.HAPROXY_HEAD + f"""\
frontend fe
  bind 127.0.0.1:{ports['h1']}
  bind 127.0.0.1:{ports['h2c']} proto h2
  bind 127.0.0.1:{ports['tls']} ssl crt {pem} alpn h2,http/1.1 ssl-min-ver TLSv1.3
  default_backend origin
backend origin
  server o1 127.0.0.1:{ctx.origin}
""")
    return B.Server("haproxy", ["haproxy", "-db", "-f", conf], B.PROXY_CPU, tmp)


def start_nginx(tmp: str, ports: dict, ctx: BH.Ctx) -> B.Server:
    # nginx 1.22 (Debian 12) has no "http2 on;": http2 is a listen flag.
    return BH.nginx_server("nginx", tmp, B.PROXY_CPU, f"""\
    listen 127.0.0.1:{ports['h1']} backlog=4096;
    listen 127.0.0.1:{ports['h2c']} http2 backlog=4096;
    listen 127.0.0.1:{ports['tls']} ssl http2 backlog=4096;
    ssl_certificate {ctx.cert};
    ssl_certificate_key {ctx.key};
    ssl_protocols TLSv1.3;
    location / {{
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}""", http_extra=f"""\
  upstream origin {{
    server 127.0.0.1:{ctx.origin};
    keepalive 64;
    keepalive_requests 10000000;
  }}""")


@dataclass
class Peer:
    name: str
    start: Callable[..., B.Server]
    available: Callable[[], Optional[str]]
    python: Optional[str] = None
    warmup: float = 0.0
    note: str = ""


def peers(args) -> list[Peer]:
    out = [Peer("txproxy", start_txproxy(args.python), lambda: B.txproxy_available(args.python),
                python=args.python, note="CPython")]
    if args.pypy:
        out.append(Peer("txproxy-pypy", start_txproxy(args.pypy_python),
                        lambda: B.txproxy_available(args.pypy_python), python=args.pypy_python,
                        warmup=args.pypy_warmup, note="PyPy"))
    out += [Peer("haproxy", start_haproxy, lambda: B.have("haproxy"), note="nbthread 1, alpn h2,http/1.1"),
            Peer("nginx", start_nginx, lambda: B.have("nginx"), note="worker_processes 1, http2")]
    return out


class Running:
    """One started peer, its ports, samples and result record."""

    def __init__(self, peer: Peer, ctx: BH.Ctx):
        self.peer, self.name = peer, peer.name
        self.res: dict = {"note": peer.note}
        self.server: Optional[B.Server] = None
        self.samples: dict[str, list] = {}
        self.ok = False
        why = peer.available()
        if why:
            self.res["failed"] = f"not available: {why}"
            B.log(f"# {peer.name}: {self.res['failed']}")
            return
        if peer.python:
            self.res["txproxy_origin"] = B.txproxy_origin(peer.python)
        self.ports = {"h1": B.free_port(), "h2c": B.free_port(), "tls": B.free_port()}
        tmp = B.mktemp(peer.name)
        try:
            self.server = B.start_and_wait(peer.start(tmp, self.ports, ctx), self.ports["h1"], timeout=40)
            for k in ("h2c", "tls"):
                if not B.wait_port(self.ports[k], 10, self.server.proc):
                    raise RuntimeError(f"nothing on its {k} port: {self.server.log_tail()}")
        except Exception as e:  # noqa: BLE001 - any start-up failure is a failed row
            self.res["failed"] = f"did not start: {str(e).splitlines()[0][:200]}"
            B.log(f"# {peer.name}: {self.res['failed']}")
            if self.server is not None:
                self.server.stop()
                self.server = None
            return
        self.pid = self.server.pid
        self.tmp = tmp
        self.res.update(command=" ".join(self.server.argv), ports=self.ports)
        self.ok = True

    def url(self, measure: str) -> str:
        if measure == "h2-tls":
            return f"https://127.0.0.1:{self.ports['tls']}/"
        return f"http://127.0.0.1:{self.ports['h2c' if measure == 'h2c' else 'h1']}/"

    def stop(self) -> None:
        if self.server is not None:
            if not self.server.alive():
                self.res["died"] = self.server.log_tail()
            self.res["log_tail"] = self.server.log_tail(5)
            self.server.stop()
            self.server = None


# ------------------------------------------------------------------ idle HTTP/2 connections

def _frames(buf: bytes):
    """Complete frames at the start of buf: [(type, flags)], rest."""
    out = []
    while len(buf) >= 9:
        length = int.from_bytes(buf[:3], "big")
        if len(buf) < 9 + length:
            break
        out.append((buf[3], buf[4]))
        buf = buf[9 + length:]
    return out, buf


def open_h2(port: int, tls: bool, timeout: float = 10.0) -> socket.socket:
    """One HTTP/2 client connection that completed the SETTINGS exchange:
    our preface and SETTINGS sent, the server's SETTINGS received and
    acknowledged, our SETTINGS acknowledged by the server."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock: socket.socket = raw
    try:
        if tls:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            ctx.set_alpn_protocols(["h2"])
            sock = ctx.wrap_socket(raw, server_hostname=BH.ROUTE_HOST)
            if sock.selected_alpn_protocol() != "h2":
                raise RuntimeError(f"ALPN gave {sock.selected_alpn_protocol()!r}, not h2")
        sock.sendall(PREFACE + struct.pack("!I", 0)[1:] + bytes([4, 0]) + struct.pack("!I", 0))
        buf, theirs, acked = b"", False, False
        while not (theirs and acked):
            data = sock.recv(65536)
            if not data:
                raise RuntimeError("closed before the SETTINGS exchange")
            buf += data
            if buf.startswith(b"HTTP/"):
                raise RuntimeError(f"answered in HTTP/1: {buf.splitlines()[0][:60]!r}")
            frames, buf = _frames(buf)
            for kind, flags in frames:
                if kind == 4 and flags & 1:
                    acked = True
                elif kind == 4:
                    theirs = True
                    sock.sendall(struct.pack("!I", 0)[1:] + bytes([4, 1]) + struct.pack("!I", 0))
                elif kind == 7:
                    raise RuntimeError("GOAWAY during the SETTINGS exchange")
        sock.settimeout(None)
        return sock
    except BaseException:
        sock.close()
        raise


def hold_client(port: int, count: int, tls: bool) -> int:
    """--hold-client: open `count` idle HTTP/2 connections, print a JSON line,
    hold them until stdin closes, print how many the server closed."""
    socks, errors = [], {}
    t0 = time.monotonic()
    for _ in range(count):
        try:
            socks.append(open_h2(port, tls))
        except Exception as e:  # noqa: BLE001 - counted by kind, reported
            key = str(e)[:80] or type(e).__name__
            errors[key] = errors.get(key, 0) + 1
            if sum(errors.values()) >= 20 and not socks:
                break
    print(json.dumps({"held": len(socks), "errors": errors, "seconds": round(time.monotonic() - t0, 2)}),
          flush=True)
    sys.stdin.read()
    closed = 0
    for s in socks:
        s.setblocking(False)
        try:
            if s.recv(1) == b"":
                closed += 1
        except (BlockingIOError, ssl.SSLWantReadError):
            pass
        except OSError:
            closed += 1
        s.close()
    print(json.dumps({"closed_by_peer": closed}), flush=True)
    return 0


def hold_memory(r: Running, tls: bool, count: int, settle: float = 1.5) -> dict:
    """The proxy's RSS growth per idle HTTP/2 connection (Pss over a process tree)."""
    port = r.ports["tls" if tls else "h2c"]
    time.sleep(settle)
    procs = len(B.tree(r.pid))
    base = B.rss_kb(r.pid) if procs == 1 else B.pss_kb(r.pid)
    argv = B.pinned(B.GEN_CPU) + [sys.executable, os.path.abspath(__file__), "--hold-client",
                                  str(port), str(count)] + (["--tls"] if tls else [])
    p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        first = json.loads(p.stdout.readline().decode() or '{"held": 0, "errors": {"no output": 1}}')
        time.sleep(settle)
        held_kb = B.rss_kb(r.pid) if procs == 1 else B.pss_kb(r.pid)
        p.stdin.close()
        last = p.stdout.readline().decode()
        p.wait(60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    res = {"wanted": count, "held": first.get("held", 0), "errors": first.get("errors"),
           "open_seconds": first.get("seconds"), "base_kb": base, "held_kb": held_kb,
           "metric": "VmRSS" if procs == 1 else "Pss (process tree)"}
    if last:
        res["closed_by_peer_while_held"] = json.loads(last).get("closed_by_peer")
    if res["held"]:
        res["kb_per_conn"] = (held_kb - base) / res["held"]
    else:
        res["error"] = "no connection completed the SETTINGS exchange: " + \
            "; ".join(f"{k} x{v}" for k, v in (first.get("errors") or {}).items())[:200]
    return res


# ------------------------------------------------------------------ running

def run(args, ctx: BH.Ctx, origin_pid: int, logdir: str) -> dict:
    running = [Running(p, ctx) for p in peers(args) if not args.peers or p.name in args.peers]
    results = {r.name: r.res for r in running}
    live = [r for r in running if r.ok]
    background: dict = {}
    try:
        for m in args.measures:
            for r in live:
                warm = 2.0 + r.peer.warmup
                B.log(f"[{m}/{r.name}] warm-up {warm:g}s")
                w = h2load(r.url(m), m, warm, args, logdir)
                if "error" in w:
                    B.log(f"   warm-up: {w['error'][:200]}")

            def one(r: Running, m: str = m) -> None:
                B.log(f"[{m}] {r.name} {args.seconds:g}s")
                c0 = B.cpu_seconds(r.pid)
                s = B.measured(lambda: h2load(r.url(m), m, args.seconds, args, logdir), r.pid, origin_pid, "rps")
                c1 = B.cpu_seconds(r.pid)
                if s.value is not None and s.extra.get("succeeded"):
                    s.extra["cpu_us_per_req"] = (c1 - c0) / s.extra["succeeded"] * 1e6
                else:
                    B.log(f"   failed: {str(s.extra.get('error'))[:300]}")
                r.samples.setdefault(m, []).append(s)

            background[m] = B.rounds(live, args, m, one)
            for r in live:
                ss = r.samples.get(m, [])
                summ = B.summarize(ss)
                for key in ("p99_ms", "p50_ms", "cpu_us_per_req"):
                    vals = [s.extra[key] for s in ss if s.value is not None and s.extra.get(key) is not None]
                    if vals:
                        summ[key] = statistics.median(vals)
                summ["samples_full"] = [None if s.value is None else round(s.value, 1) for s in ss]
                summ["protocols"] = sorted({str(s.extra.get("protocol")) for s in ss})
                if ss and ss[0].extra.get("command"):
                    summ["load_command"] = ss[0].extra["command"]
                r.res[m] = summ
        if args.hold:
            for r in live:
                for tls in (False, True):
                    key = "memory-tls" if tls else "memory-h2c"
                    B.log(f"[{key}] {r.name}: holding {args.hold} idle HTTP/2 connections")
                    try:
                        r.res[key] = hold_memory(r, tls, args.hold)
                    except Exception as e:  # noqa: BLE001 - a failed row, not a crashed run
                        r.res[key] = {"error": f"{type(e).__name__}: {e}"[:200]}
    finally:
        for r in running:
            r.stop()
    return {"results": results, "background": background}


# ------------------------------------------------------------------ reporting

def failed_text(res: dict, m: str) -> Optional[str]:
    if "failed" in res:
        return "failed: " + res["failed"]
    s = res.get(m, {})
    if "median" in s:
        return None
    errs = s.get("errors") or ["no sample"]
    return "failed: " + str(errs[0])[:120]


def report(args, out: dict) -> list[str]:
    res, texts = out["results"], []
    for m in args.measures:
        rows = []
        for name, r in res.items():
            why = failed_text(r, m)
            if why:
                rows.append([name, why, "", "", "", "", ""])
                continue
            s = r[m]
            rows.append([name, B.cell(s, ".0f"), B.fmt(s.get("p99_ms"), ".1f"), B.fmt(s.get("cpu_us_per_req"), ".1f"),
                         B.pct(s.get("proxy_cpu")), B.pct(s.get("core0_cpu")), ",".join(s.get("protocols", []))])
        title = MEASURES[m].format(c=args.clients, m=args.streams, h1=args.h1_streams)
        print(f"\n== {title}; {args.repeats} x {args.seconds:g}s")
        texts.append(f"== {title}\n" + B.print_table(
            ["peer", "req/s med (min-max)", "p99 ms", "CPU us/req", "cpu", "core0", "protocol"], rows))
        bg = " ".join(f"{B.pct(b.get(B.GEN_CPU))}/{B.pct(b.get(B.PROXY_CPU))}" for b in out["background"].get(m, []))
        print(f"background busy core0/core1 before each round: {bg}")
    # ratios within this run
    rrows = []
    txs = [n for n in ("txproxy", "txproxy-pypy") if n in res]
    for tx in txs:
        for m in ("h2-tls", "h2c"):
            rrows.append([f"{tx} {m} / {tx} h1", _ratio(res, (tx, m), (tx, "h1"))])
        for peer in ("haproxy", "nginx"):
            for m in ("h2-tls", "h2c"):
                rrows.append([f"{tx} / {peer} ({m})", _ratio(res, (tx, m), (peer, m))])
    if rrows:
        print()
        texts.append(B.print_table(["ratio of req/s medians (per-round min-max)", "value"], rrows))
    for tx in txs:
        for text, a, b, need in (
            ("h2 (TLS) >= 0.7x own HTTP/1.1", (tx, "h2-tls"), (tx, "h1"), 0.7),
            ("h2c >= 0.7x own HTTP/1.1", (tx, "h2c"), (tx, "h1"), 0.7),
        ) + ((("h2 (TLS) >= 0.3x HAProxy", (tx, "h2-tls"), ("haproxy", "h2-tls"), 0.3),)
             if tx == "txproxy-pypy" else ()):
            sa, sb = res.get(a[0], {}).get(a[1], {}), res.get(b[0], {}).get(b[1], {})
            if "median" in sa and "median" in sb and sb["median"]:
                x = sa["median"] / sb["median"]
                line = f"target {tx}: {text}: {x:.2f} -> {'MET' if x >= need else 'NOT MET'}"
            else:
                line = f"target {tx}: {text}: not measured"
            print(line)
            texts.append(line)
    if args.hold:
        rows = []
        for name, r in res.items():
            for key in ("memory-h2c", "memory-tls"):
                mm = r.get(key)
                if mm is None:
                    rows.append([name, key, "failed: " + r.get("failed", "not run"), "", ""])
                elif "kb_per_conn" in mm:
                    rows.append([name, key, f"{mm['kb_per_conn']:.1f}", f"{mm['held']}/{mm['wanted']}",
                                 mm["metric"]])
                else:
                    rows.append([name, key, "failed: " + str(mm.get("error"))[:120], "", ""])
        print(f"\n== Memory per idle HTTP/2 client connection (SETTINGS exchanged), {args.hold} held")
        texts.append(B.print_table(["peer", "connections", "KiB per conn", "held", "metric"], rows))
        for tx in txs:
            mm = res.get(tx, {}).get("memory-h2c", {})
            v = mm.get("kb_per_conn")
            line = (f"target {tx}: idle h2 connection <= 16 KiB: "
                    + (f"{v:.1f} KiB -> {'MET' if v <= 16 else 'NOT MET'}" if v is not None else "not measured"))
            print(line)
            texts.append(line)
    return texts


def _ratio(res: dict, a: tuple, b: tuple) -> str:
    sa, sb = res.get(a[0], {}).get(a[1], {}), res.get(b[0], {}).get(b[1], {})
    if "median" not in sa or "median" not in sb or not sb["median"]:
        return "-"
    return BH.ratio_text(sa, sb)


# ------------------------------------------------------------------ main

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 round of 3 s runs, 2000 held connections")
    ap.add_argument("--only", help="measurements and/or peers, comma-separated")
    ap.add_argument("--pypy", action="store_true", help="add txproxy on PyPy (8 s more warm-up)")
    ap.add_argument("--python", default=B.CPY, help=f"txproxy's CPython interpreter (default {B.CPY})")
    ap.add_argument("--pypy-python", default=B.PYPY, help=f"txproxy's PyPy interpreter (default {B.PYPY})")
    ap.add_argument("--pypy-warmup", type=float, default=8.0)
    ap.add_argument("--repeats", type=int)
    ap.add_argument("--seconds", type=float, help="length of one run (default 5; whole seconds)")
    ap.add_argument("--clients", type=int, default=CLIENTS)
    ap.add_argument("--streams", type=int, default=STREAMS, help="h2load -m for the HTTP/2 runs (default 10)")
    ap.add_argument("--h1-streams", type=int, default=1, help="h2load -m for the HTTP/1.1 run (default 1)")
    ap.add_argument("--hold", type=int, help="idle HTTP/2 connections held for memory (default 5000; 0 skips)")
    ap.add_argument("--nice", type=int, default=0)
    ap.add_argument("--wait-quiet", type=float, default=10.0)
    ap.add_argument("--hold-client", type=int, metavar="PORT", help=argparse.SUPPRESS)
    ap.add_argument("--tls", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("count", nargs="?", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.hold_client:
        return hold_client(args.hold_client, args.count or 1, args.tls)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    B.NICE = args.nice
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.seconds = args.seconds or (3.0 if args.quick else 5.0)
    if args.hold is None:
        args.hold = 2000 if args.quick else 5000
    names = list(MEASURES) + ["memory"]
    peer_names = {"txproxy", "txproxy-pypy", "haproxy", "nginx"}
    sel = [n for n in (args.only or "").split(",") if n]
    for n in sel:
        if n not in names and n not in peer_names:
            ap.error(f"unknown --only name {n!r}; measurements {names}, peers {sorted(peer_names)}")
    args.peers = {n for n in sel if n in peer_names}
    if "txproxy-pypy" in args.peers:
        args.pypy = True
    chosen = [n for n in sel if n in names]
    args.measures = [m for m in MEASURES if not chosen or m in chosen]
    if chosen and "memory" not in chosen:
        args.hold = 0
    if chosen and chosen == ["memory"]:
        args.measures = []
    if B.have("h2load") is not None:
        ap.error("h2load is not installed (Debian nghttp2-client)")

    t0 = time.time()
    tmp = B.mktemp("h2-origin")
    ctx = BH.Ctx(origin=B.free_port())
    ctx.key, ctx.cert = BH.make_cert(tmp)
    origin = B.start_and_wait(BH.start_origin(tmp, ctx.origin), ctx.origin)
    try:
        out = run(args, ctx, origin.pid, tmp)
    finally:
        origin.stop()
    texts = report(args, out)
    print("\nreq/s: median (min-max) of rounds; p99: 99th percentile of every request's latency in h2load's "
          "log; CPU us/req: the proxy's CPU per request; cpu: the proxy's CPU, share of ONE core (near 100%: "
          "the proxy is the limit); core0: h2load + origin. Peers interleaved round by round; ratios < ~10% "
          "apart are noise here.")
    data = {"bench": "h2", "args": {k: (sorted(v) if isinstance(v, set) else v) for k, v in vars(args).items()},
            "machine": B.machine_info(), "origin": {"command": " ".join(origin.argv), "port": ctx.origin},
            "elapsed_s": round(time.time() - t0, 1), "tables": texts, **out}
    print("JSON:", B.write_json("bench_h2", data))
    B.cleanup_temps()
    return 0


if __name__ == "__main__":
    sys.exit(main())
