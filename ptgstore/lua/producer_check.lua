-- The producer's part of idempotent_add.lua and idempotent_add_one.lua, before the entries are stored
-- (included by them: not a script by itself). KEYS: the producer's record last. ARGV: the message's
-- sequence number, how many numbers the record keeps and how long it lives (ms) first. A number stored
-- before is answered {1, ids} (storing nothing); one older than the record remembers is an error
-- `PTGSEQ <seq> <oldest> <newest>`; else the script goes on to store the message.
local seq, keep, window = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local record = KEYS[#KEYS]
local newest = redis.call('ZREVRANGE', record, 0, 0, 'WITHSCORES')
if newest[1] and seq <= tonumber(newest[2]) then
  local seen = newest
  if seq < tonumber(newest[2]) then seen = redis.call('ZRANGEBYSCORE', record, seq, seq) end
  if seen[1] then
    local ids = {}
    local listed = string.sub(seen[1], string.find(seen[1], ' ', 1, true) + 1)
    for id in string.gmatch(listed, '[^,]+') do ids[#ids + 1] = id end
    return {1, ids}
  end
  local oldest = redis.call('ZRANGE', record, 0, 0, 'WITHSCORES')
  return redis.error_reply(string.format('PTGSEQ %.0f %s %s', seq, oldest[2], newest[2]))
end
