"""Fold policy on hand-made run folders (no TensorFlow): which folds, skip / resume / train, the resume state's
files, a fold's rows and chip folder."""

import json

import numpy as np
import pytest

from amazonmine.core.errors import AmazonmineError

NAMES = [f"train_{i}" for i in range(6)]
FOLD_OF = [0, 1, 0, 1, 0, 1]


@pytest.fixture
def cfg(tmp_path, make_cfg):
    """A run with a two-fold split of six chips (train_1 copied twice more for fold 0 under views 3 and 5)."""
    data = tmp_path / "planet"
    (data / "train-jpg").mkdir(parents=True)
    (data / "train_v2.csv").write_text("image_name,tags\n" + "".join(
        f"{n},{'clear primary artisinal_mine' if i == 1 else 'haze primary'}\n" for i, n in enumerate(NAMES)))
    cfg = make_cfg(data, **{"split.folds": 2, "dehaze.enabled": "false"})
    cfg.run_dir.mkdir()
    (cfg.run_dir / "folds.csv").write_text("image_name,fold\n" + "".join(
        f"{n},{f}\n" for n, f in zip(NAMES, FOLD_OF)))
    rows = [(n, k, 0) for k in (0, 1) for n, f in zip(NAMES, FOLD_OF) if f != k] + [("train_1", 0, 3),
                                                                                     ("train_1", 0, 5)]
    (cfg.run_dir / "train_manifest.csv").write_text("image_name,fold,transform\n" + "".join(
        f"{n},{k},{t}\n" for n, k, t in rows))
    return cfg


def test_resolve_folds(make_cfg):
    from amazonmine.core.fold_plan import resolve_folds

    cfg = make_cfg(None, **{"split.folds": 3, "train.folds": "[]"})
    assert resolve_folds(cfg) == [0, 1, 2]
    assert resolve_folds(cfg, (2, 0, 2)) == [0, 2]
    assert resolve_folds(cfg, (1,), all_folds=True) == [0, 1, 2]
    with pytest.raises(AmazonmineError, match=r"fold\(s\) \[3\] out of range"):
        resolve_folds(cfg, (3,))


def test_model_settings_leave_out_speed_and_output(make_cfg):
    from amazonmine.core.fold_plan import model_settings

    plain = model_settings(make_cfg(None, **{"dehaze.enabled": "false", "train.verbose": 2}))
    assert model_settings(make_cfg(None, **{"dehaze.enabled": "false", "train.verbose": 0,
                                            "train.cache": "false"})) == plain
    assert "train.dropout" in plain and not any(k.startswith("dehaze.") and k != "dehaze.enabled" for k in plain)
    dehazed = model_settings(make_cfg(None, **{"dehaze.enabled": "true"}))
    assert any(k.startswith("dehaze.") and k != "dehaze.enabled" for k in dehazed)
    assert "dehaze.workers" not in dehazed
    # one-cycle's warm-up share matters only to that schedule
    assert "train.one_cycle_warmup" not in plain
    one_cycle = model_settings(make_cfg(None, **{"train.schedule": "one_cycle", "train.one_cycle_warmup": 0.25}))
    assert one_cycle["train.one_cycle_warmup"] == 0.25 and "train.warmup_epochs" not in one_cycle


def _finish(cfg, fold, **summary):
    from amazonmine.core.runfolder import RunFolder

    files = RunFolder.from_config(cfg).fold(fold)
    files.dir.mkdir(exist_ok=True)
    files.model.write_bytes(b"a model")
    files.summary.write_text(json.dumps(summary))
    return files


def test_fold_action_finished_interrupted_absent(cfg):
    from amazonmine.core.fold_plan import ResumeState, fold_action, model_settings
    from amazonmine.core.runfolder import RunFolder

    run = RunFolder.from_config(cfg)
    split_id, settings = run.split_fingerprint(), model_settings(cfg)
    assert fold_action(cfg, 0) == ("train", None)
    _finish(cfg, 0, split_sha256=split_id, settings=settings)
    assert fold_action(cfg, 0) == ("skip", None)
    assert fold_action(cfg, 0, resume=True) == ("skip", None)
    assert fold_action(cfg, 0, retrain=True) == ("train", None)
    _finish(cfg, 0, split_sha256="0" * 64, settings=settings)
    assert fold_action(cfg, 0).kind == "train" and "split changed" in fold_action(cfg, 0).note
    _finish(cfg, 0, split_sha256=split_id, settings={**settings, "train.dropout": 0.9})
    with pytest.raises(AmazonmineError, match=r"other settings \(train.dropout 0.9 -> 0.2\); --retrain"):
        fold_action(cfg, 0)
    _finish(cfg, 0, best_val_f2=0.5)  # an earlier version recorded neither
    kind, note = fold_action(cfg, 0)
    assert kind == "skip" and "earlier version" in note

    files = run.fold(1)
    files.dir.mkdir()
    files.model.write_bytes(b"a checkpoint, no summary, no resume state")
    assert fold_action(cfg, 1) == ("train", None)
    state = ResumeState(files, split_id, settings)
    files.resume_dir.mkdir()
    files.resume_weights.write_bytes(b"weights")
    state.best = 0.25
    state.save_progress(2)
    with pytest.raises(AmazonmineError, match=r"interrupted run is saved in resume/ \(after epoch 2\)"):
        fold_action(cfg, 1)
    assert fold_action(cfg, 1, resume=True) == ("resume", None)
    ResumeState(files, "1" * 64, settings).save_progress(2)
    with pytest.raises(AmazonmineError, match="split changed since this fold's interrupted run"):
        fold_action(cfg, 1, resume=True)


