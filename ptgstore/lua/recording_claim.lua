-- The recordings directory of the deployment, claimed (RecordingStore).
-- KEYS: directory. ARGV: expected id ('' when none may be there), then field/value pairs.
local id = redis.call('HGET', KEYS[1], 'id') or ''
if id ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
return 1
