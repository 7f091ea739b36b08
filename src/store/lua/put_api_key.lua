-- Creates or replaces one API key record and keeps the key-hash index consistent, atomically.
--
-- KEYS[1]  hash  id -> record JSON
-- KEYS[2]  hash  key hash -> id
-- ARGV[1]  id
-- ARGV[2]  key hash
-- ARGV[3]  record JSON
--
-- Returns {'ok'}, or {'conflict', <owner id>} when another existing key has this hash (an index
-- entry whose key is gone is stale and simply taken over).
local id, hash, json = ARGV[1], ARGV[2], ARGV[3]

local owner = redis.call('HGET', KEYS[2], hash)
if owner and owner ~= id and redis.call('HEXISTS', KEYS[1], owner) == 1 then
  return {'conflict', owner}
end

-- Release the hash this key had before, if it changes.
local previous = redis.call('HGET', KEYS[1], id)
if previous then
  local ok, rec = pcall(cjson.decode, previous)
  if ok and type(rec) == 'table' and type(rec.key_hash) == 'string' and rec.key_hash ~= hash then
    if redis.call('HGET', KEYS[2], rec.key_hash) == id then
      redis.call('HDEL', KEYS[2], rec.key_hash)
    end
  end
end

redis.call('HSET', KEYS[1], id, json)
redis.call('HSET', KEYS[2], hash, id)
return {'ok'}
