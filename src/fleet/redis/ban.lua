-- A ban: KEYS bans, the peer's record, lifted; ARGV key, remaining (ms, 0 for a ban
-- that ran out before it reached the store), offences, issued how long ago (ms, -1 if
-- not known), forget after (ms), decisions channel, 1 if the replica's own count
-- banned the peer, first ban, factor, longest ban, the most bans stored.
-- A ban issued before the key's last unban (or of unknown age, while that unban is
-- remembered, or when the unban comes later) loses, unless they are of one moment
-- (SAME_MOMENT_MS). Two bans in force merge: the later end, the higher count. A ban
-- by a replica's count that finds none in force is the fleet's next ban of the peer,
-- from when it was issued. Every ban spends the offences before it; one that ran out
-- only does that, and counts. A served ban of unknown age (given back to a store that
-- lost its data) only counts: the offences counted since came after it. Returns 1 if
-- the store changed.
local now = now_ms()
local key = ARGV[1]
local remaining = tonumber(ARGV[2])
local offences = tonumber(ARGV[3])
local ago = tonumber(ARGV[4])
local issued = -1
if ago >= 0 then
  issued = now - ago
end
local lifted = tonumber(redis.call('HGET', KEYS[3], key))
if lifted and (issued < 0 or issued + SAME_MOMENT_MS < lifted) then
  -- The replica that sent it holds a ban the fleet lifted since.
  if remaining > 0 then
    publish_state(KEYS[1], KEYS[2], ARGV[6], key, now)
  end
  return 0
end
local record = read_record(KEYS[2])
record.start = record.start or now
local forget = tonumber(ARGV[5])
local spent_at = issued
if spent_at < 0 then
  spent_at = now
else
  -- A ban of unknown age (given back to a store that lost its data) may be older than
  -- an unban on its way: marking it spent now would make that unban lose.
  record.spent = math.max(record.spent, issued)
end
if remaining <= 0 then
  -- Served: it counts, and if it was served while it waited, its offences are spent.
  if issued >= 0 then
    record.current = 0
    record.previous = 0
  end
  record.bans = math.max(record.bans, offences)
  write_record(KEYS[2], record, math.max(record.until_ms - now, 0) + forget)
  return 0
end
record.current = 0
record.previous = 0
local until_ms = now + remaining
local old_until, old_offences, old_issued = read_ban(redis.call('HGET', KEYS[1], key))
old_until = math.max(old_until or 0, record.until_ms)
old_offences = math.max(old_offences or 0, record.bans)
if old_until > now then
  issued = math.max(issued, old_issued or -1)
  if old_until >= until_ms and old_offences >= offences then
    if redis.call('HEXISTS', KEYS[1], key) == 1 then
      store_ban(KEYS[1], key, old_until, old_offences, issued, 0)
    end
    write_record(KEYS[2], record, old_until - now + forget)
    if old_until > until_ms + 1000 or old_offences > offences then
      -- The replica that sent it holds less than the fleet: it may have skipped the
      -- fleet's ban while its own waited to be sent.
      publish_state(KEYS[1], KEYS[2], ARGV[6], key, now)
    end
    return 0
  end
  until_ms = math.max(until_ms, old_until)
  offences = math.max(offences, old_offences)
elseif ARGV[7] == '1' then
  offences = math.max(record.bans + 1, offences)
  local length = ban_length(tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10]), offences)
  until_ms = math.max(until_ms, spent_at + length)
else
  offences = math.max(offences, record.bans)
end
record.bans = math.max(record.bans, offences)
record.until_ms = until_ms
store_ban(KEYS[1], key, until_ms, offences, issued, tonumber(ARGV[11]))
redis.call('HDEL', KEYS[3], key)
write_record(KEYS[2], record, until_ms - now + forget)
redis.call('PUBLISH', ARGV[6], 'ban ' .. key .. ' ' .. int(until_ms - now) .. ' ' .. int(offences))
return 1
