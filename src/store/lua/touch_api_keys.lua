-- Records when keys were last used; a later time wins. Uses of keys that no longer exist are
-- ignored, so a late flush cannot leave a stray entry behind a deleted key.
--
-- KEYS[1]  hash  id -> last use (Unix seconds)
-- KEYS[2]  hash  id -> record JSON
-- ARGV     id1, t1, id2, t2, ...
local n = 0
for i = 1, #ARGV - 1, 2 do
  local id, at = ARGV[i], tonumber(ARGV[i + 1])
  if at and redis.call('HEXISTS', KEYS[2], id) == 1 then
    local current = tonumber(redis.call('HGET', KEYS[1], id))
    if not current or current < at then
      redis.call('HSET', KEYS[1], id, ARGV[i + 1])
      n = n + 1
    end
  end
end
return n
