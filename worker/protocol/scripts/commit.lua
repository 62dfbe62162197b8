-- commit.lua: one processing iteration of one session, atomically.
--
-- KEYS[1]  P:{sid}:state   hash: epoch, checkpoint, out_seq, status, attempts, fwd
-- KEYS[2]  P:{sid}:in      input stream, trimmed up to what the processor still needs
-- KEYS[3]  P:{sid}:out     output events
-- KEYS[4]  P:{sid}:dlq     dead letters of this session
-- KEYS[5]  P:{sid}:open    the producer's open key: marked 'ended' when the session ends
-- ARGV[1]  the caller's epoch (fencing token)
-- ARGV[2]  out_seq the caller expects (next record number before this commit)
-- ARGV[3]  checkpoint (msgpack: processor snapshots, input position, trim point), or "" to keep
--          the last one (a session whose processing failed: its state is not trusted)
-- ARGV[4]  trim: XTRIM MINID for the input stream, or "" to keep it
-- ARGV[5]  "1" if this commit ends the session
-- ARGV[6]  retention in milliseconds, applied to every session key when it ends
-- ARGV[7]  "1" if this commit consumed input after the owner's restore: clears 'attempts'
-- ARGV[8]  the last record seq copied to the shard streams ('fwd', the floor of forward.lua's
--          cursor), or "" if the caller does not know it
-- ARGV[9]  n, the number of records; then n triples: kind ("e" event, "d" dead letter), type, payload
--
-- Returns {"ok", next_out_seq}, {"fenced", epoch}, {"seq_mismatch", out_seq}, or
-- {"wrongtype", key} when a key it would write holds another type (nothing is written).
-- Every check comes before the first write: Redis has no rollback, and a script that fails
-- half-way keeps what it wrote (an appended record, written again by the retried commit).
local state = redis.call('HMGET', KEYS[1], 'epoch', 'out_seq')
if state[1] ~= ARGV[1] then
  return {'fenced', state[1] or ''}
end
if state[2] ~= ARGV[2] then
  return {'seq_mismatch', state[2] or ''}
end
local n = tonumber(ARGV[9])
local writes = {[2] = ARGV[4] ~= '', [3] = false, [4] = false}
for i = 0, n - 1 do
  if ARGV[10 + 3 * i] == 'e' then writes[3] = true else writes[4] = true end
end
for k = 2, 4 do
  if writes[k] then
    local kind = redis.call('TYPE', KEYS[k])['ok']
    if kind ~= 'stream' and kind ~= 'none' then
      return {'wrongtype', KEYS[k]}
    end
  end
end
if ARGV[5] == '1' then
  local kind = redis.call('TYPE', KEYS[5])['ok']
  if kind ~= 'hash' and kind ~= 'none' then
    return {'wrongtype', KEYS[5]}
  end
end
local seq = tonumber(ARGV[2])
for i = 0, n - 1 do
  local kind, rtype, payload = ARGV[10 + 3 * i], ARGV[11 + 3 * i], ARGV[12 + 3 * i]
  seq = seq + 1
  if kind == 'e' then
    redis.call('XADD', KEYS[3], '*', 'seq', seq, 'type', rtype, 'm', payload)
  else
    redis.call('XADD', KEYS[4], '*', 'seq', seq, 'type', rtype, 'm', payload)
  end
end
redis.call('HSET', KEYS[1], 'out_seq', seq)
if ARGV[3] ~= '' then
  redis.call('HSET', KEYS[1], 'checkpoint', ARGV[3])
end
if ARGV[7] == '1' then
  redis.call('HDEL', KEYS[1], 'attempts')
end
if ARGV[8] ~= '' then
  redis.call('HSET', KEYS[1], 'fwd', ARGV[8])
end
if ARGV[4] ~= '' then
  redis.call('XTRIM', KEYS[2], 'MINID', ARGV[4])
end
if ARGV[5] == '1' then
  redis.call('HSET', KEYS[1], 'status', 'ended')
  if redis.call('EXISTS', KEYS[5]) == 1 then
    redis.call('HSET', KEYS[5], 'ended', '1')
  end
  local ttl = tonumber(ARGV[6])
  for k = 1, 5 do
    redis.call('PEXPIRE', KEYS[k], ttl)
  end
end
return {'ok', seq}
