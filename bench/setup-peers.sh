#!/bin/sh
# Install the benchmark peers and build the C load generators.  Idempotent:
# run it as often as you like; it only installs what is missing.
#
#   sh bench/setup-peers.sh            # everything
#   SKIP_APT=1 sh bench/setup-peers.sh # venvs and C tools only
#
# - Debian packages: haproxy nginx squid tinyproxy socat wrk apache2-utils
#   redis-server redis-tools pypy3 gcc nghttp2-client (h2load) varnish.  Debian starts daemons on install; an
#   executable /usr/sbin/policy-rc.d that exits 101 stops that.  We put one in
#   place only if none exists and remove it afterwards.  (The benches start
#   every peer themselves on their own loopback port.)
# - /tmp/peervenv (python3 -m venv): proxy.py and pproxy from PyPI.  uvloop is
#   deliberately not installed: pproxy 2.7.9 uses it when importable and then
#   fails on Python 3.11 ("There is no current event loop").
# - /tmp/pypyvenv (pypy3 -m venv): Twisted and txproxy's dependencies, and
#   txproxy itself (editable) once /work/main has a setup.cfg, for the PyPy rows.
# - bench/out/{backend,connrate,bulk}: gcc -O2 from bench/c/.
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")
PEERVENV=${PEERVENV:-/tmp/peervenv}
PYPYVENV=${PYPYVENV:-/tmp/pypyvenv}
PKGS="haproxy nginx squid tinyproxy socat wrk apache2-utils redis-server redis-tools pypy3 gcc nghttp2-client varnish"

# ---- Debian packages
if [ -z "${SKIP_APT:-}" ]; then
    missing=""
    for p in $PKGS; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
    done
    if [ -n "$missing" ]; then
        echo "installing:$missing"
        ours=""
        if [ ! -e /usr/sbin/policy-rc.d ]; then
            printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
            chmod 755 /usr/sbin/policy-rc.d
            ours=1
        fi
        rc=0
        { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing; } || rc=$?
        if [ -n "$ours" ]; then rm -f /usr/sbin/policy-rc.d; fi
        [ "$rc" = 0 ] || { echo "apt-get failed ($rc)" >&2; exit "$rc"; }
    else
        echo "Debian packages: all present"
    fi
fi

# ---- proxy.py and pproxy
if [ -x "$PEERVENV/bin/pproxy" ] && [ -x "$PEERVENV/bin/proxy" ]; then
    echo "$PEERVENV: proxy.py and pproxy present"
else
    python3 -m venv "$PEERVENV"
    "$PEERVENV/bin/pip" install -q proxy.py pproxy
fi
if "$PEERVENV/bin/python" -c "import uvloop" 2>/dev/null; then
    echo "removing uvloop from $PEERVENV (breaks pproxy 2.7.9 on Python 3.11)"
    "$PEERVENV/bin/pip" uninstall -y -q uvloop
fi

# ---- PyPy venv (optional: the PyPy rows are skipped without it)
if command -v pypy3 >/dev/null 2>&1; then
    if [ ! -x "$PYPYVENV/bin/python" ]; then
        pypy3 -m venv "$PYPYVENV"
    fi
    # (txproxy needs Twisted 26.4+, as setup.cfg says: older ones lack the
    # generic factories its annotations subscript.)
    if ! "$PYPYVENV/bin/python" -c "import twisted, OpenSSL, service_identity, txredisapi, attrs, prometheus_client, tomli, h2, mypy_extensions, opentelemetry.proto, sys; sys.exit(tuple(map(int, twisted.__version__.split('.')[:2])) < (26, 4))" 2>/dev/null; then
        # cryptography<44 has PyPy 3.9 wheels; newer needs a Rust build; h2
        # 4.4 needs Python 3.10
        # (the same set as scripts/test's PyPy venv: pyOpenSSL<25.2 because
        # newer needs cryptography 45+; txredisapi without its twisted[tls]).
        { "$PYPYVENV/bin/pip" install -q --only-binary=cryptography,bcrypt "cryptography<44" "pyopenssl<25.2" \
            "twisted>=26.4,<27" service-identity idna attrs prometheus-client tomli "h2>=4.3,<4.4" \
            mypy-extensions "opentelemetry-proto>=1.20,<2" \
          && "$PYPYVENV/bin/pip" install -q --no-deps txredisapi; } || \
            echo "WARNING: PyPy venv dependencies failed; PyPy rows will be skipped" >&2
    fi
    if ! "$PYPYVENV/bin/python" -c "import bcrypt" 2>/dev/null; then
        # the sdist needs cargo and crates.io; take a binary wheel or go without
        "$PYPYVENV/bin/pip" install -q --only-binary=:all: bcrypt || \
            echo "WARNING: no bcrypt wheel for PyPy; txproxy features needing it will not work there" >&2
    fi
    if [ -f "$REPO/setup.cfg" ] && ! "$PYPYVENV/bin/python" -c "import txproxy" 2>/dev/null; then
        "$PYPYVENV/bin/pip" install -q -e "$REPO" --no-deps || \
            echo "WARNING: pip install -e $REPO into $PYPYVENV failed (the benches use PYTHONPATH anyway)" >&2
    fi
else
    echo "pypy3 not installed: PyPy rows will be skipped"
fi

# ---- C load generators and backend
mkdir -p "$HERE/out"
for t in backend connrate bulk; do
    gcc -O2 -Wall -Wextra -o "$HERE/out/$t" "$HERE/c/$t.c"
done
echo "built: $HERE/out/backend $HERE/out/connrate $HERE/out/bulk"
