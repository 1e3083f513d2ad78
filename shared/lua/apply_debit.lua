-- KEYS[1] wallet hash, KEYS[2] quota hash, KEYS[3] applied marker for the usage event
-- ARGV[1] actual cost, ARGV[2] new wallet balance (absolute, from the ledger), ARGV[3] key's used (-1 = no quota)
if redis.call('SET', KEYS[3], '1', 'NX', 'EX', 86400) == false then
  return 0
end
local actual = tonumber(ARGV[1])
redis.call('HSET', KEYS[1], 'balance', ARGV[2])
local p = tonumber(redis.call('HGET', KEYS[1], 'pending') or 0) - actual
if p < 0 then p = 0 end
redis.call('HSET', KEYS[1], 'pending', p)
if tonumber(ARGV[3]) >= 0 then
  redis.call('HSET', KEYS[2], 'used', ARGV[3])
  local qp = tonumber(redis.call('HGET', KEYS[2], 'pending') or 0) - actual
  if qp < 0 then qp = 0 end
  redis.call('HSET', KEYS[2], 'pending', qp)
end
return 1
