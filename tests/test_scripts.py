"""The benchmark scripts on tiny data: compare_runs' tables on a tiny trained run, bench_real32 end to end on a
tiny archive and its --score-only refusal. The scripts are otherwise run by hand on the real data, so these are
their only tests."""

from __future__ import annotations

import json
import shutil
import sys
import warnings
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
# The tests on tiny_run share a group, so the module's run is trained once, on one worker.
ON_TINY_RUN = pytest.mark.xdist_group("scripts_tiny_run")


@pytest.fixture(scope="module")
def scripts():
    saved = sys.path[:]  # compare_runs puts scripts/ on the path itself, so restore the whole list
    sys.path.insert(0, str(SCRIPTS))
    try:
        import bench_real32
        import compare_runs

        yield bench_real32, compare_runs
    finally:
        sys.path[:] = saved


# One tiny recipe for the fixture's run and bench_real32's (not configs/planet32.yaml, so that tuning the real
# benchmark cannot slow or change these tests).
TINY_CONFIG = """
data: {image_format: jpg, chip_size: 64}
dehaze: {enabled: false}
split: {folds: 2, rare_target: 4, holdout: 0.2}
train: {backbone: densenet_mini, mini_blocks: [2], weights: none, image_size: 32, batch_size: 16, epochs: 1,
        steps_per_epoch: 2, folds: [1], artifact_name: b01_dense121.h5, verbose: 2}
tune: {objectives: {artisinal_mine: {recall: 0.5}}}
predict: {tta: 2, batch_size: 16}
evaluate: {gallery_size: 2, thumbnail: 32}
"""


@pytest.fixture(scope="module")
def tiny_run(synth_root, tmp_path_factory):
    """split (2 folds, 20% lockbox) -> train fold 0 only -> predict's lockbox step -> evaluate: a run folder with
    one finished fold, its OOF file and its lockbox probabilities."""
    from amazonmine.core.config import load_config
    from amazonmine.stages.evaluate import run_evaluate
    from amazonmine.stages.predict import run_predict_lockbox
    from amazonmine.stages.split import run_split
    from amazonmine.stages.train import run_train

    base = tmp_path_factory.mktemp("scripts")
    (base / "tiny.yaml").write_text(TINY_CONFIG)
    cfg = load_config(base / "tiny.yaml", [f"run.dir={base / 'run_a'}", f"data.root={synth_root}"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tiny split's rare-label warnings are not under test
        run_split(cfg)
    list(run_train(cfg, folds=[0]))
    run_predict_lockbox(cfg, progress=False)  # fold0's lockbox probabilities (a full predict needs tune first)
    run_evaluate(cfg)
    return base / "run_a"


def _table_rows(text: str, first_cell: str) -> list[list[str]]:
    """The cells of the table rows whose first cell is ``first_cell``."""
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.split("  ") if c.strip()]
        if cells and cells[0] == first_cell:
            rows.append(cells)
    return rows


@pytest.mark.slow
@ON_TINY_RUN
def test_compare_runs_pairs_identical_runs_to_zero_and_refuses_another_split(scripts, tiny_run, capsys):
    """A copy of a run compared with it differs by exactly zero, paired over the same chips, out of fold and on
    the lockbox (its lockbox rows shuffled: the pairing goes by chip name, not row), and averaging the two
    changes nothing; a run trained on another split is refused in one line."""
    import pandas as pd

    _, compare_runs = scripts
    copy = tiny_run.parent / "run_b"
    shutil.copytree(tiny_run, copy)
    box = copy / "fold0" / "holdout_probabilities.csv"
    shuffled = pd.read_csv(box, dtype={"image_name": str}).sample(frac=1.0, random_state=0)
    assert list(shuffled.index) != sorted(shuffled.index)
    shuffled.to_csv(box, index=False)
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


@pytest.mark.slow
@ON_TINY_RUN
def test_score_only_refuses_an_unfinished_fold_by_name(scripts, tiny_run):
    bench_real32, _ = scripts
    from amazonmine.core.runfolder import RunFolder

    run = RunFolder(tiny_run)
    bench_real32.check_finished(run, [0])  # the finished fold passes
    with pytest.raises(bench_real32.BenchError) as caught:
        bench_real32.check_finished(run, [0, 1])
    message = str(caught.value)
    assert message.split("finished folds only: ", 1)[1].split(";")[0] == "fold1 (absent)"


@pytest.mark.slow
def test_bench_real32_runs_every_stage_on_a_tiny_archive_then_scores_without_training(scripts, synth_root,
                                                                                      tmp_path, monkeypatch, capfd):
    """The script behind the README's real-data figures, end to end on a 72-chip archive in the Kaggle layout:
    unpack, the five CLI stages, a valid submission, the lockbox; its table's tuned figure is thresholds.json's.
    Then --score-only re-scores the finished fold with no train stage, and refuses a fold that was not trained."""
    import tarfile

    bench_real32, _ = scripts
    monkeypatch.chdir(tmp_path)  # main() moves to the repository root; monkeypatch moves back
    archive = tmp_path / "tiny_32px.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(synth_root, arcname="planet_32px")
    run_dir, report_path, config = tmp_path / "run", tmp_path / "bench.json", tmp_path / "tiny.yaml"
    config.write_text(TINY_CONFIG)
    common = ["--archive", str(archive), "--work", str(tmp_path / "work"), "--config", str(config),
              "--set", f"run.dir={run_dir}"]

    assert bench_real32.main([*common, "--json", str(report_path)]) == 0
    printed = capfd.readouterr().out
    report = json.loads(report_path.read_text())
    stages = [s["name"] for s in report["stages"]]
    assert stages == ["unpack", "split", "train fold 1", "tune", "predict", "evaluate"], stages
    assert all(s["exit_code"] in (0, None) for s in report["stages"])
    thresholds = json.loads((run_dir / "thresholds.json").read_text())
    tune_row = [line for line in printed.splitlines() if line.startswith("tune ")]
    assert len(tune_row) == 1 and (f"{thresholds['oof_f2_flat']:.4f} -> {thresholds['oof_f2_tuned']:.4f} on "
                                   f"{thresholds['oof_chips']} chips") in tune_row[0]
    assert report["submission"]["problems"] == [] and report["submission"]["rows"] == 12
    assert report["lockbox"]["chips"] == 12  # 20% of the 60 labelled chips, scored by fold 1's model
    assert (tmp_path / "work" / "planet_32px" / "train_v2.csv").is_file()

    model = run_dir / "fold1" / "b01_dense121.h5"
    stamp = model.stat().st_mtime_ns
    assert bench_real32.main([*common, "--score-only", "--skip-predict", "--json", str(report_path)]) == 0
    rescored = json.loads(report_path.read_text())
    assert [s["name"] for s in rescored["stages"]] == ["unpack", "split", "train fold 1", "tune", "evaluate"]
    assert rescored["stages"][2]["seconds"] is None  # listed from its summary, not run
    assert rescored["stages"][0]["note"].startswith("already unpacked")
    assert rescored["tune"]["oof_f2_tuned"] == thresholds["oof_f2_tuned"]  # same OOF chips, same fit
    assert model.stat().st_mtime_ns == stamp

    capfd.readouterr()
    assert bench_real32.main([*common, "--score-only", "--all-folds"]) == 1
    assert "fold0 (absent)" in capfd.readouterr().err  # fold 0 was never trained
