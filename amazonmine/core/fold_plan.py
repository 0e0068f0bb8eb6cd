"""What train does with each fold, decided before anything is written, and what a fold trains on.

* :func:`resolve_folds` -- which folds a command means (``--fold``, ``--all-folds``, ``train.folds``).
* :func:`fold_action` -- skip, resume or train a fold. A finished fold is never retrained by accident (its model
  may have cost hours), nor an interrupted one restarted from scratch, nor either continued on another split or
  other settings: those need ``--retrain``. ``--resume`` continues whatever there is, so it can be given to a
  whole run.
* :func:`model_settings` -- the settings a fold's model depends on, recorded in its summary and resume state so
  a re-run with other ones is refused rather than mixed in.
* :class:`ResumeState` -- the last finished epoch's weights, optimizer state and progress (``fold{K}/resume/``).
* :func:`training_files` and :func:`finish_retrain` -- a retrain is made beside the fold it replaces and swapped in
  only once finished (below).
* :func:`load_fold_plan` -- a fold's training rows (with their dihedral transforms) and validation rows, from the
  split in the run folder, and the folder its chips are read from.

Every path comes from :class:`amazonmine.core.runfolder.RunFolder`; the file formats are those of earlier versions, so
a run folder they wrote keeps working.

**Retraining without losing the fold.** A fold that holds something worth keeping (a finished model, or an
interrupted run's resume state) is trained again in ``fold{K}/.next/``, which has the files of a fold of its own
(model, history.csv, tensorboard/, resume/, the OOF file and, last, summary.json). The fold itself is not touched,
so predict and tune keep using it, until the retrain has written its summary; then :func:`finish_retrain` moves
the new files in. ``.next/summary.json`` is the commit point: once it exists the swap is only ever completed,
never undone, and every step of it can be repeated, so after a ``kill -9`` anywhere the next ``train`` finishes
it before deciding anything. During the swap the fold has no summary, so it reads as unfinished (never as the
old model with the new summary or the reverse), and its summary comes back last. An interrupted retrain leaves
its resume state in ``.next/resume/``; ``--resume`` continues that one, not the fold's older state.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

from amazonmine.core.data import LABELS, DataError, PlanetLayout
from amazonmine.core.errors import AmazonmineError
from amazonmine.core.io import atomic_path, read_h5_stamp, read_h5_text, read_json, stamp_h5, write_json_atomic
from amazonmine.core.runfolder import FoldFiles, FoldState, RunFolder


def resolve_folds(cfg, folds=(), all_folds: bool = False) -> list[int]:
    if all_folds:
        return list(range(cfg.split.folds))
    chosen = list(folds) or list(cfg.train.folds) or list(range(cfg.split.folds))
    bad = [f for f in chosen if not 0 <= f < cfg.split.folds]
    if bad:
        raise AmazonmineError(f"fold(s) {bad} out of range: split.folds is {cfg.split.folds} "
                              f"(folds 0..{cfg.split.folds - 1})")
    return sorted(set(chosen))


# --- what a fold's model depends on ------------------------------------------------------------------------

def model_settings(cfg) -> dict:
    """The settings a fold's model depends on (train.*, except those that only change speed or output, and
    which chips it reads), recorded in its summary: a re-run with other settings is refused, not skipped."""
    ignored = {"verbose", "folds", "cache"}
    # Each warm-up setting means something to its own schedule only.
    ignored.add("warmup_epochs" if cfg.train.schedule == "one_cycle" else "one_cycle_warmup")
    settings = {f"train.{k}": v for k, v in cfg.train.model_dump().items() if k not in ignored}
    settings.update({"dehaze.enabled": cfg.dehaze.enabled, "data.image_format": cfg.data.image_format,
                     "data.chip_size": cfg.data.chip_size})
    if tuple(cfg.data.labels) != LABELS:  # recorded only for a vocabulary of its own: older runs stay comparable
        settings["data.labels"] = list(cfg.data.labels)
    if cfg.dehaze.enabled:  # the chips it learnt from were made with these
        settings.update({f"dehaze.{k}": v for k, v in cfg.dehaze.model_dump().items()
                         if k not in ("enabled", "workers", "out_dir")})
    return json.loads(json.dumps(settings, default=str))  # as it reads back from summary.json


# --- the resume state --------------------------------------------------------------------------------------

class ResumeState:
    """Last finished epoch's weights (with optimizer state) and progress, written atomically each epoch, with
    the split and settings they were trained with (so a resume on other ones is refused)."""

    def __init__(self, files: FoldFiles, split_id: str = "", settings: dict | None = None):
        self.folder = files.resume_dir
        self.checkpoint = files.model
        self.weights = files.resume_weights
        self.meta = files.resume_meta
        self.best = -1.0
        self.resuming = False
        self.split_id, self.settings = split_id, settings or {}
        self.counters: dict = {}  # early stopping's and the plateau schedule's, carried across a resume
        self.counters_of = None  # set by the fold's callbacks: reads those counters when the state is saved

    def exists(self) -> bool:
        return self.weights.is_file() and self.meta.is_file()

    def save(self, model, epoch: int) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._read_counters()
        with atomic_path(self.weights, suffix=".weights.h5") as tmp:
            model.save_weights(tmp)
            # The weights say which epoch they are, and carry that epoch's counters: a kill between them and
            # state.json must not make a resume train that epoch a second time on top of itself, nor count
            # early stopping's patience from the epoch before.
            stamp_h5(tmp, epoch=epoch, best_val_f2=self.best, counters=json.dumps(self.counters))
            _write_seed_states(tmp, model)
        self.save_progress(epoch)

    def _read_counters(self) -> None:
        if self.counters_of is not None:
            self.counters = self.counters_of()

    def save_progress(self, epoch: int) -> None:
        self._read_counters()
        write_json_atomic(self.meta, {"epoch": epoch, "best_val_f2": self.best, "split_sha256": self.split_id,
                                      "settings": self.settings, "counters": self.counters})

    def read_meta(self) -> dict:
        return read_json(self.meta)

    def saved_epoch(self) -> int:
        """The epoch the saved state is at (0: none saved)."""
        if not self.exists():
            return 0
        return max(int(self.read_meta().get("epoch", 0)), int(read_h5_stamp(self.weights).get("epoch", 0)))

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
        _read_seed_states(self.weights, model)
        # state.json is written after the weights, and the best checkpoint before both: after a kill between
        # any two of them the files disagree, and the furthest each one got is the truth. (state.json alone
        # runs ahead when training ended early: it then says the fold's epochs are done.)
        stamp = read_h5_stamp(self.weights)
        saved_best = read_h5_stamp(self.checkpoint).get("val_f2", -1.0) if self.checkpoint.is_file() else -1.0
        self.best = max(float(meta.get("best_val_f2", -1.0)), stamp.get("best_val_f2", -1.0), saved_best)
        weights_ahead = int(stamp.get("epoch", 0)) > int(meta["epoch"])
        stamped_counters = read_h5_text(self.weights, "counters") if weights_ahead else None
        self.counters = json.loads(stamped_counters) if stamped_counters else (meta.get("counters") or {})
        self.resuming = True
        return max(int(meta["epoch"]), int(stamp.get("epoch", 0)))

    def clear(self) -> None:
        for p in (self.weights, self.meta):
            if p.exists():
                p.unlink()
        if self.folder.is_dir() and not any(self.folder.iterdir()):
            self.folder.rmdir()


_SEED_STATES = "amazonmine_seed_states"


def seed_generator_states(model) -> dict:
    """{layer name/k: state variable} of the random-number generators of the model's layers (dropout's), which
    Keras does not save with the weights: without them a resumed run draws other dropout masks than the
    uninterrupted one. Keyed by layer name, as the variables' own paths get a counter per model built."""
    states = {}
    for layer in model._flatten_layers(include_self=False):
        for k, generator in enumerate(getattr(layer, "_seed_generators", [])):
            key = f"{layer.name}/{k}"
            if key in states:  # two layers of one name (nested models): their states cannot be told apart
                raise AmazonmineError(f"model has two layers named {layer.name!r} with random state; rename one")
            states[key] = generator.state
    return states


