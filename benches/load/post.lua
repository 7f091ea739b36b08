-- wrk script for the relay load test: one fixed request, settings from the environment.
--   LOAD_STREAM           true | false (the body's "stream")
--   LOAD_API_KEY          sent as x-api-key (as Authorization: Bearer with LOAD_CHAT)
--   LOAD_CHAT             1: an OpenAI Chat Completions request (streamed ones ask for usage)
--   LOAD_GEMINI           1: a Gemini API request (the URL's method decides streaming), key in
--                         x-goog-api-key
--   LOAD_MODEL            the model (default claude-sonnet-4-5)
--   LOAD_CHUNK_DELAY_MS   when set, sent as x-mock-chunk-delay-ms (slow-stream mode of the mock)
--   LOAD_SESSION          when set, sent as x-claude-code-session-id (a sticky session)
-- At the end it prints one line `LOADJSON {...}` that loadtest.py reads.

local stream = os.getenv("LOAD_STREAM") or "false"
local model = os.getenv("LOAD_MODEL") or ""
if model == "" then model = "claude-sonnet-4-5" end
wrk.method = "POST"
wrk.headers["content-type"] = "application/json"
if os.getenv("LOAD_GEMINI") == "1" then
  wrk.body = '{"contents":[{"role":"user","parts":[{"text":"hello there"}]}],' ..
    '"generationConfig":{"maxOutputTokens":64}}'
  wrk.headers["x-goog-api-key"] = os.getenv("LOAD_API_KEY") or ""
elseif os.getenv("LOAD_CHAT") == "1" then
  local opts = ""
  if stream == "true" then opts = ',"stream_options":{"include_usage":true}' end
  wrk.body = '{"model":"' .. model .. '","max_tokens":64,"stream":' .. stream .. opts ..
    ',"messages":[{"role":"user","content":"hello there"}]}'
  wrk.headers["authorization"] = "Bearer " .. (os.getenv("LOAD_API_KEY") or "")
else
  wrk.body = '{"model":"' .. model .. '","max_tokens":64,"stream":' .. stream ..
    ',"messages":[{"role":"user","content":"hello there"}]}'
  wrk.headers["anthropic-version"] = "2023-06-01"
  wrk.headers["x-api-key"] = os.getenv("LOAD_API_KEY") or ""
end
local session = os.getenv("LOAD_SESSION")
if session ~= nil and session ~= "" then
  wrk.headers["x-claude-code-session-id"] = session
end
local delay = os.getenv("LOAD_CHUNK_DELAY_MS")
if delay ~= nil and delay ~= "" then
  wrk.headers["x-mock-chunk-delay-ms"] = delay
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'LOADJSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
