-- Shared by the fleet's scripts. Times are Redis's clock, in milliseconds.
local function now_ms()
  local time = redis.call('TIME')
  return tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
end

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

