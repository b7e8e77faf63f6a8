-- POST one fixed body (read from a file) on every request, and print a machine-readable summary.
--
--   wrk -t1 -c16 -d10s --latency -s post.lua URL -- BODY_FILE [CONTENT_TYPE] [INFERENCE_HEADER_LENGTH]
--
-- INFERENCE_HEADER_LENGTH, when given, is sent as Inference-Header-Content-Length (the V2 binary
-- tensor extension: the body is a JSON header of that many bytes followed by raw tensor data).
-- done() prints one line "BENCHJSON {...}" with counts and latency percentiles in microseconds.

function init(args)
  local file = assert(io.open(args[1], "rb"), "cannot open body file " .. tostring(args[1]))
  wrk.body = file:read("*a")
  file:close()
  wrk.method = "POST"
  wrk.headers["Content-Type"] = args[2] or "application/json"
  if args[3] ~= nil and args[3] ~= "" then
    wrk.headers["Inference-Header-Content-Length"] = args[3]
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"min":%d,"mean":%.2f,"stdev":%.2f,"max":%d,"p50":%d,"p90":%d,"p99":%d,"p999":%d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.stdev, latency.max,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9)))
end
