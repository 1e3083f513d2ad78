-- Prepended to admit.lua and lease.lua: gives back what a wallet holds for owners that can no longer give it back
-- themselves. The wallet's holds hash (`{ns}:leases:{account}`) lists, as "amount:expires_ms[:quota hash]":
--   a worker's lease (field "<worker>:<key id>", lease.lua), renewed while the worker lives;
--   a request's reservation (field "res:<request id>", admit.lua), removed when finish.lua settles it. It expires
--   a minute after the reservation's own marker, so a late finish finds no marker and gives nothing back twice.
-- An entry past its expiry was left by a worker that was killed: its amount leaves the wallet's `reserved` (and
-- the key quota's, for a capped key's reservation). Returns what was given back to the wallet.
local function sweep_leases(wallet, leases, now)
  local all = redis.call('HGETALL', leases)
  local freed = 0
  for i = 1, #all, 2 do
    local amount, expires, quota = string.match(all[i + 1], '^(%d+):(%d+):?(.*)$')
    if tonumber(expires) <= now then
      freed = freed + tonumber(amount)
      if quota ~= '' then
        redis.call('HINCRBY', quota, 'reserved', -tonumber(amount))
      end
      redis.call('HDEL', leases, all[i])
    end
  end
  if freed > 0 then
    redis.call('HINCRBY', wallet, 'reserved', -freed)
  end
  return freed
end

