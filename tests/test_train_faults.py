"""Train under faults: a refused, failed, interrupted or killed retrain leaves the finished fold usable; the
retrain's swap survives a kill at every step; a full disk is one line; one writer of a run folder at a time."""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from amazonmine.core.errors import AmazonmineError
from amazonmine.core.io import LockedError
from amazonmine.core.runfolder import FoldState, RunFolder

TINY = ["dehaze.enabled=false", "split.folds=2", "split.rare_target=4", "train.backbone=densenet_mini",
        "train.mini_blocks=[2]", "train.image_size=32", "train.batch_size=16", "train.epochs=1",
        "train.steps_per_epoch=3", "train.verbose=0", "train.cache=true", "train.bn_recalibration_batches=0",
        "predict.tta=1", "predict.batch_size=64"]

HOLD = ("import sys, time\nfrom amazonmine.core.runfolder import RunFolder\nfrom pathlib import Path\n"
        "with RunFolder(Path(sys.argv[1])).lock('train'):\n    print('held', flush=True)\n    time.sleep(60)\n")


@pytest.fixture(scope="module")
def small_root(tmp_path_factory) -> Path:
    from amazonmine.stages.synth import paint_dataset

    root = tmp_path_factory.mktemp("faults") / "planet"
    paint_dataset(root, n_train=40, n_test=4, size=32, seed=3, progress=False)
    return root


def _sets(root: Path, run_dir: Path, *extra: str) -> list[str]:
    return TINY + [f"data.root={root}", f"run.dir={run_dir}", *extra]


def _cfg(sets: list[str]):
    from amazonmine.core.config import load_config

    return load_config(None, sets)


@pytest.fixture(scope="module")
def finished_run(small_root, tmp_path_factory) -> Path:
    """A run folder whose fold 0 is finished (split, train)."""
    from amazonmine.stages.split import run_split
    from amazonmine.stages.train import run_train

    run_dir = tmp_path_factory.mktemp("finished") / "run"
    cfg = _cfg(_sets(small_root, run_dir))
    run_split(cfg)
    run_train(cfg, folds=[0])
    return run_dir


@pytest.fixture
def run_dir(finished_run, tmp_path) -> Path:
    """A copy of the finished run, for a test to fault."""
    shutil.copytree(finished_run, tmp_path / "run")
    return tmp_path / "run"


def _fold0(run_dir: Path) -> dict[str, str]:
    """Digest of every file fold 0 is used through (model, summary, history, OOF) and its TensorBoard logs."""
    files = RunFolder(run_dir).fold(0)
    found = {p.name: hashlib.md5(p.read_bytes()).hexdigest()
             for p in (files.model, files.summary, files.history, files.oof)}
    found["tensorboard"] = sorted(str(p.relative_to(files.tensorboard)) for p in files.tensorboard.rglob("*"))
    return found


def _assert_usable_as_before(run_dir: Path, before: dict) -> None:
    run = RunFolder(run_dir)
    assert _fold0(run_dir) == before
    assert run.fold_state(0) is FoldState.FINISHED
    assert [f.fold for f in run.finished_models().folds] == [0]


def _with_callback(monkeypatch, callback):
    import amazonmine.neural.trainer as trainer

    original = trainer.fold_callbacks
    monkeypatch.setattr(trainer, "fold_callbacks",
                        lambda *a, **k: (lambda cbs: (cbs[0] + [callback], *cbs[1:]))(original(*a, **k)))
    return original


def _error_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


