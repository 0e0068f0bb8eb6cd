"""MkDocs hooks: the pages that are generated from the code at build time, so they cannot drift from it.

* ``reference/config.md`` is :func:`amazonmine.core.config_reference.reference_markdown` (every key of every section:
  type, bounds or choices, default, description), and ``reference/config.schema.json`` beside it is
  :func:`amazonmine.core.config_reference.json_schema`. There is no fallback: without those functions the build fails.
* ``results/index.md`` gets a table of the dated measurement pages found in ``docs/results/``.
* ``guide/models.md`` shows the released models' cards (``amazonmine/models/*/MODEL_CARD.md``) when the
  checkout has them, and says that it has none otherwise.

Only the standard library is imported at module level, so ``tests/test_docs.py`` can use
:func:`config_reference_page` without MkDocs installed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONFIG_PAGE = "reference/config.md"
SCHEMA_FILE = "reference/config.schema.json"
RESULTS_MARKER = "<!-- results-index -->"
CARDS_MARKER = "<!-- released-model-cards -->"
_DATED_PAGE = re.compile(r"^(\d{4}-\d{2}-\d{2})-[a-z0-9-]+\.md$")


class DocsBuildError(Exception):
    """A generated page cannot be made; the build must stop rather than publish an empty or stale page."""


def _config_module():
    # Imported late: the docs build imports the package, the test may not.
    import amazonmine.core.config_reference as config

    for name in ("reference_markdown", "json_schema"):
        if not callable(getattr(config, name, None)):
            raise DocsBuildError(
                f"amazonmine.core.config_reference has no {name}(): the configuration reference ({CONFIG_PAGE}) "
                "is generated from it and cannot be built without it")
    return config


def config_reference_page() -> str:
    """The configuration reference page, exactly as the site publishes it."""
    body = _config_module().reference_markdown()
    if not isinstance(body, str) or not body.strip():
        raise DocsBuildError("amazonmine.core.config_reference.reference_markdown() returned no text")
    # The generated text may start with its own title; the page has one already.
    body = re.sub(r"\A\s*# [^\n]*\n", "", body).strip()
    head = "# Configuration reference\n\n"
    tail = ("\n\n## See also\n\n"
            "- [Configuration](../guide/configuration.md): how files and `--set` overrides combine, and the "
            "shipped configs.\n"
            "- [`config.schema.json`](config.schema.json): the same fields as a JSON Schema, for editors and "
            "other tools.\n")
    return head + body + tail


def results_index(results_dir: Path) -> str:
    """A table of the dated measurement pages, newest first: date and title (each page's first heading)."""
    rows = []
    for path in sorted(results_dir.glob("*.md"), reverse=True):
        match = _DATED_PAGE.match(path.name)
        if match is None:
            continue
        title = next((line[2:].strip() for line in path.read_text(encoding="utf-8").splitlines()
                      if line.startswith("# ")), None)
        if title is None:
            raise DocsBuildError(f"{path}: a results page needs a '# ' title on a line of its own")
        rows.append(f"| {match.group(1)} | [{title}]({path.name}) |")
    if not rows:
        raise DocsBuildError(f"{results_dir}: no dated results pages (YYYY-MM-DD-topic.md)")
    return "| date | measurement |\n|---|---|\n" + "\n".join(rows) + "\n"


def released_model_cards() -> str:
    cards = sorted((REPO / "amazonmine" / "models").glob("*/MODEL_CARD.md"))
    if not cards:
        return ("This checkout ships no released model card yet (`amazonmine/models/<name>/MODEL_CARD.md`); "
                "`amazonmine models` lists the bundles that are installed.\n")
    parts = []
    for card in cards:
        text = card.read_text(encoding="utf-8")
        # The card's headings go one level down so that they sit under this page's own.
        text = re.sub(r"^(#{1,5}) ", lambda m: "#" + m.group(1) + " ", text, flags=re.MULTILINE)
        parts.append(f"The card of `{card.parent.name}`, as shipped in "
                     f"`{card.relative_to(REPO).as_posix()}`:\n\n{text.strip()}\n")
    return "\n".join(parts)


# --- MkDocs events -------------------------------------------------------------------------------------------

def on_files(files, config):
    from mkdocs.exceptions import PluginError
    from mkdocs.structure.files import File

    try:
        generated = {CONFIG_PAGE: config_reference_page(),
                     SCHEMA_FILE: json.dumps(_config_module().json_schema(), indent=2, sort_keys=True) + "\n"}
    except DocsBuildError as exc:
        raise PluginError(str(exc)) from exc
    for path, content in generated.items():
        existing = files.get_file_from_path(path)
        if existing is not None:
            files.remove(existing)
        files.append(File.generated(config, path, content=content))
    return files


def on_page_markdown(markdown, page, config, files):
    from mkdocs.exceptions import PluginError

    try:
        if RESULTS_MARKER in markdown:
            markdown = markdown.replace(RESULTS_MARKER, results_index(Path(page.file.abs_src_path).parent))
        if CARDS_MARKER in markdown:
            markdown = markdown.replace(CARDS_MARKER, released_model_cards())
    except DocsBuildError as exc:
        raise PluginError(str(exc)) from exc
    return markdown
