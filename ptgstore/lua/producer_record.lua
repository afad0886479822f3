-- The producer's part of idempotent_add.lua and idempotent_add_one.lua, after the entries are stored
-- as `ids` (included by them: not a script by itself): the batch is recorded, answered {0, ids}.
redis.call('ZADD', record, seq, string.format('%.0f ', seq) .. table.concat(ids, ','))
redis.call('ZREMRANGEBYRANK', record, 0, -(keep + 1))
redis.call('PEXPIRE', record, window)
return {0, ids}
