-- Everything in force: KEYS bans, lifted, epoch; ARGV the longest ban (ms), an epoch
-- for a store that has none. Returns the epoch, the bans as "key remaining offences"
-- triples, and the keys lifted within the longest ban; drops what has run out.
local now = now_ms()
redis.call('SET', KEYS[3], ARGV[2], 'NX')
local epoch = redis.call('GET', KEYS[3])
local bans = {}
local stored = redis.call('HGETALL', KEYS[1])
for i = 1, #stored, 2 do
  local until_ms, offences = read_ban(stored[i + 1])
  if until_ms and until_ms > now then
    bans[#bans + 1] = stored[i]
    bans[#bans + 1] = int(until_ms - now)
    bans[#bans + 1] = int(offences)
  else
    redis.call('HDEL', KEYS[1], stored[i])
  end
end
local lifted = {}
local horizon = now - tonumber(ARGV[1])
stored = redis.call('HGETALL', KEYS[2])
for i = 1, #stored, 2 do
  local at = tonumber(stored[i + 1])
  if at and at >= horizon then
    lifted[#lifted + 1] = stored[i]
  else
    redis.call('HDEL', KEYS[2], stored[i])
  end
end
return {epoch, bans, lifted}
