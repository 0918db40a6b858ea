#!/bin/bash
# Interleaved A/B of two txproxy checkouts as reverse proxies (real sockets):
# the proxy on core 1, wrk -t1 -cC (default 50) and one nginx worker (the
# origin) on core 0.  Each round starts a FRESH process per checkout (the
# order alternates between rounds), warms it for WARM s, measures 5 s, and
# stops it: one process per checkout per round, never two at once.
#
# Why fresh processes: two processes of the SAME checkout differ by up to
# +-10% in req/s for their whole life (address-space layout, hash seed), so
# a run that keeps one process per checkout measures those two processes,
# not the two checkouts (A/A runs of the older form of this script gave
# 0.94 to 1.11).  Averaging over many process pairs removes that.
#
#   git worktree add --detach /tmp/old 80f10bf
#   OLD=/tmp/old NEW=$PWD bench/ab_reverse.sh     # ROUNDS=8 PY=... WARM=2 (s; 15 for PyPy) C=50
#   OLD=$PWD NEW=$PWD bench/ab_reverse.sh         # A/A: how far apart equal checkouts land
#   NEW=/tmp/empty NEW_PY=.venv-compiled/bin/python OLD=/tmp/old bench/ab_reverse.sh
#                  # the compiled install (NEW: a directory without txproxy in it) against a checkout
#   OLD_ENV="VAR=x" NEW_ENV="VAR=y" ...        # environment settings for one side
#   LOAD=h2c ...      # h2load -t1 -cC -m10 with prior knowledge (HTTP/2 from
#                     # the clients, HTTP/1.1 to nginx) instead of wrk; LOAD=h1:
#                     # h2load --h1 -cC -m1 (HTTP/1.1 keep-alive, as bench_h2.py);
#                     # LOAD=h2tls: h2load -m10 over TLS (ALPN h2, a P-256
#                     # certificate made for the run, as bench_h2.py's h2-tls)
#
# PyPy runs with PYPY_GC_NURSERY=32M (as docs/performance.rst recommends and
# benchlib.py does); PYPY_GC_NURSERY= (empty) in the environment gives
# PyPy's default.
#
# Prints one line per measurement (req/s, the proxy's CPU ticks: 100 per
# second of one core), then the mean req/s of each side, the NEW/OLD ratio
# of the means, and the median of the per-round ratios.
PY=${PY:-$PWD/.venv/bin/python}
NEW=${NEW:-$PWD}
OLD=${OLD:?OLD=checkout}
ROUNDS=${ROUNDS:-8}
OLD_PY=${OLD_PY:-$PY}
NEW_PY=${NEW_PY:-$PY}
T=$(mktemp -d /tmp/ab.XXXX)
cat > $T/nginx.conf <<NG
worker_processes 1; pid $T/nginx.pid; error_log $T/err.log; daemon off;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 10000000;
  server { listen 127.0.0.1:18000; location / { return 200 "hello world\n"; } } }
NG
if ss -ltnH | grep -qE ":(18000|18101) "; then echo "ports busy"; exit 1; fi
LISTEN=tcp:18101:interface=127.0.0.1; SCHEME=http
if [ "${LOAD:-wrk}" = h2tls ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout $T/key.pem -out $T/cert.pem \
    -days 2 -subj /CN=app.test -addext "subjectAltName=DNS:app.test,IP:127.0.0.1" 2>/dev/null
  LISTEN=ssl:18101:privateKey=$T/key.pem:certKey=$T/cert.pem:interface=127.0.0.1; SCHEME=https
fi
taskset -c 0 nginx -c $T/nginx.conf -p $T & NPID=$!
sleep 0.5
load() { # seconds: one load run on core 0; prints its output
  case ${LOAD:-wrk} in
    wrk) taskset -c 0 wrk -t1 -c${C:-50} -d${1}s -H "Host: app.test" http://127.0.0.1:18101/ ;;
    h2c) taskset -c 0 h2load -t1 -c${C:-50} -m10 -D $1 http://127.0.0.1:18101/ ;;
    h1) taskset -c 0 h2load -t1 --h1 -c${C:-50} -m1 -D $1 http://127.0.0.1:18101/ ;;
    h2tls) taskset -c 0 h2load -t1 -c${C:-50} -m10 -D $1 https://127.0.0.1:18101/ ;;
    *) echo "LOAD=$LOAD: wrk, h2c, h2tls or h1" >&2; exit 2 ;;
  esac
}
measure() { # label tree python env
  (cd $2 && env PYPY_GC_NURSERY=${PYPY_GC_NURSERY-32M} $4 PYTHONPATH=$2 taskset -c 1 $(dirname $3)/twistd -n --pidfile= txproxy --mode reverse \
     --listen $LISTEN --route "*=http://127.0.0.1:18000" > $T/tw.log 2>&1 & echo $! > $T/tw.pid)
  for i in $(seq 120); do curl -sk -o /dev/null $SCHEME://127.0.0.1:18101/ && break; sleep 0.25; done
  local pid
  pid=$(ss -ltnpH "sport = :18101" | sed -n 's/.*pid=\([0-9]*\).*/\1/p' | head -1)
  load ${WARM:-2} > /dev/null
  local c0 c1 out rps
  c0=$(awk '{print $14+$15}' /proc/$pid/stat)
  out=$(load 5)
  c1=$(awk '{print $14+$15}' /proc/$pid/stat)
  rps=$(echo "$out" | awk '/Requests\/sec/{print $2} /^finished in/{print $4}')
  echo "round $r $1 req/s $rps cpu_ticks $((c1-c0))" | tee -a $T/results
  kill -9 $pid 2>/dev/null
  for i in $(seq 40); do ss -ltnH | grep -q ":18101 " || break; sleep 0.1; done
}
for r in $(seq $ROUNDS); do
  if [ $((r % 2)) = 1 ]; then measure OLD $OLD $OLD_PY "$OLD_ENV"; measure NEW $NEW $NEW_PY "$NEW_ENV"; else measure NEW $NEW $NEW_PY "$NEW_ENV"; measure OLD $OLD $OLD_PY "$OLD_ENV"; fi
done
kill $NPID; wait $NPID 2>/dev/null
awk '{v[$2" "$3]=$5; s[$3]+=$5; n[$3]++; rounds[$2]=1}
  END {
    m = 0; for (r in rounds) if (v[r" OLD"] > 0) ratio[++m] = v[r" NEW"] / v[r" OLD"]
    for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) if (ratio[j] < ratio[i]) { t = ratio[i]; ratio[i] = ratio[j]; ratio[j] = t }
    med = (m % 2) ? ratio[(m + 1) / 2] : (ratio[m / 2] + ratio[m / 2 + 1]) / 2
    printf "OLD mean %.0f req/s, NEW mean %.0f req/s, NEW/OLD %.3f (median of %d per-round ratios %.3f, range %.3f..%.3f)\n",
      s["OLD"] / n["OLD"], s["NEW"] / n["NEW"], (s["NEW"] / n["NEW"]) / (s["OLD"] / n["OLD"]), m, med, ratio[1], ratio[m]
  }' $T/results
