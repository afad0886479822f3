-- The dashboard's overview (Store.summaries). KEYS: pairs of a stream and its metadata hash.
-- For each stream `{summary, metadata JSON}`, the summary without sending any entry: length, last
-- generated id, entries ever added (-1 before Redis 7), oldest and newest entry ids, the newest entry's
-- size in bytes and its image type when it starts with a JPEG or PNG signature; false for a key that is
-- missing or not a stream (and for missing metadata). One call for all: a script call costs more than XINFO.
local out = {}
for n = 1, #KEYS / 2 do
  local info = redis.pcall('XINFO', 'STREAM', KEYS[2 * n - 1])
  local meta = redis.pcall('HGET', KEYS[2 * n], 'meta')
  if type(meta) == 'table' then meta = false end
  if type(info) ~= 'table' or info.err then
    out[n] = {false, meta}
  else
    local row = {0, '0-0', -1, '', '', 0, ''}
    for i = 1, #info, 2 do
      local k, v = info[i], info[i + 1]
      if k == 'length' then row[1] = v
      elseif k == 'last-generated-id' then row[2] = v
      elseif k == 'entries-added' then row[3] = v
      elseif k == 'first-entry' and v then row[4] = v[1]
      elseif k == 'last-entry' and v then
        row[5] = v[1]
        local fields = v[2]
        for j = 1, #fields, 2 do
          if fields[j] == 'd' then
            local data = fields[j + 1]
            row[6] = string.len(data)
            if string.sub(data, 1, 3) == '\255\216\255' then row[7] = 'image/jpeg'
            elseif string.sub(data, 1, 8) == '\137PNG\r\n\026\n' then row[7] = 'image/png' end
          end
        end
      end
    end
    out[n] = {row, meta}
  end
end
return out
