-- A shard's lease, renewed while its token holds it (RecordingStore). KEYS: lease. ARGV: token, ttl ms.
-- Answers 1 when renewed, 0 when the lease is another's (or gone).
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
