"""`/openapi.json` built from the routes themselves: each handler's docstring and the one error table.

A handler's docstring is its description. Its first line is the summary, the paragraphs after it
the description, and an optional YAML block after a line `---` holds the rest as OpenAPI, with
a few shorthands:

    query:      {name: schema}  query parameters (`description` and `required` taken out of the schema;
                `flag: false` is a true/false option and its default)
    path:       {name: schema name in COMPONENTS or a schema}  (default: by name, see PATH_SCHEMAS)
    raises:     [exception names of errors.TABLE]  each becomes its status with the table's meaning
    responses:  as OpenAPI; a plain string is a description; an error status (>= 400) as a string
                is added to that status's meanings

Everything else (`requestBody`, `security`, ...) is copied into the operation as written. Path
parameters, the bearer requirement, the gate's 401/403, 413 for bodies and 500 are added from the
routing table, auth.py and errors.py. A route without a docstring, or whose YAML block has no `responses`, is an error (`Undescribed`).
"""
from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterable
from typing import Any

import yaml
from starlette.routing import BaseRoute, Mount, Route

from . import __version__, errors
from .auth import PUBLIC_PATHS, PUBLIC_PREFIXES
from .framing import MAX_COUNT, MAX_STREAM_ID_BYTES, RESERVED_STREAM_IDS
from .recordings.catalogue import MAX_ID_BYTES as MAX_RECORDING_ID_BYTES
from .recordings.catalogue import RESERVED_IDS as RESERVED_RECORDING_IDS
from .routing import endpoints

_NO_CONTROL = r"\x00-\x1f\x7f-\x9f"
_ID_CHAR = f"[^+{_NO_CONTROL}]"
_BACKSLASH = "\\\\"  # a backslash, escaped for the regular expression
# in a list `a+b`: an element that is `*` or a reserved id
_NOT_AN_ID = "(?!(?:" + "|".join(re.escape(sid) for sid in sorted({"*", *RESERVED_STREAM_IDS})) + ")(?:\\+|$))"
ERROR = {"type": "object", "required": ["detail"], "properties": {"detail": {"type": "string"}}}
COMPONENTS: dict[str, dict] = {
    "StreamId": {
        "type": "string", "minLength": 1, "maxLength": MAX_STREAM_ID_BYTES,
        # a trailing `/` in a path is dropped (`/streams/a/` is `/streams/a`)
        "pattern": f"^{_ID_CHAR}*[^+/{_NO_CONTROL}]$",
        "not": {"enum": sorted({"*", *RESERVED_STREAM_IDS})},
        "description": f"a stream id: non-empty UTF-8 of at most {MAX_STREAM_ID_BYTES} bytes (JSON Schema's "
                       "`maxLength` counts characters: a non-ASCII id meets the byte limit first), without "
                       "`+` or control characters, not `*` nor a reserved id "
                       f"({', '.join(sorted(RESERVED_STREAM_IDS))}); in a path, not ending in `/`",
    },
    "StreamIds": {
        "type": "string", "minLength": 1,
        "pattern": f"^{_NOT_AN_ID}{_ID_CHAR}+(\\+{_NOT_AN_ID}{_ID_CHAR}+)*(?<!/)$",
        "not": {"enum": sorted({"*", *RESERVED_STREAM_IDS})},
        "description": "one stream id, or several joined by `+` (`a+b+c`), each a stream id",
    },
    "StreamList": {
        "type": "string", "minLength": 1,
        "pattern": f"^{_NOT_AN_ID}[^+ {_NO_CONTROL}]+(\\+{_NOT_AN_ID}[^+ {_NO_CONTROL}]+)*$",
        "not": {"enum": sorted({"*", *RESERVED_STREAM_IDS})},
        "description": "stream ids joined by `+` (in a query a space is a `+` too)",
    },
    "Error": ERROR,
    "Derive": {
        "type": "object", "additionalProperties": False,
        "properties": {
            "read": {"type": "array", "maxItems": 32, "items": {"type": "string", "pattern": f"^{_ID_CHAR}+$"}},
            "write": {"type": "array", "maxItems": 32, "items": {"type": "string", "pattern": f"^{_ID_CHAR}+$"}},
            "admin": {"type": "boolean", "default": False},
            "ttl": {"type": "integer", "minimum": 1, "description": "seconds"},
        },
        "description": "what the new token may do: stream-id glob patterns to read and write (each at most "
                       "256 bytes, at most 32 per list, the whole scope at most 2048 bytes of JSON), admin, "
                       "and its lifetime; at least one pattern or admin=true",
    },
    "Credentials": {"type": "object", "required": ["username", "password"],
                    "properties": {"username": {"type": "string", "minLength": 1},
                                   "password": {"type": "string", "format": "password"}}},
    "Flag": {
        "type": "string", "default": "false",
        "pattern": "^([Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee]|[Yy][Ee][Ss]|[Nn][Oo]|[Oo][Nn]|[Oo][Ff][Ff]|1|0)$",
        "description": "true or false (also 1/0, yes/no, on/off, in any case); anything else is malformed",
    },
    "Count": {"type": "integer", "minimum": 1, "maximum": MAX_COUNT, "default": 1,
              "description": f"at most this many entries per stream (1 to {MAX_COUNT})"},
    "Cursor": {
        "type": "string", "pattern": "^([*$-]|[0-9]{1,19}(-[0-9]{1,19})?)$",
        "description": "where to start: `*` the newest `count` entries, `$` only entries newer than now, "
                       "`0` or `-` from the beginning, or an entry id (`ms-seq` or `ms`): entries strictly "
                       "after it. Several streams take one value each, joined by `+` (fewer values repeat)",
    },
    "EntryId": {"type": "string", "pattern": "^[0-9]+-[0-9]+$", "description": "`<milliseconds>-<sequence>`"},
    "StreamInfo": {
        "type": "object", "required": ["sid", "meta", "length", "first-entry", "last-entry"],
        "properties": {
            "sid": {"type": "string"}, "meta": {"type": "object"}, "length": {"type": "integer", "minimum": 0},
            "first-entry": {"type": "string", "nullable": True}, "last-entry": {"type": "string", "nullable": True},
            "first-entry-time": {"type": "string", "nullable": True},
            "last-entry-time": {"type": "string", "nullable": True},
        },
        "description": "a stream's metadata, length, first and last entry ids and their ISO 8601 times, "
                       "and what Redis reports (XINFO STREAM)",
    },
    "RecordingInfo": {
        "type": "object", "required": ["name", "active", "hidden", "streams", "files", "size"],
        "properties": {"name": {"type": "string"}, "active": {"type": "boolean"}, "hidden": {"type": "boolean"},
                       "streams": {"type": "object"}, "files": {"type": "array", "items": {"type": "string"}},
                       "size": {"type": "integer"}},
        "description": "a recording: its streams (count, bytes, first and last entries, gaps), files, size, "
                       "duration, gaps, start and stop, and `error` when a write failure stopped it",
    },
    "RecordingId": {
        "type": "string", "minLength": 1, "maxLength": MAX_RECORDING_ID_BYTES,
        # the reserved words as a lookahead, not `not: enum`: a fuzzer's "wrong" id `cache` would be
        # `DELETE /recordings/cache`, a route of its own that answers 200
        "pattern": f"^(?!(?:{'|'.join(sorted(RESERVED_RECORDING_IDS))})$)"
                   f"[^./{_BACKSLASH}{_NO_CONTROL}][^/{_BACKSLASH}{_NO_CONTROL}]*$",
        "description": f"a recording id: non-empty UTF-8 of at most {MAX_RECORDING_ID_BYTES} bytes, without `/`, "
                       "`\\` or control characters, not starting with `.`, not one of "
                       f"{', '.join(sorted(RESERVED_RECORDING_IDS))}",
    },
    "FileName": {
        "type": "string", "minLength": 1, "maxLength": MAX_RECORDING_ID_BYTES,
        "pattern": f"^[^./{_BACKSLASH}{_NO_CONTROL}][^/{_BACKSLASH}{_NO_CONTROL}]*$",
        "description": f"a file of a recording: non-empty UTF-8 of at most {MAX_RECORDING_ID_BYTES} bytes, "
                       "without `/`, `\\` or control characters, not starting with `.`",
    },
}
EMPTY = {"type": "string", "maxLength": 0, "description": "empty: the option's default"}
PATH_SCHEMAS = {"sid": "StreamId", "rec_id": "RecordingId", "new_id": "RecordingId", "name": "FileName"}  # a path parameter's schema when the docstring does not name one


