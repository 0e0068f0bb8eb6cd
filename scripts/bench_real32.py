"""The real end-to-end benchmark: the whole Planet competition at 32x32 px through the `amazonmine` CLI.

    .venv/bin/python scripts/bench_real32.py                 # the config's folds (fold 1 of 5): ~2 h on 2 cores
    .venv/bin/python scripts/bench_real32.py --all-folds     # all 5 folds (~5x the training time)
    .venv/bin/python scripts/bench_real32.py --ablate        # + what TTA, tuning and weather decoding add
    .venv/bin/python scripts/bench_real32.py --set run.dir=runs/try2 --set train.epochs=5 --json bench.json
    .venv/bin/python scripts/bench_real32.py --all-folds --score-only --set run.dir=runs/ens   # score, train nothing

What it does, in order:

1. unpacks ``--archive`` (../shared/data/planet_32px.tar.gz, the 32 px chips in the Kaggle layout) once into
   ``<work>/planet_32px/``: plain files and folders under ``planet_32px/`` only, extracted beside the target and
   renamed into place, so an interrupted unpack never leaves a half folder that looks done.
2. runs ``amazonmine split | train | tune | predict | evaluate`` as a user types them, every ``--set`` of this
   script passed to every stage. Each stage's output streams to the console and to
   ``<run_dir>/bench_logs/<stage>.log``; its wall time and peak resident memory are measured from outside
   (``VmHWM`` polled, and the child's own ``ru_maxrss`` when it is reaped). A failed stage stops the run.
3. prints one table from the artifacts the stages leave (named by :class:`amazonmine.core.runfolder.RunFolder`):
   out-of-fold mean F2 flat and tuned, per-label precision and recall (mine labels marked), wall time and
   peak memory per stage, training images/s, predict chips/s, and the submission checked against the sample.
   Exits non-zero when the submission is invalid.

Resumable, by the package's own rules: each fold is skipped, resumed or trained as ``amazonmine train --resume``
would (:func:`amazonmine.core.fold_plan.fold_action`, which also refuses a finished fold made with other settings:
pass the ``--set`` it was trained with). The split is never rewritten under folds already trained: when the run
folder has folds, split first runs into a scratch folder and must reproduce the run's split fingerprint.
Two stages writing one run folder are refused by the stages themselves (the run-folder lock).

``--ablate`` (after the CLI stages): each finished fold's model predicts its own validation chips with 1, 2, 4
and 8 TTA views (:class:`amazonmine.neural.predictor.Predictor`; saved under ``<run_dir>/bench_logs/ablation/`` and
reused while newer than the model); a second table gives the out-of-fold mean F2 per TTA size x flat / tuned /
cross-fitted thresholds x weather decoding on/off. "tuned" fits on the very chips it scores (as tune reports);
"cross-fit" fits on one half and scores the other, both ways, averaged: the honest gain of tuning.
``--ablate-train`` trains the first fold twice more, in their own run folders (``<run_dir>_no_oversample``
with ``split.rare_target=0``; ``<run_dir>_dehaze`` with ``dehaze.enabled=true`` after ``amazonmine dehaze``).

Stages run from the repository root, so relative paths in the config and in ``--set`` are relative to it;
``--archive``, ``--work``, ``--config`` and ``--json`` are relative to where you start the script.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from amazonmine.core.config import load_config
from amazonmine.core.data import LABELS, MINE_LABELS, PLANET_RARE_LABELS, PlanetLayout, load_matrix_csv
from amazonmine.core.decisions import decode, fit_thresholds
from amazonmine.core.errors import AmazonmineError
from amazonmine.core.fold_plan import FoldAction, fold_action, load_fold_plan, resolve_folds
from amazonmine.core.io import LockedError, read_json
from amazonmine.core.metrics import bootstrap_intervals, mean_f2, per_image_f2, per_label_scores
from amazonmine.core.runfolder import FoldState, RunFolder

REPO = Path(__file__).resolve().parents[1]
DATA_NAME = "planet_32px"
POLL_SECONDS = 0.5
TAIL_LINES = 40


class BenchError(Exception):
    """A problem this script reports in one line and exits on."""


class StageFailed(BenchError):
    def __init__(self, run: "StageRun"):
        super().__init__(f"stage '{run.name}' failed (exit {run.exit_code})")
        self.run = run



def _rate(fold_summary: dict) -> str:
    rate = fold_summary.get("train_images_per_s")
    return f"{rate:.0f} img/s" if rate else "no epoch trained in the session that finished it"

def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Resumable: re-running skips folds already trained and continues an interrupted one.")
    parser.add_argument("--archive", type=Path, default=REPO.parent / "shared" / "data" / f"{DATA_NAME}.tar.gz",
                        help="The 32 px archive (default: ../shared/data/planet_32px.tar.gz from the repo root).")
    parser.add_argument("--work", type=Path, default=REPO / "data",
                        help="Folder to unpack into; the data ends up in <work>/planet_32px (default: data/).")
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "planet32.yaml",
                        help="Config for every stage (default: configs/planet32.yaml).")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="Config override passed to every stage (repeatable), e.g. --set train.epochs=5.")
    parser.add_argument("--all-folds", action="store_true",
                        help="Train (and score) every fold of the split, not just the config's train.folds.")
    parser.add_argument("--skip-predict", action="store_true", help="Stop before predict (no submission).")
    parser.add_argument("--score-only", action="store_true",
                        help="Train nothing: score the folds already finished on the run's split, whatever "
                             "settings each was trained with (folds trained by other commands, across sessions). "
                             "A fold not finished is an error naming it. tune and evaluate still run, rewriting "
                             "the run's thresholds.json and report.")
    parser.add_argument("--ablate", action="store_true",
                        help="Also measure TTA views x tuned thresholds x weather decoding on the OOF chips.")
    parser.add_argument("--ablate-train", action="store_true",
                        help="Also train the first fold without oversampling and with dehazing (two more "
                             "trainings, each in its own run folder); implies --ablate.")
    parser.add_argument("--ablate-set", dest="ablate_sets", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="Override for every training-ablation run, e.g. a smaller budget (--ablate-set "
                             "train.epochs=5). With it, the baseline is trained again under the same overrides, "
                             "so each comparison is like for like.")
    parser.add_argument("--json", dest="json_out", type=Path, default=None,
                        help="Also write the table's numbers to this JSON file.")
    args = parser.parse_args(argv)
    args.ablate = args.ablate or args.ablate_train
    if args.ablate_train and args.score_only:
        parser.error("--ablate-train trains; it cannot go with --score-only")
    # The user's paths are relative to where they started the script; the stages run from the repo root.
    for name in ("archive", "work", "config", "json_out"):
        if getattr(args, name) is not None:
            setattr(args, name, getattr(args, name).expanduser().resolve())
    return args


# --- unpacking ---------------------------------------------------------------------------------------------

def unpack(archive: Path, work: Path) -> tuple[Path, float | None]:
    """<work>/planet_32px, unpacked from the archive unless already there. Returns (folder, seconds or None)."""
    target = work / DATA_NAME
    if (target / "train_v2.csv").is_file():
        return target, None
    if target.exists():
        raise BenchError(f"{target} exists but has no train_v2.csv (an interrupted copy?); remove it or choose "
                         "another --work")
    if not archive.is_file():
        raise BenchError(f"{archive}: archive not found (give --archive)")
    print(f"== unpack {archive} -> {target}", flush=True)
    started = time.perf_counter()
    work.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{DATA_NAME}.unpacking.", dir=work))
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            bad = [m.name for m in members if not (m.isfile() or m.isdir()) or m.name.startswith(("/", "\\"))
                   or PurePosixPath(m.name).parts[:1] != (DATA_NAME,) or ".." in PurePosixPath(m.name).parts]
            if bad:
                raise BenchError(f"{archive}: refusing to unpack {len(bad)} member(s) that are not plain files or "
                                 f"folders under {DATA_NAME}/, e.g. {bad[0]!r}")
            tar.extractall(tmp, members=members, filter="data")
        if not (tmp / DATA_NAME / "train_v2.csv").is_file():
            raise BenchError(f"{archive}: no {DATA_NAME}/train_v2.csv inside; not the 32 px Planet archive?")
        os.rename(tmp / DATA_NAME, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    seconds = time.perf_counter() - started
    print(f"unpacked {len(members)} members in {seconds:.1f} s", flush=True)
    return target, seconds


# --- running one stage -------------------------------------------------------------------------------------

@dataclass
class StageRun:
    name: str
    argv: list[str]
    log: str
    seconds: float | None = None
    exit_code: int | None = None
    peak_rss_mib: float | None = None
    rss_source: str = ""
    rss_lower_bound: bool = False
    note: str = ""
    interrupted: bool = False
    output_tail: str = ""


def amazonmine_command() -> list[str]:
    beside = Path(sys.executable).parent / "amazonmine"
    if beside.is_file():
        return [str(beside)]
    found = shutil.which("amazonmine")
    return [found] if found else [sys.executable, "-m", "amazonmine.cli"]


def _vmhwm_kib(pid: int) -> int | None:
    """Peak resident set of a live process (kB), None once it has exited or without /proc."""
    try:
        with open(f"/proc/{pid}/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _pump(stream, log, keep: list[bytes]) -> None:
    """Copy the child's output to the console and the log as it comes (progress bars use \\r: no line buffering)."""
    while chunk := os.read(stream.fileno(), 65536):
        sys.stdout.buffer.write(chunk)
        sys.stdout.buffer.flush()
        log.write(chunk)
        log.flush()
        keep.append(chunk)
        if len(keep) > 256:
            del keep[:128]


