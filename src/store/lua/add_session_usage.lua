-- Adds usage to client sessions and keeps each touched key's sessions bounded, atomically.
--
-- KEYS: none, or on a Redis Cluster the index of the one key id the batch holds (for routing).
-- ARGV: prefix, now, retention (s), per_key, max models per session, max agents per session,
-- session count, the strings around a key id ('{' and '}' on a Cluster, so that a key's
-- sessions and its index share a slot; else empty), then per session:
--   key id, session id, first seen, last seen,
--   model count, then per model: name, field count, (field, value)*,
--   main field count, (field, value)*, other-agents field count, (field, value)*,
--   agent count, then per agent: id, parent ('' for none), first seen, last seen,
--     field count, (field, value)*
--
-- A session is the hash {prefix}cs:{#key id}:{key id}:{session id} (the key id tagged on a
-- Cluster):
--   first, last                 Unix seconds
--   models, agents              how many model names / named agents it keeps apart
--   m:{field}:{model}           counters by model (beyond the cap, model `other`)
--   main:{field}                counters of the main agent (requests without an agent id)
--   a:{field}:{agent}           counters by named agent; af:/al:/ap:{agent} first, last, parent
--   rest:{field}                counters of agents beyond the cap
-- with EXPIREAT last + retention. {prefix}csx:{key id} is a sorted set of the key's session ids
-- scored by last seen; past the retention or the per-key cap, the lowest are deleted with their
-- hashes. `now` is the writer's clock, not the server's: it is compared with the sessions' times,
-- which the relays' clocks gave.
local prefix = ARGV[1]
local now = tonumber(ARGV[2])
local retention = tonumber(ARGV[3])
local per_key = tonumber(ARGV[4])
local max_models = tonumber(ARGV[5])
local max_agents = tonumber(ARGV[6])
local count = tonumber(ARGV[7])
local lb = ARGV[8]
local rb = ARGV[9]
local cutoff = now - retention
local i = 10

local function nxt()
  local v = ARGV[i]
  i = i + 1
  return v
end

local function hname(key_id, sid)
  return prefix .. 'cs:' .. #key_id .. ':' .. lb .. key_id .. rb .. ':' .. sid
end

local function add_fields(h, before, after)
  local n = tonumber(nxt())
  for _ = 1, n do
    local f = nxt()
    local v = nxt()
    redis.call('HINCRBY', h, before .. f .. after, v)
  end
end

local touched = {}
for _ = 1, count do
  local key_id = nxt()
  local sid = nxt()
  local first_s = nxt()
  local last_s = nxt()
  local first = tonumber(first_s)
  local last = tonumber(last_s)
  local h = hname(key_id, sid)
  local cur = redis.call('HMGET', h, 'first', 'last')
  local cur_first = tonumber(cur[1])
  local cur_last = tonumber(cur[2])
  if cur_last and cur_last < cutoff then
    redis.call('DEL', h)
    cur_first = nil
    cur_last = nil
  end
  if not cur_first or first < cur_first then
    redis.call('HSET', h, 'first', first_s)
  end
  if not cur_last or last > cur_last then
    redis.call('HSET', h, 'last', last_s)
    cur_last = last
  end

  local models = tonumber(nxt())
  for _ = 1, models do
    local model = nxt()
    if model ~= 'other' and redis.call('HEXISTS', h, 'm:requests:' .. model) == 0 then
      if redis.call('HINCRBY', h, 'models', 1) > max_models then
        redis.call('HINCRBY', h, 'models', -1)
        model = 'other'
      end
    end
    add_fields(h, 'm:', ':' .. model)
  end
  add_fields(h, 'main:', '')
  add_fields(h, 'rest:', '')

  local agents = tonumber(nxt())
  for _ = 1, agents do
    local id = nxt()
    local parent = nxt()
    local af_s = nxt()
    local al_s = nxt()
    local seen = redis.call('HMGET', h, 'af:' .. id, 'al:' .. id)
    local known = seen[2] ~= false
    if not known and tonumber(redis.call('HGET', h, 'agents') or '0') >= max_agents then
      add_fields(h, 'rest:', '')
    else
      if known then
        if tonumber(af_s) < tonumber(seen[1] or af_s) then
          redis.call('HSET', h, 'af:' .. id, af_s)
        end
        if tonumber(al_s) > tonumber(seen[2]) then
          redis.call('HSET', h, 'al:' .. id, al_s)
        end
        if parent ~= '' then
          redis.call('HSETNX', h, 'ap:' .. id, parent)
        end
      else
        redis.call('HINCRBY', h, 'agents', 1)
        redis.call('HSET', h, 'af:' .. id, af_s, 'al:' .. id, al_s)
        if parent ~= '' then
          redis.call('HSET', h, 'ap:' .. id, parent)
        end
      end
      add_fields(h, 'a:', ':' .. id)
    end
  end

  redis.call('EXPIREAT', h, string.format('%d', cur_last + retention))
  redis.call('ZADD', prefix .. 'csx:' .. lb .. key_id .. rb, string.format('%d', cur_last), sid)
  touched[key_id] = true
end

for key_id, _ in pairs(touched) do
  local idx = prefix .. 'csx:' .. lb .. key_id .. rb
  local function drop(members)
    for _, sid in ipairs(members) do
      redis.call('DEL', hname(key_id, sid))
      redis.call('ZREM', idx, sid)
    end
  end
  drop(redis.call('ZRANGEBYSCORE', idx, '-inf', '(' .. string.format('%d', cutoff)))
  local n = redis.call('ZCARD', idx)
  if n > per_key then
    drop(redis.call('ZRANGE', idx, 0, n - per_key - 1))
  end
  local top = redis.call('ZREVRANGE', idx, 0, 0, 'WITHSCORES')
  if top[2] then
    redis.call('EXPIREAT', idx, string.format('%d', tonumber(top[2]) + retention))
  end
end
return count
