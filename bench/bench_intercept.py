#!/usr/bin/env python3
"""
TLS interception benchmark (issue 17): txproxy forward mode with
--intercept-ca (CPython, PyPy) against mitmdump (PyPI mitmproxy), in one
run.

wrk cannot send HTTPS through a proxy, so the client is here: CLIENTS
processes, each opening a connection to the proxy, sending CONNECT, doing
the TLS handshake (trusting the interception CA, checking the name), then
REQUESTS keep-alive GETs on it, and again, until SECONDS are over.  The
origin is nginx over TLS (its own CA, given to each proxy as the upstream
trust anchor), HTTP/1.1 keep-alive, a 12-byte body.

  reqs     intercepted HTTPS requests/s (keep-alive, REQUESTS per connection)
  mint     new intercepted host names/s: each connection asks (SNI) for a
           name never seen before, so the proxy issues a certificate for it;
           the handshake completes (the client verifies the certificate for
           that name) and the connection closes.  Includes the TCP connect,
           the CONNECT and the full TLS handshake.

Every proxy runs on core 1 (taskset), the clients and nginx on core 0.  All
proxies are started and warmed up first; each measurement then runs in
REPEATS rounds measuring every proxy once (interleaved, order reversed on
odd rounds); median and min-max, with the proxy's CPU use (near 100%: the
proxy is the bottleneck).

mitmdump runs with its defaults but for: no flow output (-q,
flow_detail=0), upstream certificates verified against the origin's CA,
and connection_strategy=lazy with upstream_cert=false (it does not connect
to the origin before the client's handshake: less work for it, as txproxy
does).

  python3 bench/bench_intercept.py [--quick] [--only txproxy,txproxy-pypy,mitmproxy]
      [--mitmdump /tmp/venv-mitm/bin/mitmdump]
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import multiprocessing
import os
import socket
import ssl
import sys
import time
from typing import Any, Dict, List, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as B  # noqa: E402
from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402

CPYTHON = "/work/main/.venv/bin/python"
PYPY = "/work/main/.venv-pypy/bin/python"


# ------------------------------------------------------------------ certificates

def _ca(name: str) -> Tuple[x509.Certificate, Any]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _pem(obj: Any) -> bytes:
    if isinstance(obj, x509.Certificate):
        return obj.public_bytes(serialization.Encoding.PEM)
    return obj.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def make_certificates(tmp: str) -> Dict[str, str]:
    """The interception CA (for the proxies and the clients), the origin's
    CA and the origin's certificate for 127.0.0.1."""
    paths = {}
    cert, key = _ca("bench interception CA")
    paths["ca"] = os.path.join(tmp, "intercept-ca.pem")        # cert + key, for txproxy
    paths["ca_crt"] = os.path.join(tmp, "intercept-ca.crt")    # what clients trust
    mitm = os.path.join(tmp, "mitm")
    os.makedirs(mitm)
    paths["mitm_confdir"] = mitm
    for path, data in ((paths["ca"], _pem(cert) + _pem(key)), (paths["ca_crt"], _pem(cert)),
                       (os.path.join(mitm, "mitmproxy-ca.pem"), _pem(key) + _pem(cert))):
        with open(path, "wb") as f:
            f.write(data)
        os.chmod(path, 0o600)
    ocert, okey = _ca("bench origin CA")
    leafKey = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    import ipaddress
    leaf = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "origin")]))
        .issuer_name(ocert.subject).public_key(leafKey.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                    x509.DNSName("localhost")]), critical=False)
        .sign(okey, hashes.SHA256())
    )
    paths["origin_ca"] = os.path.join(tmp, "origin-ca.crt")
    paths["origin_crt"] = os.path.join(tmp, "origin.crt")
    paths["origin_key"] = os.path.join(tmp, "origin.key")
    for path, data in ((paths["origin_ca"], _pem(ocert)), (paths["origin_crt"], _pem(leaf)),
                       (paths["origin_key"], _pem(leafKey))):
        with open(path, "wb") as f:
            f.write(data)
    return paths


