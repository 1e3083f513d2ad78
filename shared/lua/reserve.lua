-- KEYS[1] wallet hash, KEYS[2] quota hash, KEYS[3] reservation marker
-- ARGV[1] amount, ARGV[2] quota limit (0 = none), ARGV[3] marker TTL s, ARGV[4] account id, ARGV[5] key id
-- Returns {code, available}: 0 ok, 1 wallet short, 2 quota short, 3 wallet not loaded.
local amount = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local w = redis.call('HMGET', KEYS[1], 'balance', 'reserved', 'pending')
if not w[1] then
  return {3, 0}
end
local available = tonumber(w[1]) - tonumber(w[2] or 0) - tonumber(w[3] or 0)
if available < amount or available <= 0 then
  return {1, available}
end
if limit > 0 then
  local q = redis.call('HMGET', KEYS[2], 'used', 'reserved', 'pending')
  local qa = limit - tonumber(q[1] or 0) - tonumber(q[2] or 0) - tonumber(q[3] or 0)
  if qa < amount or qa <= 0 then
    return {2, qa}
  end
  redis.call('HSET', KEYS[2], 'limit', limit)
  redis.call('HINCRBY', KEYS[2], 'reserved', amount)
end
redis.call('HINCRBY', KEYS[1], 'reserved', amount)
redis.call('SET', KEYS[3], amount .. ':' .. limit, 'EX', tonumber(ARGV[3]))
return {0, available - amount}
