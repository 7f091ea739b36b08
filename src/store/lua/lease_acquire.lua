-- Takes one of ARGV[2] slots of the lease set KEYS[1] for holder ARGV[1], for ARGV[3] ms.
-- Members are holders scored by their expiry (server time, ms); expired ones are dropped when
-- the set is full.
-- Returns 1 when the holder has a slot (new or renewed), 0 when the set is full.
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])
local limit = tonumber(ARGV[2])
-- Expired members are dropped only when the set looks full.
local room = redis.call('ZCARD', KEYS[1]) < limit
if not room then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  room = redis.call('ZCARD', KEYS[1]) < limit
end
-- A holder already in a full set keeps its slot: ZSCORE is asked only then.
if room or redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ttl * 2)
  return 1
end
return 0