def run_stage(name: str, argv: list[str], log_path: Path) -> StageRun:
    """Run one CLI command, streaming and logging its output; wall time and peak RSS measured from outside."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    run = StageRun(name, argv, str(log_path))
    print(f"\n== {name}: {shlex.join(argv)}", flush=True)
    keep: list[bytes] = []
    # A child's ru_maxrss starts from this process's own peak (Linux carries the parent's high-water mark over
    # a vfork + exec), so it only measures the child when it is larger than that; VmHWM never includes it.
    inherited = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    with open(log_path, "wb") as log:
        log.write(f"$ {shlex.join(argv)}\n".encode())
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=REPO,
                                env=dict(os.environ, PYTHONUNBUFFERED="1"))
        reader = threading.Thread(target=_pump, args=(proc.stdout, log, keep), daemon=True)
        reader.start()
        hwm, status, usage = None, None, None
        while status is None:
            try:
                hwm = _vmhwm_kib(proc.pid) or hwm  # VmHWM only grows: the last value read is the peak so far
                pid, wstatus, rusage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    status, usage = wstatus, rusage
                    break
                # Finer at first, so a stage of a second or two still gets a fair reading.
                time.sleep(POLL_SECONDS if time.perf_counter() - started > 5 else 0.1)
            except KeyboardInterrupt:
                # Ctrl-C reached the child too (same process group): let it save its state and exit.
                run.interrupted = True
                print(f"\n(interrupted: waiting for '{name}' to exit)", flush=True)
        reader.join()
        proc.stdout.close()
    run.seconds = time.perf_counter() - started
    run.exit_code = proc.returncode = os.waitstatus_to_exitcode(status)
    maxrss = usage.ru_maxrss  # KiB on Linux, like VmHWM
    # VmHWM polled can miss growth in the last interval; ru_maxrss cannot, when it is the child's own.
    peaks = {"VmHWM": hwm or 0, "ru_maxrss": maxrss if (maxrss > inherited or not hwm) else 0}
    run.rss_source = max(peaks, key=peaks.get)
    run.peak_rss_mib = peaks[run.rss_source] / 1024.0 if peaks[run.rss_source] else None
    run.rss_lower_bound = run.rss_source == "VmHWM" and peaks["ru_maxrss"] == 0 and maxrss > (hwm or 0)
    run.output_tail = b"".join(keep)[-20000:].decode("utf-8", "replace")
    return run


def _tail(text: str, n: int = TAIL_LINES) -> str:
    return "\n".join([line for line in re.split(r"[\r\n]+", text) if line.strip()][-n:])


class Bench:
    """The CLI stages as a user runs them, with this script's config and overrides, and their measurements."""

    def __init__(self, args):
        self.args = args
        self.exe = amazonmine_command()
        self.stages: list[StageRun] = []
        self.data_root: Path | None = None

    def sets_for(self, extra=()) -> list[str]:
        return [f"data.root={self.data_root}", *self.args.sets, *extra]

    def config(self, extra=()):
        return load_config(self.args.config, self.sets_for(extra))

    def stage(self, name: str, stage: str, run_dir: Path, extra=(), options=(), log_name: str | None = None):
        argv = [*self.exe, stage, "--config", str(self.args.config), *options]
        for item in self.sets_for(extra):
            argv += ["--set", item]
        run = run_stage(name, argv, run_dir / "bench_logs" / f"{log_name or stage}.log")
        self.stages.append(run)
        if run.interrupted:
            raise KeyboardInterrupt
        if run.exit_code != 0:
            raise StageFailed(run)
        return run


