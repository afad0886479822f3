"""REST routes of PROTOCOL.md against a real Redis: streams, metadata, upload, every last_entry_id form."""
import os
import re

import httpx
import orjson
import pytest

from support.servers import LiveServer, live_server, make_settings


def upload(http, sid, *payloads, names=None):
    files = [("entries", (names[i] if names else f"f{i}", data)) for i, data in enumerate(payloads)]
    reply = http.post(f"/data/{sid}", files=files)
    assert reply.status_code == 200, reply.text
    return reply.json()


def entries(reply):
    """(sid, id, bytes) from a GET /data reply, with offsets checked against the body."""
    header = orjson.loads(reply.headers["entry-offset"])
    body = reply.content
    starts = [item[2] for item in header]
    assert starts == sorted(starts) and (not starts or starts[0] == 0)
    ends = starts[1:] + [len(body)]
    return [(sid, entry_id, body[start:end]) for (sid, entry_id, start), end in zip(header, ends)]


def test_upload_is_byte_exact_in_order_including_empty_and_large(http):
    big = os.urandom(5 * 1024 * 1024)
    payloads = [b"", b"\x00\xff\x00", big, b"last"]
    ids = upload(http, "cam", *payloads)
    assert len(ids) == 4 and ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-"))))
    got = entries(http.get("/data/cam", params={"last_entry_id": "0", "count": "10"}))
    assert got == [("cam", i, p) for i, p in zip(ids, payloads)]
    reply = http.get("/data/cam", params={"last_entry_id": "0", "count": "10"})
    assert reply.headers["content-type"] == "application/octet-stream"


def test_star_routes_each_part_by_filename(http, rdb):
    ids = upload(http, "*", b"left", b"right", b"left2", names=["glf/left", "grf", "glf/left"])
    assert [f[b"d"] for _, f in rdb.xrange("glf/left")] == [b"left", b"left2"]
    assert [f[b"d"] for _, f in rdb.xrange("grf")] == [b"right"]
    assert len(ids) == 3


def test_upload_refusals(http):
    assert http.post("/data/cam", content=b"raw", headers={"content-type": "application/octet-stream"}).status_code == 400
    empty = http.post("/data/cam", data={"field": "not a file"}, files=[])
    assert empty.status_code == 400
    bad_name = http.post("/data/*", files=[("e", ("a+b", b"x"))])
    assert bad_name.status_code == 400 and "+" in bad_name.json()["detail"]


def test_body_over_the_limit_is_413(tmp_path, rdb, redis_server):
    from support.servers import live_server, make_settings

    with live_server(make_settings(tmp_path, redis_server.url, max_message=1000)) as live, live.http() as http:
        reply = http.post("/data/cam", files=[("e", ("e", b"x" * 2000))])
        assert reply.status_code == 413 and "1000" in reply.json()["detail"]
        assert rdb.exists("cam") == 0


@pytest.fixture
def filled(http):
    return {"a": upload(http, "a", *[b"a%d" % i for i in range(5)]),
            "b": upload(http, "b", *[b"b%d" % i for i in range(3)])}


def test_last_entry_id_star_gives_newest_oldest_first(http, filled):
    got = entries(http.get("/data/a", params={"count": "2"}))
    assert got == [("a", filled["a"][3], b"a3"), ("a", filled["a"][4], b"a4")]
    assert entries(http.get("/data/a")) == [("a", filled["a"][4], b"a4")]  # defaults: *, count 1


@pytest.mark.parametrize("start", ["0", "-", "0-0"])
def test_last_entry_id_from_the_beginning(http, filled, start):
    got = entries(http.get("/data/a", params={"last_entry_id": start, "count": "3"}))
    assert [e[2] for e in got] == [b"a0", b"a1", b"a2"]


def test_last_entry_id_explicit_is_exclusive(http, filled):
    got = entries(http.get("/data/a", params={"last_entry_id": filled["a"][1], "count": "100"}))
    assert [e[1] for e in got] == filled["a"][2:]
    ms_only = filled["a"][0].split("-")[0]
    assert len(entries(http.get("/data/a", params={"last_entry_id": ms_only, "count": "100"}))) >= 4


def test_last_entry_id_dollar_is_nothing_yet(http, filled):
    reply = http.get("/data/a", params={"last_entry_id": "$"})
    assert reply.status_code == 200 and reply.content == b"" and reply.headers["entry-offset"] == "[]"


def test_several_streams_with_one_cursor_each(http, filled):
    # '+' unencoded in a query string arrives as a space: both must work
    for raw in (f"{filled['a'][2]}+0", f"{filled['a'][2]}%2B0"):
        reply = http.get(f"/data/a+b?count=10&last_entry_id={raw}")
        got = entries(reply)
        assert [e for e in got if e[0] == "a"] == [("a", filled["a"][3], b"a3"), ("a", filled["a"][4], b"a4")]
        assert [e[2] for e in got if e[0] == "b"] == [b"b0", b"b1", b"b2"]


def test_fewer_cursors_than_streams_repeat(http, filled):
    got = entries(http.get("/data/a+b", params={"last_entry_id": "0", "count": "1"}))
    assert [(e[0], e[2]) for e in got] == [("a", b"a0"), ("b", b"b0")]


