"""The run folder: the one place that names every artifact a run makes, and reads them back.

Stages never spell a file name of the run folder themselves and never import each other: ``train`` writes
``fold1/b01_dense121.h5`` because :class:`RunFolder` says so, and ``predict`` finds it the same way. The
folder, as the stages leave it::

    <run.dir>/config.yaml                       the resolved config of the last stage that wrote the folder
              folds.csv, fold_counts.csv, train_manifest.csv                  split
              dehazed/<train-jpg, test-jpg, ...>, dehaze_stats.csv, ...       dehaze (dehaze.out_dir)
              fold{K}/<train.artifact_name>, history.csv, summary.json,
                      tensorboard/, resume/state.weights.h5, resume/state.json train
              fold{K}/.next/...   a retrain, swapped in when finished (the old fold stays usable until then)
              oof_fold{K}.csv                                                  train (out-of-fold probabilities)
              thresholds.json                                                  tune
              submission.csv, test_probabilities.csv, predict_failures.csv     predict (the Kaggle test set)
              holdout_probabilities.csv, fold{K}/holdout_probabilities.csv     predict (the lockbox chips)
              predictions/labels.csv, predictions/probabilities.csv            predict INPUTS...
              report/index.html (+ PNG/JPEG)                                    evaluate
              scans/<name>/...                                                  scan

A fold is *finished* when its model and its ``summary.json`` exist (the summary is written last), so a fold
interrupted or still training is never mistaken for a finished one. Each summary records the SHA-256 of the
split it was trained on (:meth:`RunFolder.split_fingerprint`), so a fold left from another split is told apart.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from amazonmine.core.data import LABELS, DataError, PlanetLayout, _offenders, check_vocabulary, load_matrix_csv
from amazonmine.core.decisions import DecisionRule
from amazonmine.core.errors import AmazonmineError
from amazonmine.core.io import exclusive_lock, read_json, remove_stale_temporaries, write_text_atomic

CONFIG_YAML = "config.yaml"
FOLDS_CSV = "folds.csv"
FOLD_COUNTS_CSV = "fold_counts.csv"
MANIFEST_CSV = "train_manifest.csv"
THRESHOLDS_JSON = "thresholds.json"
SUBMISSION_CSV = "submission.csv"
TEST_PROBABILITIES_CSV = "test_probabilities.csv"
PREDICT_FAILURES_CSV = "predict_failures.csv"
DEHAZE_STATS_CSV = "dehaze_stats.csv"
DEHAZE_ERRORS_CSV = "dehaze_errors.csv"
HOLDOUT_PROBABILITIES_CSV = "holdout_probabilities.csv"
LOCKBOX_LOOKS_JSON = "lockbox_looks.json"
HOLDOUT_FOLD = -1  # folds.csv's fold of the lockbox chips (split.holdout): in no fold's training or validation
_OOF = re.compile(r"^oof_fold(\d+)\.csv$")


class FoldState(enum.Enum):
    """Where one fold stands; ``describe`` says it in words for messages."""

    ABSENT = "absent"            # nothing trained yet
    INTERRUPTED = "interrupted"  # a resume state, or a model without summary (interrupted or still training)
    FINISHED = "finished"        # model + summary, trained on the run's current split (or of unknown split)
    OTHER_SPLIT = "other split"  # finished, but on another split than the run's folds.csv


@dataclass(frozen=True)
class FoldFiles:
    """The files of fold K."""

    fold: int
    dir: Path
    model: Path
    summary: Path
    history: Path
    tensorboard: Path
    resume_dir: Path
    resume_weights: Path
    resume_meta: Path
    oof: Path
    holdout: Path  # this fold's model alone on the lockbox chips (predict writes it, evaluate scores it)

    @property
    def name(self) -> str:
        return self.dir.name

    @property
    def staged(self) -> "FoldFiles":
        """The same files under ``fold{K}/.next/``, where a retrain is made while the fold it replaces stays
        usable (see :mod:`amazonmine.core.fold_plan`); the OOF file too, so it is swapped in with the rest."""
        d = self.dir / ".next"
        resume = d / "resume"
        return FoldFiles(fold=self.fold, dir=d, model=d / self.model.name, summary=d / self.summary.name,
                         history=d / self.history.name, tensorboard=d / self.tensorboard.name, resume_dir=resume,
                         resume_weights=resume / self.resume_weights.name,
                         resume_meta=resume / self.resume_meta.name, oof=d / self.oof.name,
                         holdout=d / self.holdout.name)

    def has_resume_state(self) -> bool:
        return self.resume_weights.is_file() and self.resume_meta.is_file()

    def read_summary(self) -> dict:
        return read_json(self.summary)


@dataclass
class OofSet:
    """Out-of-fold probabilities of one run joined with their labels, rows in file order."""

    names: list[str]
    y_true: np.ndarray  # (N, 17) bool
    probs: np.ndarray  # (N, 17) float64
    folds: list[int]
    files: list[Path] = field(default_factory=list)
    n_labelled: int = 0
    fold_of_row: np.ndarray | None = None  # (N,) the fold whose model predicted each row

    def by_fold(self) -> list[tuple[int, np.ndarray]]:
        """(fold, boolean row mask) for every fold in the set."""
        rows = np.asarray(self.fold_of_row)
        return [(fold, rows == fold) for fold in self.folds]


@dataclass
class FinishedModels:
    """The fold models a run can predict with, and the folds left out."""

    folds: list[FoldFiles]
    unfinished: list[str]

    @property
    def paths(self) -> list[Path]:
        return [f.model for f in self.folds]


@dataclass
class RunFolder:
    """Every artifact of one run, named once. Build it with :meth:`from_config`."""

    root: Path
    artifact_name: str = "b01_dense121.h5"
    data_root: Path = Path("data/planet")
    dehazed: Path | None = None  # dehaze.out_dir; None = <root>/dehazed
    dehaze_enabled: bool = False

    def __post_init__(self):
        self.root = Path(self.root)
        if self.dehazed is None:
            self.dehazed = self.root / "dehazed"

    @classmethod
    def from_config(cls, cfg) -> "RunFolder":
        root = Path(cfg.run.dir)
        dehazed = Path(cfg.dehaze.out_dir)
        return cls(root=root, artifact_name=cfg.train.artifact_name, data_root=Path(cfg.data.root),
                   dehazed=dehazed if dehazed.is_absolute() else root / dehazed,
                   dehaze_enabled=bool(cfg.dehaze.enabled))

    # --- names ---------------------------------------------------------------------------------------------
    @property
    def config_yaml(self) -> Path:
        return self.root / CONFIG_YAML

    @property
    def folds_csv(self) -> Path:
        return self.root / FOLDS_CSV

    @property
    def fold_counts_csv(self) -> Path:
        return self.root / FOLD_COUNTS_CSV

    @property
    def manifest_csv(self) -> Path:
        return self.root / MANIFEST_CSV

    @property
    def thresholds(self) -> Path:
        return self.root / THRESHOLDS_JSON

    @property
    def submission(self) -> Path:
        return self.root / SUBMISSION_CSV

    @property
    def test_probabilities(self) -> Path:
        return self.root / TEST_PROBABILITIES_CSV

    @property
    def predict_failures(self) -> Path:
        return self.root / PREDICT_FAILURES_CSV

    @property
    def predictions_dir(self) -> Path:
        """Labels of explicit inputs (``predict INPUTS``), apart from the Kaggle files."""
        return self.root / "predictions"

    @property
    def report_dir(self) -> Path:
        return self.root / "report"

    @property
    def scans_dir(self) -> Path:
        return self.root / "scans"

    @property
    def dehaze_stats(self) -> Path:
        return self.dehazed / DEHAZE_STATS_CSV

    @property
    def dehaze_errors(self) -> Path:
        return self.dehazed / DEHAZE_ERRORS_CSV

    @property
    def holdout_probabilities(self) -> Path:
        """The fold models' probabilities for the lockbox chips (predict writes it, evaluate scores it)."""
        return self.root / HOLDOUT_PROBABILITIES_CSV

    @property
    def lockbox_looks(self) -> Path:
        """Every distinct set of lockbox predictions evaluate has scored in this run folder (evaluate)."""
        return self.root / LOCKBOX_LOOKS_JSON

    def fold(self, k: int) -> FoldFiles:
        d = self.root / f"fold{int(k)}"
        resume = d / "resume"
        return FoldFiles(fold=int(k), dir=d, model=d / self.artifact_name, summary=d / "summary.json",
                         history=d / "history.csv", tensorboard=d / "tensorboard", resume_dir=resume,
                         resume_weights=resume / "state.weights.h5", resume_meta=resume / "state.json",
                         oof=self.root / f"oof_fold{int(k)}.csv", holdout=d / HOLDOUT_PROBABILITIES_CSV)

    def fold_numbers(self) -> list[int]:
        """Folds that have a folder in the run (any state but absent), in order."""
        found = []
        for p in self.root.glob("fold*"):
            if p.is_dir() and p.name[4:].isdigit():
                found.append(int(p.name[4:]))
        return sorted(found)

    def oof_files(self) -> list[tuple[int, Path]]:
        return sorted((int(m.group(1)), p) for p in self.root.glob("oof_fold*.csv") if (m := _OOF.match(p.name)))

    def prepare(self, cfg) -> Path:
        """Create the folder and (re)write the resolved config beside the artifacts (stages that write call this)."""
        from amazonmine.core.config import dump_config

        if self.root.exists() and not self.root.is_dir():
            raise AmazonmineError(f"{self.root}: run.dir is a file, not a folder; set run.dir to a folder")
        self.root.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.config_yaml, dump_config(cfg))
        return self.root

    def lock(self, stage: str):
        """Hold the run folder for a stage that writes it: a second writer (another train, a tune while
        training, ...) is refused at once with one line naming the holder; a killed holder's lock is gone."""
        if self.root.exists() and not self.root.is_dir():
            raise AmazonmineError(f"{self.root}: run.dir is a file, not a folder; set run.dir to a folder")
        return _locked_and_swept(self, stage)

    # --- where the chips are -------------------------------------------------------------------------------
    def chip_dir(self, subdir: str) -> Path:
        """Where a stage reads the chips of ``subdir`` (e.g. 'train-jpg'): the dehazed copy when dehazing is on,
        else the data folder. The one answer to "where are the chips"."""
        return (self.dehazed if self.dehaze_enabled else self.data_root) / subdir

    def require_chip_dir(self, subdir: str) -> Path:
        """:meth:`chip_dir`, refused with what to do when the folder is not there."""
        folder = self.chip_dir(subdir)
        if not folder.is_dir():
            if self.dehaze_enabled:
                raise DataError(f"{folder}: dehazed chips not found: run 'amazonmine dehaze' first, "
                                "or --set dehaze.enabled=false to use the raw chips")
            raise DataError(f"{folder}: image folder not found (check data.root)")
        return folder

    # --- the split -----------------------------------------------------------------------------------------
    def split_fingerprint(self) -> str:
        """SHA-256 of the split's files (folds.csv, train_manifest.csv): which split a fold was trained on. The
        split is byte-for-byte reproducible, so re-running it with the same inputs keeps the fingerprint."""
        digest = hashlib.sha256()
        for path in (self.folds_csv, self.manifest_csv):
            if not path.is_file():
                raise DataError(f"{path}: not found; run 'amazonmine split' first")
            digest.update(path.read_bytes())
        return digest.hexdigest()

    def read_folds(self):
        """DataFrame image_name,fold (the labels file's row order)."""
        return _read_split_csv(self.folds_csv, ("image_name", "fold"))

    def read_training_manifest(self, fold: int):
        """DataFrame image_name,transform: the training rows of the model validated on ``fold``.

        Checked against folds.csv, so a manifest left over from another split is refused rather than trained on.
        """
        manifest = _read_split_csv(self.manifest_csv, ("image_name", "fold", "transform"))
        folds = self.read_folds()
        k = int(folds["fold"].max()) + 1
        if not 0 <= fold < k:
            raise DataError(f"{self.folds_csv}: no fold {fold} (the split has folds 0..{k - 1})")
        rows = manifest[manifest["fold"] == fold]
        expected = set(folds.loc[(folds["fold"] != fold) & (folds["fold"] != HOLDOUT_FOLD), "image_name"])
        if set(rows.loc[rows["transform"] == 0, "image_name"]) != expected or not rows["transform"].between(0, 7).all():
            raise DataError(f"{self.manifest_csv}: fold {fold} does not match {FOLDS_CSV}; "
                            "run 'amazonmine split' again")
        return rows[["image_name", "transform"]].reset_index(drop=True)

    # --- folds ---------------------------------------------------------------------------------------------
    def fold_state(self, k: int, split_id: str | None = None) -> FoldState:
        """Where fold ``k`` stands. ``split_id`` (default: the current split's, when there is one) decides
        "other split" for a finished fold; a fold that did not record its split counts as finished."""
        files = self.fold(k)
        if files.has_resume_state():
            return FoldState.INTERRUPTED
        if files.model.is_file() and files.summary.is_file():
            if split_id is None and self.folds_csv.is_file() and self.manifest_csv.is_file():
                split_id = self.split_fingerprint()
            recorded = files.read_summary().get("split_sha256")
            if split_id and recorded and recorded != split_id:
                return FoldState.OTHER_SPLIT
            return FoldState.FINISHED
        if files.model.is_file():
            return FoldState.INTERRUPTED
        return FoldState.ABSENT

    def finished_models(self) -> FinishedModels:
        """The finished fold models to predict with. Refused: no model at all, no finished fold, or a finished
        fold trained on another split than the run's (its thresholds and OOF rows belong elsewhere)."""
        folds = [k for k in self.fold_numbers() if self.fold(k).model.is_file()]
        if not folds:
            raise AmazonmineError(f"{self.root}: no fold*/{self.artifact_name}: run 'amazonmine train' first")
        split_id = self.split_fingerprint() if self.folds_csv.is_file() and self.manifest_csv.is_file() else None
        finished, unfinished, stale = [], [], []
        for k in folds:
            files = self.fold(k)
            if not files.summary.is_file():  # a resume state beside a summary still has its finished model
                unfinished.append(files.name)
                continue
            state = self.fold_state(k, split_id)
            if state is FoldState.OTHER_SPLIT:
                stale.append(files.name)
            finished.append(files)
        if stale:
            raise AmazonmineError(f"{self.root}: {', '.join(stale)} trained on another split than the run's "
                                  f"{FOLDS_CSV}: train them again ('amazonmine train --retrain --fold K') or move "
                                  f"them out of the run folder")
        if not finished:
            raise AmazonmineError(f"{self.root}: no finished fold ({', '.join(unfinished)} have no summary.json); "
                                  f"finish training with 'amazonmine train --resume'")
        return FinishedModels(finished, unfinished)

    # --- the lockbox ---------------------------------------------------------------------------------------
    def held_out_chips(self) -> list[str]:
        """The chips split set aside as the lockbox (fold -1 in folds.csv); none without a split."""
        if not self.folds_csv.is_file():
            return []
        folds = self.read_folds()
        return folds.loc[folds["fold"] == HOLDOUT_FOLD, "image_name"].tolist()

    def lockbox_staleness(self, held: list[str], labels=LABELS) -> str | None:
        """Why the lockbox probabilities (:attr:`holdout_probabilities` and each finished fold's own file)
        must be computed again, in words; None when they are current. Stale: absent, older than the split or
        a finished fold's summary (a fold retrained or added since), or listing chips no longer held out.
        Predict recomputes them; evaluate only reads them."""
        path = self.holdout_probabilities
        if not path.is_file():
            return f"{path.name} has not been written"
        try:
            finished = self.finished_models().folds
        except AmazonmineError:  # no model left to recompute with: the file is the best there is
            finished = []
        missing = [files.name for files in finished if not files.holdout.is_file()]
        if missing:
            return f"{', '.join(missing)} {'has' if len(missing) == 1 else 'have'} no {path.name} of its own"
        written = min([path.stat().st_mtime] + [files.holdout.stat().st_mtime for files in finished])
        newer = [p for p in [self.folds_csv] + [files.summary for files in finished]
                 if p.is_file() and p.stat().st_mtime > written]
        if newer:
            return f"{path.name} is older than {newer[0].relative_to(self.root)}"
        names, _ = load_matrix_csv(path, labels=labels)
        if not set(names) <= set(held):
            return f"{path.name} lists chips that are no longer held out"
        return None

    # --- tune's inputs and outputs -------------------------------------------------------------------------
    def read_oof(self, layout: PlanetLayout) -> OofSet:
        """Every oof_fold*.csv of the run, joined with the labels of ``layout``'s train_v2.csv."""
        found = self.oof_files()
        if not found:
            raise DataError(f"no out-of-fold predictions in {self.root}: run 'amazonmine train' first")
        names: list[str] = []
        blocks = []
        for _, path in found:
            fold_names, matrix = read_probabilities(path, layout.labels)
            names += fold_names
            blocks.append(matrix)
        seen: set[str] = set()
        dups = sorted({n for n in names if n in seen or seen.add(n)})
        if dups:
            raise DataError(f"{self.root}: chips predicted in more than one oof_fold*.csv: {_offenders(dups)}")
        frame, labels = layout.load_train(check_files=False)
        row_of = {name: i for i, name in enumerate(frame["image_name"])}
        unknown = [n for n in names if n not in row_of]
        if unknown:
            raise DataError(f"{self.root}: out-of-fold chips not in {layout.labels_csv}: {_offenders(unknown)}")
        y_true = labels[[row_of[n] for n in names]]
        # Unannotated entries (-1) stay in the truth for the scores to mask; a fully annotated set is boolean.
        y_true = y_true if (y_true < 0).any() else y_true.astype(bool)
        fold_of_row = np.concatenate([np.full(len(b), f) for (f, _), b in zip(found, blocks)])
        return OofSet(names, y_true, np.concatenate(blocks), [f for f, _ in found], [p for _, p in found],
                      len(frame), fold_of_row)

    def read_thresholds(self) -> tuple[DecisionRule, bool]:
        """(the decision rule, weather_decoding) from thresholds.json (:func:`read_decision_rule`)."""
        path = self.thresholds
        if not path.is_file():
            raise DataError(f"{path}: thresholds not found: run 'amazonmine tune' first")
        return read_decision_rule(path)


