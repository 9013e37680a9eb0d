-- Budget status and rebuild for one budget period: purge expired leases, optionally set the
-- spend (rebuild from the usage lake), return the counters.
--
-- KEYS[1] counters hash, KEYS[2] lease zset
-- ARGV[1]: one "|"-separated string (fewer arguments = less client CPU): now, mode ("get" | "set"),
--       spent (for "set"), ttl_ms (0 = never expires), now in epoch ms
-- "set" makes `spent` the lake's part, counted up to now (see restore.lua).
-- Returns {spent, reserved}.
local arg = {}
for v in string.gmatch(ARGV[1], '[^|]+') do arg[#arg + 1] = v end
local now = tonumber(arg[1])
local h, z = KEYS[1], KEYS[2]
local expired = redis.call('ZRANGEBYSCORE', z, '-inf', now, 'LIMIT', 0, 256)
if #expired > 0 then
  local freed = 0
  for _, m in ipairs(expired) do freed = freed + tonumber(string.match(m, ':(%d+)$')) end
  redis.call('ZREM', z, unpack(expired))
  redis.call('HINCRBY', h, 'reserved', -freed)
end
if arg[2] == 'set' then
  redis.call('HSET', h, 'spent', arg[3], 'lake', arg[3], 'since', arg[5])
  redis.call('HDEL', h, 'base')
  local ttl = tonumber(arg[4])
  if ttl > 0 then
    redis.call('PEXPIRE', h, ttl)
    redis.call('PEXPIRE', z, ttl)
  end
end
local v = redis.call('HMGET', h, 'spent', 'reserved')
return {tonumber(v[1]) or 0, tonumber(v[2]) or 0}
