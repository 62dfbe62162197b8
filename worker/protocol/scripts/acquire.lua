-- acquire.lua: become a session's owner; the returned epoch is the fencing token.
--
-- KEYS[1]  P:{sid}:state
-- ARGV[1]  worker id
-- ARGV[2]  id of the announcement entry whose pending-list lease this worker now holds
-- ARGV[3]  now, in milliseconds
--
-- Returns one of
--   {"ok", epoch, open, checkpoint, out_seq, previous_owner}
--   {"missing"}    no such session (expired, or never opened)
--   {"ended"}      the session already ended; only its forwarding may be left to finish
--   {"duplicate"}  another announcement entry holds this session's lease
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'missing'}
end
local fields = redis.call('HMGET', KEYS[1], 'status', 'lease_entry', 'open', 'checkpoint', 'out_seq', 'owner')
if fields[1] == 'ended' then
  return {'ended'}
end
if fields[2] and fields[2] ~= ARGV[2] then
  return {'duplicate'}
end
local epoch = redis.call('HINCRBY', KEYS[1], 'epoch', 1)
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'lease_entry', ARGV[2], 'acquired_ms', ARGV[3])
return {'ok', epoch, fields[3], fields[4] or '', fields[5] or '0', fields[6] or ''}
