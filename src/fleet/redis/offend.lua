-- An offence: KEYS bans, the peer's offences, lifted; ARGV key, weight, window, first
-- ban, factor, longest ban, forget after (ms), decisions channel, a ban's weight, how
-- long ago it happened (ms), the most bans stored.
-- Counts as the replicas do (two windows, the older weighed by its overlap), at the
-- time it happened, and bans at the fleet's count, escalating by the fleet's bans. An
-- offence older than the window, or than the key's last unban, is not counted.
-- Returns the ban's length or 0.
local now = now_ms()
local key = ARGV[1]
local window = tonumber(ARGV[3])
local happened = now - tonumber(ARGV[10])
if happened <= now - window then
  return 0
end
local lifted = tonumber(redis.call('HGET', KEYS[3], key))
if lifted and lifted >= happened then
  return 0
end
local banned_until = read_ban(redis.call('HGET', KEYS[1], key))
if banned_until and banned_until > now then
  return 0 -- from a connection made before the ban
end
local record = redis.call('HMGET', KEYS[2], 'start', 'current', 'previous', 'bans')
local start = tonumber(record[1]) or happened
local current = tonumber(record[2]) or 0
local previous = tonumber(record[3]) or 0
local bans = tonumber(record[4]) or 0
local at = math.max(happened, start)
local passed = math.floor((at - start) / window)
if passed == 1 then
  previous = current
  current = 0
  start = start + window
elseif passed > 1 then
  previous = 0
  current = 0
  start = start + passed * window
end
current = current + tonumber(ARGV[2])
local estimate = math.floor(previous * (window - (at - start)) / window) + current
local forget = tonumber(ARGV[7])
local keep = math.min(2 * window, forget)
local length = 0
if estimate >= tonumber(ARGV[9]) then
  bans = bans + 1
  length = ban_length(tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), bans)
  current = 0
  previous = 0
  store_ban(KEYS[1], key, now + length, bans, now, tonumber(ARGV[11]))
  redis.call('HDEL', KEYS[3], key)
  redis.call('PUBLISH', ARGV[8], 'ban ' .. key .. ' ' .. int(length) .. ' ' .. int(bans))
end
if bans > 0 then
  keep = length + forget
end
redis.call('HSET', KEYS[2], 'start', int(start), 'current', int(current), 'previous', int(previous), 'bans', int(bans))
redis.call('PEXPIRE', KEYS[2], int(math.max(1, keep)))
return length
