-- Settles one finished request of one key: frees its place among the requests in flight (its
-- concurrency slot and its reservation) and charges its tokens and cost to the key's rate window
-- and spend, in one call. Server clock.
--
-- KEYS[1] rate window hash, KEYS[2] spend hash, KEYS[3] requests in flight, KEYS[4] rolling
-- entries (as in admit.lua)
-- ARGV: 1 tokens, 2 cost (nano-USD), 3 rate window (0: none or not charged, 1 fixed, 2 rolling),
--       4 window ms, 5 spend caps present (0/1), 6 the request's member in flight ('': none),
--       7 holder
-- A fixed window's charge lands in the window the hash holds (a request that outlived its window
-- counts in the one it was admitted in); a rolling window's at the time of the charge. The spend
-- is one addition to `total`: each period's spend is `total` less the period's base.
redis.replicate_commands()
if ARGV[6] ~= '' and redis.call('ZREM', KEYS[3], ARGV[6]) == 1 then
  -- Its reservation leaves the sum the admission reads (`~reserved`, scored minus the sum).
  local nanos = string.match(ARGV[6], '^(%d+):')
  if nanos and nanos ~= '0' then redis.call('ZINCRBY', KEYS[3], nanos, '~reserved') end
end
local tokens, cost = ARGV[1], ARGV[2]
if tokens == '0' and cost == '0' then return 0 end
local window = tonumber(ARGV[4])
if ARGV[3] == '1' then
  local now_tokens = redis.call('HINCRBY', KEYS[1], 'tokens', tokens)
  redis.call('HINCRBY', KEYS[1], 'cost', cost)
  -- A charge after the window's hash expired must not leave a key without expiry: when the
  -- tokens came to no more than this charge, the hash may be new (or its window's first charge).
  if now_tokens <= tonumber(tokens) then
    redis.call('PEXPIRE', KEYS[1], 2 * window)
  end
elseif ARGV[3] == '2' then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('ZADD', KEYS[4], now, 'c|' .. ARGV[7] .. '|0|' .. tokens .. '|' .. cost)
  redis.call('HINCRBY', KEYS[1], 'tokens', tokens)
  redis.call('HINCRBY', KEYS[1], 'cost', cost)
  redis.call('PEXPIRE', KEYS[4], window + 60000)
  redis.call('PEXPIRE', KEYS[1], window + 60000)
end
if ARGV[5] == '1' and cost ~= '0' then
  redis.call('HINCRBY', KEYS[2], 'total', cost)
end
return 1
