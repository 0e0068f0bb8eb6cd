"""Predict stage: label every test chip with the fold models (averaged) and the tuned thresholds.

Chips are streamed in chunks (read in threads while the model runs on the previous chunk), each model's
test-time-augmented probabilities are averaged, and rows are appended to ``test_probabilities.csv`` as they
come, so memory stays flat however many chips there are. Then ``submission.csv`` is written in Kaggle's
format (``image_name,tags``, no file extension, rows in ``sample_submission_v2.csv`` order when that file is
present, every chip once) and checked against the sample before the stage reports success: a public Planet
solution lost places to a malformed submission file, so the file is validated, not just the model.

Explicit inputs (folders or CSV lists) are not the competition's test set: their labels go to
``predictions/labels.csv`` (same format and checks) and ``predictions/probabilities.csv`` in the run folder,
leaving the run's Kaggle files alone, and with dehazing on each chip is dehazed in memory as it is read,
since only the configured test folders have dehazed copies on disk.

The run's own predict (no explicit inputs) also scores the lockbox when the split set chips aside
(``split.holdout``): each finished fold's model alone, then their mean, into ``holdout_probabilities.csv``,
computed again only when missing or stale. ``evaluate`` scores that file and never runs a model itself.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from amazonmine.core.data import (
    CHIP_FORMATS,
    LABELS,
    DataError,
    PlanetLayout,
    is_safe_name,
    matrix_to_tags,
    read_text_csv,
    weather_columns,
)
from amazonmine.core.errors import AmazonmineError
from amazonmine.core.io import write_csv_atomic
from amazonmine.core.runfolder import PREDICT_FAILURES_CSV, RunFolder

CHIP_SUFFIXES = tuple(CHIP_FORMATS)
# A chip that cannot be read still needs a row for Kaggle; it gets the training set's most common tag set.
FALLBACK_TAGS = "clear primary"


@dataclass
class PredictSummary:
    submission: Path
    probabilities: Path
    n_chips: int
    n_models: int
    tta: int
    seconds: float
    failed: list[str] = field(default_factory=list)
    label_counts: dict = field(default_factory=dict)
    not_in_sample: int = 0
    note: str = ""
    lockbox: str = ""  # what was done for the run's held-out chips ('' when nothing was)

    def headline(self) -> str:
        rate = self.n_chips / self.seconds if self.seconds else 0.0
        lines = [f"labelled {self.n_chips} chips with {self.n_models} model(s) x {self.tta} TTA view(s) "
                 f"({rate:.0f} chips/s) -> {self.submission}"] if self.n_chips else []
        mines = {k: v for k, v in self.label_counts.items() if "mine" in k}
        if mines:
            lines.append("mines flagged: " + ", ".join(f"{k} {v}" for k, v in mines.items()))
        if self.lockbox:
            lines.append(f"lockbox: {self.lockbox}")
        if self.note:
            lines.append(f"note: {self.note}")
        if self.not_in_sample:
            lines.append(f"note: {self.not_in_sample} chips are not in the sample submission and were left out of it")
        if self.failed:
            shown = "; ".join(self.failed[:3])
            lines.append(f"{len(self.failed)} chip(s) missing or unreadable (given '{FALLBACK_TAGS}'): {shown}"
                         + (" ..." if len(self.failed) > 3 else ""))
        return "\n".join(lines)


# --- which chips -------------------------------------------------------------------------------------------

def list_inputs(cfg, inputs: list[Path] | None) -> list[tuple[str, Path]]:
    """(image_name, path) for every chip to label: given folders / CSV lists, or the configured test folders."""
    layout = PlanetLayout.from_config(cfg.data)
    if not inputs and cfg.predict.inputs:
        inputs = [Path(p) for p in cfg.predict.inputs]
    if not inputs:
        # The configured test folders, read from the dehazed copy when dehazing is on.
        run = RunFolder.from_config(cfg)
        folders = [run.chip_dir(d) for d in cfg.data.test_dirs]
        if cfg.dehaze.enabled and not any(f.is_dir() for f in folders):
            raise DataError(f"{run.dehazed}: no dehazed test chips: run 'amazonmine dehaze' first, "
                            "or --set dehaze.enabled=false")
        layout.test_dirs = folders
        found = layout.list_test()
        if not found:
            raise DataError(f"no test chips in {', '.join(str(f) for f in folders)}")
        return found
    found: list[tuple[str, Path]] = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            chips = [(e.name.rsplit(".", 1)[0], Path(e.path)) for e in sorted(os.scandir(item), key=lambda e: e.name)
                     if e.name.lower().endswith(CHIP_SUFFIXES) and not e.name.startswith(".")]
            if not chips:
                raise DataError(f"{item}: no chip files ({', '.join(CHIP_SUFFIXES)}) in this folder")
            found += chips
        elif item.suffix.lower() == ".csv":
            found += _list_from_csv(item, layout.ext)
        else:
            raise DataError(f"{item}: not a folder of chips or a CSV list")
    names = [n for n, _ in found]
    if len(set(names)) != len(names):
        raise DataError("the same chip name appears twice among the inputs")
    return found


def _list_from_csv(path: Path, ext: str = ".jpg") -> list[tuple[str, Path]]:
    """A CSV with an image_name column; each names a chip file beside the CSV (the input-path rule of
    amazonmine.core.data: chips are named, never given as paths)."""
    frame = read_text_csv(path, "chip list", "no chips listed; expected an 'image_name' column")
    if "image_name" not in frame.columns:
        raise DataError(f"{path}: expected an 'image_name' column")
    if frame.empty:
        raise DataError(f"{path}: no chips listed (header only)")
    bad = [n for n in frame["image_name"] if not is_safe_name(n)]
    if bad:
        raise DataError(f"{path}: image names that would escape their folder: {bad[:5]}")
    if "path" in frame.columns:
        raise DataError(f"{path}: a 'path' column is not read: list image_name only, with the chips beside the CSV")
    return [(n, path.parent / f"{n}{ext}") for n in frame["image_name"]]


# --- the submission ----------------------------------------------------------------------------------------

def validate_submission(path: Path, sample: Path | None = None, labels=LABELS) -> list[str]:
    """Problems with a Kaggle submission file (empty list = valid)."""
    import pandas as pd

    problems = []
    try:
        sub = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:  # noqa: BLE001
        return [f"{path}: not a readable CSV ({exc})"]
    if list(sub.columns) != ["image_name", "tags"]:
        problems.append(f"header is {list(sub.columns)}, expected ['image_name', 'tags']")
        return problems
    if sub["image_name"].duplicated().any():
        problems.append(f"{int(sub['image_name'].duplicated().sum())} duplicated image_name rows")
    with_ext = sub["image_name"].str.contains(r"\.(?:jpg|jpeg|tif|png)$", case=False, regex=True)
    if with_ext.any():
        problems.append(f"{int(with_ext.sum())} names carry a file extension "
                        f"(e.g. {sub['image_name'][with_ext].iloc[0]})")
    vocab = set(labels)
    bad_tags = sorted({t for tags in sub["tags"] for t in tags.split() if t not in vocab})
    if bad_tags:
        problems.append(f"tags outside the {len(labels)}-label vocabulary: {bad_tags[:5]}")
    empty = (sub["tags"].str.strip() == "").sum()
    if empty and weather_columns(labels) is not None:  # without a weather group a chip may carry no label
        problems.append(f"{int(empty)} rows with no tags")
    if sample is not None and Path(sample).is_file():
        expected = pd.read_csv(sample, dtype=str, keep_default_na=False)["image_name"].tolist()
        got = sub["image_name"].tolist()
        if len(got) != len(expected):
            problems.append(f"{len(got)} rows, the sample has {len(expected)}")
        elif got != expected:
            first = next(i for i, (a, b) in enumerate(zip(got, expected)) if a != b)
            problems.append(f"row order differs from the sample from row {first + 2} "
                            f"({got[first]} vs {expected[first]})")
    return problems


def write_submission(probs_csv: Path, out: Path, thresholds, weather_decoding: bool, sample: Path | None,
                     input_order: list[str]):
    """submission.csv in the sample's order (or the inputs' order without a sample); every chip once, an
    unreadable one with FALLBACK_TAGS. Returns label counts, chips outside the sample, rows with no prediction."""
    import pandas as pd

    from amazonmine.core.decisions import decode

    # Names as written: pandas would read "0001" as 1 and "NA" as missing, and no row would find its chip.
    frame = pd.read_csv(probs_csv, dtype={"image_name": str}, keep_default_na=False)
    labels = getattr(thresholds, "labels", LABELS)  # tune's rule carries the run's vocabulary
    decided = decode(frame[list(labels)].to_numpy(np.float32), thresholds, weather_decoding, labels)
    tags = dict(zip(frame["image_name"], matrix_to_tags(decided, labels)))
    not_in_sample = 0
    if sample is not None and sample.is_file():
        order = pd.read_csv(sample, dtype=str, keep_default_na=False)["image_name"].tolist()
        not_in_sample = len(set(tags) - set(order))
    else:
        order = list(input_order)
    rows = [(name, tags.get(name, FALLBACK_TAGS)) for name in order]
    write_csv_atomic(out, pd.DataFrame(rows, columns=["image_name", "tags"]))
    counts = dict(zip(labels, decided.sum(axis=0).astype(int).tolist()))
    missing_from_predictions = [n for n in order if n not in tags]
    return counts, not_in_sample, missing_from_predictions


def run_predict(cfg, inputs: list[Path] | None = None, allow_missing: bool = False, gpu: bool = False,
                progress: bool = True) -> PredictSummary:
    run = RunFolder.from_config(cfg)
    with run.lock("predict"):
        if not (inputs or cfg.predict.inputs) and not _any_test_chip(cfg, run) and run.held_out_chips():
            # A run of one's own chips ('amazonmine chips' writes no test set): its lockbox is what there is
            # to predict, and evaluate needs those probabilities.
            return _lockbox_only(cfg, run, gpu, progress)
        return _predict(cfg, run, inputs, gpu, progress)


def _any_test_chip(cfg, run: RunFolder) -> bool:
    """Whether the configured test folders hold a chip, raw or dehazed."""
    layout = PlanetLayout.from_config(cfg.data)
    if layout.list_test():
        return True
    layout.test_dirs = [run.chip_dir(d) for d in cfg.data.test_dirs]
    return bool(layout.list_test())


def _lockbox_only(cfg, run: RunFolder, gpu: bool, progress: bool) -> PredictSummary:
    from amazonmine.neural.predictor import Predictor

    held = run.held_out_chips()
    folders = ", ".join(str(Path(cfg.data.root) / d) for d in cfg.data.test_dirs)
    stale = run.lockbox_staleness(held, cfg.data.labels)
    line = (_score_lockbox(cfg, run, Predictor.from_run(cfg, gpu=gpu), progress) if stale is not None else
            f"the {len(held)} held-out chips' probabilities are current -> {run.holdout_probabilities}")
    return PredictSummary(run.submission, run.test_probabilities, 0, len(run.finished_models().folds), 0, 0.0,
                          note=f"no test chips in {folders}: no submission written", lockbox=line)


def run_predict_bundle(inputs: list[Path], out: Path, model=None, gpu: bool = False, progress: bool = True,
                       tta: int | None = None, cfg=None) -> PredictSummary:
    """Label chips (folders or CSV lists) with a model bundle (``model``: a folder, an installed bundle's name,
    or None for the released model), without any run folder: ``out/labels.csv`` and ``out/probabilities.csv``,
    the formats of a run's ``predictions/``. Chips of any square size are accepted (each is resized as the
    bundle's models were trained); chips too unlike the training chips are the caller's responsibility."""
    from amazonmine.core.config import load_config
    from amazonmine.core.io import exclusive_lock
    from amazonmine.neural.predictor import Predictor

    if not inputs:
        raise DataError("predict --model: name the chips to label (folders or CSV lists)")
    chips = list_inputs(cfg or load_config(None), list(inputs))
    predictor = Predictor.from_bundle(model, gpu=gpu, tta=tta)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(out / ".lock", "amazonmine predict"):
        summary = _label_inputs(predictor, chips, _Outputs.in_folder(out), expected_size=0, dehazed=False,
                                progress=progress)
    summary.note = f"model {predictor.bundle.name}"
    return summary


@dataclass(frozen=True)
class _Outputs:
    """Where labelling writes: the folder (with its predict_failures.csv), the probabilities, the decisions in
    the submission format, and the Kaggle sample that orders them (None: the chips' own order)."""

    folder: Path
    probabilities: Path
    labels: Path
    sample: Path | None = None

    @classmethod
    def in_folder(cls, folder: Path) -> "_Outputs":
        return cls(folder, folder / "probabilities.csv", folder / "labels.csv")


def _label_inputs(predictor, chips, outputs: _Outputs, expected_size: int, dehazed: bool,
                  progress: bool) -> PredictSummary:
    """Probabilities, then decisions in the submission format, checked; unreadable chips listed beside them."""
    out_dir, probs_csv, submission, sample = outputs.folder, outputs.probabilities, outputs.labels, outputs.sample
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    failures = predictor.predict_files(chips, probs_csv, dehazed=dehazed, expected_size=expected_size,
                                       progress=progress)
    seconds = time.perf_counter() - started
    read_names = {n for n, _ in chips}
    counts, not_in_sample, missing = write_submission(probs_csv, submission, predictor.thresholds,
                                                      predictor.weather_decoding, sample, [name for name, _ in chips])
    # Unreadable chips are in `failures`; a sample row with no chip file at all is added here.
    failed = [problem for _, problem in failures]
    failed += [f"{n}: listed in {sample.name} but no chip file found" for n in missing if n not in read_names]
    problems = validate_submission(submission, sample, getattr(predictor.thresholds, "labels", LABELS))
    if problems:
        raise AmazonmineError(f"{submission}: invalid submission: " + "; ".join(problems))
    failures_csv = out_dir / PREDICT_FAILURES_CSV
    if failed:
        import pandas as pd

        write_csv_atomic(failures_csv, pd.DataFrame({"problem": failed}))
    elif failures_csv.exists():
        failures_csv.unlink()  # a stale list from an earlier run would name chips that are now fine
    return PredictSummary(submission, probs_csv, len(chips), len(predictor.models), predictor.tta, seconds, failed,
                          counts, not_in_sample)


def _predict(cfg, run: RunFolder, inputs: list[Path] | None, gpu: bool, progress: bool) -> PredictSummary:
    from amazonmine.neural.predictor import Predictor

    run.read_thresholds()  # no thresholds: one line before the models load
    explicit = bool(inputs or cfg.predict.inputs)
    chips = list_inputs(cfg, inputs)
    predictor = Predictor.from_run(cfg, gpu=gpu)
    learnt_dehazed = predictor.dehaze is not None
    if not explicit and learnt_dehazed != bool(cfg.dehaze.enabled):
        # The test folders are read from the dehazed copies or the raw data by dehaze.enabled: it must say what
        # the folds learnt from, or the models would see chips unlike their training chips.
        raise AmazonmineError(f"{run.root}: the fold models learnt from {'dehazed' if learnt_dehazed else 'raw'} "
                              f"chips but dehaze.enabled is {str(cfg.dehaze.enabled).lower()}; set "
                              f"dehaze.enabled={str(learnt_dehazed).lower()}")
    layout = PlanetLayout.from_config(cfg.data)
    # The default test folders are read from their dehazed copies, in the sample's order; explicit inputs (not
    # the competition's test set: the run's Kaggle files stay as they are) are dehazed in memory by the
    # predictor when the folds learnt from dehazed chips.
    if explicit:
        summary = _label_inputs(predictor, chips, _Outputs.in_folder(run.predictions_dir), cfg.data.chip_size, False,
                                progress)
    else:
        outputs = _Outputs(run.root, run.test_probabilities, run.submission, layout.sample_submission)
        summary = _label_inputs(predictor, chips, outputs, cfg.data.chip_size, True, progress)
    notes = []
    if predictor.unfinished:
        notes.append(f"left out {', '.join(predictor.unfinished)}: not finished (no summary.json); "
                     f"'amazonmine train --resume' finishes them")
    sample = None if explicit else layout.sample_submission
    if sample is not None and not sample.is_file():
        notes.append(f"no {sample.name} in {sample.parent}: the submission's row order and count were not checked "
                     f"against Kaggle's sample")
    summary.note = "; ".join(notes)
    if not explicit:  # the user's own chips say nothing about the lockbox: only the run's own predict scores it
        summary.lockbox = _score_lockbox(cfg, run, predictor, progress)
    return summary


# --- the lockbox -------------------------------------------------------------------------------------------

def run_predict_lockbox(cfg, gpu: bool = False, progress: bool = True) -> str:
    """Only the lockbox step of the run's predict (no test chips or thresholds needed): what was done, '' when
    the lockbox probabilities were current or the run holds no chips out."""
    run = RunFolder.from_config(cfg)
    with run.lock("predict"):
        held = run.held_out_chips()
        if not held or run.lockbox_staleness(held, cfg.data.labels) is None:
            return ""  # before the models load: nothing to do costs nothing
        from amazonmine.neural.predictor import Predictor

        return _score_lockbox(cfg, run, Predictor.from_run(cfg, gpu=gpu), progress)


def _score_lockbox(cfg, run: RunFolder, predictor, progress: bool) -> str:
    """The lockbox probabilities evaluate scores, computed again when missing or stale
    (:meth:`RunFolder.lockbox_staleness`): each finished fold's model alone on the held-out chips (its
    ``holdout_probabilities.csv``, so evaluate can measure the ensemble's gain), then their mean in the run's
    ``holdout_probabilities.csv``, exactly the predictor's own average over the folds. A line saying what was
    done; '' when nothing was."""
    import pandas as pd

    held = run.held_out_chips()
    layout = PlanetLayout.from_config(cfg.data)
    reason = run.lockbox_staleness(held, layout.labels) if held else None
    if reason is None:
        return ""
    subdir = cfg.data.tif_dir if cfg.data.image_format == "tif" else cfg.data.train_dir
    folder = run.require_chip_dir(subdir)
    chips = [(name, folder / f"{name}{layout.ext}") for name in held]
    folds = run.finished_models().folds
    # Chips in chip_dir are already dehazed when dehazing is on; the predictor dehazes raw ones itself when
    # the folds learnt from dehazed chips.
    frames = []
    for files in folds:
        predictor.one_fold(files.model).predict_files(chips, files.holdout, dehazed=run.dehaze_enabled,
                                                      expected_size=cfg.data.chip_size, progress=progress)
        frames.append(pd.read_csv(files.holdout, dtype={"image_name": str}, keep_default_na=False))
    if any(not frame["image_name"].equals(frames[0]["image_name"]) for frame in frames[1:]):
        raise AmazonmineError(f"{run.root}: the folds' lockbox predictions list different chips")
    ensemble = frames[0].copy()
    labels = list(layout.labels)
    ensemble[labels] = np.mean([frame[labels].to_numpy() for frame in frames], axis=0)
    write_csv_atomic(run.holdout_probabilities, ensemble, float_format="%.6f")
    return (f"scored the {len(held)} held-out chips with each of the {len(folds)} fold model(s) and their mean "
            f"({reason}) -> {run.holdout_probabilities}")
