"""The lab of the permission tests: a `users` server with a headset that may only push `hl1:*`,
a viewer that may only read `*:main` and an admin, and helpers to call it (the `lab` fixture itself is in conftest.py)."""
from __future__ import annotations

import httpx
from websockets.exceptions import ConnectionClosed

from ptgstore.permissions import Rights
from ptgstore.users import hash_password, make_record, write_users
from support.ws import expect_close, ws_connect

SEEDED = ["hl1:main", "hl1:depth", "hl2:main", "lab:imu"]
JPEG = b"\xff\xd8\xff\xe0 a tiny jpeg"


def users_file(path, **accounts: Rights | None):
    """Write a users file; each account's password is its name."""
    write_users(path, {name: make_record(hash_password(name), rights or Rights())
                       for name, rights in accounts.items()})


def client(server, token: str) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)


def forbidden(reply: httpx.Response, *words: str) -> bool:
    detail = reply.json().get("detail", "") if reply.status_code == 403 else ""
    return reply.status_code == 403 and detail.startswith("forbidden:") and all(w in detail for w in words)


def socket_refusal(server, token: str, path: str, send: list | None = None, **query):
    """The close code and reason a socket ends with (after sending `send`)."""
    with ws_connect(server, path, token=token, **query) as ws:
        for message in send or []:
            try:
                ws.send(message)
            except ConnectionClosed:
                break
        return expect_close(ws)


def derive(server, token: str, **fields) -> httpx.Response:
    return httpx.post(server.url + "/token/derive", headers={"Authorization": f"Bearer {token}"},
                      data=fields, timeout=30)


def record(server, token: str, name: str, streams: str | None) -> httpx.Response:
    """Start a recording as `token`, push an image to each of its streams (as the admin), stop it."""
    with client(server, token) as http:
        started = http.put("/recordings/start", params={"rec_id": name, **({"sid": streams} if streams else {})})
        if started.status_code != 200:
            return started
        with client(server, server.token("admin")) as admin:
            for sid in (streams or "hl1:main+lab:imu").split("+"):
                assert admin.post(f"/data/{sid}", files=[("f", ("f", JPEG))]).status_code == 200
        stopped = http.put("/recordings/stop")
        assert stopped.json() == 1, stopped.text
        return started


def stream_ids(rdb) -> set[str]:
    return {key.decode() for key in rdb.keys("*") if rdb.type(key) == b"stream"} - {"event:recording:id"}