# --- split and train ---------------------------------------------------------------------------------------

def split(bench: Bench, cfg, extra=(), label: str = "") -> None:
    """``amazonmine split``, never over folds already trained on another split: with folds in the run folder,
    the split runs into a scratch folder and its fingerprint must be the run's own."""
    run = RunFolder.from_config(cfg)
    if run.root.is_dir():
        with run.lock("bench_real32 (check)"):
            pass  # a stage writing this folder right now is named here, before anything starts
    if not run.fold_numbers():
        bench.stage(f"{label}split", "split", run.root, extra)
        return
    with tempfile.TemporaryDirectory(prefix="bench_split_") as scratch:
        check = bench.stage(f"{label}split", "split", run.root, [*extra, f"run.dir={scratch}"])
        fresh = RunFolder(Path(scratch)).split_fingerprint()
    if not (run.folds_csv.is_file() and run.manifest_csv.is_file()) or run.split_fingerprint() != fresh:
        raise BenchError(f"{run.root}: this split differs from the one of the folds already there "
                         f"({', '.join(f'fold{k}' for k in run.fold_numbers())}): split settings, run.seed or labels "
                         "changed. The run folder was left as it is; use a new run.dir, or the earlier settings")
    check.note = f"same split as the trained folds of {run.root}: kept"


def check_finished(run: RunFolder, folds: list[int]) -> None:
    """--score-only: every fold must be finished (refused before anything is written); a retrain staged beside
    a fold is said, since its finished model is the one scored."""
    unfinished = [f"fold{k} ({run.fold_state(k).value})" for k in folds if run.fold_state(k) is not FoldState.FINISHED]
    if unfinished:
        raise BenchError(f"{run.root}: --score-only scores finished folds only: {', '.join(unfinished)}; finish "
                         "each with 'amazonmine train --fold K --resume', or leave it out (--set train.folds=[...] "
                         "without --all-folds)")
    for k in folds:
        if run.fold(k).staged.dir.is_dir():
            print(f"note: fold {k} has a retrain under way in {run.fold(k).staged.dir}; its finished model is "
                  "the one scored", flush=True)


def train(bench: Bench, cfg, folds: list[int], extra=(), label: str = "", score_only: bool = False) -> dict:
    """Train each fold as ``amazonmine train --resume`` decides (skip / resume / train), or with ``score_only``
    train none (the caller has run :func:`check_finished` before split). Returns their figures."""
    run = RunFolder.from_config(cfg)
    stale = [f"fold{k}" for k in folds if run.fold_state(k) is FoldState.OTHER_SPLIT]
    if stale:  # train would replace them; a model that may have cost hours is the user's call
        raise BenchError(f"{run.root}: {', '.join(stale)} trained on another split than the run's: "
                         "'amazonmine train --retrain' replaces them, or use another run.dir")
    if score_only:
        actions = {k: FoldAction("skip", "--score-only") for k in folds}
    else:
        try:  # refusals come before any training
            actions = {k: fold_action(cfg, k, resume=True) for k in folds}
        except AmazonmineError as exc:
            raise BenchError(f"{exc} (this script never retrains a finished fold: pass the --set it was trained "
                             "with, or --score-only, or another run.dir)") from None
    for k in folds:
        name, (kind, note) = f"{label}train fold {k}", actions[k]
        if kind == "skip":
            earlier = run.fold(k).read_summary().get("train_seconds_this_session")
            print(f"\n== {name}: already trained ({run.fold(k).summary}); skipped" + (f": {note}" if note else ""),
                  flush=True)
            bench.stages.append(StageRun(name, [], "", note=f"from an earlier run ({hms(earlier)} of training then)"))
            continue
        if note:
            print(f"\n{name}: {note}", flush=True)
        options = ["--fold", str(k)] + (["--resume"] if kind == "resume" else [])
        bench.stage(name, "train", run.root, extra, options, log_name=f"train_fold{k}")
    figures = {}
    for k in folds:
        summary = run.fold(k).read_summary()
        figures[k] = {"source": "an earlier run" if actions[k].kind == "skip" else "this run",
                      "resumed": actions[k].kind == "resume",
                      **{key: summary.get(key) for key in (
                          "train_images_per_s", "best_epoch", "best_val_f2", "epochs_run", "train_seconds_this_session",
                          "oof_f2_flat", "train_chips", "val_chips", "image_size", "backbone")}}
    return figures


