-- Step 4 of the spend-guard protocol: publish the ledger's spendable balance unless Redis holds a newer one.
-- KEYS[1] wallet hash; ARGV[1] spendable balance, ARGV[2] its version. Reservations and pending are kept.
local ver = tonumber(redis.call('HGET', KEYS[1], 'ver') or -1)
if tonumber(ARGV[2]) > ver then
  redis.call('HSET', KEYS[1], 'balance', ARGV[1], 'ver', ARGV[2])
  return 1
end
return 0
