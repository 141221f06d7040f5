-- wrk script for the labsquid benchmark (bench/bench.py drives it).
-- BENCH_URL: the absolute URL to request (through a proxy) or a path (origin alone).
-- BENCH_HOST: the Host header to send (the origin's host:port).
-- Prints one machine-readable line "BENCHJSON {...}" at the end.
local url = os.getenv("BENCH_URL")
local host = os.getenv("BENCH_HOST")
if url then wrk.path = url end
if host then wrk.headers["Host"] = host end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,' ..
    '"p50_us":%d,"p99_us":%d,"mean_us":%.1f,"max_us":%d}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.mean, latency.max))
end