class Undescribed(ValueError):
    """A route whose handler has no docstring: the API description would miss it."""


def parse_docstring(func: Callable) -> tuple[str, str, dict]:
    """(summary, description, the YAML block's mapping) of a handler's docstring."""
    doc = inspect.getdoc(func) or ""
    text, *block = re.split(r"^---[ \t]*$", doc, maxsplit=1, flags=re.M)
    head, _, body = text.strip().partition("\n\n")
    try:
        extra = yaml.safe_load(block[0]) if block else None
    except yaml.YAMLError as exc:
        raise ValueError(f"{func!r}: the block after --- is not YAML: {exc}") from None
    if extra is not None and not isinstance(extra, dict):
        raise ValueError(f"{func!r}: the block after --- is not a mapping")
    return " ".join(head.split()), body.strip(), extra or {}


def describe(routes: Iterable[BaseRoute], root_path: str = "") -> dict:
    """The OpenAPI 3.0 document of every HTTP route in `routes` (mounts of static files excepted)."""
    paths: dict[str, dict] = {}
    for route in routes:
        if isinstance(route, Mount):  # files: described by the mounted app's docstring
            handlers, path = {"GET": route.app}, route.path + "/{path}"
        elif isinstance(route, Route):
            handlers, path = endpoints(route), route.path_format
        else:
            continue
        for method, handler in handlers.items():
            paths.setdefault(path, {})[method.lower()] = operation(path, method, handler)
    spec = {
        "openapi": "3.0.3",
        "info": {"title": "ptgstore", "version": __version__, "description": INTRO.replace("{prefix}", root_path)},
        "components": {
            "schemas": COMPONENTS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        },
        "security": [{"bearer": []}],
        "paths": paths,
    }
    if root_path:
        spec["servers"] = [{"url": root_path}]
    return spec


