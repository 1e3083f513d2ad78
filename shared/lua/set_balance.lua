-- KEYS[1] wallet hash; ARGV[1] the ledger's balance. Reservations and pending amounts are kept.
redis.call('HSET', KEYS[1], 'balance', ARGV[1])
return 1
