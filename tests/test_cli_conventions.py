"""The command line's conventions: exit codes by class, -v/-q through logging, progress bars only on a terminal,
and --run DIR reading a run's own saved config."""

from __future__ import annotations

import io
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from amazonmine.cli import EXIT_ERROR, EXIT_PARTIAL, EXIT_USAGE, main
from amazonmine.core.config import dump_config, load_config
from amazonmine.core.data import LABELS, matrix_to_tags, tags_to_matrix
from amazonmine.stages.synth import load_label_combos
from amazonmine.testing import simulate_oof


def invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def write_oof_run(tmp_path: Path, n: int = 200) -> tuple[Path, Path]:
    """Labels (train_v2.csv) drawn from the competition's tag combinations, and a run folder with two folds of
    simulated out-of-fold probabilities: what tune reads. No config.yaml yet."""
    combos, counts = load_label_combos()
    rng = np.random.default_rng(0)
    y = tags_to_matrix([combos[i] for i in rng.choice(len(combos), size=n, p=counts / counts.sum())]).astype(bool)
    names = [f"train_{i}" for i in range(n)]
    root, run = tmp_path / "data", tmp_path / "run"
    root.mkdir()
    run.mkdir()
    pd.DataFrame({"image_name": names, "tags": matrix_to_tags(y)}).to_csv(root / "train_v2.csv", index=False)
    p = simulate_oof(y, 0)
    for fold in (0, 1):
        rows = slice(fold * n // 2, (fold + 1) * n // 2)
        frame = pd.DataFrame(p[rows], columns=list(LABELS))
        frame.insert(0, "image_name", names[rows])
        frame.to_csv(run / f"oof_fold{fold}.csv", index=False)
    return root, run


def save_run_config(run: Path, *sets: str) -> None:
    (run / "config.yaml").write_text(dump_config(load_config(None, list(sets))))


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.strip()]


# --- exit codes ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args", [
    ["tune", "--no-such-option"],
    ["split", "--group-by"],  # an option without its value
    ["score-sites"],  # a required argument missing
    ["-v", "-q", "tune"],
])
def test_a_wrong_command_line_exits_2(args):
    result = invoke(*args)
    assert result.exit_code == EXIT_USAGE == 2, result.output
    assert "Traceback" not in result.output


def test_a_bad_value_in_a_config_file_exits_1_in_one_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("split:\n  folds: 0\n")
    result = invoke("split", "--config", path, "--set", f"run.dir={tmp_path / 'run'}")
    assert result.exit_code == EXIT_ERROR == 1, result.output
    lines = error_lines(result.output)
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}") and "split.folds" in lines[0], lines


def test_a_bad_set_value_exits_1(tmp_path):
    result = invoke("tune", "--set", "tune.grid=many", "--set", f"run.dir={tmp_path}")
    assert result.exit_code == 1, result.output
    lines = error_lines(result.output)
    assert len(lines) == 1 and lines[0].startswith("error: --set tune.grid"), lines


def test_an_error_in_the_data_exits_1(tmp_path):
    root, run = write_oof_run(tmp_path, n=50)
    frame = pd.read_csv(run / "oof_fold0.csv")
    frame.loc[0, "haze"] = 7.0  # not a probability
    frame.to_csv(run / "oof_fold0.csv", index=False)
    result = invoke("tune", "--set", f"data.root={root}", "--set", f"run.dir={run}")
    assert result.exit_code == 1, result.output
    lines = error_lines(result.output)
    assert len(lines) == 1 and lines[0].startswith("error: ") and "oof_fold0.csv" in lines[0], lines


def test_finished_with_some_chips_failed_exits_3(real256, tmp_path):
    src = tmp_path / "chips"
    src.mkdir()
    for name in ("train_0.jpg", "train_1.jpg", "train_10.jpg"):
        shutil.copyfile(real256 / "train-jpg" / name, src / name)
    (src / "train_1.jpg").write_bytes((src / "train_1.jpg").read_bytes()[:300])  # cut short
    result = invoke("dehaze", src, tmp_path / "out", "--workers", "1", "--set", f"run.dir={tmp_path / 'run'}",
                    "--set", "dehaze.patch=7", "--set", "dehaze.guided_radius=8")
    assert result.exit_code == EXIT_PARTIAL == 3, result.output
    assert "2 chips done" in result.output and "1 failed" in result.output
    assert sorted(p.name for p in (tmp_path / "out").glob("*.jpg")) == ["train_0.jpg", "train_10.jpg"]


