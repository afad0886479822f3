-- A producer's message of one large entry (Producers.add), run in MULTI right after the entry's own
-- `XADD <stream> MAXLEN ~ <max_len> * d <bytes>`: the bytes never pass through Lua (a script's argument
-- made a Lua string costs Redis 1.4 ms for a new 1 MiB frame). The XADD and this script are one atomic step:
-- a message stored before (or refused) has its XADD taken back here, as if it had never run.
-- KEYS: the stream, the producer's record. ARGV: the producer's three (producer_check.lua), the stream id.
local stream, record = KEYS[1], KEYS[2]
local seq, keep, window = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if redis.call('TYPE', stream).ok ~= 'stream' then
  return redis.error_reply('PTGTYPE ' .. ARGV[4] .. ' is not a stream')  -- (so the XADD failed)
end
-- the XADD's id: the stream's newest, read off a consumer group made at `$` for the moment (a stream's
-- last entry would bring its bytes into Lua)
local group = 'ptgstore+newest'
redis.call('XGROUP', 'CREATE', stream, group, '$')
local groups = redis.call('XINFO', 'GROUPS', stream)
redis.call('XGROUP', 'DESTROY', stream, group)
local id
for _, fields in ipairs(groups) do
  local named = {}
  for i = 1, #fields - 1, 2 do named[fields[i]] = fields[i + 1] end
  if named['name'] == group then id = named['last-delivered-id'] end
end
local function check()
--#include producer_check.lua
end
local verdict = check()
if verdict then
  -- stored before, or refused: take the XADD back, and on Redis 7 the stream's count of entries ever
  -- added too (pulls would take the change for trimmed entries). Its newest deleted id is put back when
  -- it was one (7.0's XSETID cannot set it to 0-0; ptgstore does not read it).
  local info = redis.call('XINFO', 'STREAM', stream)
  local state = {}
  for i = 1, #info - 1, 2 do state[info[i]] = info[i + 1] end
  redis.call('XDEL', stream, id)
  if state['entries-added'] then
    redis.call('XSETID', stream, id, 'ENTRIESADDED', state['entries-added'] - 1,
               'MAXDELETEDID', state['max-deleted-entry-id'])
    if state['entries-added'] == 1 then redis.call('DEL', stream) end  -- made by the XADD: gone again
  elseif redis.call('XLEN', stream) == 0 then
    redis.call('DEL', stream)  -- (Redis 6.2, which keeps no count: an empty stream is taken as made by it)
  end
  return verdict
end
local ids = {id}
--#include producer_record.lua
