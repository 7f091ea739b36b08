-- A key's counters as they stand, for the admin API: reads only (expired slots, reservations and
-- rolling entries are skipped, not removed). Server clock, the same periods as admit.lua.
--
-- KEYS[1] rate window hash, KEYS[2] spend hash, KEYS[3] requests in flight, KEYS[4] rolling
-- window entries (see admit.lua)
-- ARGV: 1 window ms (0: no window), 2 rolling (0/1), 3 weekly reset weekday (0 = Monday),
--       4 its minute of day, 5 start of this calendar month (Unix s)
-- Returns {requests, tokens, cost, window end ms (-1: none or rolling), day, week, month, total,
-- requests in flight, reserved nano-USD}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local now_s = tonumber(t[1])
local function num(v) return tonumber(v) or 0 end

local requests, tokens, cost, ends = 0, 0, 0, -1
local window = tonumber(ARGV[1])
if window > 0 then
  if ARGV[2] == '1' then
    for _, e in ipairs(redis.call('ZRANGEBYSCORE', KEYS[4], '(' .. (now - window), '+inf')) do
      local r, tk, c = string.match(e, '|(%d+)|(%d+)|(%d+)$')
      requests, tokens, cost = requests + num(r), tokens + num(tk), cost + num(c)
    end
  else
    local start = now - now % window
    ends = start + window
    local r = redis.call('HMGET', KEYS[1], 'start', 'requests', 'tokens', 'cost')
    if num(r[1]) == start then requests, tokens, cost = num(r[2]), num(r[3]), num(r[4]) end
  end
end

local day = math.floor(now_s / 86400)
local day_start = day * 86400
local today = (day + 3) % 7
local week_start = (day - (today - tonumber(ARGV[3])) % 7) * 86400 + tonumber(ARGV[4]) * 60
if week_start > now_s then week_start = week_start - 7 * 86400 end
local s = redis.call('HMGET', KEYS[2], 'total', 'day_start', 'day_base', 'week_start', 'week_base',
  'month_start', 'month_base', 'day', 'week', 'month')
local total = num(s[1])
local function spent(start, stored_start, base, legacy)
  if num(stored_start) ~= start then return 0 end
  if base then return total - tonumber(base) end
  return num(legacy)
end
-- The month is the caller's (calendar arithmetic is done in Rust).
local d = spent(day_start, s[2], s[3], s[8])
local w = spent(week_start, s[4], s[5], s[9])
local m = spent(tonumber(ARGV[5]), s[6], s[7], s[10])

local slots = redis.call('ZCOUNT', KEYS[3], '(' .. now, '+inf')
-- The sum the admissions keep (see admit.lua), less what expired members still hold.
local reserved = -num(redis.call('ZSCORE', KEYS[3], '~reserved'))
for _, mem in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '(0', now)) do
  reserved = reserved - num(string.match(mem, '^(%d+):'))
end
reserved = math.max(reserved, 0)
return {requests, tokens, cost, ends, d, w, m, total, slots, reserved}
