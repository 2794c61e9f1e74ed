-- wrk script for bench/intake.py: cycles through pre-signed webhook deliveries.
--
--   wrk -t1 -c32 -d8s -s bench/intake.lua http://127.0.0.1:PORT -- REQUESTS_FILE
--
-- REQUESTS_FILE holds, per delivery: the Stripe-Signature header on one line, the body's
-- length on the next, then the body. Every request is formatted once at start-up, so the
-- client spends no CPU per request beyond handing out the next string. One wrk thread
-- (-t1) so the deliveries are sent once each; past the end of the file it starts over
-- (duplicates, answered 200 without a second row: bench/intake.py sizes the file so that
-- this does not happen and reports when it did).

local requests, count, sent = {}, 0, 0

function init(args)
  local file = assert(io.open(args[1], "rb"))
  while true do
    local signature = file:read("*l")
    if not signature then break end
    local length = tonumber(file:read("*l"))
    local body = file:read(length)
    count = count + 1
    requests[count] = wrk.format("POST", "/webhooks/stripe", {
      ["Content-Type"] = "application/json",
      ["Stripe-Signature"] = signature,
    }, body)
  end
  file:close()
end

function request()
  sent = sent + 1
  return requests[(sent - 1) % count + 1]
end

function done(summary, latency, _)
  local e = summary.errors
  io.write(string.format(
    'WRK {"requests": %d, "duration_us": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, ' ..
    '"max_us": %d, "connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
