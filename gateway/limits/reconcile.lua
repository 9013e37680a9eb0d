-- Reconcile: add spend that the local fallback settled while Redis was unreachable to ONE org's
-- budget counters (all keys share its hash tag), exactly once: the batch marker is claimed with
-- SET NX in this same script, so a batch sent again after a lost reply changes nothing.
--
-- KEYS[1]            batch marker
-- KEYS[2 .. 1+nb]    counters hash per budget
-- ARGV[1]: one "|"-separated string: now (epoch ms), marker_ttl_ms, nb, nb x expire_at (epoch ms,
--          0 = never expires), nk, nk x "first:last:micros" (settles bucketed by time: the first
--          and last settle time in epoch ms, and their spend)
-- A bucket counts where the counters' live counting had started by its last settle (since <= last):
-- spend of requests that ended before `since` is the lake's part (restore.lua) and not added here.
-- Counters that do not exist start now (so nothing of the batch counts: the lake has it).
-- Returns "applied,unrestored": applied 1, or 0 when the batch was applied before; bit i-1 of
-- unrestored flags budget i's counters as lacking the lake's part.
local arg = {}
for v in string.gmatch(ARGV[1], '[^|]+') do arg[#arg + 1] = v end
local now, nb = tonumber(arg[1]), tonumber(arg[3])
if not redis.call('SET', KEYS[1], '1', 'NX', 'PX', arg[2]) then
  return '0,0'
end
local buckets = {}
for k = 1, tonumber(arg[4 + nb]) do
  local _, last, micros = string.match(arg[4 + nb + k], '^(%d+):(%d+):(%d+)$')
  buckets[k] = {tonumber(last), tonumber(micros)}
end
local unrestored = 0
for i = 1, nb do
  local h = KEYS[1 + i]
  local v = redis.call('HMGET', h, 'since', 'lake', 'spent')
  local since = tonumber(v[1])
  if not since then
    if v[3] then
      -- Counted by a gateway from before lake parts existed, which counted all spend live.
      since = 0
      redis.call('HSET', h, 'lake', 0, 'since', arg[1])
      v[2] = '0'
    else
      since = now
      redis.call('HSET', h, 'since', arg[1])
    end
  end
  local add = 0
  for _, b in ipairs(buckets) do
    if since <= b[1] then add = add + b[2] end
  end
  if add > 0 then
    redis.call('HINCRBY', h, 'spent', string.format('%d', add))
  end
  if not v[2] then
    unrestored = unrestored + 2 ^ (i - 1)
  end
  local expire_at = tonumber(arg[3 + i])
  if expire_at > 0 then
    redis.call('PEXPIRE', h, math.max(1, expire_at - now))
  end
end
return string.format('1,%d', unrestored)
