"""One fold's training: the Keras fit, its interrupt handling, and the fold's finish.

The train stage (:mod:`amazonmine.stages.train`) decides which folds to train and how (skip, resume, retrain:
:mod:`amazonmine.core.fold_plan`), sets up the device and the run folder's lock, and hands each fold to
:func:`train_fold` here. It names where the fold is written (a :class:`FoldTarget`), reads the fold's chips
(:class:`FoldData`, only those this worker uses), and runs the steps of a :class:`FoldSession` in order:

1. the validation batches, and the model, started from ``train.init_from`` (after its head phase) or from the
   resume state, and compiled (:meth:`FoldSession.start_weights`);
2. the training stream from the first epoch to train, exactly as the uninterrupted run has it;
3. the fold's folder (only now: a refused run leaves no fold folder), the callbacks
   (:func:`amazonmine.neural.fitting.fold_callbacks`), and ``model.fit``;
4. on Ctrl-C or SIGTERM, the state of the last finished epoch kept and one line on how to go on; on a write
   that fails, the file, what is kept, and the command that continues;
5. the finish (:func:`_finish_fold`): BatchNorm recalibration, kept only if it does not lower validation F2,
   out-of-fold predictions with the predict stage's test-time augmentation, and ``summary.json`` last, whose
   presence marks the fold finished.

A :class:`FitRecord` collects what the fit did (where the weights started, images/s, seconds, the weights'
digest) for the summary.

In a cluster (:mod:`amazonmine.neural.cluster`) every worker runs this on its own share of the rows, and the
chief alone reads and writes the fold's files.
"""

from __future__ import annotations

import contextlib
import functools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from amazonmine.core.errors import AmazonmineError
from amazonmine.core.fold_plan import (
    FoldPlan,
    ResumeState,
    discard_retrain,
    finish_retrain,
    load_fold_plan,
    model_settings,
    seed_generator_states,
    training_files,
)
from amazonmine.core.io import atomic_path, read_h5_stamp, stamp_h5, write_csv_atomic, write_json_atomic
from amazonmine.core.metrics import mean_f2
from amazonmine.core.runfolder import FoldFiles, RunFolder
from amazonmine.neural.fitting import (
    FLAT_THRESHOLD,
    epoch_boundary,
    fold_callbacks,
    make_loss,
    make_metric,
    make_optimizer,
    recalibrate_batchnorm,
    trim_history,
)

if TYPE_CHECKING:
    from amazonmine.neural.cluster import Cluster
    from amazonmine.neural.datasets import ChipSet


@dataclass
class TrainResult:
    fold: int
    model_path: Path
    summary: dict = field(default_factory=dict)

    def headline(self) -> str:
        s = self.summary
        if s.get("follower"):
            return (f"fold {self.fold}: trained by {s['follower']} with the other workers (weights sha256 "
                    f"{s['weights_sha256'][:16]}); the chief wrote its artifacts")
        if s.get("skipped"):
            line = f"fold {self.fold}: already trained ({self.model_path}), kept; --retrain trains it again"
            return line + (f"\n  note: {s['note']}" if s.get("note") else "")
        speed = (f"{s['train_images_per_s']:.0f} img/s" if s.get("train_images_per_s")
                 else "no epoch trained in this session")  # a resume that only finished the fold
        line = (f"fold {self.fold}: best epoch {s['best_epoch']} val F2@0.2 {s['best_val_f2']:.4f} "
                f"(OOF with TTA {s['oof_f2_flat']:.4f}), {speed} -> {self.model_path}")
        if s.get("workers", 1) > 1:
            line += (f"\n  {s['workers']} workers, global batch {s['global_batch']}, weights sha256 "
                     f"{s['weights_sha256'][:16]}")
        return line + (f"\n  note: {s['note']}" if s.get("note") else "")


