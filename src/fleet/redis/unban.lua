-- An unban: KEYS bans, the peer's record, lifted; ARGV key, lifted how long ago
-- (ms), decisions channel. A ban issued after it stays, unless they are of one moment
-- (SAME_MOMENT_MS). The lift is remembered (for the longest ban) so that a late copy
-- of an older ban loses to it.
-- Returns 1 if the store changed.
local now = now_ms()
local key = ARGV[1]
local at = now - tonumber(ARGV[2])
local until_ms, _, issued = read_ban(redis.call('HGET', KEYS[1], key))
local record = read_record(KEYS[2])
local after = at + SAME_MOMENT_MS
if (until_ms and until_ms > now and issued > after) or (record.until_ms > now and record.spent > after) then
  -- The replica that sent it lifted a ban the fleet renewed since.
  publish_state(KEYS[1], KEYS[2], ARGV[3], key, now)
  return 0
end
local earlier = tonumber(redis.call('HGET', KEYS[3], key)) or at
redis.call('HDEL', KEYS[1], key)
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[3], key, int(math.max(at, earlier)))
redis.call('PUBLISH', ARGV[3], 'unban ' .. key)
return 1
