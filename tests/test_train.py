"""Train stage on tiny synthetic chips: it learns, it resumes, it reproduces, its .h5 loads safely."""

import json

import numpy as np
import pandas as pd
import pytest

from amazonmine.core.data import LABELS, tags_to_matrix
from amazonmine.core.errors import AmazonmineError
from amazonmine.core.metrics import mean_f2

pytestmark = pytest.mark.slow

TINY = {
    "dehaze.enabled": "false", "split.folds": 2, "split.rare_threshold": 0.02, "split.rare_target": 12,
    "train.backbone": "densenet_mini", "train.mini_blocks": "[2,2]", "train.image_size": 32,
    "train.batch_size": 16, "train.learning_rate": 0.003, "train.warmup_epochs": 0, "train.cache": "true",
    "train.verbose": 0, "predict.tta": 1, "predict.batch_size": 64,
}


@pytest.fixture(scope="module")
def learn_root(tmp_path_factory):
    from amazonmine.stages.synth import paint_dataset

    root = tmp_path_factory.mktemp("learn") / "planet"
    paint_dataset(root, n_train=240, n_test=10, size=32, seed=5, rare_boost=1.0, progress=False)
    return root


def tiny_cfg(make_cfg, root, **extra):
    from amazonmine.stages.split import run_split

    cfg = make_cfg(root, **{**TINY, **extra})
    run_split(cfg)
    return cfg


def best_constant_f2(y: np.ndarray) -> float:
    """The best single label set predicted for every chip (greedy forward selection), scored on y itself."""
    chosen = np.zeros(y.shape[1], bool)
    best = 0.0
    while True:
        trials = []
        for j in np.flatnonzero(~chosen):
            trial = chosen.copy()
            trial[j] = True
            trials.append((mean_f2(y, np.broadcast_to(trial, y.shape)), j))
        if not trials:
            return best
        score, j = max(trials)
        if score <= best:
            return best
        best, chosen[j] = score, True


@pytest.fixture(scope="module")
def trained(learn_root, tmp_path_factory):
    from amazonmine.core.config import load_config
    from amazonmine.stages.split import run_split
    from amazonmine.stages.train import run_train

    run_dir = tmp_path_factory.mktemp("run")
    sets = [f"{k}={v}" for k, v in TINY.items()] + [f"data.root={learn_root}", f"run.dir={run_dir}",
                                                    "train.epochs=2", "train.steps_per_epoch=30"]
    cfg = load_config(None, sets)
    run_split(cfg)
    (result,) = run_train(cfg, folds=[0])
    return cfg, result


def test_two_epochs_beat_the_best_constant_prediction(trained, learn_root):
    cfg, result = trained
    oof = pd.read_csv(cfg.run_dir / "oof_fold0.csv")
    labels = pd.read_csv(learn_root / "train_v2.csv").set_index("image_name").loc[oof["image_name"]]
    y = tags_to_matrix(labels["tags"])
    model_f2 = mean_f2(y, oof[list(LABELS)].to_numpy() >= 0.2)
    constant = best_constant_f2(y)
    assert model_f2 > constant + 0.03, (model_f2, constant)
    assert result.summary["train_images_per_s"] > 0


def test_artifacts_of_a_fold(trained):
    cfg, result = trained
    fold = cfg.run_dir / "fold0"
    for name in ("b01_dense121.h5", "history.csv", "summary.json"):
        assert (fold / name).is_file(), name
    assert (cfg.run_dir / "config.yaml").is_file()
    assert not (fold / "resume").exists()  # cleared once the fold finished
    summary = json.loads((fold / "summary.json").read_text())
    assert summary["best_epoch"] in (1, 2) and 0 < summary["best_val_f2"] <= 1
    history = pd.read_csv(fold / "history.csv")
    assert len(history) == 2 and {"loss", "val_loss", "f2", "val_f2"} <= set(history.columns)
    oof = pd.read_csv(cfg.run_dir / "oof_fold0.csv")
    folds = pd.read_csv(cfg.run_dir / "folds.csv")
    assert sorted(oof["image_name"]) == sorted(folds.loc[folds["fold"] == 0, "image_name"])
    assert list(oof.columns) == ["image_name", *LABELS]


def test_the_kept_model_says_which_epoch_and_score_it_is(trained):
    from amazonmine.core.io import read_h5_stamp

    cfg, result = trained
    history = pd.read_csv(cfg.run_dir / "fold0" / "history.csv")
    best = history.loc[history["val_f2"].idxmax()]
    assert result.summary["bn_recalibration"]["kept"]  # so the model was saved again after the checkpoint
    assert read_h5_stamp(result.model_path) == {"val_f2": pytest.approx(best["val_f2"]),
                                                "val_loss": pytest.approx(best["val_loss"]),
                                                "epoch": best["epoch"] + 1}


def test_a_keras_archive_model_trains_and_loads(learn_root, make_cfg):
    import zipfile

    from amazonmine.neural.model import load_trained
    from amazonmine.stages.train import run_train

    cfg = tiny_cfg(make_cfg, learn_root, **{"train.epochs": 1, "train.steps_per_epoch": 3,
                                            "train.artifact_name": "b01.keras"})
    (result,) = run_train(cfg, folds=[0])
    assert zipfile.is_zipfile(result.model_path) and result.summary["best_epoch"] == 1
    assert load_trained(result.model_path).output_shape[-1] == len(LABELS)


def test_h5_loads_in_safe_mode_and_predicts_the_same(trained, learn_root):
    import keras

    from amazonmine.neural.datasets import read_chip

    cfg, result = trained
    model = keras.models.load_model(result.model_path, safe_mode=True)
    oof = pd.read_csv(cfg.run_dir / "oof_fold0.csv").head(8)
    x = np.stack([read_chip(learn_root / "train-jpg" / f"{n}.jpg") for n in oof["image_name"]])
    np.testing.assert_allclose(model.predict(x, verbose=0), oof[list(LABELS)].to_numpy(), atol=2e-5)