@dataclass
class FoldData:
    """One fold's chips as the input pipeline serves them: its plan, the chips it reads (only those, so row
    indices of the labels table are remapped into them), the pixel scale of their format, and their labels."""

    plan: FoldPlan
    chips: ChipSet
    remap: np.ndarray  # labels-table row -> index into chips (-1: not read by this fold)
    scale: float
    labels: np.ndarray  # the label rows of the chips read, in the order of chips

    def dataset(self, rows: np.ndarray, image_size: int, batch_size: int):
        """Unaugmented, unlabelled batches of ``rows`` in order: for predictions and recalibration."""
        from amazonmine.neural.datasets import Batching, make_dataset

        return make_dataset(self.chips, self.remap[rows], None, None, Batching(image_size, batch_size, self.scale))


@dataclass
class FoldTarget:
    """Where a fold in training is written: ``final`` is the fold's own folder, ``files`` the one this session
    writes (the same, or ``.next/`` beside a fold that is kept until its retrain finishes), ``state`` the fold's
    resume state."""

    fold: int
    final: FoldFiles
    files: FoldFiles
    state: ResumeState

    @property
    def staged(self) -> bool:
        return self.files.dir != self.final.dir

    def again(self) -> str:
        """The command that starts this fold over."""
        return f"'amazonmine train --fold {self.fold}{' --retrain' if self.staged else ''}'"


@dataclass
class FitRecord:
    """What this session's fit did: where the weights started (``train.init_from``), the throughput meter, the
    seconds it trained, and the digest of the trained weights."""

    started_from: dict | None
    meter: Any = None
    wall: float = 0.0
    digest: str = ""


# --- one fold ----------------------------------------------------------------------------------------------

def train_fold(cfg, fold: int, strategy, gpu: bool = False, action: str = "train",
               note: str | None = None, cluster: Cluster | None = None) -> TrainResult:
    """Train one fold (``action`` "train" or "resume" from :func:`fold_action`; "skip" returns at once).

    In a ``cluster`` each worker trains on its own share of the fold's training rows; the chief alone reads
    and writes the fold's files and finishes the fold (BatchNorm recalibration, out-of-fold predictions).
    """
    import keras

    from amazonmine.neural.model import check_backbone

    run = RunFolder.from_config(cfg)
    final = (run if cluster is None else cluster.writable(run)).fold(fold)  # another worker's is private
    if action == "skip":
        return TrainResult(fold, run.fold(fold).model, {"skipped": True, "note": note})
    resume = action == "resume"
    files = training_files(final, action)  # the fold itself, or .next/ beside a fold to keep
    target = FoldTarget(fold, final, files, ResumeState(files, run.split_fingerprint(), model_settings(cfg)))
    check_backbone(cfg.train)
    session = FoldSession(cfg, strategy, target, _read_chips(cfg, fold, cluster), gpu, cluster)

    keras.utils.set_random_seed(cfg.run.seed + fold)
    val_ds = session.validation_input()
    model = session.build_model()
    initial_epoch, record = session.start_weights(model, val_ds, resume)
    # The input starts where training starts: a resume continues the stream at its first unfinished epoch.
    train_ds, val_ds = session.fit_inputs(val_ds, initial_epoch)
    # Every check has passed; only now is the fold written (a refused run leaves no fold folder, and a
    # refused retrain leaves the fold as it was).
    session.open_fold(resume, initial_epoch)
    callbacks, record.meter, boundary = session.callbacks()
    with _disk_refusals(target):
        record.wall = session.fit(model, train_ds, val_ds, initial_epoch, callbacks, boundary)
        return session.finish(model, record, note)  # adds the digest of the trained weights to the record


def _read_chips(cfg, fold: int, cluster: Cluster | None) -> FoldData:
    """The fold's plan and the chips this process reads, every one checked first (one line for a bad chip)."""
    from amazonmine.neural.datasets import preflight
    from amazonmine.neural.model import pixel_scale

    tc = cfg.train
    plan = load_fold_plan(cfg, fold)
    # A worker trains on every n-th row of the manifest, from its own position in the cluster.
    share = slice(0, None, 1) if cluster is None else slice(cluster.index, None, cluster.num_workers)
    # Preflight reads only the chips this worker uses; row indices are remapped into that subset. The chief
    # finishes the fold alone (recalibration, out-of-fold predictions), so it reads all of them.
    lead = cluster is None or cluster.is_chief  # as FoldSession.lead, before there is a session
    used = plan.used_rows() if lead else np.union1d(np.unique(plan.train_rows[share]), plan.val_rows)
    remap = -np.ones(len(plan.names), dtype=np.int64)
    remap[used] = np.arange(len(used))

    def check_chips():
        return preflight(plan.chip_paths(used), tc.image_size, cache=tc.cache, expected_size=cfg.data.chip_size,
                         progress=tc.verbose > 0)

    chips = check_chips() if cluster is None else cluster.settle(check_chips)
    return FoldData(plan, chips, remap, pixel_scale(cfg.data.image_format), plan.labels[used])


