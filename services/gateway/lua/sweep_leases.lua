-- Prepended to admit.lua and lease.lua: gives back the leases (lease.lua) of workers that stopped renewing them,
-- i.e. were killed. A lease is "amount:expires_ms" under its field of the wallet's leases hash; its amount is part
-- of the wallet's `reserved`. Returns what was given back.
local function sweep_leases(wallet, leases, now)
  local all = redis.call('HGETALL', leases)
  local freed = 0
  for i = 1, #all, 2 do
    local value = all[i + 1]
    local sep = string.find(value, ':')
    if tonumber(string.sub(value, sep + 1)) <= now then
      freed = freed + tonumber(string.sub(value, 1, sep - 1))
      redis.call('HDEL', leases, all[i])
    end
  end
  if freed > 0 then
    redis.call('HINCRBY', wallet, 'reserved', -freed)
  end
  return freed
end