def test_same_seed_same_first_epoch_loss(learn_root, make_cfg, tmp_path):
    from amazonmine.stages.train import run_train

    losses = []
    for attempt in range(2):
        cfg = tiny_cfg(make_cfg, learn_root, **{"train.epochs": 1, "train.steps_per_epoch": 6,
                                                 "run.dir": tmp_path / f"r{attempt}"})
        list(run_train(cfg, folds=[1]))
        losses.append(pd.read_csv(cfg.run_dir / "fold1" / "history.csv")["loss"].iloc[0])
    assert abs(losses[0] - losses[1]) < 1e-6, losses


@pytest.mark.parametrize("ema", [0.0, 0.9])  # with weight averaging the averages are optimizer slots too
def test_interrupted_run_resumes_at_the_right_epoch_with_its_optimizer(learn_root, make_cfg, monkeypatch, ema):
    import keras

    import amazonmine.neural.trainer as trainer
    import amazonmine.stages.train as train

    cfg = tiny_cfg(make_cfg, learn_root, **{"train.epochs": 3, "train.steps_per_epoch": 5, "train.ema": ema})
    saved = {}

    class CtrlC(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if self.params and self._epoch == 1 and batch == 2:
                raise KeyboardInterrupt

        def on_epoch_begin(self, epoch, logs=None):
            self._epoch = epoch

    original_callbacks = trainer.fold_callbacks
    monkeypatch.setattr(trainer, "fold_callbacks",
                        lambda *a, **k: (lambda cbs: (cbs[0] + [CtrlC()], *cbs[1:]))(original_callbacks(*a, **k)))
    original_save = trainer.ResumeState.save

    def spy_save(self, model, epoch):
        original_save(self, model, epoch)
        saved.update(epoch=epoch, iterations=int(model.optimizer.iterations.numpy()),
                     slots=[v.numpy().copy() for v in model.optimizer.variables])

    monkeypatch.setattr(trainer.ResumeState, "save", spy_save)
    with pytest.raises(AmazonmineError, match="interrupted: resume state saved"):
        list(train.run_train(cfg, folds=[0]))
    assert saved["epoch"] == 1  # epoch 2 was cut short: it will be redone
    assert saved["iterations"] == 5  # the end of epoch 1: the cut epoch is redone from its start
    state = json.loads((cfg.run_dir / "fold0" / "resume" / "state.json").read_text())
    assert state["epoch"] == 1 and state["best_val_f2"] > 0

    at_interrupt = dict(saved)
    monkeypatch.setattr(trainer, "fold_callbacks", original_callbacks)
    restored = {}
    original_restore = trainer.ResumeState.restore

    def spy_restore(self, model):
        epoch = original_restore(self, model)
        restored.update(epoch=epoch, iterations=int(model.optimizer.iterations.numpy()),
                        slots=[v.numpy().copy() for v in model.optimizer.variables])
        return epoch

    monkeypatch.setattr(trainer.ResumeState, "restore", spy_restore)
    (result,) = train.run_train(cfg, folds=[0], resume=True)
    assert restored["epoch"] == 1 and restored["iterations"] == at_interrupt["iterations"]
    for a, b in zip(at_interrupt["slots"], restored["slots"]):
        np.testing.assert_array_equal(a, b)
    history = pd.read_csv(cfg.run_dir / "fold0" / "history.csv")
    assert history["epoch"].tolist() == [0, 1, 2]
    assert result.summary["best_val_f2"] >= state["best_val_f2"]  # the best score survived the restart


def _tiny_trained_model():
    import keras

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="adam", loss="mse")
    model.fit(np.ones((4, 3)), np.zeros((4, 2)), epochs=1, verbose=0)
    return model


def test_a_kill_between_the_resume_files_neither_repeats_an_epoch_nor_forgets_the_best(learn_root, make_cfg):
    """Each epoch ends with three writes: the best checkpoint, the resume weights, state.json. A kill between
    any two leaves them disagreeing; a resume goes by the furthest each one got."""
    from amazonmine.core.fold_plan import ResumeState
    from amazonmine.core.io import atomic_path, read_h5_stamp, stamp_h5
    from amazonmine.core.runfolder import RunFolder

    cfg = tiny_cfg(make_cfg, learn_root)
    files = RunFolder.from_config(cfg).fold(0)
    files.dir.mkdir(parents=True)
    model = _tiny_trained_model()
    state = ResumeState(files)
    state.best = 0.5
    counters = {"early_stopping": {"wait": 0.0, "best": 0.5, "best_epoch": 0.0}}
    state.counters_of = lambda: json.loads(json.dumps(counters))
    state.save(model, 1)

    class Killed(BaseException):
        pass

    def killed(epoch):
        raise Killed

    state.best = 0.6
    counters["early_stopping"].update(best=0.6, best_epoch=1.0)
    state.save_progress, saving = killed, state.save_progress
    with pytest.raises(Killed):  # epoch 2's weights are written, its state.json is not
        state.save(model, 2)
    assert json.loads(files.resume_meta.read_text())["epoch"] == 1
    assert read_h5_stamp(files.resume_weights) == {"epoch": 2.0, "best_val_f2": 0.6}
    fresh = ResumeState(files)
    assert fresh.restore(_tiny_trained_model()) == 2 and fresh.best == 0.6  # epoch 2 is not trained again
    assert fresh.counters == counters  # and early stopping counts its patience from epoch 2's, not epoch 1's

    # Epoch 3 beat the best and its checkpoint was written; the kill came before its resume state.
    with atomic_path(files.model) as tmp:
        model.save(tmp, include_optimizer=False)
        stamp_h5(tmp, val_f2=0.7, epoch=3)
    fresh = ResumeState(files)
    assert fresh.restore(_tiny_trained_model()) == 2 and fresh.best == 0.7  # a worse re-run will not replace it

    # Training that stopped early says in state.json that every epoch is done: that is not undone either.
    state.save_progress = saving
    counters["early_stopping"]["wait"] = 1.0
    state.save_progress(cfg.train.epochs)
    fresh = ResumeState(files)
    assert fresh.restore(_tiny_trained_model()) == cfg.train.epochs and fresh.counters == counters


