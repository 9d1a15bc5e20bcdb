-- A ban: KEYS bans, the peer's offences, lifted; ARGV key, remaining (ms), offences,
-- issued how long ago (ms, -1 if not known), forget after (ms), decisions channel.
-- A ban issued before the key's last unban (or of unknown age, while that unban is
-- remembered) loses; two bans merge, the longer and the higher count. Returns 1 if the
-- store changed.
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
  return 0
end
local old_until, old_offences, old_issued = read_ban(redis.call('HGET', KEYS[1], key))
if old_until and old_until > now then
  if old_until >= until_ms and old_offences >= offences then
    return 0
  end
  until_ms = math.max(until_ms, old_until)
  offences = math.max(offences, old_offences)
  issued = math.max(issued, old_issued)
end
redis.call('HSET', KEYS[1], key, int(until_ms) .. ' ' .. int(offences) .. ' ' .. int(issued))
redis.call('HDEL', KEYS[3], key)
-- The fleet's count of bans escalates the next one.
local bans = tonumber(redis.call('HGET', KEYS[2], 'bans')) or 0
if offences > bans then
  redis.call('HSET', KEYS[2], 'bans', int(offences))
end
redis.call('PEXPIRE', KEYS[2], int(until_ms - now + tonumber(ARGV[5])))
redis.call('PUBLISH', ARGV[6], 'ban ' .. key .. ' ' .. int(until_ms - now) .. ' ' .. int(offences))
return 1
