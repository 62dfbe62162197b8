-- acquire.lua: become a session's owner; the returned epoch is the fencing token.
--
-- KEYS[1]  P:{sid}:state   the workers' hash of the session (created here, at the first acquire)
-- KEYS[2]  P:{sid}:open    the producer's hash: open message, created_ms
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
--   {"ok", epoch, open, checkpoint, out_seq, previous_owner, attempts, created_ms}
--   {"missing"}    no such session (expired, or never opened)
--   {"ended"}      the session already ended; only its forwarding may be left to finish
--   {"duplicate"}  another announcement entry holds this session's lease
local opened = redis.call('HMGET', KEYS[2], 'open', 'created_ms')
local fields = redis.call('HMGET', KEYS[1], 'status', 'lease_entry', 'checkpoint', 'out_seq', 'owner',
  'attempts', 'created_ms')
if fields[1] == 'ended' then
  return {'ended'}
end
if not opened[1] then
  return {'missing'}
end
if fields[2] and fields[2] ~= ARGV[2] then
  return {'duplicate'}
end
if not fields[1] then
  -- the first owner: the workers' state starts here, its incarnation the producer's created_ms
  fields[7] = opened[2] or ARGV[3]
  redis.call('HSET', KEYS[1], 'status', 'open', 'out_seq', 0, 'created_ms', fields[7])
end
-- a field that is not a number (never written so by a worker) counts as no attempt yet
local attempts = math.floor(tonumber(fields[6] or '0') or 0) + 1
local epoch = redis.call('HINCRBY', KEYS[1], 'epoch', 1)
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'lease_entry', ARGV[2], 'acquired_ms', ARGV[3],
  'attempts', attempts)
return {'ok', epoch, opened[1], fields[3] or '', fields[4] or '0', fields[5] or '', attempts, fields[7]}