def _write_seed_states(path: Path, model) -> None:
    import h5py

    states = seed_generator_states(model)
    if not states:
        return
    with h5py.File(path, "a") as f:
        group = f.require_group(_SEED_STATES)
        for name, variable in states.items():
            group[name.replace("/", "|")] = np.asarray(variable.numpy())


def _read_seed_states(path: Path, model) -> None:
    import h5py

    with h5py.File(path, "r") as f:
        saved = {k.replace("|", "/"): v[()] for k, v in f[_SEED_STATES].items()} if _SEED_STATES in f else {}
    for name, variable in seed_generator_states(model).items():
        if name in saved:  # a state saved by an older version has none: its dropout draws start over
            variable.assign(saved[name])


# --- skip, resume or train ---------------------------------------------------------------------------------

class FoldAction(NamedTuple):
    """What train does with a fold: kind "skip", "resume" or "train", and a note for its headline."""

    kind: str
    note: str | None = None


def fold_action(cfg, fold: int, resume: bool = False, retrain: bool = False) -> FoldAction:
    """What to do with one fold (see the module docstring). Refusals raise, before anything is written.

    A retrain whose swap was cut short is to be completed first (:func:`finish_retrain`); run_train does.
    """
    run = RunFolder.from_config(cfg)
    files = run.fold(fold)
    split_id, settings = run.split_fingerprint(), model_settings(cfg)
    if retrain:
        return FoldAction("train")
    # An interrupted retrain comes before the fold's own interrupted run: it is the latest word on this fold.
    for interrupted in (files.staged, files):
        if interrupted.has_resume_state():
            _check_resumable(files, interrupted, resume, split_id, settings)
            return FoldAction("resume")
    state = run.fold_state(fold, split_id)
    if state is FoldState.OTHER_SPLIT:
        return FoldAction("train", "the split changed since this fold was trained: trained again on the new split")
    if state is FoldState.FINISHED:
        finished = files.read_summary()
        _refuse_changed_settings(files.dir, finished, settings, "this fold was trained with")
        if finished.get("split_sha256") is None or "settings" not in finished:
            return FoldAction("skip", "trained by an earlier version, which did not record its split and settings: "
                                      "kept as it is (--retrain if they changed)")
        return FoldAction("skip")
    # Absent, or a model without summary and without resume state: nothing that can be continued.
    return FoldAction("train")


