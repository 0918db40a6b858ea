#!/bin/bash
# Interleaved A/B of two txproxy checkouts as reverse proxies (real sockets):
# each twistd on core 1, wrk -t1 -c50 and one nginx worker (the origin) on
# core 0; ROUNDS rounds of 5 s, the two measured in turn; req/s and the
# proxy's CPU ticks (100 per second of one core) per round.
#
#   git worktree add --detach /tmp/old 80f10bf
#   OLD=/tmp/old NEW=$PWD bench/ab_reverse.sh          # ROUNDS=5 ORDER="18102 18101" PY=... WARM=2 (s; 15 for PyPy)
PY=${PY:-$PWD/.venv/bin/python}
NEW=${NEW:-$PWD}
ROUNDS=${ROUNDS:-5}
T=$(mktemp -d /tmp/ab.XXXX)
cat > $T/nginx.conf <<NG
worker_processes 1; pid $T/nginx.pid; error_log $T/err.log; daemon off;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 10000000;
  server { listen 127.0.0.1:18000; location / { return 200 "hello world\n"; } } }
NG
taskset -c 0 nginx -c $T/nginx.conf -p $T & NPID=$!
sleep 0.5
start() { # tree port
  (cd $1 && PYTHONPATH=$1 taskset -c 1 $(dirname $PY)/twistd -n --pidfile= txproxy --mode reverse \
     --listen tcp:$2:interface=127.0.0.1 --route "*=http://127.0.0.1:18000" > $T/tw$2.log 2>&1 & echo $! > $T/tw$2.pid)
}
if ss -ltnH | grep -qE ":1810[12] "; then echo "ports busy"; exit 1; fi
start ${OLD:?OLD=checkout} 18101; start $NEW 18102
for i in $(seq 60); do curl -s -o /dev/null http://127.0.0.1:18101/ && curl -s -o /dev/null http://127.0.0.1:18102/ && break; sleep 0.5; done
pidof_port() { ss -ltnpH "sport = :$1" | sed -n 's/.*pid=\([0-9]*\).*/\1/p' | head -1; }
for p in 18101 18102; do pidof_port $p > $T/tw$p.pid; done
for p in 18101 18102; do taskset -c 0 wrk -t1 -c50 -d${WARM:-2}s -H "Host: app.test" http://127.0.0.1:$p/ > /dev/null; done
for r in $(seq $ROUNDS); do
  for p in ${ORDER:-18101 18102}; do
    c0=$(awk '{print $14+$15}' /proc/$(cat $T/tw$p.pid)/stat)
    out=$(taskset -c 0 wrk -t1 -c50 -d5s -H "Host: app.test" http://127.0.0.1:$p/)
    c1=$(awk '{print $14+$15}' /proc/$(cat $T/tw$p.pid)/stat)
    rps=$(echo "$out" | awk '/Requests\/sec/{print $2}')
    echo "round $r port $p ($([ $p = 18101 ] && echo OLD || echo NEW)) req/s $rps cpu_ticks $((c1-c0))"
  done
done
kill -9 $(cat $T/tw18101.pid) $(cat $T/tw18102.pid); kill $NPID; wait $NPID 2>/dev/null
