-- KEYS[1] wallet hash, KEYS[2] quota hash, KEYS[3] reservation marker; ARGV[1] actual cost
-- Releases the reservation and moves the actual cost to `pending`. A second settle finds no marker: no-op.
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
return 1