def _check_resumable(files: FoldFiles, interrupted: FoldFiles, resume: bool, split_id: str, settings: dict) -> None:
    """Refuse to pass over an interrupted run (``interrupted``: the fold, or its retrain in .next/) without
    --resume, or to continue it on another split or with other settings."""
    meta = read_json(interrupted.resume_meta)
    run = "retrain" if interrupted.dir != files.dir else "run"
    if not resume:
        where = interrupted.resume_dir.relative_to(files.dir).as_posix()
        raise AmazonmineError(f"{files.dir}: an interrupted {run} is saved in {where}/ (after epoch "
                              f"{meta.get('epoch', '?')}); continue it with --resume, or start the fold over "
                              f"with --retrain")
    if meta.get("split_sha256") not in (None, split_id):
        raise AmazonmineError(f"{files.dir}: the split changed since this fold's interrupted {run}; --retrain "
                              f"starts it over on the new split")
    _refuse_changed_settings(files.dir, meta, settings, f"this fold's interrupted {run} used")


# --- retraining beside the fold, then the swap -------------------------------------------------------------

def training_files(files: FoldFiles, kind: str) -> FoldFiles:
    """Where fold ``files`` is trained for ``kind`` ("train" or "resume", from :func:`fold_action`): in
    ``.next/`` when the fold holds a finished model or an interrupted run to keep until the new one is finished
    (and to resume a retrain interrupted there), else in the fold itself, as a first training always was."""
    staged = files.staged
    if kind == "resume":
        return staged if staged.has_resume_state() else files
    return staged if files.summary.is_file() or files.has_resume_state() else files


def finish_retrain(files: FoldFiles) -> bool:
    """Swap the finished retrain in ``.next/`` into fold ``files`` (see the module docstring); False when there
    is none. Safe to call again after being killed at any step: each step is a rename or removal that is
    skipped once done. A ``.next/`` with neither a summary nor a resume state holds nothing that can be
    continued (the swap's last step cut short, a retrain killed in its first epoch) and is removed."""
    staged = files.staged
    if staged.summary.is_file():
        for step in swap_steps(files):
            step()
        return True
    if not staged.has_resume_state():
        _remove_tree(staged.dir)
    return False


