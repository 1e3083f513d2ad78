-- Renew one worker's lease on one key (services/gateway/leases.py): an amount of the wallet, and slots of the
-- key's concurrency limit, held so that the worker admits that key's requests without a round trip each.
-- KEYS[1] wallet hash, KEYS[2] the wallet's leases hash (field -> "amount:expires_ms"), KEYS[3] the key's
--   in-flight zset (admit.lua's KEYS[6])
-- ARGV[1] the lease's field ("<worker>:<key id>"), ARGV[2] spent: the actual cost of the requests finished on the
--   lease since the last renewal, which moves from the lease to `pending` (as finish.lua moves a reservation),
--   ARGV[3] the amount wanted (0: give the lease back), ARGV[4] the slots wanted, ARGV[5] the key's concurrency
--   limit (0: none), ARGV[6] now ms, ARGV[7] lease TTL ms, ARGV[8] admit.lua's in-flight entry TTL ms,
--   ARGV[9] the slots the lease's requests in flight use (kept whatever else holds)
-- Returns {amount held, the wallet's available after, slots held}
local field = ARGV[1]
local spent = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local want_slots = tonumber(ARGV[4])
local limit = tonumber(ARGV[5])
local now = tonumber(ARGV[6])
local ttl = tonumber(ARGV[7])
local inflight_ttl = tonumber(ARGV[8])

-- What Redis still holds for this lease: nothing once it expired (the sweep gives that back like any other).
local held = 0
local mine = redis.call('HGET', KEYS[2], field)
if mine then
  local sep = string.find(mine, ':')
  if tonumber(string.sub(mine, sep + 1)) > now then
    held = tonumber(string.sub(mine, 1, sep - 1))
  end
end
sweep_leases(KEYS[1], KEYS[2], now)

if spent > 0 then
  redis.call('HINCRBY', KEYS[1], 'pending', spent)
  local take = math.min(spent, held)
  held = held - take
  redis.call('HINCRBY', KEYS[1], 'reserved', -take)
end

local w = redis.call('HMGET', KEYS[1], 'balance', 'reserved', 'pending')
local available = tonumber(w[1] or 0) - tonumber(w[2] or 0) - tonumber(w[3] or 0)
if not w[1] then
  want = 0  -- the wallet is not loaded (Redis lost it): nothing can be held against it
elseif available < 0 then
  want = math.min(want, math.max(held + available, 0))  -- the balance was cut: give back what it is short by
end
if want < held then
  redis.call('HINCRBY', KEYS[1], 'reserved', want - held)
  available = available + held - want
  held = want
elseif want > held and available > 0 then
  local grant = math.min(want - held, available)
  redis.call('HINCRBY', KEYS[1], 'reserved', grant)
  available = available - grant
  held = held + grant
end
if held > 0 then
  redis.call('HSET', KEYS[2], field, held .. ':' .. (now + ttl))
else
  redis.call('HDEL', KEYS[2], field)
end

-- Concurrency slots: members "<field>:<n>" of the key's in-flight set, scored so that admit.lua's clean-up of
-- entries older than its TTL drops them `ttl` after their last renewal. Leases only take from the lower half of
-- the limit: with more than that in flight elsewhere they shrink to what their own requests use, so a key near
-- its limit is admitted request by request, exactly. (want_slots is 0 when the key has no limit: slots left from
-- one it had are given back.)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - inflight_ttl)
local have = 0
while redis.call('ZSCORE', KEYS[3], field .. ':' .. (have + 1)) do
  have = have + 1
end
local others = redis.call('ZCARD', KEYS[3]) - have
want_slots = math.min(want_slots, math.max(math.floor(limit / 2) - others, tonumber(ARGV[9])))
for n = want_slots + 1, have do
  redis.call('ZREM', KEYS[3], field .. ':' .. n)
end
if want_slots > 0 then
  local score = now + ttl - inflight_ttl
  local args = {}
  for n = 1, want_slots do
    args[2 * n - 1] = score
    args[2 * n] = field .. ':' .. n
  end
  redis.call('ZADD', KEYS[3], unpack(args))
  redis.call('PEXPIRE', KEYS[3], inflight_ttl)
end
return {held, available, want_slots}
