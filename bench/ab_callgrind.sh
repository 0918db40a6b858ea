#!/bin/bash
# User-space instructions per request (reverse) or per tunnel (connect) of
# two txproxy checkouts on real loopback sockets: each proxy runs under
# valgrind's callgrind, is warmed up, its counters are zeroed, a fixed load
# runs, the counters are dumped.  Instruction counts do not depend on what
# else the machine is doing, so this A/B is usable on a busy machine where
# bench/ab_reverse.sh's req/s is not; it leaves out the kernel (compare
# syscalls with strace -c) and cache misses (add CGX=--cache-sim=yes).
#
#   git worktree add --detach /tmp/old 80f10bf
#   OLD=/tmp/old NEW=$PWD bench/ab_callgrind.sh reverse   # N=20000 requests, C=10 connections
#   OLD=/tmp/old NEW=$PWD bench/ab_callgrind.sh connect   # T=20 s of CONNECT+64 B echo+close
#   PY=.venv-pypy/bin/python W=30000 WT=30 ...            # PyPy: longer warm-ups for the JIT
#
# Needs valgrind, nginx, h2load and gcc (bench/c/backend.c, connrate.c).
set -eu
MODE=${1:?reverse or connect}
PY=${PY:-$PWD/.venv/bin/python}; case $PY in /*) ;; *) PY=$PWD/$PY;; esac
NEW=${NEW:-$PWD}
HERE=$(cd "$(dirname "$0")" && pwd)
TMP=$(mktemp -d /tmp/abcg.XXXX)
gcc -O2 -o $TMP/backend $HERE/c/backend.c
gcc -O2 -o $TMP/connrate $HERE/c/connrate.c
cat > $TMP/nginx.conf <<NG
worker_processes 1; pid $TMP/nginx.pid; error_log $TMP/err.log; daemon off;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 10000000;
  server { listen 127.0.0.1:18400; location / { return 200 "hello world\n"; } } }
NG
nginx -c $TMP/nginx.conf -p $TMP & NPID=$!
$TMP/backend -a 127.0.0.1 -e 18401 -t 3600 > $TMP/backend.out & BPID=$!
trap 'kill $NPID $BPID 2>/dev/null' EXIT
sleep 0.5
TWISTD='from twisted.scripts.twistd import run; run()'

one() { # tree port label
  local tree=$1 port=$2 label=$3 out=$TMP/$3 args
  if [ $MODE = reverse ]; then
    args=(--mode reverse --listen tcp:$port:interface=127.0.0.1 --route "*=http://127.0.0.1:18400")
  else
    args=(--listen tcp:$port:interface=127.0.0.1:backlog=1024 --connect-ports '*')
  fi
  (cd $tree && PYTHONPATH=$tree exec valgrind --tool=callgrind --callgrind-out-file=$out.%p \
     --dump-instr=no ${CGX:-} $PY -c "$TWISTD" -n --pidfile= txproxy "${args[@]}" > $out.log 2>&1) &
  local vpid=$! i n
  for i in $(seq 240); do
    curl -s -o /dev/null -x http://127.0.0.1:$port http://127.0.0.1:18400/ && break; sleep 0.5
  done
  if [ $MODE = reverse ]; then
    h2load --h1 -n ${W:-2000} -c ${C:-10} http://127.0.0.1:$port/ > /dev/null
    callgrind_control -z $vpid > /dev/null
    n=$(h2load --h1 -n ${N:-20000} -c ${C:-10} http://127.0.0.1:$port/ | awk '/status codes:/{print $3}')
  else
    $TMP/connrate -p $port -c ${C:-10} -t ${WT:-5} -C 127.0.0.1:18401 -s 64 > /dev/null
    callgrind_control -z $vpid > /dev/null
    n=$($TMP/connrate -p $port -c ${C:-10} -t ${T:-20} -C 127.0.0.1:18401 -s 64 \
        | sed -n 's/.*"cycles": \([0-9]*\).*/\1/p')
  fi
  callgrind_control -d $vpid > /dev/null
  kill $vpid; wait $vpid 2>/dev/null || true
  local ir=$(cat $out.*.1 | sed -n 's/^summary: //p')
  echo "$label $MODE: $n done, $((ir / n)) instructions each ($(cd $tree && git rev-parse --short HEAD), $($PY -c 'import platform; print(platform.python_implementation())'))"
}
one ${OLD:?OLD=checkout} 18402 OLD
one $NEW 18403 NEW
