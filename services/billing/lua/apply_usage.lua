-- Step 3 of the spend-guard protocol (shared/wallet.py), with the wallet balance written only if newer.
-- KEYS[1] wallet hash, KEYS[2] quota hash, KEYS[3] applied marker for the usage event (same key as
-- SpendGuard.apply_debit uses, so either may run first and the other is a no-op).
-- ARGV[1] actual cost, ARGV[2] spendable balance, ARGV[3] its version, ARGV[4] the key's used (-1: leave it)
-- Returns 1 if pending was released now, 0 if this event had been applied before.
local applied = 0
if redis.call('SET', KEYS[3], '1', 'NX', 'EX', 86400) then
  applied = 1
  local actual = tonumber(ARGV[1])
  local p = tonumber(redis.call('HGET', KEYS[1], 'pending') or 0) - actual
  if p < 0 then p = 0 end
  redis.call('HSET', KEYS[1], 'pending', p)
  if tonumber(ARGV[4]) >= 0 then
    local qp = tonumber(redis.call('HGET', KEYS[2], 'pending') or 0) - actual
    if qp < 0 then qp = 0 end
    redis.call('HSET', KEYS[2], 'pending', qp)
  end
end
if tonumber(ARGV[4]) >= 0 then
  -- `used` only grows; an older batch finishing late must not lower it.
  local used = tonumber(redis.call('HGET', KEYS[2], 'used') or 0)
  if tonumber(ARGV[4]) > used then redis.call('HSET', KEYS[2], 'used', ARGV[4]) end
end
local ver = tonumber(redis.call('HGET', KEYS[1], 'ver') or -1)
if tonumber(ARGV[3]) > ver then
  redis.call('HSET', KEYS[1], 'balance', ARGV[2], 'ver', ARGV[3])
end
return applied
