-- A segment file written by a shard, committed with its cursors, counts and gaps (RecordingStore),
-- only while the writer holds the shard's lease and the segment is the shard's next one; 1 when
-- committed, 0 otherwise.
-- KEYS: lease, state, cursors, stats, segments, gaps, writers.
-- ARGV: token, shard, segment, cursors, stats, gaps (JSON), writer.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local field = 'segment:' .. ARGV[2]
if (redis.call('HGET', KEYS[2], field) or '1') ~= ARGV[3] then return 0 end
for sid, id in pairs(cjson.decode(ARGV[4])) do redis.call('HSET', KEYS[3], sid, id) end
for sid, stats in pairs(cjson.decode(ARGV[5])) do redis.call('HSET', KEYS[4], sid, cjson.encode(stats)) end
for _, gap in ipairs(cjson.decode(ARGV[6])) do redis.call('RPUSH', KEYS[6], cjson.encode(gap)) end
redis.call('HSET', KEYS[5], ARGV[2] .. ':' .. ARGV[3], ARGV[1])
redis.call('HSET', KEYS[2], field, tonumber(ARGV[3]) + 1)
redis.call('SADD', KEYS[7], ARGV[7])
return 1
