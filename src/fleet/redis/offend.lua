-- An offence: KEYS bans, the peer's offences, lifted; ARGV key, weight, window, first
-- ban, factor, longest ban, forget after (ms), decisions channel, a ban's weight.
-- Counts as the replicas do (two windows, the older weighed by its overlap), and bans
-- at the fleet's count, escalating by the fleet's bans. Returns the ban's length or 0.
local now = now_ms()
local key = ARGV[1]
local window = tonumber(ARGV[3])
local banned_until = read_ban(redis.call('HGET', KEYS[1], key))
if banned_until and banned_until > now then
  return 0 -- from a connection made before the ban
end
local record = redis.call('HMGET', KEYS[2], 'start', 'current', 'previous', 'bans')
local start = tonumber(record[1]) or now
local current = tonumber(record[2]) or 0
local previous = tonumber(record[3]) or 0
local bans = tonumber(record[4]) or 0
local at = math.max(now, start)
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
  length = math.floor(math.min(tonumber(ARGV[4]) * tonumber(ARGV[5]) ^ (bans - 1), tonumber(ARGV[6])))
  current = 0
  previous = 0
  redis.call('HSET', KEYS[1], key, int(now + length) .. ' ' .. int(bans) .. ' ' .. int(now))
  redis.call('HDEL', KEYS[3], key)
  redis.call('PUBLISH', ARGV[8], 'ban ' .. key .. ' ' .. int(length) .. ' ' .. int(bans))
end
if bans > 0 then
  keep = length + forget
end
redis.call('HSET', KEYS[2], 'start', int(start), 'current', int(current), 'previous', int(previous), 'bans', int(bans))
redis.call('PEXPIRE', KEYS[2], int(math.max(1, keep)))
return length
