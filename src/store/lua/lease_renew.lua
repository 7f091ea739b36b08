-- Extends the leases KEYS[i] / ARGV[i + 1] by ARGV[1] ms, only where the holder still has one.
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  if redis.call('ZSCORE', key, ARGV[i + 1]) then
    redis.call('ZADD', key, 'XX', now + ttl, ARGV[i + 1])
    redis.call('PEXPIRE', key, ttl * 2)
  end
end
return #KEYS
