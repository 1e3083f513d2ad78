-- KEYS[i] quota hash of key i; ARGV[i] what billing has charged against it. `used` only grows.
for i = 1, #KEYS do
  if tonumber(ARGV[i]) > tonumber(redis.call('HGET', KEYS[i], 'used') or 0) then
    redis.call('HSET', KEYS[i], 'used', ARGV[i])
  end
end
return #KEYS