@dataclass
class FoldSession:
    """One fold in training in this process: the settings, the device, the chips, where it is written, and
    the cluster it trains in (None: this process alone). Its methods are :func:`train_fold`'s steps."""

    cfg: Any
    strategy: Any
    target: FoldTarget
    data: FoldData
    gpu: bool = False
    cluster: Cluster | None = None

    @property
    def tc(self):
        return self.cfg.train

    @property
    def fold(self) -> int:
        return self.target.fold

    @property
    def lead(self) -> bool:
        """The one process that writes the fold."""
        return self.cluster is None or self.cluster.is_chief

    @property
    def replicas(self) -> int:
        return self.strategy.num_replicas_in_sync

    @property
    def batch(self) -> int:
        """The global batch: train.batch_size on each replica of each worker."""
        return self.tc.batch_size * self.replicas

    @property
    def steps(self) -> int:
        return self.tc.steps_per_epoch or int(np.ceil(len(self.data.plan.train_rows) / self.batch))

    # --- input

    def _stream(self, part: int, parts: int, part_batch: int, size: int, first_batch: int):
        from amazonmine.neural.datasets import Batching, TrainingStream, make_dataset

        plan, tc, rows = self.data.plan, self.tc, slice(part, None, parts)
        return make_dataset(self.data.chips, self.data.remap[plan.train_rows[rows]], self.data.labels,
                            plan.transforms[rows], Batching(tc.image_size, part_batch, self.data.scale, size),
                            stream=TrainingStream.from_config(tc, (self.cfg.run.seed + self.fold) * parts + part,
                                                              start=first_batch * part_batch))

    def training_input(self, part: int, parts: int, part_batch: int, first_epoch: int, batches_per_step: int = 1):
        """Endless, from the first step of ``first_epoch`` on, exactly as the uninterrupted run had it: one
        stream of chips, shrunk (progressive resizing) for the steps of the first ``train.small_epochs``.
        ``batches_per_step``: a worker's pipeline feeds each of its local replicas one batch per step."""
        tc, steps = self.tc, self.steps
        first_batch = first_epoch * steps * batches_per_step
        small_batches = max(0, tc.small_epochs * steps * batches_per_step - first_batch) if tc.small_size else 0
        full = self._stream(part, parts, part_batch, tc.image_size, first_batch + small_batches)
        if small_batches == 0:
            return full
        return self._stream(part, parts, part_batch, tc.small_size, first_batch).take(small_batches).concatenate(full)

    def validation_input(self):
        from amazonmine.neural.datasets import Batching, make_dataset

        data = self.data
        return make_dataset(data.chips, data.remap[data.plan.val_rows], data.labels, None,
                            Batching(self.tc.image_size, self.cfg.predict.batch_size, data.scale))

    def fit_inputs(self, val_ds, initial_epoch: int):
        """The training stream from ``initial_epoch`` on and the validation batches, each worker's in a cluster."""
        if self.cluster is None:
            return self.training_input(0, 1, self.batch, initial_epoch), val_ds
        cluster = self.cluster
        # Endless on every worker, so all of them take the same steps whatever the size of their share.
        train_ds = cluster.distribute(lambda part, parts, size: self.training_input(part, parts, size, initial_epoch,
                                                                                    cluster.local_replicas), self.batch)
        return train_ds, cluster.evaluation_input(val_ds)

    # --- the model

    def build_model(self):
        from amazonmine.neural.model import build_model

        with self.strategy.scope():
            return build_model(self.tc, channels=self.data.chips.channels, image_format=self.cfg.data.image_format,
                               num_labels=len(self.cfg.data.labels))

    def compile(self, model, optimizer) -> None:
        with self.strategy.scope():
            # XLA stays off across workers, as in TensorFlow's multi-worker recipe.
            model.compile(optimizer=optimizer, loss=make_loss(self.tc), metrics=[make_metric()],
                          jit_compile=(bool(self.gpu) or self.tc.xla) and self.cluster is None)

    def start_weights(self, model, val_ds, resume: bool) -> tuple[int, FitRecord]:
        """Start the weights (``train.init_from``, its head phase, or the resume state) and compile: the first
        epoch to train, and a record of the fit to come."""
        tc, cluster, state = self.tc, self.cluster, self.target.state
        started_from = None
        if cluster is None and tc.init_from and not resume:
            from amazonmine.neural.finetune import resolve_source, start_from, train_head

            started_from = start_from(model, resolve_source(tc.init_from, self.fold), self.cfg.data.labels, tc)
            if tc.head_epochs:  # before the fold is written: like the rest of the start, redone on a re-run
                started_from["head_phase"] = train_head(model, tc, functools.partial(self.compile, model),
                                                        self.training_input(0, 1, self.batch, 0), val_ds, self.steps)
        with self.strategy.scope():
            self.compile(model, make_optimizer(tc, self.steps))
        if cluster is not None:
            cluster.prepare_model(model)
            epoch = _start_from_chief(cluster, model, state, tc, resume, self.cfg.data.labels, self.fold)
            return epoch, FitRecord(started_from)
        # The optimizer's slots are made now, not inside the first traced step (Keras' default without a
        # distribution strategy): a tf.function that creates variables is traced twice, seconds per fold.
        with self.strategy.scope():
            model.optimizer.build(model.trainable_variables)
        return (state.restore(model) if resume else 0), FitRecord(started_from)

    # --- the fit

    def open_fold(self, resume: bool, initial_epoch: int) -> None:
        """Write the fold's folder: a resumed history cut at the epoch training restarts from, or a fresh start."""
        files = self.target.files
        if resume:
            trim_history(files.history, initial_epoch)
        else:
            discard_retrain(self.target.final)
            self.target.state.clear()
        files.dir.mkdir(parents=True, exist_ok=True)

    def callbacks(self):
        """The fit's callbacks, its throughput meter, and the epoch boundary an interrupt is judged against."""
        tc = self.tc
        # Averaged weights (and with train.validation_bn_batches the raw ones) are validated with BatchNorm
        # statistics of their own; across replicas or workers the statistics would have to be gathered in step,
        # so there they are the running ones (the final recalibration still fits the kept model).
        validated_with_own_statistics = tc.ema > 0 or tc.validation_bn_batches > 0
        calibration = (_calibration(self.cfg, self.data, self.fold)
                       if validated_with_own_statistics and self.replicas == 1 and self.cluster is None else None)
        # An interrupt after the boundary has seen an epoch end saves that epoch's state; one in an earlier
        # epoch-end callback (before early stopping or the plateau schedule have counted the epoch) redoes it.
        boundary = epoch_boundary()
        state = self.target.state
        callbacks, _, meter = fold_callbacks(self.target.files, tc, state.best, state, self.batch, calibration,
                                             boundary=boundary)
        if self.cluster is not None:
            callbacks.insert(0, self.cluster.same_statistics())  # before the checkpoints look at the model
        return callbacks, meter, boundary

    def fit(self, model, train_ds, val_ds, initial_epoch: int, callbacks: list, boundary) -> float:
        """Train from ``initial_epoch`` to train.epochs (or early stopping): the seconds it took. Ctrl-C or
        SIGTERM ends it with one line that says what was kept and how to go on."""
        tc = self.tc
        started = time.perf_counter()
        try:
            if initial_epoch < tc.epochs:
                model.fit(train_ds, validation_data=val_ds, epochs=tc.epochs, initial_epoch=initial_epoch,
                          steps_per_epoch=self.steps, callbacks=callbacks, shuffle=False, verbose=tc.verbose)
        except KeyboardInterrupt:
            raise self._interrupted(model, callbacks, boundary) from None
        return time.perf_counter() - started

    def _interrupted(self, model, callbacks: list, boundary) -> AmazonmineError:
        """After an interrupt in the fit: the state of the last finished epoch kept, and the error that says so.

        A resume starts from an epoch's end, never from the middle of one: the cut epoch is redone from its
        first step, on the same chips, and ends with the weights the uninterrupted run would have had."""
        import keras

        fold, state, epochs = self.fold, self.target.state, self.tc.epochs
        done = _epochs_done(self.target.files.history)
        if self.cluster is not None and done > 0:
            # Saving now would wait for workers that may be gone: the state of the last finished epoch, saved
            # by the chief, is what every worker resumes from.
            return AmazonmineError(f"interrupted in fold {fold} (history ends at epoch {done}): continue from the "
                                   f"last saved epoch with 'amazonmine train --fold {fold} --resume' on every worker")
        for callback in callbacks:  # stopped during validation: the raw weights back before saving
            if isinstance(callback, keras.callbacks.SwapEMAWeights):
                callback.on_test_end()
        saved = state.saved_epoch()
        if boundary.at_epoch_end and done > saved and model.optimizer.built:
            state.save(model, done)  # stopped among the epoch-end writes: the weights are that epoch's end
            saved = done
        if saved >= epochs:
            return AmazonmineError(f"interrupted after training: continue with 'amazonmine train --fold {fold} "
                                   f"--resume', which finishes the fold without training further")
        if saved:
            return AmazonmineError(f"interrupted: resume state saved in {state.folder} after epoch {saved}; "
                                   f"continue with 'amazonmine train --fold {fold} --resume'")
        # No epoch's end was reached (nor saved): nothing to resume.
        state.clear()
        if self.target.staged:
            discard_retrain(self.target.final)
        return AmazonmineError(f"interrupted during the first epoch of fold {fold}: nothing to resume; "
                               f"run {self.target.again()} again")

    # --- the finish

    def finish(self, model, record: FitRecord, note: str | None) -> TrainResult:
        """Every worker checks it holds the same weights; the chief finishes the fold and swaps a retrain in."""
        from amazonmine.neural.cluster import weights_digest

        fold, cluster, final = self.fold, self.cluster, self.target.final
        record.digest = weights_digest(model)
        if cluster is not None:
            cluster.require_same({"weights after training": record.digest})
            if not self.lead:
                # The run folder's own path, not this worker's private copy (target.final): the chief's model.
                model_path = RunFolder.from_config(self.cfg).fold(fold).model
                return TrainResult(fold, model_path, {"follower": cluster.name, "weights_sha256": record.digest})
        if not self.target.files.model.is_file():
            raise AmazonmineError(f"fold {fold}: no epoch produced a validation F2 (is the validation fold empty?)")
        try:
            result = _finish_fold(self, record, note)
        except KeyboardInterrupt:
            raise AmazonmineError(f"interrupted after training fold {fold}, before its out-of-fold predictions: "
                                  f"'amazonmine train --fold {fold} --resume' finishes them without training "
                                  f"further") from None
        try:
            finish_retrain(final)
        except KeyboardInterrupt:
            raise AmazonmineError(f"interrupted while the retrained fold {fold} was moved into {final.dir}: the "
                                  f"next 'amazonmine train --fold {fold}' completes the move") from None
        return result


