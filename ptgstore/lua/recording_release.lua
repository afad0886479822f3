-- A shard's lease, given up while its token holds it (RecordingStore). KEYS: lease. ARGV: token.
-- Answers 1 when released, 0 when the lease is another's (or gone).
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
