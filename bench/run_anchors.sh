#!/bin/sh
# The rows of issue #18's table, in one sitting: txproxy (CPython, PyPy, and
# the compiled build when bench/benchlib.py finds one) against the peer that
# anchors each row, every row measured interleaved within its bench.
#
#   reverse keep-alive req/s     bench_http.py  --only reverse   (HAProxy)
#   CONNECT tunnels/s, memory    bench_connect.py                (tinyproxy)
#   TCP connections/s, bulk,
#   PING relay, idle memory      bench_tcp.py                    (HAProxy)
#
#   sh bench/setup-peers.sh                 # once
#   sh bench/run_anchors.sh [--quick]       # output also in bench/out/anchors-*.txt
#
# Run it on an otherwise idle machine (each bench waits for a quiet core
# first); every number it prints is a median of interleaved rounds.
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
PY=${PY:-/tmp/venv/bin/python}
OUT=$HERE/out/anchors-$(date -u +%Y%m%dT%H%M%SZ).txt
mkdir -p "$HERE/out"
TX=${TX:-txproxy,txproxy-compiled,txproxy-pypy}
{
  echo "# run_anchors $(date -u) $(cd "$HERE/.." && git rev-parse --short HEAD)"
  $PY "$HERE/bench_http.py" --pypy --only "reverse,reverse-http,$TX,haproxy" "$@"
  $PY "$HERE/bench_connect.py" --only "$TX,tinyproxy" "$@"
  $PY "$HERE/bench_tcp.py" --only "$TX,haproxy" "$@"
} 2>&1 | tee "$OUT"
