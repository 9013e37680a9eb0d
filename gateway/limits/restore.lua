-- Restore: the usage lake's part of one budget period's counters (gateway/limits/restore.py).
-- spent = lake (the lake's spend of requests that ended before `since`) + what was settled since.
--
-- KEYS[1]  counters hash
-- ARGV[1]: one "|"-separated string: mode, now (epoch ms), ttl_ms (0 = never expires), cut (epoch ms),
--          lake micros
--   probe: the cut (`since`) of counters that lack the lake's part, starting them now if they do
--          not exist; -1 when they have it
--   reset: restart at now: what was counted so far becomes `base`, which the next add drops; returns now
--   add:   if the counters' cut is still `cut`, raise their lake part to `lake micros` and add the
--          difference to spent (minus `base`, the first time); returns what was added
-- Returns one integer, as a string.
local arg = {}
for v in string.gmatch(ARGV[1], '[^|]+') do arg[#arg + 1] = v end
local h, mode, now, ttl = KEYS[1], arg[1], arg[2], tonumber(arg[3])
local out
if mode == 'probe' then
  local v = redis.call('HMGET', h, 'lake', 'since', 'spent')
  if v[1] then
    return '-1'
  elseif v[2] then
    out = v[2]
  elseif v[3] then
    -- Counted by a gateway from before lake parts existed, which counted all spend live.
    redis.call('HSET', h, 'lake', 0, 'since', now)
    out = '-1'
  else
    redis.call('HSET', h, 'since', now)
    out = now
  end
elseif mode == 'reset' then
  redis.call('HSET', h, 'base', redis.call('HGET', h, 'spent') or '0', 'since', now)
  redis.call('HDEL', h, 'lake')
  out = now
elseif mode == 'add' then
  local v = redis.call('HMGET', h, 'since', 'lake', 'base')
  if tonumber(v[1]) ~= tonumber(arg[4]) then
    return '0'  -- reset (or lost and started again) after the caller read the cut
  end
  local lake, added = tonumber(arg[5]), 0
  if not v[2] then
    added = lake - (tonumber(v[3]) or 0)
    redis.call('HDEL', h, 'base')
  elseif lake > tonumber(v[2]) then
    added = lake - tonumber(v[2])
  else
    return '0'
  end
  redis.call('HSET', h, 'lake', arg[5])
  if added ~= 0 then
    redis.call('HINCRBY', h, 'spent', string.format('%d', added))
  end
  out = string.format('%d', added)
else
  return redis.error_reply('restore.lua: unknown mode ' .. tostring(mode))
end
if ttl > 0 then
  redis.call('PEXPIRE', h, ttl)
end
return out
