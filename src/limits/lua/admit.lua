-- Admission of one request for one key: checks every spend cap, rate window and the concurrency
-- slot, and reserves (counts the request, takes the slot, holds the request's estimated cost)
-- only when all pass. Server clock. `memory.rs` implements the same rules for one instance.
--
-- KEYS[1] rate window hash: fixed {start, requests, tokens, cost}; rolling {requests, tokens,
--         cost}, the sums of KEYS[4]
-- KEYS[2] spend hash {total, day_start, day_base, week_start, week_base, month_start,
--         month_base} (nano-USD): `total` is all the key ever spent, and a period's spend is what
--         `total` grew by since the period began (`total - <period>_base`), so that a settlement
--         adds to one field. A hash written before the bases has `day`, `week` and `month`
--         instead; they are read once and replaced.
-- KEYS[3] requests in flight: sorted set of `<nano-USD reserved>:<holder>` scored by the expiry
--         of their lease (ms); one member per request, its concurrency slot and its reservation
--         together (the amount is 0 when it reserves nothing); and `~reserved`, scored minus the
--         sum of the amounts of the other members
-- KEYS[4] rolling window entries: sorted set of `<a|c>|<holder>|<requests>|<tokens>|<cost>`
--         scored by the time they were counted (ms)
-- ARGV: 1 holder, 2 window ms (0: no window), 3 requests, 4 tokens, 5 cost (-1: no limit),
--       6 spend caps present (0/1), 7 daily, 8 weekly, 9 total, 10 monthly cap (-1: none),
--       11 weekly reset weekday (0 = Monday), 12 its minute of day,
--       13 concurrency limit (0: none), 14 slot and reservation lease ms,
--       15 estimate to reserve (nano-USD, 0: none), 16 rolling window (0/1),
--       17 this calendar month's start and 18 the next one's (Unix s, by the caller's clock:
--       used when the server's time falls between them, else worked out here);
--       only when the key's recorded spend seeds the counters: 19 seed day start (s),
--       20 day spend, 21 seed week start (s), 22 week spend, 23 month start (s), 24 month
--       spend, 25 total spend
-- Returns {0, 0, room} when admitted (room: what the tightest cost limit has left after this
-- request's reservation, -1 without one), else {code, retry-after s, shortfall, estimate, left}:
-- code 1 rate window, 2 concurrency, 3 daily, 4 weekly, 5 total, 6 monthly; shortfall 0 spent,
-- 1 the rest is reserved by requests in flight, 2 the estimate alone exceeds what is left (left).
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local now_s = tonumber(t[1])
local function num(v) return tonumber(v) or 0 end
local function int(v) return string.format('%.0f', v) end
local ttl = tonumber(ARGV[14])
local estimate = tonumber(ARGV[15])
local lc = tonumber(ARGV[5])

-- The requests in flight and the spend they hold. The set keeps that sum as minus the score of
-- its member `~reserved` (every request's member has a positive score, its lease's expiry), so
-- an admission reads it in O(1) however many requests of the key are in flight.
local SUM = '~reserved'
local reserving = ARGV[6] == '1' or lc >= 0
local member = int(estimate) .. ':' .. ARGV[1]
local reserved = 0
-- Drops the members whose lease ran out (their instance stopped renewing them: it died, or lost
-- Redis) and takes their amounts off the sum.
local function drop_expired()
  local gone = redis.call('ZRANGEBYSCORE', KEYS[3], '(0', now)
  if #gone > 0 then
    local freed = 0
    for _, m in ipairs(gone) do freed = freed + num(string.match(m, '^(%d+):')) end
    redis.call('ZREMRANGEBYSCORE', KEYS[3], '(0', now)
    if freed > 0 then redis.call('ZINCRBY', KEYS[3], int(freed), SUM) end
  end
end
if reserving then
  drop_expired()
  reserved = math.max(-num(redis.call('ZSCORE', KEYS[3], SUM)), 0)
end
local room = -1
-- nil when `estimate` fits under `cap` beside `spent` and `reserved` (and `room` shrinks to
-- what is left), else the shortfall.
local function shortfall(cap, spent)
  if spent >= cap then return 0 end
  local left = cap - spent - reserved - estimate
  if left >= 0 then
    if room < 0 or left < room then room = left end
    return nil
  end
  if estimate > cap - spent then return 2 end
  return 1
end
local function refuse(code, wait, sf, cap, spent)
  if sf == 1 then wait = 1 end
  return {code, wait, sf, estimate, cap - spent}
end

if ARGV[6] == '1' then
  local day_start = now_s - now_s % 86400
  local day = math.floor(now_s / 86400)
  local today = (day + 3) % 7 -- 1970-01-01 was a Thursday (Monday = 0)
  local week_start = (day - (today - tonumber(ARGV[11])) % 7) * 86400 + tonumber(ARGV[12]) * 60
  if week_start > now_s then week_start = week_start - 7 * 86400 end
  local month_start, next_month = tonumber(ARGV[17]), tonumber(ARGV[18])
  if now_s < month_start or now_s >= next_month then
    -- Days since 1970-01-01 → day of month (Howard Hinnant's civil_from_days).
    local function day_of_month(days)
      local z = days + 719468
      local era = math.floor(z / 146097)
      local doe = z - era * 146097
      local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
      local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
      local mp = math.floor((5 * doy + 2) / 153)
      return doy - math.floor((153 * mp + 2) / 5) + 1
    end
    local first = day - (day_of_month(day) - 1)
    month_start = first * 86400
    local after = first + 31
    next_month = (after - (day_of_month(after) - 1)) * 86400
  end
  local s = redis.call('HMGET', KEYS[2], 'total', 'day_start', 'day_base', 'week_start', 'week_base',
    'month_start', 'month_base')
  local total = num(s[1])
  local changed = false
  if not s[3] and s[2] then
    -- A hash from before the bases: its periods' spends are fields of their own.
    local old = redis.call('HMGET', KEYS[2], 'day', 'week', 'month')
    s[3], s[5], s[7] = total - num(old[1]), total - num(old[2]), total - num(old[3])
    redis.call('HDEL', KEYS[2], 'day', 'week', 'month')
    changed = true
  end
  -- A period's spend: what `total` grew by since it began (0 in a new period).
  local d, w, m = 0, 0, 0
  if num(s[2]) == day_start then d = total - num(s[3]) else changed = true end
  if num(s[4]) == week_start then w = total - num(s[5]) else changed = true end
  if num(s[6]) == month_start then m = total - num(s[7]) else changed = true end
  if #ARGV > 18 then
    -- Raising the total keeps the periods' spends (their bases are written from them below).
    if tonumber(ARGV[25]) > total then total = tonumber(ARGV[25]); changed = true end
    if tonumber(ARGV[19]) == day_start and tonumber(ARGV[20]) > d then d = tonumber(ARGV[20]); changed = true end
    if tonumber(ARGV[21]) == week_start and tonumber(ARGV[22]) > w then w = tonumber(ARGV[22]); changed = true end
    if tonumber(ARGV[23]) == month_start and tonumber(ARGV[24]) > m then m = tonumber(ARGV[24]); changed = true end
  end
  if changed then
    redis.call('HSET', KEYS[2], 'total', int(total), 'day_start', day_start, 'day_base', int(total - d),
      'week_start', week_start, 'week_base', int(total - w), 'month_start', month_start,
      'month_base', int(total - m))
  end
  local cap, sf = tonumber(ARGV[9]), nil
  if cap >= 0 then
    sf = shortfall(cap, total)
    if sf then return refuse(5, 0, sf, cap, total) end
  end
  cap = tonumber(ARGV[7])
  if cap >= 0 then
    sf = shortfall(cap, d)
    if sf then return refuse(3, day_start + 86400 - now_s, sf, cap, d) end
  end
  cap = tonumber(ARGV[8])
  if cap >= 0 then
    sf = shortfall(cap, w)
    if sf then return refuse(4, week_start + 7 * 86400 - now_s, sf, cap, w) end
  end
  cap = tonumber(ARGV[10])
  if cap >= 0 then
    sf = shortfall(cap, m)
    if sf then return refuse(6, next_month - now_s, sf, cap, m) end
  end
end

local window = tonumber(ARGV[2])
local rolling = ARGV[16] == '1'
local window_start, fresh_window
if window > 0 then
  local requests, tokens, cost
  local lr, lt = tonumber(ARGV[3]), tonumber(ARGV[4])
  if rolling then
    -- Forget what slid out of the window, from the entries and their sums.
    local cutoff = now - window
    local gone = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', cutoff)
    if #gone > 0 then
      local dr, dt, dc = 0, 0, 0
      for _, e in ipairs(gone) do
        local r, tk, c = string.match(e, '|(%d+)|(%d+)|(%d+)$')
        dr, dt, dc = dr + num(r), dt + num(tk), dc + num(c)
      end
      redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', cutoff)
      redis.call('HINCRBY', KEYS[1], 'requests', int(-dr))
      redis.call('HINCRBY', KEYS[1], 'tokens', int(-dt))
      redis.call('HINCRBY', KEYS[1], 'cost', int(-dc))
    end
    local r = redis.call('HMGET', KEYS[1], 'requests', 'tokens', 'cost')
    requests, tokens, cost = math.max(num(r[1]), 0), math.max(num(r[2]), 0), math.max(num(r[3]), 0)
  else
    window_start = now - now % window
    local r = redis.call('HMGET', KEYS[1], 'start', 'requests', 'tokens', 'cost')
    requests, tokens, cost = num(r[2]), num(r[3]), num(r[4])
    fresh_window = num(r[1]) ~= window_start
    if fresh_window then requests, tokens, cost = 0, 0, 0 end
  end
  local sf = nil
  if (lr >= 0 and requests >= lr) or (lt >= 0 and tokens >= lt) then
    sf = 0
  elseif lc >= 0 then
    sf = shortfall(lc, cost)
  end
  if sf then
    local wait = window_start and (window_start + window - now) or window
    if rolling then
      -- Until enough has slid out for this request to fit.
      local fits = function(rq, tk, c)
        return (lr < 0 or rq < lr) and (lt < 0 or tk < lt) and (lc < 0 or c + reserved + estimate <= lc)
      end
      local entries = redis.call('ZRANGE', KEYS[4], 0, -1, 'WITHSCORES')
      local rq, tk, c = requests, tokens, cost
      for i = 1, #entries, 2 do
        local r, et, ec = string.match(entries[i], '|(%d+)|(%d+)|(%d+)$')
        rq, tk, c = rq - num(r), tk - num(et), c - num(ec)
        if fits(rq, tk, c) then
          wait = tonumber(entries[i + 1]) + window - now
          break
        end
      end
    end
    return refuse(1, math.ceil(wait / 1000), sf, math.max(lc, 0), cost)
  end
end

local limit = tonumber(ARGV[13])
if limit > 0 then
  -- ZCARD counts `~reserved` and expired members too: when it says full, count exactly.
  local full = redis.call('ZCARD', KEYS[3]) >= limit
  if full then
    if not reserving then drop_expired() end
    full = redis.call('ZCOUNT', KEYS[3], '(0', '+inf') >= limit
  end
  -- A full set refuses unless this request is in it already (a queued retry): asked only then.
  if full and not redis.call('ZSCORE', KEYS[3], member) then
    return {2, 1, 0, 0, 0}
  end
end

-- Every check passed: reserve.
if window > 0 then
  if rolling then
    redis.call('ZADD', KEYS[4], now, 'a|' .. ARGV[1] .. '|1|0|0')
    redis.call('HINCRBY', KEYS[1], 'requests', 1)
    -- Entries live one window; both keys go together when the key is idle that long.
    redis.call('PEXPIRE', KEYS[4], window + 60000)
    redis.call('PEXPIRE', KEYS[1], window + 60000)
  else
    if fresh_window then
      redis.call('DEL', KEYS[1])
      redis.call('HSET', KEYS[1], 'start', window_start, 'requests', 1, 'tokens', 0, 'cost', 0)
      -- Kept one window past its end for late charges. Only a fresh window's hash is written
      -- here without an expiry; later admissions in the window would set the same one again.
      redis.call('PEXPIRE', KEYS[1], window_start + 2 * window - now)
    else
      redis.call('HINCRBY', KEYS[1], 'requests', 1)
    end
  end
end
if limit > 0 or estimate > 0 then
  if redis.call('ZADD', KEYS[3], now + ttl, member) == 1 and estimate > 0 then
    redis.call('ZINCRBY', KEYS[3], int(-estimate), SUM)
  end
  redis.call('PEXPIRE', KEYS[3], ttl * 2)
end
return {0, 0, room}
