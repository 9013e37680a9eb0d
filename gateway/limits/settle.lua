-- Settle: replace a reservation by the actual spend and correct the TPM debit, once.
-- The marker makes it idempotent: only the call that deletes it does anything. Mirrors local.py.
--
-- KEYS[1]                  open-reservation marker
-- KEYS[2 .. 1+nt]          "backlog:seen" per tokens-per-minute limit (see reserve.lua)
-- KEYS[2+nt ..]            per budget: counters hash, lease zset
-- ARGV[1]: one "|"-separated string (fewer arguments = less client CPU):
--       now, rid, reserved micros, actual micros, token delta (actual - reserved),
--       then what only changes with the policy or the period:
--       epoch_base_ms, nt, nb, nt x limit, nb x expire_at epoch ms (0 = never expires)
--       The lease member is "rid:reserved".
-- Returns 1 when settled, 0 when there was nothing (left) to settle.
local arg = {}
for v in string.gmatch(ARGV[1], '[^|]+') do arg[#arg + 1] = v end
if redis.call('DEL', KEYS[1]) == 0 then
  return 0
end
local WINDOW = 60000
local now = tonumber(arg[1])
local member = arg[2] .. ':' .. arg[3]
local reserved = tonumber(arg[3])
local actual = tonumber(arg[4])
local delta = tonumber(arg[5])
local now_epoch = math.floor(now) + tonumber(arg[6])
local nt = tonumber(arg[7])
local nb = tonumber(arg[8])

if delta ~= 0 then
  for i = 1, nt do
    local key = KEYS[1 + i]
    local tau = WINDOW / tonumber(arg[8 + i])
    local level, n = 0, now
    local raw = redis.call('GET', key)
    if raw then
      local l, seen = string.match(raw, '^([^:]+):(.+)$')
      l, seen = tonumber(l), tonumber(seen)
      if seen > n then n = seen end
      level = l - (n - seen)
      if level < 0 then level = 0 end
    end
    level = level + delta * tau
    if level > 0 then
      redis.call('SET', key, string.format('%.17g:%.17g', level, n), 'PX', math.ceil(level))
    else
      redis.call('DEL', key)
    end
  end
end

for i = 1, nb do
  local h, z = KEYS[1 + nt + 2 * i - 1], KEYS[1 + nt + 2 * i]
  -- The lease is gone if it expired first; the spend is recorded all the same.
  if reserved > 0 and redis.call('ZREM', z, member) == 1 then
    redis.call('HINCRBY', h, 'reserved', -reserved)
  end
  if actual > 0 then
    redis.call('HINCRBY', h, 'spent', actual)
  end
  local expire_at = tonumber(arg[8 + nt + i])
  if expire_at > 0 then
    local ttl = expire_at - now_epoch
    if ttl < 1 then ttl = 1 end
    redis.call('PEXPIRE', h, ttl)
    redis.call('PEXPIRE', z, ttl)
  end
end
return 1
