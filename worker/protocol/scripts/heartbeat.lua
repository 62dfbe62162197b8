-- heartbeat.lua: renew this worker's leases, which are its entries in the group's pending list.
--
-- KEYS[1]  P:sessions:{g<k>}  announcement stream of shard k
-- ARGV[1]  consumer group
-- ARGV[2]  this worker's consumer name
-- ARGV[3..] announcement entry ids this worker believes it holds
--
-- An entry still pending for this worker gets its idle time reset (XCLAIM JUSTID, min-idle 0,
-- which does not count a delivery). An entry that is no longer this worker's was taken over:
-- it is returned, and the worker drops that session. A blind XCLAIM would steal it back.
local lost = {}
for i = 3, #ARGV do
  local id = ARGV[i]
  local pending = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1, ARGV[2])
  if #pending == 0 then
    table.insert(lost, id)
  else
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, id, 'JUSTID')
  end
end
return lost
