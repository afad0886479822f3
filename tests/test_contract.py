"""The contract, machine-checked: every route is described (`/openapi.json` for REST, `/asyncapi.json`
for the sockets), both documents are valid, the server answers as they say (Schemathesis against the
real server), and HTTP semantics hold (405 with the resource's full `Allow`, no route answering
another's wrong method, empty option values taking their defaults everywhere)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from starlette.routing import Mount, Route, WebSocketRoute
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from ptgstore import asyncapi, errors, openapi
from ptgstore.app import ROUTES
from ptgstore.routing import Resource, by_resource

HERE = Path(__file__).resolve().parent
PARSER_DIR = HERE / "asyncapi"  # package.json: the AsyncAPI parser, installed there by .ci/run
VALUES = {"sid": "cam", "rec_id": "rec1", "new_id": "rec2", "name": "info.json", "path": "ptgstore.js"}


def concrete(path: str) -> str:
    return re.sub(r"{(\w+)(:\w+)?}", lambda m: VALUES[m.group(1)], path)


# -- every route described ------------------------------------------------------------------------

def test_every_route_of_the_routing_table_is_described():
    rest = openapi.describe(ROUTES)
    sockets = asyncapi.describe(ROUTES)
    addresses = {channel["address"] for channel in sockets["channels"].values()}
    for route in ROUTES:
        if isinstance(route, WebSocketRoute):
            assert route.path_format in addresses, route.path
        elif isinstance(route, Mount):
            assert "get" in rest["paths"][route.path + "/{path}"], route.path
        else:
            assert isinstance(route, Route), route
            for method in route.methods - {"HEAD"}:
                operation = rest["paths"][route.path_format][method.lower()]
                assert operation["summary"] and operation["responses"], (method, route.path)
    for operations in rest["paths"].values():
        for operation in operations.values():
            assert "500" in operation["responses"] and operation["operationId"]
    assert len({op["operationId"] for ops in rest["paths"].values() for op in ops.values()}) == \
        sum(len(ops) for ops in rest["paths"].values())


async def _undocumented(request):
    return None


async def _summary_only(request):
    """A route with a summary and nothing else."""
    return None


async def _undocumented_socket(websocket):
    return None


def test_a_route_without_a_docstring_fails_the_description():
    with pytest.raises(openapi.Undescribed, match="_undocumented"):
        openapi.describe([*ROUTES, Route("/new", _undocumented, methods=["POST"])])
    with pytest.raises(openapi.Undescribed, match="no `responses:`"):
        openapi.describe([*ROUTES, Route("/new", _summary_only, methods=["POST"])])
    with pytest.raises(openapi.Undescribed, match="/new-socket"):
        asyncapi.describe([*ROUTES, WebSocketRoute("/new-socket", _undocumented_socket)])


def test_error_replies_carry_the_error_tables_meanings():
    paths = openapi.describe(ROUTES)["paths"]
    get_entries = paths["/data/{sid}"]["get"]["responses"]
    for kind in (errors.FramingError, errors.StoreUnavailable):
        reply = errors.TABLE[kind]
        assert reply.meaning in get_entries[str(reply.status)]["description"]
    assert errors.GATE[401] in get_entries["401"]["description"]
    assert "401" not in paths["/ping"]["get"]["responses"] and paths["/ping"]["get"]["security"] == []
    assert errors.TABLE[errors.TooLarge].meaning in paths["/data/{sid}"]["post"]["responses"]["413"]["description"]
    push = next(c for c in asyncapi.describe(ROUTES)["channels"].values() if c["address"] == "/data/{sid}/push")
    assert push["x-close-codes"]["1007"].startswith(errors.TABLE[errors.BadOption].meaning)
    assert "1008" in push["x-close-codes"] and "1009" in push["x-close-codes"] and "1003" in push["x-close-codes"]


def test_the_id_rules_are_in_the_schema():
    schemas = openapi.describe(ROUTES)["components"]["schemas"]
    stream_id = re.compile(schemas["StreamId"]["pattern"])
    assert schemas["StreamId"]["maxLength"] == 256 and "*" in schemas["StreamId"]["not"]["enum"]
    for good in ("main", "hololens1:imu", "glf/left", "日本"):
        assert stream_id.fullmatch(good), good
    for bad in ("a+b", "cam\x07", "cam\x85", ""):
        assert not stream_id.fullmatch(bad), bad
    recording = re.compile(schemas["RecordingId"]["pattern"])
    assert schemas["RecordingId"]["maxLength"] == 200
    assert recording.fullmatch("coffee-test-1") and recording.fullmatch("current-2")
    for bad in ("a/b", ".hidden", "a\\b", "current", "start", "x\x01"):
        assert not recording.fullmatch(bad), bad
    count = openapi.describe(ROUTES)["paths"]["/data/{sid}"]["get"]["parameters"][2]
    assert count["name"] == "count" and schemas["Count"]["maximum"] == 100_000
    put = openapi.describe(ROUTES)["paths"]["/streams/{sid}"]["put"]
    assert put["requestBody"]["required"] is True
    post = openapi.describe(ROUTES)["paths"]["/data/{sid}"]["post"]["requestBody"]
    assert post["required"] is True and post["content"]["multipart/form-data"]["schema"]["properties"]["entries"]["minItems"] == 1
    headers = openapi.describe(ROUTES)["paths"]["/data/{sid}"]["get"]["responses"]["200"]["headers"]
    assert headers["entry-offset"]["required"] is True
    mjpeg = openapi.describe(ROUTES)["paths"]["/mjpeg/{sid}"]["get"]
    assert "multipart/x-mixed-replace" in mjpeg["responses"]["200"]["content"] and "never ends" in mjpeg["summary"]


# -- HTTP semantics -------------------------------------------------------------------------------

def test_routes_of_one_path_are_one_resource():
    paths = [route.path for route in ROUTES if isinstance(route, Route)]
    assert len(paths) == len(set(paths))
    with pytest.raises(ValueError, match="routed twice"):
        by_resource([Route("/x", _undocumented, methods=["GET"]), Route("/x", _undocumented, methods=["GET"])])


def test_a_wrong_method_gets_405_with_every_method_of_the_resource(server, http):
    resources = [route for route in server.app.routes if isinstance(route, Resource)]
    assert resources
    for resource in resources:
        allowed = resource.methods
        wrong = next(m for m in ("PATCH", "POST", "PUT", "DELETE") if m not in allowed)
        reply = http.request(wrong, concrete(resource.path))
        assert reply.status_code == 405, (wrong, resource.path, reply.text)
        assert {m.strip() for m in reply.headers["allow"].split(",")} == allowed, resource.path
        assert reply.json() == {"detail": "Method Not Allowed"}
    # the cases the fuzzer found: one path, several routes
    assert set(http.request("OPTIONS", "/data/x").headers["allow"].split(", ")) == {"GET", "HEAD", "POST"}
    assert set(http.patch("/streams/x").headers["allow"].split(", ")) == {"GET", "HEAD", "PUT", "DELETE"}
    assert set(http.post("/recordings/r").headers["allow"].split(", ")) == {"GET", "HEAD", "DELETE"}


def test_no_route_answers_another_routes_wrong_method(server, http):
    # the catch-all `/recordings/{id}` used to take these as a recording id with a '/' (400)
    for method, path, allow in [("GET", "/recordings/r/hide", {"PUT"}), ("DELETE", "/recordings/r/unhide", {"PUT"}),
                                ("GET", "/recordings/r/rename/s", {"PUT"}), ("GET", "/recordings/upload/r/f", {"POST"}),
                                ("PUT", "/recordings/static/r/f", {"GET", "HEAD"}), ("GET", "/recordings/start", {"PUT"}),
                                ("DELETE", "/recordings/current", {"GET", "HEAD"}), ("GET", "/recordings/cache", {"DELETE"})]:
        reply = http.request(method, path)
        assert reply.status_code == 405, (method, path, reply.text)
        assert set(reply.headers["allow"].split(", ")) == allow, (method, path)
    assert http.get("/recordings/replay").status_code == 404  # a socket route: nothing over plain HTTP
    assert http.get("/recordings/a/b").status_code == 404


def test_token_without_its_fields_is_a_400_as_the_error_table_says(server):
    for body in ({}, {"username": ""}, {"password": "x"}):
        reply = httpx.post(server.url + "/token", data=body, timeout=10)
        assert reply.status_code == 400 and reply.json()["detail"], body
    spec = httpx.get(server.url + "/openapi.json", timeout=10).json()
    assert "400" in spec["paths"]["/token"]["post"]["responses"]
    assert "422" not in json.dumps(spec["paths"])


def test_an_empty_option_value_is_its_default_on_every_route(server, http):
    http.put("/streams/cam", json={})
    files = [("f", ("a", b"one")), ("f", ("b", b"two"))]
    ids = http.post("/data/cam", files=files).json()
    assert http.get("/streams", params={"info": ""}).json() == ["cam"]  # what the original client sends
    plain = http.get("/data/cam")
    empty = http.get("/data/cam", params={"count": "", "last_entry_id": ""})
    assert (empty.status_code, empty.content, empty.headers["entry-offset"]) == \
        (200, plain.content, plain.headers["entry-offset"])
    assert http.get("/recordings", params={"info": "", "hidden": ""}).json() == []
    assert http.get("/streams/nothing", params={"report_error": ""}).status_code == 200
    # an option given twice is malformed: which one would count?
    twice = http.get("/data/cam", params=[("count", "1"), ("count", "2")])
    assert twice.status_code == 400 and "count is given 2 times" in twice.json()["detail"]
    token = server.token()
    with connect(f"{server.ws_url}/data/cam/pull?token={token}&count=&header=&last_entry_id=0&latest=&timeout=",
                 open_timeout=10) as ws:
        assert [item[1] for item in json.loads(ws.recv(timeout=10))] == ids[:1]  # count: its default, 1
    with connect(f"{server.ws_url}/data/cam/pull?token={token}&ack=true&ack=false", open_timeout=10) as ws:
        with pytest.raises(Exception):
            ws.recv(timeout=10)
        assert ws.close_code == errors.INVALID and "ack is given 2 times" in ws.close_reason



# a malformed option of each socket route (its handshake query)
BAD_OPTIONS = {"/data/{sid}/push": "ack=perhaps", "/data/{sid}/pull": "latest=perhaps", "/foxglove": "images=gif",
               "/recordings/replay": "rec_id=rec1&fullspeed=perhaps"}


def _close_of(server, address: str, query: str) -> int:
    url = f"{server.ws_url}{concrete(address)}?token={server.token()}&{query}"
    subprotocols = ["foxglove.websocket.v1"] if address == "/foxglove" else None
    with connect(url, open_timeout=10, subprotocols=subprotocols) as ws:  # type: ignore[arg-type]
        with pytest.raises(ConnectionClosed):
            while True:
                ws.recv(timeout=10)
    assert ws.close_code is not None
    return ws.close_code


def test_a_bad_option_closes_with_the_code_the_served_documents_give(server):
    """What /asyncapi.json, /docs/sockets and /openapi.json say of a malformed option is what a real
    socket and a real request answer (once, the text said 1008 where the server closed 1007)."""
    meaning = errors.TABLE[errors.BadOption].meaning
    document = httpx.get(server.url + "/asyncapi.json", timeout=10).json()
    channels = {channel["address"]: channel for channel in document["channels"].values()}
    assert set(channels) == set(BAD_OPTIONS), "a new socket route: add its malformed option above"
    for address, channel in channels.items():
        closed = _close_of(server, address, BAD_OPTIONS[address])
        assert [int(code) for code, text in channel["x-close-codes"].items() if meaning in text] == [closed], address
        # the close-code table of the channel's description, and the page that renders it
        assert re.findall(r"\| (\d+) \| [^\n]*" + re.escape(meaning), channel["description"]) == [str(closed)]
    page = httpx.get(server.url + "/docs/sockets", timeout=10).text
    rows = re.findall(r"<td>(\d+)</td><td>[^\n]*" + re.escape(meaning.split("(")[0]), page)
    assert rows and set(rows) == {str(errors.INVALID)} == {str(_close_of(server, "/data/{sid}/pull", "count=0"))}
    # the REST side: the status /openapi.json lists with that meaning is the real answer
    spec = httpx.get(server.url + "/openapi.json", timeout=10).json()
    answer = httpx.get(server.url + "/streams", params={"info": "perhaps"}, timeout=10,
                       headers={"Authorization": f"Bearer {server.token()}"})
    documented = [status for status, reply in spec["paths"]["/streams"]["get"]["responses"].items()
                  if meaning in reply.get("description", "")]
    assert documented == [str(answer.status_code)] == ["400"]
    assert not re.search(r"1008[^.]*(malformed|bad) (query )?option", json.dumps(spec) + json.dumps(document))


# -- the documents, served and valid --------------------------------------------------------------

def _parser() -> Path | None:
    if shutil.which("node") is None or not (PARSER_DIR / "node_modules" / "@asyncapi" / "parser").is_dir():
        if os.environ.get("CI"):
            pytest.fail("CI needs node and the AsyncAPI parser (.ci/run installs them into tests/asyncapi)")
        return None
    return PARSER_DIR / "validate.mjs"


def _validate(document: dict, tmp_path: Path) -> subprocess.CompletedProcess:
    validate = _parser()
    if validate is None:
        pytest.skip("no node, or the AsyncAPI parser is not installed (cd tests/asyncapi && npm ci)")
    path = tmp_path / "asyncapi.json"
    path.write_text(json.dumps(document))
    return subprocess.run(["node", str(validate), str(path)], capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_the_asyncapi_document_passes_the_asyncapi_parser(server, tmp_path):
    document = httpx.get(server.url + "/asyncapi.json", timeout=10).json()
    assert document["asyncapi"].startswith("3.")
    assert {c["address"] for c in document["channels"].values()} >= \
        {"/data/{sid}/push", "/data/{sid}/pull", "/recordings/replay"}
    result = _validate(document, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "valid AsyncAPI 3.0.0" in result.stdout
    # the parser can fail: an operation naming a message its channel does not have
    broken = json.loads(json.dumps(document))
    broken["operations"]["push_receive"]["messages"].append({"$ref": "#/channels/push/messages/nothing"})
    assert _validate(broken, tmp_path).returncode == 1


def test_the_sockets_page_renders_the_asyncapi_document(server):
    page = httpx.get(server.url + "/docs/sockets", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"] and "<script" not in page.text
    for address in ("/data/{sid}/push", "/data/{sid}/pull", "/recordings/replay"):
        assert f"<code>{address}</code>" in page.text
    assert "<td>1007</td>" in page.text and "<code>last_entry_id</code>" in page.text
    assert 'href="/asyncapi.json"' in page.text
    assert "/docs/sockets" in httpx.get(server.url + "/openapi.json", timeout=10).json()["info"]["description"]


# -- the server answers as the document says ------------------------------------------------------

@pytest.mark.fuzz
@pytest.mark.timeout(300)
def test_schemathesis_finds_no_failure(server, tmp_path):
    """Every operation of /openapi.json fuzzed against the real server, every check on (none named on
    the command line: Schemathesis then runs all of them), a stateful phase driven by the document's
    links (PUT a stream -> read it -> delete it; start a recording -> stop -> get it). The few
    exceptions are in tests/schemathesis.toml, each with its reason."""
    def schemathesis(phases: str, examples: int) -> str:
        # a fixed seed: the same bounded run every time (a failure is reproducible, never a flake)
        command = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(HERE / "schemathesis.toml"), "run",
                   server.url + "/openapi.json", "--header", f"Authorization: Bearer {server.token()}",
                   "--phases", phases, "--max-examples", str(examples), "--seed", "1", "--request-timeout", "10",
                   "--no-color"]
        result = subprocess.run(command, capture_output=True, text=True, timeout=140, cwd=tmp_path)
        out = result.stdout + result.stderr
        assert result.returncode == 0, out[-20_000:]
        return out

    out = schemathesis("examples,coverage,fuzzing", 20)
    tested = re.search(r"Selected:\s+(\d+)/(\d+)\s+Tested:\s+(\d+)", out)
    assert tested and tested.group(1) == tested.group(3), out[-5000:]  # every operation but the one disabled
    assert int(tested.group(2)) - int(tested.group(1)) == 1, out[-5000:]  # (MJPEG: see schemathesis.toml)
    # the links alone (links the fuzzing phase infers are Schemathesis's guesses, not the document's)
    out = schemathesis("stateful", 30)
    covered = re.search(r"API Links:\s+(\d+) covered / (\d+) selected / (\d+) total", out)
    assert covered and covered.group(1) == covered.group(2) == covered.group(3), out[-5000:]  # every link followed
