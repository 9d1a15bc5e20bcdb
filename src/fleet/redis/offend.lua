-- An offence: KEYS bans, the peer's record, lifted; ARGV key, weight, window, first
-- ban, factor, longest ban, forget after (ms), decisions channel, a ban's weight, how
-- long ago it happened (ms), the most bans stored.
-- Counts as the replicas do (two windows, the older weighed by how much of it the
-- last window still covers), in the window it happened in, and bans when the fleet's
-- estimate now reaches a ban, escalating by the fleet's bans. An offence older than
-- the window, than the key's last unban, or than the peer's last ban (which spent it)
-- is not counted. Returns the ban's length or 0.
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
local record = read_record(KEYS[2])
-- Banned now, or spent by a ban since. A second's slack: an offence and the ban it
-- led to are timed by different calls, each off by its trip to Redis.
if record.until_ms > now or happened <= record.spent + 1000 then
  return 0
end
record.start = record.start or happened
-- The windows, moved on to now.
local passed = math.floor(math.max(0, now - record.start) / window)
if passed == 1 then
  record.previous = record.current
  record.current = 0
  record.start = record.start + window
elseif passed > 1 then
  record.previous = 0
  record.current = 0
  record.start = record.start + passed * window
end
local weight = tonumber(ARGV[2])
if happened < record.start and record.previous == 0 then
  -- Replicas' offences arrive out of order: a window anchored on a later offence,
  -- with nothing before it, is anchored on this one (still within a window of now).
  record.start = happened
end
if happened >= record.start then
  record.current = record.current + weight
elseif happened >= record.start - window then
  record.previous = record.previous + weight
else
  return 0
end
local covered = window - math.min(window, math.max(0, now - record.start))
local estimate = math.floor(record.previous * covered / window) + record.current
local forget = tonumber(ARGV[7])
local keep = math.min(2 * window, forget)
local length = 0
if estimate >= tonumber(ARGV[9]) then
  record.bans = record.bans + 1
  length = ban_length(tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), record.bans)
  record.current = 0
  record.previous = 0
  record.until_ms = now + length
  record.spent = now
  store_ban(KEYS[1], key, now + length, record.bans, now, tonumber(ARGV[11]))
  redis.call('HDEL', KEYS[3], key)
  redis.call('PUBLISH', ARGV[8], 'ban ' .. key .. ' ' .. int(length) .. ' ' .. int(record.bans))
end
if record.bans > 0 then
  keep = math.max(record.until_ms - now, 0) + forget
end
write_record(KEYS[2], record, keep)
return length
