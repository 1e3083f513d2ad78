-- Circuit breaker, one channel, shared by every gateway pod.
-- KEYS[1] state hash {state, since_ms, open_until_ms, cooldown_ms, reason, probe_deadline_ms};
-- KEYS[2] the current window bucket (hash ok/err); KEYS[3..] the other buckets of the sliding window.
-- ARGV[1] now ms, ARGV[2] successes to add, ARGV[3] failures to add, ARGV[4] bucket TTL ms,
-- ARGV[5] min attempts in window, ARGV[6] error ratio threshold in ppm, ARGV[7] base cooldown ms,
-- ARGV[8] max cooldown ms, ARGV[9] description of the latest failure
-- Returns {new_state or '', reason}
local now = tonumber(ARGV[1])
local oks = tonumber(ARGV[2])
local errs = tonumber(ARGV[3])
if oks > 0 then redis.call('HINCRBY', KEYS[2], 'ok', oks) end
if errs > 0 then redis.call('HINCRBY', KEYS[2], 'err', errs) end
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[4]))

local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
local base = tonumber(ARGV[7])
if state == 'half_open' then
  if errs == 0 and oks > 0 then
    redis.call('HSET', KEYS[1], 'state', 'closed', 'since_ms', now, 'reason', 'probe succeeded',
               'cooldown_ms', base, 'open_until_ms', 0)
    for i = 2, #KEYS do redis.call('DEL', KEYS[i]) end
    return {'closed', 'probe succeeded'}
  end
  if errs > 0 then
    local cooldown = math.min(tonumber(redis.call('HGET', KEYS[1], 'cooldown_ms') or base) * 2, tonumber(ARGV[8]))
    local reason = 'probe failed: ' .. ARGV[9]
    redis.call('HSET', KEYS[1], 'state', 'open', 'since_ms', now, 'open_until_ms', now + cooldown,
               'cooldown_ms', cooldown, 'reason', reason)
    return {'open', reason}
  end
  return {'', ''}
end
if state == 'open' or errs == 0 then
  return {'', ''}
end
local total_ok, total_err = 0, 0
for i = 2, #KEYS do
  local v = redis.call('HMGET', KEYS[i], 'ok', 'err')
  total_ok = total_ok + tonumber(v[1] or 0)
  total_err = total_err + tonumber(v[2] or 0)
end
local total = total_ok + total_err
if total >= tonumber(ARGV[5]) and total_err * 1000000 >= tonumber(ARGV[6]) * total then
  local reason = total_err .. ' of ' .. total .. ' attempts failed in the window; last: ' .. ARGV[9]
  redis.call('HSET', KEYS[1], 'state', 'open', 'since_ms', now, 'open_until_ms', now + base,
             'cooldown_ms', base, 'reason', reason)
  return {'open', reason}
end
return {'', ''}
