"""The key layout: groups, names read back from keys, and the migration from the global metadata hashes."""
from __future__ import annotations

import orjson
import pytest
from redis.crc import key_slot

from support.servers import live_server, make_settings
from ptgstore.keys import Keys


@pytest.mark.parametrize("sid, group", [("hl1:main", "hl1"), ("hl1:depth:left", "hl1"), ("main", ""),
                                        (":odd", ""), ("a}b:c", "a}b"), ("{x}:y", "{x}"), ("é:ü", "é")])
def test_groups_share_a_slot_and_ids_read_back_from_keys(sid, group):
    keys = Keys("lab/", tagged=True)
    assert keys.group(sid) == group
    stream, meta, epoch = keys.stream(sid), keys.meta(sid), keys.epoch(sid)
    assert keys.sid_of(stream) == sid and keys.sid_of(meta, "+meta") == sid
    assert len({key_slot(k.encode()) for k in (stream, meta, epoch)}) == 1
    sibling = keys.stream((group or "main") + ":other" if group else "other")
    assert key_slot(sibling.encode()) == key_slot(stream.encode())  # the group is placed together
    plain = Keys("lab/")
    assert plain.stream(sid) == "lab/" + sid and plain.sid_of(plain.meta(sid), "+meta") == sid


def test_a_configured_separator_groups_by_it():
    keys = Keys(separator="/", tagged=True)
    assert keys.group("hl1/main") == "hl1" and keys.group("hl1:main") == ""
    assert key_slot(keys.stream("hl1/main").encode()) == key_slot(keys.stream("hl1/depth").encode())


def test_metadata_of_the_earlier_layout_moves_at_start_up_once(tmp_path, rdb, redis_server):
    rdb.hset("ptgstore:meta", mapping={"cam": orjson.dumps({"fps": 30, "max_len": 5}), "empty": b"{}"})
    rdb.hset("ptgstore:maxlen", "cam", 5)
    rdb.xadd("cam", {"d": b"old"})
    for _ in range(2):  # a second start finds nothing to move, and changes nothing
        with live_server(make_settings(tmp_path, redis_server.url)) as live, live.http() as http:
            assert rdb.exists("ptgstore:meta", "ptgstore:maxlen") == 0
            assert http.get("/streams").json() == ["cam", "empty"]
            assert http.get("/streams/cam").json()["meta"] == {"fps": 30, "max_len": 5}
            for _ in range(3):
                http.post("/data/cam", files=[("e", ("e", b"x")) for _ in range(100)])
            assert 5 <= rdb.xlen("cam") < 300  # the migrated max_len governs retention
    assert rdb.hgetall("cam+meta") == {b"meta": orjson.dumps({"fps": 30, "max_len": 5}), b"max_len": b"5"}


def test_cluster_settings_are_checked():
    from ptgstore.settings import Settings, SettingsError

    settings = Settings.from_env({"PTGSTORE_REDIS_URL": "rediss://:pw@node-1:6380", "PTGSTORE_REDIS_CLUSTER": "true",
                                  "PTGSTORE_GROUP_SEPARATOR": "/"})
    assert settings.redis_cluster and settings.group_separator == "/"
    for env, words in (({"PTGSTORE_REDIS_CLUSTER": "true"}, "PTGSTORE_REDIS_URL"),
                       ({"PTGSTORE_REDIS_CLUSTER": "true", "PTGSTORE_REDIS_URL": "unix:///tmp/r.sock"}, "node"),
                       ({"PTGSTORE_REDIS_CLUSTER": "maybe"}, "true or false"),
                       ({"PTGSTORE_GROUP_SEPARATOR": "+"}, "PTGSTORE_GROUP_SEPARATOR")):
        with pytest.raises(SettingsError, match=words):
            Settings.from_env(env)
