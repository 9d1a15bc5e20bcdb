-- The store's epoch (set now if it has none: KEYS epoch, ARGV a fresh one), and
-- Redis's clock in milliseconds, for reading the ban list against.
redis.call('SET', KEYS[1], ARGV[1], 'NX')
return {redis.call('GET', KEYS[1]), int(now_ms())}
