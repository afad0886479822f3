-- A producer's message of one entry with a Redis-made id (the common message: a frame), stored once,
-- as Store.add stores it: XADD with the stream's max_len (which the caller knows, as Store.add does).
-- KEYS: the stream, the producer's record. ARGV: the producer's three (producer_check.lua), the
-- stream's max_len, the stream id, the bytes.
--#include producer_check.lua
local id = redis.pcall('XADD', KEYS[1], 'MAXLEN', '~', ARGV[4], '*', 'd', ARGV[6])
if type(id) == 'table' and id.err then
  if string.find(id.err, 'WRONGTYPE') then return redis.error_reply('PTGTYPE ' .. ARGV[5] .. ' is not a stream') end
  return id
end
local ids = {id}
--#include producer_record.lua
