-- open_session.lua: a producer opens a session, or resumes the one it opened.
--
-- KEYS[1]  P:{sid}:open    the producer's hash of the session (the only one producers write)
-- ARGV[1]  the SessionOpen message (msgpack)
-- ARGV[2]  now, in milliseconds (producer's clock)
-- ARGV[3]  SHA-256 (hex) of the resume token the producer holds for this session
--
-- Returns {status, announced}: status is
--   "created"  a new session;
--   "resumed"  the session exists and this producer holds its resume token: a restarted producer,
--              or a retry of an open whose reply was lost;
--   "taken"    a live session that another producer opened (a resume token that does not match):
--              refused, nothing written;
--   "ended"    the id belongs to a session that ended and is kept for its retention: a new call
--              needs a new id.
-- announced is "1" once the producer has added the session to its announcement stream (so a
-- retried or resumed open announces at most once more, never after a confirmed announcement).
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind ~= 'hash' and kind ~= 'none' then
  return redis.error_reply('WRONGTYPE the open key ' .. KEYS[1] .. ' is a ' .. kind)
end
if kind == 'hash' then
  local fields = redis.call('HMGET', KEYS[1], 'ended', 'token', 'announced')
  if fields[1] == '1' then
    return {'ended', fields[3] or '0'}
  end
  if fields[2] ~= ARGV[3] then
    return {'taken', '0'}
  end
  return {'resumed', fields[3] or '0'}
end
redis.call('HSET', KEYS[1], 'open', ARGV[1], 'created_ms', ARGV[2], 'token', ARGV[3], 'announced', '0')
return {'created', '0'}
