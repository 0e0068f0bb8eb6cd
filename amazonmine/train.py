"""Train stage: one model per fold of the split, best-by-validation-F2 checkpoint, out-of-fold predictions.

For fold K the training rows come from the split's manifest (every chip outside fold K, plus the rare-label
copies under fixed dihedral views); fold K itself is the validation set, never oversampled. Per fold the run
folder gets::

    fold{K}/b01_dense121.h5     best epoch by validation mean F2 at 0.2 (the Kaggle metric), no optimizer
    fold{K}/history.csv         one row per epoch (loss, f2, val_loss, val_f2, lr)
    fold{K}/tensorboard/        TensorBoard logs
    fold{K}/summary.json        best epoch, val loss, val F2, OOF F2, images/s, wall time
    fold{K}/resume/             last epoch's weights + optimizer + epoch (deleted when the fold finishes)
    oof_fold{K}.csv             image_name + 17 probabilities for fold K's chips (test-time augmented)

Resume (``--resume``) restores weights, optimizer state and epoch from ``resume/`` and the best score so far,
so the best checkpoint is not overwritten by a worse epoch after a restart (the trap of combining Keras'
BackupAndRestore with ModelCheckpoint(save_best_only)). Ctrl-C writes the resume state before exiting.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from amazonmine.data import LABELS, DataError, PlanetLayout, chip_dir
from amazonmine.errors import AmazonmineError
from amazonmine.io import atomic_path, prepare_run_dir, read_json, write_csv_atomic, write_json_atomic
from amazonmine.metrics import mean_f2

FLAT_THRESHOLD = 0.2


@dataclass
class TrainResult:
    fold: int
    model_path: Path
    summary: dict = field(default_factory=dict)

    def headline(self) -> str:
        s = self.summary
        if s.get("skipped"):
            line = f"fold {self.fold}: already trained ({self.model_path}), kept; --retrain trains it again"
            return line + (f"\n  note: {s['note']}" if s.get("note") else "")
        line = (f"fold {self.fold}: best epoch {s['best_epoch']} val F2@0.2 {s['best_val_f2']:.4f} "
                f"(OOF with TTA {s['oof_f2_flat']:.4f}), {s['train_images_per_s']:.0f} img/s -> {self.model_path}")
        return line + (f"\n  note: {s['note']}" if s.get("note") else "")


def resolve_folds(cfg, folds=(), all_folds: bool = False) -> list[int]:
    if all_folds:
        return list(range(cfg.split.folds))
    chosen = list(folds) or list(cfg.train.folds) or list(range(cfg.split.folds))
    bad = [f for f in chosen if not 0 <= f < cfg.split.folds]
    if bad:
        raise AmazonmineError(f"fold(s) {bad} out of range: split.folds is {cfg.split.folds} (folds 0..{cfg.split.folds - 1})")
    return sorted(set(chosen))


# --- device ------------------------------------------------------------------------------------------------

def setup_device(gpu: bool):
    """CPU unless --gpu. With --gpu: require a GPU, mixed precision, MirroredStrategy over several GPUs."""
    from amazonmine.tfquiet import import_tensorflow

    import_tensorflow()
    import keras
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpu:
        try:
            tf.config.set_visible_devices([], "GPU")
        except RuntimeError:  # devices already initialised in this process; stays as it was
            pass
        keras.mixed_precision.set_global_policy("float32")
        return tf.distribute.get_strategy()
    if not gpus:
        raise AmazonmineError("--gpu given but TensorFlow sees no GPU (check `nvidia-smi`, and install "
                              "`pip install 'tensorflow[and-cuda]'`); run without --gpu to train on the CPU")
    for device in gpus:
        try:
            tf.config.experimental.set_memory_growth(device, True)
        except RuntimeError:
            pass
    keras.mixed_precision.set_global_policy("mixed_float16")
    return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()


# --- metric, loss, schedule --------------------------------------------------------------------------------

def _keras_parts():
    """Keras classes defined lazily so importing this module's helpers stays cheap for tests."""
    import keras
    from keras import ops

    @keras.saving.register_keras_serializable(package="amazonmine")
    class MeanF2(keras.metrics.Metric):
        """Mean per-image F2 at a fixed threshold: the Kaggle metric, streamed over batches."""

        def __init__(self, threshold: float = FLAT_THRESHOLD, name: str = "f2", **kwargs):
            super().__init__(name=name, **kwargs)
            self.threshold = threshold
            self.total = self.add_variable(shape=(), initializer="zeros", name="total")
            self.count = self.add_variable(shape=(), initializer="zeros", name="count")

        def update_state(self, y_true, y_pred, sample_weight=None):
            y = ops.cast(y_true, "float32")
            p = ops.cast(ops.greater_equal(ops.cast(y_pred, "float32"), self.threshold), "float32")
            tp = ops.sum(y * p, axis=1)
            fp = ops.sum((1.0 - y) * p, axis=1)
            fn = ops.sum(y * (1.0 - p), axis=1)
            denom = 5.0 * tp + 4.0 * fn + fp
            f2 = ops.where(denom > 0, 5.0 * tp / ops.maximum(denom, 1e-9), 1.0)
            self.total.assign_add(ops.sum(f2))
            self.count.assign_add(ops.cast(ops.shape(y)[0], "float32"))

        def result(self):
            return self.total / ops.maximum(self.count, 1.0)

        def reset_state(self):
            self.total.assign(0.0)
            self.count.assign(0.0)

        def get_config(self):
            return {**super().get_config(), "threshold": self.threshold}

    return MeanF2


