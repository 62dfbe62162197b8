-- release.lua: hand leases over at shutdown, so the next janitor pass anywhere takes them at once.
--
-- KEYS[1]  P:sessions:{g<k>}  announcement stream of shard k
-- ARGV[1]  consumer group
-- ARGV[2]  this worker's consumer name
-- ARGV[3]  the handover consumer
-- ARGV[4]  idle time to set, in milliseconds (past the TTL)
-- ARGV[5..] announcement entry ids this worker believes it holds
--
-- Only entries still pending for this worker move: a blind XCLAIM would take an entry from a
-- worker that legitimately took it over meanwhile, and force a needless second takeover.
-- Returns the number of entries handed over.
local moved = 0
for i = 5, #ARGV do
  local id = ARGV[i]
  local pending = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1, ARGV[2])
  if #pending > 0 then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, id, 'IDLE', ARGV[4], 'JUSTID')
    moved = moved + 1
  end
end
return moved