def read_decision_rule(path: Path) -> tuple[DecisionRule, bool]:
    """(the decision rule, weather_decoding) from a file as tune writes thresholds.json (a bundle's
    decisions.json too). The rule reads as the 17 thresholds in LABELS order (``np.asarray(rule)``) and carries
    tune's decoder, so ``decode(probs, rule, ...)`` decides as tune chose; a file from before decoders existed
    decides by its thresholds."""
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        by_label = saved["thresholds"]
        weather_decoding = saved["weather_decoding"]
        # The vocabulary tune wrote it for; a file from before vocabularies holds Planet's 17.
        labels = check_vocabulary(saved.get("labels", LABELS), f"{path}: labels")
        missing = [name for name in labels if name not in by_label]
        values = np.array([float(by_label[name]) for name in labels if name in by_label])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: not a thresholds file ({type(exc).__name__}: {exc})") from None
    if missing:
        raise DataError(f"{path}: no threshold for {_offenders(missing)}")
    if not isinstance(weather_decoding, bool):
        raise DataError(f"{path}: weather_decoding must be true or false, got {weather_decoding!r}")
    if not (np.isfinite(values).all() and (values > 0).all() and (values < 1).all()):
        raise DataError(f"{path}: thresholds must be numbers in (0, 1)")
    try:
        return DecisionRule.from_saved(saved, values, weather_decoding, labels), weather_decoding
    except ValueError as exc:
        raise DataError(f"{path}: {exc}") from None


