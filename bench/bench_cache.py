#!/usr/bin/env python3
"""
Cache benchmark (issue 15): a hit-heavy keep-alive load through txproxy's
shared cache (CPython and PyPy) against nginx C{proxy_cache} and Varnish,
with txproxy's uncached reverse proxy for the ratio "a hit costs less than
a proxied miss".

The origin is one nginx worker on core 0 serving two static files, C{/1k}
and C{/64k}, with C{Cache-Control: public, max-age=3600} (and nginx's
C{ETag}/C{Last-Modified}); its access log counts the requests that reach it.
Every proxy runs on core 1 (taskset), wrk on core 0.  All peers start
together, each is warmed up (a few requests, then wrk for C{--warmup}
seconds, longer for PyPy's JIT), then measured: C{--repeats} rounds of
C{--seconds} each, the peers interleaved and their order reversed on odd
rounds (BENCH-NOTES).  After warm-up every request is a hit: the "origin
reqs" column counts the requests that reached the origin during the
measurement (0 expected for the caching rows).

Peers (C{--only} takes these names, comma separated):

  txproxy            CPython, --mode reverse --cache 64M
  txproxy-nocache    CPython, --mode reverse (every request proxied)
  txproxy-pypy       PyPy, --cache 64M
  txproxy-pypy-nocache
  txproxy-redis      CPython, --cache 64M --cache-redis (a redis-server of
                     ours on core 0): memory hits with the Redis tier on
  txproxy-redis-hit  CPython, --cache-redis with a memory tier too small
                     for the body (--cache 4K): every hit is a Redis hit,
                     if the cache stores what its memory tier cannot hold
                     (the "hits" check below says whether it did)
  nginx              worker_processes 1, proxy_cache (keys_zone 10m)
  varnish            varnishd -s malloc,256m, one thread pool

It refuses to run (exit 2) when this checkout's txproxy has no --cache.

  /work/main/.venv/bin/python bench/bench_cache.py [--quick] [--only NAME,...]
      [--python PATH] [--pypy PATH] [--seconds S] [--repeats N] [--sizes 1k,64k]
      [--repo CHECKOUT]
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import subprocess
import sys
from typing import Callable, Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_http as BH  # noqa: E402  (wrk, nginx_server, twistd)
import benchlib as B  # noqa: E402

CPYTHON = os.environ.get("TXPROXY_BENCH_PYTHON", "/work/main/.venv/bin/python")
PYPY = os.environ.get("TXPROXY_BENCH_PYPY", "/work/main/.venv-pypy/bin/python")
SIZES = {"1k": 1024, "64k": 65536}
HOST = "app.test"
VARNISHD = shutil.which("varnishd") or "/usr/sbin/varnishd"
#: The peers that need txproxy's --cache (the others run without it).
CACHING = {"txproxy", "txproxy-pypy", "txproxy-redis", "txproxy-redis-hit"}


def has_cache_option(python: str) -> Optional[str]:
    """
    None if this checkout's txproxy, run by C{python}, accepts --cache;
    else why not.
    """
    p = subprocess.run(
        BH.twistd(python) + ["--help"], capture_output=True, text=True, cwd=B.REPO, timeout=120,
        env=dict(os.environ, PYTHONPATH=B.REPO),
    )
    if "--cache" not in p.stdout:
        return f"`twistd txproxy --help` by {python} lists no --cache option (exit {p.returncode})"
    return None


# ------------------------------------------------------------------ servers

def start_origin(tmp: str, port: int) -> B.Server:
    www = os.path.join(tmp, "www")
    os.makedirs(www, exist_ok=True)
    for name, size in SIZES.items():
        with open(os.path.join(www, name), "wb") as f:
            f.write((b"0123456789abcdef" * (size // 16 + 1))[:size])
    return BH.nginx_server("origin", tmp, B.GEN_CPU, f"""\
    listen 127.0.0.1:{port} backlog=4096;
    access_log {tmp}/access.log;
    location / {{
      root {www};
      add_header Cache-Control "public, max-age=3600";
    }}""")


def origin_requests(tmp: str) -> int:
    try:
        with open(os.path.join(tmp, "access.log"), "rb") as f:
            return f.read().count(b"\n")
    except OSError:
        return 0


def txproxy_peer(python: str, args: List[str]) -> Callable[..., B.Server]:
    def start(tmp: str, port: int, origin: int, redis: int) -> B.Server:
        argv = BH.twistd(python) + [
            "--mode", "reverse",
            "--listen", f"tcp:{port}:interface=127.0.0.1:backlog=1024",
            "--route", f"*=http://127.0.0.1:{origin}",
        ] + [a.replace("REDISPORT", str(redis)) for a in args]
        return B.Server("txproxy", argv, B.PROXY_CPU, tmp, env=dict(os.environ, PYTHONPATH=B.REPO), cwd=B.REPO)
    return start


def start_nginx_cache(tmp: str, port: int, origin: int, redis: int) -> B.Server:
    return BH.nginx_server("nginx", tmp, B.PROXY_CPU, f"""\
    listen 127.0.0.1:{port} backlog=4096;
    location / {{
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_cache c;
      proxy_cache_lock on;
      add_header X-Cache-Status $upstream_cache_status;
    }}""", http_extra=f"""\
  proxy_cache_path {tmp}/cache levels=1:2 keys_zone=c:10m max_size=256m inactive=1h use_temp_path=off;
  upstream origin {{
    server 127.0.0.1:{origin};
    keepalive 64;
  }}""")


def start_varnish(tmp: str, port: int, origin: int, redis: int) -> B.Server:
    # -F foreground, no jail, no CLI; one thread pool (the machine's one core
    # for it); malloc storage.  Varnish's workdir under tmp.
    return B.Server("varnish", [
        VARNISHD, "-F", "-j", "none", "-T", "none", "-n", os.path.join(tmp, "varnish"),
        "-a", f"127.0.0.1:{port}", "-b", f"127.0.0.1:{origin}", "-s", "malloc,256m",
        "-p", "thread_pools=1", "-p", "thread_pool_min=60",
    ], B.PROXY_CPU, tmp)


def start_redis(tmp: str, port: int) -> B.Server:
    return B.Server("redis", [
        "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
        "--dir", tmp,
    ], B.GEN_CPU, tmp)


class Peer:
    def __init__(self, name: str, start: Callable[..., B.Server], needs: Callable[[], Optional[str]],
                 warmup: float = 0.0, note: str = "", python: Optional[str] = None) -> None:
        self.name, self.start, self.needs, self.warmup, self.note = name, start, needs, warmup, note
        self.python = python


def peers(args) -> List[Peer]:
    cache = ["--cache", "64M"]
    redis = ["--cache-redis", "redis://127.0.0.1:REDISPORT/0"]

    def tx(python: str) -> Callable[[], Optional[str]]:
        return lambda: B.txproxy_available(python) or has_cache_option(python)

    return [
        Peer("txproxy", txproxy_peer(args.python, cache), tx(args.python), python=args.python),
        Peer("txproxy-nocache", txproxy_peer(args.python, []), lambda: B.txproxy_available(args.python),
             python=args.python),
        Peer("txproxy-pypy", txproxy_peer(args.pypy, cache), tx(args.pypy), warmup=8.0, python=args.pypy),
        Peer("txproxy-pypy-nocache", txproxy_peer(args.pypy, []), lambda: B.txproxy_available(args.pypy),
             warmup=8.0, python=args.pypy),
        Peer("txproxy-redis", txproxy_peer(args.python, cache + redis), tx(args.python), python=args.python),
        Peer("txproxy-redis-hit", txproxy_peer(args.python, ["--cache", "4K"] + redis), tx(args.python),
             python=args.python, note="memory tier smaller than a body: hits come from Redis"),
        Peer("nginx", start_nginx_cache, lambda: B.have("nginx")),
        Peer("varnish", start_varnish, lambda: B.have(VARNISHD)),
    ]


# ------------------------------------------------------------------ checks

def get(port: int, path: str) -> tuple[int, Dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Host": HOST})
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
    finally:
        conn.close()


def looks_like_hit(headers: Dict[str, str]) -> bool:
    """
    Whether a response says it came from the cache: RFC 9211 Cache-Status
    (txproxy), nginx's X-Cache-Status, or a positive Age (Varnish).
    """
    status = headers.get("cache-status", "")
    if status:
        return "hit" in status.split(";", 2)[1] if ";" in status else False
    if headers.get("x-cache-status", "").upper() == "HIT":
        return True
    try:
        return int(headers.get("age", "0")) > 0 or len(headers.get("x-varnish", "").split()) == 2
    except ValueError:
        return False


# ------------------------------------------------------------------ main

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 round of 3 s, 2 s warm-up")
    ap.add_argument("--only", default="", help="peer names, comma separated")
    ap.add_argument("--sizes", default="1k,64k")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--wait-quiet", type=float, default=30.0)
    ap.add_argument("--python", default=CPYTHON)
    ap.add_argument("--pypy", default=PYPY)
    ap.add_argument("--repo", default=B.REPO, help="the txproxy checkout to run (default: this one)")
    args = ap.parse_args()
    B.REPO = os.path.abspath(args.repo)
    if args.quick:
        args.seconds, args.repeats, args.warmup, args.wait_quiet = 3.0, 1, 2.0, 5.0
    sizes = [s for s in args.sizes.split(",") if s]
    for s in sizes:
        if s not in SIZES:
            ap.error(f"--sizes: {s!r} is not one of {', '.join(SIZES)}")

    chosen = peers(args)
    if args.only:
        names = set(args.only.split(","))
        unknown = names - {p.name for p in chosen}
        if unknown:
            ap.error(f"--only: unknown peer(s) {', '.join(sorted(unknown))}")
        chosen = [p for p in chosen if p.name in names]
    if any(p.name in CACHING for p in chosen):
        why = has_cache_option(args.python)
        if why:
            print(f"bench_cache: cannot run: {why}", file=sys.stderr)
            return 2

    results: dict = {"machine": B.machine_info(), "args": vars(args), "peers": {}}
    servers: List[B.Server] = []
    running: List[dict] = []
    tmp = B.mktemp("cache")
    try:
        origin_port, redis_port = B.free_port(), B.free_port()
        origin = B.start_and_wait(start_origin(tmp, origin_port), origin_port)
        servers.append(origin)
        if any("redis" in p.name for p in chosen):
            servers.append(B.start_and_wait(start_redis(B.mktemp("redis"), redis_port), redis_port))
        for p in chosen:
            res: dict = {"note": p.note}
            results["peers"][p.name] = res
            why = p.needs()
            if why:
                print(f"# skipping {p.name}: {why}", flush=True)
                res["skipped"] = why
                continue
            if p.python:
                res["txproxy_origin"] = B.txproxy_origin(p.python)
            port = B.free_port()
            try:
                server = B.start_and_wait(p.start(B.mktemp(p.name), port, origin_port, redis_port), port, 40)
            except RuntimeError as e:
                print(f"# skipping {p.name}: {e}", flush=True)
                res["skipped"] = str(e)
                continue
            servers.append(server)
            res["command"] = " ".join(server.argv)
            running.append({"peer": p, "port": port, "server": server, "res": res, "samples": {s: [] for s in sizes}})

        # Warm-up: fill every cache, check the bodies and that hits are hits.
        for r in running:
            p, port = r["peer"], r["port"]
            for s in sizes:
                for _ in range(3):
                    status, headers, body = get(port, f"/{s}")
                if status != 200 or len(body) != SIZES[s]:
                    raise RuntimeError(f"{p.name}: GET /{s} gave {status} with {len(body)} bytes")
                r["res"][f"hit_check_{s}"] = looks_like_hit(headers)
                r["res"][f"headers_{s}"] = headers
            B.log(f"warming up {p.name} ({args.warmup + p.warmup:g} s)")
            for s in sizes:
                BH.wrk(f"http://127.0.0.1:{port}/{s}", (args.warmup + p.warmup) / len(sizes), host=HOST)

        def measure(r: dict) -> None:
            for s in sizes:
                before = origin_requests(tmp)
                url = f"http://127.0.0.1:{r['port']}/{s}"
                sample = B.measured(
                    lambda url=url: BH.wrk(url, args.seconds, host=HOST),
                    r["server"].pid, None, "rps",
                )
                sample.extra["origin_requests"] = origin_requests(tmp) - before
                sample.extra.pop("wrk", None)
                r["samples"][s].append(sample)
                B.log(f"  {r['peer'].name} /{s}: {B.fmt(sample.value, '.0f')} req/s, "
                      f"proxy CPU {B.pct(sample.proxy_cpu)}, origin reqs {sample.extra['origin_requests']}")

        results["background"] = B.rounds(running, args, "cache", measure)
        for r in running:
            if not r["server"].alive():
                r["res"]["died"] = r["server"].log_tail()
    finally:
        for server in reversed(servers):
            server.stop()
        B.cleanup_temps()

    # Report.
    summaries: Dict[str, Dict[str, dict]] = {}
    rows = []
    for r in running:
        name = r["peer"].name
        for s in sizes:
            summ = B.summarize(r["samples"][s])
            summ["origin_requests"] = [x.extra.get("origin_requests") for x in r["samples"][s]]
            summ["p99_ms"] = [x.extra.get("p99_ms") for x in r["samples"][s]]
            summaries.setdefault(name, {})[s] = summ
            r["res"][s] = summ
            rows.append([
                name, s, B.cell(summ, ".0f"), B.pct(summ.get("proxy_cpu")),
                B.per_unit(summ, 1e6, ".1f"), B.pct(summ.get("core0_cpu")),
                str(sum(v or 0 for v in summ["origin_requests"])),
                "yes" if r["res"].get(f"hit_check_{s}") else "no",
            ])
    print()
    print(f"# cache benchmark: wrk -t1 -c{BH.CONNS}, {args.repeats} x {args.seconds:g} s, one core per proxy")
    table = B.print_table(
        ["peer", "body", "req/s median (min-max)", "proxy CPU", "CPU us/req", "core 0 (wrk)", "origin reqs",
         "says hit"], rows)
    results["table"] = table

    def ratio(a: str, b: str, s: str) -> Optional[float]:
        x, y = summaries.get(a, {}).get(s, {}), summaries.get(b, {}).get(s, {})
        if "median" in x and "median" in y and y["median"]:
            return float(x["median"] / y["median"])
        return None

    lines = []
    for s in sizes:
        for a, b, target in (
            ("txproxy", "txproxy-nocache", "target >= 1.5"),
            ("txproxy-pypy", "txproxy-pypy-nocache", "target >= 1.5"),
            ("txproxy-pypy", "varnish", "target >= 0.3"),
            ("txproxy", "varnish", ""),
            ("txproxy-pypy", "nginx", ""),
            ("txproxy-redis", "txproxy", "Redis tier on, memory hits"),
            ("txproxy-redis-hit", "txproxy", "Redis hits vs memory hits"),
        ):
            v = ratio(a, b, s)
            if v is not None:
                lines.append(f"/{s}: {a} / {b} = {v:.2f}{'  (' + target + ')' if target else ''}")
    print("\n".join(lines))
    results["ratios"] = lines
    print("JSON:", B.write_json("bench_cache", results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
