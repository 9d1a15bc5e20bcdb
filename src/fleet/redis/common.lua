-- Shared by the fleet's scripts. Times are Redis's clock, in milliseconds.
local function now_ms()
  local time = redis.call('TIME')
  return tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
end

-- Times closer than this are one moment to the fleet: a replica's time reaches the
-- store as an age, so it is only as exact as the trip there (and the milliseconds both
-- ends round to). Between a ban and an unban of one moment, the later to arrive wins:
-- a replica's own unban and the ban right after it arrive in that order.
local SAME_MOMENT_MS = 25

-- A number as Redis and the replicas read it: digits, no exponent.
local function int(n)
  return string.format('%.0f', n)
end

-- A ban is stored as "until offences issued"; issued is -1 when not known.
local function read_ban(value)
  if not value then
    return nil
  end
  local until_ms, offences, issued = string.match(value, '^(%d+) (%d+) (%-?%d+)$')
  if not until_ms then
    return nil
  end
  return tonumber(until_ms), tonumber(offences), tonumber(issued)
end

-- The length of a peer's n-th ban, as the replicas' ban policy has it.
local function ban_length(first, factor, longest, n)
  return math.floor(math.min(first * factor ^ (n - 1), longest))
end

-- A peer's record: its offences in two windows, its count of bans, when its last ban
-- ends and when offences were last spent by a ban (those before no longer count). It
-- is kept whether or not the ban list has room, so it alone says whether the peer is
-- banned.
local function read_record(key)
  local r = redis.call('HMGET', key, 'start', 'current', 'previous', 'bans', 'until', 'spent')
  return {
    start = tonumber(r[1]),
    current = tonumber(r[2]) or 0,
    previous = tonumber(r[3]) or 0,
    bans = tonumber(r[4]) or 0,
    until_ms = tonumber(r[5]) or 0,
    spent = tonumber(r[6]) or -1,
  }
end

local function write_record(key, record, keep)
  redis.call('HSET', key, 'start', int(record.start), 'current', int(record.current),
    'previous', int(record.previous), 'bans', int(record.bans), 'until', int(record.until_ms),
    'spent', int(record.spent))
  redis.call('PEXPIRE', key, int(math.max(1, keep)))
end

-- Stores a ban unless the list is full of others; the replicas are told either way,
-- and the peer's record holds it regardless.
local function store_ban(bans, key, until_ms, offences, issued, cap)
  if redis.call('HEXISTS', bans, key) == 1 or redis.call('HLEN', bans) < cap then
    redis.call('HSET', bans, key, int(until_ms) .. ' ' .. int(offences) .. ' ' .. int(issued))
  end
end

-- Tells the replicas what is in force for a key now.
local function publish_state(bans, record_key, channel, key, now)
  local until_ms, offences = read_ban(redis.call('HGET', bans, key))
  local record = read_record(record_key)
  if record.until_ms > (until_ms or 0) then
    until_ms, offences = record.until_ms, record.bans
  end
  if until_ms and until_ms > now then
    redis.call('PUBLISH', channel, 'ban ' .. key .. ' ' .. int(until_ms - now) .. ' ' .. int(offences))
  else
    redis.call('PUBLISH', channel, 'unban ' .. key)
  end
end