@contextlib.contextmanager
def _disk_refusals(target: FoldTarget):
    """A file the fold could not write (disk full, read-only): one line with the file and reason from
    :mod:`amazonmine.core.io`, what is kept and how to go on."""
    try:
        yield
    except OSError as exc:
        fold, final = target.fold, target.final
        where = exc.filename or final.dir
        kept = f"; {final.dir} is as it was before this retrain" if target.staged else ""
        if final.staged.summary.is_file():  # only the swap was left: it is completed, nothing is retrained
            then = f"the next 'amazonmine train --fold {fold}' completes the move into {final.dir}"
        elif target.state.exists():
            then = f"'amazonmine train --fold {fold} --resume' continues from the last saved epoch"
        else:
            then = f"{target.again()} starts it again"
        raise AmazonmineError(f"{where}: {exc.strerror or exc}{kept}; then {then}") from None


# --- finishing a trained fold ------------------------------------------------------------------------------

def _calibration(cfg, data: FoldData, fold: int):
    """Unaugmented training chips in a seeded random order, at full size: the statistics inference will meet.
    The same batches each time, so recalibrating the same weights twice gives the same statistics."""
    order = np.random.default_rng(cfg.run.seed + fold).permutation(np.unique(data.plan.train_rows))
    return data.dataset(order, cfg.train.image_size, cfg.train.batch_size)


