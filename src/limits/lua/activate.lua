-- The first use of an activation-mode key: sets KEYS[1] to ARGV[1] (Unix s) unless it is set,
-- and returns the value that holds, the same for every instance.
redis.call('SET', KEYS[1], ARGV[1], 'NX')
return tonumber(redis.call('GET', KEYS[1]))
