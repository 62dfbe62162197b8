-- reannounce.lua: claim the right to announce an orphaned session again (its caller then XADDs it).
--
-- KEYS[1]  P:{sid}:state   the workers' hash (absent while no worker ever took the session)
-- KEYS[2]  P:{sid}:open    the producer's hash: 'announced' says the producer announced it
-- ARGV[1]  the lease entry the caller saw ('' when the session had none): gone from the
--          announcement stream, so no worker can ever hold or take it
-- ARGV[2]  now, in milliseconds
-- ARGV[3]  the session's reannounced_ms the caller saw ('' when none): the claim's marker
--
-- An orphan is an open, announced session that no announcement entry names: Redis lost the entry
-- (an AOF-everysec restart, a failover) before or while a worker held it. Clearing the lost lease
-- lets the new announcement be acquired (acquire.lua refuses an entry other than lease_entry).
-- Checks before the write: the session is still open and announced, and its lease and its
-- reannounced_ms are still what the caller saw, so of two workers that found the same orphan only
-- one announces it (the first sets reannounced_ms, kept in the state hash).
--
-- Returns 1 when the caller should announce the session, 0 when not.
local opened = redis.call('HMGET', KEYS[2], 'announced', 'ended')
local fields = redis.call('HMGET', KEYS[1], 'status', 'lease_entry', 'reannounced_ms')
if opened[1] ~= '1' or opened[2] == '1' or fields[1] == 'ended' then
  return 0
end
if (fields[2] or '') ~= ARGV[1] or (fields[3] or '') ~= ARGV[3] then
  return 0
end
if fields[2] then
  redis.call('HDEL', KEYS[1], 'lease_entry')
end
redis.call('HSET', KEYS[1], 'reannounced_ms', ARGV[2])
return 1