def _finish_fold(session: FoldSession, record: FitRecord, note: str | None) -> TrainResult:
    """BatchNorm recalibration, out-of-fold predictions and the summary of a trained fold, written to the
    session's ``target.files`` (a retrain's ``.next/`` is swapped in afterwards)."""
    import keras
    import pandas as pd

    from amazonmine.neural.datasets import predict_dataset, tta_predict_fn
    from amazonmine.neural.model import load_trained

    cfg, tc, files, plan = session.cfg, session.tc, session.target.files, session.data.plan
    val_rows = plan.val_rows

    # Out-of-fold predictions from the best checkpoint, with the same TTA as predict uses.
    best_model = load_trained(files.model)
    checkpoint = read_h5_stamp(files.model)  # its validation score and epoch, which the recalibrated copy keeps
    val_eval = session.data.dataset(val_rows, tc.image_size, cfg.predict.batch_size)
    best_model, recalibration = _recalibrated(session, best_model, val_eval, checkpoint)
    infer = tta_predict_fn(best_model, cfg.predict.tta)
    oof = predict_dataset(infer, val_eval, len(val_rows), progress=tc.verbose > 0, desc=f"OOF fold {session.fold}")
    oof_frame = pd.DataFrame(oof, columns=list(cfg.data.labels))
    oof_frame.insert(0, "image_name", plan.names[val_rows])
    write_csv_atomic(files.oof, oof_frame, float_format="%.6f")

    summary = _fold_summary(session, record, note, checkpoint, oof, recalibration)
    write_json_atomic(files.summary, summary)  # last: its presence marks the fold finished
    session.target.state.clear()
    keras.backend.clear_session()
    return TrainResult(session.fold, session.target.final.model, summary)


