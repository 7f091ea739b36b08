-- Admission of one request for one key: checks every spend cap, rate window and the concurrency
-- slot, and reserves (counts the request, takes the slot) only when all pass. Server clock.
--
-- KEYS[1] rate window hash {start, requests, tokens, cost}
-- KEYS[2] spend hash {day_start, day, week_start, week, total} (nano-USD)
-- KEYS[3] slots: sorted set of holders scored by expiry (ms)
-- ARGV: 1 holder, 2 window ms (0: no window), 3 requests, 4 tokens, 5 cost (-1: no limit),
--       6 spend caps present (0/1), 7 daily, 8 weekly, 9 total cap (-1: none),
--       10 weekly reset weekday (0 = Monday), 11 its minute of day,
--       12 concurrency limit (0: none), 13 slot ttl ms,
--       14 seed present (0/1), 15 seed day start (s), 16 day spend, 17 seed week start (s),
--       18 week spend, 19 total spend
-- Returns {0, 0} when admitted, else {code, retry-after s}: 1 rate window, 2 concurrency,
-- 3 daily, 4 weekly, 5 total.
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local now_s = tonumber(t[1])
local function num(v) return tonumber(v) or 0 end
local function int(v) return string.format('%.0f', v) end

if ARGV[6] == '1' then
  local day_start = now_s - now_s % 86400
  local day = math.floor(now_s / 86400)
  local today = (day + 3) % 7 -- 1970-01-01 was a Thursday (Monday = 0)
  local reset_minute = tonumber(ARGV[11])
  local week_start = (day - (today - tonumber(ARGV[10])) % 7) * 86400 + reset_minute * 60
  if week_start > now_s then week_start = week_start - 7 * 86400 end
  local s = redis.call('HMGET', KEYS[2], 'day_start', 'day', 'week_start', 'week', 'total')
  local d, w, total = num(s[2]), num(s[4]), num(s[5])
  local changed = false
  if num(s[1]) ~= day_start then d = 0; changed = true end
  if num(s[3]) ~= week_start then w = 0; changed = true end
  if ARGV[14] == '1' then
    if tonumber(ARGV[15]) == day_start and tonumber(ARGV[16]) > d then d = tonumber(ARGV[16]); changed = true end
    if tonumber(ARGV[17]) == week_start and tonumber(ARGV[18]) > w then w = tonumber(ARGV[18]); changed = true end
    if tonumber(ARGV[19]) > total then total = tonumber(ARGV[19]); changed = true end
  end
  if changed then
    redis.call('HSET', KEYS[2], 'day_start', day_start, 'day', int(d), 'week_start', week_start,
      'week', int(w), 'total', int(total))
  end
  local total_cap, daily_cap, weekly_cap = tonumber(ARGV[9]), tonumber(ARGV[7]), tonumber(ARGV[8])
  if total_cap >= 0 and total >= total_cap then return {5, 0} end
  if daily_cap >= 0 and d >= daily_cap then return {3, day_start + 86400 - now_s} end
  if weekly_cap >= 0 and w >= weekly_cap then return {4, week_start + 7 * 86400 - now_s} end
end

local window = tonumber(ARGV[2])
local window_start, fresh_window
if window > 0 then
  window_start = now - now % window
  local r = redis.call('HMGET', KEYS[1], 'start', 'requests', 'tokens', 'cost')
  local requests, tokens, cost = num(r[2]), num(r[3]), num(r[4])
  fresh_window = num(r[1]) ~= window_start
  if fresh_window then requests, tokens, cost = 0, 0, 0 end
  local lr, lt, lc = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
  if (lr >= 0 and requests >= lr) or (lt >= 0 and tokens >= lt) or (lc >= 0 and cost >= lc) then
    return {1, math.ceil((window_start + window - now) / 1000)}
  end
end

local limit = tonumber(ARGV[12])
if limit > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  if not redis.call('ZSCORE', KEYS[3], ARGV[1]) and redis.call('ZCARD', KEYS[3]) >= limit then
    return {2, 1}
  end
end

-- Every check passed: reserve.
if window > 0 then
  if fresh_window then
    redis.call('DEL', KEYS[1])
    redis.call('HSET', KEYS[1], 'start', window_start, 'requests', 1, 'tokens', 0, 'cost', 0)
  else
    redis.call('HINCRBY', KEYS[1], 'requests', 1)
  end
  -- Kept one window past its end for late charges.
  redis.call('PEXPIRE', KEYS[1], window_start + 2 * window - now)
end
if limit > 0 then
  local ttl = tonumber(ARGV[13])
  redis.call('ZADD', KEYS[3], now + ttl, ARGV[1])
  redis.call('PEXPIRE', KEYS[3], ttl * 2)
end
return {0, 0}
