-- Admission of one request in one round trip: rate limits (per key and per account), concurrency, and the
-- spend-guard reservation. Nothing is written unless every check passes.
-- KEYS[1] wallet hash, KEYS[2] quota hash, KEYS[3] reservation marker (same fields as shared/lua/reserve.lua,
--   so billing's apply_debit and the gateway's settle match),
-- KEYS[4] key RPM window, KEYS[5] key TPM window, KEYS[6] key in-flight zset,
-- KEYS[7] account RPM window, KEYS[8] account TPM window, KEYS[9] account in-flight zset
-- ARGV[1] amount (micro-USD), ARGV[2] quota limit (0 none), ARGV[3] marker TTL s,
-- ARGV[4] now ms, ARGV[5] request id, ARGV[6] token estimate, ARGV[7] in-flight entry TTL ms,
-- ARGV[8..10] key rpm/tpm/concurrency limits, ARGV[11..13] account rpm/tpm/concurrency limits (0 = none)
-- KEYS[10] the wallet's holds hash (sweep_leases.lua, prepended to this script): the reservation is listed there
-- until finish.lua settles it; read whole only when the wallet or quota looks short, to give back what killed
-- workers held.
-- Organisation keys (issue 11): KEYS[11] the member's allowance hash for this month (used, reserved),
-- KEYS[12] its reservation marker (both absent for a personal key); ARGV[14] the monthly allowance (0 = none:
-- nothing is refused, but the spend is still counted, so an allowance set mid-month counts the whole month),
-- ARGV[15] the allowance hash's TTL s (it outlives its month, then goes: next month starts at zero).
-- A window or in-flight set is kept only while its limit is set (> 0): no Redis work for limits that do not
-- apply. A limit set mid-minute counts from then on (that minute is lenient by what came before), and a
-- concurrency limit counts only requests admitted once it is set. finish.lua is told which were counted.
-- Returns {code, available, key_rpm_used, key_tpm_used, retry_ms}
--   code 0 ok, 1 wallet short, 2 quota short, 3 wallet not loaded, 4 allowance short,
--   10 key rpm, 11 key tpm, 12 key concurrency, 13 account rpm, 14 account tpm, 15 account concurrency
local amount = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local now = tonumber(ARGV[4])
local member = ARGV[5]
local tokens = tonumber(ARGV[6])
local inflight_ttl = tonumber(ARGV[7])
local window_left = 60000 - (now % 60000)

local limits = {tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10]),
                tonumber(ARGV[11]), tonumber(ARGV[12]), tonumber(ARGV[13])}
-- a window's count so far, read only when its limit is set
local function used(k, lim)
  if lim > 0 then return tonumber(redis.call('GET', k) or 0) end
  return 0
end
local key_rpm = used(KEYS[4], limits[1])
local key_tpm = used(KEYS[5], limits[2])

local function limited(rpm_used, tpm_used, zkey, rpm, tpm, conc, base)
  if rpm > 0 and rpm_used >= rpm then
    return {base, 0, key_rpm, key_tpm, window_left}
  end
  if tpm > 0 and tpm_used >= tpm then
    return {base + 1, 0, key_rpm, key_tpm, window_left}
  end
  if conc > 0 then
    redis.call('ZREMRANGEBYSCORE', zkey, '-inf', now - inflight_ttl)
    if redis.call('ZCARD', zkey) >= conc then
      return {base + 2, 0, key_rpm, key_tpm, 1000}
    end
  end
  return nil
end

local refused = limited(key_rpm, key_tpm, KEYS[6], limits[1], limits[2], limits[3], 10)
if refused then return refused end
refused = limited(used(KEYS[7], limits[4]), used(KEYS[8], limits[5]), KEYS[9], limits[4], limits[5], limits[6], 13)
if refused then return refused end

-- the spend guard (logic of shared/lua/reserve.lua)
local w = redis.call('HMGET', KEYS[1], 'balance', 'reserved', 'pending')
if not w[1] then
  return {3, 0, key_rpm, key_tpm, 0}
end
local available = tonumber(w[1]) - tonumber(w[2] or 0) - tonumber(w[3] or 0)
if (available < amount or available <= 0) and sweep_leases(KEYS[1], KEYS[10], now) > 0 then
  w = redis.call('HMGET', KEYS[1], 'balance', 'reserved', 'pending')
  available = tonumber(w[1]) - tonumber(w[2] or 0) - tonumber(w[3] or 0)
end
if available < amount or available <= 0 then
  return {1, available, key_rpm, key_tpm, 0}
end
-- The member's monthly allowance (organisation keys), a third hold beside wallet and key quota. The gateway
-- itself counts `used` when it settles (finish.lua), from the same priced cost billing debits.
local allowance = tonumber(ARGV[14] or 0)
if allowance > 0 then
  local a = redis.call('HMGET', KEYS[11], 'used', 'reserved')
  local aa = allowance - tonumber(a[1] or 0) - tonumber(a[2] or 0)
  if aa < amount or aa <= 0 then
    return {4, aa, key_rpm, key_tpm, 0}
  end
end
if limit > 0 then
  local q = redis.call('HMGET', KEYS[2], 'used', 'reserved', 'pending')
  local qa = limit - tonumber(q[1] or 0) - tonumber(q[2] or 0) - tonumber(q[3] or 0)
  if qa < amount or qa <= 0 then
    sweep_leases(KEYS[1], KEYS[10], now)
    q = redis.call('HMGET', KEYS[2], 'used', 'reserved', 'pending')
    qa = limit - tonumber(q[1] or 0) - tonumber(q[2] or 0) - tonumber(q[3] or 0)
  end
  if qa < amount or qa <= 0 then
    return {2, qa, key_rpm, key_tpm, 0}
  end
  redis.call('HSET', KEYS[2], 'limit', limit)
  redis.call('HINCRBY', KEYS[2], 'reserved', amount)
end
if KEYS[11] then
  redis.call('HINCRBY', KEYS[11], 'reserved', amount)
  redis.call('EXPIRE', KEYS[11], tonumber(ARGV[15]))
  redis.call('SET', KEYS[12], amount, 'EX', tonumber(ARGV[3]))
end
redis.call('HINCRBY', KEYS[1], 'reserved', amount)
redis.call('SET', KEYS[3], amount .. ':' .. limit, 'EX', tonumber(ARGV[3]))
local hold = amount .. ':' .. (now + tonumber(ARGV[3]) * 1000 + 60000)
if limit > 0 then
  hold = hold .. ':' .. KEYS[2]
end
redis.call('HSET', KEYS[10], 'res:' .. member, hold)

-- count the request in the windows whose limit is set; windows outlive their minute a little so a late finish
-- still lands
for i, k in ipairs({KEYS[4], KEYS[7]}) do
  if limits[i * 3 - 2] > 0 then
    redis.call('INCR', k)
    redis.call('PEXPIRE', k, 120000)
  end
end
for i, k in ipairs({KEYS[5], KEYS[8]}) do
  if limits[i * 3 - 1] > 0 then
    redis.call('INCRBY', k, tokens)
    redis.call('PEXPIRE', k, 120000)
  end
end
for i, k in ipairs({KEYS[6], KEYS[9]}) do
  if limits[i * 3] > 0 then
    redis.call('ZADD', k, now, member)
    redis.call('PEXPIRE', k, inflight_ttl)
  end
end
return {0, available - amount, key_rpm + 1, key_tpm + tokens, window_left}
