-- An unban: KEYS bans, the peer's offences, lifted; ARGV key, lifted how long ago
-- (ms), decisions channel. A ban issued after it stays. The lift is remembered (as
-- long as the longest ban, see load) so a late copy of an older ban loses to it.
-- Returns 1 if the store changed.
local now = now_ms()
local key = ARGV[1]
local at = now - tonumber(ARGV[2])
local _, _, issued = read_ban(redis.call('HGET', KEYS[1], key))
if issued and issued > at then
  return 0
end
local earlier = tonumber(redis.call('HGET', KEYS[3], key)) or at
redis.call('HDEL', KEYS[1], key)
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[3], key, int(math.max(at, earlier)))
redis.call('PUBLISH', ARGV[3], 'unban ' .. key)
return 1
