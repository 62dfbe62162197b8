-- acquire.lua: become a session's owner; the returned epoch is the fencing token.
--
-- KEYS[1]  P:{sid}:state
-- ARGV[1]  worker id
-- ARGV[2]  id of the announcement entry whose pending-list lease this worker now holds
-- ARGV[3]  now, in milliseconds
--
-- Counts the attempt in 'attempts' before the caller restores or processes anything, so an
-- attempt that kills its worker (SIGKILL, a crash in the backend) is counted too. A commit that
-- consumes input, or a clean handover, clears it; the caller quarantines a session that has
-- had too many attempts in a row.
--
-- Returns one of
--   {"ok", epoch, open, checkpoint, out_seq, previous_owner, attempts}
--   {"missing"}    no such session (expired, or never opened)
--   {"ended"}      the session already ended; only its forwarding may be left to finish
--   {"duplicate"}  another announcement entry holds this session's lease
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'missing'}
end
local fields = redis.call('HMGET', KEYS[1], 'status', 'lease_entry', 'open', 'checkpoint', 'out_seq', 'owner',
  'attempts')
if fields[1] == 'ended' then
  return {'ended'}
end
if fields[2] and fields[2] ~= ARGV[2] then
  return {'duplicate'}
end
-- a field that is not a number (never written so by a worker) counts as no attempt yet
local attempts = math.floor(tonumber(fields[7] or '0') or 0) + 1
local epoch = redis.call('HINCRBY', KEYS[1], 'epoch', 1)
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'lease_entry', ARGV[2], 'acquired_ms', ARGV[3],
  'attempts', attempts)
return {'ok', epoch, fields[3], fields[4] or '', fields[5] or '0', fields[6] or '', attempts}
