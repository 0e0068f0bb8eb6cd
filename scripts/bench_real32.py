"""The real end-to-end benchmark: the whole Planet competition at 32x32 px through the `amazonmine` CLI.

    .venv/bin/python scripts/bench_real32.py                 # fold 0 of 5: ~2 h on a 2-core CPU
    .venv/bin/python scripts/bench_real32.py --all-folds     # all 5 folds (~5x the training time)
    .venv/bin/python scripts/bench_real32.py --ablate        # + what TTA, tuning and weather decoding add
    .venv/bin/python scripts/bench_real32.py --set run.dir=runs/try2 --set train.epochs=5 --json bench.json

What it does, in order:

1. unpacks ``--archive`` (../shared/data/planet_32px.tar.gz, 29 MB, the 32 px chips in the Kaggle layout) once
   into ``<work>/planet_32px/`` (default ``data/``): every member is checked first (regular files and folders
   under ``planet_32px/`` only; no absolute path, no '..', no link), extracted into a temporary folder beside
   the target and renamed into place, so an interrupted unpack never leaves a half folder that looks done.
   A folder that already has ``train_v2.csv`` is used as it is.
2. runs ``amazonmine split | train | tune | predict | evaluate`` as subprocesses, exactly as a user types them:
   ``amazonmine <stage> --config <config> --set data.root=<work>/planet_32px [--set ...]`` with every
   ``--set`` of this script passed to every stage. Each stage's output streams to the console and to
   ``<run_dir>/bench_logs/<stage>.log`` (training: one ``train_fold<K>.log`` per fold); its wall time and peak
   resident memory are measured from outside (``/proc/<pid>/status`` VmHWM polled every 0.5 s, and the
   child's own ``ru_maxrss`` when it is reaped). A stage that exits non-zero stops the run with the tail of
   its log.
3. prints one table read from the artifacts the stages leave (thresholds.json, fold*/summary.json,
   test_probabilities.csv, submission.csv): out-of-fold mean F2 at a flat 0.2 and with tuned thresholds, per-
   label precision and recall (the two mine labels marked), wall time and peak memory per stage, training
   images/s, predict chips/s, and the submission checked against the real sample (61,191 rows, its order,
   the 17-tag vocabulary). The script exits non-zero when the submission is invalid.

Resumable: a fold whose ``fold<K>/summary.json`` and model exist (and that has no ``resume/`` state) is not
trained again; its figures come from its summary ("from an earlier run"). A fold interrupted mid-training
(Ctrl-C, a killed job) has ``fold<K>/resume/`` state and continues with ``amazonmine train --resume``. Split is
re-run every time (seconds, deterministic for the same seed and settings); if it comes out different from the
split the existing fold models were trained on, the run stops rather than mix two splits. Before training the
script also refuses to start while another ``amazonmine train`` process is working on the same run folder.

``--ablate`` (in this process, after the CLI stages): each trained fold's model predicts its own validation
chips once per dihedral view (8 views, saved to ``<run_dir>/ablation_views.npz`` and reused while the models
and the split are unchanged); a second table then gives the out-of-fold mean F2 for TTA 1/2/4/8 views x flat
0.2 / tuned thresholds x weather decoding on/off. "tuned" fits the thresholds on the very chips it scores (as
``amazonmine tune`` reports); "cross-fit" fits on one half of the chips and scores the other half, both ways,
averaged: the honest gain of tuning. Oversampling and dehazing change training, so they need their own runs:
``--ablate-train`` trains fold 0 twice more (``<run_dir>_no_oversample`` with ``split.rare_target=0``,
``<run_dir>_dehaze`` with ``dehaze.enabled=true`` after ``amazonmine dehaze``) and adds them to the table.

Stages run from the repository root, so relative paths in the config and in ``--set`` (run.dir, ...) are
relative to it; ``--archive``, ``--work``, ``--config`` and ``--json`` are relative to where you start it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
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

REPO = Path(__file__).resolve().parents[1]
DATA_NAME = "planet_32px"
MINES = ("artisinal_mine", "conventional_mine")
POLL_SECONDS = 0.5
TAIL_LINES = 40
ABLATION_NPZ = "ablation_views.npz"
ABLATION_BATCH = 256


class BenchError(Exception):
    """A problem this script reports in one line and exits on."""


class StageFailed(BenchError):
    def __init__(self, run: "StageRun"):
        super().__init__(f"stage '{run.name}' failed (exit {run.exit_code})")
        self.run = run


# --- options -----------------------------------------------------------------------------------------------

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
    parser.add_argument("--ablate", action="store_true",
                        help="Also measure TTA views x tuned thresholds x weather decoding on the OOF chips.")
    parser.add_argument("--ablate-train", action="store_true",
                        help="Also train the first trained fold without oversampling and with dehazing (two more "
                             "trainings, each in its own run folder); implies --ablate.")
    parser.add_argument("--ablate-set", dest="ablate_sets", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="Override for every training-ablation run, e.g. a smaller budget (--ablate-set "
                             "train.epochs=5 --ablate-set train.image_size=32). With it, the baseline is trained "
                             "again under the same overrides, so each comparison is like for like.")
    parser.add_argument("--json", dest="json_out", type=Path, default=None,
                        help="Also write the table's numbers to this JSON file.")
    args = parser.parse_args(argv)
    if args.ablate_train:
        args.ablate = True
    # Resolve the user's paths against where they started the script, before moving to the repo root.
    for name in ("archive", "work", "config", "json_out"):
        value = getattr(args, name)
        if value is not None:
            setattr(args, name, value.expanduser().resolve())
    return args


# --- unpacking ---------------------------------------------------------------------------------------------

def _check_member(member: tarfile.TarInfo) -> str | None:
    """Why this member may not be extracted, or None."""
    path = PurePosixPath(member.name)
    if path.is_absolute() or member.name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", member.name):
        return "absolute path"
    if ".." in path.parts or "\\" in member.name:
        return "'..' or a backslash in the path"
    parts = [p for p in path.parts if p != "."]
    if not parts or parts[0] != DATA_NAME:
        return f"outside {DATA_NAME}/"
    if not (member.isfile() or member.isdir()):
        return "not a regular file or folder (link or device)"
    return None


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
            bad = [(m.name, why) for m in members if (why := _check_member(m))]
            if bad:
                shown = "; ".join(f"{n!r}: {w}" for n, w in bad[:5])
                raise BenchError(f"{archive}: refusing to unpack {len(bad)} unsafe member(s): {shown}")
            if hasattr(tarfile, "data_filter"):  # Python 3.12 / 3.11.4+: the library's own safety net too
                tar.extractall(tmp, members=members, filter="data")
            else:  # pragma: no cover
                tar.extractall(tmp, members=members)
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
    out = sys.stdout.buffer
    fd = stream.fileno()
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        out.write(chunk)
        out.flush()
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
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    keep: list[bytes] = []
    import resource

    # A child's ru_maxrss starts from this process's own peak (Linux carries the parent's high-water mark over
    # a vfork + exec), so it only measures the child when it is larger than that; VmHWM never includes it.
    inherited = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    with open(log_path, "wb") as log:
        log.write(f"$ {shlex.join(argv)}\n".encode())
        log.flush()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        reader = threading.Thread(target=_pump, args=(proc.stdout, log, keep), daemon=True)
        reader.start()
        hwm, status, usage = None, None, None
        while status is None:
            try:
                value = _vmhwm_kib(proc.pid)
                if value is not None:
                    hwm = value  # VmHWM only grows: the last value read is the peak so far
                if hasattr(os, "wait4"):
                    pid, wstatus, rusage = os.wait4(proc.pid, os.WNOHANG)
                    if pid:
                        status, usage = wstatus, rusage
                        break
                elif proc.poll() is not None:  # pragma: no cover - not POSIX
                    status = proc.returncode
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
    if usage is not None:
        proc.returncode = os.waitstatus_to_exitcode(status)
        maxrss = usage.ru_maxrss  # KiB on Linux, like VmHWM
    else:  # pragma: no cover - no os.wait4: all children so far, the best there is
        maxrss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    # VmHWM polled every 0.5 s can miss growth in the last interval; ru_maxrss cannot, when it is the child's.
    peaks = {"VmHWM": hwm or 0, "ru_maxrss": maxrss if (maxrss > inherited or not hwm) else 0}
    source = max(peaks, key=peaks.get)
    run.peak_rss_mib = peaks[source] / 1024.0 if peaks[source] else None
    run.rss_source = source
    # Only VmHWM, which may have missed the last interval, and ru_maxrss unusable: a lower bound.
    run.rss_lower_bound = source == "VmHWM" and peaks["ru_maxrss"] == 0 and maxrss > (hwm or 0)
    run.exit_code = proc.returncode
    run.output_tail = b"".join(keep)[-20000:].decode("utf-8", "replace")
    return run


def _tail(text: str, n: int = TAIL_LINES) -> str:
    lines = [line for line in re.split(r"[\r\n]+", text) if line.strip()]
    return "\n".join(lines[-n:])


# --- guard: another training on the same run folder --------------------------------------------------------

def _trainer_run_dir(argv: list[str], cwd: Path) -> Path | None:
    """The run folder an `amazonmine train ...` command line works on, or None if it is not one / unreadable."""
    from amazonmine.config import load_config

    start = next((i for i, a in enumerate(argv[:-1]) if Path(a).name in ("amazonmine", "amazonmine.cli")), None)
    if start is None or "train" not in argv[start + 1:]:
        return None
    rest = argv[argv.index("train", start + 1) + 1:]
    config, sets, i = None, [], 0
    while i < len(rest):
        arg = rest[i]
        if arg in ("--config", "--set") and i + 1 < len(rest):
            if arg == "--set":
                sets.append(rest[i + 1])
            else:
                config = rest[i + 1]
            i += 2
            continue
        if arg.startswith("--config="):
            config = arg.split("=", 1)[1]
        elif arg.startswith("--set="):
            sets.append(arg.split("=", 1)[1])
        i += 1
    try:
        cfg = load_config(None if config is None else (cwd / config), sets)
    except Exception:  # noqa: BLE001 - a command line we cannot resolve is not ours to judge
        return None
    run_dir = Path(cfg.run.dir)
    return (run_dir if run_dir.is_absolute() else cwd / run_dir).resolve()


def other_trainers(run_dir: Path) -> list[str]:
    """'pid: command' of running `amazonmine train` processes (not ours) whose run folder is run_dir."""
    found = []
    proc = Path("/proc")
    if not proc.is_dir():
        return found
    me = os.getpid()
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            argv = [a.decode("utf-8", "replace") for a in (entry / "cmdline").read_bytes().split(b"\0") if a]
            if not any("amazonmine" in a for a in argv) or "train" not in argv:
                continue
            cwd = Path(os.readlink(entry / "cwd"))
        except OSError:
            continue
        if _trainer_run_dir(argv, cwd) == run_dir.resolve():
            found.append(f"{entry.name}: {shlex.join(argv)}")
    return found


# --- the CLI stages ----------------------------------------------------------------------------------------

class Bench:
    def __init__(self, args):
        from amazonmine.config import load_config

        self.args = args
        self.exe = amazonmine_command()
        self.base_sets = list(args.sets)
        self.stages: list[StageRun] = []
        self.data_root: Path | None = None
        self.load_config = load_config

    def sets_for(self, extra: list[str] = ()) -> list[str]:
        return [f"data.root={self.data_root}", *self.base_sets, *extra]

    def config(self, extra: list[str] = ()):
        return self.load_config(self.args.config, self.sets_for(extra))

    def command(self, stage: str, extra_sets: list[str] = (), options: list[str] = ()) -> list[str]:
        argv = [*self.exe, stage, "--config", str(self.args.config), *options]
        for item in self.sets_for(extra_sets):
            argv += ["--set", item]
        return argv

    def stage(self, name: str, stage: str, run_dir: Path, extra_sets: list[str] = (), options: list[str] = (),
              log_name: str | None = None) -> StageRun:
        run = run_stage(name, self.command(stage, extra_sets, options),
                        run_dir / "bench_logs" / f"{log_name or stage}.log")
        self.stages.append(run)
        if run.interrupted:
            raise KeyboardInterrupt
        if run.exit_code != 0:
            raise StageFailed(run)
        return run


def _digest(paths: list[Path]) -> str | None:
    if not all(p.is_file() for p in paths):
        return None
    h = hashlib.sha256()
    for p in paths:
        h.update(p.read_bytes())
    return h.hexdigest()


SPLIT_FILES = ("folds.csv", "fold_counts.csv", "train_manifest.csv", "config.yaml")


def split_mismatch(run_dir: Path, artifact: str, before: str | None) -> list[str]:
    """Folds whose existing model was trained on another split than the one now in folds.csv."""
    import pandas as pd

    folds = pd.read_csv(run_dir / "folds.csv", dtype={"image_name": str}, keep_default_na=False)
    bad = []
    for fold_dir in sorted(run_dir.glob("fold[0-9]*")):
        k = fold_dir.name[4:]
        if not k.isdigit() or not ((fold_dir / artifact).is_file() or (fold_dir / "resume").is_dir()):
            continue
        oof = run_dir / f"oof_fold{k}.csv"
        if oof.is_file():  # the model's own validation chips, exactly
            names = set(pd.read_csv(oof, usecols=["image_name"], dtype=str, keep_default_na=False)["image_name"])
            if names != set(folds.loc[folds["fold"] == int(k), "image_name"]):
                bad.append(f"fold {k}")
        elif before is not None and before != _digest([run_dir / "folds.csv", run_dir / "train_manifest.csv"]):
            bad.append(f"fold {k} (interrupted; split files changed)")
    return bad


class split_guard:
    """Keep a copy of the split files while split runs; if the new split does not match the fold models already
    in the run folder, put the old files back and stop, so a changed setting never mixes two splits."""

    def __init__(self, run_dir: Path, artifact: str):
        self.run_dir, self.artifact = run_dir, artifact
        self.backup = run_dir / "bench_logs" / ".split_backup"

    def __enter__(self):
        self.before = _digest([self.run_dir / "folds.csv", self.run_dir / "train_manifest.csv"])
        shutil.rmtree(self.backup, ignore_errors=True)
        self.backup.mkdir(parents=True, exist_ok=True)
        for name in SPLIT_FILES:
            if (self.run_dir / name).is_file():
                shutil.copy2(self.run_dir / name, self.backup / name)
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                bad = split_mismatch(self.run_dir, self.artifact, self.before)
                if bad:
                    for name in SPLIT_FILES:
                        if (self.backup / name).is_file():
                            os.replace(self.backup / name, self.run_dir / name)
                    raise BenchError(f"{self.run_dir}: this split does not match the models already trained here "
                                     f"({', '.join(bad)}): split settings, run.seed or labels changed. The previous "
                                     "split files were put back; use a new run.dir, or the earlier settings")
        finally:
            shutil.rmtree(self.backup, ignore_errors=True)
        return False


def fold_state(cfg, fold: int) -> str:
    """'done' (summary + model, no resume state), 'resume' (resume state) or 'new'."""
    fold_dir = cfg.run_dir / f"fold{fold}"
    resume = fold_dir / "resume"
    if (resume / "state.json").is_file() and (resume / "state.weights.h5").is_file():
        return "resume"
    if (fold_dir / "summary.json").is_file() and (fold_dir / cfg.train.artifact_name).is_file():
        return "done"
    return "new"


def split_and_train(bench: Bench, cfg, folds: list[int], extra_sets: list[str] = (), label: str = "") -> dict:
    """split (checked against the existing models) then train each fold not yet done. Returns train figures."""
    run_dir = cfg.run_dir
    busy = other_trainers(run_dir)
    if busy:
        raise BenchError(f"another 'amazonmine train' is working on {run_dir}: " + "; ".join(busy)
                         + " -- wait for it to finish (this script then reuses its folds) or use another run.dir")
    with split_guard(run_dir, cfg.train.artifact_name):
        bench.stage(f"{label}split", "split", run_dir, extra_sets)

    states = {k: fold_state(cfg, k) for k in folds}
    runs = {}
    for k in folds:
        if states[k] == "done":
            summary_path = run_dir / f"fold{k}" / "summary.json"
            print(f"\n== {label}train fold {k}: already trained ({summary_path}); skipped", flush=True)
            earlier = json.loads(summary_path.read_text()).get("train_seconds_this_session")
            bench.stages.append(StageRun(f"{label}train fold {k}", [], "",
                                         note=f"from an earlier run ({hms(earlier)} of training then)"))
            continue
        options = ["--fold", str(k)] + (["--resume"] if states[k] == "resume" else [])
        runs[k] = bench.stage(f"{label}train fold {k}", "train", run_dir, extra_sets, options,
                              log_name=f"train_fold{k}")
        if states[k] == "resume":
            runs[k].note = "resumed"
    figures = {}
    for k in folds:
        path = run_dir / f"fold{k}" / "summary.json"
        summary = json.loads(path.read_text())
        figures[k] = {
            "source": "this run" if k in runs else "an earlier run",
            "resumed": states[k] == "resume",
            **{key: summary.get(key) for key in ("train_images_per_s", "best_epoch", "best_val_f2", "epochs_run",
                                                 "train_seconds_this_session", "oof_f2_flat", "train_chips",
                                                 "val_chips", "image_size", "backbone")},
        }
    return figures


# --- figures from the artifacts ----------------------------------------------------------------------------

def count_rows(path: Path) -> int:
    with open(path, "rb") as fh:
        return max(0, sum(1 for _ in fh) - 1)


def flat_per_label(cfg) -> dict:
    """Per-label precision/recall of the OOF chips at the flat start threshold (no decoding), like tune's 'flat'."""
    from amazonmine.data import LABELS
    from amazonmine.metrics import per_label_scores
    from amazonmine.tune import load_oof

    oof = load_oof(cfg)
    scores = per_label_scores(oof.y_true, oof.probs >= cfg.tune.start)
    return {name: {"precision": float(scores["precision"][j]), "recall": float(scores["recall"][j]),
                   "predicted": int(scores["predicted"][j])} for j, name in enumerate(LABELS)}


