-- Settle: replace a reservation by the actual spend and correct the TPM debit, once.
-- The marker makes it idempotent: only the call that deletes it does anything. Mirrors local.py.
--
-- KEYS[1]                  open-reservation marker
-- KEYS[2 .. 1+nt]          "backlog:seen" per tokens-per-minute limit (see reserve.lua)
-- KEYS[2+nt ..]            per budget: counters hash, lease zset
-- ARGV[1]: one "|"-separated string (fewer arguments = less client CPU): now, lease member, reserved micros, actual micros, token delta (actual - reserved),
--       nt, nb, nt x limit, nb x ttl_ms (0 = never expires)
-- Returns 1 when settled, 0 when there was nothing (left) to settle.
local arg = {}
for v in string.gmatch(ARGV[1], '[^|]+') do arg[#arg + 1] = v end
if redis.call('DEL', KEYS[1]) == 0 then
  return 0
end
local WINDOW = 60000
local now = tonumber(arg[1])
local member = arg[2]
local reserved = tonumber(arg[3])
local actual = tonumber(arg[4])
local delta = tonumber(arg[5])
local nt = tonumber(arg[6])
local nb = tonumber(arg[7])

if delta ~= 0 then
  for i = 1, nt do
    local key = KEYS[1 + i]
    local tau = WINDOW / tonumber(arg[7 + i])
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
  local ttl = tonumber(arg[7 + nt + i])
  if ttl > 0 then
    redis.call('PEXPIRE', h, ttl)
    redis.call('PEXPIRE', z, ttl)
  end
end
return 1
