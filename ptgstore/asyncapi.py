"""`/asyncapi.json`: the WebSocket routes described (AsyncAPI 3.0), from the routes themselves.

Like `openapi.py` for REST: each socket handler's docstring is its description (summary,
description, and a YAML block after `---`), with these keys:

    path:     {name: schema or {description}}  the address's parameters
    query:    {name: schema}  the handshake's query options (as in openapi.py, `flag: DEFAULT` included)
    raises:   [exception names of errors.TABLE]  each becomes its close code with the table's meaning
    closes:   [code] (meaning from errors.CLOSES) or {code: meaning}  the other ways the server closes
    subprotocol: the WebSocket subprotocol the client must ask for
    receive:  {message name: AsyncAPI message}  what the server takes from the client
    send:     {message name: AsyncAPI message}  what the server sends

Every socket may also close 1001 (shutdown) and 1011 (a bug); a refused handshake is an HTTP
answer (401 or 403, `{"detail": reason}`), never an upgrade.
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from starlette.routing import BaseRoute, WebSocketRoute

from . import __version__, errors
from .openapi import COMPONENTS, Undescribed, _query, parse_docstring

BINDING_VERSION = "0.1.0"


def socket_routes(routes: Iterable[BaseRoute]) -> list[WebSocketRoute]:
    return [route for route in routes if isinstance(route, WebSocketRoute)]


def describe(routes: Iterable[BaseRoute], host: str = "127.0.0.1:8000", root_path: str = "") -> dict:
    """The AsyncAPI 3.0 document of every WebSocket route in `routes`."""
    channels: dict[str, dict] = {}
    operations: dict[str, dict] = {}
    for route in socket_routes(routes):
        name = channel_name(route)
        channels[name], operations_of = channel(route, name)
        operations.update(operations_of)
    server = {"host": host, "protocol": "ws", "description": "this server (`wss` behind a TLS proxy)",
              "security": [{"$ref": f"#/components/securitySchemes/{scheme}"} for scheme in SECURITY]}
    if root_path:
        server["pathname"] = root_path
    document: dict[str, Any] = {
        "asyncapi": "3.0.0",
        "info": {"title": "ptgstore sockets", "version": __version__, "description": INTRO},
        "servers": {"ptgstore": server},
        "channels": channels,
        "operations": operations,
        "components": {"securitySchemes": SECURITY},
    }
    schemas = _referenced_schemas(document)
    if schemas:
        document["components"]["schemas"] = schemas
    return document


INTRO = """The WebSocket routes of ptgstore, generated from the server's routing table and its error table
(the REST routes: `/openapi.json`, at `/docs`; the full contract: docs/protocol.md).