def swap_steps(files: FoldFiles) -> list[Callable[[], None]]:
    """The swap, step by step: each a rename or a removal that is skipped once done (the tests stop the swap
    after each, as a kill would)."""
    new = files.staged
    return [
        # The retrain is finished: its resume state must not outlive the summary's move as a run to continue.
        lambda: _remove_tree(new.resume_dir),
        # From here until the last move the fold reads as unfinished, never as a mix of old and new.
        lambda: _remove_file(files.summary),
        # The old model's lockbox predictions (predict writes them, evaluate reads them); a moved summary keeps
        # its time, so age alone would not tell them stale.
        lambda: _remove_file(files.holdout),
        lambda: _remove_tree(files.resume_dir),
        lambda: _move(new.model, files.model),
        lambda: _move(new.history, files.history),
        lambda: _remove_tree(files.tensorboard) if new.tensorboard.is_dir() else None,
        lambda: _move(new.tensorboard, files.tensorboard),
        lambda: _move(new.oof, files.oof),
        lambda: _move(new.summary, files.summary),
        lambda: _remove_tree(new.dir),
    ]


def discard_retrain(files: FoldFiles) -> None:
    """Remove what an earlier start left in ``.next/`` (an interrupted retrain being started over, or one cut
    short before its first epoch ended): called only once a new start has passed every check."""
    _remove_tree(files.staged.dir)


def _move(src: Path, dst: Path) -> None:
    if src.exists():
        os.replace(src, dst)


def _remove_file(path: Path) -> None:
    if path.is_file():
        path.unlink()


def _remove_tree(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)


def _refuse_changed_settings(fold_dir: Path, recorded: dict, settings: dict, who: str) -> None:
    before = recorded.get("settings") or {}
    changed = [f"{k} {before[k]!r} -> {v!r}" for k, v in settings.items() if k in before and before[k] != v]
    if changed:
        raise AmazonmineError(f"{fold_dir}: {who} other settings ({'; '.join(changed[:4])}"
                              f"{'; ...' if len(changed) > 4 else ''}); --retrain trains it with these, or use a "
                              f"new run.dir")


# --- what a fold trains on ---------------------------------------------------------------------------------

@dataclasses.dataclass
class FoldPlan:
    """One fold's rows as indices into the labels table, and where its chips are."""

    names: np.ndarray       # image_name of every labelled chip, in the labels file's order
    labels: np.ndarray      # (N, 17) multi-hot, same rows
    train_rows: np.ndarray  # the training manifest's rows (rare chips repeated) ...
    transforms: np.ndarray  # ... and the dihedral view (0..7) each is trained under
    val_rows: np.ndarray    # the fold's own chips, never oversampled
    chip_dir: Path
    ext: str

    def used_rows(self) -> np.ndarray:
        """Every row the fold reads (training or validation), sorted, each once."""
        return np.union1d(np.unique(self.train_rows), self.val_rows)

    def chip_paths(self, rows: np.ndarray) -> list[Path]:
        return [self.chip_dir / f"{self.names[i]}{self.ext}" for i in rows]


def load_fold_plan(cfg, fold: int) -> FoldPlan:
    """Labels, the fold's training rows (+ transforms) and validation rows, and the chips' folder."""
    run = RunFolder.from_config(cfg)
    layout = PlanetLayout.from_config(cfg.data)
    frame, matrix = layout.load_train(check_files=False)
    index = {name: i for i, name in enumerate(frame["image_name"])}
    folds = run.read_folds()
    manifest = run.read_training_manifest(fold)
    unknown = sorted(set(folds["image_name"]) - set(index))
    if unknown:
        raise DataError(f"{run.folds_csv}: {len(unknown)} chips not in {layout.labels_csv} "
                        f"(e.g. {', '.join(unknown[:3])}); re-run 'amazonmine split'")
    val_rows = np.array([index[n] for n in folds.loc[folds["fold"] == fold, "image_name"]], dtype=np.int64)
    train_rows = np.array([index[n] for n in manifest["image_name"]], dtype=np.int64)
    if len(val_rows) == 0:
        raise DataError(f"{run.folds_csv}: fold {fold} has no chips")
    subdir = cfg.data.tif_dir if cfg.data.image_format == "tif" else cfg.data.train_dir
    return FoldPlan(names=frame["image_name"].to_numpy(), labels=matrix, train_rows=train_rows,
                    transforms=manifest["transform"].to_numpy(np.int64), val_rows=val_rows,
                    chip_dir=run.require_chip_dir(subdir), ext=layout.ext)
