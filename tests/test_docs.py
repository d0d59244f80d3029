"""The documentation: the site builds with ``mkdocs build --strict`` (a broken link, anchor or API reference
fails), every page is in the navigation, every module of the package is in the API reference, and the README
stays short with links that resolve."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README_MAX_LINES = 250


def _nav_pages(node) -> list[str]:
    """Every page path named in mkdocs.yml's (nested) nav."""
    if isinstance(node, str):
        return [node]
    if isinstance(node, list):
        return [p for item in node for p in _nav_pages(item)]
    if isinstance(node, dict):
        return [p for value in node.values() for p in _nav_pages(value)]
    raise AssertionError(f"unexpected nav entry {node!r}")


def _mkdocs_config() -> dict:
    # mkdocs.yml holds only plain YAML (no !!python tags), so safe_load reads it
    return yaml.safe_load((ROOT / "mkdocs.yml").read_text())


def test_docs_build_strict(tmp_path):
    """`mkdocs build --strict` succeeds: no warning (broken link, missing anchor, page outside the nav,
    docstring mkdocstrings cannot parse), and the API reference really rendered the registry."""
    for module in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python"):
        pytest.importorskip(module, reason=f"{module} is not installed: pip install -e '.[docs]' to build the docs")
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # mkdocs-material's notice about MkDocs 2.0
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{log[-6000:]}"
    assert "WARNING" not in log, log[-6000:]
    registry = (site / "reference" / "models" / "index.html").read_text()
    assert 'id="mmzoo.models._registry.create_model"' in registry
    assert (site / "benchmarks" / "index.html").read_text().count("benchmarks/compare.py") > 0  # BENCHMARKS.md included


def test_every_page_is_in_the_nav():
    """A page under docs/ that the nav does not list is unreachable from the site's menu; a nav entry
    without its file breaks the build."""
    nav = set(_nav_pages(_mkdocs_config()["nav"]))
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    assert not pages - nav, f"pages missing from mkdocs.yml's nav: {sorted(pages - nav)}"
    assert not nav - pages, f"nav entries without a file under docs/: {sorted(nav - pages)}"


def test_every_module_is_in_the_api_reference():
    """Each module of the package has a `::: module` block in docs/reference/, and each block names a module."""
    # from the files, without importing the package (the reference is built statically too)
    modules = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
               for p in (ROOT / "mmzoo").rglob("*.py")}
    documented = set()
    for page in (DOCS / "reference").glob("*.md"):
        documented |= set(re.findall(r"^::: ([\w.]+)\s*$", page.read_text(), flags=re.M))
    assert not modules - documented, f"modules missing from docs/reference/*.md: {sorted(modules - documented)}"
    assert not documented - modules, f"docs/reference/*.md names unknown modules: {sorted(documented - modules)}"


def _slug(heading: str) -> str:
    """Python-Markdown's default heading id (toc extension), after dropping inline markup."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "").replace("*", "")
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)  # '#' lines inside code are not headings
    return {_slug(h) for h in re.findall(r"^#{1,6}\s+(.+?)\s*$", text, flags=re.M)}


def test_readme_is_short_and_its_links_resolve():
    """The README stays a front page (the manuals live in docs/), and every relative link in it points to
    an existing file and, with a #fragment, to a heading of that file."""
    readme = ROOT / "README.md"
    lines = readme.read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines (at most {README_MAX_LINES})"
    links = re.findall(r"\]\(([^)\s]+)\)", readme.read_text())
    local = [link for link in links if not re.match(r"[a-z]+://", link)]
    assert any(link.startswith("docs/") for link in local), "the README should point at the docs"
    for link in local:
        target, _, fragment = link.partition("#")
        path = (ROOT / target) if target else readme
        assert path.is_file(), f"README.md links to {link}, but {path.relative_to(ROOT)} does not exist"
        if fragment:
            assert fragment in _anchors(path), f"README.md links to {link}: no heading '#{fragment}' there"