def test_unknown_stream_reads_empty(http):
    reply = http.get("/data/nothing-here", params={"last_entry_id": "0"})
    assert reply.status_code == 200 and reply.content == b"" and reply.headers["entry-offset"] == "[]"


@pytest.mark.parametrize("params", [
    {"last_entry_id": "abc"}, {"last_entry_id": "12-x"}, {"last_entry_id": "١٢-٣"},
    {"last_entry_id": "1+2+3"}, {"count": "0"}, {"count": "-1"}, {"count": "ten"}, {"count": "٣"},
    {"last_entry_id": "99999999999999999999999-0"},
])
def test_malformed_reads_are_400_with_a_reason(http, filled, params):
    reply = http.get("/data/a", params=params)
    assert reply.status_code == 400, reply.text
    assert reply.json()["detail"]


@pytest.mark.parametrize("sid", ["a%2Bb%2B", "%01ctl", "x" * 300])
def test_invalid_stream_ids_are_400(http, sid):
    for reply in (http.get(f"/streams/{sid}"), http.get(f"/data/{sid}"), http.put(f"/streams/{sid}", json={})):
        assert reply.status_code == 400, (sid, reply.text)


def test_non_latin1_stream_ids_round_trip_in_the_entry_offset_header(http, rdb):
    for sid in ("\u65e5", "cam\u65e5\U0001f600", "\u00e9"):
        upload(http, sid, b"frame " + sid.encode())
    reply = http.get("/data/\u65e5+cam\u65e5\U0001f600+\u00e9", params={"count": "5"})
    assert reply.status_code == 200, reply.text
    assert reply.headers.raw and all(value.isascii() for _, value in reply.headers.raw)
    got = entries(reply)
    assert [(sid, data) for sid, _, data in got] == [
        (sid, b"frame " + sid.encode()) for sid in ("\u65e5", "cam\u65e5\U0001f600", "\u00e9")]
    alone = http.get("/data/\u65e5")
    assert alone.status_code == 200 and entries(alone)[0][0] == "\u65e5"


def test_valid_stream_ids_with_slashes_and_colons(http, rdb):
    for sid in ("glf/left", "hololens1:imu", "main", "d\u00e9pth"):
        upload(http, sid, b"x")
        assert entries(http.get(f"/data/{sid}"))[0][0] == sid
    assert http.get("/streams").json() == sorted(["glf/left", "hololens1:imu", "main", "d\u00e9pth"])


# -- streams and metadata ----------------------------------------------------------------------

def test_put_creates_a_listed_stream_and_merges_metadata(http):
    assert http.put("/streams/cam", json={"fps": 30, "kind": "jpeg"}).json() == {"fps": 30, "kind": "jpeg"}
    assert http.get("/streams").json() == ["cam"]
    assert http.put("/streams/cam", json={"fps": 60}).json() == {"fps": 60, "kind": "jpeg"}
    assert http.put("/streams/cam?override=true", json={"w": 1}).json() == {"w": 1}
    info = http.get("/streams/cam").json()
    assert info["meta"] == {"w": 1} and info["length"] == 0 and info["first-entry"] is None


@pytest.mark.parametrize("body,words", [(b"[1,2]", "an array"), (b"{nope", "JSON object"), (b'"text"', "a string"),
                                        (b"", "empty"), (b"  \n", "empty"), (b"null", "null"), (b"7", "a number")])
def test_put_refuses_non_objects(http, body, words):
    reply = http.put("/streams/cam", content=body, headers={"content-type": "application/json"})
    assert reply.status_code == 400 and words in reply.json()["detail"]
    assert http.get("/streams").json() == []


def test_put_without_a_body_is_400(http):
    reply = http.request("PUT", "/streams/cam")
    assert reply.status_code == 400 and "empty" in reply.json()["detail"]
    assert http.get("/streams").json() == []


@pytest.mark.parametrize("max_len", [0, -3, "10", 1.5, True])
def test_put_refuses_bad_max_len(http, max_len):
    reply = http.put("/streams/cam", json={"max_len": max_len})
    assert reply.status_code == 400 and "max_len" in reply.json()["detail"]


def test_max_len_governs_retention_of_later_writes(http, rdb):
    http.put("/streams/short", json={"max_len": 5})
    for _ in range(6):
        upload(http, "short", *[b"x"] * 100)
        upload(http, "default", *[b"x"] * 300)
    # MAXLEN ~ trims whole nodes: at least max_len kept, far fewer than written
    assert 5 <= rdb.xlen("short") < 300
    assert 1000 <= rdb.xlen("default") < 1800


def test_info_objects(http, filled):
    info = http.get("/streams/a").json()
    assert info["sid"] == "a" and info["length"] == 5
    assert info["first-entry"] == filled["a"][0] and info["last-entry"] == filled["a"][4]
    assert info["first-entry-time"].endswith("+00:00") and info["last-entry-time"].startswith("20")
    assert "last-generated-id" in info and "radix-tree-keys" in info
    listed = http.get("/streams?info=true").json()
    assert [i["sid"] for i in listed] == ["a", "b"] and listed[1]["length"] == 3


