-- The end of one admitted request: settle the reservation (logic of shared/lua/settle.lua), leave the in-flight
-- sets, and correct the token windows from the estimate to the actual count.
-- KEYS[1] wallet hash, KEYS[2] quota hash, KEYS[3] reservation marker, KEYS[4] key TPM window,
-- KEYS[5] account TPM window, KEYS[6] key in-flight zset, KEYS[7] account in-flight zset
-- ARGV[1] actual cost, ARGV[2] request id, ARGV[3] tokens actual - estimate, ARGV[4] what admit.lua counted
--   (only where a limit was set), as bits: 1 key TPM, 2 account TPM, 4 key in-flight, 8 account in-flight
-- KEYS[8] the wallet's holds hash, where admit.lua listed the reservation (sweep_leases.lua): unlisted once
-- settled. Organisation keys: KEYS[9] the member's allowance hash, KEYS[10] its reservation marker (absent when
-- the request held no allowance): reserved -= held, used += actual.
local counted = tonumber(ARGV[4])
local function was(bit) return counted % (bit * 2) >= bit end
if was(4) then redis.call('ZREM', KEYS[6], ARGV[2]) end
if was(8) then redis.call('ZREM', KEYS[7], ARGV[2]) end
if KEYS[10] then
  local held = redis.call('GET', KEYS[10])
  if held then
    redis.call('HINCRBY', KEYS[9], 'reserved', -tonumber(held))
    redis.call('HINCRBY', KEYS[9], 'used', tonumber(ARGV[1]))
    redis.call('DEL', KEYS[10])
  end
end
local delta = tonumber(ARGV[3])
if delta ~= 0 then
  for i, k in ipairs({KEYS[4], KEYS[5]}) do
    if was(i) and redis.call('EXISTS', k) == 1 then
      redis.call('INCRBY', k, delta)
    end
  end
end
local marker = redis.call('GET', KEYS[3])
if not marker then
  return 0
end
local sep = string.find(marker, ':')
local amount = tonumber(string.sub(marker, 1, sep - 1))
local limit = tonumber(string.sub(marker, sep + 1))
local actual = tonumber(ARGV[1])
redis.call('HINCRBY', KEYS[1], 'reserved', -amount)
redis.call('HINCRBY', KEYS[1], 'pending', actual)
if limit > 0 then
  redis.call('HINCRBY', KEYS[2], 'reserved', -amount)
  redis.call('HINCRBY', KEYS[2], 'pending', actual)
end
redis.call('DEL', KEYS[3])
redis.call('HDEL', KEYS[8], 'res:' .. ARGV[2])
return 1