def _recalibrated(session: FoldSession, best_model, val_eval, checkpoint: dict):
    """The best checkpoint with BatchNorm statistics recomputed over training batches, kept (and saved over the
    checkpoint) only if it does not lower validation F2; with what was measured. Off: the model as it is."""
    from amazonmine.neural.datasets import predict_dataset, tta_predict_fn
    from amazonmine.neural.model import load_trained

    tc, files, plan = session.tc, session.target.files, session.data.plan
    if tc.bn_recalibration_batches <= 0:
        return best_model, None
    val_rows, y_val = plan.val_rows, plan.labels[plan.val_rows]
    calib = _calibration(session.cfg, session.data, session.fold)
    before = mean_f2(y_val, predict_dataset(tta_predict_fn(best_model, 1), val_eval, len(val_rows),
                                            progress=False) >= FLAT_THRESHOLD)
    layers_done = recalibrate_batchnorm(best_model, calib, tc.bn_recalibration_batches)
    after = mean_f2(y_val, predict_dataset(tta_predict_fn(best_model, 1), val_eval, len(val_rows),
                                           progress=False) >= FLAT_THRESHOLD)
    # Kept only if it does not lower validation F2: the same rule, on the same chips, that chose the
    # checkpoint. On small folds the batch statistics can be noisier than the moving averages.
    kept = after >= before
    if kept:
        with atomic_path(files.model) as tmp:
            best_model.save(tmp, include_optimizer=False)
            stamp_h5(tmp, **checkpoint)
    else:
        best_model = load_trained(files.model)
    return best_model, {"batches": tc.bn_recalibration_batches, "layers": layers_done,
                        "val_f2_before": before, "val_f2_after": after, "kept": kept}


