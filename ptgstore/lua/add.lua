-- Adds a batch atomically (Store.add). KEYS: the distinct stream keys, then their metadata hashes (in
-- the same order). ARGV: default max_len, n streams, their ids (fields of the max_len hash), then for
-- each entry: stream index (1-based), id spec (`*`, `t<ms>` or `ms-seq`), bytes.
-- Entries with client times get `ms-0`, or `ms-(seq+1)` within the newest millisecond.
-- On any refusal the entries already added are removed again: no half batches. Answers the ids in order,
-- or an error `PTGSTALE <why>` (an id not newer than the newest entry) or `PTGTYPE <stream id> is not a stream`.
-- (idempotent_add.lua runs this script as a function of its own.)
local nstreams = tonumber(ARGV[2])
local last, existed, added = {}, {}, {}
local function split(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function info(key)
  local fields, out = redis.call('XINFO', 'STREAM', key), {}
  for i = 1, #fields - 1, 2 do out[fields[i]] = fields[i + 1] end
  return out
end
local function undo(reason)
  -- a stream keeps the count of entries it was ever given (Redis 7): put it back, so that the
  -- refused entries do not look like trimmed ones (a gap) to pulls
  local before, count = {}, {}
  for i = 1, #added do
    local k = added[i][1]
    if existed[k] == 1 and before[k] == nil then before[k] = info(KEYS[k]) end
    count[k] = (count[k] or 0) + 1
  end
  for i = #added, 1, -1 do redis.call('XDEL', KEYS[added[i][1]], added[i][2]) end
  for k, state in pairs(before) do
    local top = redis.call('XREVRANGE', KEYS[k], '+', '-', 'COUNT', 1)
    if state['entries-added'] and top[1] then
      redis.pcall('XSETID', KEYS[k], top[1][1], 'ENTRIESADDED', state['entries-added'] - count[k],
                  'MAXDELETEDID', state['max-deleted-entry-id'])
    end
  end
  for k = 1, nstreams do
    if existed[k] == 0 and redis.call('EXISTS', KEYS[k]) == 1 and redis.call('XLEN', KEYS[k]) == 0 then
      redis.call('DEL', KEYS[k])
    end
  end
  return redis.error_reply(reason)
end
local ids = {}
local base = 3 + nstreams
for i = base, #ARGV, 3 do
  local k = tonumber(ARGV[i])
  local spec = ARGV[i + 1]
  if existed[k] == nil then existed[k] = redis.call('EXISTS', KEYS[k]) end
  local id = spec
  if string.sub(spec, 1, 1) == 't' then
    local ms = tonumber(string.sub(spec, 2))
    if last[k] == nil then
      local top = redis.call('XREVRANGE', KEYS[k], '+', '-', 'COUNT', 1)
      if top[1] then last[k] = top[1][1] else last[k] = '0-0' end
    end
    local lms, lseq = split(last[k])
    if ms > lms then id = string.format('%.0f-0', ms)
    elseif ms == lms then id = string.format('%.0f-%.0f', ms, lseq + 1)
    else return undo('PTGSTALE timestamp ' .. string.format('%.0f', ms) .. ' is older than the newest entry ' .. last[k]) end
  end
  local ok = redis.pcall('XADD', KEYS[k], id, 'd', ARGV[i + 2])
  if type(ok) == 'table' and ok.err then
    if string.find(ok.err, 'WRONGTYPE') then return undo('PTGTYPE ' .. ARGV[2 + k] .. ' is not a stream') end
    return undo('PTGSTALE entry id ' .. id .. ' is not newer than the newest entry')
  end
  last[k] = ok
  added[#added + 1] = {k, ok}
  ids[#ids + 1] = ok
end
for k = 1, nstreams do
  local max = tonumber(redis.call('HGET', KEYS[nstreams + k], 'max_len')) or tonumber(ARGV[1])
  redis.call('XTRIM', KEYS[k], 'MAXLEN', '~', max)
end
return ids