def make_loss(train_cfg):
    """Binary cross-entropy, plus (optionally) a differentiable F2 term that pushes recall."""
    import keras
    from keras import ops

    bce = keras.losses.BinaryCrossentropy(label_smoothing=train_cfg.label_smoothing)
    weight = train_cfg.soft_f2_weight
    if weight <= 0:
        return bce

    def bce_soft_f2(y_true, y_pred):
        y = ops.cast(y_true, "float32")
        p = ops.cast(y_pred, "float32")
        tp = ops.sum(y * p, axis=1)
        fp = ops.sum((1.0 - y) * p, axis=1)
        fn = ops.sum(y * (1.0 - p), axis=1)
        soft_f2 = 5.0 * tp / (5.0 * tp + 4.0 * fn + fp + 1e-7)
        return bce(y_true, y_pred) + weight * (1.0 - ops.mean(soft_f2))

    return bce_soft_f2


def make_optimizer(train_cfg, steps_per_epoch: int):
    import keras

    lr = train_cfg.learning_rate
    if train_cfg.schedule == "cosine":
        warmup = train_cfg.warmup_epochs * steps_per_epoch
        decay = max(1, train_cfg.epochs * steps_per_epoch - warmup)
        if warmup > 0:
            lr = keras.optimizers.schedules.CosineDecay(lr * 0.1, decay, alpha=0.01, warmup_target=lr,
                                                        warmup_steps=warmup)
        else:
            lr = keras.optimizers.schedules.CosineDecay(lr, decay, alpha=0.01)
    return keras.optimizers.AdamW(learning_rate=lr, weight_decay=train_cfg.weight_decay)


# --- callbacks ---------------------------------------------------------------------------------------------

