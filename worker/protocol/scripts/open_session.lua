-- open_session.lua: create a session's state hash, once.
--
-- KEYS[1]  P:{sid}:state   hash of the session
-- ARGV[1]  the SessionOpen message (msgpack)
-- ARGV[2]  now, in milliseconds (producer's clock)
--
-- Returns {status, announced}: status is "created", "exists", or "ended" (the id belongs to a
-- session that already ended and is kept for its retention: a new call needs a new id);
-- announced is "1" once the producer has added the session to its announcement stream (so a
-- retried open announces at most once more, never after a confirmed announcement).
if redis.call('EXISTS', KEYS[1]) == 1 then
  local fields = redis.call('HMGET', KEYS[1], 'status', 'announced')
  if fields[1] == 'ended' then
    return {'ended', fields[2] or '0'}
  end
  return {'exists', fields[2] or '0'}
end
redis.call('HSET', KEYS[1],
  'open', ARGV[1], 'status', 'open', 'created_ms', ARGV[2],
  'epoch', 0, 'out_seq', 0, 'announced', '0')
return {'created', '0'}