# --- -v / -q, through logging --------------------------------------------------------------------------------

def test_quiet_prints_nothing_on_success_and_only_the_error_on_failure(tmp_path):
    root, run = write_oof_run(tmp_path)
    sets = ["--set", f"data.root={root}", "--set", f"run.dir={run}"]
    loud = invoke("tune", *sets)
    assert loud.exit_code == 0 and "OOF mean F2" in loud.output  # the summary line at the default level
    quiet = invoke("-q", "tune", *sets)
    assert quiet.exit_code == 0 and quiet.output == "", quiet.output
    assert (run / "thresholds.json").is_file()
    for f in run.glob("oof_fold*.csv"):
        f.unlink()
    failed = invoke("-q", "tune", *sets)
    assert failed.exit_code == 1
    assert len(error_lines(failed.output)) == 1 and failed.output.startswith("error: no out-of-fold predictions")


def test_verbose_adds_debugging_lines_on_stderr(tmp_path):
    root, run = write_oof_run(tmp_path)
    result = invoke("-v", "tune", "--set", f"data.root={root}", "--set", f"run.dir={run}")
    assert result.exit_code == 0, result.output
    assert f"config: built-in defaults, --set data.root={root}, --set run.dir={run}" in result.stderr
    assert "config:" not in result.stdout and "OOF mean F2" in result.stdout
    plain = invoke("tune", "--set", f"data.root={root}", "--set", f"run.dir={run}")
    assert "config:" not in plain.output
    for f in run.glob("oof_fold*.csv"):
        f.unlink()
    failed = invoke("-v", "tune", "--set", f"data.root={root}", "--set", f"run.dir={run}")
    assert failed.exit_code == 1 and "Traceback" in failed.stderr and "amazonmine/stages/tune.py" in failed.stderr
    assert failed.stderr.splitlines()[-1].startswith("error: no out-of-fold predictions")


def test_a_command_leaves_logging_as_it_found_it(tmp_path):
    logger = logging.getLogger("amazonmine")
    before = (list(logger.handlers), logger.level, logger.propagate)
    invoke("-q", "tune", "--set", f"run.dir={tmp_path}")
    invoke("tune", "--set", f"run.dir={tmp_path}")
    assert (list(logger.handlers), logger.level, logger.propagate) == before


def test_the_library_logs_and_leaves_the_screen_to_the_cli():
    import ast

    package = Path(__file__).resolve().parents[1] / "amazonmine"
    offenders = []
    for path in sorted(package.glob("*.py")):
        if path.stem in {"cli", "logs", "__main__"}:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                owner = getattr(func.value, "id", "") if isinstance(func, ast.Attribute) else ""
                if name == "print" or (owner == "click" and name in {"echo", "secho"}):
                    offenders.append(f"{path.name}:{node.lineno}")
    assert offenders == [], f"print/click.echo below the CLI layer: {offenders}"


# --- progress bars ---------------------------------------------------------------------------------------------

class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _draw(**kwargs) -> str:
    from amazonmine.core.logs import progress_bar

    stream = kwargs.pop("file")
    for _ in progress_bar(range(5), desc="chips", unit="chip", file=stream, mininterval=0, **kwargs):
        pass
    return stream.getvalue()


def test_a_bar_is_drawn_only_on_a_terminal_and_only_when_allowed():
    from amazonmine.core.logs import configure

    assert "5/5" in _draw(file=FakeTerminal())  # the check below can fail: a terminal does get the bar
    assert _draw(file=io.StringIO()) == ""  # a file or a pipe does not
    assert _draw(file=FakeTerminal(), enabled=False) == ""
    restore = configure(progress=False)  # --no-progress
    try:
        assert _draw(file=FakeTerminal()) == ""
    finally:
        restore()
    restore = configure(quiet=True)  # -q
    try:
        assert _draw(file=FakeTerminal()) == ""
    finally:
        restore()
    assert "5/5" in _draw(file=FakeTerminal())


