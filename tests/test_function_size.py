"""No function in the package over 80 lines (a reader should see one whole), read from the source with ``ast``.

Parameters are ruff's (PLR0913, at most 8: pyproject.toml). ruff has no rule for length in lines (PLR0915 counts
statements), hence this check. A function that must stay longer is listed in LONG_FUNCTIONS with the reason; the
list is checked both ways, so a fixed function leaves it.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "amazonmine"
MAX_LINES = 80

# "<module file stem>.<qualified name>": why it is longer. The key has no folder, so it survives a move.
LONG_FUNCTIONS: dict[str, str] = {}


def function_lengths(path: Path) -> dict[str, int]:
    """qualified name -> lines from ``def`` to the function's last line (nested functions are listed too)."""
    found: dict[str, int] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                found[prefix + child.name] = child.end_lineno - child.lineno + 1
                visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(ast.parse(path.read_text(encoding="utf-8")), "")
    return found


def _package_lengths() -> dict[str, int]:
    return {f"{path.stem}.{name}": lines for path in sorted(PACKAGE.rglob("*.py"))
            for name, lines in function_lengths(path).items()}


def test_no_function_is_longer_than_80_lines_but_the_listed_ones():
    lengths = _package_lengths()
    too_long = {name: lines for name, lines in lengths.items() if lines > MAX_LINES and name not in LONG_FUNCTIONS}
    assert too_long == {}, f"functions over {MAX_LINES} lines (split them, or list one with its reason): {too_long}"
    fixed = sorted(name for name in LONG_FUNCTIONS if lengths.get(name, 0) <= MAX_LINES)
    assert fixed == [], f"listed as long but {MAX_LINES} lines or fewer (or gone): take them off LONG_FUNCTIONS"


def test_the_length_check_counts_nested_functions_and_methods(tmp_path):
    source = tmp_path / "x.py"
    source.write_text("class A:\n    def m(self):\n        def inner():\n            return 1\n\n"
                      "        return inner()\n\n\nasync def f():\n    pass\n")
    assert function_lengths(source) == {"A.m": 5, "A.m.inner": 2, "f": 2}
