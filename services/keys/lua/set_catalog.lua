-- Write the catalog snapshot unless Redis already holds a newer version (two edits may finish out of order).
-- KEYS[1] = {ns}:catalog   ARGV[1] = version   ARGV[2] = snapshot JSON   ARGV[3] = "1" to write regardless
local current = redis.call('GET', KEYS[1])
if current and ARGV[3] ~= '1' then
  local ok, decoded = pcall(cjson.decode, current)
  if ok and type(decoded) == 'table' and tonumber(decoded['version'] or 0) > tonumber(ARGV[1]) then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[2])
return 1