def check_submission(cfg, run_dir: Path) -> dict:
    from amazonmine.data import PlanetLayout
    from amazonmine.predict import validate_submission

    submission = run_dir / "submission.csv"
    sample = PlanetLayout.from_config(cfg.data).sample_submission
    if not submission.is_file():
        return {"path": str(submission), "rows": 0, "problems": [f"{submission}: not written"], "sample": str(sample)}
    problems = validate_submission(submission, sample)
    if not sample.is_file():
        problems.append(f"{sample}: sample submission not found, so row order and count were not checked")
    return {"path": str(submission), "rows": count_rows(submission), "sample": str(sample),
            "sample_rows": count_rows(sample) if sample.is_file() else None, "problems": problems}


# --- ablation: TTA views x thresholds x weather decoding ---------------------------------------------------

RARE_LABELS = ("artisinal_mine", "blooming", "blow_down", "conventional_mine", "selective_logging", "slash_burn")


def _fit_and_score(y, p, tc, weather: bool, seed: int) -> dict:
    import numpy as np

    from amazonmine.data import LABELS
    from amazonmine.metrics import mean_f2
    from amazonmine.tune import decode, fit_thresholds

    flat = np.full(len(LABELS), tc.start)
    fitted = fit_thresholds(y, p, tc.start, tc.passes, tc.grid, weather_decoding=weather)
    order = np.random.default_rng(seed).permutation(len(y))
    a, b = order[: len(y) // 2], order[len(y) // 2:]
    cross = []
    for fit_on, score_on in ((a, b), (b, a)):
        t = fit_thresholds(y[fit_on], p[fit_on], tc.start, tc.passes, tc.grid, weather_decoding=weather)
        cross.append(mean_f2(y[score_on], decode(p[score_on], t, weather)))
    decided = decode(p, fitted, weather).astype(bool)
    truth = y.astype(bool)
    # Recall at the tuned thresholds of the labels oversampling is for (each under 1% of the chips).
    rare_recall = {name: float((decided[:, j] & truth[:, j]).sum() / truth[:, j].sum()) if truth[:, j].any()
                   else float("nan") for j, name in enumerate(LABELS) if name in RARE_LABELS}
    return {"flat": mean_f2(y, decode(p, flat, weather)), "tuned": mean_f2(y, decode(p, fitted, weather)),
            "tuned_crossfit": float(np.mean(cross)), "rare_recall": rare_recall}


def view_probabilities(cfg, folds: list[int]):
    """(8, N, 17) per-view probabilities of each trained fold's validation chips, cached in ablation_views.npz."""
    import numpy as np

    from amazonmine.data import PlanetLayout, chip_dir
    from amazonmine.split import load_folds

    run_dir = cfg.run_dir
    layout = PlanetLayout.from_config(cfg.data)
    table = load_folds(run_dir)
    models = {k: run_dir / f"fold{k}" / cfg.train.artifact_name for k in folds}
    trained = [k for k in folds if models[k].is_file()]
    if not trained:
        raise BenchError(f"{run_dir}: no trained fold model to ablate")
    names, fold_of = [], []
    for k in trained:
        part = table.loc[table["fold"] == k, "image_name"].astype(str).tolist()
        names += part
        fold_of += [k] * len(part)
    key = hashlib.sha256("\n".join(names).encode()).hexdigest() + "|" + "|".join(
        f"{k}:{models[k].stat().st_size}:{models[k].stat().st_mtime_ns}" for k in trained)
    cache = run_dir / ABLATION_NPZ
    if cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as saved:
                if str(saved["key"]) == key:
                    print(f"ablation: reusing {cache}", flush=True)
                    return names, np.asarray(fold_of), saved["probs"], trained, True
        except (OSError, ValueError, KeyError):
            pass  # unreadable or from another layout: recompute
        print(f"ablation: {cache} is for other models or another split; recomputing", flush=True)

    from amazonmine.tfquiet import import_tensorflow

    tf = import_tensorflow()
    import keras

    from amazonmine.io import atomic_path
    from amazonmine.model import load_trained
    from amazonmine.pipeline import dihedral_tf, preflight
    from amazonmine.train import setup_device

    setup_device(False)
    folder = chip_dir(cfg, cfg.data.tif_dir if cfg.data.image_format == "tif" else cfg.data.train_dir)
    probs = np.zeros((8, len(names), 17), np.float32)
    fold_of = np.asarray(fold_of)
    for k in trained:
        model = load_trained(models[k])
        size = int(model.input_shape[1])
        rows = np.flatnonzero(fold_of == k)
        chips = preflight([folder / f"{names[i]}{layout.ext}" for i in rows], size, cache=True,
                          expected_size=cfg.data.chip_size, desc=f"ablation fold {k}: reading chips")

        # No Python control flow inside: AutoGraph has nothing to convert (and warned about the closure).
        @tf.function(reduce_retracing=True, autograph=False)
        def infer(x, view):
            return tf.cast(model(dihedral_tf(x, view), training=False), tf.float32)

        started = time.perf_counter()
        for view in range(8):
            for s in range(0, len(rows), ABLATION_BATCH):
                batch = tf.constant(chips.pixels[s:s + ABLATION_BATCH].astype(np.float32))
                probs[view, rows[s:s + ABLATION_BATCH]] = infer(batch, tf.constant(view)).numpy()
        print(f"ablation fold {k}: {len(rows)} chips x 8 views in {time.perf_counter() - started:.1f} s", flush=True)
        del infer  # the next fold defines its own, bound to its own model
        keras.backend.clear_session()
    with atomic_path(cache) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, probs=probs, names=np.asarray(names), folds=fold_of, key=np.asarray(key))
    return names, fold_of, probs, trained, False