def test_unknown_stream_info(http):
    reply = http.get("/streams/ghost")
    assert reply.status_code == 200 and "error" in reply.json() and reply.json()["sid"] == "ghost"
    strict = http.get("/streams/ghost", params={"report_error": "true"})
    assert strict.status_code == 400 and "ghost" in strict.json()["detail"]


def test_delete_one_and_several(http, filled, rdb):
    http.put("/streams/a", json={"k": 1})
    assert http.delete("/streams/a+b").json() == {"deleted": ["a", "b"]}
    assert http.get("/streams").json() == []
    assert rdb.exists("a", "b") == 0
    assert http.delete("/streams/a").json() == {"deleted": []}


def test_key_prefix_keeps_streams_apart(tmp_path, rdb, redis_server):
    from support.servers import live_server, make_settings

    rdb.xadd("foreign", {"d": b"not ours"})
    with live_server(make_settings(tmp_path, redis_server.url, key_prefix="lab1:")) as live, live.http() as http:
        upload(http, "cam", b"ours")
        assert http.get("/streams").json() == ["cam"]
    assert rdb.exists("lab1:cam") == 1


# -- docs --------------------------------------------------------------------------------------

def test_openapi_describes_every_rest_route(server, http):
    import httpx

    spec = httpx.get(server.url + "/openapi.json").json()
    assert spec["openapi"].startswith("3.")
    for path, methods in {"/token": ["post"], "/ping": ["get"], "/streams": ["get"],
                          "/streams/{sid}": ["get", "put", "delete"], "/data/{sid}": ["get", "post"]}.items():
        for method in methods:
            assert method in spec["paths"][path], (path, method)
    sockets = httpx.get(server.url + "/asyncapi.json").json()
    assert {c["address"] for c in sockets["channels"].values()} >= {"/data/{sid}/push", "/data/{sid}/pull"}
    page = httpx.get(server.url + "/docs")
    assert page.status_code == 200 and "/docs/static/swagger-ui-bundle.js" in page.text
    assert "http" not in page.text.split("<body>")[1].replace("http-equiv", "")  # nothing from a CDN
    script = httpx.get(server.url + "/docs/static/swagger-ui-bundle.js")
    assert script.status_code == 200 and len(script.content) > 100_000
    assert httpx.get(server.url + "/docs/static/swagger-ui.css").status_code == 200


def test_docs_serve_only_what_the_page_loads(server):
    # the bundle's stock index.html fetches a demo spec from the internet
    for name in ("index.html", "swagger-initializer.js", "oauth2-redirect.html", "swagger-ui.js.map", "../secret"):
        reply = httpx.get(server.url + "/docs/static/" + name)
        assert reply.status_code == 404, name
    assert "validatorUrl: null" in httpx.get(server.url + "/docs").text  # no badge from validator.swagger.io


def _docs_urls(page: str) -> list[str]:
    return re.findall(r'(?:href|src)="([^"]+)"|url: "([^"]+)"', page)


def test_docs_under_a_proxy_prefix_from_the_setting(tmp_path, redis_server, rdb):
    with live_server(make_settings(tmp_path, redis_server.url, root_path="/lab/store")) as live:
        page = httpx.get(live.url + "/docs").text  # the proxy strips /lab/store
        urls = [a or b for a, b in _docs_urls(page)]
        assert urls == ["/lab/store/docs/static/swagger-ui.css", "/lab/store/docs/static/swagger-ui-bundle.js",
                        "/lab/store/openapi.json"]
        assert httpx.get(live.url + "/openapi.json").json()["servers"] == [{"url": "/lab/store"}]


def test_docs_under_uvicorns_root_path(tmp_path, redis_server, rdb):
    live = LiveServer(make_settings(tmp_path, redis_server.url))
    live.server.config.root_path = "/store"  # as `uvicorn --root-path /store`: prepended to every path
    live.start()
    try:
        urls = [a or b for a, b in _docs_urls(httpx.get(live.url + "/docs").text)]
        assert urls == ["/store/docs/static/swagger-ui.css", "/store/docs/static/swagger-ui-bundle.js",
                        "/store/openapi.json"]
        for url in urls:
            assert httpx.get(live.url + url[len("/store"):]).status_code == 200, url
        assert httpx.get(live.url + "/ping").json() is True  # public paths stay public
        with live.http() as http:
            upload(http, "cam", b"x")
            assert http.get("/data/cam").content == b"x"
        assert httpx.get(live.url + "/streams").status_code == 401
    finally:
        live.stop()


def test_settings_refuse_a_root_path_that_is_not_a_path():
    from ptgstore.settings import Settings, SettingsError

    assert Settings.from_env({"PTGSTORE_ROOT_PATH": "store/"}).root_path == "/store"
    assert Settings.from_env({"PTGSTORE_ROOT_PATH": "/"}).root_path == ""
    for bad in ('/a"b', "/a b", "/<script>", "//x"):
        with pytest.raises(SettingsError, match="PTGSTORE_ROOT_PATH"):
            Settings.from_env({"PTGSTORE_ROOT_PATH": bad})
