"""The manual: the README is a front page whose links resolve, and the docs site builds with `mkdocs build --strict`
(every page in the nav, every link and anchor resolving), its configuration table made from `Settings` itself."""
from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ptgstore.settings import Settings, variables

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
DERIVED = {"auth_explicit"}  # set by from_env when PTGSTORE_AUTH (or --auth) is given, not a variable of its own


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
         "--site-dir", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    return out


def _prose(text: str) -> str:
    """Markdown without its code: fenced blocks and inline code hold example links, not links."""
    return re.sub(r"`[^`\n]*`", "", FENCE.sub("", text))


def _anchors(page: Path) -> set[str]:
    """The heading anchors GitHub makes for a page (the site's own are checked by mkdocs' anchor validation)."""
    seen: dict[str, int] = {}
    anchors = set()
    for line in FENCE.sub("", page.read_text()).splitlines():
        heading = re.match(r"#{1,6}\s+(.*?)\s*#*$", line)
        if not heading:
            continue
        text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", lambda m: m.group(1) or "", heading.group(1))
        slug = re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def _broken_links(page: Path) -> list[str]:
    broken = []
    for target in LINK.findall(_prose(page.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:: not checked here (no network)
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            broken.append(f"{target}: no heading makes #{anchor}")
    return broken


def test_readme_is_a_front_page():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) < 250
    text = "\n".join(lines)
    # the two quick-start commands, exactly (CI runs the second)
    assert "python3 -m venv .venv && . .venv/bin/activate && pip install '.[server]' && ptgstore serve" in text
    assert "pip install '.[server,test]' && python -m pytest" in text
    assert "pip install '.[server,test]' && python -m pytest" in (ROOT / ".ci" / "run").read_text()


@pytest.mark.parametrize("page", [ROOT / "README.md", ROOT / "SECURITY.md", *PAGES], ids=lambda p: p.name)
def test_relative_links_resolve(page):
    assert _broken_links(page) == []


def test_the_link_checker_sees_a_broken_link(tmp_path):
    (tmp_path / "a.md").write_text("# A page\n\n## Its part\n")
    page = tmp_path / "b.md"
    page.write_text("[ok](a.md#its-part) [gone](c.md) [no part](a.md#other) `[code](d.md)`\n"
                    "```\n[example](e.md)\n```\n[web](https://example.org/x.md)\n")
    assert _broken_links(page) == ["c.md: no such file", "a.md#other: no heading makes #other"]


def test_readme_links_into_every_page():
    linked = {target.partition("#")[0] for target in LINK.findall((ROOT / "README.md").read_text())}
    # docs/security.md is the site's copy of SECURITY.md: the README links the file itself
    assert {f"docs/{page.name}" for page in PAGES if page.name != "security.md"} | {"SECURITY.md"} <= linked


@pytest.mark.slow  # mkdocs build: seconds
def test_site_builds_strictly_with_every_page(site):
    for page in PAGES:
        built = site / ("index.html" if page.name == "index.md" else f"{page.stem}/index.html")
        assert built.is_file(), page.name
    for png in DOCS.glob("*.png"):
        assert (site / png.name).is_file()
    assert "Threat model" in (site / "security" / "index.html").read_text()  # SECURITY.md, included


@pytest.mark.slow  # mkdocs build: seconds
def test_configuration_page_lists_every_setting(site):
    html = (site / "configuration" / "index.html").read_text()
    read = {setting.name for setting, _ in variables()}
    assert {f.name for f in dataclasses.fields(Settings)} - read == DERIVED
    for setting, variable in variables():
        assert f"<code>{variable.name}</code>" in html, setting.name
    # and from_env reads each of them: a value given under the variable's name reaches the field
    assert Settings.from_env({"PTGSTORE_RECORDING_SHARDS": "7"}).recording_shards == 7


def test_no_hand_kept_copy_of_the_settings_table():
    for page in [ROOT / "README.md", *PAGES]:
        rows = [line for line in page.read_text().splitlines() if re.match(r"\|\s*`PTGSTORE_", line)]
        assert rows == [], f"{page.name} keeps its own table of settings: link to configuration.md instead"