def test_gpu_flag_without_gpu_is_a_clear_error(learn_root, make_cfg):
    from amazonmine.stages.train import run_train

    cfg = tiny_cfg(make_cfg, learn_root)
    with pytest.raises(AmazonmineError, match="--gpu given but TensorFlow sees no GPU"):
        list(run_train(cfg, folds=[0], gpu=True))


def test_corrupt_training_chip_stops_before_training(learn_root, make_cfg, tmp_path):
    import shutil

    from amazonmine.core.data import DataError
    from amazonmine.stages.train import run_train

    root = tmp_path / "planet"
    shutil.copytree(learn_root, root)
    chip = root / "train-jpg" / "train_7.jpg"
    chip.write_bytes(chip.read_bytes()[:200])
    cfg = tiny_cfg(make_cfg, root, **{"train.epochs": 1})
    with pytest.raises(DataError, match=r"train_7\.jpg: truncated or corrupt JPEG"):
        list(run_train(cfg, folds=[0]))
    assert not (cfg.run_dir / "fold0").exists()  # no model, and no empty fold folder either


def test_missing_dehazed_folder_says_what_to_do(learn_root, make_cfg):
    from amazonmine.core.data import DataError
    from amazonmine.stages.train import run_train

    cfg = tiny_cfg(make_cfg, learn_root, **{"dehaze.enabled": "true"})
    with pytest.raises(DataError, match="run 'amazonmine dehaze' first"):
        list(run_train(cfg, folds=[0]))


def test_imagenet_weights_offline_or_bad_path_give_advice(tmp_path):
    from amazonmine.core.config import load_config
    from amazonmine.neural.model import WeightsError, build_model

    cfg = load_config(None, ["train.weights=" + str(tmp_path / "missing_notop.h5"), "train.image_size=32"])
    with pytest.raises(WeightsError, match="missing_notop.h5 not found"):
        build_model(cfg.train)
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5")
    cfg = load_config(None, [f"train.weights={junk}", "train.image_size=32"])
    with pytest.raises(WeightsError, match="cannot load"):
        build_model(cfg.train)


def test_summary_records_the_recalibration(trained):
    cfg, result = trained
    recal = result.summary["bn_recalibration"]
    assert recal["layers"] > 0 and 0 < recal["val_f2_after"] <= 1


def test_init_from_starts_at_the_saved_weights(trained, learn_root, make_cfg):
    import keras

    from amazonmine.core.errors import AmazonmineError
    from amazonmine.stages.train import run_train

    cfg0, result = trained
    cfg = tiny_cfg(make_cfg, learn_root, **{"train.epochs": 1, "train.steps_per_epoch": 2,
                                             "train.learning_rate": 1e-9, "train.bn_recalibration_batches": 0,
                                             "train.init_from": result.model_path})
    (again,) = run_train(cfg, folds=[0])
    before = keras.models.load_model(result.model_path, safe_mode=True).get_weights()
    after = keras.models.load_model(again.model_path, safe_mode=True).get_weights()
    # a near-zero learning rate: the new run's weights are the old ones (BatchNorm statistics aside)
    conv = [i for i, w in enumerate(before) if w.ndim == 4]
    assert all(np.allclose(before[i], after[i], atol=1e-5) for i in conv)
    bad = tiny_cfg(make_cfg, learn_root, **{"train.mini_blocks": "[3]", "train.init_from": result.model_path})
    with pytest.raises(AmazonmineError, match=r"this fold was trained with other settings \(.*train.mini_blocks "
                                              r"\[2, 2\] -> \[3\].*\); --retrain"):
        list(run_train(bad, folds=[0]))  # a finished fold is neither kept nor replaced silently
    with pytest.raises(AmazonmineError, match="not the same architecture"):
        list(run_train(bad, folds=[0], retrain=True))


# --- re-running train on a run folder: nothing finished is lost ---------------------------------------------

def _md5(path):
    import hashlib

    return hashlib.md5(path.read_bytes()).hexdigest()


def test_a_finished_fold_is_kept_unless_retrain(learn_root, make_cfg):
    from amazonmine.stages.train import run_train

    cfg = tiny_cfg(make_cfg, learn_root, **{"train.epochs": 1, "train.steps_per_epoch": 2,
                                             "train.bn_recalibration_batches": 0})
    (first,) = run_train(cfg, folds=[0])
    model = cfg.run_dir / "fold0" / "b01_dense121.h5"
    before = _md5(model)
    (again,) = run_train(cfg, folds=[0])  # a plain re-run: kept, not retrained
    assert again.summary["skipped"] and not again.summary["note"] and "--retrain" in again.headline()
    assert _md5(model) == before
    # --resume over a whole run: the finished fold is kept and the fold never started is trained.
    kept, started = run_train(cfg, folds=[0, 1], resume=True)
    assert kept.summary["skipped"] and _md5(model) == before
    assert not started.summary.get("skipped") and (cfg.run_dir / "fold1" / "b01_dense121.h5").is_file()
    inode = model.stat().st_ino
    (retrained,) = run_train(cfg, folds=[0], retrain=True)
    # Training is deterministic, so the bytes may well be the same: the file was written anew (atomic rename).
    assert not retrained.summary.get("skipped") and model.stat().st_ino != inode
    with pytest.raises(AmazonmineError, match="exclude each other"):
        list(run_train(cfg, folds=[0], resume=True, retrain=True))