def test_resume_state_files_and_format(cfg):
    from amazonmine.core.fold_plan import ResumeState
    from amazonmine.core.runfolder import RunFolder

    files = RunFolder.from_config(cfg).fold(0)
    state = ResumeState(files, "ab" * 32, {"train.dropout": 0.2})
    assert (state.folder, state.weights, state.meta) == (cfg.run_dir / "fold0" / "resume",
                                                         cfg.run_dir / "fold0" / "resume" / "state.weights.h5",
                                                         cfg.run_dir / "fold0" / "resume" / "state.json")
    state.folder.mkdir(parents=True)
    state.best = 0.5
    state.save_progress(3)
    assert not state.exists()  # progress without weights is not a state to resume
    state.weights.write_bytes(b"w")
    assert state.exists() and files.has_resume_state()
    assert json.loads(state.meta.read_text()) == {"epoch": 3, "best_val_f2": 0.5, "split_sha256": "ab" * 32,
                                                  "settings": {"train.dropout": 0.2}, "counters": {}}
    state.clear()
    assert not state.folder.exists()


def test_fold_plan_rows_and_chip_folder(cfg, make_cfg):
    from amazonmine.core.data import DataError
    from amazonmine.core.fold_plan import load_fold_plan

    plan = load_fold_plan(cfg, 0)
    assert list(plan.names[plan.val_rows]) == ["train_0", "train_2", "train_4"]
    assert sorted(plan.names[plan.train_rows]) == ["train_1", "train_1", "train_1", "train_3", "train_5"]
    assert sorted(plan.transforms) == [0, 0, 0, 3, 5]
    assert plan.labels.shape == (6, 17)
    np.testing.assert_array_equal(plan.used_rows(), np.arange(6))
    assert plan.chip_paths(np.array([1]))[0] == cfg.data_root / "train-jpg" / "train_1.jpg"
    dehazed = make_cfg(cfg.data_root, **{"split.folds": 2, "dehaze.enabled": "true"})
    with pytest.raises(DataError, match="dehazed chips not found: run 'amazonmine dehaze' first"):
        load_fold_plan(dehazed, 0)


def test_an_interrupted_retrain_comes_first_and_is_trained_beside_the_fold(cfg):
    from amazonmine.core.fold_plan import ResumeState, fold_action, model_settings, training_files
    from amazonmine.core.runfolder import RunFolder

    run = RunFolder.from_config(cfg)
    split_id, settings = run.split_fingerprint(), model_settings(cfg)
    files = run.fold(0)
    assert training_files(files, "train") == files  # a first training: in the fold itself, as always
    _finish(cfg, 0, split_sha256=split_id, settings=settings)
    assert training_files(files, "train") == files.staged  # a finished fold is kept until the new one is done
    assert files.staged.dir == files.dir / ".next" and files.staged.oof == files.dir / ".next" / files.oof.name
    staged = files.staged
    staged.resume_dir.mkdir(parents=True)
    staged.resume_weights.write_bytes(b"weights")
    ResumeState(staged, split_id, settings).save_progress(1)
    with pytest.raises(AmazonmineError, match=r"interrupted retrain is saved in \.next/resume/ \(after epoch 1\); "
                                              r"continue it with --resume"):
        fold_action(cfg, 0)
    assert fold_action(cfg, 0, resume=True) == ("resume", None)
    assert training_files(files, "resume") == staged  # the retrain continues, not the fold's older state
    assert fold_action(cfg, 0, retrain=True) == ("train", None)
    ResumeState(staged, split_id, {**settings, "train.dropout": 0.9}).save_progress(1)
    with pytest.raises(AmazonmineError, match=r"interrupted retrain used other settings \(train.dropout 0.9"):
        fold_action(cfg, 0, resume=True)


def test_a_staged_folder_with_nothing_to_continue_is_removed_not_swapped(cfg):
    from amazonmine.core.fold_plan import finish_retrain
    from amazonmine.core.runfolder import RunFolder

    files = _finish(cfg, 0, which="old")
    files.staged.dir.mkdir()
    files.staged.model.write_bytes(b"a first epoch's checkpoint of a retrain killed before its resume state")
    assert finish_retrain(files) is False
    assert not files.staged.dir.exists() and files.model.read_bytes() == b"a model"
    assert RunFolder.from_config(cfg).fold_state(0).value == "finished"
