"""framing.py on its own: pure functions, no server, no Redis."""
from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ptgstore.framing import (
    BEGINNING, LAST_POSSIBLE_ID, MAX_PART, NEWEST, NOW, FramingError, cursor_before, decode_header, encode_header,
    format_entry_id, id_before, pack_entries, parse_count, parse_cursors, parse_entry_id, parse_header_codec,
    parse_offsets_mode, split_batch, split_stream_ids, timestamp_spec, unique_stream_ids, unpack_entries,
    validate_stream_id,
)

parts = st.integers(min_value=0, max_value=MAX_PART)


def test_entry_ids_parse_ascii_digits_only():
    assert parse_entry_id("1700000000000-3") == (1700000000000, 3)
    assert parse_entry_id("42") == (42, 0)
    for bad in ("", "-", "1-", "x-1", "١٢-0", "1-2-3", f"{MAX_PART + 1}-0", f"0-{MAX_PART + 1}"):
        with pytest.raises(FramingError):
            parse_entry_id(bad)


@given(parts, parts)
def test_id_before_is_the_largest_id_below(ms, seq):
    before = id_before((ms, seq))
    if (ms, seq) == (0, 0):
        assert before == (0, 0)
    else:
        assert before < (ms, seq)
        # nothing fits between the two: the next id after `before` is the id itself
        assert ((before[0], before[1] + 1) if before[1] < MAX_PART else (before[0] + 1, 0)) == (ms, seq)


def test_cursor_before_examples():
    assert cursor_before("5-3") == "5-2"
    assert cursor_before("5-0") == f"4-{MAX_PART}"
    assert cursor_before("0-1") == BEGINNING
    assert cursor_before("0-0") == BEGINNING
    assert parse_entry_id(LAST_POSSIBLE_ID) == (MAX_PART, MAX_PART)
    assert format_entry_id((7, 8)) == "7-8"


def test_stream_ids():
    assert split_stream_ids("a+b+a") == ["a", "b", "a"]
    assert unique_stream_ids("a+b+a") == ["a", "b"]
    assert validate_stream_id("hololens1:imu") == "hololens1:imu"
    for bad in ("", "*", "a\nb", "\x7f", "ptgstore:meta", "ptgstore:recording", "recording:id", "x" * 257):
        with pytest.raises(FramingError):
            validate_stream_id(bad)


def test_cursors_repeat_and_normalise():
    assert parse_cursors("0", 2) == [BEGINNING, BEGINNING]
    assert parse_cursors("$+*", 2) == [NOW, NEWEST]
    assert parse_cursors("5 6-1", 2) == ["5-0", "6-1"]  # an unencoded '+' arrives as a space
    with pytest.raises(FramingError, match="3 last_entry_id values for 2 streams"):
        parse_cursors("1+2+3", 2)


def test_query_values():
    assert parse_count(None) == 1 and parse_count("7") == 7
    for bad in ("0", "-1", "x", "100001", "٣"):
        with pytest.raises(FramingError, match="count"):
            parse_count(bad)
    assert parse_header_codec(None) == "json" and parse_header_codec("msgpack") == "msgpack"
    with pytest.raises(FramingError, match="json or msgpack"):
        parse_header_codec("xml")
    assert parse_offsets_mode(None) == "auto"
    with pytest.raises(FramingError, match="offsets"):
        parse_offsets_mode("middle")


def test_timestamps():
    assert timestamp_spec(None) == "*"
    assert timestamp_spec(1.001) == "t1001"  # rounded to the microsecond first
    assert timestamp_spec("1700") == "t1700"
    assert timestamp_spec("5-1") == "5-1"
    for bad in (True, -1, float("nan"), "0-0", [1]):
        with pytest.raises(FramingError):
            timestamp_spec(bad)


@pytest.mark.parametrize("codec", ["json", "msgpack"])
def test_headers_round_trip(codec):
    items = [["cam", 0], ["depth", "5-1", 3]]
    encoded = encode_header(items, codec)
    assert decode_header(encoded.decode() if codec == "json" else encoded, codec) == items
    with pytest.raises(FramingError):
        decode_header("{not json" if codec == "json" else b"\xc1", codec)


def test_start_and_end_offsets_read_alike():
    blob = b"aaabbc"
    by_start = split_batch([0, 3, 5], blob, "cam")
    by_end = split_batch([3, 5, 6], blob, "cam")
    assert [bytes(d) for _, _, d in by_start] == [bytes(d) for _, _, d in by_end] == [b"aaa", b"bb", b"c"]
    assert {sid for sid, _, _ in by_start} == {"cam"}


def test_batches_route_by_path_or_header():
    entries = split_batch([["x", 0], ["y", "9-0", 1]], b"ab", "*")
    assert [(sid, spec, bytes(d)) for sid, spec, d in entries] == [("x", "*", b"a"), ("y", "9-0", b"b")]
    assert [sid for sid, _, _ in split_batch([0, 1], b"ab", "a+b")] == ["a", "b"]
    for header, blob, path, words in (
        ([2, 1], b"abc", "cam", "decrease"), ([0, 5], b"abc", "cam", "past the blob"),
        ([1, 2], b"abc", "cam", "neither"), ([], b"x", "cam", "no entries"), ([0], b"x", "*", "name its stream"),
        ([0, 1, 2], b"abc", "a+b", "3 entries for 2 streams"),
    ):
        with pytest.raises(FramingError, match=words):
            split_batch(header, blob, path)


@given(st.lists(st.tuples(st.sampled_from(["a", "b"]), st.binary(max_size=20)), max_size=10))
def test_pack_and_unpack_are_inverse(entries):
    with_ids = [(sid, f"{i + 1}-0", data) for i, (sid, data) in enumerate(entries)]
    header, blob = pack_entries(with_ids)
    assert unpack_entries(msgpack.unpackb(msgpack.packb(header)), blob) == with_ids