def test_a_fold_trained_on_another_split_is_trained_again(learn_root, make_cfg):
    from amazonmine.stages.train import run_train

    cfg = tiny_cfg(make_cfg, learn_root, **{"train.epochs": 1, "train.steps_per_epoch": 2,
                                             "train.bn_recalibration_batches": 0})
    (first,) = run_train(cfg, folds=[0])
    summary_path = cfg.run_dir / "fold0" / "summary.json"
    summary = json.loads(summary_path.read_text())
    assert len(summary["split_sha256"]) == 64
    summary_path.write_text(json.dumps({**summary, "split_sha256": "0" * 64}))  # as if split had changed
    (again,) = run_train(cfg, folds=[0])
    assert not again.summary.get("skipped") and "split changed" in again.headline()
    assert json.loads(summary_path.read_text())["split_sha256"] == summary["split_sha256"]


def test_an_interrupted_fold_is_not_restarted_by_accident(learn_root, make_cfg):
    from amazonmine.stages.train import run_train

    cfg = tiny_cfg(make_cfg, learn_root)
    resume = cfg.run_dir / "fold0" / "resume"
    resume.mkdir(parents=True)
    (resume / "state.weights.h5").write_bytes(b"weights of an interrupted run")
    (resume / "state.json").write_text('{"epoch": 2, "best_val_f2": 0.5}')
    with pytest.raises(AmazonmineError, match=r"interrupted run is saved in resume/ \(after epoch 2\).*--resume"):
        list(run_train(cfg, folds=[0]))
    assert (resume / "state.weights.h5").read_bytes() == b"weights of an interrupted run"


def test_ctrl_c_before_the_first_epoch_ends_leaves_nothing_unloadable(learn_root, make_cfg, monkeypatch):
    import keras

    import amazonmine.neural.trainer as trainer
    import amazonmine.stages.train as train

    cfg = tiny_cfg(make_cfg, learn_root, **{"train.epochs": 1, "train.steps_per_epoch": 2,
                                             "train.bn_recalibration_batches": 0})

    class CtrlCAtStart(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            raise KeyboardInterrupt  # before the optimizer's first step

    original_callbacks = trainer.fold_callbacks
    monkeypatch.setattr(trainer, "fold_callbacks",
                        lambda *a, **k: (lambda cbs: ([CtrlCAtStart()] + cbs[0], *cbs[1:]))(
                            original_callbacks(*a, **k)))
    with pytest.raises(AmazonmineError, match="interrupted during the first epoch of fold 0: nothing to resume"):
        list(train.run_train(cfg, folds=[0]))
    assert not (cfg.run_dir / "fold0" / "resume").exists()
    monkeypatch.setattr(trainer, "fold_callbacks", original_callbacks)
    (result,) = train.run_train(cfg, folds=[0], resume=True)  # nothing to resume: the fold simply trains
    assert result.model_path.is_file()


def test_batchnorm_recalibration_that_lowers_val_f2_is_not_kept(learn_root, make_cfg, monkeypatch):
    import keras

    import amazonmine.neural.trainer as trainer
    import amazonmine.stages.train as train
    from amazonmine.neural.fitting import batchnorm_layers
    from amazonmine.neural.model import load_trained

    def sabotage(model, dataset, batches):
        bns = batchnorm_layers(model)
        for bn in bns:
            bn.moving_mean.assign(bn.moving_mean.numpy() + 50.0)  # statistics that wreck every prediction
        return len(bns)

    monkeypatch.setattr(trainer, "recalibrate_batchnorm", sabotage)
    # A tiny model's F2 may not move at all, so the two validation scores (before, after) are set here; the
    # weights really are wrecked, and the saved model must be the checkpoint as trained.
    scores = iter([0.8, 0.5])
    real_f2 = trainer.mean_f2
    monkeypatch.setattr(trainer, "mean_f2", lambda y, p: next(scores, None) or real_f2(y, p))
    cfg = tiny_cfg(make_cfg, learn_root, **{"train.epochs": 1, "train.steps_per_epoch": 6,
                                             "train.bn_recalibration_batches": 2})
    (result,) = train.run_train(cfg, folds=[0])
    recal = result.summary["bn_recalibration"]
    assert recal["kept"] is False and recal["val_f2_after"] < recal["val_f2_before"]
    saved = load_trained(result.model_path)
    means = [bn.moving_mean.numpy() for bn in batchnorm_layers(saved)]
    assert means and max(float(np.abs(m).max()) for m in means) < 50.0  # the checkpoint as trained
    assert isinstance(saved, keras.Model)


def test_resume_refuses_another_split_or_other_settings(learn_root, make_cfg):
    from amazonmine.core.runfolder import RunFolder
    from amazonmine.stages.train import run_train

    cfg = tiny_cfg(make_cfg, learn_root)
    resume = cfg.run_dir / "fold0" / "resume"
    resume.mkdir(parents=True)
    (resume / "state.weights.h5").write_bytes(b"weights of an interrupted run")
    meta = {"epoch": 1, "best_val_f2": 0.5, "split_sha256": "0" * 64, "settings": {}}
    (resume / "state.json").write_text(json.dumps(meta))
    with pytest.raises(AmazonmineError, match="split changed since this fold's interrupted run; --retrain"):
        list(run_train(cfg, folds=[0], resume=True))
    meta.update(split_sha256=RunFolder(cfg.run_dir).split_fingerprint(), settings={"train.dropout": 0.9})
    (resume / "state.json").write_text(json.dumps(meta))
    with pytest.raises(AmazonmineError,
                       match=r"this fold's interrupted run used other settings \(train.dropout 0.9 -> 0.2\)"):
        list(run_train(cfg, folds=[0], resume=True))
    meta.update(settings={"train.dropout": 0.2})  # the same settings: the (fake) weights are tried, and refused
    (resume / "state.json").write_text(json.dumps(meta))
    with pytest.raises(AmazonmineError, match=r"state.weights.h5: cannot load the interrupted run's state"):
        list(run_train(cfg, folds=[0], resume=True))


def test_a_fold_finished_by_an_earlier_version_is_kept_with_a_note(learn_root, make_cfg):
    from amazonmine.stages.train import run_train

    cfg = tiny_cfg(make_cfg, learn_root)
    fold = cfg.run_dir / "fold0"
    fold.mkdir()
    (fold / "b01_dense121.h5").write_bytes(b"a model")
    (fold / "summary.json").write_text('{"fold": 0, "best_val_f2": 0.5}')  # no split or settings recorded
    (result,) = run_train(cfg, folds=[0])
    assert result.summary["skipped"] and "earlier version" in result.headline()


def test_ctrl_c_after_training_resumes_without_training_further(learn_root, make_cfg, monkeypatch):
    import amazonmine.neural.trainer as trainer
    import amazonmine.stages.train as train

    cfg = tiny_cfg(make_cfg, learn_root, **{"train.epochs": 2, "train.steps_per_epoch": 2,
                                             "train.bn_recalibration_batches": 1})
    real = trainer.recalibrate_batchnorm

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "recalibrate_batchnorm", interrupted)
    with pytest.raises(AmazonmineError, match="finishes them without training further"):
        list(train.run_train(cfg, folds=[0]))
    fold = cfg.run_dir / "fold0"
    assert json.loads((fold / "resume" / "state.json").read_text())["epoch"] == 2
    assert not (fold / "summary.json").exists()
    monkeypatch.setattr(trainer, "recalibrate_batchnorm", real)
    (result,) = train.run_train(cfg, folds=[0], resume=True)
    assert len(pd.read_csv(fold / "history.csv")) == 2 and result.summary["epochs_run"] == 2
    assert (fold / "summary.json").is_file() and not (fold / "resume").exists()


