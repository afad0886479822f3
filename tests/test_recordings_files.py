"""A recording's files as tools see them: CRCs to check, one merged file on request, what replay
restores (metadata, retention), time order across the files of several shards."""
from __future__ import annotations

from mcap.reader import make_reader
from mcap.records import Chunk, DataEnd
from mcap.stream_reader import StreamReader

import pytest

from support.servers import live_server, make_settings
from test_recordings import read_stream, record_session, recorded, root_of, run_replay
from ptgstore.recordings.mcapfiles import read_messages


@pytest.fixture
def rec_server(tmp_path, rdb, redis_server):
    with live_server(make_settings(tmp_path, redis_server.url, recording_segment_seconds=1)) as live:
        yield live


def test_segments_carry_chunk_and_data_section_crcs_that_check(rec_server):
    record_session(rec_server, "checked", count=10)
    files = sorted((root_of(rec_server) / "checked").glob("*.mcap"))
    assert files
    for path in files:
        # the validating reader checks every non-zero CRC: a zero one would pass unchecked
        records = list(StreamReader(str(path), validate_crcs=True).records)
        chunks = [r for r in StreamReader(str(path), emit_chunks=True).records if isinstance(r, Chunk)]
        (data_end,) = [r for r in records if isinstance(r, DataEnd)]
        assert chunks and all(c.uncompressed_crc != 0 for c in chunks)
        assert data_end.data_section_crc != 0
        with open(path, "rb") as f:  # and the reader that checks them on reading
            assert sum(1 for _ in make_reader(f, validate_crcs=True).iter_messages()) > 0


@pytest.mark.slow
def test_replay_into_new_streams_restores_metadata_and_max_len(rec_server):
    http = rec_server.http()
    http.put("/streams/long", json={"max_len": 5000, "camera": "left", "rate": 30})
    http.put("/recordings/start", params={"rec_id": "long", "sid": "long"})
    ids = []
    for part in range(3):  # 1,500 entries: more than the default retention of 1,000
        ids += http.post("/data/long", files=[("file", (f"e{i}", b"%d" % i)) for i in range(part * 500, part * 500 + 500)]).json()
    assert http.put("/recordings/stop").json() == 1
    reports, code = run_replay(rec_server, rec_id="long", prefix="again:", fullspeed="true", interval="0.5")
    assert code == 1000
    info = http.get("/streams/again:long").json()
    assert info["meta"] == {"max_len": 5000, "camera": "left", "rate": 30}
    assert info["length"] == 1500 and len(read_stream(http, "again:long")) == 1500


def test_an_existing_stream_keeps_its_own_metadata_on_replay(rec_server):
    http = rec_server.http()
    http.put("/streams/cam", json={"camera": "left"})
    record_session(rec_server, "meta", count=3, streams="cam")
    http.put("/streams/mine:cam", json={"owner": "me"})
    assert run_replay(rec_server, rec_id="meta", prefix="mine:", fullspeed="true")[1] == 1000
    assert http.get("/streams/mine:cam").json()["meta"] == {"owner": "me"}


def test_read_messages_merges_files_overlapping_in_time_opening_them_lazily(tmp_path):
    from ptgstore.recordings.mcapfiles import SegmentWriter
    expected = []
    paths = []
    for shard in range(3):  # three shards' files, interleaved in time, each split in two segments
        for segment in range(2):
            path = tmp_path / f"part-{shard:02d}-{segment + 1:06d}.mcap"
            writer = SegmentWriter(path)
            entries = [(f"s{shard}", f"{1000 + 10 * (segment * 10 + k) + shard}-0", b"%d" % k) for k in range(10)]
            writer.write(entries, {})
            writer.finish()
            expected += entries
            paths.append(path)
    got = [(m.sid, m.entry_id, m.data) for m in read_messages(reversed(paths))]
    assert got == sorted(expected, key=lambda e: int(e[1].split("-")[0]))


@pytest.mark.slow
def test_cli_download_merge_writes_one_file_and_replay_prints_a_summary(rec_server, tmp_path, capsys):
    from ptgstore.cli import main
    conn = ["--url", rec_server.url, "--token", rec_server.token()]
    pushed = record_session(rec_server, "to-merge", count=40)
    tmp_path = tmp_path / "out"
    tmp_path.mkdir()
    assert len(rec_server.http().get("/recordings/to-merge").json()["files"]) >= 2
    assert main(["record", "download", "to-merge", "--merge", "--out", str(tmp_path), *conn]) == 0
    out = capsys.readouterr()
    assert out.out.strip() == str(tmp_path / "to-merge.mcap") and "merged 120 entries" in out.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["to-merge.mcap"]  # one file, nothing else left
    merged = {}
    for m in read_messages([tmp_path / "to-merge.mcap"]):
        merged.setdefault(m.sid, []).append((m.entry_id, m.data))
    assert merged == pushed == recorded(root_of(rec_server), "to-merge")
    with open(tmp_path / "to-merge.mcap", "rb") as f:
        channels = {c.topic: c for c in make_reader(f).get_summary().channels.values()}
    assert channels["cam"].message_encoding == "json" and channels["imu"].metadata["ptgstore.encoding"] == "raw"

    assert main(["replay", "to-merge", "--prefix", "r:", "--speed", "max", *conn]) == 0
    assert "replayed 120 entries of 3 streams" in capsys.readouterr().err
    assert main(["record", "ls", "--info", *conn]) == 0
    listed = capsys.readouterr().out
    assert "to-merge: 3 streams, 120 entries" in listed and " s, 0 gaps" in listed and "0:00:" not in listed


def test_the_earlier_import_path_of_read_messages_still_works():
    from ptgstore.mcapfiles import read_messages as earlier
    from ptgstore.recordings.mcapfiles import read_messages

    assert earlier is read_messages
