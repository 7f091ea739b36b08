-- The account bound to session KEYS[1], renewing the binding for ARGV[1] ms.
local v = redis.call('GET', KEYS[1])
if v then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return v
