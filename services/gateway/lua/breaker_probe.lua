-- Claim the one half-open probe of a channel whose cool-down has passed (or whose last probe never reported).
-- KEYS[1] state hash; ARGV[1] now ms, ARGV[2] how long a probe may take before another pod may probe, ms
-- Returns 0 (no), 1 (yes: retake a lost probe) or 2 (yes, and the channel just went open -> half_open).
local now = tonumber(ARGV[1])
local v = redis.call('HMGET', KEYS[1], 'state', 'open_until_ms', 'probe_deadline_ms')
local state = v[1] or 'closed'
if state == 'open' and now >= tonumber(v[2] or 0) then
  redis.call('HSET', KEYS[1], 'state', 'half_open', 'since_ms', now, 'probe_deadline_ms', now + tonumber(ARGV[2]))
  return 2
end
if state == 'half_open' and now >= tonumber(v[3] or 0) then
  redis.call('HSET', KEYS[1], 'probe_deadline_ms', now + tonumber(ARGV[2]))
  return 1
end
return 0
