-- Reserve: count one request against the rate limits and reserve its maximum cost in every
-- budget of ONE org (every key shares the org's hash tag), all or nothing. Mirrors local.py.
-- Times are ms on the gcra.py scale, passed in (never TIME) so callers can inject a clock.
--
-- KEYS[1]                  open-reservation marker (settle idempotency)
-- KEYS[2 .. 1+nr]          per rate limit "backlog:seen" (ms); the RPM ones first, then TPM
-- KEYS[2+nr ..]            per budget: counters hash {spent, reserved}, lease zset
-- ARGV[1]: one "|"-separated string (fewer arguments = less client CPU):
--       now, rid, cost, tokens,   then what only changes with the policy or the period:
--       epoch_base_ms, lease_ms, marker_ttl_ms (0 = no marker), nr, nrpm, nb,
--       nr x limit, nb x (limit, expire_at epoch ms (0 = never expires))
--       An RPM limit takes 1, a TPM limit `tokens`; the lease member is "rid:cost".
-- Returns (as one comma-separated string: cheaper for the client to read than an array)
--         {0, unrestored, -1, nr x (remaining, reset_ms), nb x (spent, reserved)} when accepted, where
--             bit i-1 of unrestored flags budget i's counters as lacking the usage lake's part
--             (a new period or budget, or Redis lost its data): the client has it added (restore.lua),
--         {1, wait_ms, failed, nr x (remaining, reset_ms)} when a rate limit refuses (wait 1e15 = never),
--         {2, 0, failed, spent, reserved} when a budget refuses.
local arg = {}
for v in string.gmatch(ARGV[1], '[^|]+') do arg[#arg + 1] = v end
local WINDOW, EPS, NEVER, PURGE_MAX = 60000, 0.001, 1e15, 256
local now = tonumber(arg[1])
local member = arg[2] .. ':' .. arg[3]
local cost = tonumber(arg[3])
local tokens = tonumber(arg[4])
local base = tonumber(arg[5])
local lease_ms = tonumber(arg[6])
local marker_ttl = tonumber(arg[7])
local nr = tonumber(arg[8])
local nrpm = tonumber(arg[9])
local nb = tonumber(arg[10])
local rarg, barg, bkey = 10, 10 + nr, 1 + nr
-- The caller's clock in whole epoch ms (now is exact: epoch ms - base, both well within 2^53).
local now_epoch = math.floor(now) + base

-- Integers as text; tostring() would print large ones in %.14g exponent form.
local function pack(values)
  for i = 1, #values do values[i] = string.format('%d', values[i]) end
  return table.concat(values, ',')
end

local function reading(level, limit)
  local left = math.floor((WINDOW - level + EPS) * limit / WINDOW)
  if left < 0 then left = 0 elseif left > limit then left = limit end
  return left, math.ceil(level)
end

-- GCRA state per limit is "backlog:seen" (ms of queued work at time seen), as in gcra.py.
-- A caller timestamp older than seen (it reached Redis late) is judged at seen.
local function backlog(key)
  local raw = redis.call('GET', key)
  if not raw then return 0, now end
  local level, seen = string.match(raw, '^([^:]+):(.+)$')
  level, seen = tonumber(level), tonumber(seen)
  local n = now
  if seen > n then n = seen end
  level = level - (n - seen)
  if level < 0 then level = 0 end
  return level, n
end

-- Budgets first: an exhausted budget is the lasting condition, report it before a rate limit.
local counters = {}
local unrestored = 0
for i = 1, nb do
  local h, z = KEYS[bkey + 2 * i - 1], KEYS[bkey + 2 * i]
  local expired = redis.call('ZRANGEBYSCORE', z, '-inf', now, 'LIMIT', 0, PURGE_MAX)
  if #expired > 0 then
    local freed = 0
    for _, m in ipairs(expired) do freed = freed + tonumber(string.match(m, ':(%d+)$')) end
    redis.call('ZREM', z, unpack(expired))
    redis.call('HINCRBY', h, 'reserved', -freed)
  end
  local v = redis.call('HMGET', h, 'spent', 'reserved', 'lake', 'since')
  if not v[3] then
    -- No lake part yet. Live counting starts at `since`; spend of requests that ended before it
    -- comes from the lake. Only the first reserve of a period (or after a data loss) gets here.
    if v[4] then
      unrestored = unrestored + 2 ^ (i - 1)
    elseif v[1] then
      -- Counted by a gateway from before lake parts existed, which counted all spend live.
      redis.call('HSET', h, 'lake', 0, 'since', now_epoch)
    else
      redis.call('HSET', h, 'since', now_epoch)
      local expire_at = tonumber(arg[barg + 2 * i])
      if expire_at > 0 then redis.call('PEXPIRE', h, math.max(1, expire_at - now_epoch)) end
      unrestored = unrestored + 2 ^ (i - 1)
    end
  end
  local spent, reserved = tonumber(v[1]) or 0, tonumber(v[2]) or 0
  if spent + reserved + cost > tonumber(arg[barg + 2 * i - 1]) then
    return pack({2, 0, i - 1, spent, reserved})
  end
  counters[i] = {spent, reserved}
end

local levels, news, nows = {}, {}, {}
local failed, worst = -1, 0
for i = 1, nr do
  local limit, amount = tonumber(arg[rarg + i]), tokens
  if i <= nrpm then amount = 1 end
  levels[i], nows[i] = backlog(KEYS[1 + i])
  news[i] = levels[i] + amount * (WINDOW / limit)
  local over = news[i] - WINDOW
  if over > EPS then
    if amount > limit then over = NEVER end
    if failed < 0 or over > worst then failed, worst = i - 1, over end
  end
end
if failed >= 0 then
  local out = {1, math.ceil(worst), failed}
  for i = 1, nr do
    local left, reset = reading(levels[i], tonumber(arg[rarg + i]))
    out[#out + 1] = left
    out[#out + 1] = reset
  end
  return pack(out)
end

local out = {0, unrestored, -1}
for i = 1, nr do
  if news[i] > 0 then
    redis.call('SET', KEYS[1 + i], string.format('%.17g:%.17g', news[i], nows[i]), 'PX', math.ceil(news[i]))
  end
  local left, reset = reading(news[i], tonumber(arg[rarg + i]))
  out[#out + 1] = left
  out[#out + 1] = reset
end
for i = 1, nb do
  local h, z = KEYS[bkey + 2 * i - 1], KEYS[bkey + 2 * i]
  if cost > 0 then
    counters[i][2] = redis.call('HINCRBY', h, 'reserved', cost)
    redis.call('ZADD', z, now + lease_ms, member)
  end
  local expire_at = tonumber(arg[barg + 2 * i])
  if expire_at > 0 then
    local ttl = expire_at - now_epoch
    if ttl < 1 then ttl = 1 end
    redis.call('PEXPIRE', h, ttl)
    redis.call('PEXPIRE', z, ttl)
  end
  out[#out + 1] = counters[i][1]
  out[#out + 1] = counters[i][2]
end
if marker_ttl > 0 then
  redis.call('SET', KEYS[1], '1', 'PX', marker_ttl)
end
return pack(out)