# --- figures from the artifacts ----------------------------------------------------------------------------

def count_rows(path: Path) -> int:
    with open(path, "rb") as fh:
        return max(0, sum(1 for _ in fh) - 1)


def flat_per_label(cfg) -> dict:
    """Per-label precision/recall of the OOF chips at the flat start threshold (no decoding), like tune's 'flat'."""
    oof = RunFolder.from_config(cfg).read_oof(PlanetLayout.from_config(cfg.data))
    scores = per_label_scores(oof.y_true, oof.probs >= cfg.tune.start)
    return {name: {"precision": float(scores["precision"][j]), "recall": float(scores["recall"][j]),
                   "predicted": int(scores["predicted"][j])} for j, name in enumerate(LABELS)}


def check_submission(cfg) -> dict:
    from amazonmine.stages.predict import validate_submission

    submission = RunFolder.from_config(cfg).submission
    sample = PlanetLayout.from_config(cfg.data).sample_submission
    if not submission.is_file():
        return {"path": str(submission), "rows": 0, "problems": [f"{submission}: not written"], "sample": str(sample)}
    problems = validate_submission(submission, sample)
    if not sample.is_file():
        problems.append(f"{sample}: sample submission not found, so row order and count were not checked")
    return {"path": str(submission), "rows": count_rows(submission), "sample": str(sample),
            "sample_rows": count_rows(sample) if sample.is_file() else None, "problems": problems}


# --- ablation: TTA views x thresholds x weather decoding ---------------------------------------------------

# Half-splits each chip's cross-fitted F2 is averaged over for paired comparisons (tune averages 10 too).
PAIRED_SPLITS = 10