def _fold_summary(session: FoldSession, record: FitRecord, note: str | None, checkpoint: dict, oof: np.ndarray,
                  recalibration: dict | None) -> dict:
    """The fold's ``summary.json``: what it was trained from and on, how it scored, what the fit measured."""
    import pandas as pd

    cfg, tc, files, plan, state = session.cfg, session.tc, session.target.files, session.data.plan, session.target.state
    val_rows = plan.val_rows
    history = pd.read_csv(files.history) if files.history.is_file() else None
    best_row = history.loc[history["val_f2"].idxmax()] if history is not None and len(history) else None
    meter = record.meter
    return {
        "fold": session.fold,
        "model": str(session.target.final.model),
        "backbone": tc.backbone,
        "image_size": tc.image_size,
        "labels": list(cfg.data.labels),
        # What the weights started from (train.init_from); a resumed fold started in an earlier session.
        "init_from": record.started_from or ({"source": tc.init_from} if tc.init_from else None),
        "epochs_run": int(len(history)) if history is not None else 0,
        # The checkpoint's own figures: after a kill and a resume, history may hold a re-run of its epoch.
        "best_epoch": (int(checkpoint["epoch"]) if "epoch" in checkpoint
                       else int(best_row["epoch"]) + 1 if best_row is not None else None),
        "best_val_f2": float(state.best),
        "best_val_loss": (checkpoint["val_loss"] if "val_loss" in checkpoint
                          else float(best_row["val_loss"]) if best_row is not None else None),
        "oof_f2_flat": mean_f2(plan.labels[val_rows], oof >= FLAT_THRESHOLD),
        "oof_tta_views": cfg.predict.tta,
        "train_chips": int(len(plan.train_rows)),
        "val_chips": int(len(val_rows)),
        # None when this session trained no epoch (a resume after training): no speed was measured.
        "train_images_per_s": meter.images / meter.seconds if meter.seconds else None,
        "train_seconds_this_session": record.wall,
        "replicas": session.replicas,
        "workers": 1 if session.cluster is None else session.cluster.num_workers,
        "global_batch": session.batch,
        "weights_sha256": record.digest,
        "mixed_precision": bool(session.gpu),
        "bn_recalibration": recalibration,
        "split_sha256": state.split_id,
        "settings": state.settings,
        "note": note,
    }


def _start_from_chief(cluster: Cluster, model, state: ResumeState, tc, resume: bool, labels: list[str],
                      fold: int) -> int:
    """The chief loads what the fold starts from (``train.init_from``, or the resume state, from its own run
    folder) and every worker takes its weights, optimizer state, epoch and best score."""
    if resume and not model.optimizer.built:
        with cluster.strategy.scope():  # every worker makes the slots the chief restores, in step
            model.optimizer.build(model.trainable_variables)

    def start() -> int:
        if tc.init_from and not resume:
            from amazonmine.neural.finetune import resolve_source, start_from

            start_from(model, resolve_source(tc.init_from, fold), labels, tc)
        return state.restore(model) if resume else 0

    # Outside the strategy's scope: loading makes helper variables of its own, which inside it would be made in
    # step with the other workers, who load nothing.
    epoch = cluster.settle(start, chief_only=True)
    # Early stopping's counters too: every worker must stop at the same epoch.
    epoch, state.best, state.counters = cluster.from_chief([epoch, state.best, state.counters])
    # Dropout's random state too: it is not among the weights, and the chief alone restored it.
    cluster.broadcast(list(model.weights) + list(seed_generator_states(model).values())
                      + (list(model.optimizer.variables) if model.optimizer.built else []))
    return int(epoch)


def _epochs_done(history_csv: Path) -> int:
    import pandas as pd

    if not history_csv.is_file():
        return 0
    try:
        return int(len(pd.read_csv(history_csv)))
    except Exception:  # noqa: BLE001 - an empty or half-written log means no finished epoch
        return 0
