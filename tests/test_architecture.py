"""The package's shape. The import contracts (layers, TensorFlow only in the model's modules, stages independent
of each other) are in pyproject.toml, checked by import-linter (``lint-imports``, run by CI and here); what it
cannot express is checked here: that the light commands do not import TensorFlow when they run, and that the
drawing of the folders in the developers' docs names what the folders hold."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_the_import_contracts_hold():
    lint_imports = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    if lint_imports is None:
        pytest.skip("import-linter is not installed (pip install -e '.[test]')")
    out = subprocess.run([lint_imports, "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]


def test_evaluate_and_the_light_stages_never_reach_the_model_code():
    # evaluate reports on what predict wrote (the lockbox included) and never runs a model: no import of
    # amazonmine.neural anywhere in it, a lazy one inside a function included (grimp reads every import line).
    grimp = pytest.importorskip("grimp", reason="grimp comes with import-linter (pip install -e '.[test]')")
    graph = grimp.build_graph("amazonmine")
    reaching = [stage for stage in ("evaluate", "split", "tune", "dehaze")
                if graph.chain_exists(importer=f"amazonmine.stages.{stage}", imported="amazonmine.neural",
                                      as_packages=True)]
    assert reaching == [], f"these stages import amazonmine.neural: {reaching}"
    assert graph.chain_exists(importer="amazonmine.stages.predict", imported="amazonmine.neural",
                              as_packages=True)  # the check sees a lazy import where there is one


def test_cli_and_the_light_stages_do_not_import_tensorflow():
    # `amazonmine --help`, split, tune and the dehaze workers start in well under a second. import-linter sees
    # imports, not which of them run: this imports the modules and looks.
    code = ("import sys; import amazonmine.cli, amazonmine.stages.split, amazonmine.stages.tune, "
            "amazonmine.stages.dehaze, amazonmine.core.runfolder, amazonmine.core.decisions; "
            "print('tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_help_and_the_light_commands_do_not_import_tensorflow(tmp_path):
    # The commands themselves, as a user starts them: --help of every command, and split and tune, which import
    # their stage when they run (a stage imported only inside a command is not covered by the test above).
    code = ("import sys\nfrom click.testing import CliRunner\nfrom amazonmine.cli import main\n"
            "runner = CliRunner()\n"
            "for args in (['--help'], *[[name, '--help'] for name in main.list_commands(None)]):\n"
            "    assert runner.invoke(main, args).exit_code == 0, args\n"
            "runner.invoke(main, ['split', '--set', 'data.root=/nonexistent'])\n"
            "runner.invoke(main, ['tune', '--set', 'run.dir=/nonexistent'])\n"
            "print('tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 0 and out.stdout.strip().endswith("False"), out.stdout[-2000:] + out.stderr[-2000:]


FOLDERS = ("stages", "neural", "scanning", "core")


def _diagram_boxes(text: str) -> dict[str, str]:
    """folder -> the text inside its box in the drawing: the columns under its ``+--- name/ ---+`` header, down
    to the box's bottom edge."""
    lines = text.split("```", 2)[1].splitlines()
    boxes = {}
    for row, line in enumerate(lines):
        for header in re.finditer(r"\+-+ (\w+)/ -+\+", line):
            inside = []
            for below in lines[row + 1:]:
                cell = below[header.start():header.end()].ljust(header.end() - header.start())
                if cell.startswith("+-"):
                    break
                inside.append(cell)
            boxes[header.group(1)] = "\n".join(inside)
    return boxes


def test_the_drawing_of_the_folders_names_every_module_and_no_stranger():
    boxes = _diagram_boxes((REPO / "docs" / "developers" / "architecture.md").read_text(encoding="utf-8"))
    assert sorted(boxes) == sorted(FOLDERS)
    modules = {folder: {p.stem for p in (REPO / "amazonmine" / folder).glob("*.py") if p.stem != "__init__"}
               for folder in FOLDERS}
    missing = {folder: sorted(modules[folder] - set(re.findall(r"\w+", boxes[folder]))) for folder in FOLDERS}
    assert all(not names for names in missing.values()), f"modules the drawing does not show: {missing}"
    strangers = {folder: sorted(set(re.findall(r"\w+", boxes[folder])) & (set().union(*modules.values())
                                                                          - modules[folder]))
                 for folder in FOLDERS}
    assert all(not names for names in strangers.values()), f"modules drawn in the wrong folder: {strangers}"