def test_weight_averaging_validates_and_keeps_the_average_and_resumes_from_raw_weights(learn_root, make_cfg,
                                                                                      monkeypatch):
    import amazonmine.neural.trainer as trainer
    import amazonmine.stages.train as train
    from amazonmine.neural.model import load_trained

    cfg = tiny_cfg(make_cfg, learn_root, **{"train.epochs": 2, "train.steps_per_epoch": 6, "train.ema": 0.8,
                                            "train.bn_recalibration_batches": 0})
    saved = []
    original_save = trainer.ResumeState.save

    def spy_save(self, model, epoch):
        original_save(self, model, epoch)
        saved.append({"raw": [v.numpy().copy() for v in model.trainable_variables],
                      "average": [v.numpy().copy() for v in model.optimizer._model_variables_moving_average]})

    monkeypatch.setattr(trainer.ResumeState, "save", spy_save)
    (result,) = train.run_train(cfg, folds=[0])
    assert len(saved) == 2
    at_best = saved[result.summary["best_epoch"] - 1]
    kept = load_trained(result.model_path).trainable_variables
    # The checkpoint holds the averaged weights the validation scored, never the raw ones trained on.
    for weights, average in zip(kept, at_best["average"]):
        np.testing.assert_allclose(weights.numpy(), average, rtol=1e-6, atol=1e-7)
    assert any(not np.allclose(w.numpy(), r) for w, r in zip(kept, at_best["raw"]))
    assert result.summary["settings"]["train.ema"] == 0.8


