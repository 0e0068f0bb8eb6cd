"""The package's shape: arrows point down only (cli -> stages -> shared modules), and TensorFlow stays where the
model lives. Read from the source with ``ast``, so an import inside a function counts too."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "amazonmine"
STAGES = {"synth", "dehaze", "split", "train", "tune", "predict", "evaluate", "scan", "export"}
# A stage may own helper modules that only it uses; they count as part of it (synth paints the test scene).
PART_OF: dict[str, str] = {}
ORCHESTRATORS = {"cli", "demo", "__main__"}  # they call the stages in order; nothing imports them


def _imports(path: Path) -> set[str]:
    """amazonmine modules imported anywhere in the file (top level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("amazonmine"):
            parts = node.module.split(".")
            if len(parts) > 1:
                found.add(parts[1])
            else:  # from amazonmine import x
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("amazonmine."))
    return found


def _graph() -> dict[str, set[str]]:
    """module -> the stages (or shared modules) it imports, a stage's own parts counted as the stage."""
    def unit(name: str) -> str:
        return PART_OF.get(name, name)

    graph: dict[str, set[str]] = {}
    for p in PACKAGE.glob("*.py"):
        if p.stem != "__init__":
            graph.setdefault(unit(p.stem), set()).update(unit(m) for m in _imports(p))
    return {m: deps - {m} for m, deps in graph.items()}


def test_no_stage_imports_another_stage_and_nothing_imports_the_cli():
    graph = _graph()
    assert STAGES <= set(graph) | {"scan"}, "a stage module is missing: update STAGES"
    sideways = {m: sorted(deps & STAGES) for m, deps in graph.items() if m in STAGES and deps & STAGES}
    assert sideways == {}, f"stages importing other stages: {sideways}"
    upward = {m: sorted(deps & (STAGES | ORCHESTRATORS)) for m, deps in graph.items()
              if m not in STAGES | ORCHESTRATORS and deps & (STAGES | ORCHESTRATORS)}
    assert upward == {}, f"shared modules importing stages or the CLI: {upward}"
    into_cli = sorted(m for m, deps in graph.items() if deps & ORCHESTRATORS and m not in {"cli", "__main__"})
    assert into_cli == [], f"modules importing cli/demo: {into_cli}"


def test_the_graph_check_sees_imports_inside_functions(tmp_path):
    module = tmp_path / "x.py"
    module.write_text("def f():\n    from amazonmine.train import run_train\n    import amazonmine.split\n")
    assert _imports(module) == {"train", "split"}


def test_cli_and_the_light_stages_do_not_import_tensorflow():
    # `amazonmine --help`, split, tune and the dehaze workers start in well under a second.
    code = ("import sys; import amazonmine.cli, amazonmine.split, amazonmine.tune, amazonmine.dehaze, "
            "amazonmine.runfolder, amazonmine.decisions; print('tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
