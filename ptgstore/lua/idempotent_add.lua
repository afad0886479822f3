-- A producer's batch, stored once (Producers.add): any batch. KEYS and ARGV: those of add.lua (the
-- entries' bytes last: a large one is sent without a copy) between the producer's (producer_check.lua).
-- add.lua runs as a function of its own, on copies of KEYS and ARGV without the producer's items.
--#include producer_check.lua
local function add(KEYS, ARGV)
--#include add.lua
end
local keys, argv = {}, {}
for i = 1, #KEYS - 1 do keys[i] = KEYS[i] end
for i = 4, #ARGV do argv[i - 3] = ARGV[i] end
local ids = add(keys, argv)
if ids.err then return ids end
--#include producer_record.lua