def _callbacks(fold_dir: Path, train_cfg, initial_best: float, resume_state):
    import keras

    class BestCheckpoint(keras.callbacks.Callback):
        """Save the model whenever val F2 beats the best so far (which survives a resume), atomically."""

        def __init__(self, path: Path, best: float):
            super().__init__()
            self.path, self.best, self.best_epoch = path, best, None

        def on_epoch_end(self, epoch, logs=None):
            score = (logs or {}).get("val_f2")
            if score is not None and score > self.best:
                self.best, self.best_epoch = float(score), epoch + 1
                with atomic_path(self.path) as tmp:
                    self.model.save(tmp, include_optimizer=False)
            resume_state.best = self.best

    class Throughput(keras.callbacks.Callback):
        """Training images per second, timed from epoch start to the start of validation."""

        def __init__(self, batch_size: int):
            super().__init__()
            self.batch_size, self.seconds, self.images = batch_size, 0.0, 0
            self._t0, self._steps = None, 0

        def on_epoch_begin(self, epoch, logs=None):
            self._t0, self._steps = time.perf_counter(), 0

        def on_train_batch_end(self, batch, logs=None):
            self._steps += 1

        def on_test_begin(self, logs=None):
            if self._t0 is not None:
                self.seconds += time.perf_counter() - self._t0
                self.images += self._steps * self.batch_size
                self._t0 = None

    class ResumeSaver(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            resume_state.save(self.model, epoch + 1)

    best = BestCheckpoint(fold_dir / train_cfg.artifact_name, initial_best)
    meter = Throughput(train_cfg.batch_size)
    history_csv = fold_dir / "history.csv"
    cbs = [
        best,
        meter,
        ResumeSaver(),
        keras.callbacks.CSVLogger(str(history_csv), append=history_csv.exists() and resume_state.resuming),
        keras.callbacks.TensorBoard(log_dir=str(fold_dir / "tensorboard"), write_graph=False,
                                    update_freq="epoch", profile_batch=0),
        keras.callbacks.EarlyStopping(monitor="val_f2", mode="max", patience=train_cfg.early_stopping_patience,
                                      restore_best_weights=False),
    ]
    if train_cfg.schedule == "plateau":
        cbs.append(keras.callbacks.ReduceLROnPlateau(monitor="val_f2", mode="max", factor=0.3,
                                                     patience=max(1, train_cfg.early_stopping_patience // 3)))
    return cbs, best, meter


class ResumeState:
    """Last finished epoch's weights (with optimizer state) and progress, written atomically each epoch, with
    the split and settings they were trained with (so a resume on other ones is refused)."""

    def __init__(self, folder: Path, split_id: str = "", settings: dict | None = None):
        self.folder = folder
        self.weights = folder / "state.weights.h5"
        self.meta = folder / "state.json"
        self.best = -1.0
        self.resuming = False
        self.split_id, self.settings = split_id, settings or {}

    def exists(self) -> bool:
        return self.weights.is_file() and self.meta.is_file()

    def save(self, model, epoch: int) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.weights, suffix=".weights.h5") as tmp:
            model.save_weights(tmp)
        self.save_progress(epoch)

    def save_progress(self, epoch: int) -> None:
        write_json_atomic(self.meta, {"epoch": epoch, "best_val_f2": self.best, "split_sha256": self.split_id,
                                      "settings": self.settings})

    def read_meta(self) -> dict:
        return read_json(self.meta)

    def restore(self, model) -> int:
        meta = self.read_meta()
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)  # so optimizer slots load too
        try:
            model.load_weights(self.weights)
        except (OSError, ValueError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise AmazonmineError(f"{self.weights}: cannot load the interrupted run's state ({reason}); "
                                  f"--retrain starts the fold over") from None
        self.best = float(meta.get("best_val_f2", -1.0))
        self.resuming = True
        return int(meta["epoch"])

    def clear(self) -> None:
        for p in (self.weights, self.meta):
            if p.exists():
                p.unlink()
        if self.folder.is_dir() and not any(self.folder.iterdir()):
            self.folder.rmdir()


def model_settings(cfg) -> dict:
    """The settings a fold's model depends on (train.*, except those that only change speed or output, and
    which chips it reads), recorded in its summary: a re-run with other settings is refused, not skipped."""
    import dataclasses

    ignored = {"verbose", "folds", "cache"}
    settings = {f"train.{k}": v for k, v in dataclasses.asdict(cfg.train).items() if k not in ignored}
    settings.update({"dehaze.enabled": cfg.dehaze.enabled, "data.image_format": cfg.data.image_format,
                     "data.chip_size": cfg.data.chip_size})
    if cfg.dehaze.enabled:  # the chips it learnt from were made with these
        settings.update({f"dehaze.{k}": v for k, v in dataclasses.asdict(cfg.dehaze).items()
                         if k not in ("enabled", "workers", "out_dir")})
    return json.loads(json.dumps(settings, default=str))  # as it reads back from summary.json


def split_fingerprint(run_dir: Path) -> str:
    """SHA-256 of the split's files (folds.csv, train_manifest.csv): which split a fold was trained on. The
    split is byte-for-byte reproducible, so re-running it with the same inputs keeps the fingerprint."""
    import hashlib

    from amazonmine.split import FOLDS_CSV, MANIFEST_CSV

    digest = hashlib.sha256()
    for name in (FOLDS_CSV, MANIFEST_CSV):
        path = run_dir / name
        if not path.is_file():
            raise DataError(f"{path}: not found; run 'amazonmine split' first")
        digest.update(path.read_bytes())
    return digest.hexdigest()


# --- data for one fold -------------------------------------------------------------------------------------

def _image_source(cfg, layout: PlanetLayout) -> Path:
    subdir = cfg.data.tif_dir if cfg.data.image_format == "tif" else cfg.data.train_dir
    folder = chip_dir(cfg, subdir)
    if not folder.is_dir():
        if cfg.dehaze.enabled:
            raise DataError(f"{folder}: dehazed chips not found: run 'amazonmine dehaze' first, "
                            "or --set dehaze.enabled=false to train on the raw chips")
        raise DataError(f"{folder}: image folder not found (check data.root)")
    return folder


def load_fold_plan(cfg, fold: int):
    """Labels, the fold's training rows (+ transforms) and validation rows as indices into the label table."""
    from amazonmine.split import load_folds, load_training_manifest

    layout = PlanetLayout.from_config(cfg.data)
    frame, matrix = layout.load_train(check_files=False)
    index = {name: i for i, name in enumerate(frame["image_name"])}
    folds = load_folds(cfg.run_dir)
    manifest = load_training_manifest(cfg.run_dir, fold)
    unknown = sorted(set(folds["image_name"]) - set(index))
    if unknown:
        raise DataError(f"{cfg.run_dir / 'folds.csv'}: {len(unknown)} chips not in {layout.labels_csv} "
                        f"(e.g. {', '.join(unknown[:3])}); re-run 'amazonmine split'")
    val_rows = np.array([index[n] for n in folds.loc[folds["fold"] == fold, "image_name"]], dtype=np.int64)
    train_rows = np.array([index[n] for n in manifest["image_name"]], dtype=np.int64)
    if len(val_rows) == 0:
        raise DataError(f"{cfg.run_dir / 'folds.csv'}: fold {fold} has no chips")
    return frame, matrix, train_rows, manifest["transform"].to_numpy(np.int64), val_rows, layout


# --- the stage ---------------------------------------------------------------------------------------------

def fold_action(cfg, fold: int, resume: bool = False, retrain: bool = False) -> tuple[str, str | None]:
    """What to do with one fold: ("skip" | "resume" | "train", note). Refusals raise, before anything is
    written. A finished fold is never retrained by accident (its model may have cost hours), nor an interrupted
    one restarted from scratch, nor either continued on another split or other settings: those need --retrain.
    --resume continues whatever there is, so it can be given to a whole run.
    """
    fold_dir = cfg.run_dir / f"fold{fold}"
    state = ResumeState(fold_dir / "resume")
    summary_path, model_path = fold_dir / "summary.json", fold_dir / cfg.train.artifact_name
    split_id, settings = split_fingerprint(cfg.run_dir), model_settings(cfg)
    if retrain:
        return "train", None
    if state.exists():
        meta = state.read_meta()
        if not resume:
            raise AmazonmineError(f"{fold_dir}: an interrupted run is saved in resume/ (after epoch "
                                  f"{meta.get('epoch', '?')}); continue it with --resume, or start the fold over "
                                  f"with --retrain")
        if meta.get("split_sha256") not in (None, split_id):
            raise AmazonmineError(f"{fold_dir}: the split changed since this fold's interrupted run; --retrain "
                                  f"starts it over on the new split")
        _refuse_changed_settings(fold_dir, meta, settings, "this fold's interrupted run used")
        return "resume", None
    if summary_path.is_file() and model_path.is_file():
        finished = read_json(summary_path)
        trained_on = finished.get("split_sha256")
        if trained_on is not None and trained_on != split_id:
            return "train", "the split changed since this fold was trained: trained again on the new split"
        _refuse_changed_settings(fold_dir, finished, settings, "this fold was trained with")
        if trained_on is None or "settings" not in finished:
            return "skip", ("trained by an earlier version, which did not record its split and settings: kept "
                            "as it is (--retrain if they changed)")
        return "skip", None
    return "train", None


def _refuse_changed_settings(fold_dir: Path, recorded: dict, settings: dict, who: str) -> None:
    before = recorded.get("settings") or {}
    changed = [f"{k} {before[k]!r} -> {v!r}" for k, v in settings.items() if k in before and before[k] != v]
    if changed:
        raise AmazonmineError(f"{fold_dir}: {who} other settings ({'; '.join(changed[:4])}"
                              f"{'; ...' if len(changed) > 4 else ''}); --retrain trains it with these, or use a "
                              f"new run.dir")


def train_fold(cfg, fold: int, strategy, gpu: bool = False, action: str = "train",
               note: str | None = None) -> TrainResult:
    """Train one fold (``action`` "train" or "resume" from :func:`fold_action`; "skip" returns at once)."""
    import keras

    from amazonmine.model import build_model, check_backbone, pixel_scale
    from amazonmine.pipeline import make_dataset, preflight

    tc = cfg.train
    fold_dir = cfg.run_dir / f"fold{fold}"
    model_path = fold_dir / tc.artifact_name
    summary_path = fold_dir / "summary.json"
    if action == "skip":
        return TrainResult(fold, model_path, {"skipped": True, "note": note})
    split_id, settings = split_fingerprint(cfg.run_dir), model_settings(cfg)
    state = ResumeState(fold_dir / "resume", split_id, settings)
    resume = action == "resume"
    check_backbone(tc)

    frame, matrix, train_rows, transforms, val_rows, layout = load_fold_plan(cfg, fold)
    used = np.union1d(np.unique(train_rows), val_rows)
    folder = _image_source(cfg, layout)
    names = frame["image_name"].to_numpy()
    ext = layout.ext
    # Preflight reads only the chips this fold uses; row indices are remapped into that subset.
    remap = -np.ones(len(frame), dtype=np.int64)
    remap[used] = np.arange(len(used))
    chips = preflight([folder / f"{names[i]}{ext}" for i in used], tc.image_size, cache=tc.cache,
                      expected_size=cfg.data.chip_size, progress=tc.verbose > 0)
    scale = pixel_scale(cfg.data.image_format)
    labels_used = matrix[used]

    keras.utils.set_random_seed(cfg.run.seed + fold)
    replicas = strategy.num_replicas_in_sync
    batch = tc.batch_size * replicas
    train_ds = make_dataset(chips, remap[train_rows], labels_used, transforms, tc.image_size, batch,
                            training=True, seed=cfg.run.seed + fold, augment=tc.augment,
                            brightness=tc.brightness_jitter, contrast=tc.contrast_jitter, pixel_scale=scale)
    val_ds = make_dataset(chips, remap[val_rows], labels_used, None, tc.image_size, cfg.predict.batch_size,
                          training=False, pixel_scale=scale)
    steps = tc.steps_per_epoch or int(np.ceil(len(train_rows) / batch))
    if tc.steps_per_epoch:
        train_ds = train_ds.repeat()

    fold_dir.mkdir(parents=True, exist_ok=True)  # only now: a run refused above leaves no empty folder
    if not resume and summary_path.is_file():
        # The fold is trained again: its old summary no longer describes the model being made, and a run
        # interrupted from here on must not leave the fold looking finished.
        summary_path.unlink()
    MeanF2 = _keras_parts()
    with strategy.scope():
        model = build_model(tc, channels=chips.channels, image_format=cfg.data.image_format)
        model.compile(optimizer=make_optimizer(tc, steps), loss=make_loss(tc), metrics=[MeanF2()],
                      jit_compile=bool(gpu))
    if tc.init_from and not resume:
        _init_from(model, Path(tc.init_from))
    initial_epoch = state.restore(model) if resume else 0
    if not resume:
        state.clear()
    callbacks, best_cb, meter = _callbacks(fold_dir, tc, state.best, state)

    started = time.perf_counter()
    try:
        if initial_epoch < tc.epochs:
            model.fit(train_ds, validation_data=val_ds, epochs=tc.epochs, initial_epoch=initial_epoch,
                      steps_per_epoch=steps, callbacks=callbacks, shuffle=False, verbose=2 if tc.verbose == 2 else tc.verbose)
    except KeyboardInterrupt:
        # The interrupted epoch's progress is kept in the weights; it is counted as not done.
        done = _epochs_done(fold_dir / "history.csv")
        if done == 0 or not model.optimizer.built:
            # Nothing finished, and an optimizer that never stepped saves empty slots that cannot be loaded.
            state.clear()
            raise AmazonmineError(f"interrupted during the first epoch of fold {fold}: nothing to resume; "
                                  f"run 'amazonmine train --fold {fold}' again") from None
        state.save(model, done)
        raise AmazonmineError(f"interrupted: resume state saved in {state.folder} after epoch {done}; "
                              f"continue with 'amazonmine train --fold {fold} --resume'") from None
    wall = time.perf_counter() - started
    if not model_path.is_file():
        raise AmazonmineError(f"fold {fold}: no epoch produced a validation F2 (is the validation fold empty?)")
    if state.exists():
        # Training is over (early stopping included): a resume from here only finishes what follows.
        state.save_progress(tc.epochs)
    try:
        return _finish_fold(cfg, fold, tc, chips, remap, train_rows, val_rows, matrix, names, scale, model_path,
                            summary_path, state, meter, wall, replicas, gpu, split_id, settings, note)
    except KeyboardInterrupt:
        raise AmazonmineError(f"interrupted after training fold {fold}, before its out-of-fold predictions: "
                              f"'amazonmine train --fold {fold} --resume' finishes them without training "
                              f"further") from None


def _finish_fold(cfg, fold, tc, chips, remap, train_rows, val_rows, matrix, names, scale, model_path,
                 summary_path, state, meter, wall, replicas, gpu, split_id, settings, note) -> TrainResult:
    """BatchNorm recalibration, out-of-fold predictions and the summary of a trained fold."""
    import keras

    from amazonmine.model import load_trained
    from amazonmine.pipeline import make_dataset, predict_dataset, tta_predict_fn

    fold_dir = model_path.parent

    # Out-of-fold predictions from the best checkpoint, with the same TTA as predict uses.
    best_model = load_trained(model_path)
    val_eval = make_dataset(chips, remap[val_rows], None, None, tc.image_size, cfg.predict.batch_size,
                            training=False, pixel_scale=scale)
    recalibration = None
    if tc.bn_recalibration_batches > 0:
        # Unaugmented training chips in a seeded random order: the statistics inference will meet.
        order = np.random.default_rng(cfg.run.seed + fold).permutation(np.unique(train_rows))
        calib = make_dataset(chips, remap[order], None, None, tc.image_size, tc.batch_size, training=False,
                             pixel_scale=scale)
        y_val = matrix[val_rows]
        before = mean_f2(y_val, predict_dataset(tta_predict_fn(best_model, 1), val_eval, len(val_rows),
                                                progress=False) >= FLAT_THRESHOLD)
        layers_done = recalibrate_batchnorm(best_model, calib, tc.bn_recalibration_batches)
        after = mean_f2(y_val, predict_dataset(tta_predict_fn(best_model, 1), val_eval, len(val_rows),
                                               progress=False) >= FLAT_THRESHOLD)
        # Kept only if it does not lower validation F2: the same rule, on the same chips, that chose the
        # checkpoint. On small folds the batch statistics can be noisier than the moving averages.
        kept = after >= before
        if kept:
            with atomic_path(model_path) as tmp:
                best_model.save(tmp, include_optimizer=False)
        else:
            best_model = load_trained(model_path)
        recalibration = {"batches": tc.bn_recalibration_batches, "layers": layers_done,
                         "val_f2_before": before, "val_f2_after": after, "kept": kept}
    infer = tta_predict_fn(best_model, cfg.predict.tta)
    oof = predict_dataset(infer, val_eval, len(val_rows), progress=tc.verbose > 0, desc=f"OOF fold {fold}")
    import pandas as pd

    oof_frame = pd.DataFrame(oof, columns=list(LABELS))
    oof_frame.insert(0, "image_name", names[val_rows])
    write_csv_atomic(cfg.run_dir / f"oof_fold{fold}.csv", oof_frame, float_format="%.6f")

    history = pd.read_csv(fold_dir / "history.csv") if (fold_dir / "history.csv").is_file() else None
    best_row = history.loc[history["val_f2"].idxmax()] if history is not None and len(history) else None
    summary = {
        "fold": fold,
        "model": str(model_path),
        "backbone": tc.backbone,
        "image_size": tc.image_size,
        "epochs_run": int(len(history)) if history is not None else 0,
        "best_epoch": int(best_row["epoch"]) + 1 if best_row is not None else None,
        "best_val_f2": float(state.best),
        "best_val_loss": float(best_row["val_loss"]) if best_row is not None else None,
        "oof_f2_flat": mean_f2(matrix[val_rows], oof >= FLAT_THRESHOLD),
        "oof_tta_views": cfg.predict.tta,
        "train_chips": int(len(train_rows)),
        "val_chips": int(len(val_rows)),
        "train_images_per_s": meter.images / meter.seconds if meter.seconds else 0.0,
        "train_seconds_this_session": wall,
        "replicas": replicas,
        "mixed_precision": bool(gpu),
        "bn_recalibration": recalibration,
        "split_sha256": split_id,
        "settings": settings,
        "note": note,
    }
    write_json_atomic(summary_path, summary)
    state.clear()
    keras.backend.clear_session()
    return TrainResult(fold, model_path, summary)


def _init_from(model, path: Path) -> None:
    """Copy every weight of a saved classifier into ``model``; both must be the same architecture."""
    from amazonmine.model import load_trained

    source = load_trained(path)
    theirs, ours = source.get_weights(), model.get_weights()
    if len(theirs) != len(ours) or any(a.shape != b.shape for a, b in zip(theirs, ours)):
        raise AmazonmineError(f"train.init_from: {path} is not the same architecture as train.backbone="
                              f"{model.name} at this image size")
    model.set_weights(theirs)


def _batchnorm_layers(layer) -> list:
    import keras

    found = [layer] if isinstance(layer, keras.layers.BatchNormalization) else []
    for child in getattr(layer, "layers", []):  # the backbone is a model nested in the classifier
        found += _batchnorm_layers(child)
    return found


def recalibrate_batchnorm(model, dataset, batches: int) -> int:
    """Precise BatchNorm (Wu & Johnson, "Rethinking 'Batch' in BatchNorm", 2021): replace each BN layer's
    moving mean/variance by the plain average of its batch statistics over ``batches`` batches, computed
    with the final weights. Forward passes only; no weight is trained. Returns the number of BN layers.
    """
    bns = _batchnorm_layers(model)
    momenta = [bn.momentum for bn in bns]
    try:
        for k, batch in enumerate(dataset.take(batches), start=1):
            x = batch[0] if isinstance(batch, tuple) else batch
            for bn in bns:
                # moving = moving * m + batch * (1 - m); m = (k - 1) / k makes it the running mean of batches.
                bn.momentum = (k - 1) / k
            model(x, training=True)
    finally:
        for bn, m in zip(bns, momenta):
            bn.momentum = m
    return len(bns)


def _epochs_done(history_csv: Path) -> int:
    import pandas as pd

    if not history_csv.is_file():
        return 0
    try:
        return int(len(pd.read_csv(history_csv)))
    except Exception:  # noqa: BLE001 - an empty or half-written log means no finished epoch
        return 0


def run_train(cfg, folds: list[int] | None = None, gpu: bool = False, resume: bool = False,
              retrain: bool = False):
    """Train each requested fold in turn (yielding a TrainResult per fold as it finishes).

    A fold already trained on the current split is kept (its result says skipped) unless ``retrain``; one
    with an interrupted run saved needs ``resume`` (continue) or ``retrain`` (start over).
    """
    if resume and retrain:
        raise AmazonmineError("--resume and --retrain exclude each other: continue a fold, or start it over")
    chosen = folds if folds is not None else resolve_folds(cfg)
    actions = {fold: fold_action(cfg, fold, resume, retrain) for fold in chosen}  # refusals before any write
    strategy = setup_device(gpu)
    if not gpu and cfg.train.deterministic:
        import tensorflow as tf

        # Same seed, same data -> same numbers on the CPU (tf.data order and kernels included).
        tf.config.experimental.enable_op_determinism()
    prepare_run_dir(cfg)
    with _terminate_as_interrupt():
        for fold in chosen:
            yield train_fold(cfg, fold, strategy, gpu=gpu, action=actions[fold][0], note=actions[fold][1])


@contextlib.contextmanager
def _terminate_as_interrupt():
    """SIGTERM (a batch scheduler's or `kill`'s stop) saves the resume state like Ctrl-C does.

    Also re-enables SIGINT for a run started in the background by a shell, which sets it to 'ignore'.
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