def ablate_views(cfg, folds: list[int]) -> dict:
    import numpy as np

    from amazonmine.data import PlanetLayout, load_matrix_csv
    from amazonmine.pipeline import TTA_VIEWS

    names, fold_of, probs, trained, reused = view_probabilities(cfg, folds)
    frame, matrix = PlanetLayout.from_config(cfg.data).load_train(check_files=False)
    row_of = {n: i for i, n in enumerate(frame["image_name"].astype(str))}
    y = matrix[[row_of[n] for n in names]].astype(bool)
    result = {"chips": len(names), "folds": trained, "reused_views": reused, "rows": []}
    for n_views, views in TTA_VIEWS.items():
        p = probs[list(views)].mean(axis=0).astype(np.float64)
        for weather in (True, False):
            scores = _fit_and_score(y, p, cfg.tune, weather, cfg.run.seed)
            result["rows"].append({"tta": n_views, "views": list(views), "weather_decoding": weather, **scores})
    # Consistency: the train stage's own OOF file against the same views averaged here.
    diffs = []
    for k in trained:
        summary_path = cfg.run_dir / f"fold{k}" / "summary.json"
        oof_path = cfg.run_dir / f"oof_fold{k}.csv"
        if not (summary_path.is_file() and oof_path.is_file()):
            continue
        tta = json.loads(summary_path.read_text()).get("oof_tta_views", cfg.predict.tta)
        oof_names, oof = load_matrix_csv(oof_path)
        position = {n: i for i, n in enumerate(names)}
        if tta in TTA_VIEWS and all(n in position for n in oof_names):
            mine = probs[list(TTA_VIEWS[tta])].mean(axis=0)[[position[n] for n in oof_names]]
            diffs.append(float(np.abs(mine - oof).max()))
    result["max_abs_diff_vs_oof_csv"] = max(diffs) if diffs else None
    return result


