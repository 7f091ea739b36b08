-- Extends the concurrency slots KEYS[i] / ARGV[i + 1] by ARGV[1] ms, only where the holder still
-- has one (an expired slot is not revived). Server clock.
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
local renewed = 0
for i, key in ipairs(KEYS) do
  local exp = redis.call('ZSCORE', key, ARGV[i + 1])
  if exp and tonumber(exp) > now then
    redis.call('ZADD', key, 'XX', now + ttl, ARGV[i + 1])
    redis.call('PEXPIRE', key, ttl * 2)
    renewed = renewed + 1
  end
end
return renewed