# --- a refused retrain ---------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_refused_retrain_leaves_the_finished_fold_usable(run_dir, small_root, tmp_path):
    import keras

    from amazonmine.neural.model import build_model
    from amazonmine.stages.train import run_train

    before = _fold0(run_dir)
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not a model at all")
    hostile = tmp_path / "lambda.h5"  # a layer that would run arbitrary code when loaded
    keras.Sequential([keras.Input((4,)), keras.layers.Lambda(lambda x: x * 2)]).save(hostile)
    other = tmp_path / "other_architecture.h5"
    build_model(_cfg(_sets(small_root, run_dir, "train.mini_blocks=[3]")).train).save(other)
    refusals = {tmp_path / "typo.h5": "no such model file", junk: "cannot load model",
                hostile: "cannot load model", other: "not the same architecture"}
    for init_from, reason in refusals.items():
        cfg = _cfg(_sets(small_root, run_dir, f"train.init_from={init_from}"))
        with pytest.raises(AmazonmineError) as refused:
            run_train(cfg, folds=[0], retrain=True)
        _assert_usable_as_before(run_dir, before)
        assert not (run_dir / "fold0" / ".next").exists()
        assert str(refused.value).startswith("train.init_from: ") and reason in str(refused.value)


# --- a retrain is made beside the fold ----------------------------------------------------------------------

