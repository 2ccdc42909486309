-- wrk script for the bench: the request's method and body come from the script arguments
-- (after `--`: METHOD [BODY_FILE [CONTENT_TYPE]]), and done() prints one machine-readable line.
-- Latencies are in microseconds; errors.status counts responses with a status >= 400.

function init(args)
  if args[1] and args[1] ~= "" then
    wrk.method = args[1]
  end
  if args[2] and args[2] ~= "" then
    local file = assert(io.open(args[2], "rb"))
    wrk.body = file:read("*a")
    file:close()
    wrk.headers["Content-Type"] = args[3] or "application/json"
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH_RESULT {\"requests\":%d,\"duration_us\":%d,\"bytes\":%d,"
      .. "\"connect\":%d,\"read\":%d,\"write\":%d,\"status\":%d,\"timeout\":%d,"
      .. "\"p50_us\":%d,\"p99_us\":%d,\"mean_us\":%.1f,\"max_us\":%d}\n",
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.mean, latency.max
  ))
end