@contextlib.contextmanager
def _locked_and_swept(run: RunFolder, stage: str):
    """The lock, then the temporaries a killed writer left anywhere in the run folder (only a writer holding
    this lock writes there, so every temporary found is stale; dehaze sweeps its own chip folders)."""
    with exclusive_lock(run.root / ".lock", f"amazonmine {stage}"):
        remove_stale_temporaries(run.root, recursive=True, skip=(run.dehazed,))
        yield


def _read_split_csv(path: Path, columns: Sequence[str]):
    import pandas as pd

    if not path.is_file():
        raise DataError(f"{path}: not found; run 'amazonmine split' first")
    try:
        frame = pd.read_csv(path, dtype={"image_name": str}, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        raise DataError(f"{path}: not a readable CSV; run 'amazonmine split' again") from None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}; run 'amazonmine split' again")
    for column in columns[1:]:
        if not pd.api.types.is_integer_dtype(frame[column]):
            raise DataError(f"{path}: column '{column}' must hold whole numbers; run 'amazonmine split' again")
    return frame[list(columns)]


def read_probabilities(path: Path, labels=LABELS) -> tuple[list[str], np.ndarray]:
    """A CSV of image_name + 17 probabilities (oof_fold*.csv, a fold's lockbox predictions) -> (names, float64
    matrix), refused in one line naming the chips whose probabilities are missing or outside [0, 1]."""
    names, matrix = load_matrix_csv(path, labels=labels)
    bad = ~np.isfinite(matrix).all(axis=1) | (matrix < 0).any(axis=1) | (matrix > 1).any(axis=1)
    if bad.any():
        rows = [n for n, b in zip(names, bad) if b]
        raise DataError(f"{path}: probabilities missing or outside [0, 1] for {_offenders(rows)}")
    return names, matrix.astype(np.float64)
