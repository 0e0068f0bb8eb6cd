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
"""

from __future__ import annotations

import csv
import functools
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from amazonmine.data import (CHIP_FORMATS, LABELS, DataError, PlanetLayout, chip_dir, is_safe_name, matrix_to_tags,
                             read_image, read_text_csv)
from amazonmine.errors import AmazonmineError
from amazonmine.io import atomic_path, read_json, write_csv_atomic

CHUNK = 1024
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

    def headline(self) -> str:
        rate = self.n_chips / self.seconds if self.seconds else 0.0
        lines = [f"labelled {self.n_chips} chips with {self.n_models} model(s) x {self.tta} TTA view(s) "
                 f"({rate:.0f} chips/s) -> {self.submission}"]
        mines = {k: v for k, v in self.label_counts.items() if "mine" in k}
        if mines:
            lines.append("mines flagged: " + ", ".join(f"{k} {v}" for k, v in mines.items()))
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
        folders = [chip_dir(cfg, Path(d).name) for d in cfg.data.test_dirs]
        if cfg.dehaze.enabled and not any(f.is_dir() for f in folders):
            raise DataError(f"{cfg.dehaze_dir}: no dehazed test chips: run 'amazonmine dehaze' first, "
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
            found += _list_from_csv(item)
        else:
            raise DataError(f"{item}: not a folder of chips or a CSV list")
    names = [n for n, _ in found]
    if len(set(names)) != len(names):
        raise DataError("the same chip name appears twice among the inputs")
    return found


def _list_from_csv(path: Path) -> list[tuple[str, Path]]:
    """A CSV with image_name (and optionally path) columns; names resolve next to the CSV."""
    frame = read_text_csv(path, "chip list", "no chips listed; expected an 'image_name' column")
    if "image_name" not in frame.columns:
        raise DataError(f"{path}: expected an 'image_name' column")
    if frame.empty:
        raise DataError(f"{path}: no chips listed (header only)")
    bad = [n for n in frame["image_name"] if not is_safe_name(n)]
    if bad:
        raise DataError(f"{path}: image names that would escape their folder: {bad[:5]}")
    base = path.parent
    if "path" in frame.columns:
        return [(n, base / p) for n, p in zip(frame["image_name"], frame["path"])]
    return [(n, base / f"{n}.jpg") for n in frame["image_name"]]


def find_models(cfg) -> tuple[list[Path], list[str]]:
    """The fold models to average, and the folds left out because they have not finished (a model file but no
    summary.json: a fold interrupted or still training holds its best epoch so far). A finished fold trained on
    another split than the run's current one is refused: its thresholds and out-of-fold rows belong elsewhere.
    """
    from amazonmine.split import FOLDS_CSV
    from amazonmine.train import split_fingerprint

    models = sorted(cfg.run_dir.glob(f"fold*/{cfg.train.artifact_name}"))
    if not models:
        raise AmazonmineError(f"{cfg.run_dir}: no fold*/{cfg.train.artifact_name}: run 'amazonmine train' first")
    current = split_fingerprint(cfg.run_dir) if (cfg.run_dir / FOLDS_CSV).is_file() else None
    finished, unfinished, stale = [], [], []
    for model in models:
        summary = model.parent / "summary.json"
        if not summary.is_file():
            unfinished.append(model.parent.name)
            continue
        recorded = read_json(summary).get("split_sha256")
        if current and recorded and recorded != current:
            stale.append(model.parent.name)
        finished.append(model)
    if stale:
        raise AmazonmineError(f"{cfg.run_dir}: {', '.join(stale)} trained on another split than the run's "
                              f"{FOLDS_CSV}: train them again ('amazonmine train --retrain --fold K') or move them "
                              f"out of the run folder")
    if not finished:
        raise AmazonmineError(f"{cfg.run_dir}: no finished fold ({', '.join(unfinished)} have no summary.json); "
                              f"finish training with 'amazonmine train --resume'")
    return finished, unfinished


# --- streaming inference -----------------------------------------------------------------------------------

def _read_chunk(items, image_size: int, channels: int, expected_size: int = 0, dehaze=None):
    """Pixels of a chunk at the model's input size, kept in the chips' own dtype (uint8 JPEG, uint16 TIF)
    so a chunk of 256 px chips stays ~200 MB; cast to float32 one batch at a time.

    ``expected_size`` refuses chips of another side (0 = any); ``dehaze`` (DehazeParams) dehazes each chip as
    the dehaze stage would have, for inputs that have no dehazed copy on disk.
    """
    from amazonmine.dehaze import dehaze_image
    from amazonmine.pipeline import _resize, to_model_channels

    pixels = None
    ok = np.zeros(len(items), bool)
    errors: list[tuple[str, str]] = []
    for i, (name, path) in enumerate(items):
        try:
            img = read_image(path, expected_size)
            if dehaze is not None:
                img = dehaze_image(img, dehaze).image
            img = to_model_channels(img)
            if img.shape[2] != channels:
                raise DataError(f"{path}: {img.shape[2]} bands, the model expects {channels}")
            if pixels is None:
                pixels = np.zeros((len(items), image_size, image_size, channels), img.dtype)
            pixels[i] = _resize(img, image_size)
            ok[i] = True
        except DataError as exc:
            errors.append((name, str(exc)))
    if pixels is None:  # no chip of the chunk could be read
        return np.zeros((0, image_size, image_size, channels), np.uint8), ok, errors
    return (pixels if ok.all() else pixels[ok]), ok, errors


def stream_probabilities(models, chips: list[tuple[str, Path]], tta: int, batch_size: int, out_csv: Path,
                         progress: bool = True, expected_size: int = 0, dehaze=None) -> list[tuple[str, str]]:
    """Write image_name + 17 mean probabilities per readable chip to out_csv (atomically).

    Returns (image_name, problem) for every chip that could not be read. ``expected_size`` and ``dehaze`` are
    passed to :func:`_read_chunk`.
    """
    import tensorflow as tf
    from tqdm import tqdm

    from amazonmine.pipeline import tta_predict_fn

    shape = models[0].input_shape
    image_size, channels = int(shape[1]), int(shape[3])
    for m in models[1:]:
        if tuple(m.input_shape[1:]) != tuple(shape[1:]):
            raise AmazonmineError(f"fold models disagree on input shape: {shape} vs {m.input_shape}")
    infers = [tta_predict_fn(m, tta) for m in models]
    failures: list[tuple[str, str]] = []
    chunks = [chips[i:i + CHUNK] for i in range(0, len(chips), CHUNK)]
    with atomic_path(out_csv) as tmp, open(tmp, "w", newline="") as fh, \
            ThreadPoolExecutor(max_workers=2) as pool, \
            tqdm(total=len(chips), desc="predict", unit="chip", disable=not progress, mininterval=1.0) as bar:
        writer = csv.writer(fh)
        writer.writerow(["image_name", *LABELS])
        read = functools.partial(_read_chunk, image_size=image_size, channels=channels,
                                 expected_size=expected_size, dehaze=dehaze)
        pending = pool.submit(read, chunks[0]) if chunks else None
        for index, chunk in enumerate(chunks):
            good, ok, errors = pending.result()
            # Read the next chunk while the model works on this one.
            pending = pool.submit(read, chunks[index + 1]) if index + 1 < len(chunks) else None
            failures += errors
            total = np.zeros((len(good), len(LABELS)), np.float64)
            for start in range(0, len(good), batch_size):
                batch = tf.constant(good[start:start + batch_size].astype(np.float32))
                for infer in infers:
                    total[start:start + len(batch)] += infer(batch).numpy()
            probs = total / len(infers)
            names = [name for (name, _), keep in zip(chunk, ok) if keep]
            writer.writerows([name, *(f"{p:.6f}" for p in row)] for name, row in zip(names, probs))
            bar.update(len(chunk))
    return failures


# --- the submission ----------------------------------------------------------------------------------------

def validate_submission(path: Path, sample: Path | None = None) -> list[str]:
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
        problems.append(f"{int(with_ext.sum())} names carry a file extension (e.g. {sub['image_name'][with_ext].iloc[0]})")
    vocab = set(LABELS)
    bad_tags = sorted({t for tags in sub["tags"] for t in tags.split() if t not in vocab})
    if bad_tags:
        problems.append(f"tags outside the 17-label vocabulary: {bad_tags[:5]}")
    empty = (sub["tags"].str.strip() == "").sum()
    if empty:
        problems.append(f"{int(empty)} rows with no tags")
    if sample is not None and Path(sample).is_file():
        expected = pd.read_csv(sample, dtype=str, keep_default_na=False)["image_name"].tolist()
        got = sub["image_name"].tolist()
        if len(got) != len(expected):
            problems.append(f"{len(got)} rows, the sample has {len(expected)}")
        elif got != expected:
            first = next(i for i, (a, b) in enumerate(zip(got, expected)) if a != b)
            problems.append(f"row order differs from the sample from row {first + 2} ({got[first]} vs {expected[first]})")
    return problems


def write_submission(probs_csv: Path, out: Path, thresholds, weather_decoding: bool, sample: Path | None,
                     input_order: list[str]):
    """submission.csv in the sample's order (or the inputs' order without a sample); every chip once, an
    unreadable one with FALLBACK_TAGS. Returns label counts, chips outside the sample, rows with no prediction."""
    import pandas as pd

    from amazonmine.tune import decode

    # Names as written: pandas would read "0001" as 1 and "NA" as missing, and no row would find its chip.
    frame = pd.read_csv(probs_csv, dtype={"image_name": str}, keep_default_na=False)
    decided = decode(frame[list(LABELS)].to_numpy(np.float32), thresholds, weather_decoding)
    tags = dict(zip(frame["image_name"], matrix_to_tags(decided)))
    not_in_sample = 0
    if sample is not None and sample.is_file():
        order = pd.read_csv(sample, dtype=str, keep_default_na=False)["image_name"].tolist()
        not_in_sample = len(set(tags) - set(order))
    else:
        order = list(input_order)
    rows = [(name, tags.get(name, FALLBACK_TAGS)) for name in order]
    write_csv_atomic(out, pd.DataFrame(rows, columns=["image_name", "tags"]))
    counts = dict(zip(LABELS, decided.sum(axis=0).astype(int).tolist()))
    missing_from_predictions = [n for n in order if n not in tags]
    return counts, not_in_sample, missing_from_predictions


def run_predict(cfg, inputs: list[Path] | None = None, allow_missing: bool = False, gpu: bool = False,
                progress: bool = True) -> PredictSummary:
    from amazonmine.dehaze import DehazeParams
    from amazonmine.model import load_trained
    from amazonmine.train import setup_device
    from amazonmine.tune import load_thresholds

    thresholds, weather_decoding = load_thresholds(cfg.run_dir)
    explicit = bool(inputs or cfg.predict.inputs)
    chips = list_inputs(cfg, inputs)
    model_paths, unfinished = find_models(cfg)
    setup_device(gpu)
    models = [load_trained(p) for p in model_paths]
    if explicit:
        # Not the competition's test set: keep the Kaggle files of the run as they are.
        out_dir = cfg.run_dir / "predictions"
        probs_csv, submission = out_dir / "probabilities.csv", out_dir / "labels.csv"
    else:
        out_dir = cfg.run_dir
        probs_csv, submission = out_dir / "test_probabilities.csv", out_dir / "submission.csv"
    # The models learnt from dehazed chips; the default test folders are read from their dehazed copies.
    dehaze = DehazeParams.from_config(cfg.dehaze) if explicit and cfg.dehaze.enabled else None
    started = time.perf_counter()
    failures = stream_probabilities(models, chips, cfg.predict.tta, cfg.predict.batch_size, probs_csv, progress,
                                    expected_size=cfg.data.chip_size, dehaze=dehaze)
    seconds = time.perf_counter() - started
    layout = PlanetLayout.from_config(cfg.data)
    # The sample's order applies when labelling the competition's own test folders.
    sample = None if explicit else layout.sample_submission
    read_names = {n for n, _ in chips}
    counts, not_in_sample, missing = write_submission(probs_csv, submission, thresholds, weather_decoding,
                                                      sample, [name for name, _ in chips])
    # Unreadable chips are in `failures`; a sample row with no chip file at all is added here.
    failed = [problem for _, problem in failures]
    failed += [f"{n}: listed in {layout.sample_submission.name} but no chip file found"
               for n in missing if n not in read_names]
    problems = validate_submission(submission, sample)
    if problems:
        raise AmazonmineError(f"{submission}: invalid submission: " + "; ".join(problems))
    failures_csv = out_dir / "predict_failures.csv"
    if failed:
        import pandas as pd

        write_csv_atomic(failures_csv, pd.DataFrame({"problem": failed}))
    elif failures_csv.exists():
        failures_csv.unlink()  # a stale list from an earlier run would name chips that are now fine
    note = (f"left out {', '.join(unfinished)}: not finished (no summary.json); 'amazonmine train --resume' "
            f"finishes them" if unfinished else "")
    return PredictSummary(submission, probs_csv, len(chips), len(models), cfg.predict.tta, seconds, failed,
                          counts, not_in_sample, note)
