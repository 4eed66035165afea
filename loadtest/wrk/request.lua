-- wrk script for the load tests: one OpenAI chat request per call, shaped
-- by environment variables (set by loadtest/harness.py), and a JSON summary
-- line (latencies in microseconds) printed when the run is done.
--
--   MG_KEY       client key (Authorization: Bearer)
--   MG_STREAM    "true" for SSE answers
--   MG_EVENTS    demo model: answer with this many token events (0: canned answer)
--   MG_DELAY_MS  demo model: delay between events
--
-- Open-stream sweep (loadtest/vs_nginx.py --sweep), off unless MG_STREAMS is set:
--   MG_STREAMS   each wrk thread sends this many requests (one per connection:
--                its connection count), then parks every connection: the
--                next request waits an hour, far past the end of the run, so
--                wrk's request count is the number of streams that finished
--   MG_RAMP_MS   spread those first requests over this many ms (default 0)
--   MG_CLOSE     "true": send `Connection: close`, so the socket of a finished
--                stream closes (the harness watches for that) and wrk's new
--                connection stays parked
--
-- MG_CLOSE without MG_STREAMS (vs_nginx.py's handshake workload): the proxy
-- closes every connection after its answer and wrk reconnects, so over
-- https:// every request costs a new TLS handshake.

local key = os.getenv("MG_KEY") or "load-test-key"
local stream = os.getenv("MG_STREAM") or "false"
local events = os.getenv("MG_EVENTS") or "0"
local delay_ms = os.getenv("MG_DELAY_MS") or "0"

wrk.method = "POST"
wrk.body = '{"model":"demo-model","stream":' .. stream ..
  ',"messages":[{"role":"user","content":"How do I reach support?"}]}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. key
wrk.headers["x-demo-delay-ms"] = delay_ms
if events ~= "0" then
  wrk.headers["x-demo-events"] = events
end
if os.getenv("MG_CLOSE") == "true" then
  wrk.headers["Connection"] = "close"
end

local streams = tonumber(os.getenv("MG_STREAMS") or "0")
if streams > 0 then
  local ramp = tonumber(os.getenv("MG_RAMP_MS") or "0")
  local sent = 0
  -- wrk asks for a delay before every request when this function exists.
  delay = function()
    sent = sent + 1
    if sent <= streams then
      return math.floor((sent - 1) * ramp / streams)
    end
    return 3600000
  end
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"bytes":%d,"connect_errors":%d,"read_errors":%d,' ..
    '"write_errors":%d,"status_errors":%d,"timeouts":%d,' ..
    '"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d,"mean":%.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean))
end