def oof_scores(cfg, run_dir: Path, fold: int) -> dict | None:
    """Flat / tuned / cross-fitted OOF mean F2 of one fold's oof csv, under the config's weather decoding."""
    import numpy as np

    from amazonmine.data import PlanetLayout, load_matrix_csv

    path = run_dir / f"oof_fold{fold}.csv"
    if not path.is_file():
        return None
    names, probs = load_matrix_csv(path)
    frame, matrix = PlanetLayout.from_config(cfg.data).load_train(check_files=False)
    row_of = {n: i for i, n in enumerate(frame["image_name"].astype(str))}
    y = matrix[[row_of[n] for n in names]].astype(bool)
    return {"chips": len(names), **_fit_and_score(y, probs.astype(np.float64), cfg.tune, cfg.tune.weather_decoding,
                                                  cfg.run.seed)}


def ablate_training(bench: Bench, cfg, fold: int, budget: list[str]) -> list[dict]:
    """One fold without oversampling and with dehazing, each in its own run folder, against a baseline: the main
    run's own fold, or, when ``budget`` overrides are given, the baseline retrained under the same overrides."""
    base = cfg.run_dir
    # The overrides are in the folder names, so a run with another budget never reuses these models.
    tag = "_abl_" + "_".join(re.sub(r"[^A-Za-z0-9]+", "", item.split(".")[-1]) for item in budget) if budget else ""
    variants = [
        ("no oversampling", Path(f"{base}{tag}_no_oversample"), ["split.rare_target=0"], False),
        ("dehaze on", Path(f"{base}{tag}_dehaze"), ["dehaze.enabled=true"], True),
    ]
    if budget:
        variants.insert(0, ("baseline", Path(f"{base}{tag}_baseline"), [], False))
        rows = []
    else:
        summary = base / f"fold{fold}" / "summary.json"
        train = json.loads(summary.read_text()) if summary.is_file() else {}
        rows = [{"run": "baseline (this run)", "run_dir": str(base), "train": train,
                 **(oof_scores(cfg, base, fold) or {})}]
    for title, run_dir, extra, dehaze in variants:
        # The arm's own setting last, so no budget override can undo what the arm is about.
        extra = [*budget, *extra, f"run.dir={run_dir}", f"train.folds=[{fold}]"]
        vcfg = bench.config(extra)
        label = f"[{title}] "
        if dehaze:
            bench.stage(f"{label}dehaze", "dehaze", vcfg.run_dir, extra)
        figures = split_and_train(bench, vcfg, [fold], extra, label)
        bench.stage(f"{label}tune", "tune", vcfg.run_dir, extra)
        rows.append({"run": title, "run_dir": str(run_dir), "train": figures[fold],
                     **(oof_scores(vcfg, vcfg.run_dir, fold) or {})})
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


