"""What train does with each fold, decided before anything is written, and what a fold trains on.

* :func:`resolve_folds` -- which folds a command means (``--fold``, ``--all-folds``, ``train.folds``).
* :func:`fold_action` -- skip, resume or train a fold. A finished fold is never retrained by accident (its model
  may have cost hours), nor an interrupted one restarted from scratch, nor either continued on another split or
  other settings: those need ``--retrain``. ``--resume`` continues whatever there is, so it can be given to a
  whole run.
* :func:`model_settings` -- the settings a fold's model depends on, recorded in its summary and resume state so
  a re-run with other ones is refused rather than mixed in.
* :class:`ResumeState` -- the last finished epoch's weights, optimizer state and progress (``fold{K}/resume/``).
* :func:`load_fold_plan` -- a fold's training rows (with their dihedral transforms) and validation rows, from the
  split in the run folder, and the folder its chips are read from.

Every path comes from :class:`amazonmine.runfolder.RunFolder`; the file formats are those of earlier versions, so
a run folder they wrote keeps working.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import NamedTuple

import numpy as np

from amazonmine.data import DataError, PlanetLayout
from amazonmine.errors import AmazonmineError
from amazonmine.io import atomic_path, read_json, write_json_atomic
from amazonmine.runfolder import FoldFiles, FoldState, RunFolder


def resolve_folds(cfg, folds=(), all_folds: bool = False) -> list[int]:
    if all_folds:
        return list(range(cfg.split.folds))
    chosen = list(folds) or list(cfg.train.folds) or list(range(cfg.split.folds))
    bad = [f for f in chosen if not 0 <= f < cfg.split.folds]
    if bad:
        raise AmazonmineError(f"fold(s) {bad} out of range: split.folds is {cfg.split.folds} (folds 0..{cfg.split.folds - 1})")
    return sorted(set(chosen))


# --- what a fold's model depends on ------------------------------------------------------------------------

def model_settings(cfg) -> dict:
    """The settings a fold's model depends on (train.*, except those that only change speed or output, and
    which chips it reads), recorded in its summary: a re-run with other settings is refused, not skipped."""
    ignored = {"verbose", "folds", "cache"}
    settings = {f"train.{k}": v for k, v in dataclasses.asdict(cfg.train).items() if k not in ignored}
    settings.update({"dehaze.enabled": cfg.dehaze.enabled, "data.image_format": cfg.data.image_format,
                     "data.chip_size": cfg.data.chip_size})
    if cfg.dehaze.enabled:  # the chips it learnt from were made with these
        settings.update({f"dehaze.{k}": v for k, v in dataclasses.asdict(cfg.dehaze).items()
                         if k not in ("enabled", "workers", "out_dir")})
    return json.loads(json.dumps(settings, default=str))  # as it reads back from summary.json


# --- the resume state --------------------------------------------------------------------------------------

class ResumeState:
    """Last finished epoch's weights (with optimizer state) and progress, written atomically each epoch, with
    the split and settings they were trained with (so a resume on other ones is refused)."""

    def __init__(self, files: FoldFiles, split_id: str = "", settings: dict | None = None):
        self.folder = files.resume_dir
        self.weights = files.resume_weights
        self.meta = files.resume_meta
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


# --- skip, resume or train ---------------------------------------------------------------------------------

class FoldAction(NamedTuple):
    """What train does with a fold: kind "skip", "resume" or "train", and a note for its headline."""

    kind: str
    note: str | None = None


def fold_action(cfg, fold: int, resume: bool = False, retrain: bool = False) -> FoldAction:
    """What to do with one fold (see the module docstring). Refusals raise, before anything is written."""
    run = RunFolder.from_config(cfg)
    files = run.fold(fold)
    split_id, settings = run.split_fingerprint(), model_settings(cfg)
    if retrain:
        return FoldAction("train")
    state = run.fold_state(fold, split_id)
    if state is FoldState.INTERRUPTED and files.has_resume_state():
        meta = read_json(files.resume_meta)
        if not resume:
            raise AmazonmineError(f"{files.dir}: an interrupted run is saved in resume/ (after epoch "
                                  f"{meta.get('epoch', '?')}); continue it with --resume, or start the fold over "
                                  f"with --retrain")
        if meta.get("split_sha256") not in (None, split_id):
            raise AmazonmineError(f"{files.dir}: the split changed since this fold's interrupted run; --retrain "
                                  f"starts it over on the new split")
        _refuse_changed_settings(files.dir, meta, settings, "this fold's interrupted run used")
        return FoldAction("resume")
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
