"""The documentation keeps up with the code: the config reference names every key, the README stays a short
front door whose links resolve, every script is mapped to its results page, and the site builds strictly."""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from amazonmine.core import config as config_module
from amazonmine.core import config_reference

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 210


def _docs_hooks():
    spec = importlib.util.spec_from_file_location("amazonmine_docs_hooks", ROOT / "docs" / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fields(model: type) -> dict[str, type | None]:
    """A config model's keys as a config file spells them -> their declared type (pydantic or dataclass)."""
    if hasattr(model, "model_fields"):
        return {(info.alias or name): info.annotation for name, info in model.model_fields.items()}
    hints = typing.get_type_hints(model)
    return {f.name: hints.get(f.name) for f in dataclasses.fields(model)}


def _config_keys() -> dict[str, list[str]]:
    keys = {section: list(_fields(section_type)) for section, section_type in _fields(config_module.Config).items()}
    assert len(keys) >= 9 and all(keys.values()), keys  # the walk found the sections and their fields
    return keys


def _section_text(page: str, section: str) -> str:
    """The part of the page under the heading that names the section, up to the next heading of its level."""
    heading = re.search(rf"^(#+)[^\n]*\b{re.escape(section)}\b[^\n]*$", page, flags=re.MULTILINE)
    assert heading is not None, f"no heading for section {section!r} in the config reference"
    level = len(heading.group(1))
    following = re.compile(rf"^#{{1,{level}}} ", flags=re.MULTILINE)
    end = following.search(page, heading.end())
    return page[heading.end():end.start() if end else len(page)]


def test_config_reference_names_every_key_of_every_section():
    page = _docs_hooks().config_reference_page()
    missing = []
    for section, keys in _config_keys().items():
        block = _section_text(page, section)
        # Each key has an entry of its own: a table row or a heading that starts with the key, not a mention.
        missing += [f"{section}.{key}" for key in keys
                    if not re.search(rf"^(\|\s*|#+\s*)`{re.escape(key)}`", block, flags=re.MULTILINE)]
    assert not missing, f"config keys absent from the generated reference: {missing}"


def test_config_reference_fails_loudly_without_the_generator(monkeypatch):
    hooks = _docs_hooks()
    monkeypatch.delattr(config_reference, "reference_markdown")
    with pytest.raises(hooks.DocsBuildError, match="reference_markdown"):
        hooks.config_reference_page()


def test_readme_is_a_short_front_door():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail to docs/"


def _relative_links(markdown: str) -> list[str]:
    targets = re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", markdown)
    targets += re.findall(r"<img[^>]+src=\"([^\"]+)\"", markdown)
    return [t for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:|^#", t)]


def test_every_relative_link_in_the_readme_points_at_a_file():
    links = _relative_links((ROOT / "README.md").read_text(encoding="utf-8"))
    assert links, "the README links to no file at all: the link pattern is broken"
    broken = [link for link in links if not (ROOT / link.split("#", 1)[0]).exists()]
    assert not broken, f"README.md links to files that do not exist: {broken}"


def test_every_script_is_mapped_to_an_existing_results_page():
    text = (ROOT / "scripts" / "README.md").read_text(encoding="utf-8")
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `([\w.]+\.py)` \|[^\n]*\|([^\n]*)\|$", text,
                                                        flags=re.MULTILINE)}
    scripts = sorted(p.name for p in (ROOT / "scripts").glob("*.py"))
    assert sorted(rows) == scripts, "scripts/README.md must have one row per script in scripts/"
    named = {page for cell in rows.values() for page in re.findall(r"`(\d{4}-\d{2}-\d{2}-[\w-]+\.md)`", cell)}
    assert named, "scripts/README.md names no results page"
    missing = sorted(page for page in named if not (ROOT / "docs" / "results" / page).is_file())
    assert not missing, f"scripts/README.md names results pages that do not exist: {missing}"


def test_results_index_lists_every_dated_page():
    hooks = _docs_hooks()
    table = hooks.results_index(ROOT / "docs" / "results")
    pages = sorted(p.name for p in (ROOT / "docs" / "results").glob("2*.md"))
    assert pages and all(f"]({name})" in table for name in pages)


@pytest.mark.slow
def test_the_site_builds_in_strict_mode(tmp_path):
    mkdocs = Path(sys.executable).parent / "mkdocs"
    if importlib.util.find_spec("mkdocs") is None or not mkdocs.exists():
        pytest.skip('MkDocs is not installed (pip install -e ".[docs]")')
    result = subprocess.run([str(mkdocs), "build", "--strict", "--quiet", "-d", str(tmp_path / "site")],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    page = (tmp_path / "site" / "reference" / "config.html").read_text(encoding="utf-8")
    missing = [f"{section}.{key}" for section, keys in _config_keys().items() for key in keys
               if f"<code>{key}</code>" not in page]
    assert not missing, f"the built configuration reference lacks: {missing}"
    assert (tmp_path / "site" / "reference" / "config.schema.json").is_file()
