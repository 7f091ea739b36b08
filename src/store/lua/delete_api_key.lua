-- Deletes one API key with its hash-index entry and last-use time, atomically.
--
-- KEYS[1]  hash  id -> record JSON
-- KEYS[2]  hash  key hash -> id
-- KEYS[3]  hash  id -> last use (Unix seconds)
-- ARGV[1]  id
--
-- Returns 1 if the key existed, else 0.
local id = ARGV[1]

local previous = redis.call('HGET', KEYS[1], id)
if not previous then
  return 0
end
local ok, rec = pcall(cjson.decode, previous)
if ok and type(rec) == 'table' and type(rec.key_hash) == 'string' then
  if redis.call('HGET', KEYS[2], rec.key_hash) == id then
    redis.call('HDEL', KEYS[2], rec.key_hash)
  end
end
redis.call('HDEL', KEYS[1], id)
redis.call('HDEL', KEYS[3], id)
return 1
