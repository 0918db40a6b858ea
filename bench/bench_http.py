#!/usr/bin/env python3
"""
HTTP benchmark (issues 3, 5, 6, 7): txproxy's forward and reverse HTTP
proxying against tinyproxy, squid, proxy.py, pproxy, HAProxy, nginx and
stock Twisted (twisted.web.proxy), side by side in one run.

The origin for every test is one nginx worker on core 0 answering
`return 200 "hello world\\n"` (keepalive_requests 10,000,000).  Every proxy
runs on core 1 (taskset), wrk / ab and the origin on core 0.  Groups (each
group's peers are measured round by round, interleaved; every measurement
starts its peer afresh on the same ports and warms it up first, since two
processes of the same code differ by up to about 10% for their whole life;
--processes shared keeps one process per peer for all rounds instead):

  forward   forward-ka   wrk -t1 -c50, absolute-URI requests (bench/http/wrk_report.lua)
            forward-new  ab -c50 -X proxy, a new client connection per request
            peers: txproxy (--mode forward), tinyproxy, squid (-N, workers 1,
            cache deny all), proxy.py, pproxy, twisted (twisted.web.proxy.Proxy)
  reverse   reverse-http  wrk -c50 at the proxy, Host: app.test
            reverse-https wrk -c50 to a TLS 1.3 listener (EC P-256 self-signed)
            peers: txproxy (--mode reverse --route '*=http://127.0.0.1:ORIGIN'),
            haproxy (nbthread 1, mode http, http-reuse always), nginx
            (worker_processes 1, upstream keepalive), twisted
            (ReverseProxyResource, plain HTTP only)
  limiter   txproxy reverse: no limiter / --rate 1000000/s --burst 1000000 /
            the same with --redis (a redis-server of ours on core 0)
  metrics   txproxy reverse with and without --admin
  workers   txproxy reverse --workers 1 vs 2; here the proxy may use BOTH
            cores (taskset -c 0,1) and shares core 0 with wrk and the origin
  upstream-tls  reverse proxy to the origin's TLS port (TLS 1.3, certificate
            verified against the benchmark's self-signed one, connections kept
            alive): txproxy (an https:// route with ca_bundle), haproxy
            (server ... ssl verify required), nginx (proxy_pass https://,
            proxy_ssl_verify on); wrk -c50 in plain HTTP to each
  router    bench/bench_router.py (route lookup, 10 and 10,000 routes)

Each measurement: REPEATS rounds (default 3) of SECONDS (default 5); the
tables show median (min-max), p99, the proxy's CPU (share of one core),
core 1 busy, core 0 busy (wrk/ab + origin) and errors, then ratios of
medians and per-round paired ratios.  JSON goes to bench/out/.

  /tmp/venv/bin/python bench/bench_http.py [--quick] [--pypy] [--only NAME,...]

--only takes group names (forward, reverse, limiter, metrics, workers,
router), measurement names (forward-ka, reverse-https, ...) and/or peer names
(txproxy, txproxy-pypy, tinyproxy, squid, proxy.py, pproxy, twisted, haproxy,
nginx); a mix selects the peers within the groups.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import signal
import ssl
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as B  # noqa: E402
import bench_connect as BC  # noqa: E402  (squid, tinyproxy, pproxy, proxy.py start-up)

HTTPDIR = os.path.join(B.HERE, "http")
LUA = os.path.join(HTTPDIR, "wrk_report.lua")
TWISTED_RUNNER = os.path.join(HTTPDIR, "twisted_runner.py")
ROUTE_HOST = "app.test"
CONNS = 50


# ------------------------------------------------------------------ load generators

def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def wrk(url: str, seconds: float, conns: int = CONNS, path: str = "", host: str = "",
        closes: bool = False) -> dict:
    """wrk -t1 -cN on core 0; req/s, latency percentiles, errors, its own CPU.
    closes: the proxy closes the client connection after each response (wrk
    then counts one read error per request and reconnects); read errors are
    then reported but not counted as failures."""
    argv = B.pinned(B.GEN_CPU) + ["wrk", "-t1", f"-c{conns}", f"-d{seconds:g}s", "--timeout", "5s",
                                  "-s", LUA, url]
    env = dict(os.environ, WRK_PATH=path, WRK_HOST=host)
    c0, t0 = _children_cpu(), time.monotonic()
    try:
        p = subprocess.run(argv, capture_output=True, env=env, timeout=seconds + 40)
    except subprocess.TimeoutExpired:
        return {"error": "wrk timeout"}
    wall = time.monotonic() - t0
    gen_cpu = (_children_cpu() - c0) / wall
    out = p.stdout.decode(errors="replace")
    m = re.search(r"^WRKJSON (\{.*\})$", out, re.M)
    if not m:
        return {"error": (p.stderr.decode(errors="replace") + out).strip()[-300:] or f"exit {p.returncode}"}
    d = json.loads(m.group(1))
    secs = d["duration_us"] / 1e6
    errs = d["connect_errors"] + d["write_errors"] + d["status_errors"] + d["timeouts"]
    if not closes:
        errs += d["read_errors"]
    res = {"rps": d["requests"] / secs if secs else 0.0, "seconds": wall, "gen_cpu": gen_cpu,
           "requests": d["requests"], "errors": errs, "p50_ms": d["p50_us"] / 1000,
           "p99_ms": d["p99_us"] / 1000, "max_ms": d["max_us"] / 1000, "wrk": d}
    if d["requests"] == 0 or errs > 0.01 * max(d["requests"], 1):
        res["error"] = f"{errs} errors in {d['requests']} requests: {d}"
    return res


def ab(proxy_port: int, origin: int, seconds: float, conns: int = CONNS) -> dict:
    """ab -c50 -X proxy: one new client connection per request, on core 0."""
    # -t first, then -n: -n after -t raises ab's cap of 50,000 requests
    argv = B.pinned(B.GEN_CPU) + ["ab", "-q", "-r", "-s", "10", "-t", f"{int(seconds)}",
                                  "-n", str(int(seconds * 40000)), "-c", str(conns),
                                  "-X", f"127.0.0.1:{proxy_port}", f"http://127.0.0.1:{origin}/"]
    c0, t0 = _children_cpu(), time.monotonic()
    try:
        p = subprocess.run(argv, capture_output=True, timeout=seconds + 60)
    except subprocess.TimeoutExpired:
        return {"error": "ab timeout"}
    wall = time.monotonic() - t0
    gen_cpu = (_children_cpu() - c0) / wall
    out = p.stdout.decode(errors="replace")

    def num(pattern: str) -> Optional[float]:
        m = re.search(pattern, out, re.M)
        return float(m.group(1)) if m else None

    rps = num(r"^Requests per second:\s+([\d.]+)")
    if rps is None:
        return {"error": (p.stderr.decode(errors="replace") + out).strip()[-300:] or f"exit {p.returncode}"}
    done = int(num(r"^Complete requests:\s+(\d+)") or 0)
    failed = int(num(r"^Failed requests:\s+(\d+)") or 0)
    non2xx = int(num(r"^Non-2xx responses:\s+(\d+)") or 0)
    taken = num(r"^Time taken for tests:\s+([\d.]+)") or wall
    res = {"rps": rps, "seconds": taken, "gen_cpu": gen_cpu, "requests": done,
           "errors": failed + non2xx, "p50_ms": num(r"^\s+50%\s+(\d+)"), "p99_ms": num(r"^\s+99%\s+(\d+)")}
    if done == 0 or failed + non2xx > 0.01 * max(done, 1):
        res["error"] = f"{failed} failed + {non2xx} non-2xx of {done}"
    return res


def tls_version(port: int) -> str:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            with ctx.wrap_socket(s, server_hostname=ROUTE_HOST) as t:
                return f"{t.version()} {t.cipher()[0]}"
    except OSError as e:
        return f"error: {e}"


# ------------------------------------------------------------------ servers

def nginx_server(name: str, tmp: str, cpu: str, server_block: str, http_extra: str = "") -> B.Server:
    conf = os.path.join(tmp, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""\
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile 20000;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 9000; use epoll; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/client_body;
  proxy_temp_path {tmp}/proxy_temp;
  fastcgi_temp_path {tmp}/fastcgi;
  uwsgi_temp_path {tmp}/uwsgi;
  scgi_temp_path {tmp}/scgi;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  default_type text/plain;
{http_extra}
  server {{
{server_block}
  }}
}}
""")
    return B.Server(name, ["nginx", "-p", tmp, "-e", f"{tmp}/error.log", "-c", conf], cpu, tmp)


