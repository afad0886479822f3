"""`/foxglove`: the Foxglove WebSocket endpoint, driven by the reference client.

The reference client is `@foxglove/ws-protocol`'s FoxgloveClient run by Debian's Node
(tests/foxglove/client.js; its packages are installed from tests/foxglove/package-lock.json by this
module's fixture, or by `.ci/run`). Those tests are skipped only when node or npm is missing. The
refusal and slow-reader tests use the Python websockets client. Every wait has a timeout.
"""
from __future__ import annotations

import base64
import io
import json
import queue
import shutil
import struct
import subprocess
import threading
import time
from pathlib import Path

import orjson
import pytest
from PIL import Image
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from ptgstore.testing import wait_until
from support.servers import live_server, make_settings
from ptgstore.foxglove_schemas import entry_times
from ptgstore.layouts import IMU_SAMPLE, depth_meta, imu_meta
from support.ws import expect_close, push

CLIENT_DIR = Path(__file__).parent / "foxglove"
SUBPROTOCOL = "foxglove.websocket.v1"
WAIT = 15.0


def jpeg(colour=(255, 0, 0), size=(32, 24)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format="JPEG", quality=90)
    return out.getvalue()


@pytest.fixture(scope="module")
def client_dir():
    """tests/foxglove with its node_modules (npm ci when missing); skipped without node or npm."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are needed for the reference Foxglove client (apt-get install nodejs npm)")
    if not (CLIENT_DIR / "node_modules" / "@foxglove" / "ws-protocol").is_dir():
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=CLIENT_DIR, check=True, timeout=300,
                       stdout=subprocess.DEVNULL)
    return CLIENT_DIR


@pytest.fixture
def server(tmp_path, redis_server, rdb):
    with live_server(make_settings(tmp_path, redis_server.url, foxglove_scan_ms=100)) as srv:
        yield srv


class NodeClient:
    """The reference client in a node process: commands in, events out (one JSON object a line)."""

    def __init__(self, directory: Path, url: str):
        self.process = subprocess.Popen(["node", "client.js", url], cwd=directory, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True)
        self.events: queue.Queue = queue.Queue()
        self.seen: list[dict] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.events.put(json.loads(line))
        self.events.put({"event": "exit"})

    def command(self, **command) -> None:
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()

    def expect(self, predicate, what: str, timeout: float = WAIT) -> dict:
        """The first event (not taken before) for which `predicate` holds."""
        for event in self.seen:
            if predicate(event):
                self.seen.remove(event)
                return event
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")
            try:
                event = self.events.get(timeout=remaining)
            except queue.Empty:
                continue
            if event["event"] == "exit":
                raise AssertionError(f"the client exited while waiting for {what}: {self.seen[-5:]}")
            if predicate(event):
                return event
            self.seen.append(event)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process.stdout.close()
        self.reader.join(10)


def reference_client(client_dir: Path, server, query: str = "") -> NodeClient:
    return NodeClient(client_dir, f"{server.ws_url}/foxglove?token={server.token()}{query}")


def protobuf_decode(client_dir: Path, channel: dict, payload: bytes) -> dict:
    """A protobuf message decoded as Foxglove decodes it (protobufjs, from the channel's descriptors)."""
    request = {"schema": channel["schema"], "schemaName": channel["schemaName"],
               "data": base64.b64encode(payload).decode()}
    run = subprocess.run(["node", "decode.js"], cwd=client_dir, input=json.dumps(request) + "\n",
                         capture_output=True, text=True, timeout=60)
    reply = json.loads(run.stdout)
    assert reply["ok"], reply
    return reply["message"]


class Channels:
    """Channels as the client has been told of them so far (advertise and unadvertise events)."""

    def __init__(self, client: NodeClient):
        self.client = client
        self.by_topic: dict[str, dict] = {}

    def wait_for(self, *topics: str) -> dict[str, dict]:
        while not all(topic in self.by_topic for topic in topics):
            event = self.client.expect(lambda e: e["event"] in ("advertise", "unadvertise"),
                                       f"channels {topics} to be advertised")
            self.apply(event)
        return {topic: self.by_topic[topic] for topic in topics}

    def apply(self, event: dict) -> None:
        if event["event"] == "advertise":
            for channel in event["channels"]:
                self.by_topic[channel["topic"]] = channel
        else:
            for topic in [t for t, c in self.by_topic.items() if c["id"] in event["channelIds"]]:
                del self.by_topic[topic]


def receive_pushed(server, client: NodeClient, sid: str, sub_id: int, make, limit: int = 50):
    """Push entries made by `make(i)` until the subscription delivers one (the server starts it
    asynchronously); then three more, each of which must arrive. [(entry id, entry, message)]."""
    got = None
    for i in range(limit):
        push(server, sid, make(i))
        try:
            got = client.expect(lambda e: e["event"] == "message" and e["subscriptionId"] == sub_id,
                                f"a message on {sid}", timeout=0.5)
            break
        except AssertionError:
            continue
    assert got is not None, f"nothing arrived on {sid} after {limit} pushes"
    out = []
    for i in range(limit, limit + 3):
        entry = make(i)
        (entry_id,) = push(server, sid, entry)
        # (a probe above may still be on its way: the message of this entry is the one of its time)
        log_time = str(entry_times(entry_id)[0])
        message = client.expect(lambda e: e["event"] == "message" and e["subscriptionId"] == sub_id
                                and e["timestamp"] == log_time, f"message {i} on {sid}")
        out.append((entry_id, entry, message))
    return out


def test_reference_client_sees_channels_gets_exact_messages_and_publishes(client_dir, server, rdb):
    with server.http() as http:
        push(server, "cam", jpeg())
        push(server, "telemetry", orjson.dumps({"speed": 1.5, "pose": {"x": 1, "y": 2.5}, "ok": True}))
        assert http.put("/streams/depth", json=depth_meta(4, 3)).status_code == 200
        push(server, "depth", b"\x00" * 24)
        assert http.put("/streams/imu", json=imu_meta()).status_code == 200
        push(server, "blob", b"\x00\x01 not json, not an image")
    client = reference_client(client_dir, server)
    try:
        info = client.expect(lambda e: e["event"] == "serverInfo", "serverInfo")["info"]
        assert "clientPublish" in info["capabilities"] and "json" in info["supportedEncodings"]
        channels = Channels(client)
        found = channels.wait_for("cam", "telemetry", "depth", "imu", "blob")
        cam, telemetry, depth, imu, blob = (found[t] for t in ("cam", "telemetry", "depth", "imu", "blob"))
        assert (cam["encoding"], cam["schemaName"], cam["schemaEncoding"]) == ("json", "foxglove.CompressedImage",
                                                                                 "jsonschema")
        assert json.loads(cam["schema"])["properties"]["data"]["contentEncoding"] == "base64"
        assert telemetry["encoding"] == "json" and telemetry["schemaEncoding"] == "jsonschema"
        schema = json.loads(telemetry["schema"])
        assert schema["properties"]["speed"] == {"type": "number"}
        assert schema["properties"]["pose"]["properties"]["y"] == {"type": "number"}
        assert (depth["encoding"], depth["schemaName"]) == ("json", "foxglove.RawImage")
        assert (imu["encoding"], imu["schemaName"]) == ("json", "ptgstore.Imu")
        assert (blob["encoding"], blob["schemaName"], blob["schema"]) == ("application/octet-stream", "", "")

        subs = {}
        for topic in ("cam", "telemetry", "depth", "imu"):
            client.command(cmd="subscribe", channelId=found[topic]["id"])
            subs[topic] = client.expect(lambda e, c=found[topic]["id"]: e["event"] == "subscribed"
                                        and e["channelId"] == c, "subscribed")["id"]

        # the camera: CompressedImage whose data is the JPEG byte for byte, log time = the entry's time
        for entry_id, entry, message in receive_pushed(server, client, "cam", subs["cam"],
                                                       lambda i: jpeg((i % 256, 0, 0))):
            decoded = json.loads(base64.b64decode(message["data"]))
            assert base64.b64decode(decoded["data"]) == entry
            assert decoded["format"] == "jpeg" and decoded["frame_id"] == "cam"
            assert int(message["timestamp"]) == entry_times(entry_id)[0]
            assert decoded["timestamp"]["sec"] * 10**9 + decoded["timestamp"]["nsec"] == entry_times(entry_id)[0]

        # JSON entries: the message is the entry, byte for byte
        for entry_id, entry, message in receive_pushed(server, client, "telemetry", subs["telemetry"],
                                                       lambda i: orjson.dumps({"speed": i, "pose": {"x": 0, "y": i}})):
            assert base64.b64decode(message["data"]) == entry
            assert int(message["timestamp"]) == entry_times(entry_id)[0]

        # depth: RawImage 16UC1 whose data is the entry's bytes
        for entry_id, entry, message in receive_pushed(server, client, "depth", subs["depth"],
                                                       lambda i: struct.pack("<12H", *range(i, i + 12))):
            decoded = json.loads(base64.b64decode(message["data"]))
            assert (decoded["encoding"], decoded["width"], decoded["height"], decoded["step"]) == ("16UC1", 4, 3, 8)
            assert base64.b64decode(decoded["data"]) == entry
            assert int(message["timestamp"]) == entry_times(entry_id)[0]

        # IMU: one message per `<d6f` sample (the test pushes one sample an entry)
        for entry_id, entry, message in receive_pushed(server, client, "imu", subs["imu"],
                                                       lambda i: IMU_SAMPLE.pack(1700000000.25 + i, 0.5, 9.75, -1.0,
                                                                                 0.125, 0.0, -0.25)):
            decoded = json.loads(base64.b64decode(message["data"]))
            t = IMU_SAMPLE.unpack(entry)[0]
            assert decoded["timestamp"] == {"sec": int(t), "nsec": 250_000_000}
            assert decoded["linear_acceleration"] == {"x": 0.5, "y": 9.75, "z": -1.0}
            assert decoded["angular_velocity"] == {"x": 0.125, "y": 0.0, "z": -0.25}
            assert int(message["timestamp"]) == entry_times(entry_id)[0]

        # a new stream appears, a deleted one disappears
        push(server, "appearing", orjson.dumps({"a": 1}))
        assert channels.wait_for("appearing")["appearing"]["encoding"] == "json"
        gone_id = channels.by_topic["blob"]["id"]
        with server.http() as http:
            assert http.delete("/streams/blob").status_code == 200
        event = client.expect(lambda e: e["event"] == "unadvertise", "blob to be unadvertised")
        assert gone_id in event["channelIds"]

        # publishing stores an entry, as a push would; a json channel refuses what is not JSON
        client.command(cmd="advertise", topic="from-foxglove", encoding="json", schemaName="note")
        channel_id = client.expect(lambda e: e["event"] == "advertised", "advertised")["id"]
        client.command(cmd="publish", channelId=channel_id, data=base64.b64encode(b"not json").decode())
        status = client.expect(lambda e: e["event"] == "status", "a status about the bad message")["status"]
        assert status["level"] == 2 and "not JSON" in status["message"]
        note = orjson.dumps({"note": "hello from the reference client"})
        client.command(cmd="publish", channelId=channel_id, data=base64.b64encode(note).decode())
        stored = wait_until(lambda: rdb.xrange("from-foxglove"), what="the published entry")
        assert [fields[b"d"] for _, fields in stored] == [note]
        assert channels.wait_for("from-foxglove")["from-foxglove"]["encoding"] == "json"
    finally:
        client.close()


@pytest.mark.slow
def test_images_as_protobuf_decode_as_foxglove_decodes_them(client_dir, server):
    with server.http() as http:
        push(server, "cam", jpeg())
        assert http.put("/streams/depth", json=depth_meta(4, 3)).status_code == 200
        push(server, "telemetry", b'{"a": 1}')
    client = reference_client(client_dir, server, "&images=protobuf")
    try:
        found = Channels(client).wait_for("cam", "depth", "telemetry")
        for topic, name in (("cam", "foxglove.CompressedImage"), ("depth", "foxglove.RawImage")):
            assert (found[topic]["encoding"], found[topic]["schemaName"], found[topic]["schemaEncoding"]) == \
                ("protobuf", name, "protobuf")
        assert found["telemetry"]["encoding"] == "json"  # only images change
        subs = {}
        for topic in ("cam", "depth"):
            client.command(cmd="subscribe", channelId=found[topic]["id"])
            subs[topic] = client.expect(lambda e, c=found[topic]["id"]: e["event"] == "subscribed"
                                        and e["channelId"] == c, "subscribed")["id"]
        for entry_id, entry, message in receive_pushed(server, client, "cam", subs["cam"],
                                                       lambda i: jpeg((0, i % 256, 0))):
            payload = base64.b64decode(message["data"])
            assert entry in payload and len(payload) < len(entry) + 64  # the image bytes as they are, no base64
            image = protobuf_decode(client_dir, found["cam"], payload)
            assert base64.b64decode(image["data"]) == entry and image["format"] == "jpeg"
            log_time = entry_times(entry_id)[0]
            assert (int(image["timestamp"]["seconds"]), image["timestamp"]["nanos"]) == divmod(log_time, 10**9)
            assert int(message["timestamp"]) == log_time and image["frame_id"] == "cam"
        for _, entry, message in receive_pushed(server, client, "depth", subs["depth"],
                                                lambda i: struct.pack("<12H", *range(i, i + 12))):
            image = protobuf_decode(client_dir, found["depth"], base64.b64decode(message["data"]))
            assert (image["encoding"], image["width"], image["height"], image["step"]) == ("16UC1", 4, 3, 8)
            assert base64.b64decode(image["data"]) == entry
    finally:
        client.close()


def fox_connect(server, token: str | None = "", **kwargs):
    query = "" if token is None else f"?token={token or server.token()}"
    kwargs.setdefault("subprotocols", [SUBPROTOCOL])
    return connect(f"{server.ws_url}/foxglove{query}", open_timeout=10, max_size=64 * 1024 * 1024,
                   compression=None, **kwargs)


def next_op(ws, op: str, timeout: float = WAIT) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        message = ws.recv(timeout=max(0.01, deadline - time.monotonic()))
        if isinstance(message, str) and orjson.loads(message)["op"] == op:
            return orjson.loads(message)


def test_refusals_hostile_clients_and_pages(server):
    # no token, a forged one: refused at the handshake, before anything is read
    for token in (None, "forged.token.value"):
        with pytest.raises(InvalidStatus) as refused:
            fox_connect(server, token)
        assert refused.value.response.status_code == 401
    # another site's page riding the cookie: 403
    with pytest.raises(InvalidStatus) as refused:
        connect(f"{server.ws_url}/foxglove", subprotocols=[SUBPROTOCOL], open_timeout=10,
                additional_headers={"Cookie": f"authorization=Bearer {server.token()}",
                                    "Origin": "http://evil.example"})
    assert refused.value.response.status_code == 403
    # an option it does not know: closed with 1007 and a reason
    with connect(f"{server.ws_url}/foxglove?token={server.token()}&images=png", subprotocols=[SUBPROTOCOL],
                 open_timeout=10) as ws:
        code, reason = expect_close(ws)
        assert code == 1007 and "images" in reason
    # not a Foxglove client: closed with 1008 and a reason
    with fox_connect(server, subprotocols=None) as ws:
        code, reason = expect_close(ws)
        assert code == 1008 and SUBPROTOCOL in reason
    # a token holder sending garbage gets status errors; the socket and the server go on
    with fox_connect(server) as ws:
        assert ws.subprotocol == SUBPROTOCOL
        next_op(ws, "advertise")
        for bad in ("not json", "[1]", '{"op": "setParameters"}', '{"op": "subscribe", "subscriptions": 5}',
                    '{"op": "subscribe", "subscriptions": [{"id": -1, "channelId": 1}]}',
                    '{"op": "subscribe", "subscriptions": [{"id": 1, "channelId": 99999}]}',
                    '{"op": "advertise", "channels": [{"id": 1, "topic": "a+b", "encoding": "json"}]}',
                    '{"op": "advertise", "channels": [{"id": 1, "topic": "x", "encoding": "ros1"}]}'):
            ws.send(bad)
            assert next_op(ws, "status")["level"] == 2
        for bad in (b"", b"\x02abcd", b"\x01\x07\x00\x00\x00data"):
            ws.send(bad)
            assert next_op(ws, "status")["level"] == 2
        # client channels are bounded per socket
        many = [{"id": i, "topic": f"t{i}", "encoding": "json"} for i in range(1025)]
        ws.send(orjson.dumps({"op": "advertise", "channels": many}).decode())
        assert "at most 1024 client channels" in next_op(ws, "status")["message"]
    # another local account without a token gets nothing more than anyone else: 401 (above)


def test_a_client_message_over_the_limit_closes_1009_and_stores_nothing(tmp_path, redis_server, rdb):
    with live_server(make_settings(tmp_path, redis_server.url, max_message=4096)) as srv, fox_connect(srv) as ws:
        next_op(ws, "advertise")
        ws.send('{"op": "advertise", "channels": [{"id": 1, "topic": "big", "encoding": "application/octet-stream"}]}')
        ws.send(b"\x01\x01\x00\x00\x00" + b"x" * 8192)
        code, _ = expect_close(ws)
        assert code == 1009
        assert rdb.exists("big") == 0


def metric(server, name: str) -> float:
    with server.http() as http:
        for line in http.get("/metrics").text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_client_that_stops_reading_gets_the_newest_and_drops_are_counted(tmp_path, redis_server, rdb):
    settings = make_settings(tmp_path, redis_server.url, foxglove_scan_ms=100, foxglove_queue_bytes=64 * 1024)
    with live_server(settings) as srv:
        push(srv, "cam", jpeg())
        with fox_connect(srv, max_queue=1) as ws:
            while True:
                advertised = next_op(ws, "advertise")
                if any(c["topic"] == "cam" for c in advertised["channels"]):
                    break
            channel = next(c for c in advertised["channels"] if c["topic"] == "cam")
            ws.send(orjson.dumps({"op": "subscribe", "subscriptions": [{"id": 7, "channelId": channel["id"]}]}).decode())
            # the client reads nothing while far more than the socket buffers can hold is pushed
            frame = jpeg((0, 255, 0), (640, 480)) + b"\x00" * 200_000
            ids = []
            with connect(f"{srv.ws_url}/data/cam/push?ack=true&token={srv.token()}", compression=None,
                         max_size=None) as pusher:
                for i in range(300):
                    pusher.send(frame[:-4] + struct.pack("<I", i))
                    ids.append(pusher.recv(timeout=WAIT))
            wait_until(lambda: metric(srv, "ptgstore_foxglove_dropped_total") > 0, what="drops to be counted")
            # reading again: the newest entry arrives (what was dropped never does), and nothing after it
            last = None
            warnings = []
            while last is None or last[1] != entry_times(ids[-1])[0]:
                message = ws.recv(timeout=WAIT)
                if isinstance(message, str):
                    warnings.append(orjson.loads(message))
                else:
                    opcode, sub_id, log_time = struct.unpack_from("<BIQ", message)
                    assert (opcode, sub_id) == (1, 7)
                    last = (message, log_time)
            decoded = orjson.loads(last[0][13:])
            assert base64.b64decode(decoded["data"])[-4:] == struct.pack("<I", 299)
            # and the client was told, in Foxglove's problems list
            assert any(w["op"] == "status" and w["level"] == 1 and "dropped" in w["message"] for w in warnings)


def test_a_stream_seen_empty_is_advertised_again_once_its_entries_say_what_it_is(server):
    with server.http() as http:
        assert http.put("/streams/later-camera", json={"fps": 30}).status_code == 200
    with fox_connect(server) as ws:
        channels: dict[int, dict] = {}
        while not any(c["topic"] == "later-camera" for c in channels.values()):
            channels.update({c["id"]: c for c in next_op(ws, "advertise")["channels"]})
        (before,) = [c for c in channels.values() if c["topic"] == "later-camera"]
        assert before["encoding"] == "application/octet-stream"
        push(server, "later-camera", jpeg())
        assert next_op(ws, "unadvertise")["channelIds"] == [before["id"]]
        (after,) = next_op(ws, "advertise")["channels"]
        assert (after["topic"], after["schemaName"]) == ("later-camera", "foxglove.CompressedImage")
        assert after["id"] != before["id"]


def test_redis_down_is_said_in_a_status_and_streams_appear_once_it_is_back(tmp_path):
    from ptgstore.testing import RedisServer

    redis = RedisServer(tmp_path / "redis").start()
    try:
        with live_server(make_settings(tmp_path, redis.url, foxglove_scan_ms=100)) as srv:
            redis.stop()
            with fox_connect(srv) as ws:
                status = next_op(ws, "status", timeout=60)
                assert status["level"] == 2 and "streams not listed" in status["message"]
                assert next_op(ws, "advertise")["channels"] == []
                redis.start()  # (on the same port, empty)
                push(srv, "after-outage", jpeg())
                advertised = next_op(ws, "advertise", timeout=60)
                assert [c["topic"] for c in advertised["channels"]] == ["after-outage"]
    finally:
        redis.stop()
