-- A session's sticky account and, when it is the candidate account or there is none, a slot of
-- the candidate's lease set: the two steps before the upstream in one round trip.
-- KEYS[1] the session's binding (string), KEYS[2] the candidate's lease set (as lease_acquire.lua)
-- ARGV: 1 binding ttl ms, 2 candidate account id, 3 holder, 4 lease limit, 5 lease ttl ms
-- Returns {binding or false, 1 when the slot was taken, else 0}.
redis.replicate_commands()
local bound = redis.call('GET', KEYS[1])
if bound then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  if bound ~= ARGV[2] then
    return {bound, 0}
  end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[5])
local limit = tonumber(ARGV[4])
-- Expired members are dropped only when the set looks full.
local room = redis.call('ZCARD', KEYS[2]) < limit
if not room then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  room = redis.call('ZCARD', KEYS[2]) < limit
end
if room or redis.call('ZSCORE', KEYS[2], ARGV[3]) then
  redis.call('ZADD', KEYS[2], now + ttl, ARGV[3])
  redis.call('PEXPIRE', KEYS[2], ttl * 2)
  return {bound, 1}
end
return {bound, 0}