@pytest.mark.slow
def test_a_retrain_is_made_beside_the_fold_and_swapped_in_when_finished(run_dir, small_root, monkeypatch):
    import keras

    from amazonmine.stages.train import run_train

    before = _fold0(run_dir)
    seen = []

    class WhileTraining(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append(_fold0(run_dir) == before and RunFolder(run_dir).fold_state(0) is FoldState.FINISHED)

    _with_callback(monkeypatch, WhileTraining())
    first = json.loads((run_dir / "fold0" / "summary.json").read_text())
    oof_inode = (run_dir / "oof_fold0.csv").stat().st_ino
    (result,) = run_train(_cfg(_sets(small_root, run_dir, "train.epochs=2")), folds=[0], retrain=True)
    assert seen == [True, True]  # predict and tune saw the old fold, whole, during both epochs
    files = RunFolder(run_dir).fold(0)
    summary = json.loads(files.summary.read_text())
    assert summary["epochs_run"] == 2 and summary["model"] == str(files.model) == str(result.model_path)
    assert set(summary) == set(first)  # the same summary format as a first training's
    assert _fold0(run_dir)["history.csv"] != before["history.csv"]
    assert files.oof.stat().st_ino != oof_inode  # the retrain's OOF file, moved in
    assert not files.staged.dir.exists() and not files.resume_dir.exists()
    assert RunFolder(run_dir).fold_state(0) is FoldState.FINISHED


@pytest.mark.slow
def test_an_interrupted_retrain_resumes_in_its_own_place(run_dir, small_root, monkeypatch):
    import keras
    import pandas as pd

    import amazonmine.neural.trainer as trainer
    import amazonmine.stages.train as train

    before = _fold0(run_dir)
    sets = _sets(small_root, run_dir, "train.epochs=3")

    class CtrlC(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            if self.epoch == 1 and batch == 1:
                raise KeyboardInterrupt

    original = _with_callback(monkeypatch, CtrlC())
    with pytest.raises(AmazonmineError) as interrupted:
        train.run_train(_cfg(sets), folds=[0], retrain=True)
    _assert_usable_as_before(run_dir, before)
    assert f"resume state saved in {run_dir / 'fold0' / '.next' / 'resume'} after epoch 1" in str(interrupted.value)
    with pytest.raises(AmazonmineError, match=r"interrupted retrain is saved in \.next/resume/ \(after epoch 1\)"):
        train.run_train(_cfg(sets), folds=[0])  # not skipped silently, not restarted by accident

    monkeypatch.setattr(trainer, "fold_callbacks", original)
    restored = []
    real_restore = trainer.ResumeState.restore
    monkeypatch.setattr(trainer.ResumeState, "restore",
                        lambda self, model: restored.append(self.folder) or real_restore(self, model))
    (result,) = train.run_train(_cfg(sets), folds=[0], resume=True)
    files = RunFolder(run_dir).fold(0)
    assert restored == [files.staged.resume_dir]
    assert pd.read_csv(files.history)["epoch"].tolist() == [0, 1, 2] and result.summary["epochs_run"] == 3
    assert not files.staged.dir.exists() and RunFolder(run_dir).fold_state(0) is FoldState.FINISHED


@pytest.mark.slow
def test_a_retrain_killed_by_sigkill_keeps_the_fold_and_resumes(run_dir, small_root):
    import pandas as pd

    from amazonmine.stages.train import run_train

    before = _fold0(run_dir)
    sets = _sets(small_root, run_dir, "train.epochs=4", "train.steps_per_epoch=6")
    staged = RunFolder(run_dir).fold(0).staged
    args = [sys.executable, "-c", "from amazonmine.cli import main; main()", "train", "--retrain", "--fold", "0"]
    for s in sets:
        args += ["--set", s]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not staged.has_resume_state() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, "the retrain ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    _assert_usable_as_before(run_dir, before)
    (result,) = run_train(_cfg(sets), folds=[0], resume=True)
    files = RunFolder(run_dir).fold(0)
    assert pd.read_csv(files.history)["epoch"].tolist() == [0, 1, 2, 3] and result.summary["epochs_run"] == 4
    assert not staged.dir.exists()


# --- the swap, killed after each of its steps ---------------------------------------------------------------

def _staged_fold(run_dir: Path):
    """A finished fold 0 ("old") and a finished retrain of it in .next/ ("new"), killed before its resume
    state was cleared."""
    files = RunFolder(run_dir).fold(0)
    for where, which in ((files, "old"), (files.staged, "new")):
        where.tensorboard.mkdir(parents=True)
        (where.tensorboard / f"{which}.events").write_text(which)
        where.model.write_text(f"{which} model")
        where.history.write_text(f"{which} history")
        where.oof.write_text(f"{which} oof")
        where.summary.write_text(json.dumps({"which": which}))
    files.holdout.write_text("old model's lockbox predictions")
    files.staged.resume_dir.mkdir()
    files.staged.resume_weights.write_text("weights")
    files.staged.resume_meta.write_text(json.dumps({"epoch": 2}))
    return files


def test_the_swap_killed_after_any_step_leaves_a_usable_fold_and_is_completed(tmp_path):
    from amazonmine.core.fold_plan import finish_retrain, swap_steps

    n_steps = len(swap_steps(RunFolder(tmp_path / "probe").fold(0)))
    for killed_after in range(n_steps + 1):
        run_dir = tmp_path / f"run{killed_after}"
        files = _staged_fold(run_dir)
        for step in swap_steps(files)[:killed_after]:
            step()
        run = RunFolder(run_dir)
        if files.summary.is_file():  # finished: the model and every file are all old or all new
            which = json.loads(files.summary.read_text())["which"]
            assert run.fold_state(0) is FoldState.FINISHED
            assert [f.read_text() for f in (files.model, files.history, files.oof)] == [
                f"{which} model", f"{which} history", f"{which} oof"], killed_after
            assert [f.fold for f in run.finished_models().folds] == [0]
        else:  # between: unfinished, never the old model taken for the new or the reverse
            assert run.fold_state(0) is FoldState.INTERRUPTED and not files.has_resume_state()
            assert files.staged.summary.is_file()  # so the next train completes the swap
            with pytest.raises(AmazonmineError, match="no finished fold"):
                run.finished_models()
        assert not (files.staged.has_resume_state() and not files.staged.summary.is_file()), killed_after
        done = finish_retrain(files)  # what the next 'amazonmine train' does first
        assert done == (killed_after < n_steps - 1), killed_after
        assert json.loads(files.summary.read_text()) == {"which": "new"}
        assert [f.read_text() for f in (files.model, files.history, files.oof)] == [
            "new model", "new history", "new oof"]
        assert [p.name for p in files.tensorboard.iterdir()] == ["new.events"]
        assert not files.holdout.exists()  # predict predicts the lockbox again, with the new model
        assert not files.staged.dir.exists() and run.fold_state(0) is FoldState.FINISHED
        assert finish_retrain(files) is False


# --- a full disk -------------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("fault", ["h5py", "enospc"])
def test_disk_full_while_saving_the_checkpoint_is_one_line_and_keeps_the_finished_fold(
        run_dir, small_root, monkeypatch, fault):
    import keras

    from amazonmine.cli import main

    def full(self, *args, **kwargs):
        if fault == "h5py":
            raise RuntimeError("Can't destroy cache (file write failed: time = now, filename = 'x.h5')")
        raise OSError(errno.ENOSPC, "No space left on device")

    before = _fold0(run_dir)
    monkeypatch.setattr(keras.Model, "save", full)
    sets = [a for s in _sets(small_root, run_dir) for a in ("--set", s)]
    for fold, flags in ((0, ["--retrain"]), (1, [])):  # a retrain of a finished fold; a first training
        result = CliRunner().invoke(main, ["train", "--fold", str(fold), *flags, *sets])
        _assert_usable_as_before(run_dir, before)
        assert result.exit_code == 1, result.output
        lines = _error_lines(result)
        assert len(lines) == 1 and lines[0].startswith("error:"), lines
        assert RunFolder(run_dir).fold(fold).model.name in lines[0]
        assert ("disk full" if fault == "h5py" else "free some space") in lines[0]
        assert f"'amazonmine train --fold {fold}{' --retrain' if flags else ''}'" in lines[0]


# --- one writer at a time ----------------------------------------------------------------------------------

def _hold(run_dir: Path) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_train_is_refused_at_once_naming_the_holder(small_root, tmp_path):
    from amazonmine.cli import main
    from amazonmine.stages.split import run_split

    run_dir = tmp_path / "run"
    sets = _sets(small_root, run_dir)
    run_split(_cfg(sets))
    # What a running train leaves in its fold: without the lock this reads as an interrupted run to --resume.
    resume = RunFolder(run_dir).fold(0).resume_dir
    resume.mkdir(parents=True)
    (resume / "state.weights.h5").write_bytes(b"weights")
    (resume / "state.json").write_text('{"epoch": 1}')
    holder = _hold(run_dir)
    try:
        started = time.perf_counter()
        for flags in ([], ["--resume"], ["--retrain"]):
            result = CliRunner().invoke(main, ["train", "--fold", "0", *flags,
                                               *[a for s in sets for a in ("--set", s)]])
            assert result.exit_code == 1, result.output
            lines = _error_lines(result)
            assert len(lines) == 1 and f"in use by pid {holder.pid}" in lines[0], lines
            assert "amazonmine train" in lines[0] and str(run_dir) in lines[0]
        assert time.perf_counter() - started < 60  # refused at once, not after loading data or training
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (resume / "state.weights.h5").read_bytes() == b"weights"


def test_dehaze_locks_the_run_folder_only_when_writing_into_it(synth_root, tmp_path, make_cfg):
    from amazonmine.stages.dehaze import run_dehaze

    chips = tmp_path / "chips"
    chips.mkdir()
    for chip in sorted((synth_root / "train-jpg").glob("*.jpg"))[:3]:
        shutil.copy(chip, chips / chip.name)
    cfg = make_cfg(synth_root, **{"dehaze.workers": 1})
    holder = _hold(cfg.run_dir)
    try:
        for dst in (None, cfg.run_dir / "elsewhere_in_the_run"):  # the run's dehazed folder; inside the run
            with pytest.raises(LockedError, match=f"in use by pid {holder.pid}"):
                run_dehaze(cfg, src=chips, dst=dst)
        assert not RunFolder.from_config(cfg).dehazed.exists()
        outside = run_dehaze(cfg, src=chips, dst=tmp_path / "outside")  # no run's folder: not locked
        assert outside.processed == 3
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
