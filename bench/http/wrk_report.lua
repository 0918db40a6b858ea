-- wrk script for bench/bench_http.py.
--   WRK_PATH: request target (an absolute URI, "http://127.0.0.1:ORIGIN/", makes
--             wrk talk to a forward proxy); default: the URL's path.
--   WRK_HOST: Host header (the origin for a forward proxy, a route's host for a
--             reverse proxy); default: wrk's (the URL's host:port).
-- done() prints one line "WRKJSON {...}" with totals, errors and latency
-- percentiles in microseconds; bench_http.py parses it.
local path = os.getenv("WRK_PATH")
local host = os.getenv("WRK_HOST")
if path and path ~= "" then wrk.path = path end
if host and host ~= "" then wrk.headers["Host"] = host end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "bytes": %d, "connect_errors": %d, '
    .. '"read_errors": %d, "write_errors": %d, "status_errors": %d, "timeouts": %d, '
    .. '"p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max))
end
