-- Drops entries read as run out: KEYS a hash; ARGV field, value, field, value... Each
-- goes only if it still holds the value read, so a ban stored meanwhile stays.
local dropped = 0
for i = 1, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    dropped = dropped + redis.call('HDEL', KEYS[1], ARGV[i])
  end
end
return dropped
