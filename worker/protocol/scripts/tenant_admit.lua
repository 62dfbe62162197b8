-- tenant_admit.lua: admit a new session under its tenant's concurrency quota, or refuse it.
--
-- KEYS[1]  P:tenant:{t:<tenant>}  sorted set: live session id -> last time an owner vouched (ms)
-- ARGV[1]  session id
-- ARGV[2]  now, in milliseconds
-- ARGV[3]  members vouched for before this (ms) are stale: their owner died, or they wait
-- ARGV[4]  the tenant's limit of live sessions
-- ARGV[5]  the key's lifetime after this write, in milliseconds (3 TTLs)
--
-- A session already counted (a worker retaking it) is admitted whatever the count.
-- Returns {1, live} when admitted, {0, live} when the tenant is at its limit; live counts the
-- tenant's sessions before this one.
local kind = redis.call('TYPE', KEYS[1]).ok
if kind ~= 'zset' and kind ~= 'none' then
  return redis.error_reply('WRONGTYPE the tenant key ' .. KEYS[1] .. ' is a ' .. kind)
end
-- every check before the first write: the count ignores stale members instead of deleting first
local live = redis.call('ZCOUNT', KEYS[1], ARGV[3], '+inf')
local known = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not known and live >= tonumber(ARGV[4]) then
  return {0, live}
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[3])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return {1, live}