def _grid(rows: list[list], align: str = "") -> list[str]:
    """Aligned text columns; align has one 'l' or 'r' per column (default: first left, the rest right)."""
    n = len(rows[0])
    align = (align or "l" + "r" * (n - 1)).ljust(n, "r")
    widths = [max(len(str(r[i])) for r in rows) for i in range(n)]
    out = []
    for r in rows:
        cells = [str(c).rjust(w) if a == "r" else str(c).ljust(w) for c, w, a in zip(r, widths, align)]
        out.append("  ".join(cells).rstrip())
    return out


def render(report: dict) -> str:
    from amazonmine.data import LABELS

    lines = []
    t = report.get("tune") or {}
    head = report["header"]
    lines.append("=" * 96)
    lines.append(f"bench_real32  run {head['run_dir']}  data {head['data_root']}  folds {head['folds']}")
    lines.append(f"              config {head['config']}" + (f"  --set {' '.join(head['sets'])}" if head["sets"] else ""))
    lines.append("=" * 96)
    if t:
        lines += _grid([
            ["out-of-fold chips", f"{t['oof_chips']} of {t['labelled_chips']} labelled (folds "
                                  f"{', '.join(map(str, t['oof_folds']))})"],
            [f"OOF mean F2, flat {t['start']:g}", f"{t['oof_f2_flat']:.4f}"],
            [f"OOF mean F2, flat {t['start']:g} + weather decoding", f"{t['oof_f2_flat_with_weather']:.4f}"],
            ["OOF mean F2, tuned + weather decoding", f"{t['oof_f2_tuned_with_weather']:.4f}"
             + ("   <- used by predict" if t["weather_decoding"] else "")],
            ["OOF mean F2, tuned, no weather decoding", f"{t['oof_f2_tuned_without']:.4f}"
             + ("" if t["weather_decoding"] else "   <- used by predict")],
        ], "ll")
        lines.append("")
        flat = report.get("flat_per_label") or {}
        rows = [["label", "support", "thr", f"prec@{t['start']:g}", f"rec@{t['start']:g}", "prec", "recall", "F2",
                 "predicted"]]
        for name in LABELS:
            s = t["per_label"][name]
            f = flat.get(name, {})
            mark = "* " if name in MINES else "  "
            rows.append([mark + name, s["support"], f"{s['threshold']:.2f}",
                         f"{f['precision']:.3f}" if f else "-", f"{f['recall']:.3f}" if f else "-",
                         f"{s['precision']:.3f}", f"{s['recall']:.3f}", f"{s['f2']:.3f}", s["predicted"]])
        lines += _grid(rows)
        lines.append(f"  (* mine labels; prec/rec@{t['start']:g}: flat threshold, no decoding; prec/recall/F2: tuned "
                     f"thresholds, weather decoding {'on' if t['weather_decoding'] else 'off'}, as predict decides)")
        lines.append("")
    rows = [["stage", "wall", "peak RSS", "notes"]]
    for s in report["stages"]:
        rss = "-"
        if s.get("peak_rss_mib"):
            rss = (">=" if s.get("rss_lower_bound") else "") + f"{s['peak_rss_mib']:.0f} MiB"
        rows.append([s["name"], hms(s["seconds"]), rss, s.get("note", "")])
    rows.append(["total (this run)", hms(report["total_seconds"]), "", ""])
    lines += _grid(rows, "lrrl")
    if any(s.get("rss_lower_bound") for s in report["stages"]):
        lines.append("  (>=: a stage too short for the 0.5 s VmHWM polling to see its peak)")
    lines.append("")
    tr = report.get("train") or {}
    for k, f in sorted(tr.items(), key=lambda kv: int(kv[0])):
        origin = " (from an earlier run)" if f["source"] != "this run" else (" (resumed)" if f["resumed"] else "")
        lines.append(f"train fold {k}: {f['train_images_per_s']:.0f} img/s, {f['epochs_run']} epoch(s), best epoch "
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
    a = report.get("ablation")
    if a:
        lines.append("")
        lines.append(f"Ablation on the {a['chips']} out-of-fold chips of fold(s) {', '.join(map(str, a['folds']))} "
                     f"(mean F2){'; per-view probabilities reused from ' + ABLATION_NPZ if a['reused_views'] else ''}")
        rows = [["TTA views", "weather decoding", "flat", "tuned", "tuned cross-fit"]]
        for r in a["rows"]:
            rows.append([f"{r['tta']} {tuple(r['views'])}".replace(",)", ")"), "on" if r["weather_decoding"] else "off",
                         f"{r['flat']:.4f}", f"{r['tuned']:.4f}", f"{r['tuned_crossfit']:.4f}"])
        lines += _grid(rows, "llrrr")
        lines.append("  flat: every label at tune.start; tuned: thresholds fitted on these same chips (what tune "
                     "reports); cross-fit: fitted on one half, scored on the other, both ways averaged.")
        lines.append("  weather decoding off: each label alone, plus the likeliest weather when none clears.")
        if a.get("max_abs_diff_vs_oof_csv") is not None:
            lines.append(f"  check: these views averaged as in train's OOF differ from oof_fold*.csv by at most "
                         f"{a['max_abs_diff_vs_oof_csv']:.2g}")
        tr_rows = a.get("training")
        if tr_rows:
            lines.append("")
            overrides = a.get("training_overrides") or []
            lines.append(f"Training ablations, fold {a.get('training_fold', 0)} only (OOF mean F2 with each run's own "
                         "TTA, weather decoding as configured; recall at the tuned thresholds)"
                         + (f"; every run here trained with {' '.join(overrides)}" if overrides else ""))
            rows = [["run", "chips", "flat", "tuned", "tuned cross-fit", "artisinal rec", "conv. rec",
                     "rare-label rec", "train", "run dir"]]
            for r in tr_rows:
                if "flat" not in r:
                    rows.append([r["run"], "-", "-", "-", "-", "-", "-", "-", "-", r["run_dir"]])
                    continue
                rec = r.get("rare_recall") or {}
                train = r.get("train") or {}
                known = [v for v in rec.values() if v == v]  # labels with true chips in this fold

                def recall(name):
                    value = rec.get(name, float("nan"))
                    return "-" if value != value else f"{value:.3f}"

                rows.append([r["run"], r["chips"], f"{r['flat']:.4f}", f"{r['tuned']:.4f}",
                             f"{r['tuned_crossfit']:.4f}", recall("artisinal_mine"), recall("conventional_mine"),
                             f"{sum(known) / len(known):.3f}" if known else "-",
                             hms(train.get("train_seconds_this_session")), r["run_dir"]])
            lines += _grid(rows, "lrrrrrrrrl")
            lines.append("  rare-label rec: mean recall over artisinal_mine, blooming, blow_down, conventional_mine, "
                         "selective_logging, slash_burn (those with true chips in the fold).")
        else:
            lines.append("oversampling on/off and dehaze on/off: not measured by this run (each needs its own "
                         "training; add --ablate-train)")
    lines.append("=" * 96)
    return "\n".join(lines)


# --- main --------------------------------------------------------------------------------------------------

def main(argv=None) -> int:
    args = parse_args(argv)
    os.chdir(REPO)
    sys.path.insert(0, str(REPO))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    bench = Bench(args)
    started = time.perf_counter()
    report: dict = {"stages": []}
    exit_code = 0
    completed = False
    try:
        data_root, unpack_seconds = unpack(args.archive, args.work)
        bench.data_root = data_root
        cfg = bench.config()
        if Path(cfg.data.root).resolve() != data_root.resolve():
            print(f"note: --set data.root={cfg.data.root} overrides the unpacked {data_root}", flush=True)
        from amazonmine.train import resolve_folds

        folds = resolve_folds(cfg, (), args.all_folds)
        run_dir = cfg.run_dir
        report["header"] = {"run_dir": str(run_dir), "data_root": str(cfg.data.root), "folds": folds,
                            "config": str(args.config), "sets": args.sets}
        unpack_run = StageRun("unpack", [], "", seconds=unpack_seconds,
                              note=f"{args.archive.name} -> {data_root}" if unpack_seconds is not None
                              else f"already unpacked: {data_root}")
        bench.stages.append(unpack_run)

        report["train"] = split_and_train(bench, cfg, folds)
        rates = [f["train_images_per_s"] for f in report["train"].values() if f.get("train_images_per_s")]
        report["train_images_per_s"] = sum(rates) / len(rates) if rates else None
        for s in bench.stages:
            if s.name.startswith("train fold ") and s.seconds is not None:
                k = int(s.name.split()[-1])
                f = report["train"][k]
                s.note = (f"{f['epochs_run']} epoch(s), {f['train_images_per_s']:.0f} img/s"
                          + (" (resumed)" if f["resumed"] else ""))

        tune_run = bench.stage("tune", "tune", run_dir)
        report["tune"] = json.loads((run_dir / "thresholds.json").read_text())
        tune_run.note = (f"{report['tune']['oof_f2_flat']:.4f} -> {report['tune']['oof_f2_tuned']:.4f} "
                         f"on {report['tune']['oof_chips']} chips")
        report["flat_per_label"] = flat_per_label(cfg)

        if args.skip_predict:
            report["predict_skipped"] = True
        else:
            predict_run = bench.stage("predict", "predict", run_dir)
            chips = count_rows(run_dir / "test_probabilities.csv")
            printed = re.findall(r"\((\d+(?:\.\d+)?) chips/s\)", predict_run.output_tail)
            report["predict"] = {
                "chips": chips, "seconds": predict_run.seconds,
                "chips_per_s_wall": chips / predict_run.seconds if predict_run.seconds else 0.0,
                "stage_chips_per_s": float(printed[-1]) if printed else None,
                "peak_rss_mib": predict_run.peak_rss_mib, "rss_source": predict_run.rss_source,
                "rss_lower_bound": predict_run.rss_lower_bound,
            }
            predict_run.note = f"{chips} chips, {report['predict']['chips_per_s_wall']:.1f} chips/s (wall)"
            report["submission"] = check_submission(cfg, run_dir)

        eval_run = bench.stage("evaluate", "evaluate", run_dir)
        eval_run.note = str(run_dir / "report" / "index.html")

        if args.ablate:
            print("\n== ablate: per-view predictions of the out-of-fold chips (in process)", flush=True)
            t0 = time.perf_counter()
            report["ablation"] = ablate_views(cfg, folds)
            bench.stages.append(StageRun("ablate (views)", [], "", seconds=time.perf_counter() - t0,
                                         note=f"{report['ablation']['chips']} chips x 8 views"
                                         + (" (reused)" if report["ablation"]["reused_views"] else "")))
            if args.ablate_train:
                report["ablation"]["training"] = ablate_training(bench, cfg, folds[0], args.ablate_sets)
                report["ablation"]["training_fold"] = folds[0]
                report["ablation"]["training_overrides"] = args.ablate_sets
        completed = True
        if report.get("submission") and report["submission"]["problems"]:
            exit_code = 1
    except StageFailed as exc:
        run = exc.run
        print(f"\nbench_real32: stage '{run.name}' failed (exit {run.exit_code}); log: {run.log}", file=sys.stderr)
        print("---- last lines ----\n" + _tail(run.output_tail) + "\n--------------------", file=sys.stderr)
        exit_code = 1
    except BenchError as exc:
        print(f"\nbench_real32: error: {exc}", file=sys.stderr)
        exit_code = 1
    except KeyboardInterrupt:
        print("\nbench_real32: interrupted; re-run the same command to continue (finished folds are kept, an "
              "interrupted fold resumes)", file=sys.stderr)
        exit_code = 130
    except Exception as exc:  # the package's own errors (config, data) in this process
        from amazonmine.errors import AmazonmineError

        if not isinstance(exc, AmazonmineError):
            raise
        print(f"\nbench_real32: error: {exc}", file=sys.stderr)
        exit_code = 1

    report["stages"] = [{k: v for k, v in asdict(s).items() if k != "output_tail"} for s in bench.stages]
    report["total_seconds"] = time.perf_counter() - started
    report["exit_code"] = exit_code
    if completed:
        print("\n" + render(report), flush=True)
    elif bench.stages:
        rows = [["stage", "wall", "exit"]] + [[s.name, hms(s.seconds), "" if s.exit_code is None else s.exit_code]
                                              for s in bench.stages]
        print("\n" + "\n".join(_grid(rows)), file=sys.stderr)
    if args.json_out is not None:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(report, indent=2, default=str) + "\n")
        print(f"wrote {args.json_out}", flush=True)
    if exit_code == 1 and report.get("submission", {}).get("problems"):
        print("bench_real32: the submission is invalid (see above)", file=sys.stderr)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
