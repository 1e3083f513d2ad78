-- Step 3 of the spend-guard protocol (shared/wallet.py) for a batch of debited usage events, in one call; each
-- wallet's balance is written only if the version is newer than the one Redis holds.
-- For event i (0-based), KEYS[3i+1] wallet hash, KEYS[3i+2] quota hash, KEYS[3i+3] the event's applied marker
-- (the key SpendGuard.apply_debit uses too, so either may run first and the other is a no-op);
-- ARGV[4i+1] actual cost, ARGV[4i+2] spendable balance, ARGV[4i+3] its version (-1: leave the balance),
-- ARGV[4i+4] the key's used (-1: no key).
-- Returns how many events released their pending amount now (the rest had been applied before).
local applied = 0
for i = 0, (#KEYS / 3) - 1 do
  local wallet, quota, marker = KEYS[3 * i + 1], KEYS[3 * i + 2], KEYS[3 * i + 3]
  local actual = tonumber(ARGV[4 * i + 1])
  local used = tonumber(ARGV[4 * i + 4])
  if redis.call('SET', marker, '1', 'NX', 'EX', 86400) then
    applied = applied + 1
    local p = tonumber(redis.call('HGET', wallet, 'pending') or 0) - actual
    if p < 0 then p = 0 end
    redis.call('HSET', wallet, 'pending', p)
    if used >= 0 then
      local qp = tonumber(redis.call('HGET', quota, 'pending') or 0) - actual
      if qp < 0 then qp = 0 end
      redis.call('HSET', quota, 'pending', qp)
    end
  end
  if used >= 0 then
    -- `used` only grows; an older batch finishing late must not lower it.
    if used > tonumber(redis.call('HGET', quota, 'used') or 0) then redis.call('HSET', quota, 'used', used) end
  end
  local version = tonumber(ARGV[4 * i + 3])
  if version > tonumber(redis.call('HGET', wallet, 'ver') or -1) then
    redis.call('HSET', wallet, 'balance', ARGV[4 * i + 2], 'ver', version)
  end
end
return applied