# ------------------------------------------------------------------ origin

def start_origin(tmp: str, certs: Dict[str, str]) -> Tuple[B.Server, int]:
    port = B.free_port()
    conf = os.path.join(tmp, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""\
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {certs['origin_crt']};
        ssl_certificate_key {certs['origin_key']};
        location / {{ return 200 "hello world\\n"; }}
    }}
}}
""")
    server = B.Server("nginx", ["nginx", "-c", conf, "-p", tmp], B.GEN_CPU, tmp)
    return B.start_and_wait(server, port), port


# ------------------------------------------------------------------ proxies

def start_txproxy(python: str):
    def start(tmp: str, port: int, certs: Dict[str, str], **_: Any) -> B.Server:
        argv = [python, "-m", "twisted", "txproxy",
                "--listen", f"tcp:{port}:interface=127.0.0.1:backlog=1024",
                "--connect-ports", "*", "--intercept-ca", certs["ca"], "--upstream-ca", certs["origin_ca"]]
        env = dict(os.environ, PYTHONPATH=B.REPO)
        return B.Server("txproxy", argv, B.PROXY_CPU, tmp, env=env, cwd=B.REPO)
    return start


def start_mitmdump(exe: str):
    def start(tmp: str, port: int, certs: Dict[str, str], **_: Any) -> B.Server:
        argv = [exe, "--mode", "regular", "--listen-host", "127.0.0.1", "-p", str(port), "-q",
                "--set", f"confdir={certs['mitm_confdir']}",
                "--set", f"ssl_verify_upstream_trusted_ca={certs['origin_ca']}",
                "--set", "connection_strategy=lazy", "--set", "upstream_cert=false",
                "--set", "flow_detail=0"]
        return B.Server("mitmdump", argv, B.PROXY_CPU, tmp)
    return start


# ------------------------------------------------------------------ clients

def _read_response(sock: ssl.SSLSocket, buf: bytes) -> bytes:
    """Read one response with a Content-Length body; return what follows."""
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            head = buf[:end]
            if not head.startswith(b"HTTP/1.1 200"):
                raise IOError(f"unexpected response {head[:60]!r}")
            i = head.lower().find(b"content-length:")
            length = int(head[i + 15:].split(b"\r\n", 1)[0]) if i >= 0 else 0
            total = end + 4 + length
            while len(buf) < total:
                data = sock.recv(65536)
                if not data:
                    raise IOError("closed in a body")
                buf += data
            return buf[total:]
        data = sock.recv(65536)
        if not data:
            raise IOError("closed before a response")
        buf += data


def _connect(port: int, target: str) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (target.encode(), target.encode()))
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = s.recv(4096)
        if not data:
            raise IOError("closed before the CONNECT response")
        buf += data
    if not buf.startswith(b"HTTP/1.1 200") and not buf.startswith(b"HTTP/1.0 200"):
        raise IOError(f"CONNECT refused: {buf[:60]!r}")
    return s


def _worker(mode: str, port: int, target: str, ca: str, per_conn: int, seconds: float, index: int, conn: Any) -> None:
    os.sched_setaffinity(0, {int(B.GEN_CPU)})
    ctx = ssl.create_default_context(cafile=ca)
    ctx.set_alpn_protocols(["http/1.1"])
    host = target.rsplit(":", 1)[0]
    request = b"GET / HTTP/1.1\r\nHost: %s\r\n\r\n" % target.encode()
    done = errors = conns = 0
    first_error = ""
    names = itertools.count()
    stamp = f"{os.getpid()}-{int(time.time() * 1000) % 10**8}"
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            raw = _connect(port, target)
            if mode == "mint":
                name = f"n{next(names)}-{stamp}.mint.test"
                with ctx.wrap_socket(raw, server_hostname=name):
                    pass
                done += 1
                conns += 1
                continue
            with ctx.wrap_socket(raw, server_hostname=host) as t:
                conns += 1
                buf = b""
                for _ in range(per_conn):
                    t.sendall(request)
                    buf = _read_response(t, buf)
                    done += 1
                    if time.monotonic() >= deadline:
                        break
        except Exception as e:  # count and go on; the first one is reported
            errors += 1
            if not first_error:
                first_error = f"{type(e).__name__}: {e}"[:200]
            time.sleep(0.01)
    conn.send({"done": done, "errors": errors, "conns": conns, "first_error": first_error})
    conn.close()


def run_clients(mode: str, port: int, target: str, ca: str, clients: int, per_conn: int, seconds: float) -> dict:
    """CLIENTS processes for SECONDS; the total rate."""
    ctx = multiprocessing.get_context("fork")
    pipes, procs = [], []
    t0 = time.monotonic()
    r0 = os.times()
    for i in range(clients):
        parent, child = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_worker, args=(mode, port, target, ca, per_conn, seconds, i, child))
        p.start()
        child.close()
        pipes.append(parent)
        procs.append(p)
    results = []
    for parent, p in zip(pipes, procs):
        try:
            results.append(parent.recv() if parent.poll(seconds + 60) else {"done": 0, "errors": 1, "conns": 0, "first_error": "no answer"})
        except EOFError:
            results.append({"done": 0, "errors": 1, "conns": 0, "first_error": "worker died"})
        p.join(30)
    wall = time.monotonic() - t0
    r1 = os.times()
    done = sum(r["done"] for r in results)
    errors = sum(r["errors"] for r in results)
    res = {"rate": done / seconds, "done": done, "errors": errors, "conns": sum(r["conns"] for r in results),
           "seconds": wall, "gen_cpu": (r1.children_user + r1.children_system - r0.children_user - r0.children_system) / wall}
    firsts = [r["first_error"] for r in results if r["first_error"]]
    if firsts:
        res["first_error"] = firsts[0]
    if done == 0:
        res["error"] = firsts[0] if firsts else "nothing done"
    return res


# ------------------------------------------------------------------ main

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 round of 3 s")
    ap.add_argument("--only", default="", help="comma-separated: txproxy,txproxy-pypy,mitmproxy")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--clients", type=int, default=8, help="client processes (connections in flight)")
    ap.add_argument("--requests", type=int, default=100, help="requests per intercepted connection")
    ap.add_argument("--tests", default="reqs,mint")
    ap.add_argument("--mitmdump", default="/tmp/venv-mitm/bin/mitmdump")
    ap.add_argument("--wait-quiet", type=float, default=20.0, dest="wait_quiet")
    args = ap.parse_args()
    if args.quick:
        args.repeats, args.seconds = 1, 3.0
    tests = args.tests.split(",")

    peers = [
        B.Peer("txproxy", start_txproxy(CPYTHON), lambda: B.txproxy_available(CPYTHON), python=CPYTHON),
        B.Peer("txproxy-pypy", start_txproxy(PYPY), lambda: B.txproxy_available(PYPY), warmup=8.0, python=PYPY),
        B.Peer("mitmproxy", start_mitmdump(args.mitmdump), lambda: B.have(args.mitmdump)),
    ]
    if args.only:
        wanted = set(args.only.split(","))
        peers = [p for p in peers if p.name in wanted]

    tmp = B.mktemp("intercept")
    certs = make_certificates(tmp)
    origin, origin_port = start_origin(tmp, certs)
    target = f"127.0.0.1:{origin_port}"
    running: List[Tuple[B.Peer, B.Server, int]] = []
    results: Dict[str, Dict[str, List[B.Sample]]] = {}
    try:
        for peer in peers:
            why = peer.available()
            if why:
                B.log(f"skipping {peer.name}: {why}")
                continue
            port = B.free_port()
            ptmp = B.mktemp(peer.name)
            server = B.start_and_wait(peer.start(ptmp, port, certs=certs), port, timeout=60)
            B.log(f"{peer.name} listening on {port} (pid {server.pid})")
            # Warm-up: both kinds of load (and the JIT for PyPy).
            warm = run_clients("reqs", port, target, certs["ca_crt"], args.clients, args.requests, 2.0 + peer.warmup)
            if "error" in warm:
                B.log(f"{peer.name}: warm-up failed: {warm['error']}\n{server.log_tail()}")
                server.stop()
                continue
            run_clients("mint", port, target, certs["ca_crt"], args.clients, 1, 1.0 + peer.warmup / 4)
            running.append((peer, server, port))
            results[peer.name] = {t: [] for t in tests}

        def measure(entry: Tuple[B.Peer, B.Server, int]) -> None:
            peer, server, port = entry
            for test in tests:
                per_conn = args.requests if test == "reqs" else 1
                def run(test: str = test, per_conn: int = per_conn) -> dict:
                    return run_clients(test, port, target, certs["ca_crt"], args.clients, per_conn, args.seconds)

                sample = B.measured(run, server.pid, origin.pid, "rate")
                results[peer.name][test].append(sample)
                B.log(f"  {peer.name} {test}: {B.fmt(sample.value, '.0f')}/s, proxy cpu {B.pct(sample.proxy_cpu)}"
                      f"{', errors ' + str(sample.extra.get('errors')) if sample.extra.get('errors') else ''}"
                      f"{' (' + sample.extra.get('first_error', '') + ')' if sample.extra.get('first_error') else ''}")

        B.rounds(running, args, "intercept", measure)
    finally:
        for _, server, _ in running:
            server.stop()
        origin.stop()

    summaries = {name: {t: B.summarize(s) for t, s in by.items()} for name, by in results.items()}
    headers = ["proxy"]
    if "reqs" in tests:
        headers += ["requests/s", "proxy cpu", "cpu us/request", "core0"]
    if "mint" in tests:
        headers += ["new names/s", "proxy cpu", "cpu us/name"]
    rows = []
    for name, by in summaries.items():
        row = [name]
        if "reqs" in tests:
            s = by["reqs"]
            row += [B.cell(s, ".0f"), B.pct(s.get("proxy_cpu")), B.per_unit(s, 1e6), B.pct(s.get("core0_cpu"))]
        if "mint" in tests:
            s = by["mint"]
            row += [B.cell(s, ".0f"), B.pct(s.get("proxy_cpu")), B.per_unit(s, 1e6)]
        rows.append(row)
    print(f"\nintercepted HTTPS through each proxy (one core), {args.clients} connections in flight, "
          f"{args.requests} requests per connection; median (min-max) of {args.repeats} x {args.seconds:g} s\n")
    table = B.print_table(headers, rows)
    ratio = cpuRatio = None
    if "reqs" in tests and "txproxy" in summaries and "mitmproxy" in summaries:
        a, b = summaries["txproxy"]["reqs"].get("median"), summaries["mitmproxy"]["reqs"].get("median")
        if a and b:
            ratio = a / b
            print(f"\ntxproxy (CPython) / mitmproxy requests/s: {ratio:.2f}x")
        a, b = summaries["txproxy"]["reqs"].get("cpu_per_unit"), summaries["mitmproxy"]["reqs"].get("cpu_per_unit")
        if a and b:
            cpuRatio = b / a
            print(f"mitmproxy / txproxy (CPython) CPU per request: {cpuRatio:.2f}x")
    B.write_json("bench_intercept", {
        "machine": B.machine_info(), "args": vars(args), "summaries": summaries, "table": table,
        "ratio_txproxy_mitmproxy_reqs": ratio, "ratio_mitmproxy_txproxy_cpu_per_request": cpuRatio,
        "txproxy": {p.name: B.txproxy_origin(p.python) for p, _, _ in running if p.python},
    })
    B.cleanup_temps()


if __name__ == "__main__":
    main()


