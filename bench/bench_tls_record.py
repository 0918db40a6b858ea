"""
Cost of TLS per keep-alive HTTP exchange, in memory (no sockets): one
small request record in, one small response record out, through

  pyopenssl   pyOpenSSL over memory BIOs, used the way Twisted's
              TLSMemoryBIOProtocol uses it (recv/bio_read until WantReadError)
  stdlib      ssl.SSLObject over ssl.MemoryBIO, as txproxy's TLS listeners
              use it (txproxy/tls/_proto.py)

Both ends run in this process, so each figure includes the client's work
too (encrypting the request, decrypting the response): read the ratio.
Prints microseconds of CPU per exchange, best of the rounds.  Run it with
each interpreter:

    python bench/bench_tls_record.py
    pypy3 bench/bench_tls_record.py
"""

from __future__ import annotations

import argparse
import datetime
import os
import ssl
import sys
import tempfile
import time

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL

REQUEST = b"GET / HTTP/1.1\r\nHost: app.test\r\nUser-Agent: bench\r\n\r\n"
RESPONSE = b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: text/plain\r\nContent-Length: 12\r\n\r\nhello world\n"


def makeCertificate(folder: str) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "app.test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("app.test")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    path = os.path.join(folder, "cert.pem")
    with open(path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    return path


def stdlibExchanges(pem: str, n: int) -> float:
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(pem)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    sIn, sOut, cIn, cOut = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    s = server.wrap_bio(sIn, sOut, server_side=True)
    c = client.wrap_bio(cIn, cOut, server_hostname="app.test")
    for _ in range(10):
        for end in (c, s):
            try:
                end.do_handshake()
            except ssl.SSLWantReadError:
                pass
        sIn.write(cOut.read())
        cIn.write(sOut.read())
    start = time.process_time()
    for _ in range(n):
        c.write(REQUEST)
        sIn.write(cOut.read())
        got = s.read(16384)  # what txproxy does: read, then stop when nothing is pending
        while sIn.pending or s.pending():
            got += s.read(16384)
        assert got == REQUEST
        s.write(RESPONSE)
        cIn.write(sOut.read())
        assert c.read(16384) == RESPONSE
    return (time.process_time() - start) / n * 1e6


def pyopensslExchanges(pem: str, n: int) -> float:
    server = SSL.Context(SSL.TLS_SERVER_METHOD)
    server.use_certificate_chain_file(pem)
    server.use_privatekey_file(pem)
    s = SSL.Connection(server, None)
    s.set_accept_state()
    c = SSL.Connection(SSL.Context(SSL.TLS_CLIENT_METHOD), None)
    c.set_connect_state()

    def drain(end: SSL.Connection) -> bytes:
        out = b""
        while True:
            try:
                out += end.bio_read(32768)
            except SSL.WantReadError:
                return out

    def receive(end: SSL.Connection) -> bytes:
        got = b""
        while True:
            try:
                got += end.recv(32768)
            except SSL.WantReadError:
                return got

    for _ in range(10):
        for end in (c, s):
            try:
                end.do_handshake()
            except SSL.WantReadError:
                pass
        data = drain(c)
        if data:
            s.bio_write(data)
        data = drain(s)
        if data:
            c.bio_write(data)
    start = time.process_time()
    for _ in range(n):
        c.send(REQUEST)
        s.bio_write(drain(c))
        assert receive(s) == REQUEST
        s.send(RESPONSE)
        c.bio_write(drain(s))
        assert receive(c) == RESPONSE
    return (time.process_time() - start) / n * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=20000, help="exchanges per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        pem = makeCertificate(folder)
        results = {"pyopenssl": [], "stdlib": []}  # type: dict
        for _ in range(args.rounds):  # interleaved
            results["pyopenssl"].append(pyopensslExchanges(pem, args.n))
            results["stdlib"].append(stdlibExchanges(pem, args.n))
    impl = f"{sys.implementation.name} {sys.version.split()[0]}"
    print(f"{impl}, OpenSSL {ssl.OPENSSL_VERSION.split()[1]}: CPU us per exchange (request + response, both ends)")
    for name, values in results.items():
        print(f"  {name:10s} best {min(values):7.1f}  median {sorted(values)[len(values) // 2]:7.1f}")
    print(f"  ratio pyopenssl/stdlib (best): {min(results['pyopenssl']) / min(results['stdlib']):.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