def start_origin(tmp: str, port: int, tls_port: int = 0, ctx: Optional["Ctx"] = None) -> B.Server:
    tls = ""
    if tls_port and ctx is not None:
        # The same answer over TLS, for the upstream-TLS group.
        tls = f"""
    listen 127.0.0.1:{tls_port} ssl backlog=4096;
    ssl_certificate {ctx.cert};
    ssl_certificate_key {ctx.key};
    ssl_session_tickets on;"""
    return nginx_server("origin", tmp, B.GEN_CPU, f"""\
    listen 127.0.0.1:{port} backlog=4096;{tls}
    location / {{ return 200 "hello world\\n"; }}""")


def make_cert(tmp: str) -> tuple[str, str]:
    key, cert = os.path.join(tmp, "key.pem"), os.path.join(tmp, "cert.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", f"/CN={ROUTE_HOST}",
                    "-addext", f"subjectAltName=DNS:{ROUTE_HOST},IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=30)
    return key, cert


@dataclass
class Ctx:
    origin: int
    key: str = ""
    cert: str = ""
    redis: int = 0
    origin_tls: int = 0


def twistd(python: str) -> list[str]:
    return [os.path.join(os.path.dirname(python), "twistd"), "-n", "--pidfile=", "txproxy"]


def start_txproxy(python: str, mode: str, extra: Callable[[Ctx, dict], list] = lambda c, p: [],
                  tls: bool = False, cpu: str = B.PROXY_CPU):
    def start(tmp: str, ports: dict, ctx: Ctx) -> B.Server:
        argv = twistd(python) + ["--mode", mode,
                                 "--listen", f"tcp:{ports['http']}:interface=127.0.0.1:backlog=1024"]
        if tls:
            argv += ["--listen", f"ssl:{ports['https']}:privateKey={ctx.key}:certKey={ctx.cert}"
                                 f":interface=127.0.0.1:backlog=1024"]
        if mode == "reverse":
            argv += ["--route", f"*=http://127.0.0.1:{ctx.origin}"]
        argv += extra(ctx, ports)
        env, cwd = B.txproxy_env(python, tmp)
        return B.Server("txproxy", argv, cpu, tmp, env=env, cwd=cwd)
    return start


def wrap_connect(fn):
    """bench_connect's start functions: start(tmp, port) -> Server."""
    def start(tmp: str, ports: dict, ctx: Ctx) -> B.Server:
        return fn(tmp, ports["http"])
    return start


def start_twisted(mode: str):
    def start(tmp: str, ports: dict, ctx: Ctx) -> B.Server:
        argv = [B.CPY, TWISTED_RUNNER, mode, str(ports["http"])]
        if mode == "reverse":
            argv += ["127.0.0.1", str(ctx.origin)]
        return B.Server("twisted", argv, B.PROXY_CPU, tmp)
    return start


#: The start of every HAProxy configuration here: one thread, HTTP mode,
#: keep-alive both ways, backend connections reused.
HAPROXY_HEAD = """\
global
  nbthread 1
  maxconn 9500
defaults
  mode http
  option http-keep-alive
  http-reuse always
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout http-keep-alive 60s
"""


def start_haproxy(tmp: str, ports: dict, ctx: Ctx) -> B.Server:
    pem = os.path.join(tmp, "haproxy.pem")
    with open(pem, "w") as f:
        f.write(open(ctx.cert).read() + open(ctx.key).read())
    conf = os.path.join(tmp, "haproxy.cfg")
    with open(conf, "w") as f:
        f.write(HAPROXY_HEAD + f"""\
frontend fe
  bind 127.0.0.1:{ports['http']}
  bind 127.0.0.1:{ports['https']} ssl crt {pem} ssl-min-ver TLSv1.3
  default_backend origin
backend origin
  server o1 127.0.0.1:{ctx.origin}
""")
    return B.Server("haproxy", ["haproxy", "-db", "-f", conf], B.PROXY_CPU, tmp)


def start_nginx_proxy(tmp: str, ports: dict, ctx: Ctx) -> B.Server:
    return nginx_server("nginx", tmp, B.PROXY_CPU, f"""\
    listen 127.0.0.1:{ports['http']} backlog=4096;
    listen 127.0.0.1:{ports['https']} ssl backlog=4096;
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


# The upstream-TLS group: every proxy takes plain HTTP from wrk and talks
# TLS 1.3 to the origin's TLS port, verifying its certificate (self-signed,
# SAN IP:127.0.0.1, trusted explicitly), over kept-alive connections.

def start_txproxy_tls_upstream(python: str):
    def start(tmp: str, ports: dict, ctx: Ctx) -> B.Server:
        conf = os.path.join(tmp, "upstream-tls.toml")
        with open(conf, "w") as f:
            f.write(f"""\
[[listeners]]
listen = ["tcp:{ports['http']}:interface=127.0.0.1:backlog=1024"]
mode = "reverse"
  [[listeners.routes]]
  host = "*"
  upstreams = ["https://127.0.0.1:{ctx.origin_tls}"]
  ca_bundle = "{ctx.cert}"
""")
        argv = twistd(python) + ["--config", conf]
        env = dict(os.environ, PYTHONPATH=B.REPO)
        return B.Server("txproxy", argv, B.PROXY_CPU, tmp, env=env, cwd=B.REPO)
    return start


def start_haproxy_tls_upstream(tmp: str, ports: dict, ctx: Ctx) -> B.Server:
    conf = os.path.join(tmp, "haproxy.cfg")
    with open(conf, "w") as f:
        f.write(HAPROXY_HEAD + f"""\
frontend fe
  bind 127.0.0.1:{ports['http']}
  default_backend origin
backend origin
  server o1 127.0.0.1:{ctx.origin_tls} ssl verify required ca-file {ctx.cert} alpn http/1.1
""")
    return B.Server("haproxy", ["haproxy", "-db", "-f", conf], B.PROXY_CPU, tmp)


def start_nginx_tls_upstream(tmp: str, ports: dict, ctx: Ctx) -> B.Server:
    return nginx_server("nginx", tmp, B.PROXY_CPU, f"""\
    listen 127.0.0.1:{ports['http']} backlog=4096;
    location / {{
      proxy_pass https://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_ssl_verify on;
      proxy_ssl_trusted_certificate {ctx.cert};
      proxy_ssl_name app.test;
      proxy_ssl_server_name on;
      proxy_ssl_session_reuse on;
    }}""", http_extra=f"""\
  upstream origin {{
    server 127.0.0.1:{ctx.origin_tls};
    keepalive 64;
    keepalive_requests 10000000;
  }}""")


def start_redis(tmp: str, port: int) -> B.Server:
    return B.Server("redis", ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                              "--appendonly", "no", "--daemonize", "no", "--dir", tmp],
                    B.GEN_CPU, tmp)


# ------------------------------------------------------------------ variants and groups

@dataclass
class Variant:
    name: str                       # row label
    peer: str                       # what --only matches
    start: Callable[..., B.Server]
    available: Callable[[], Optional[str]]
    python: Optional[str] = None    # txproxy rows: the interpreter
    tls: bool = False               # has an HTTPS listener
    warmup: float = 0.0             # extra warm-up seconds (PyPy's JIT)
    cpus: str = B.PROXY_CPU
    note: str = ""
    closes: bool = False            # closes client connections after each response


@dataclass
class Measure:
    name: str
    title: str
    kind: str                       # wrk-forward | ab | wrk-reverse | wrk-https
    tls_only: bool = False


@dataclass
class Group:
    name: str
    variants: list
    measures: list
    ratios: list = field(default_factory=list)   # (numerator row, denominator row, measure or None)
    targets: list = field(default_factory=list)  # (text, measure, num, den, min ratio)
    needs_redis: bool = False


def tx_avail(python: str):
    return lambda: B.txproxy_available(python)


def build_groups(args) -> list[Group]:
    cpy, pypy = B.CPY, B.PYPY
    pypy_warm = 8.0
    want_pypy = args.pypy

    def txv(name, peer, python, mode, extra=lambda c, p: [], tls=False, cpus=B.PROXY_CPU, note=""):
        return Variant(name, peer, start_txproxy(python, mode, extra, tls, cpus), tx_avail(python),
                       python=python, tls=tls, warmup=pypy_warm if python == pypy else 0.0,
                       cpus=cpus, note=note)

    fwd = [txv("txproxy", "txproxy", cpy, "forward", note="CPython, --mode forward")]
    if want_pypy:
        fwd.append(txv("txproxy-pypy", "txproxy-pypy", pypy, "forward", note="PyPy, --mode forward"))
    fwd += [
        Variant("tinyproxy", "tinyproxy", wrap_connect(BC.start_tinyproxy), lambda: B.have("tinyproxy"),
                note="Debian 1.11; closes the client conn. after each response (no keep-alive)",
                closes=True),
        Variant("squid", "squid", wrap_connect(BC.start_squid), lambda: B.have("squid"),
                note="squid -N, workers 1, cache deny all"),
        Variant("proxy.py", "proxy.py", wrap_connect(BC.start_proxypy), lambda: B.have(f"{B.PEERVENV}/proxy"),
                note="--num-acceptors 1 --num-workers 1"),
        Variant("pproxy", "pproxy", wrap_connect(BC.start_pproxy), lambda: B.have(f"{B.PEERVENV}/pproxy"),
                note="asyncio, no uvloop"),
        Variant("twisted", "twisted", start_twisted("forward"), lambda: B.have(TWISTED_RUNNER),
                note="twisted.web.proxy.Proxy (stock)"),
    ]
    txs = ["txproxy"] + (["txproxy-pypy"] if want_pypy else [])
    fpeers = ["proxy.py", "twisted", "squid", "tinyproxy", "pproxy"]
    forward = Group("forward", fwd, [
        Measure("forward-ka", "Forward proxy GET, keep-alive clients (wrk -t1 -c50, absolute URI)", "wrk-forward"),
        Measure("forward-new", "Forward proxy GET, new connection per request (ab -c50 -X)", "ab"),
    ], ratios=[(t, p, None) for t in txs for p in fpeers], targets=[
        ("keep-alive >= proxy.py", "forward-ka", "txproxy", "proxy.py", 1.0),
        ("keep-alive >= 3x stock twisted.web.proxy", "forward-ka", "txproxy", "twisted", 3.0),
        ("new connection per request >= stock twisted.web.proxy", "forward-new", "txproxy", "twisted", 1.0),
        ("(aim) keep-alive vs squid", "forward-ka", "txproxy", "squid", 1.0),
    ])

    rev = [txv("txproxy", "txproxy", cpy, "reverse", tls=True, note="CPython, --mode reverse")]
    if os.path.exists(B.COMPILED):
        rev.append(txv("txproxy-compiled", "txproxy-compiled", B.COMPILED, "reverse", tls=True,
                       note="CPython compiled build, --mode reverse"))
    if want_pypy:
        rev.append(txv("txproxy-pypy", "txproxy-pypy", pypy, "reverse", tls=True, note="PyPy, --mode reverse"))
    rtxs = [v.peer for v in rev]
    rev += [
        Variant("haproxy", "haproxy", start_haproxy, lambda: B.have("haproxy"), tls=True,
                note="nbthread 1, mode http, http-reuse always"),
        Variant("nginx", "nginx", start_nginx_proxy, lambda: B.have("nginx"), tls=True,
                note="worker_processes 1, upstream keepalive 64"),
        Variant("twisted", "twisted", start_twisted("reverse"), lambda: B.have(TWISTED_RUNNER),
                note="twisted.web.proxy.ReverseProxyResource (stock), HTTP only"),
    ]
    reverse = Group("reverse", rev, [
        Measure("reverse-http", "Reverse proxy, keep-alive HTTP (wrk -t1 -c50, Host: app.test)", "wrk-reverse"),
        Measure("reverse-https", "Reverse proxy, keep-alive HTTPS, TLS 1.3 (wrk -t1 -c50)", "wrk-https",
                tls_only=True),
    ], ratios=[(t, p, None) for t in rtxs for p in ("haproxy", "nginx", "twisted")]
       + ([("txproxy-compiled", "txproxy", None)] if "txproxy-compiled" in rtxs else []), targets=[
        ("plain >= 0.25x HAProxy", "reverse-http", "txproxy", "haproxy", 0.25),
        ("plain ~ 4x stock Twisted", "reverse-http", "txproxy", "twisted", 4.0),
        ("TLS >= 0.15x HAProxy", "reverse-https", "txproxy", "haproxy", 0.15),
    ])

    rate = ["--rate", "1000000/s", "--burst", "1000000"]
    limiter = Group("limiter", [
        txv("no-limiter", "txproxy", cpy, "reverse", note="txproxy reverse, no limiter"),
        txv("memory", "txproxy", cpy, "reverse", extra=lambda c, p: rate, note=" ".join(rate)),
        txv("redis", "txproxy", cpy, "reverse",
            extra=lambda c, p: rate + ["--redis", f"redis://127.0.0.1:{c.redis}/0"],
            note=" ".join(rate) + " --redis redis://127.0.0.1:PORT/0"),
    ], [Measure("limiter", "Limiter overhead, txproxy reverse keep-alive (wrk -t1 -c50)", "wrk-reverse")],
        ratios=[("memory", "no-limiter", None), ("redis", "no-limiter", None)], targets=[
        ("memory limiter costs < 5%", "limiter", "memory", "no-limiter", 0.95),
        ("Redis limiter costs < 15%", "limiter", "redis", "no-limiter", 0.85),
    ], needs_redis=True)

    metrics = Group("metrics", [
        txv("no-admin", "txproxy", cpy, "reverse", note="txproxy reverse, no --admin"),
        txv("admin", "txproxy", cpy, "reverse",
            extra=lambda c, p: ["--admin", f"tcp:{p['admin']}:interface=127.0.0.1"],
            note="--admin tcp:PORT:interface=127.0.0.1"),
    ], [Measure("metrics", "Metrics overhead, txproxy reverse keep-alive (wrk -t1 -c50)", "wrk-reverse")],
        ratios=[("admin", "no-admin", None)],
        targets=[("metrics (--admin) cost < 5%", "metrics", "admin", "no-admin", 0.95)])

    both = f"{B.GEN_CPU},{B.PROXY_CPU}"
    workers = Group("workers", [
        txv("workers-1", "txproxy", cpy, "reverse", extra=lambda c, p: ["--workers", "1"], cpus=both,
            note="--workers 1, taskset -c 0,1"),
        txv("workers-2", "txproxy", cpy, "reverse", extra=lambda c, p: ["--workers", "2"], cpus=both,
            note="--workers 2, taskset -c 0,1"),
    ], [Measure("workers", "Workers, txproxy reverse keep-alive; the PROXY MAY USE BOTH CORES and shares "
                "core 0 with wrk and the origin (wrk -t1 -c50)", "wrk-reverse")],
        ratios=[("workers-2", "workers-1", None)])
    up = [Variant("txproxy", "txproxy", start_txproxy_tls_upstream(cpy), tx_avail(cpy),
                  note="CPython, https:// backend, ca_bundle")]
    if want_pypy:
        up.append(Variant("txproxy-pypy", "txproxy-pypy", start_txproxy_tls_upstream(pypy), tx_avail(pypy),
                          python=pypy, warmup=pypy_warm, note="PyPy, https:// backend, ca_bundle"))
    up += [
        Variant("haproxy", "haproxy", start_haproxy_tls_upstream, lambda: B.have("haproxy"),
                note="server ... ssl verify required, http-reuse always"),
        Variant("nginx", "nginx", start_nginx_tls_upstream, lambda: B.have("nginx"),
                note="proxy_pass https://, proxy_ssl_verify on, keepalive 64"),
    ]
    upstream_tls = Group("upstream-tls", up, [
        Measure("upstream-tls", "Reverse proxy to an https:// origin (TLS 1.3 to the backend, verified, "
                "kept alive); keep-alive HTTP clients (wrk -t1 -c50)", "wrk-reverse"),
    ], ratios=[(t, p, None) for t in txs for p in ("haproxy", "nginx")])
    return [forward, reverse, limiter, metrics, workers, upstream_tls]


GROUP_NAMES = ["forward", "reverse", "limiter", "metrics", "workers", "upstream-tls", "router"]


# ------------------------------------------------------------------ running a group

class Running:
    def __init__(self, v: Variant, ctx: Ctx):
        self.v, self.name = v, v.name
        self.res: dict = {"note": v.note}
        self.server: Optional[B.Server] = None
        self.ok = False
        self.samples: dict[str, list] = {}
        why = v.available()
        if why:
            print(f"# skipping {v.name}: {why}", flush=True)
            self.res["skipped"] = why
            return
        if v.python:
            self.res["txproxy_origin"] = B.txproxy_origin(v.python)
        self.ports = {"http": B.free_port(), "https": B.free_port(), "admin": B.free_port()}
        tmp = B.mktemp(v.name)
        try:
            self.server = B.start_and_wait(v.start(tmp, self.ports, ctx), self.ports["http"], timeout=40)
            if v.tls and not B.wait_port(self.ports["https"], 10, self.server.proc):
                raise RuntimeError(f"no TLS listener on {self.ports['https']}: {self.server.log_tail()}")
        except Exception as e:  # noqa: BLE001
            print(f"# skipping {v.name}: failed to start: {e}", flush=True)
            self.res["skipped"] = f"failed to start: {e}"
            if self.server is not None:
                self.server.stop()
                self.server = None
            return
        self.pid = self.server.pid
        self.res["command"] = " ".join(self.server.argv)
        self.res["ports"] = self.ports
        if v.tls:
            self.res["tls"] = tls_version(self.ports["https"])
        self.ok = True

    def restart(self, ctx: Ctx) -> None:
        """
        Replace the server with a fresh process on the same ports (see
        --processes).
        """
        assert self.server is not None
        self.server.stop()
        self.server = B.start_and_wait(self.v.start(B.mktemp(self.v.name), self.ports, ctx), self.ports["http"],
                                       timeout=40)
        if self.v.tls and not B.wait_port(self.ports["https"], 10, self.server.proc):
            raise RuntimeError(f"no TLS listener on {self.ports['https']}: {self.server.log_tail()}")
        self.pid = self.server.pid

    def stop(self) -> None:
        if self.server is not None:
            if not self.server.alive():
                self.res["died"] = self.server.log_tail()
            self.res["log_tail"] = self.server.log_tail(5)
            self.server.stop()
            try:
                with open(self.server.logpath, "rb") as f:
                    lines = f.read().decode("utf-8", "replace").splitlines()
                warn = [x for x in lines if re.search(r"eject|Traceback|\bwarn|\berror", x, re.I)]
                if warn:
                    self.res["log_warnings"] = warn[:10]
                    print(f"# {self.name}: {len(warn)} warning/error line(s) in its log, first: {warn[0][:200]}",
                          flush=True)
            except OSError:
                pass


def load_fn(kind: str, r: Running, ctx: Ctx, seconds: float) -> Callable[[], dict]:
    http = f"http://127.0.0.1:{r.ports['http']}/"
    if kind == "wrk-forward":
        return lambda: wrk(http, seconds, path=f"http://127.0.0.1:{ctx.origin}/",
                           host=f"127.0.0.1:{ctx.origin}", closes=r.v.closes)
    if kind == "ab":
        return lambda: ab(r.ports["http"], ctx.origin, seconds)
    if kind == "wrk-reverse":
        return lambda: wrk(http, seconds, host=ROUTE_HOST)
    if kind == "wrk-https":
        return lambda: wrk(f"https://127.0.0.1:{r.ports['https']}/", seconds, host=ROUTE_HOST)
    raise ValueError(kind)


def run_group(g: Group, ctx: Ctx, origin_pid: int, args, results: dict, background: dict) -> None:
    running: list[Running] = []
    try:
        for v in g.variants:
            r = Running(v, ctx)
            results.setdefault(g.name, {})[v.name] = r.res
            if r.ok:
                running.append(r)
        for m in g.measures:
            mr = [r for r in running if r.v.tls or not m.tls_only]
            if not mr:
                continue
            def warmUp(r: Running, m=m) -> None:
                warm = 2.0 + r.v.warmup
                B.log(f"[{g.name}/{m.name}/{r.name}] warm-up {warm:g}s")
                w = load_fn(m.kind, r, ctx, warm)()
                if "error" in w:
                    B.log(f"   warm-up error: {w['error'][:200]}")

            if args.processes == "shared":
                for r in mr:
                    warmUp(r)

            def one(r: Running, m=m):
                if args.processes == "fresh":
                    # A fresh process for every measurement: a process keeps
                    # a speed of its own, up to about 10% from another of the
                    # same code (bench/README.md, ab_reverse.sh).
                    r.restart(ctx)
                    warmUp(r)
                B.log(f"[{m.name}] {r.name} {args.seconds:g}s")
                s = B.measured(load_fn(m.kind, r, ctx, args.seconds), r.pid, origin_pid, "rps")
                if s.value is None:
                    B.log(f"   error: {str(s.extra.get('error'))[:300]}")
                r.samples.setdefault(m.name, []).append(s)

            background[m.name] = B.rounds(mr, args, m.name, one)
            for r in mr:
                ss = r.samples[m.name]
                summ = B.summarize(ss)
                p99 = [s.extra.get("p99_ms") for s in ss if s.value is not None and s.extra.get("p99_ms") is not None]
                if p99:
                    summ["p99_ms"] = statistics.median(p99)
                    summ["p99_ms_samples"] = p99
                # requests per second of the proxy's own CPU: less sensitive than req/s to
                # other load taking the proxy's core (the machine is shared)
                eff = [s.value / s.proxy_cpu for s in ss if s.value is not None and s.proxy_cpu]
                if eff:
                    summ["per_cpu_s"] = statistics.median(eff)
                    summ["per_cpu_s_samples"] = eff
                summ["errors_total"] = sum(s.extra.get("errors", 0) for s in ss)
                summ["samples_full"] = [None if s.value is None else round(s.value, 1) for s in ss]
                r.res[m.name] = summ
    finally:
        for r in running:
            r.stop()


# ------------------------------------------------------------------ reporting

def paired(a: dict, b: dict) -> Optional[tuple[float, float, float]]:
    """Median (min, max) of per-round ratios a/b (rounds where both succeeded)."""
    sa, sb = a.get("samples_full", []), b.get("samples_full", [])
    rs = [x / y for x, y in zip(sa, sb) if x is not None and y]
    if not rs or len(sa) != len(sb):
        return None
    return statistics.median(rs), min(rs), max(rs)


def ratio_text(a: dict, b: dict) -> str:
    if "median" not in a or "median" not in b or not b["median"]:
        return "-"
    t = f"{a['median'] / b['median']:.2f}"
    p = paired(a, b)
    if p and len(a.get("samples_full", [])) > 1:
        t += f" (rounds {p[1]:.2f}-{p[2]:.2f})"
    return t


def report_group(g: Group, results: dict, background: dict, args) -> list[str]:
    texts = []
    res = results.get(g.name, {})
    for m in g.measures:
        rows = []
        for v in g.variants:
            r = res.get(v.name, {})
            if m.tls_only and not v.tls:
                continue
            if "skipped" in r:
                rows.append([v.name, "skipped: " + r["skipped"].splitlines()[0][:60], "", "", "", "", "", "", ""])
                continue
            s = r.get(m.name, {})
            rows.append([v.name, B.cell(s, ".0f"), B.fmt(s.get("per_cpu_s"), ".0f"),
                         B.fmt(s.get("p99_ms"), ".1f"), B.pct(s.get("proxy_cpu")),
                         B.pct(s.get("core1_busy")), B.pct(s.get("core0_cpu")),
                         str(s.get("errors_total", "-")), r.get("tls", "") if m.tls_only else v.note])
        print()
        print(f"== {m.title}; {args.repeats} x {args.seconds:g}s")
        t = B.print_table(["peer", "req/s med (min-max)", "req/CPU-s", "p99 ms", "cpu", "core1", "core0",
                           "errors", "note"], rows)
        bg = " ".join(f"{B.pct(b.get(B.GEN_CPU))}/{B.pct(b.get(B.PROXY_CPU))}" for b in background.get(m.name, []))
        print(f"background busy core0/core1 before each round: {bg}")
        texts.append(f"== {m.title}\n{t}")
        # ratios
        rrows = []
        for num, den, only in g.ratios:
            if only and only != m.name:
                continue
            a, b = res.get(num, {}).get(m.name), res.get(den, {}).get(m.name)
            if a is None or b is None:
                continue
            eff = "-"
            if a.get("per_cpu_s") and b.get("per_cpu_s"):
                eff = f"{a['per_cpu_s'] / b['per_cpu_s']:.2f}"
            rrows.append([f"{num} / {den}", ratio_text(a, b), eff])
        if rrows:
            rt = B.print_table(["ratio", "req/s: of medians (per-round min-max)", "req/CPU-s"], rrows)
            texts.append(rt)
        for text, mname, num0, den, need in g.targets:
            if mname != m.name:
                continue
            for num in [num0] + (["txproxy-pypy"] if num0 == "txproxy" and "txproxy-pypy" in res else []):
                a, b = res.get(num, {}).get(m.name, {}), res.get(den, {}).get(m.name, {})
                if "median" in a and "median" in b and b["median"]:
                    x = a["median"] / b["median"]
                    line = (f"target {text}: {num}/{den} = {x:.2f} (need {need:g}) -> "
                            f"{'MET' if x >= need else 'NOT MET'}")
                else:
                    line = f"target {text}: {num}/{den} not measured"
                print(line)
                texts.append(line)
    return texts


def run_router(args) -> dict:
    out = {}
    pys = [("cpython", B.CPY)] + ([("pypy", B.PYPY)] if args.pypy and os.path.exists(B.PYPY) else [])
    for label, py in pys:
        argv = B.pinned(B.PROXY_CPU) + [py, os.path.join(B.HERE, "bench_router.py")]
        B.log(f"[router] {label}: {' '.join(argv)}")
        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=B.REPO,
                               env=dict(os.environ, PYTHONPATH=B.REPO))
            out[label] = {"command": " ".join(argv), "stdout": p.stdout, "rc": p.returncode,
                          "stderr": p.stderr[-500:]}
        except subprocess.TimeoutExpired:
            out[label] = {"command": " ".join(argv), "error": "timeout"}
        print(f"\n== Route lookup ({label}): bench/bench_router.py")
        print(out[label].get("stdout") or out[label].get("error") or out[label].get("stderr"))
    return out


# ------------------------------------------------------------------ main

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 round of 3 s runs")
    ap.add_argument("--only", help="groups, measurements and/or peers, comma-separated")
    ap.add_argument("--pypy", action="store_true", help="add txproxy on PyPy (8 s of warm-up) to forward/reverse")
    ap.add_argument("--repeats", type=int)
    ap.add_argument("--seconds", type=float, help="length of one run (default 5)")
    ap.add_argument("--processes", choices=("fresh", "shared"), default="fresh",
                    help="start every peer afresh (on the same ports) for each measurement and warm it up "
                         "(default), or keep one process per peer for all rounds (faster, but two processes of "
                         "the same code differ by up to about 10%% for their whole life)")
    ap.add_argument("--nice", type=int, default=0)
    ap.add_argument("--wait-quiet", type=float, default=10.0,
                    help="before each round wait up to this many seconds for both cores < 15%% busy (default 10)")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    B.NICE = args.nice
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.seconds = args.seconds or (3.0 if args.quick else 5.0)
    if not 1 <= args.repeats <= 20 or not 1 <= args.seconds <= 120:
        ap.error("repeats 1-20, seconds 1-120")

    groups = build_groups(args)
    measures = {m.name: g.name for g in groups for m in g.measures}
    peers = {v.peer for g in groups for v in g.variants} | {"txproxy-pypy"}
    sel_groups, sel_measures, sel_peers = set(), set(), set()
    if args.only:
        for n in args.only.split(","):
            if n in GROUP_NAMES:
                sel_groups.add(n)
            elif n in measures:
                sel_measures.add(n)
                sel_groups.add(measures[n])
            elif n in peers:
                sel_peers.add(n)
            else:
                ap.error(f"unknown --only name {n!r}; groups {GROUP_NAMES}, measurements {sorted(measures)}, "
                         f"peers {sorted(peers)}")
        if "txproxy-pypy" in sel_peers and not args.pypy:
            args.pypy = True
            groups = build_groups(args)
    if not sel_groups:
        sel_groups = set(GROUP_NAMES)
    for g in groups:
        if sel_peers:
            g.variants = [v for v in g.variants if v.peer in sel_peers]
        if sel_measures:
            g.measures = [m for m in g.measures if m.name in sel_measures] or g.measures
    groups = [g for g in groups if g.name in sel_groups and g.variants]

    results: dict = {}
    background: dict = {}
    texts: list[str] = []
    t0 = time.time()
    tmp = B.mktemp("http-origin")
    origin_port = B.free_port()
    ctx = Ctx(origin=origin_port, origin_tls=B.free_port())
    ctx.key, ctx.cert = make_cert(tmp)
    origin = B.start_and_wait(start_origin(tmp, origin_port, ctx.origin_tls, ctx), origin_port)
    redis = None
    try:
        if any(g.needs_redis for g in groups):
            ctx.redis = B.free_port()
            redis = B.start_and_wait(start_redis(B.mktemp("redis"), ctx.redis), ctx.redis)
        for g in groups:
            run_group(g, ctx, origin.pid, args, results, background)
            texts += report_group(g, results, background, args)
    finally:
        if redis is not None:
            redis.stop()
        origin.stop()
    router = run_router(args) if "router" in sel_groups else None
    print("\nreq/CPU-s = req/s divided by the proxy's CPU (requests per second of proxy CPU), median of rounds; "
          "cpu = the proxy's process tree, share of ONE core (near 100%: the proxy is the limit); "
          "core1 = core 1 busy (proxy + softirq + anything else); core0 = wrk/ab + origin nginx "
          "(near 100% with cpu well below: the load generator is the limit). Peers interleaved round by round; "
          "ratios < ~10% apart are noise here.")
    data = {"bench": "http", "args": vars(args), "machine": B.machine_info(),
            "origin": {"command": " ".join(origin.argv), "port": origin_port},
            "background_busy_before_rounds": background, "elapsed_s": round(time.time() - t0, 1),
            "results": results, "router": router, "tables": texts}
    print("JSON:", B.write_json("bench_http", data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
