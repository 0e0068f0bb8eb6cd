"""A Griffe extension for the API pages: the package's docstrings are written in reStructuredText habits
(``::`` literal blocks, Sphinx roles such as :func:`x`), and mkdocstrings renders them as Markdown. This turns
a ``::`` block into a fenced code block and a role into plain inline code, so the pages read as the source does.
Loaded by mkdocs.yml (mkdocstrings' ``extensions`` option); the docstrings themselves are not changed."""

from __future__ import annotations

import re
import textwrap

import griffe

_ROLE = re.compile(r":(?:func|meth|class|mod|data|attr|exc|obj):`~?([^`]+)`")
_DOUBLE_BACKTICKS = re.compile(r"(?<!`)``(?!`)")


def _fence_literal_blocks(text: str) -> str:
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.rstrip().endswith("::") and not line.lstrip().startswith(".."):
            stripped = line.rstrip()[:-2].rstrip()
            if stripped:
                out.append(stripped + ":")
            j = i + 1
            while j < len(lines) and not lines[j].strip():
                j += 1
            indent = len(lines[i]) - len(lines[i].lstrip())
            block = []
            while j < len(lines) and (not lines[j].strip() or len(lines[j]) - len(lines[j].lstrip()) > indent):
                block.append(lines[j])
                j += 1
            while block and not block[-1].strip():
                block.pop()
            if block:
                out += ["", "```", *textwrap.dedent("\n".join(block)).splitlines(), "```", ""]
                i = j
                continue
        out.append(line)
        i += 1
    return "\n".join(out)


class ReStructuredTextHabits(griffe.Extension):
    def on_object(self, *, obj, loader, **kwargs) -> None:
        if obj.docstring is not None:
            text = _DOUBLE_BACKTICKS.sub("`", _ROLE.sub(r"`\1`", obj.docstring.value))
            obj.docstring.value = _fence_literal_blocks(text)
