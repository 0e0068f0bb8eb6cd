"""The run-folder lock (one writer at a time, a killed holder never blocks) and disk errors that name the
artifact, not a hidden temporary."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from amazonmine.core.errors import AmazonmineError
from amazonmine.core.io import LockedError, atomic_path, exclusive_lock, write_bytes_atomic
from amazonmine.core.runfolder import RunFolder

HOLD = ("import sys, time\nfrom amazonmine.core.runfolder import RunFolder\nfrom pathlib import Path\n"
        "with RunFolder(Path(sys.argv[1])).lock('train'):\n    print('held', flush=True)\n    time.sleep(60)\n")


def _hold(run_dir: Path) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_writer_is_refused_naming_the_holder_and_a_killed_holder_does_not_block(tmp_path):
    run = RunFolder(tmp_path / "run")
    holder = _hold(run.root)
    try:
        with pytest.raises(LockedError) as refused:
            with run.lock("tune"):
                pass
        message = str(refused.value)
        assert f"pid {holder.pid}" in message and "amazonmine train" in message and "since" in message
        assert str(run.root) in message
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with run.lock("tune"):  # the kernel dropped the dead holder's lock: no stale-lock clean-up needed
        pass


def test_stages_that_write_the_run_folder_take_the_lock(tmp_path, make_cfg, synth_root):
    from click.testing import CliRunner

    from amazonmine.cli import main

    cfg = make_cfg(synth_root, **{"dehaze.enabled": "false", "split.folds": 2})
    holder = _hold(cfg.run_dir)
    try:
        for stage in ("split", "tune", "evaluate", "predict"):
            result = CliRunner().invoke(main, [stage, "--set", f"run.dir={cfg.run_dir}",
                                               "--set", f"data.root={synth_root}", "--set", "dehaze.enabled=false",
                                               "--set", "split.folds=2"])
            assert result.exit_code == 1, (stage, result.output)
            assert f"in use by pid {holder.pid}" in result.output and result.output.count("\n") == 1
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()


def test_run_dir_that_is_a_file_is_one_clear_error(tmp_path):
    (tmp_path / "run").write_text("not a folder")
    with pytest.raises(AmazonmineError, match="run.dir is a file, not a folder"):
        with RunFolder(tmp_path / "run").lock("split"):
            pass


def test_disk_full_names_the_artifact_and_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "thresholds.json"
    target.write_text("old")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    frame = pd.DataFrame({"a": [1]})
    monkeypatch.setattr(pd.DataFrame, "to_csv", full)
    with pytest.raises(OSError) as failed:
        with atomic_path(target) as tmp:
            frame.to_csv(tmp)
    assert failed.value.filename == str(target) and "free some space" in failed.value.strerror
    assert target.read_text() == "old" and sorted(os.listdir(tmp_path)) == ["thresholds.json"]


def test_h5py_style_runtime_error_while_saving_is_an_oserror_naming_the_model(tmp_path):
    target = tmp_path / "b01_dense121.h5"
    with pytest.raises(OSError) as failed:
        with atomic_path(target):
            raise RuntimeError("Can't destroy cache (file write failed)")
    assert failed.value.filename == str(target) and "disk full" in failed.value.strerror
    assert not target.exists() and os.listdir(tmp_path) == []


def test_read_only_folder_names_the_artifact_not_the_temporary(tmp_path, monkeypatch):
    # Root ignores permission bits, so the refusal is simulated where the temporary is opened.
    import amazonmine.core.io as amio

    def refuse(folder, stem, suffix):
        raise OSError(errno.EROFS, "Read-only file system", os.path.join(folder, f".{stem}.1.tmp{suffix}"))

    monkeypatch.setattr(amio, "_open_temporary", refuse)
    monkeypatch.setattr(amio, "_write_unnamed", lambda *a: False)
    for write in (lambda p: write_bytes_atomic(p, b"x"), lambda p: atomic_path(p).__enter__()):
        with pytest.raises(OSError) as failed:
            write(tmp_path / "submission.csv")
        assert failed.value.filename == str(tmp_path / "submission.csv")
        assert "not writable" in failed.value.strerror


def test_lock_is_exclusive_within_one_process_too(tmp_path):
    with exclusive_lock(tmp_path / ".lock", "first"):
        started = time.perf_counter()
        with pytest.raises(LockedError):
            with exclusive_lock(tmp_path / ".lock", "second"):
                pass
        assert time.perf_counter() - started < 1  # refused at once, no waiting


def test_taking_the_lock_sweeps_what_a_killed_writer_left(tmp_path):
    # What kill -9 during a write leaves (found by scripts/fault_drill.py): io's hidden temporaries.
    run = RunFolder(tmp_path / "run")
    stale = [run.report_dir / ".curves.4242.tmp.png", run.root / ".test_probabilities.77.tmp.csv",
             run.fold(0).resume_dir / ".state.weights.13.tmp.weights.h5"]
    kept = [run.root / ".next_note", run.fold(0).dir / ".next" / "summary.json", run.submission,
            run.dehazed / "train-jpg" / ".a.5.tmp.jpg"]  # dehaze sweeps its own folders when it runs
    for path in stale + kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    with run.lock("evaluate"):
        assert [p.exists() for p in stale] == [False] * 3
        assert all(p.exists() for p in kept)
