-- A ban: KEYS bans, the peer's offences, lifted; ARGV key, remaining (ms), offences,
-- issued how long ago (ms, -1 if not known), forget after (ms), decisions channel,
-- 1 if the replica's own count banned the peer, first ban, factor, longest ban, the
-- most bans stored.
-- A ban issued before the key's last unban (or of unknown age, while that unban is
-- remembered) loses. Two bans in force merge: the later end, the higher count. A ban
-- by a replica's count that finds none in force is the fleet's next ban of the peer.
-- Every ban spends the peer's offences. Returns 1 if the store changed.
local now = now_ms()
local key = ARGV[1]
local until_ms = now + tonumber(ARGV[2])
local offences = tonumber(ARGV[3])
local ago = tonumber(ARGV[4])
local issued = -1
if ago >= 0 then
  issued = now - ago
end
local lifted = tonumber(redis.call('HGET', KEYS[3], key))
if lifted and (issued < 0 or issued < lifted) then
  -- The replica that sent it holds a ban the fleet lifted since.
  publish_state(KEYS[1], ARGV[6], key, now)
  return 0
end
local old_until, old_offences, old_issued = read_ban(redis.call('HGET', KEYS[1], key))
local record = redis.call('HMGET', KEYS[2], 'bans')
local bans = tonumber(record[1]) or 0
if old_until and old_until > now then
  issued = math.max(issued, old_issued)
  if old_until >= until_ms and old_offences >= offences then
    store_ban(KEYS[1], key, old_until, old_offences, issued, 0)
    return 0
  end
  until_ms = math.max(until_ms, old_until)
  offences = math.max(offences, old_offences)
elseif ARGV[7] == '1' then
  offences = math.max(bans + 1, offences)
  local length = ban_length(tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10]), offences)
  until_ms = math.max(until_ms, now + length)
end
store_ban(KEYS[1], key, until_ms, offences, issued, tonumber(ARGV[11]))
redis.call('HDEL', KEYS[3], key)
redis.call('HSET', KEYS[2], 'current', '0', 'previous', '0', 'bans', int(math.max(bans, offences)))
redis.call('PEXPIRE', KEYS[2], int(until_ms - now + tonumber(ARGV[5])))
redis.call('PUBLISH', ARGV[6], 'ban ' .. key .. ' ' .. int(until_ms - now) .. ' ' .. int(offences))
return 1
