-- A shard done writing up to the recording's stop (RecordingStore).
-- KEYS: lease, state. ARGV: token, shard. Marks the shard done (only while holding its lease);
-- answers 2 when every shard is done, 1 when this one is, 0 without the lease.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[2], 'done:' .. ARGV[2], 1)
local shards = tonumber(redis.call('HGET', KEYS[2], 'shards') or '1')
for k = 0, shards - 1 do
  if redis.call('HEXISTS', KEYS[2], 'done:' .. k) == 0 then return 1 end
end
return 2
