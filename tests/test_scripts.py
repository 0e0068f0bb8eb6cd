"""The benchmark scripts' scoring paths on a tiny trained run: compare_runs' table and bench_real32's
--score-only refusal. The scripts are otherwise run by hand on the real data, so these are their only tests."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
pytestmark = pytest.mark.xdist_group("scripts_tiny_run")  # one worker, so the module's run is trained once


@pytest.fixture(scope="module")
def scripts():
    sys.path.insert(0, str(SCRIPTS))
    try:
        import bench_real32
        import compare_runs

        yield bench_real32, compare_runs
    finally:
        sys.path.remove(str(SCRIPTS))


@pytest.fixture(scope="module")
def tiny_run(synth_root, tmp_path_factory):
    """split (2 folds, 20% lockbox) -> train fold 0 only -> evaluate: a run folder with one finished fold, its
    OOF file and its lockbox probabilities."""
    from amazonmine.config import load_config
    from amazonmine.evaluate import run_evaluate
    from amazonmine.split import run_split
    from amazonmine.train import run_train

    run_dir = tmp_path_factory.mktemp("scripts") / "run_a"
    cfg = load_config(None, [f"run.dir={run_dir}", f"data.root={synth_root}", "dehaze.enabled=false",
                             "split.folds=2", "split.rare_target=4", "split.holdout=0.2",
                             "train.backbone=densenet_mini", "train.mini_blocks=[2]", "train.image_size=32",
                             "train.batch_size=16", "train.epochs=1", "train.steps_per_epoch=2", "train.verbose=0",
                             "predict.tta=2", "predict.batch_size=16", "evaluate.gallery_size=2",
                             "evaluate.thumbnail=32"])
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tiny split's rare-label warnings are not under test
        run_split(cfg)
    list(run_train(cfg, folds=[0]))
    run_evaluate(cfg)  # writes fold0's lockbox probabilities
    return run_dir


def _table_rows(text: str, first_cell: str) -> list[list[str]]:
    """The cells of the table rows whose first cell is ``first_cell``."""
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.split("  ") if c.strip()]
        if cells and cells[0] == first_cell:
            rows.append(cells)
    return rows


def test_compare_runs_pairs_identical_runs_to_zero_and_refuses_another_split(scripts, tiny_run, capsys):
    """A copy of a run compared with it differs by exactly zero, paired over the same chips, out of fold and on
    the lockbox, and averaging the two changes nothing; a run trained on another split is refused in one line."""
    _, compare_runs = scripts
    copy = tiny_run.parent / "run_b"
    shutil.copytree(tiny_run, copy)
    config = str(tiny_run / "config.yaml")
    rc = compare_runs.main([str(tiny_run), str(copy), "--fold", "0", "--config", config, "--lockbox", "--average"])
    out = capsys.readouterr().out
    assert rc == 0, out
    first, second = _table_rows(out, str(tiny_run)), _table_rows(out, str(copy))
    assert len(first) == 2 and len(second) == 2  # one row in each table
    assert "+0.0000 (+0.0000 to +0.0000)" in second[0] and "+0.0000 (+0.0000 to +0.0000)" in second[1]
    assert first[0][5:9] == second[0][5:9]  # flat, tuned, interval, cross-fit: the same chips, the same fits
    lockbox_first = first[1]
    average = _table_rows(out, "average of the runs")
    assert len(average) == 1
    assert average[0][1:6] == lockbox_first[1:6]  # OOF tuned, lockbox tuned and flat, interval, mines found

    summary_path = copy / "fold0" / "summary.json"
    summary = json.loads(summary_path.read_text())
    summary["split_sha256"] = "0" * 64
    summary_path.write_text(json.dumps(summary))
    rc = compare_runs.main([str(tiny_run), str(copy), "--fold", "0", "--config", config])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.strip() == f"error: {copy} was trained on another split than {tiny_run}"

    rc = compare_runs.main([str(tiny_run), "--fold", "1", "--config", config])
    assert rc == 2 and "no finished fold 1" in capsys.readouterr().err


def test_score_only_refuses_an_unfinished_fold_by_name(scripts, tiny_run):
    bench_real32, _ = scripts
    from amazonmine.runfolder import RunFolder

    run = RunFolder(tiny_run)
    bench_real32.check_finished(run, [0])  # the finished fold passes
    with pytest.raises(bench_real32.BenchError) as caught:
        bench_real32.check_finished(run, [0, 1])
    message = str(caught.value)
    assert "fold1 (absent)" in message and "fold0" not in message.split(":", 1)[1].split(";")[0]