def _crossfit_per_chip(y, p, tc, weather: bool, seed: int) -> np.ndarray:
    """Each chip's F2 under thresholds fitted on the other half of one seeded half-split (the halves depend
    only on the seed and the chips' order)."""
    order = np.random.default_rng(seed).permutation(len(y))
    halves = order[: len(y) // 2], order[len(y) // 2:]
    per_chip = np.empty(len(y))
    for fit_on, score_on in (halves, halves[::-1]):
        t = fit_thresholds(y[fit_on], p[fit_on], tc.start, tc.passes, tc.grid, weather_decoding=weather)
        per_chip[score_on] = per_image_f2(y[score_on], decode(p[score_on], t, weather))
    return per_chip


def _fit_and_score(y, p, tc, weather: bool, seed: int, interval: bool = False, per_chip: bool = False) -> dict:
    """Flat, tuned and cross-fitted mean F2 (one half-split), rare labels' recall at the tuned thresholds and,
    if asked, the tuned score's bootstrap 95% interval and each chip's cross-fitted F2 averaged over
    PAIRED_SPLITS half-splits (seeds seed, seed + 1, ...: the same in every run, for paired comparisons)."""
    fitted = fit_thresholds(y, p, tc.start, tc.passes, tc.grid, weather_decoding=weather)
    crossfit = _crossfit_per_chip(y, p, tc, weather, seed)
    decided, truth = decode(p, fitted, weather), y.astype(bool)
    # Recall at the tuned thresholds of the labels oversampling is for.
    rare_recall = {name: float((decided[:, j] & truth[:, j]).sum() / truth[:, j].sum()) if truth[:, j].any()
                   else float("nan") for j, name in enumerate(LABELS) if name in PLANET_RARE_LABELS}
    scores = {"flat": mean_f2(y, decode(p, np.full(len(LABELS), tc.start), weather)), "tuned": mean_f2(y, decided),
              "tuned_crossfit": float(crossfit.mean()), "rare_recall": rare_recall}
    if per_chip:
        scores["crossfit_per_chip"] = np.mean([crossfit] + [_crossfit_per_chip(y, p, tc, weather, seed + k)
                                                            for k in range(1, PAIRED_SPLITS)], axis=0)
    if interval:
        scores["tuned_interval"] = bootstrap_intervals(y, decided, 1000, 0)["mean_f2"]
    return scores


def fold_tta_probabilities(cfg, files, chips: list, out_dir: Path, predictor_cache: list) -> dict:
    """{tta: (N, 17)} of one finished fold's model on its validation chips, one CSV per TTA size, reused while
    newer than the model and holding the same chips."""
    from amazonmine.neural.datasets import TTA_VIEWS
    from amazonmine.neural.predictor import Predictor

    names = [name for name, _ in chips]
    out = {}
    for tta in TTA_VIEWS:
        csv = out_dir / f"{files.name}_tta{tta}.csv"
        if csv.is_file() and csv.stat().st_mtime > files.model.stat().st_mtime:
            got, probs = load_matrix_csv(csv)
            if got == names:
                out[tta] = probs
                continue
        if not predictor_cache:  # every finished fold's model, loaded once, only when something is not saved
            predictor_cache.append(Predictor.from_run(cfg))
        one = predictor_cache[0].one_fold(files.model, tta=tta)
        csv.parent.mkdir(parents=True, exist_ok=True)
        failed = one.predict_files(chips, csv, dehazed=True, expected_size=cfg.data.chip_size)
        if failed:
            raise BenchError(f"ablation {files.name}: {len(failed)} chip(s) unreadable, e.g. {failed[0][1]}")
        out[tta] = load_matrix_csv(csv)[1]
    return out


def ablate_views(cfg, folds: list[int]) -> dict:
    from amazonmine.neural.datasets import TTA_VIEWS

    run = RunFolder.from_config(cfg)
    finished = [f for f in run.finished_models().folds if f.fold in folds]
    if not finished:
        raise BenchError(f"{run.root}: no finished fold among {folds} to ablate")
    predictor_cache: list = []
    truth, by_tta, diffs = [], {tta: [] for tta in TTA_VIEWS}, []
    for files in finished:
        plan = load_fold_plan(cfg, files.fold)
        names = [str(n) for n in plan.names[plan.val_rows]]
        chips = list(zip(names, plan.chip_paths(plan.val_rows)))
        probs = fold_tta_probabilities(cfg, files, chips, run.root / "bench_logs" / "ablation", predictor_cache)
        truth.append(plan.labels[plan.val_rows].astype(bool))
        for tta in TTA_VIEWS:
            by_tta[tta].append(probs[tta])
        # The predictor against train's own OOF file: one preprocessing, so they must agree.
        tta = files.read_summary().get("oof_tta_views", cfg.predict.tta)
        if files.oof.is_file() and tta in probs:
            oof_names, oof = load_matrix_csv(files.oof)
            row = {n: i for i, n in enumerate(names)}
            if all(n in row for n in oof_names):
                diffs.append(float(np.abs(probs[tta][[row[n] for n in oof_names]] - oof).max()))
    y = np.concatenate(truth)
    result = {"chips": len(y), "folds": [f.fold for f in finished], "reused_views": not predictor_cache,
              "rows": [], "max_abs_diff_vs_oof_csv": max(diffs) if diffs else None}
    for tta, views in TTA_VIEWS.items():
        p = np.concatenate(by_tta[tta]).astype(np.float64)
        for weather in (True, False):
            result["rows"].append({"tta": tta, "views": list(views), "weather_decoding": weather,
                                   **_fit_and_score(y, p, cfg.tune, weather, cfg.run.seed)})
    return result


def oof_scores(cfg, fold: int, interval: bool = False, per_chip: bool = False) -> dict | None:
    """Flat / tuned / cross-fitted OOF mean F2 of one fold, under the config's weather decoding (per_chip: also
    the chips' names and each one's cross-fitted F2)."""
    run = RunFolder.from_config(cfg)
    if not run.fold(fold).oof.is_file():
        return None
    oof = run.read_oof(PlanetLayout.from_config(cfg.data))
    folds = run.read_folds()
    mine = set(folds.loc[folds["fold"] == fold, "image_name"])
    keep = np.array([n in mine for n in oof.names])
    scores = _fit_and_score(oof.y_true[keep], oof.probs[keep], cfg.tune, cfg.tune.weather_decoding, cfg.run.seed,
                            interval, per_chip)
    if per_chip:
        scores["names"] = [n for n, k in zip(oof.names, keep) if k]
    return {"chips": int(keep.sum()), **scores}


def ablate_training(bench: Bench, cfg, fold: int, budget: list[str]) -> list[dict]:
    """One fold without oversampling and with dehazing, each in its own run folder, against a baseline: the main
    run's own fold, or, when ``budget`` overrides are given, the baseline retrained under the same overrides."""
    base = cfg.run_dir
    # The overrides are in the folder names, so a run with another budget never reuses these models.
    tag = "_abl_" + "_".join(re.sub(r"[^A-Za-z0-9]+", "", item.split(".")[-1]) for item in budget) if budget else ""
    variants = [("no oversampling", Path(f"{base}{tag}_no_oversample"), ["split.rare_target=0"]),
                ("dehaze on", Path(f"{base}{tag}_dehaze"), ["dehaze.enabled=true"])]
    rows = []
    if budget:
        variants.insert(0, ("baseline", Path(f"{base}{tag}_baseline"), []))
    else:
        files = RunFolder.from_config(cfg).fold(fold)
        rows.append({"run": "baseline (this run)", "run_dir": str(base),
                     "train": files.read_summary() if files.summary.is_file() else {}, **(oof_scores(cfg, fold) or {})})
    for title, run_dir, arm in variants:
        # The arm's own setting last, so no budget override can undo what the arm is about.
        extra = [*budget, *arm, f"run.dir={run_dir}", f"train.folds=[{fold}]"]
        vcfg = bench.config(extra)
        label = f"[{title}] "
        if vcfg.dehaze.enabled:  # the arm's own dehazed copies (any arm, when the base config dehazes)
            bench.stage(f"{label}dehaze", "dehaze", vcfg.run_dir, extra)
        split(bench, vcfg, extra, label)
        figures = train(bench, vcfg, [fold], extra, label)
        bench.stage(f"{label}tune", "tune", vcfg.run_dir, extra)
        rows.append({"run": title, "run_dir": str(run_dir), "train": figures[fold], **(oof_scores(vcfg, fold) or {})})
    return rows


# --- the table ---------------------------------------------------------------------------------------------

def hms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def text_table(rows: list[list], align: str = "") -> list[str]:
    """Aligned text columns; align has one 'l' or 'r' per column (default: first left, the rest right)."""
    n = len(rows[0])
    align = (align or "l" + "r" * (n - 1)).ljust(n, "r")
    widths = [max(len(str(r[i])) for r in rows) for i in range(n)]
    return ["  ".join(str(c).rjust(w) if a == "r" else str(c).ljust(w) for c, w, a in zip(r, widths, align)).rstrip()
            for r in rows]


def _f(value, digits: int = 3) -> str:
    return "-" if value is None or value != value else f"{value:.{digits}f}"


def _span(interval, digits: int = 4) -> str:
    """A bootstrap interval as 'lo-hi' ('-' when tune recorded none, or a bound is undefined)."""
    if not interval or any(v is None or v != v for v in interval):
        return "-"
    return f"{interval[0]:.{digits}f}-{interval[1]:.{digits}f}"


def render(report: dict) -> str:
    head, t = report["header"], report.get("tune") or {}
    lines = ["=" * 96, f"bench_real32  run {head['run_dir']}  data {head['data_root']}  folds {head['folds']}",
             f"              config {head['config']}" + (f"  --set {' '.join(head['sets'])}" if head["sets"] else ""),
             "=" * 96]
    if t:
        used = "   <- used by predict"
        interval = t.get("oof_f2_interval")
        lines += text_table([
            ["out-of-fold chips", f"{t['oof_chips']} of {t['labelled_chips']} labelled (folds "
                                  f"{', '.join(map(str, t['oof_folds']))})"],
            [f"OOF mean F2, flat {t['start']:g}", f"{t['oof_f2_flat']:.4f}"],
            [f"OOF mean F2, flat {t['start']:g} + weather decoding", f"{t['oof_f2_flat_with_weather']:.4f}"],
            ["OOF mean F2, tuned + weather decoding",
             f"{t['oof_f2_tuned_with_weather']:.4f}" + (used if t["weather_decoding"] else "")],
            ["OOF mean F2, tuned, no weather decoding",
             f"{t['oof_f2_tuned_without']:.4f}" + ("" if t["weather_decoding"] else used)],
            ["  95% interval of the F2 predict gets (chips resampled)", _span(interval)],
            *([[f"  cross-fitted (thresholds fitted on half, scored on the other), {name}", f"{v:.4f}"]
               for name, v in (t.get("crossfit_f2") or {}).items()]),
            *([[f"  fold {f['fold']}'s {f['chips']} chips alone, flat / pooled decisions",
                f"{f['f2_flat']:.4f} / {f['f2_tuned']:.4f}"]
               for f in t.get("per_fold") or [] if len(t["per_fold"]) > 1]),
        ], "ll")
        lines.append("")
        flat = report.get("flat_per_label") or {}
        rows = [["label", "support", "thr", f"prec@{t['start']:g}", f"rec@{t['start']:g}", "prec", "95% CI",
                 "recall", "95% CI", "F2", "predicted"]]
        for name in LABELS:
            s, f = t["per_label"][name], flat.get(name, {})
            rows.append([("* " if name in MINE_LABELS else "  ") + name, s["support"], f"{s['threshold']:.2f}",
                         _f(f.get("precision")), _f(f.get("recall")), _f(s["precision"]),
                         _span(s.get("precision_interval"), 2), _f(s["recall"]), _span(s.get("recall_interval"), 2),
                         _f(s["f2"]), s["predicted"]])
        lines += text_table(rows)
        lines.append(f"  (* mine labels; prec/rec@{t['start']:g}: flat threshold, no decoding; prec/recall/F2: tuned "
                     f"thresholds, weather decoding {'on' if t['weather_decoding'] else 'off'}, as predict decides)")
        lines.append("")
    lines += _render_lockbox(report.get("lockbox"))
    rows = [["stage", "wall", "peak RSS", "notes"]]
    for s in report["stages"]:
        rss = ((">=" if s.get("rss_lower_bound") else "") + f"{s['peak_rss_mib']:.0f} MiB"
               if s.get("peak_rss_mib") else "-")
        rows.append([s["name"], hms(s["seconds"]), rss, s.get("note", "")])
    rows.append(["total (this run)", hms(report["total_seconds"]), "", ""])
    lines += text_table(rows, "lrrl")
    if any(s.get("rss_lower_bound") for s in report["stages"]):
        lines.append("  (>=: a stage too short for the VmHWM polling to see its peak)")
    lines.append("")
    for k, f in sorted((report.get("train") or {}).items()):
        origin = " (from an earlier run)" if f["source"] != "this run" else (" (resumed)" if f["resumed"] else "")
        lines.append(f"train fold {k}: {_rate(f)}, {f['epochs_run']} epoch(s), best epoch "
                     f"{f['best_epoch']} (val F2@0.2 {f['best_val_f2']:.4f}), {f['train_chips']} training rows, "
                     f"{hms(f['train_seconds_this_session'])} training this session{origin}")
    if report.get("train_images_per_s") is not None:
        lines.append(f"train images/s (mean over folds): {report['train_images_per_s']:.1f}")
    p = report.get("predict")
    if p:
        printed = f"{p['stage_chips_per_s']:.0f}" if p.get("stage_chips_per_s") is not None else "?"
        lines.append(f"predict: {p['chips']} chips, {p['chips_per_s_wall']:.1f} chips/s over the stage's wall time "
                     f"(start-up included), {printed} chips/s inference as the stage printed; peak RSS "
                     f"{'>=' if p.get('rss_lower_bound') else ''}{p['peak_rss_mib']:.0f} MiB ({p['rss_source']})")
    sub = report.get("submission")
    if sub:
        verdict = "OK" if not sub["problems"] else "INVALID: " + "; ".join(sub["problems"])
        sample = f" (sample: {sub['sample_rows']} rows)" if sub.get("sample_rows") is not None else ""
        lines.append(f"submission: {sub['path']}: {sub['rows']} rows{sample}: {verdict}")
    elif report.get("predict_skipped"):
        lines.append("submission: predict skipped (--skip-predict)")
    if report.get("ablation"):
        lines += _render_ablation(report["ablation"])
    lines.append("=" * 96)
    return "\n".join(lines)


def _render_lockbox(box: dict | None) -> list[str]:
    """The held-out chips (split.holdout), as evaluate scored them: the ensemble, each fold alone, the gain."""
    if not box:
        return ["lockbox: none scored (split.holdout is 0, or evaluate could not score it: see its report)", ""]
    rows = [["lockbox model", "mean F2", "95% CI"]]
    rows += [[f"fold {f['fold']} alone", f"{f['mean_f2']:.4f}", _span(f["interval"])] for f in box["single"]]
    rows.append([f"ensemble of {max(1, len(box['single']))} fold(s) (predict)", f"{box['mean_f2']:.4f}",
                 _span(box["interval"])])
    looks = box.get("looks") or 1
    seen = ("" if looks < 2 else f"; look {looks} at these chips (the first scored "
            f"{box['first_look']['mean_f2']:.4f}): choices made by comparing looks make the best optimistic")
    lines = [f"Lockbox: {box['chips']} held-out chips no fold trained or tuned on{seen}"] + text_table(rows, "lrr")
    if box.get("gain"):
        g = box["gain"]
        lines.append(f"  ensemble gain over the average fold alone: {g['mean']:+.4f} (95% CI "
                     f"{g['interval'][0]:+.4f} to {g['interval'][1]:+.4f}, paired)")
    for name, d in (box.get("decoders") or {}).items():
        lines.append(f"  decisions by {name}: mean F2 {d['mean_f2']:.4f} ({_span(d['interval'])})")
    if box.get("expected_f2_minus_thresholds"):
        d = box["expected_f2_minus_thresholds"]
        lines.append(f"  expected_f2 minus thresholds: {d['mean']:+.4f} (95% CI {d['interval'][0]:+.4f} to "
                     f"{d['interval'][1]:+.4f}, paired)")
    for name in MINE_LABELS:
        s = box["per_label"][name]
        lines.append(f"  {name}: recall {s['recall']:.3f} ({_span(s['recall_interval'], 2)}), precision "
                     f"{s['precision']:.3f} ({_span(s['precision_interval'], 2)}), {s['support']} chips")
    return lines + [""]


def _render_ablation(a: dict) -> list[str]:
    lines = ["", f"Ablation on the {a['chips']} out-of-fold chips of fold(s) {', '.join(map(str, a['folds']))} "
                 f"(mean F2){'; predictions reused from bench_logs/ablation/' if a['reused_views'] else ''}"]
    rows = [["TTA views", "weather decoding", "flat", "tuned", "tuned cross-fit"]]
    for r in a["rows"]:
        rows.append([f"{r['tta']} {tuple(r['views'])}".replace(",)", ")"), "on" if r["weather_decoding"] else "off",
                     f"{r['flat']:.4f}", f"{r['tuned']:.4f}", f"{r['tuned_crossfit']:.4f}"])
    lines += text_table(rows, "llrrr")
    lines.append("  flat: every label at tune.start; tuned: thresholds fitted on these same chips (what tune "
                 "reports); cross-fit: fitted on one half, scored on the other, both ways averaged.")
    lines.append("  weather decoding off: each label alone, plus the likeliest weather when none clears.")
    if a.get("max_abs_diff_vs_oof_csv") is not None:
        lines.append(f"  check: the predictor at train's TTA differs from oof_fold*.csv by at most "
                     f"{a['max_abs_diff_vs_oof_csv']:.2g}")
    if not a.get("training"):
        lines.append("oversampling on/off and dehaze on/off: not measured by this run (each needs its own "
                     "training; add --ablate-train)")
        return lines
    overrides = a.get("training_overrides") or []
    lines += ["", f"Training ablations, fold {a['training_fold']} only (OOF mean F2 with each run's own TTA, weather "
                  "decoding as configured; recall at the tuned thresholds)"
              + (f"; every run here trained with {' '.join(overrides)}" if overrides else "")]
    rows = [["run", "chips", "flat", "tuned", "tuned cross-fit", "artisinal rec", "conv. rec", "rare-label rec",
             "train", "run dir"]]
    for r in a["training"]:
        if "flat" not in r:
            rows.append([r["run"], *["-"] * 8, r["run_dir"]])
            continue
        rec = r.get("rare_recall") or {}
        known = [v for v in rec.values() if v == v]  # labels with true chips in this fold
        rows.append([r["run"], r["chips"], f"{r['flat']:.4f}", f"{r['tuned']:.4f}", f"{r['tuned_crossfit']:.4f}",
                     _f(rec.get("artisinal_mine")), _f(rec.get("conventional_mine")),
                     _f(sum(known) / len(known) if known else None),
                     hms((r.get("train") or {}).get("train_seconds_this_session")), r["run_dir"]])
    lines += text_table(rows, "lrrrrrrrrl")
    lines.append(f"  rare-label rec: mean recall over {', '.join(PLANET_RARE_LABELS)} (those with true chips in the "
                 "fold).")
    return lines


# --- main --------------------------------------------------------------------------------------------------

def run_bench(args, bench: Bench, report: dict) -> None:
    data_root, unpack_seconds = unpack(args.archive, args.work)
    bench.data_root = data_root
    cfg = bench.config()
    if Path(cfg.data.root).resolve() != data_root.resolve():
        print(f"note: --set data.root={cfg.data.root} overrides the unpacked {data_root}", flush=True)
    run = RunFolder.from_config(cfg)
    folds = resolve_folds(cfg, (), args.all_folds)
    report["header"] = {"run_dir": str(run.root), "data_root": str(cfg.data.root), "folds": folds,
                        "config": str(args.config), "sets": args.sets}
    bench.stages.append(StageRun("unpack", [], "", seconds=unpack_seconds,
                                 note=f"{args.archive.name} -> {data_root}" if unpack_seconds is not None
                                 else f"already unpacked: {data_root}"))

    if args.score_only:  # before split, which would write a split into a new run folder
        check_finished(run, folds)
    split(bench, cfg)
    report["train"] = train(bench, cfg, folds, score_only=args.score_only)
    rates = [f["train_images_per_s"] for f in report["train"].values() if f.get("train_images_per_s")]
    report["train_images_per_s"] = sum(rates) / len(rates) if rates else None
    for s in bench.stages:
        if s.name.startswith("train fold ") and s.seconds is not None:
            f = report["train"][int(s.name.split()[-1])]
            s.note = f"{f['epochs_run']} epoch(s), {_rate(f)}" + (" (resumed)" if f["resumed"]
                                                                                          else "")

    tune_run = bench.stage("tune", "tune", run.root)
    report["tune"] = t = read_json(run.thresholds)
    tune_run.note = f"{t['oof_f2_flat']:.4f} -> {t['oof_f2_tuned']:.4f} on {t['oof_chips']} chips"
    report["flat_per_label"] = flat_per_label(cfg)

    if args.skip_predict:
        report["predict_skipped"] = True
    else:
        predict_run = bench.stage("predict", "predict", run.root)
        chips = count_rows(run.test_probabilities)
        printed = re.findall(r"\((\d+(?:\.\d+)?) chips/s\)", predict_run.output_tail)
        report["predict"] = p = {
            "chips": chips, "seconds": predict_run.seconds,
            "chips_per_s_wall": chips / predict_run.seconds if predict_run.seconds else 0.0,
            "stage_chips_per_s": float(printed[-1]) if printed else None, "peak_rss_mib": predict_run.peak_rss_mib,
            "rss_source": predict_run.rss_source, "rss_lower_bound": predict_run.rss_lower_bound}
        predict_run.note = f"{chips} chips, {p['chips_per_s_wall']:.1f} chips/s (wall)"
        report["submission"] = check_submission(cfg)

    bench.stage("evaluate", "evaluate", run.root).note = str(run.report_dir / "index.html")
    lockbox_json = run.report_dir / "lockbox.json"
    report["lockbox"] = read_json(lockbox_json) if lockbox_json.is_file() else None

    if args.ablate:
        print("\n== ablate: each finished fold's model on its own validation chips, TTA 1/2/4/8 (in process)",
              flush=True)
        t0 = time.perf_counter()
        report["ablation"] = a = ablate_views(cfg, folds)
        bench.stages.append(StageRun("ablate (views)", [], "", seconds=time.perf_counter() - t0,
                                     note=f"{a['chips']} chips x TTA 1/2/4/8" + (" (reused)" if a["reused_views"]
                                                                                 else "")))
        if args.ablate_train:
            a["training"] = ablate_training(bench, cfg, folds[0], args.ablate_sets)
            a["training_fold"], a["training_overrides"] = folds[0], args.ablate_sets


def main(argv=None) -> int:
    args = parse_args(argv)
    os.chdir(REPO)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    bench = Bench(args)
    started = time.perf_counter()
    report: dict = {"stages": []}
    exit_code, completed = 0, False
    try:
        run_bench(args, bench, report)
        completed = True
        exit_code = 1 if report.get("submission", {}).get("problems") else 0
    except StageFailed as exc:
        print(f"\nbench_real32: stage '{exc.run.name}' failed (exit {exc.run.exit_code}); log: {exc.run.log}",
              file=sys.stderr)
        print("---- last lines ----\n" + _tail(exc.run.output_tail) + "\n--------------------", file=sys.stderr)
        exit_code = 1
    except (BenchError, AmazonmineError, LockedError) as exc:
        print(f"\nbench_real32: error: {exc}", file=sys.stderr)
        exit_code = 1
    except KeyboardInterrupt:
        print("\nbench_real32: interrupted; re-run the same command to continue (finished folds are kept, an "
              "interrupted fold resumes)", file=sys.stderr)
        exit_code = 130

    report["stages"] = [{k: v for k, v in asdict(s).items() if k != "output_tail"} for s in bench.stages]
    report["total_seconds"] = time.perf_counter() - started
    report["exit_code"] = exit_code
    if completed:
        print("\n" + render(report), flush=True)
    elif bench.stages:
        rows = [["stage", "wall", "exit"]] + [[s.name, hms(s.seconds), "" if s.exit_code is None else s.exit_code]
                                              for s in bench.stages]
        print("\n" + "\n".join(text_table(rows)), file=sys.stderr)
    if args.json_out is not None:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(report, indent=2, default=str) + "\n")
        print(f"wrote {args.json_out}", flush=True)
    if completed and exit_code == 1:
        print("bench_real32: the submission is invalid (see above)", file=sys.stderr)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
