-- wrk script for bench/intake.py: every request a fresh Stripe delivery, signed here.
--
--   wrk -t1 -c32 -d8s -s bench/intake.lua http://127.0.0.1:PORT -- TEMPLATE SECRET PREFIX
--
-- TEMPLATE is a delivery's body with "@ID@" where its ids go (the event's, the invoice's).
-- Each request gets the next id (PREFIX_0000001, ...), so no two are the same event, and a
-- Stripe-Signature made now (t=<now>,v1=HMAC-SHA256(secret, "<t>.<body>")), so a run may be
-- as long as it likes: the HMAC is OpenSSL's (libcrypto, through LuaJIT's FFI), a few
-- microseconds a request. One wrk thread (-t1): one counter.

local ffi = require("ffi")
ffi.cdef([[
typedef struct evp_md_st EVP_MD;
const EVP_MD *EVP_sha256(void);
unsigned char *HMAC(const EVP_MD *evp_md, const void *key, int key_len,
                    const unsigned char *d, size_t n, unsigned char *md,
                    unsigned int *md_len);
]])
local crypto = ffi.load("libcrypto.so.3")
local sha256 = crypto.EVP_sha256()
local mac, mac_len = ffi.new("unsigned char[32]"), ffi.new("unsigned int[1]")
local hex = {}
for i = 0, 255 do hex[i] = string.format("%02x", i) end

local parts, secret, prefix, sent = {}, nil, nil, 0

function init(args)
  local file = assert(io.open(args[1], "rb"))
  local template = file:read("*a")
  file:close()
  secret, prefix = args[2], args[3]
  local start = 1
  while true do
    local at = template:find("@ID@", start, true)
    if not at then break end
    parts[#parts + 1] = template:sub(start, at - 1)
    start = at + 4
  end
  parts[#parts + 1] = template:sub(start)
end

local function sign(body)
  local stamp = tostring(os.time())
  local signed = stamp .. "." .. body
  crypto.HMAC(sha256, secret, #secret, signed, #signed, mac, mac_len)
  local digest = {}
  for i = 0, 31 do digest[i + 1] = hex[mac[i]] end
  return "t=" .. stamp .. ",v1=" .. table.concat(digest)
end

function request()
  sent = sent + 1
  local id = string.format("%s_%07d", prefix, sent)
  local body = table.concat(parts, id)
  return wrk.format("POST", "/webhooks/stripe", {
    ["Content-Type"] = "application/json",
    ["Stripe-Signature"] = sign(body),
  }, body)
end

function done(summary, latency, _)
  local e = summary.errors
  io.write(string.format(
    'WRK {"requests": %d, "duration_us": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, ' ..
    '"max_us": %d, "connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
