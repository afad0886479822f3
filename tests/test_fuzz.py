"""Bad input at scale: property-based tests against the REST and WebSocket routes.

Every case checks four things: the refusal is a clear 4xx or close code with a reason,
nothing of the refused input is stored, the server logged no error, and a well-behaved
client (the bystander) is still served alongside.

One server and one Redis serve the whole module (hypothesis examples cannot use
function-scoped fixtures); every example writes to stream ids of its own.
"""
from __future__ import annotations

import logging
import os
import re
import socket
import threading
import unicodedata
import uuid
from urllib.parse import quote, urlencode

import msgpack
import orjson
import pytest
from hypothesis import HealthCheck, assume, given, settings as hsettings, strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from ptgstore.testing import RedisServer, wait_until
from support.servers import live_server, make_settings
from support.ws import read_delivery

# the server runs in a thread of this process and may draw from `random` (client libraries' jitter)
# while hypothesis generates an example; hypothesis takes that for the strategy's doing
pytestmark = [pytest.mark.slow,  # Hypothesis: many examples per test against a live server
              pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies")]

MAX_MESSAGE = 64 * 1024  # small, so that oversized input is cheap to send
MAX_U64 = 2**64 - 1
BYSTANDER = "bystander"
EXAMPLES = hsettings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
FEWER = hsettings(EXAMPLES, max_examples=60)


# -- the module's server, its log, and a well-behaved client ------------------------------------------

class ErrorLog(logging.Handler):
    """Collects every ERROR record (and any record with a traceback) from the server's loggers."""

    LOGGERS = ("ptgstore", "uvicorn", "uvicorn.error", "uvicorn.asgi")

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        if record.levelno >= logging.ERROR or record.exc_info:
            self.records.append(record)

    def attach(self):
        for name in self.LOGGERS:
            logging.getLogger(name).addHandler(self)

    def detach(self):
        for name in self.LOGGERS:
            logging.getLogger(name).removeHandler(self)

    def text(self) -> str:
        return "\n".join(self.format(r) for r in self.records)


class Bystander(threading.Thread):
    """Pushes an entry, waits for its ack and for its delivery on a pull socket, over and over."""

    def __init__(self, server):
        super().__init__(daemon=True)
        self.server = server
        self.rounds = 0
        self.failure: str | None = None
        self.stop = threading.Event()

    def run(self):
        token = self.server.token()
        base = f"{self.server.ws_url}/data/{BYSTANDER}"
        try:
            with connect(f"{base}/pull?token={token}", open_timeout=10) as puller, \
                    connect(f"{base}/push?ack=true&token={token}", open_timeout=10) as pusher:
                while not self.stop.is_set() and self.rounds < 1_000_000:
                    payload = b"%d|" % self.rounds + os.urandom(self.rounds % 300)
                    pusher.send(payload)
                    entry_id = pusher.recv(timeout=10)
                    delivered = read_delivery(puller)
                    if delivered != [(BYSTANDER, entry_id, payload)]:
                        raise AssertionError(f"bystander got {delivered!r:.200} for {entry_id}")
                    self.rounds += 1
                    self.stop.wait(0.01)  # pacing, so the bystander does not hog the CPU
        except Exception as exc:  # reported by check()
            self.failure = repr(exc)

    def check(self):
        assert self.failure is None, f"the well-behaved client failed: {self.failure}"
        before = self.rounds
        wait_until(lambda: self.rounds > before + 1 or self.failure, timeout=10, what="the bystander to be served")
        assert self.failure is None, f"the well-behaved client failed: {self.failure}"


class Env:
    def __init__(self, server, redis_client, errors: ErrorLog, bystander: Bystander):
        self.server = server
        self.redis = redis_client
        self.errors = errors
        self.bystander = bystander
        self.http = server.http()

    def keys(self) -> set[bytes]:
        return set(self.redis.keys("*")) - {BYSTANDER.encode()}

    def settled(self, keys_before: set[bytes] | None = None, allowed: set[bytes] = frozenset()):
        """No stored fragment, no server error logged, the bystander still served."""
        if keys_before is not None:
            new = self.keys() - keys_before - allowed
            assert not new, f"refused input left keys behind: {sorted(new)[:5]}"
        assert not self.errors.records, f"the server logged errors:\n{self.errors.text()}"
        self.bystander.check()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    redis_server = RedisServer(tmp_path_factory.mktemp("fuzz-redis")).start()
    errors = ErrorLog()
    settings = make_settings(tmp_path_factory.mktemp("fuzz"), redis_server.url, max_message=MAX_MESSAGE)
    try:
        with live_server(settings) as server:
            errors.attach()
            bystander = Bystander(server)
            bystander.start()
            client = redis_server.client()
            environment = Env(server, client, errors, bystander)
            try:
                yield environment
            finally:
                bystander.stop.set()
                bystander.join(15)
                environment.http.close()
                client.close()
                errors.detach()
    finally:
        redis_server.stop()


def fresh() -> str:
    return "fz-" + uuid.uuid4().hex[:12]


def stored(env, sid: str) -> list[tuple[str, bytes]]:
    return [(i.decode(), f[b"d"]) for i, f in env.redis.xrange(sid)]


# -- oracles: what the protocol says, written independently of the server's code ----------------------

TRUE_FALSE = ("1", "true", "yes", "on", "0", "false", "no", "off", "")


def sid_ok(sid: str) -> bool:
    return (0 < len(sid.encode()) <= 256 and "+" not in sid and sid != "*"
            and not any(unicodedata.category(c) == "Cc" for c in sid)
            and not sid.startswith("ptgstore:") and sid != "recording:id")


def bool_ok(value: str | None) -> bool:
    return value is None or value.strip().lower() in TRUE_FALSE


def count_ok(value: str | None) -> bool:
    return value in (None, "") or (re.fullmatch(r"[0-9]+", value) is not None and 1 <= int(value) <= 100_000)


def cursor_ok(part: str) -> bool:
    if part in ("*", "$", "0", "-"):
        return True
    match = re.fullmatch(r"([0-9]+)(?:-([0-9]+))?", part)
    return match is not None and int(match[1]) <= MAX_U64 and (match[2] is None or int(match[2]) <= MAX_U64)


def cursors_ok(value: str | None, streams: int) -> bool:
    if value is None:
        return True
    parts = [p for p in re.split("[+ ]", value) if p]
    return len(parts) <= streams and all(cursor_ok(p) for p in parts)


def codec_ok(value: str | None) -> bool:
    return (value or "json").lower() in ("json", "msgpack")


def path_quote(sid: str) -> str:
    return quote(sid, safe="")


def routable(sid: str) -> bool:
    # a trailing slash is the same route without it, and '.'/'..' are path segments to URL libraries
    return not sid.endswith("/") and sid not in (".", "..")


# -- strategies ---------------------------------------------------------------------------------------

NASTY = ["+", "*", "/", " ", "\x00", "\x1f", "\x7f", "\x85", "\u2028", "\ufeff", "\ufffd", "%", "%00", "..",
         "١٢٣", "ptgstore:meta", "é", "\U0001f600", "\t", "\r\n", "?", "#", "&", "="]
stream_ids = st.one_of(
    st.text(min_size=1, max_size=24),
    st.lists(st.sampled_from(NASTY + ["a", "cam", "hl2"]), min_size=1, max_size=6).map("".join),
    st.text(alphabet="ab/é", min_size=250, max_size=270),
)
query_values = st.one_of(
    st.none(),
    st.text(max_size=12),
    st.sampled_from(["0", "-", "*", "$", "1", "true", " TRUE ", "yes", "2", "100000", "100001", "0-0", "1-1",
                     "18446744073709551615-18446744073709551615", "18446744073709551616", "1-2-3", "١",
                     "$+*", "0+0+0", "1 2", "json", "MSGPACK", "xml", "", "+", "-1", "1e3", "0x10"]),
)


# -- REST -----------------------------------------------------------------------------------------------

@EXAMPLES
@given(sid=stream_ids, payload=st.binary(max_size=2000))
def test_rest_stream_ids(env, sid, payload):
    assume(routable(sid) and sid != "*")  # POST /data/* routes by filename (tested below)
    before = env.keys()
    posted = env.http.post(f"/data/{path_quote(sid)}", files={"f": ("f", payload)})
    described = env.http.get(f"/streams/{path_quote(sid)}")
    if sid_ok(sid):
        assert posted.status_code == 200, (sid, posted.text)
        (entry_id,) = posted.json()
        assert stored(env, sid) == [(entry_id, payload)]
        assert described.status_code == 200 and described.json()["sid"] == sid
        env.redis.delete(sid)
    else:
        assert posted.status_code == 400, (sid, posted.status_code, posted.text)
        assert posted.json()["detail"]
        assert described.status_code == 400 and described.json()["detail"]
    env.settled(before)


@pytest.fixture(scope="module")
def populated(env):
    sid = fresh()
    ids = [env.http.post(f"/data/{sid}", files={"f": ("f", b"%d" % i)}).json()[0] for i in range(3)]
    return sid, ids


@EXAMPLES
@given(last_entry_id=query_values, count=query_values, info=query_values, report_error=query_values,
       override=query_values)
def test_rest_query_strings(env, populated, last_entry_id, count, info, report_error, override):
    sid, ids = populated
    before = env.keys()

    def call(method, path, **params):
        params = {k: v for k, v in params.items() if v is not None}
        return env.http.request(method, path, params=params, content=b"{}" if method == "PUT" else None)

    replies = [
        (call("GET", f"/data/{sid}", last_entry_id=last_entry_id, count=count),
         cursors_ok(last_entry_id, 1) and count_ok(count)),
        (call("GET", f"/data/{sid}+{sid}-other", last_entry_id=last_entry_id, count=count),
         cursors_ok(last_entry_id, 2) and count_ok(count)),
        (call("GET", "/streams", info=info), bool_ok(info)),
        (call("GET", f"/streams/{sid}", report_error=report_error), bool_ok(report_error)),
        (call("PUT", f"/streams/{sid}", override=override), bool_ok(override)),
    ]
    for reply, ok in replies:
        where = (reply.request.method, str(reply.request.url))
        if ok:
            assert reply.status_code == 200, (where, reply.text)
        else:
            assert reply.status_code == 400, (where, reply.status_code, reply.text)
            assert reply.json()["detail"]
    got = replies[0][0]
    if got.status_code == 200:
        got_ids = [item[1] for item in orjson.loads(got.headers["entry-offset"])]
        assert got_ids == [i for i in ids if i in set(got_ids)]  # a subset, in order, no repeats
    assert stored(env, sid) == [(i, b"%d" % n) for n, i in enumerate(ids)]
    env.redis.delete(f"{sid}-other")
    env.settled(before, allowed={f"{sid}+meta".encode()})  # a PUT with {} creates the metadata


@FEWER
@given(query=st.text(alphabet="%&=+;?#abc0123456789 \x00\x7f\u00e9", max_size=40))
def test_rest_raw_query_strings(env, populated, query):
    sid, _ = populated
    before = env.keys()
    reply = env.http.get(f"{env.server.url}/data/{sid}?{quote(query, safe='%&=+;')}")
    assert reply.status_code in (200, 400), (query, reply.status_code, reply.text)
    if reply.status_code == 400:
        assert reply.json()["detail"]
    env.settled(before)


def multipart(parts: list[tuple[str, str | None, bytes]], boundary: str) -> bytes:
    out = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        out += b"--" + boundary.encode() + b"\r\n" + b"Content-Disposition: " + disposition.encode("utf-8") + b"\r\n"
        if filename is not None:
            out += b"Content-Type: application/octet-stream\r\n"
        out += b"\r\n" + data + b"\r\n"
    return out + b"--" + boundary.encode() + b"--\r\n"


MUTATIONS = ["none", "truncate", "flip", "no terminator", "wrong boundary", "junk", "no boundary param",
             "not multipart"]


@EXAMPLES
@given(
    parts=st.lists(st.tuples(st.sampled_from(["f", "file", "x y", "é"]),
                             st.one_of(st.none(), st.text(max_size=12), st.sampled_from(NASTY)),
                             st.binary(max_size=300)), min_size=0, max_size=5),
    star=st.booleans(), mutation=st.sampled_from(MUTATIONS), where=st.integers(0, 10_000), junk=st.binary(max_size=64),
)
def test_rest_multipart_bodies(env, parts, star, mutation, where, junk):
    boundary = "b" + uuid.uuid4().hex
    sid = fresh()
    prefix = sid + "-"
    if star:  # each part's filename is its stream: give the valid ones a prefix of their own
        parts = [(n, prefix + f if f is not None and sid_ok(prefix + f) else f, d)
                 for n, f, d in parts]
    body = multipart(parts, boundary)
    content_type = f"multipart/form-data; boundary={boundary}"
    if mutation == "truncate":
        body = body[: where % max(len(body), 1)]
    elif mutation == "flip" and body:
        i = where % len(body)
        body = body[:i] + bytes([body[i] ^ 0xFF]) + body[i + 1:]
    elif mutation == "no terminator":
        body = body[: -len(boundary) - 6]
    elif mutation == "wrong boundary":
        content_type = "multipart/form-data; boundary=other"
    elif mutation == "junk":
        body = junk
    elif mutation == "no boundary param":
        content_type = "multipart/form-data"
    elif mutation == "not multipart":
        content_type = "application/octet-stream"
    before = env.keys()
    reply = env.http.post(f"/data/{'*' if star else sid}", content=body, headers={"content-type": content_type})
    files = [(f, d) for _, f, d in parts if f is not None]
    # an untouched body whose filenames need no escaping must be stored exactly, part by part
    exact = mutation == "none" and files and all(
        f and not set(f) & set('"\\\r\n') and (not star or sid_ok(f)) for f, _ in files)
    if exact:
        assert reply.status_code == 200, reply.text
    if reply.status_code != 200:
        assert reply.status_code in (400, 413), (mutation, reply.status_code, reply.text)
        assert reply.json()["detail"]
        env.settled(before)
        return
    ids = reply.json()
    assert len(ids) >= 1
    new_keys = env.keys() - before
    new_entries = {(key.decode(), i.decode()): f[b"d"] for key in new_keys for i, f in env.redis.xrange(key)}
    if not star:
        assert new_keys <= {sid.encode()}
    assert sorted(entry_id for _, entry_id in new_entries) == sorted(ids)
    if exact:
        expected_sids = [f if star else sid for f, _ in files]
        assert [new_entries[(s, i)] for s, i in zip(expected_sids, ids)] == [d for _, d in files]
    for key in new_keys:
        env.redis.delete(key)
    env.settled()


@FEWER
@given(parts=st.lists(st.one_of(st.none(), st.sampled_from(NASTY), st.text(max_size=8)), min_size=2, max_size=4),
       bad_at=st.integers(0, 3))
def test_rest_star_upload_is_all_or_nothing(env, parts, bad_at):
    sid = fresh()
    names = [f"{sid}-{i}" for i in range(len(parts))]
    names[bad_at % len(names)] = "bad\x01name"
    body = multipart([("f", name, b"data %d" % i) for i, name in enumerate(names)], "bnd")
    before = env.keys()
    reply = env.http.post("/data/*", content=body, headers={"content-type": "multipart/form-data; boundary=bnd"})
    assert reply.status_code == 400 and "control character" in reply.json()["detail"]
    env.settled(before)


def test_rest_oversized_body_is_413_and_stores_nothing(env):
    sid = fresh()
    before = env.keys()
    reply = env.http.post(f"/data/{sid}", files={"f": ("f", os.urandom(MAX_MESSAGE + 1))})
    assert reply.status_code == 413 and reply.json()["detail"]

    def chunks():  # a well-formed start, then more than the limit, without a declared length
        yield b'--x\r\nContent-Disposition: form-data; name="f"; filename="f"\r\n\r\n'
        for _ in range(MAX_MESSAGE // 1024 + 2):
            yield b"-" * 1024

    reply = env.http.post(f"/data/{sid}", content=chunks(),
                          headers={"content-type": "multipart/form-data; boundary=x"})
    assert reply.status_code == 413 and reply.json()["detail"]
    # a declared length over the limit is refused before any of the body is read
    with socket.create_connection(("127.0.0.1", env.server.port), timeout=10) as raw:
        raw.sendall(f"POST /data/{sid} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {env.server.token()}\r\n"
                    f"Content-Type: multipart/form-data; boundary=x\r\nContent-Length: {MAX_MESSAGE + 1}\r\n"
                    "\r\n--x".encode())
        answer = raw.recv(4096)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:100]
    env.settled(before)


# -- WebSocket push -------------------------------------------------------------------------------------

def ws(env, path: str, **query):
    query = {k: v for k, v in query.items() if v is not None}
    query.setdefault("token", env.server.token())
    return connect(f"{env.server.ws_url}{path}?{urlencode(query, quote_via=quote)}", open_timeout=10,
                   close_timeout=5, max_size=4 * MAX_MESSAGE, compression=None)


def closed_with(sock, timeout: float = 10.0) -> tuple[int, str]:
    """The close code and reason; any data message first is a failure."""
    try:
        message = sock.recv(timeout=timeout)
    except ConnectionClosed as closed:
        assert closed.rcvd is not None, "the server dropped the socket without a close frame"
        return closed.rcvd.code, closed.rcvd.reason
    raise AssertionError(f"expected a close, got {message!r:.200}")


def assert_refused(code: int, reason: str, expected: set[int]):
    assert code in expected, (code, reason)
    assert reason and len(reason.encode()) <= 123, (code, reason)


def offsets_for(entries: list[bytes], mode: str) -> list[int]:
    starts, ends, total = [], [], 0
    for data in entries:
        starts.append(total)
        total += len(data)
        ends.append(total)
    return starts if mode == "start" else ends


BATCH_MUTATIONS = {
    "none": None,
    "decreasing offsets": 1007, "offset past the blob": 1007, "negative offset": 1007, "offset not a number": 1007,
    "item arity": 1007, "header not a list": 1007, "truncated header": 1007, "garbage header": 1007,
    "bad timestamp": 1007, "stale timestamp in batch": 1007, "bad stream id": 1007,
    "header in the wrong frame type": 1003, "blob in the wrong frame type": 1003, "oversized blob": 1009,
}
bad_offsets = st.sampled_from([1.5, "3", None, True, [1], {"a": 1}, 2**63, -(2**63)])
bad_timestamps = st.sampled_from([-1, -0.001, "abc", "1-x", "١٢٣", True, {"t": 1}, [1], "0-0", 2.0**80,
                                  "18446744073709551616", ""])


def build_batch(draw_mutation, entries, mode, codec, star, sid, extra):
    """A header (as sent) and blob for `entries`, broken as the mutation says."""
    offsets = offsets_for(entries, mode)
    blob = b"".join(entries)
    names = [f"{sid}-{i % 2}" for i in range(len(entries))] if star else [sid] * len(entries)
    items: list = [[name, off] for name, off in zip(names, offsets)]
    mutation = draw_mutation
    if mutation == "decreasing offsets":
        pairs = [(i, j) for i in range(len(offsets)) for j in range(i + 1, len(offsets)) if offsets[i] < offsets[j]]
        assume(pairs)
        i, j = pairs[extra["index"] % len(pairs)]
        items[i][-1], items[j][-1] = offsets[j], offsets[i]
    elif mutation == "offset past the blob":
        items[-1][-1] = len(blob) + 1 + extra["index"]
    elif mutation == "negative offset":
        items[0][-1] = -1 - extra["index"]
    elif mutation == "offset not a number":
        items[extra["index"] % len(items)][-1] = extra["bad_offset"]
    elif mutation == "item arity":
        items[extra["index"] % len(items)] = [names[0]] * (4 + extra["index"] % 3) if extra["index"] % 2 else []
    elif mutation == "header not a list":
        items = extra["not_list"]
    elif mutation == "bad timestamp":
        k = extra["index"] % len(items)
        items[k] = [items[k][0], extra["bad_ts"], items[k][1]]
    elif mutation == "stale timestamp in batch":
        assume(len(items) >= 2)
        items[0] = [items[0][0], 1_700_000_000.5, items[0][1]]
        items[1] = [items[0][0], 1_700_000_000.0, items[1][1]]  # one stream, the second entry older
    elif mutation == "bad stream id":
        assume(star)
        items[extra["index"] % len(items)][0] = extra["bad_sid"]
    elif mutation == "oversized blob":
        blob = blob + b"\0" * (MAX_MESSAGE + 1 - len(blob))
        items[-1][-1] = len(blob) if mode == "end" else items[-1][-1]
    header = msgpack.packb(items) if codec == "msgpack" else orjson.dumps(items).decode()
    if mutation == "truncated header":
        header = header[: max(len(header) - 1 - extra["index"] % max(len(header) - 1, 1), 0)]
        assume(header not in ("", b"", b"[]", "[]"))
    elif mutation == "garbage header":
        header = extra["garbage"] if codec == "msgpack" else extra["garbage"].decode("latin-1")
        try:
            decoded = msgpack.unpackb(header) if codec == "msgpack" else orjson.loads(header)
            assume(not isinstance(decoded, list))
        except Exception:  # undecodable garbage is what we want
            pass
    elif mutation == "header in the wrong frame type":
        header = header.encode() if isinstance(header, str) else header.decode("latin-1")
    return header, blob


@EXAMPLES
@given(
    good_batches=st.lists(st.lists(st.binary(min_size=1, max_size=200), min_size=1, max_size=4), max_size=2),
    entries=st.lists(st.binary(max_size=200), min_size=1, max_size=5),
    mode=st.sampled_from(["start", "end", "auto"]),
    codec=st.sampled_from(["json", "msgpack"]),
    star=st.booleans(),
    mutation=st.sampled_from(sorted(BATCH_MUTATIONS)),
    extra=st.fixed_dictionaries({
        "index": st.integers(0, 50), "bad_offset": bad_offsets, "bad_ts": bad_timestamps,
        "not_list": st.one_of(st.dictionaries(st.text(max_size=3), st.integers(-2**63, 2**63 - 1), max_size=2),
                              st.integers(-2**63, 2**63 - 1),
                              st.text(max_size=5), st.none(), st.booleans()),
        "garbage": st.binary(min_size=1, max_size=40),
        "bad_sid": st.sampled_from(["", "*", "a+b", "x\x00", "y\x1b", "ptgstore:meta", "é" * 200, 7, None]),
    }),
)
def test_ws_push_batches(env, good_batches, entries, mode, codec, star, mutation, extra):
    sid = fresh()
    offsets_mode = mode
    if mode == "auto":
        # auto tells start from end offsets by the first offset: end offsets need a non-empty first entry
        mode = "end" if extra["index"] % 2 else "start"
        entries = [b"x" + entries[0]] + entries[1:]  # (good_batches hold no empty entries)
    before = env.keys()
    expected: dict[str, list[bytes]] = {}
    acked_ids: list[str] = []
    with ws(env, f"/data/{'*' if star else sid}/push", batch="true", ack="true", header=codec,
            offsets=offsets_mode) as sock:
        for batch in good_batches:
            header, blob = build_batch("none", batch, "end" if mode == "end" else "start", codec, star, sid, extra)
            sock.send(header)
            sock.send(blob)
            ids = sock.recv(timeout=10).split(",")
            assert len(ids) == len(batch)
            acked_ids += ids
            for i, data in enumerate(batch):
                expected.setdefault(f"{sid}-{i % 2}" if star else sid, []).append(data)
        header, blob = build_batch(mutation, entries, mode, codec, star, sid, extra)
        sock.send(header)
        if mutation == "blob in the wrong frame type":
            sock.send(blob.decode("latin-1"))
        elif mutation != "header in the wrong frame type":  # that one is refused before any blob
            sock.send(blob)
        if mutation == "none":
            ids = sock.recv(timeout=10).split(",")
            assert len(ids) == len(entries)
            for i, data in enumerate(entries):
                expected.setdefault(f"{sid}-{i % 2}" if star else sid, []).append(data)
            acked_ids += ids
        else:
            code, reason = closed_with(sock)
            assert_refused(code, reason, {BATCH_MUTATIONS[mutation]})
    # everything acknowledged stays, the refused batch left nothing
    for name, datas in expected.items():
        assert [d for _, d in stored(env, name)] == datas, name
    stored_ids = sorted(i for name in expected for i, _ in stored(env, name))
    assert stored_ids == sorted(acked_ids)
    env.settled(before, allowed={k.encode() for k in expected})
    for name in expected:
        env.redis.delete(name)


frames = st.lists(st.one_of(
    st.tuples(st.just("binary"), st.binary(max_size=300)),
    st.tuples(st.just("text"), st.text(max_size=20)),
    st.tuples(st.just("huge"), st.integers(1, 1000)),
), min_size=1, max_size=8)


@EXAMPLES
@given(sequence=frames)
def test_ws_push_single_entries_any_frame_sequence(env, sequence):
    # binary frames are entries and get acks; the first text frame closes 1003, the first oversized 1009
    sid = fresh()
    before = env.keys()
    acked = []
    with ws(env, f"/data/{sid}/push", ack="true") as sock:
        for kind, value in sequence:
            if kind == "binary":
                sock.send(value)
                acked.append((sock.recv(timeout=10), value))
                continue
            sock.send(value if kind == "text" else b"\x01" * (MAX_MESSAGE + value))
            code, reason = closed_with(sock)
            assert_refused(code, reason, {1003} if kind == "text" else {1009})
            break
    assert stored(env, sid) == acked
    env.settled(before, allowed={sid.encode()})
    env.redis.delete(sid)


# -- WebSocket paths and query strings ------------------------------------------------------------------

@EXAMPLES
@given(sids=st.lists(stream_ids, min_size=1, max_size=3), options=st.fixed_dictionaries({}, optional={
    "count": query_values, "last_entry_id": query_values, "timeout": query_values, "time_sync_id": query_values,
    "header": query_values, "latest": query_values, "ack": query_values, "gaps": query_values,
}))
def test_ws_pull_paths_and_query_strings(env, sids, options):
    path_sid = "+".join(sids)
    assume(routable(path_sid))
    sids = path_sid.split("+")  # a '+' inside a generated id is a separator like any other
    unique = list(dict.fromkeys(sids))
    options = {k: v for k, v in options.items() if v is not None}
    timeout = options.get("timeout")
    timeout_ok = timeout is None or re.fullmatch(r"[0-9]+", timeout) is not None
    if timeout_ok:
        options["timeout"] = "30"  # a valid socket then closes 1000 by itself, soon
    sync = options.get("time_sync_id")
    sync_ok = sync in (None, "") or sync in unique or (re.fullmatch(r"[0-9]+", sync) is not None
                                                        and int(sync) < len(unique))
    framing_ok = all(sid_ok(s) for s in sids)
    # every malformed query option closes with one code (1007, as malformed data), whatever its kind
    options_ok = (timeout_ok and count_ok(options.get("count")) and codec_ok(options.get("header"))
                  and cursors_ok(options.get("last_entry_id"), len(unique)) and sync_ok
                  and all(bool_ok(options.get(k)) for k in ("latest", "ack", "gaps")))
    # the streams must be empty for a valid socket to time out without data
    assume(not any(env.redis.exists(s) for s in sids if sid_ok(s)))
    before = env.keys()
    with ws(env, f"/data/{path_quote_list(path_sid)}/pull", **options) as sock:
        code, reason = closed_with(sock)
    if framing_ok and options_ok:
        assert (code, reason) == (1000, "timeout without data"), (path_sid, options)
    else:
        expected = set()
        if not framing_ok:
            expected.add(1007)
        if not options_ok:
            expected.add(1007)
        assert_refused(code, reason, expected)
    env.settled(before)


def path_quote_list(path_sid: str) -> str:
    return "+".join(path_quote(s) for s in path_sid.split("+"))


@EXAMPLES
@given(sid=stream_ids, batch=query_values, ack=query_values, header=query_values, offsets=query_values)
def test_ws_push_paths_and_query_strings(env, sid, batch, ack, header, offsets):
    assume(routable(sid) and sid != "*")
    parts = sid.split("+")  # `a+b`: several streams, for batches only
    options = {k: v for k, v in dict(batch=batch, ack=ack, header=header, offsets=offsets).items() if v is not None}
    bools_ok = bool_ok(batch) and bool_ok(ack)
    options_ok = bools_ok and codec_ok(header) and (offsets or "auto").lower() in ("auto", "start", "end")
    framing_ok = all(sid_ok(p) for p in parts)
    batched = bools_ok and (batch or "").strip().lower() in ("1", "true", "yes", "on")
    policy_ok = options_ok and (batched or len(parts) == 1)
    before = env.keys()
    with ws(env, f"/data/{path_quote_list(sid)}/push", **{**options, "ack": "true" if bools_ok else ack}) as sock:
        if framing_ok and policy_ok:
            if batched:
                codec = (header or "json").lower()
                header_items = [[parts[0], 0]]
                sock.send(msgpack.packb(header_items) if codec == "msgpack" else orjson.dumps(header_items).decode())
            sock.send(b"payload")
            (entry_id,) = sock.recv(timeout=10).split(",")
            assert stored(env, parts[0]) == [(entry_id, b"payload")]
            env.redis.delete(parts[0])
        else:
            code, reason = closed_with(sock)
            expected = ({1007} if not (framing_ok and options_ok) else set()) | ({1008} if options_ok and not policy_ok else set())
            assert_refused(code, reason, expected)
    env.settled(before)


@EXAMPLES
@given(producer=st.one_of(query_values, st.sampled_from(["p", "héé", "a/b", "x" * 128, "x" * 129, "a b"])),
       seq=st.one_of(query_values, st.sampled_from([str(2**53 - 1), str(2**53), "007"])))
def test_ws_push_producer_options(env, producer, seq):
    """`producer` and `seq` (idempotent pushes): both or neither (else 1008), each well-formed (else 1007);
    an empty value is not given (as every option's)."""
    given_producer, given_seq = producer or None, seq or None
    paired = (given_producer is None) == (given_seq is None)
    producer_ok = given_producer is None or re.fullmatch(r"[A-Za-z0-9._~:@-]{1,128}", given_producer) is not None
    seq_ok = given_seq is None or (re.fullmatch(r"[0-9]+", given_seq) is not None and int(given_seq) < 2**53)
    before = env.keys()
    with ws(env, "/data/fuzz-producer/push", ack="true", producer=producer, seq=seq) as sock:
        if paired and producer_ok and seq_ok:
            sock.send(b"payload")
            entry_id = sock.recv(timeout=10)
            assert stored(env, "fuzz-producer") == [(entry_id, b"payload")]
            env.redis.delete("fuzz-producer", *env.redis.keys("ptgstore+producer:*"))
        else:
            assert_refused(*closed_with(sock), {1008} if not paired else {1007})
    env.settled(before)


def test_unbatched_push_to_several_streams_is_refused(env):
    before = env.keys()
    with ws(env, "/data/a+b/push") as sock:
        assert_refused(*closed_with(sock), {1008})
    env.settled(before)


@pytest.mark.parametrize("raw", ["%FF", "%C0%AF", "%ED%A0%80", "cam%FFera", "%E2%82"])
def test_invalid_utf8_in_a_path_is_refused_not_mangled(env, raw):
    # percent-encoded bytes that are not UTF-8 must not silently become some other stream id
    before = env.keys()
    reply = env.http.post(f"{env.server.url}/data/{raw}", files={"f": ("f", b"x")})
    assert reply.status_code == 400, (raw, reply.status_code, reply.text)
    assert reply.json()["detail"]
    with ws(env, f"/data/{raw}/push", ack="true") as sock:
        assert_refused(*closed_with(sock), {1007})
    with ws(env, f"/data/{raw}/pull") as sock:
        assert_refused(*closed_with(sock), {1007})
    env.settled(before)