def test_no_progress_bar_in_output_that_is_not_a_terminal(tmp_path):
    # CliRunner's streams are not terminals, as a CI log or a file is not.
    result = invoke("synth", tmp_path / "data", "--n-train", 20, "--n-test", 4, "--size", 32)
    assert result.exit_code == 0, result.output
    assert "\r" not in result.output and "it/s" not in result.output and "chip/s" not in result.output
    assert len(error_lines(result.output)) == 1 and result.output.startswith("wrote 20 train + 4 test chips")
    flag = invoke("--no-progress", "synth", tmp_path / "again", "--n-train", 20, "--n-test", 4, "--size", 32)
    assert flag.exit_code == 0 and flag.output.startswith("wrote 20 train"), flag.output


# --- --run DIR -------------------------------------------------------------------------------------------------

def test_tune_with_run_reads_the_runs_saved_settings_without_config(tmp_path):
    root, run = write_oof_run(tmp_path)
    # The saved run.dir names where the run was made; --run names where it is now.
    save_run_config(run, f"data.root={root}", f"run.dir={tmp_path / 'moved-from'}", "tune.weather_decoding=true")
    result = invoke("tune", "--run", run)
    assert result.exit_code == 0, result.output
    assert json.loads((run / "thresholds.json").read_text())["weather_decoding"] is True  # not the default
    assert not (tmp_path / "moved-from").exists()
    saved_before = (run / "config.yaml").read_text()
    assert "saved the --set" not in result.output and saved_before == (run / "config.yaml").read_text()


def test_a_set_with_run_applies_and_is_saved_for_the_next_stages(tmp_path):
    root, run = write_oof_run(tmp_path)
    save_run_config(run, f"data.root={root}", f"run.dir={run}", "tune.weather_decoding=true")
    result = invoke("tune", "--run", run, "--set", "tune.weather_decoding=false")
    assert result.exit_code == 0, result.output
    assert json.loads((run / "thresholds.json").read_text())["weather_decoding"] is False
    assert f"saved the --set values into {run / 'config.yaml'}" in result.output
    assert yaml.safe_load((run / "config.yaml").read_text())["tune"]["weather_decoding"] is False
    again = invoke("tune", "--run", run)  # the next stage reads what the last one ran with
    assert again.exit_code == 0 and json.loads((run / "thresholds.json").read_text())["weather_decoding"] is False


def test_run_refuses_config_and_set_run_dir_as_usage_errors(tmp_path):
    _, run = write_oof_run(tmp_path, n=20)
    save_run_config(run, f"run.dir={run}")
    other = tmp_path / "other.yaml"
    other.write_text("tune:\n  grid: 11\n")
    both = invoke("tune", "--run", run, "--config", other)
    assert both.exit_code == 2 and "--run and --config" in both.output
    moved = invoke("tune", "--run", run, "--set", f"run.dir={tmp_path}")
    assert moved.exit_code == 2 and "--set run.dir" in moved.output
    missing = invoke("tune", "--run", tmp_path / "nowhere")
    assert missing.exit_code == 2  # not a folder at all: the command line is wrong


def test_run_without_a_saved_config_is_a_one_line_error(tmp_path):
    result = invoke("evaluate", "--run", tmp_path)
    assert result.exit_code == 1
    assert error_lines(result.output) == [f"error: {tmp_path / 'config.yaml'}: not found; --run takes a run folder "
                                          "that 'amazonmine split' or 'train' has written (they save the run's "
                                          "config there)"]


@pytest.mark.parametrize("stage", ["train", "tune", "predict", "evaluate", "scan", "export"])
def test_every_stage_after_split_takes_run(stage):
    result = invoke(stage, "--help")
    assert result.exit_code == 0 and "--run DIR" in result.output
