"""The dehaze stage: every chip of a folder (or a Kaggle layout) dehazed into another, resumably, in parallel.

The mathematics of one chip is :mod:`amazonmine.core.haze` (the dark channel prior with guided-filter refinement);
the worker processes are :mod:`amazonmine.core.workerpool`. This module is the folder around them.

:func:`run_dehaze` processes a folder, or a Kaggle layout (train-jpg/, test-jpg/, test-jpg-additional/,
train-tif-v2/, mirrored under the output folder), in worker processes. Each output chip is written atomically
in its input's format; unreadable chips are listed in ``dehaze_errors.csv`` and the others still processed;
``dehaze_stats.csv`` keeps per-chip airlight and mean transmission, so users can see which chips were hazy.

**What made each chip.** The stats file is also the stage's record, per chip, of the settings that made it:
``method``, and ``settings``, a digest of every dehaze parameter and of the output encoding
(:func:`settings_digest`). A chip already in the output folder is kept only if its row names the current
settings; one made with other settings is redone (without ``--overwrite`` too: the folder always ends up as
a clean run with the current settings would leave it). A killed run must never leave a row that claims a chip
for the wrong settings, so the order of writes is:

1. before any chip is written, every chip the run will write gets the row ``settings = pending`` (saved
   atomically with the rest of the file), replacing whatever its row said;
2. the chip is written (atomically);
3. only then does its row get the current settings, saved with the others every ``_CHECKPOINT_SECONDS`` and
   when the run ends (Ctrl-C included).

After a ``kill -9`` a chip is therefore either as its row says, or ``pending`` (old or new bytes: it is redone).
Pending rows of chips that were never written are dropped when a run ends normally.

A chip present **without any row** cannot have been written by this version (step 1 precedes every write): it
predates the record (an older version, or the stats file was deleted) or was put there by hand. It is kept and
assumed made with the current settings, as older versions did with every chip present; only its stats are
recomputed (from the source chip), and the headline says how many were assumed so. Rows of older versions
carry a method but no settings: a chip whose method differs is redone, the others are assumed current. The
limit: nothing is fsynced (as in :mod:`amazonmine.core.io`), so this holds for a killed process, not a power cut.

This module and its workers never import TensorFlow.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import io
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from amazonmine.core.data import (
    CHIP_FORMATS,
    PATH_LIMIT,
    DataError,
    chip_format,
    decode_image,
    encode_jpeg,
    encode_tif,
    read_chip_bytes,
)
from amazonmine.core.errors import AmazonmineError, shorten
from amazonmine.core.haze import DehazeParams, DehazeResult, dehaze_image
from amazonmine.core.io import remove_stale_temporaries, write_bytes_atomic, write_text_atomic
from amazonmine.core.runfolder import DEHAZE_ERRORS_CSV, DEHAZE_STATS_CSV, RunFolder
from amazonmine.core.workerpool import as_worker, worker_pool

STATS_COLUMNS = ("file", "A_b", "A_g", "A_r", "t_mean", "method", "settings")
# Stats files of versions that recorded the method only: still read, their chips judged by the method.
_METHOD_ONLY_COLUMNS = STATS_COLUMNS[:-1]
# The settings of a chip that a run meant to (re)write and had not finished: its bytes may be old or new.
PENDING = "pending"
CHIP_SUFFIXES = {s for s, fmt in CHIP_FORMATS.items() if fmt in ("jpg", "tif")}  # the formats it writes back
JPEG_QUALITY = 95
# Dehazed JPEGs keep colour at full resolution, as Kaggle's chips store it (no chroma subsampling): OpenCV's
# default 4:2:0 halves it, and a mine is a few pixels of odd colour. The price is larger files and a slower
# encode. The PSNR and size of both choices on the real chips: README, "Dehazing and NIR"; the encode's time:
# scripts/bench_dehaze.py.
JPEG_FULL_CHROMA = True
# A worker reads this many chips (or this many bytes, for big chips) before dehazing them: see process_chunk.
_IO_GROUP_CHIPS = 16
_IO_GROUP_BYTES = 8 << 20
# While running, the stats CSV is rewritten this often, so that after a kill -9 few finished chips are still
# marked pending (and redone by the next run).
_CHECKPOINT_SECONDS = 30.0


def settings_digest(params: DehazeParams) -> str:
    """What decides a dehazed chip's bytes, as a short digest: the math's parameters and the output encoding.

    Values are normalised to their field's type first, so ``omega: 1`` and ``omega: 1.0`` are the same settings.
    """
    defaults = DehazeParams()
    values = {f.name: type(getattr(defaults, f.name))(getattr(params, f.name))
              for f in dataclasses.fields(DehazeParams)}
    values.update(jpeg_quality=JPEG_QUALITY, jpeg_full_chroma=JPEG_FULL_CHROMA)
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode("utf-8")).hexdigest()[:12]


# --- one file ------------------------------------------------------------------------------------------------

def encode_output_jpeg(img: np.ndarray) -> bytes:
    """A dehazed chip as the stage writes it: JPEG quality JPEG_QUALITY, colour at full resolution."""
    return encode_jpeg(img, JPEG_QUALITY, JPEG_FULL_CHROMA)


def _encode(img: np.ndarray, fmt: str, name: str) -> bytes:
    try:
        return encode_tif(img) if fmt == "tif" else encode_output_jpeg(img)
    except DataError as exc:
        raise DataError(f"{name}: {exc}") from None


def _dehaze_bytes(data: bytes, src: str, params: DehazeParams, expected_size: int,
                  encode: bool) -> tuple[bytes | None, DehazeResult]:
    """Decode (with the reader's checks), dehaze and encode one chip's file bytes in the file's format."""
    fmt = chip_format(src)
    result = dehaze_image(decode_image(data, src, fmt, expected_size), params)
    return (_encode(result.image, fmt, src) if encode else None), result


def dehaze_file(src: str | Path, dst: str | Path | None, params: DehazeParams,
                expected_size: int = 0) -> DehazeResult:
    """Read, dehaze and (if ``dst`` is given) atomically write one chip in the input's format."""
    encoded, result = _dehaze_bytes(read_chip_bytes(src), str(src), params, expected_size, dst is not None)
    if dst is not None:
        write_bytes_atomic(dst, encoded)
    return result


# --- the folder runner -----------------------------------------------------------------------------------------

@dataclass
class ChipJob:
    """One chip's work: dehaze ``src`` into ``dst``, or only measure it (``dst`` None)."""

    key: str  # path relative to the source (and output) root, '/'-separated: the CSV key
    src: str
    dst: str | None  # None: stats only (the output is present and kept, its stats row is missing)


@dataclass
class DehazeSummary:
    src: Path
    dst: Path
    method: str
    processed: int = 0
    skipped: int = 0
    # (file relative to SRC, problem) for every chip that could not be read.
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    stats_csv: Path | None = None
    errors_csv: Path | None = None
    note: str = ""

    def headline(self) -> str:
        parts = [f"dehaze ({self.method}): {self.processed} chips done"]
        if self.skipped:
            parts.append(f"{self.skipped} already in {self.dst} skipped")
        if self.failed:
            parts.append(f"{len(self.failed)} failed (see {self.errors_csv})")
        text = ", ".join(parts) + f" -> {self.dst} in {self.seconds:.1f} s; airlight and transmission per chip in "
        text += str(self.stats_csv)
        return text + (f"; {self.note}" if self.note else "")


def _chip_files(folder: Path, folders_too: bool = False) -> list[str]:
    """The names in ``folder`` that look like chips. Hidden names include the temporary files of an interrupted
    atomic write. In a source folder (``folders_too``) anything else named like a chip is listed, even a folder,
    a FIFO or a link to a device: the reader refuses it by name (dehaze_errors.csv) instead of it vanishing. In
    an output folder a folder is no chip this stage wrote, so it is not listed as one."""
    return sorted(e.name for e in os.scandir(folder) if not e.name.startswith(".")
                  and os.path.splitext(e.name)[1].lower() in CHIP_SUFFIXES and (folders_too or not e.is_dir()))


def _folder_pairs(cfg, src: Path, dst: Path) -> list[tuple[str, Path, Path]]:
    """(prefix, source folder, output folder): the Kaggle subfolders present, else SRC itself."""
    names = [cfg.data.train_dir, *cfg.data.test_dirs, cfg.data.tif_dir]
    subdirs = [n for i, n in enumerate(names) if n not in names[:i] and (src / n).is_dir()]
    if subdirs:
        return [(f"{n}/", src / n, dst / n) for n in subdirs]
    return [("", src, dst)]


def _same_folder(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:  # pragma: no cover - unresolvable paths cannot be the same folder
        return False


def _read_stats(path: Path) -> dict[str, dict[str, str]]:
    """Rows of a previous stats CSV by file; an unreadable or foreign file counts as no rows (they are rebuilt).

    A file of a version that recorded the method only gives rows with empty ``settings``.
    """
    if not path.is_file():
        return {}
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None or any(c not in reader.fieldnames for c in _METHOD_ONLY_COLUMNS):
                return {}
            return {row["file"]: {c: row.get(c) or "" for c in STATS_COLUMNS} for row in reader if row.get("file")}
    except (OSError, UnicodeDecodeError, csv.Error):
        return {}


def _rows_csv(columns: Sequence[str], rows: Iterable[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _stats_row(key: str, airlight: np.ndarray, t_mean: float, method: str, settings: str) -> dict[str, str]:
    return {"file": key, "A_b": f"{airlight[0]:.6g}", "A_g": f"{airlight[1]:.6g}", "A_r": f"{airlight[2]:.6g}",
            "t_mean": f"{t_mean:.4f}", "method": method, "settings": settings}


def _pending_row(key: str, method: str) -> dict[str, str]:
    return {"file": key, "A_b": "", "A_g": "", "A_r": "", "t_mean": "", "method": method, "settings": PENDING}


def _made_by(row: dict[str, str] | None, method: str, settings: str) -> str:
    """What made a chip present in DST, by its stats row: 'current' or 'other' settings, 'unfinished' (a killed
    run's pending chip), 'assumed' current (an older version's row: same method, no settings recorded), or
    'unrecorded' (no row at all)."""
    if row is None:
        return "unrecorded"
    if row["settings"] == PENDING:
        return "unfinished"
    if not row["settings"]:
        return "assumed" if row["method"] == method else "other"
    return "current" if row["settings"] == settings else "other"


def process_chunk(jobs: list[ChipJob], params: DehazeParams, expected_size: int) -> list[tuple]:
    """Worker body: ('ok', key, airlight, t_mean) or ('error', key, problem) per job, in order.

    A few chips at a time are read, then dehazed, then written, rather than one after the other: the math
    then runs between decodes and encodes, not between system calls, after which it ran slower (timed by
    scripts/bench_dehaze.py's "whole loops" line; figures in the README's "Benchmarks").
    """
    out: list[tuple] = []
    start = 0
    while start < len(jobs):
        group: list[tuple[ChipJob, bytes | DataError]] = []
        size = 0
        while start < len(jobs) and len(group) < _IO_GROUP_CHIPS and size < _IO_GROUP_BYTES:
            job = jobs[start]
            start += 1
            try:
                data = read_chip_bytes(job.src)
            except DataError as exc:
                group.append((job, exc))
                continue
            group.append((job, data))
            size += len(data)
        processed: list[tuple[ChipJob, tuple | DataError]] = []
        for job, data in group:
            if not isinstance(data, DataError):
                try:
                    encoded, result = _dehaze_bytes(data, job.src, params, expected_size, job.dst is not None)
                    # Only what is written and reported is kept until the group's writes, not the pixels.
                    data = (encoded, tuple(result.airlight.tolist()), result.t_mean)
                except DataError as exc:
                    data = exc
            processed.append((job, data))
        for job, item in processed:
            if isinstance(item, DataError):
                out.append(("error", job.key, str(item).removeprefix(f"{shorten(job.src, PATH_LIMIT)}: ")))
                continue
            encoded, airlight, t_mean = item
            if job.dst is not None:
                write_bytes_atomic(job.dst, encoded)
            out.append(("ok", job.key, airlight, t_mean))
    return out


def _resolve_workers(workers: int | None, cfg) -> int:
    n = cfg.dehaze.workers if workers is None else workers
    if n < 0:
        raise AmazonmineError(f"dehaze: --workers must be 0 (all cores) or more, got {n}")
    return n or (os.cpu_count() or 1)


def _chunks(jobs: list[ChipJob], workers: int) -> list[list[ChipJob]]:
    """Chunks of at most 64 chips that shrink towards the end (a share of what is left each), so the workers
    finish together instead of one idling while the other works through a last big chunk."""
    chunks, start = [], 0
    while start < len(jobs):
        size = max(1, min(64, -(-(len(jobs) - start) // (workers * 4))))
        chunks.append(jobs[start:start + size])
        start += size
    return chunks


def run_dehaze(cfg, src: str | Path | None = None, dst: str | Path | None = None, workers: int | None = None,
               overwrite: bool = False) -> DehazeSummary:
    """Dehaze every chip of ``src`` (default data.root) into ``dst`` (default the run's dehaze folder).

    A Kaggle-layout ``src`` has its chip subfolders mirrored under ``dst`` (``dst/train-jpg/...``, which is
    where :meth:`amazonmine.core.runfolder.RunFolder.chip_dir` looks); a plain folder of chips is processed into ``dst``
    itself. Chips already in ``dst`` made with the current settings are skipped unless ``overwrite``; those made with
    other settings, or left unfinished by a killed run, are redone (see the module's docstring). Unreadable
    chips are listed in ``dst/dehaze_errors.csv`` and in ``summary.failed``; the others are still processed.
    """
    start = time.perf_counter()
    params = DehazeParams.from_config(cfg.dehaze)
    src = Path(cfg.data.root if src is None else src)
    dst = Path(RunFolder.from_config(cfg).dehazed if dst is None else dst)
    if not src.is_dir():
        raise DataError(f"{src}: source folder not found (give a folder of chips or a Kaggle-layout data root)")
    pairs = _folder_pairs(cfg, src, dst)
    for _, in_dir, out_dir in pairs:
        if _same_folder(in_dir, out_dir):
            raise AmazonmineError(f"{out_dir}: output folder is the source folder; choose another DST")
        if out_dir.exists() and not out_dir.is_dir():
            raise AmazonmineError(f"{out_dir}: output path exists and is not a folder")

    n_workers = _resolve_workers(workers, cfg)
    # The worker processes boot while the folders are scanned below.
    with _run_lock(cfg, dst), worker_pool(n_workers, preload=["amazonmine.stages.dehaze"]) as pool:
        summary = _dehaze_folders(cfg, params, src, dst, pairs, pool, n_workers, overwrite)
    summary.seconds = time.perf_counter() - start
    return summary


def _run_lock(cfg, dst: Path):
    """The run folder's lock when ``dst`` is the run's dehazed folder or inside the run folder: train reads those
    chips, so a dehaze must not rewrite them under a running stage (nor two dehazes write them at once). A DST
    elsewhere belongs to no run and is not locked."""
    run = RunFolder.from_config(cfg)
    if _same_folder(dst, run.dehazed) or _inside(dst, run.root):
        return run.lock("dehaze")
    return contextlib.nullcontext()


def _inside(path: Path, folder: Path) -> bool:
    try:
        return path.resolve().is_relative_to(folder.resolve())
    except OSError:  # pragma: no cover - an unresolvable path is in no folder
        return False


def _dehaze_folders(cfg, params: DehazeParams, src: Path, dst: Path, pairs: list[tuple[str, Path, Path]], pool,
                    n_workers: int, overwrite: bool) -> DehazeSummary:
    from amazonmine.core.logs import progress_bar

    stats_path, errors_path = dst / DEHAZE_STATS_CSV, dst / DEHAZE_ERRORS_CSV
    for folder in {dst, *(out_dir for _, _, out_dir in pairs)}:
        remove_stale_temporaries(folder)  # a killed run's write in flight: never a finished chip
    settings = settings_digest(params)
    previous = _read_stats(stats_path)
    summary = DehazeSummary(src=src, dst=dst, method=params.method, stats_csv=stats_path)
    jobs, rows, found = _plan_jobs(pairs, previous, params.method, settings, overwrite, summary)
    if not jobs and not summary.skipped:
        where = ", ".join(f"{p}" for p, _, _ in pairs if p) or str(src)
        raise DataError(f"{src}: no .jpg or .tif chips found in {where}")
    dst.mkdir(parents=True, exist_ok=True)

    n_workers = min(n_workers, max(1, len(jobs)))
    last_save = time.perf_counter()

    def save_stats() -> None:
        write_text_atomic(stats_path, _rows_csv(STATS_COLUMNS, (rows[k] for k in sorted(rows))))

    stats_only = {j.key for j in jobs if j.dst is None}
    writes = [j.key for j in jobs if j.dst is not None]
    for key in writes:
        rows[key] = _pending_row(key, params.method)
    if writes:
        save_stats()  # step 1 of the record's protocol: no chip is written before this

    def collect(results: list[tuple]) -> None:
        nonlocal last_save
        for item in results:
            if item[0] == "ok":
                _, key, airlight, t_mean = item
                rows[key] = _stats_row(key, airlight, t_mean, params.method, settings)
                if key not in stats_only:  # those were counted as skipped
                    summary.processed += 1
            else:
                _, key, problem = item
                # Nothing was written for it: a chip of it in DST is still what its earlier row said.
                if key in previous:
                    rows[key] = previous[key]
                else:
                    rows.pop(key, None)
                summary.failed.append((key, problem))
        if time.perf_counter() - last_save > _CHECKPOINT_SECONDS:
            save_stats()
            last_save = time.perf_counter()

    try:
        with progress_bar(total=len(jobs), desc="dehaze", unit="chip", mininterval=0.1) as bar:
            if pool is None or n_workers == 1:
                with as_worker():
                    for job in jobs:
                        collect(process_chunk([job], params, cfg.data.chip_size))
                        bar.update(1)
            else:
                _run_chunks(pool, jobs, n_workers, params, cfg.data.chip_size, collect, bar)
    except OSError as exc:
        raise AmazonmineError(f"{exc.filename or dst}: cannot write dehazed chip ({exc.strerror or exc})") from None
    finally:
        # Also on Ctrl-C or a crash: the chips finished so far keep their stats for the resumed run. Workers
        # finish their chunks first: a chip written after the rows are saved would have no row at all.
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        _drop_vanished(rows, pairs)
        save_stats()

    _write_errors(summary, errors_path)
    summary.note = "; ".join(_notes(cfg, params, found))
    return summary


def _plan_jobs(pairs: list[tuple[str, Path, Path]], previous: dict[str, dict[str, str]], method: str, settings: str,
               overwrite: bool, summary: DehazeSummary) -> tuple[list[ChipJob], dict, dict[str, int]]:
    """What this run does to each source chip, from what DST and the stats record already hold: the jobs (a
    chip to write, or only its stats to recompute), the record's rows to start from, and how many chips were
    found already in DST by what made them. Chips kept as they are count as ``summary.skipped``."""
    rows = dict(previous)
    jobs: list[ChipJob] = []
    found = {"other": 0, "unfinished": 0, "assumed": 0}
    for prefix, in_dir, out_dir in pairs:
        done = set(_chip_files(out_dir)) if out_dir.is_dir() else set()
        for name in _chip_files(in_dir, folders_too=True):
            key = prefix + name
            write = ChipJob(key, str(in_dir / name), str(out_dir / name))
            if name not in done or overwrite:
                jobs.append(write)
                continue
            made_by = _made_by(previous.get(key), method, settings)
            if made_by in ("other", "unfinished"):
                found[made_by] += 1
                jobs.append(write)
                continue
            summary.skipped += 1
            if made_by == "unrecorded":  # its stats are recomputed from the source; the chip is kept
                found["assumed"] += 1
                jobs.append(ChipJob(key, str(in_dir / name), None))
            elif made_by == "assumed":
                found["assumed"] += 1
                rows[key] = {**rows[key], "settings": settings}
    return jobs, rows, found


def _write_errors(summary: DehazeSummary, errors_path: Path) -> None:
    """The chips that failed, sorted, in DST's errors CSV; no CSV when none did."""
    summary.failed.sort()
    if summary.failed:
        write_text_atomic(errors_path, _rows_csv(("file", "problem"),
                                                 ({"file": k, "problem": p} for k, p in summary.failed)))
        summary.errors_csv = errors_path
    elif errors_path.exists():
        errors_path.unlink()  # a stale list from an earlier run would name chips that are now fine


def _notes(cfg, params: DehazeParams, found: dict[str, int]) -> list[str]:
    notes = []
    redone = [f"{found['other']} made with other dehaze settings" if found["other"] else "",
              f"{found['unfinished']} left unfinished by an interrupted run" if found["unfinished"] else ""]
    if any(redone):
        notes.append("redone: " + " and ".join(r for r in redone if r) + f" (now {params.method})")
    if found["assumed"]:
        notes.append(f"{found['assumed']} of the skipped chips had no record of their settings (written by an "
                     f"older version, or {DEHAZE_STATS_CSV} was lost) and were kept as made with these; "
                     "--overwrite redoes them")
    if not cfg.dehaze.enabled:
        notes.append("dehaze.enabled is false, so later stages read the original chips, not these")
    return notes


def _drop_vanished(rows: dict[str, dict[str, str]], pairs: list[tuple[str, Path, Path]]) -> None:
    """Keep the stats CSV in step with the output folder: drop rows whose dehazed chip is not there."""
    present = set()
    for prefix, _, out_dir in pairs:
        if out_dir.is_dir():
            present.update(prefix + n for n in _chip_files(out_dir))
    for key in [k for k in rows if k not in present]:
        # Rows of folders this run did not look at (another layout written to the same DST) are kept.
        prefix = key.rsplit("/", 1)[0] + "/" if "/" in key else ""
        if any(prefix == p for p, _, _ in pairs):
            del rows[key]


def _run_chunks(pool, jobs: list[ChipJob], n_workers: int, params: DehazeParams, expected_size: int, collect,
                bar) -> None:
    from concurrent.futures import as_completed

    futures = {pool.submit(process_chunk, chunk, params, expected_size): len(chunk)
               for chunk in _chunks(jobs, n_workers)}
    for fut in as_completed(futures):
        collect(fut.result())
        bar.update(futures[fut])