def test_averaged_weights_are_validated_and_kept_with_batchnorm_statistics_of_their_own(learn_root, make_cfg,
                                                                                         monkeypatch):
    import amazonmine.neural.trainer as trainer
    import amazonmine.stages.train as train
    from amazonmine.neural.fitting import batchnorm_layers

    def statistics(model):
        return [v.numpy().copy() for bn in batchnorm_layers(model) for v in (bn.moving_mean, bn.moving_variance)]

    cfg = tiny_cfg(make_cfg, learn_root, **{"train.epochs": 2, "train.steps_per_epoch": 6, "train.ema": 0.8,
                                            "train.bn_recalibration_batches": 2})
    raw_at_save, final_recalibration = [], {}
    original_save, original_recalibrate = trainer.ResumeState.save, trainer.recalibrate_batchnorm

    def spy_save(self, model, epoch):
        original_save(self, model, epoch)
        raw_at_save.append(statistics(model))

    def spy_recalibrate(model, dataset, batches):  # the finish step's recalibration of the kept checkpoint
        final_recalibration["before"] = statistics(model)
        done = original_recalibrate(model, dataset, batches)
        final_recalibration["after"] = statistics(model)
        return done

    monkeypatch.setattr(trainer.ResumeState, "save", spy_save)
    monkeypatch.setattr(trainer, "recalibrate_batchnorm", spy_recalibrate)
    (result,) = train.run_train(cfg, folds=[0])
    kept = final_recalibration["before"]
    raw = raw_at_save[result.summary["best_epoch"] - 1]
    # The checkpoint carries statistics recomputed for the averaged weights on the same batches the finish
    # step uses: recalibrating it again changes nothing. Training went on with the raw ones, which differ.
    for a, b in zip(kept, final_recalibration["after"], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert any(not np.allclose(k, r, rtol=1e-3, atol=1e-4) for k, r in zip(kept, raw, strict=True))
    assert result.summary["bn_recalibration"]["val_f2_after"] == result.summary["bn_recalibration"]["val_f2_before"]


def test_ctrl_c_during_validation_of_averaged_weights_resumes_from_the_raw_weights_of_the_epoch_before(
        learn_root, make_cfg, monkeypatch):
    import keras

    import amazonmine.neural.trainer as trainer
    import amazonmine.stages.train as train
    from amazonmine.neural.fitting import batchnorm_layers

    def state_of(model):
        return [v.numpy().copy() for v in model.trainable_variables] + [
            v.numpy().copy() for bn in batchnorm_layers(model) for v in (bn.moving_mean, bn.moving_variance)]

    cfg = tiny_cfg(make_cfg, learn_root, **{"train.epochs": 3, "train.steps_per_epoch": 4, "train.ema": 0.8,
                                            "train.bn_recalibration_batches": 2})
    seen = {"saved": []}

    class CtrlCInValidation(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self._epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            if self._epoch == 0:
                seen["trained"] = state_of(self.model)  # the raw weights and statistics as epoch 1 left them

        def on_test_batch_end(self, batch, logs=None):
            if self._epoch == 1:
                seen["validated"] = state_of(self.model)
                raise KeyboardInterrupt

    original_callbacks = trainer.fold_callbacks
    monkeypatch.setattr(trainer, "fold_callbacks",
                        lambda *a, **k: (lambda cbs: (cbs[0] + [CtrlCInValidation()], *cbs[1:]))(
                            original_callbacks(*a, **k)))
    original_save = trainer.ResumeState.save

    def spy_save(self, model, epoch):
        seen["saved"].append((epoch, state_of(model)))
        original_save(self, model, epoch)

    monkeypatch.setattr(trainer.ResumeState, "save", spy_save)
    with pytest.raises(AmazonmineError, match="interrupted: resume state saved in .* after epoch 1;"):
        list(train.run_train(cfg, folds=[0]))
    # Validation ran on other weights and statistics (the averages); the state resumed from is the one saved at
    # epoch 1's end, exactly the raw weights training had reached, and the interrupt saved nothing over it.
    assert any(not np.allclose(a, b) for a, b in zip(seen["validated"], seen["trained"], strict=True))
    ((epoch, saved),) = seen["saved"]
    assert epoch == 1
    for a, b in zip(saved, seen["trained"], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_progressive_resizing_trains_small_first_then_at_full_size(learn_root, make_cfg, monkeypatch):

    import amazonmine.neural.datasets as pipeline
    from amazonmine.neural.predictor import Predictor
    from amazonmine.stages.train import run_train

    cfg = tiny_cfg(make_cfg, learn_root, **{"train.image_size": 48, "train.small_size": 32, "train.small_epochs": 1,
                                            "train.epochs": 2, "train.steps_per_epoch": 4})
    seen = record_training_sides(monkeypatch, pipeline)
    (result,) = run_train(cfg, folds=[0])
    assert seen[:4] == [32] * 4 and seen[4:8] == [48] * 4  # prefetching may have read a few batches more
    assert set(seen[4:]) == {48}
    predictor = Predictor.from_run(cfg)  # the kept model takes any size; it is fed at train.image_size
    assert predictor.image_size == 48
    chips = np.stack([np.full((32, 32, 3), v, np.uint8) for v in (40, 120)])
    assert predictor.predict(chips).shape == (2, 17)
    assert result.summary["settings"]["train.small_size"] == 32
    # A plain fold beside it (fixed 48-px input) makes one ensemble with it, both fed at 48 px.
    cfg.train.small_size, cfg.train.small_epochs, cfg.train.epochs, cfg.train.steps_per_epoch = 0, 0, 1, 2
    run_train(cfg, folds=[1])
    predictor = Predictor.from_run(cfg)
    assert len(predictor.models) == 2 and predictor.image_size == 48
    assert predictor.predict(chips).shape == (2, 17)


def test_xla_on_the_cpu_trains_and_traces_its_step_once(learn_root, make_cfg, monkeypatch):
    from keras.src.backend.tensorflow.trainer import TensorFlowTrainer

    from amazonmine.stages.train import run_train

    settings = {"train.xla": "true", "train.epochs": 2, "train.steps_per_epoch": 2, "train.bn_recalibration_batches": 0}
    # Op determinism would turn XLA off with only a Keras warning: refused, before anything is written.
    refused = tiny_cfg(make_cfg, learn_root, **settings)
    with pytest.raises(AmazonmineError, match="train.xla: true has no effect while train.deterministic is true"):
        run_train(refused, folds=[0])
    assert not (refused.run_dir / "fold0").exists()

    # train_step runs in Python only while tf.function traces it (recorded: was the step compiled with XLA?).
    # Optimizer slots made inside the first trace would make it trace twice.
    traces = []
    original_step = TensorFlowTrainer.train_step
    monkeypatch.setattr(TensorFlowTrainer, "train_step",
                        lambda self, data: traces.append(self.jit_compile) or original_step(self, data))
    cfg = tiny_cfg(make_cfg, learn_root, **{**settings, "train.deterministic": "false"})
    (result,) = run_train(cfg, folds=[0])
    assert result.model_path.is_file() and result.summary["settings"]["train.xla"] is True
    assert traces == [True]


def test_validation_bn_batches_validates_and_keeps_the_epochs_own_statistics(learn_root, make_cfg, monkeypatch):
    import keras

    import amazonmine.neural.fitting as keras_parts
    from amazonmine.neural.model import load_trained
    from amazonmine.stages.train import run_train

    after_recalibration = []  # each validation's BatchNorm statistics, as validated

    def statistics(model):
        return [keras.ops.convert_to_numpy(v) for bn in keras_parts.batchnorm_layers(model)
                for v in (bn.moving_mean, bn.moving_variance)]
    original = keras_parts.recalibrate_batchnorm

    def spy(model, dataset, batches):
        layers = original(model, dataset, batches)
        after_recalibration.append((batches, statistics(model)))
        return layers

    events = []

    class Validation(keras.callbacks.Callback):
        def on_test_batch_begin(self, batch, logs=None):
            if batch == 0:
                events.append(f"validation {len(after_recalibration)}")

    import amazonmine.neural.trainer as trainer

    original_callbacks = trainer.fold_callbacks
    monkeypatch.setattr(trainer, "fold_callbacks",
                        lambda *a, **k: (lambda cbs: (cbs[0] + [Validation()], *cbs[1:]))(original_callbacks(*a, **k)))
    monkeypatch.setattr(keras_parts, "recalibrate_batchnorm", spy)
    cfg = tiny_cfg(make_cfg, learn_root, **{"train.validation_bn_batches": 2, "train.epochs": 3,
                                            "train.steps_per_epoch": 3, "train.bn_recalibration_batches": 0})
    (result,) = run_train(cfg, folds=[0])
    # Each of the 3 validations' first batch comes after one more recalibration (of 2 batches).
    assert [batches for batches, _ in after_recalibration] == [2, 2, 2]
    assert events == ["validation 1", "validation 2", "validation 3"]
    # The kept checkpoint holds the statistics its epoch was validated with, not running averages.
    kept = load_trained(result.model_path)
    saved = statistics(kept)
    validated = after_recalibration[result.summary["best_epoch"] - 1][1]
    for a, b in zip(saved, validated, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    later = [stats for i, (_, stats) in enumerate(after_recalibration) if i != result.summary["best_epoch"] - 1]
    assert all(any(not np.allclose(a, b) for a, b in zip(saved, other)) for other in later)


def test_validation_bn_batches_beside_ema_is_refused_before_anything_is_written(learn_root, make_cfg):
    from amazonmine.stages.train import run_train

    cfg = tiny_cfg(make_cfg, learn_root, **{"train.validation_bn_batches": 2, "train.ema": 0.9})
    with pytest.raises(AmazonmineError, match="applies without train.ema only"):
        run_train(cfg, folds=[0])
    assert not (cfg.run_dir / "fold0").exists()


def test_a_resume_inside_the_small_epochs_redoes_the_cut_epoch_small(learn_root, make_cfg, monkeypatch):

    import amazonmine.neural.datasets as pipeline
    import amazonmine.neural.trainer as trainer
    import amazonmine.stages.train as train

    cfg = tiny_cfg(make_cfg, learn_root, **{"train.image_size": 48, "train.small_size": 32, "train.small_epochs": 2,
                                            "train.epochs": 3, "train.steps_per_epoch": 3,
                                            "train.bn_recalibration_batches": 0})

    original_callbacks = trainer.fold_callbacks
    ctrl_c_at(monkeypatch, trainer, epoch=1, batch=1)
    with pytest.raises(AmazonmineError, match="interrupted: resume state saved"):
        list(train.run_train(cfg, folds=[0]))
    monkeypatch.setattr(trainer, "fold_callbacks", original_callbacks)

    seen = record_training_sides(monkeypatch, pipeline)
    train.run_train(cfg, folds=[0], resume=True)
    # Epoch 2 of 3 was cut: it is redone on small chips, then epoch 3 at full size.
    assert seen[:3] == [32] * 3 and seen[3:6] == [48] * 3 and set(seen[3:]) == {48}


# The uninterrupted run of each recipe, shared by the cases that cut it in different places (its summary's
# figures do not depend on the run folder): two reference trainings fewer in the suite.
_UNINTERRUPTED: dict[tuple, dict] = {}
# The plateau schedule and early stopping count validation F2, here taken with recalibrated BatchNorm.
PLATEAU = {"train.schedule": "plateau", "train.early_stopping_patience": 2, "train.epochs": 5,
           "train.validation_bn_batches": 2}


@pytest.mark.xdist_group("resume-equality")  # one pytest-xdist worker, so the cases share _UNINTERRUPTED
@pytest.mark.parametrize("recipe,cut", [
    ({}, "mid-epoch"),
    ({"train.image_size": 48, "train.small_size": 32, "train.small_epochs": 2, "train.ema": 0.9, "train.dropout": 0.3},
     "mid-epoch"),
    ({}, "epoch-end"),
    (PLATEAU, "mid-epoch"),
    (PLATEAU, "before-the-counters")],
    ids=["plain", "progressive-ema-dropout", "among-the-epoch-end-writes", "plateau-early-stopping-validation-bn",
         "before-early-stopping-counts-the-epoch"])
def test_an_interrupted_and_resumed_fold_ends_with_the_uninterrupted_weights(learn_root, make_cfg, monkeypatch,
                                                                             tmp_path, recipe, cut):
    """The training stream is a function of the seed and the step, and the resume state holds the rest (with
    dropout's random state): a Ctrl-C and --resume change nothing in the trained weights."""

    import amazonmine.neural.trainer as trainer
    import amazonmine.stages.train as train

    settings = {"train.epochs": 3, "train.steps_per_epoch": 5, "train.bn_recalibration_batches": 0, **recipe}
    key = tuple(sorted((k, str(v)) for k, v in settings.items()))
    if key not in _UNINTERRUPTED:
        whole = tiny_cfg(make_cfg, learn_root, **{**settings, "run.dir": tmp_path / "whole"})
        (result,) = train.run_train(whole, folds=[0])
        _UNINTERRUPTED[key] = result.summary
    uninterrupted = _UNINTERRUPTED[key]

    cut_cfg = tiny_cfg(make_cfg, learn_root, **{**settings, "run.dir": tmp_path / "cut"})
    original_callbacks, original_save = trainer.fold_callbacks, trainer.ResumeState.save
    if cut == "mid-epoch":  # three batches into epoch 2: resumed from epoch 1's end
        ctrl_c_at(monkeypatch, trainer, epoch=1, batch=2)
        resumes_from = 1
    elif cut == "before-the-counters":
        # Epoch 2's history row is written, but early stopping and the plateau schedule have not counted it
        # (nor lowered the learning rate): its state is not saved, the epoch is redone.
        import keras

        class CtrlCBeforeTheCounters(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                if epoch == 1:
                    raise KeyboardInterrupt

        def cut_before_the_counters(*args, **kwargs):
            callbacks, *rest = original_callbacks(*args, **kwargs)
            at = next(i for i, cb in enumerate(callbacks) if isinstance(cb, keras.callbacks.EarlyStopping))
            return (callbacks[:at] + [CtrlCBeforeTheCounters()] + callbacks[at:], *rest)

        monkeypatch.setattr(trainer, "fold_callbacks", cut_before_the_counters)
        resumes_from = 1
    else:  # epoch 2's history row is written, its resume state not yet: saved by the interrupt itself
        def ctrl_c_once(self, model, epoch):
            if epoch == 2 and not hasattr(ctrl_c_once, "done"):
                ctrl_c_once.done = True
                raise KeyboardInterrupt
            original_save(self, model, epoch)

        monkeypatch.setattr(trainer.ResumeState, "save", ctrl_c_once)
        resumes_from = 2
    with pytest.raises(AmazonmineError, match=f"resume state saved in .* after epoch {resumes_from};"):
        list(train.run_train(cut_cfg, folds=[0]))
    monkeypatch.setattr(trainer, "fold_callbacks", original_callbacks)
    monkeypatch.setattr(trainer.ResumeState, "save", original_save)
    (resumed,) = train.run_train(cut_cfg, folds=[0], resume=True)
    assert resumed.summary["weights_sha256"] == uninterrupted["weights_sha256"]
    assert resumed.summary["best_val_f2"] == uninterrupted["best_val_f2"]
    assert resumed.summary["epochs_run"] == uninterrupted["epochs_run"]


def test_an_interrupt_after_early_stopping_ended_the_fold_resumes_without_training_further(learn_root, make_cfg,
                                                                                        monkeypatch, tmp_path):
    import keras

    import amazonmine.neural.trainer as trainer
    import amazonmine.stages.train as train

    settings = {"train.epochs": 8, "train.steps_per_epoch": 3, "train.early_stopping_patience": 1,
                "train.bn_recalibration_batches": 0}
    (uninterrupted,) = train.run_train(tiny_cfg(make_cfg, learn_root, **{**settings, "run.dir": tmp_path / "whole"}),
                                       folds=[0])
    assert uninterrupted.summary["epochs_run"] < 8  # early stopping did end it

    class CtrlCOnceStopped(keras.callbacks.Callback):  # after the resume state of the stopping epoch is saved
        def on_epoch_end(self, epoch, logs=None):
            if self.model.stop_training:
                raise KeyboardInterrupt

    cut_cfg = tiny_cfg(make_cfg, learn_root, **{**settings, "run.dir": tmp_path / "cut"})
    original = trainer.fold_callbacks
    monkeypatch.setattr(trainer, "fold_callbacks",
                        lambda *a, **k: (lambda cbs: (cbs[0] + [CtrlCOnceStopped()], *cbs[1:]))(original(*a, **k)))
    with pytest.raises(AmazonmineError, match="interrupted after training: .* without training further"):
        list(train.run_train(cut_cfg, folds=[0]))
    monkeypatch.setattr(trainer, "fold_callbacks", original)
    (resumed,) = train.run_train(cut_cfg, folds=[0], resume=True)
    assert resumed.summary["epochs_run"] == uninterrupted.summary["epochs_run"]
    assert resumed.summary["weights_sha256"] == uninterrupted.summary["weights_sha256"]


def ctrl_c_at(monkeypatch, trainer, epoch: int, batch: int) -> None:
    """Make the next training's fit raise KeyboardInterrupt after batch ``batch`` of epoch ``epoch`` (0-based)."""
    import keras

    class CtrlC(keras.callbacks.Callback):
        def on_epoch_begin(self, e, logs=None):
            self._epoch = e

        def on_train_batch_end(self, b, logs=None):
            if self._epoch == epoch and b == batch:
                raise KeyboardInterrupt

    original = trainer.fold_callbacks
    monkeypatch.setattr(trainer, "fold_callbacks",
                        lambda *a, **k: (lambda cbs: (cbs[0] + [CtrlC()], *cbs[1:]))(original(*a, **k)))


def record_training_sides(monkeypatch, pipeline) -> list[int]:
    """The side of every training batch, in the order the model draws them (prefetching may read ahead)."""
    import tensorflow as tf

    seen: list[int] = []
    original = pipeline.make_dataset

    def note(side):
        seen.append(int(side))
        return side

    def spy(*args, **kwargs):
        ds = original(*args, **kwargs)
        if kwargs.get("stream") is None:  # not a training input
            return ds
        # The recorded side is passed through a control dependency, so the call is never pruned.
        def record(x, y):
            side = tf.numpy_function(note, [tf.shape(x)[1]], tf.int32)
            with tf.control_dependencies([side]):
                return tf.identity(x), y
        return ds.map(record)

    monkeypatch.setattr(pipeline, "make_dataset", spy)
    return seen