INTRO = """Sensor frames over REST and WebSockets into Redis Streams. This document is generated from the
server's routing table and its error table.

The WebSocket routes (push, pull, replay, Foxglove, ...) are described by the AsyncAPI document `/asyncapi.json`,
shown at [/docs/sockets]({prefix}/docs/sockets). The full contract, with the reasons, is docs/protocol.md.

Tokens: `Authorization: Bearer`, the `token` query parameter, or the `authorization` cookie. Every
error reply is `{"detail": reason}`. A query option given with an empty value (`info=`, as the
original client sends "not given") takes its default, on every route. Paths work with and without
a trailing slash."""


def operation_id(handler: Callable) -> str:
    """`module.function` (`streams.get_stream`): what OpenAPI links name an operation by."""
    name = getattr(handler, "__name__", type(handler).__name__)
    return f"{handler.__module__.rpartition('.')[2]}.{name}"


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def operation(path: str, method: str, handler: Callable) -> dict:
    """One operation of the document, from the handler's docstring, the route and the error tables."""
    summary, description, extra = parse_docstring(handler)
    where = f"{method} {path}"
    if not summary:
        raise Undescribed(f"{where}: {handler.__module__}.{handler.__qualname__} has no docstring")
    op: dict[str, Any] = {"summary": summary, "operationId": operation_id(handler)}
    if description:
        op["description"] = description
    op["parameters"] = _path_parameters(path, extra.pop("path", {}) or {}, where) + _query(extra.pop("query", {}) or {})
    if not op["parameters"]:
        del op["parameters"]
    raises = extra.pop("raises", []) or []
    responses = extra.pop("responses", {}) or {}
    if not responses:  # a client (and a fuzzer) needs at least what a success looks like
        raise Undescribed(f"{where}: {handler.__module__}.{getattr(handler, '__name__', handler)}'s docstring has "
                          "no `responses:` in a YAML block after a `---` line")
    op.update(extra)
    if is_public(path) and "security" not in op:
        op["security"] = []
    op["responses"] = _responses(responses, raises, where, protected=op.get("security") != [],
                                 body="requestBody" in op, path_params="{" in path)
    return op


def _path_parameters(path: str, given: dict, where: str) -> list[dict]:
    out = []
    for name in re.findall(r"{(\w+)}", path):
        schema = given.get(name, PATH_SCHEMAS.get(name))
        if schema is None:
            raise Undescribed(f"{where}: the docstring does not describe the path parameter {name!r}")
        if isinstance(schema, str):
            schema = {"$ref": f"#/components/schemas/{schema}"}
        schema = dict(schema)
        description = schema.pop("description", None)
        parameter = {"name": name, "in": "path", "required": True, "schema": schema}
        if description:
            parameter["description"] = description
        out.append(parameter)
    return out


def _query(options: dict) -> list[dict]:
    out = []
    for name, schema in options.items():
        schema = dict(schema)
        if "flag" in schema:  # `flag: DEFAULT`: a true/false option
            default = schema.pop("flag")
            schema = {**COMPONENTS["Flag"], **schema, "default": "true" if default else "false"}
            schema["description"] = schema["description"] + " (true or false)"
        parameter = {"name": name, "in": "query", "required": schema.pop("required", False)}
        if "$ref" in schema:
            schema.setdefault("description", COMPONENTS[schema["$ref"].rpartition("/")[2]].get("description"))
        description = schema.pop("description", None)
        if description:
            parameter["description"] = description
        parameter["schema"] = {"anyOf": [schema, EMPTY]}  # routes.option: an empty value means the default
        out.append(parameter)
    return out


def _error_meanings(raises: list[str], where: str) -> dict[int, list[str]]:
    meanings: dict[int, list[str]] = {}
    for reply in errors.replies_named(raises, where):
        meanings.setdefault(reply.status, []).append(reply.meaning)
    return meanings


def _responses(given: dict, raises: list[str], where: str, protected: bool, body: bool, path_params: bool) -> dict:
    if path_params and "FramingError" not in raises:
        raises = [*raises, "FramingError"]  # a path that is not UTF-8 or holds a control character
    if body and "TooLarge" not in raises:
        raises = [*raises, "TooLarge"]
    meanings = _error_meanings(raises, where)
    if protected:
        for status, meaning in errors.GATE.items():
            meanings.setdefault(status, []).append(meaning)
    meanings.setdefault(400, []).append(errors.HOST_REFUSED)
    meanings.setdefault(errors.UNEXPECTED.status, []).append(errors.UNEXPECTED.meaning)
    out: dict[str, dict] = {}
    for status, value in given.items():
        if isinstance(value, str) and int(status) >= 400:
            meanings.setdefault(int(status), []).insert(0, value)
        else:
            out[str(status)] = {"description": value} if isinstance(value, str) else value
    for status, texts in sorted(meanings.items()):
        out[str(status)] = {"description": "; ".join(dict.fromkeys(texts)),
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    return dict(sorted(out.items()))