A socket needs a token like any REST route: `Authorization: Bearer`, the `token` query parameter
(browsers cannot set headers on a WebSocket) or the `authorization` cookie (accepted only from an
allowed `Origin`). A refused handshake is an HTTP answer, never an upgrade: 401 (no acceptable
token, `WWW-Authenticate: Bearer`) or 403 (a cookie-only handshake from an origin not allowed),
with `{"detail": reason}`. Any other problem is a close after the handshake, with a code and a
reason of at most 120 bytes. A query option given with an empty value (`count=`) takes its
default, as on every REST route."""

SECURITY = {
    "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
               "description": "the token of `POST /token` in the `Authorization` header"},
    "tokenQuery": {"type": "httpApiKey", "name": "token", "in": "query", "description": "the token as `?token=`"},
    "cookie": {"type": "httpApiKey", "name": "authorization", "in": "cookie",
               "description": "the cookie `POST /token` sets (only from an allowed `Origin`)"},
}


def channel_name(route: WebSocketRoute) -> str:
    """A channel's key: the handler's name (`push`, `pull`, `replay`)."""
    endpoint = route.endpoint
    return re.sub(r"[^A-Za-z0-9_\-]", "_", getattr(endpoint, "__name__", type(endpoint).__name__))


def channel(route: WebSocketRoute, name: str) -> tuple[dict, dict]:
    """The channel of a socket route and its operations (AsyncAPI's `action` is the server's)."""
    summary, description, extra = parse_docstring(route.endpoint)
    if not summary or not (extra.get("send") or extra.get("receive")):
        raise Undescribed(f"socket {route.path}: its handler's docstring has no summary, or no `send:` or "
                          "`receive:` messages in a YAML block after a `---` line")
    closes = close_codes(extra.get("raises") or [], extra.get("closes") or [], route.path)
    address = route.path_format
    out: dict = {"address": address, "title": route.path_format, "summary": summary,
                 "description": "\n\n".join(filter(None, [description, _close_table(closes)]))}
    given = extra.get("path") or {}
    parameters = {}
    for param in re.findall(r"{(\w+)}", address):
        if param not in given and param != "sid":
            raise Undescribed(f"socket {route.path}: the docstring does not describe {param!r}")
        text = (given.get(param) or {}).get("description") or COMPONENTS["StreamIds"]["description"]
        parameters[param] = {"description": text}
    if parameters:
        out["parameters"] = parameters
    query = _query(extra.get("query") or {})
    binding: dict[str, Any] = {"method": "GET", "bindingVersion": BINDING_VERSION}
    if query:
        binding["query"] = {
            "type": "object",
            "properties": {p["name"]: {**p["schema"], "description": p.get("description", "")} for p in query},
        }
        required = [p["name"] for p in query if p["required"]]
        if required:
            binding["query"]["required"] = required
    if extra.get("subprotocol"):  # the client must ask for it (Sec-WebSocket-Protocol)
        binding["headers"] = {"type": "object", "required": ["Sec-WebSocket-Protocol"], "properties": {
            "Sec-WebSocket-Protocol": {"type": "string", "const": extra["subprotocol"]}}}
    out["bindings"] = {"ws": binding}
    messages: dict[str, dict] = {}
    operations: dict[str, dict] = {}
    for action, key in (("receive", "receive"), ("send", "send")):
        declared = extra.get(key) or {}
        if not declared:
            continue
        refs = []
        for message_name, message in declared.items():
            message_id = f"{message_name}"
            messages[message_id] = {"name": message_name, **message}
            refs.append({"$ref": f"#/channels/{name}/messages/{message_id}"})
        operations[f"{name}_{action}"] = {
            "action": action, "channel": {"$ref": f"#/channels/{name}"}, "messages": refs,
            "summary": f"{'the server takes' if action == 'receive' else 'the server sends'}: "
                       + ", ".join(declared),
        }
    out["messages"] = messages
    out["x-close-codes"] = {str(code): meaning for code, meaning in sorted(closes.items())}
    return out, operations


def close_codes(raises: list[str], closes, where: str) -> dict[int, str]:
    """Close code -> meaning: the table's for what the handler raises, its own closes, 1001 and 1011."""
    meanings: dict[int, list[str]] = {}
    for reply in errors.replies_named(raises, f"socket {where}"):
        meanings.setdefault(reply.close, []).append(reply.meaning)
    own = closes if isinstance(closes, dict) else {code: errors.CLOSES[code] for code in closes}
    for code, meaning in own.items():
        meanings.setdefault(int(code), []).insert(0, meaning)
    meanings.setdefault(errors.GOING_AWAY, []).append(errors.CLOSES[errors.GOING_AWAY])
    meanings.setdefault(errors.UNEXPECTED.close, []).append(errors.UNEXPECTED.meaning)
    return {code: "; ".join(dict.fromkeys(texts)) for code, texts in sorted(meanings.items())}


def _close_table(closes: dict[int, str]) -> str:
    rows = "\n".join(f"| {code} | {meaning} |" for code, meaning in closes.items())
    return "Close codes:\n\n| code | meaning |\n|---:|---|\n" + rows


def _referenced_schemas(document: dict) -> dict:
    """The shared schemas (openapi.COMPONENTS) the document refers to, and the ones they refer to."""
    wanted: dict[str, dict] = {}
    pending = set(re.findall(r'#/components/schemas/(\w+)', json.dumps(document)))
    while pending:
        name = pending.pop()
        if name in wanted:
            continue
        wanted[name] = COMPONENTS[name]
        pending |= set(re.findall(r'#/components/schemas/(\w+)', json.dumps(COMPONENTS[name]))) - set(wanted)
    return dict(sorted(wanted.items()))
