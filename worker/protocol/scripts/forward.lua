-- forward.lua: copy a session's committed records to its shard's events / dead-letter streams,
-- exactly once, whoever calls it and however often.
--
-- KEYS[1]  P:events:{g<k>}  all sessions' events of shard k
-- KEYS[2]  P:dlq:{g<k>}     all sessions' dead letters of shard k
-- KEYS[3]  P:fwd:{g<k>}:<sid>  the session's cursor: "<incarnation>:<last record seq copied>"
-- ARGV[1]  session id
-- ARGV[2]  approximate MAXLEN of the shard streams
-- ARGV[3]  cursor expiry in milliseconds (twice the retention: it must outlive the session's keys)
-- ARGV[4]  the session's incarnation (its state's created_ms): a cursor of another incarnation,
--          a session that used the same id before, counts as nothing copied
-- ARGV[5]  floor: the last seq known to be copied, from the session's own state ('fwd'), so a
--          cursor that expired or was deleted never makes the copy start again from seq 1
-- ARGV[6]  n; then n quadruples in seq order: seq, kind ("e" or "d"), type, payload
--
-- The session's commit and this copy live in different slots, so they cannot be one step; the
-- cursor makes the copy idempotent, and a new owner re-runs it for records after the cursor.
-- The commit records the copied seq in the session's state ('fwd'), so either record suffices.
-- Only records that continue the cursor are copied: after a failed copy, the next batch would
-- start past a gap, and moving the cursor over it would lose the missing records for good. The
-- caller compares the returned cursor with its last seq and re-reads what is missing.
-- Every check comes before the first write: a copy that failed after an XADD would leave the
-- cursor behind it, and the retry would copy that record twice.
-- Returns the cursor after the copy, or {"wrongtype", key} when a shard stream holds another type.
local cursor = 0
local stored = redis.call('GET', KEYS[3])
if stored then
  local incarnation, seq = string.match(stored, '^(.*):(%d+)$')
  if incarnation == nil then
    cursor = tonumber(stored) or 0  -- written before cursors named their incarnation
  elseif incarnation == ARGV[4] then
    cursor = tonumber(seq)
  end
end
cursor = math.max(cursor, tonumber(ARGV[5]))
local n = tonumber(ARGV[6])
for k = 1, 2 do
  local kind = redis.call('TYPE', KEYS[k])['ok']
  if kind ~= 'stream' and kind ~= 'none' then
    return {'wrongtype', KEYS[k]}
  end
end
for i = 0, n - 1 do
  local seq = tonumber(ARGV[7 + 4 * i])
  if seq > cursor + 1 then
    break
  end
  if seq == cursor + 1 then
    local kind, rtype, payload = ARGV[8 + 4 * i], ARGV[9 + 4 * i], ARGV[10 + 4 * i]
    local target = KEYS[1]
    if kind ~= 'e' then target = KEYS[2] end
    redis.call('XADD', target, 'MAXLEN', '~', ARGV[2], '*',
      'session', ARGV[1], 'seq', seq, 'type', rtype, 'm', payload)
    cursor = seq
  end
end
redis.call('SET', KEYS[3], ARGV[4] .. ':' .. cursor, 'PX', ARGV[3])
return cursor
