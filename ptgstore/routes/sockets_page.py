"""`/docs/sockets`: the AsyncAPI document of the WebSocket routes as a plain HTML page.

Everything in it comes from the document (itself generated from the routes) and is escaped: no
script, nothing loaded from anywhere.
"""
from __future__ import annotations

import html
import json
import re

STYLE = """body{font:15px/1.5 system-ui,sans-serif;margin:2rem auto;max-width:64rem;padding:0 1rem;color:#222}
code,pre{font:13px ui-monospace,monospace;background:#f4f4f4}pre{padding:.5rem;overflow:auto}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ccc;padding:.25rem .5rem;text-align:left;
vertical-align:top}h2{border-top:2px solid #ddd;padding-top:1rem}h2 code{font-size:1.3rem}.dir{font-weight:bold}"""


def _text(value: str) -> str:
    """Escaped text with `code` spans and blank-line paragraphs (tables are shown as tables elsewhere)."""
    out = []
    for paragraph in re.split(r"\n\s*\n", value.strip()):
        if paragraph.lstrip().startswith("|") or paragraph.startswith("Close codes:"):
            continue
        escaped = html.escape(" ".join(paragraph.split()))
        out.append("<p>" + re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped) + "</p>")
    return "".join(out)


def _inline(value: str) -> str:
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(" ".join(value.split())))


def _schema(schema: dict) -> str:
    if "anyOf" in schema:  # the option's schema, or empty for its default (openapi.EMPTY)
        schema = {**schema["anyOf"][0], **{k: v for k, v in schema.items() if k != "anyOf"}}
    if "$ref" in schema:
        return html.escape(schema["$ref"].rpartition("/")[2])
    parts = []
    if "enum" in schema:
        parts.append(" | ".join(str(v) for v in schema["enum"]))
    elif "type" in schema:
        parts.append(str(schema["type"]))
    for key in ("default", "minimum", "maximum", "pattern"):
        if key in schema:
            parts.append(f"{key} {schema[key]}")
    return html.escape(", ".join(parts))


def _channel(name: str, channel: dict, document: dict) -> str:
    out = [f'<h2 id="{html.escape(name)}"><code>{html.escape(channel["address"])}</code></h2>',
           f"<p><b>{_inline(channel.get('summary', ''))}</b></p>", _text(channel.get("description", ""))]
    for param, spec in channel.get("parameters", {}).items():
        out.append(f"<p><code>{{{html.escape(param)}}}</code>: {_inline(spec.get('description', ''))}</p>")
    query = channel.get("bindings", {}).get("ws", {}).get("query", {}).get("properties", {})
    if query:
        out.append("<h3>Query options</h3><table><tr><th>option</th><th>value</th><th>meaning</th></tr>")
        for option, schema in query.items():
            out.append(f"<tr><td><code>{html.escape(option)}</code></td><td>{_schema(schema)}</td>"
                       f"<td>{_inline(schema.get('description', ''))}</td></tr>")
        out.append("</table>")
    out.append("<h3>Messages</h3><table><tr><th>direction</th><th>message</th><th>content</th></tr>")
    for operation in document["operations"].values():
        if operation["channel"]["$ref"] != f"#/channels/{name}":
            continue
        direction = "client → server" if operation["action"] == "receive" else "server → client"
        for ref in operation["messages"]:
            message = channel["messages"][ref["$ref"].rpartition("/")[2]]
            payload = json.dumps(message.get("payload", {}), indent=1)
            out.append(f'<tr><td class="dir">{direction}</td><td><code>{html.escape(message["name"])}</code>: '
                       f"{_inline(message.get('summary', ''))}</td><td>{html.escape(message.get('contentType', ''))}"
                       f"<pre>{html.escape(payload)}</pre></td></tr>")
    out.append("</table><h3>Close codes</h3><table><tr><th>code</th><th>meaning</th></tr>")
    for code, meaning in channel.get("x-close-codes", {}).items():
        out.append(f"<tr><td>{html.escape(code)}</td><td>{_inline(meaning)}</td></tr>")
    out.append("</table>")
    return "\n".join(out)


def render(document: dict, prefix: str = "") -> str:
    """The page of an AsyncAPI document made by `asyncapi.describe`."""
    channels = document["channels"]
    index = "".join(f'<li><a href="#{html.escape(name)}"><code>{html.escape(c["address"])}</code></a>: '
                    f"{_inline(c.get('summary', ''))}</li>" for name, c in channels.items())
    body = "\n".join(_channel(name, channel, document) for name, channel in channels.items())
    links = (f'<p>Machine-readable: <a href="{html.escape(prefix)}/asyncapi.json">/asyncapi.json</a> (AsyncAPI '
             f'{html.escape(document["asyncapi"])}). The REST routes: <a href="{html.escape(prefix)}/docs">/docs</a>.</p>')
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>ptgstore sockets</title>'
            f"<style>{STYLE}</style></head><body><h1>{html.escape(document['info']['title'])} "
            f"{html.escape(document['info']['version'])}</h1>{_text(document['info']['description'])}{links}"
            f"<ul>{index}</ul>{body}</body></html>")
