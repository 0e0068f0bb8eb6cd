"""Kill -9 drill: interrupt dehaze, train, predict and evaluate at random moments, finish them, check the run.

    .venv/bin/python scripts/fault_drill.py [--seeds 3] [--stages dehaze,train,predict,evaluate] [--keep]
                                            [--workdir DIR] [--moments run|writes] [--kill-at SECONDS ...]

On a tiny synthetic run (48 + 16 chips of 32 px, a two-fold densenet_mini trained for two short epochs):

1. The reference: every stage uninterrupted (dehaze, split, train --all-folds, tune, predict, evaluate), the run
   folder copied after each. Each drilled stage is then run a second time from the same starting state, so the
   drill knows which files the stage reproduces byte for byte and which it does not (logs with timings).
2. For each drilled stage and seed: the run folder as it was before the stage, the stage started in its own
   process group, the whole group sent SIGKILL at a moment drawn uniformly from [0, the stage's uninterrupted
   duration] (seeded, stratified: seed k of N draws in the k-th N-th of it; drawn again if the stage finished
   first), then the stage run to completion as the README tells a user to (dehaze, predict, evaluate: the same
   command; train: --all-folds --resume). "N/M in place" says how many of the M files the stage makes already
   had their final bytes at the kill. ``--moments writes`` draws over the span in which the reference wrote the
   run folder instead (dehaze spends most of its second on imports here); ``--kill-at`` replays a moment.
3. The run folder is compared with the reference's after that stage, every file:
   - present, and no file the reference has not (hidden ``.*.tmp*`` leftovers are counted apart: the README
     allows them outside dehaze);
   - byte-identical where the uninterrupted stage reproduces it; otherwise whole (CSV, JSON, YAML, HTML and
     images parse with the reference's shape, models load with Keras' safe_mode) and, for JSON, equal but for
     the keys that differ between two uninterrupted runs;
   - a fold that train resumed from its saved epoch cannot be byte-identical (the data order of the epochs after
     a restart is not the one an uninterrupted run sees), so there the decisions are compared instead: tune and
     predict are run on the recovered folder and every chip's submitted tags must equal the reference's.

Printed: per stage, kills tried, recovered (bit-identical, or same decisions where only that can hold), lost
(an artifact missing, corrupt, or different where it must not be, or the re-run failing). Exit 1 if anything
was lost, 2 if the reference itself could not be made. TensorBoard logs are not compared (their names carry
the time and pid). The work folder is removed at the end unless --keep or something was lost.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

DRILLED = ("dehaze", "train", "predict", "evaluate")
# The uninterrupted pipeline, in order: (stage, its arguments).
PIPELINE = [("dehaze", ["dehaze"]), ("split", ["split"]), ("train", ["train", "--all-folds"]), ("tune", ["tune"]),
            ("predict", ["predict"]), ("evaluate", ["evaluate"])]
# How a user finishes a killed stage (README "Resuming").
RERUN = {"dehaze": ["dehaze"], "train": ["train", "--all-folds", "--resume"], "predict": ["predict"],
         "evaluate": ["evaluate"]}
# Small enough that the whole drill fits in minutes on two shared cores; dehaze sized for 32 px chips.
TINY = ["data.chip_size=32", "dehaze.enabled=true", "dehaze.patch=3", "dehaze.guided_radius=3", "dehaze.workers=2",
        "split.folds=2", "split.rare_target=4", "train.backbone=densenet_mini", "train.mini_blocks=[2]",
        "train.image_size=32", "train.batch_size=16", "train.epochs=2", "train.steps_per_epoch=3",
        "train.verbose=0", "train.weights=none", "train.deterministic=true", "train.cache=true", "predict.tta=2",
        "predict.batch_size=16", "tune.weather_decoding=true", "evaluate.thumbnail=32"]
STAGE_ORDER = [stage for stage, _ in PIPELINE]
MAX_DRAWS = 4  # kill moments drawn per trial before giving up on landing one while the stage runs


def amazonmine_command() -> list[str]:
    script = Path(sys.executable).parent / "amazonmine"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "amazonmine.cli"]


def is_temporary(rel: str) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return name.startswith(".") and ".tmp" in name


def is_ignored(rel: str) -> bool:
    # The lock file holds the last holder's note by design; TensorBoard event names carry time and pid.
    return rel == ".lock" or "/tensorboard/" in f"/{rel}"


def hash_tree(root: Path) -> dict[str, str]:
    """relative path -> SHA-256 of every file under ``root`` (hidden ones included); {} if there is no root."""
    found = {}
    if not root.is_dir():
        return found
    for folder, _, names in os.walk(root):
        for name in names:
            path = Path(folder, name)
            found[path.relative_to(root).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def listing(root: Path) -> frozenset:
    """Names, sizes and modification times under ``root``: cheap enough to poll while a stage runs."""
    found = []
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            if is_ignored(os.path.relpath(path, root)):
                continue
            try:
                st = os.stat(path)
            except FileNotFoundError:
                continue
            found.append((path, st.st_size, st.st_mtime_ns))
    return frozenset(found)


def restore(snapshot: Path | None, live: Path) -> None:
    """``live`` made exactly like ``snapshot`` (absent if the snapshot is: no run folder yet)."""
    if live.exists():
        shutil.rmtree(live)
    if snapshot is not None and snapshot.is_dir():
        shutil.copytree(snapshot, live, symlinks=True)


# --- is a file whole ---------------------------------------------------------------------------------------

def whole(path: Path, ref: Path | None) -> str | None:
    """None if ``path`` reads back as its kind of file (with the reference's shape), else why not."""
    suffix = path.name.lower().rsplit(".", 1)[-1] if "." in path.name else ""
    try:
        if path.stat().st_size == 0 and ref is not None and ref.stat().st_size > 0:
            return "empty"
        if suffix == "csv":
            import pandas as pd

            frame = pd.read_csv(path)
            if ref is not None:
                expected = pd.read_csv(ref)
                if list(frame.columns) != list(expected.columns) or len(frame) != len(expected):
                    return f"CSV shape {len(frame)}x{list(frame.columns)[:3]}.. != reference {len(expected)} rows"
        elif suffix == "json":
            data = json.loads(path.read_text(encoding="utf-8"))
            if ref is not None and isinstance(data, dict):
                expected = json.loads(ref.read_text(encoding="utf-8"))
                if set(data) != set(expected):
                    return f"JSON keys differ: {sorted(set(data) ^ set(expected))[:4]}"
        elif suffix in ("yaml", "yml"):
            import yaml

            yaml.safe_load(path.read_text(encoding="utf-8"))
        elif suffix in ("jpg", "jpeg", "png"):
            import cv2

            img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            if img is None:
                return "image does not decode"
            if ref is not None:
                expected = cv2.imread(str(ref), cv2.IMREAD_UNCHANGED)
                if expected is not None and img.shape != expected.shape:
                    return f"image shape {img.shape} != reference {expected.shape}"
        elif suffix == "html":
            if "</html>" not in path.read_text(encoding="utf-8").lower():
                return "HTML cut short"
        elif path.name.endswith(".weights.h5"):
            import h5py

            with h5py.File(path, "r"):
                pass
        elif suffix in ("h5", "keras"):
            from amazonmine.neural.tfquiet import import_tensorflow

            import_tensorflow()
            import keras

            keras.models.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # noqa: BLE001 - any failure to read back is the finding
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:120] if str(exc).strip() else ''}"
    return None


def json_volatile_keys(a: Path, b: Path) -> set[str] | None:
    """Top-level keys that differ between two JSON objects (None if either is not one)."""
    try:
        x, y = json.loads(a.read_text(encoding="utf-8")), json.loads(b.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not (isinstance(x, dict) and isinstance(y, dict)):
        return None
    return {k for k in set(x) | set(y) if x.get(k) != y.get(k)}


def submitted_tags(path: Path) -> dict[str, str]:
    import pandas as pd

    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    return {name: " ".join(sorted(tags.split())) for name, tags in zip(frame["image_name"], frame["tags"])}


# --- the drill ---------------------------------------------------------------------------------------------

@dataclass
class Reference:
    snapshots: dict[str, Path] = field(default_factory=dict)   # "before:<stage>" / "after:<stage>" -> run copy
    hashes: dict[str, dict[str, str]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    writes: dict[str, tuple[float, float]] = field(default_factory=dict)  # stage -> (first, last) change, seconds
    unstable: dict[str, set[str]] = field(default_factory=dict)  # stage -> files two clean runs made differently
    volatile: dict[str, set[str]] = field(default_factory=dict)  # "<stage>:<file>" -> JSON keys that differ
    failed: dict[str, str] = field(default_factory=dict)


@dataclass
class Trial:
    stage: str
    seed: int
    kill_at: float = 0.0
    budget: float = 0.0
    landed: bool = False
    in_place: str = ""
    resumed: list[str] = field(default_factory=list)
    outcome: str = ""  # "identical", "decisions" (same submitted tags), "whole" (parses; bytes may vary) or "lost"
    problems: list[str] = field(default_factory=list)
    excused: list[str] = field(default_factory=list)
    temporaries: list[str] = field(default_factory=list)


class Drill:
    def __init__(self, work: Path, stages: list[str], seeds: int, moments: str = "run",
                 kill_at: list[float] | None = None):
        self.work, self.stages, self.seeds, self.moments, self.kill_at = work, stages, seeds, moments, kill_at
        self.data, self.live, self.logs = work / "data", work / "live" / "run", work / "logs"
        self.refdir = work / "ref"
        # One fixed run.dir for every run: files that record their own path (summaries, the config) compare.
        self.sets = [f"data.root={self.data}", f"run.dir={self.live}", *TINY]
        self.cmd = amazonmine_command()
        self.ref = Reference()
        self.checked: dict[str, str | None] = {}  # sha256 -> whole() of a reference file with that content
        self.log_count = 0

    def argv(self, args: list[str]) -> list[str]:
        out = [*self.cmd, *args]
        for s in self.sets:
            out += ["--set", s]
        return out

    def start(self, args: list[str], label: str) -> tuple[subprocess.Popen, Path]:
        self.logs.mkdir(parents=True, exist_ok=True)
        self.log_count += 1
        log = self.logs / f"{self.log_count:03d}_{label}.log"
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}
        with open(log, "wb") as fh:
            # Its own session, so SIGKILL reaches dehaze's worker processes too, as a batch scheduler's would.
            proc = subprocess.Popen(self.argv(args), stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=env, start_new_session=True)
        return proc, log

    def run(self, args: list[str], label: str, timeout: float = 1800) -> tuple[int, float, Path]:
        started = time.monotonic()
        proc, log = self.start(args, label)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            code = -999
        return code, time.monotonic() - started, log

    def run_watched(self, args: list[str], label: str) -> tuple[int, float, Path, tuple[float, float]]:
        """:meth:`run`, also timing the first and last change to the run folder (the window it writes in)."""
        started = time.monotonic()
        proc, log = self.start(args, label)
        seen, first, last = listing(self.live), None, None
        while proc.poll() is None:
            time.sleep(0.02)
            now = listing(self.live)
            if now != seen:
                seen, last = now, time.monotonic() - started
                first = last if first is None else first
        seconds = time.monotonic() - started
        if listing(self.live) != seen or first is None:
            first = seconds if first is None else first
            last = seconds
        return proc.returncode, seconds, log, (first, last)

    # --- reference ---------------------------------------------------------------------------------------
    def reference(self) -> None:
        code, _, log = self.run_plain(["synth", str(self.data), "--n-train", "48", "--n-test", "16", "--size", "32",
                                       "--seed", "0"], "synth")
        if code:
            raise SystemExit(f"synth failed (exit {code}); see {log}")
        restore(None, self.live)
        # Predict's reference is the yardstick of train's decisions, so a train drill needs it.
        last = max(STAGE_ORDER.index(s) for s in [*self.stages, *(["predict"] if "train" in self.stages else [])])
        for stage, args in PIPELINE[:last + 1]:
            self.snapshot(f"before:{stage}")
            code, seconds, log, window = self.run_watched(args, f"ref_{stage}")
            self.ref.seconds[stage], self.ref.writes[stage] = seconds, window
            self.snapshot(f"after:{stage}")
            if code:
                self.ref.failed[stage] = f"exit {code}: {last_line(log)}"
                print(f"  reference {stage}: FAILED ({self.ref.failed[stage]}); see {log}", flush=True)
                break
            print(f"  reference {stage}: {seconds:.1f} s, writing from {window[0]:.1f} to {window[1]:.1f} s",
                  flush=True)
        for stage in self.stages:
            if stage in self.ref.failed or f"after:{stage}" not in self.ref.hashes:
                continue
            self.second_run(stage)
            self.check_reference(stage)

    def run_plain(self, args: list[str], label: str) -> tuple[int, float, Path]:
        started = time.monotonic()
        self.logs.mkdir(parents=True, exist_ok=True)
        log = self.logs / f"000_{label}.log"
        with open(log, "wb") as fh:
            code = subprocess.call([*self.cmd, *args], stdout=fh, stderr=subprocess.STDOUT)
        return code, time.monotonic() - started, log

    def snapshot(self, key: str) -> None:
        target = self.refdir / key.replace(":", "_")
        if target.exists():
            shutil.rmtree(target)
        if self.live.is_dir():
            shutil.copytree(self.live, target, symlinks=True)
        self.ref.snapshots[key] = target
        self.ref.hashes[key] = hash_tree(self.live)

    def second_run(self, stage: str) -> None:
        """Run ``stage`` once more from the same start: which of its files it does not reproduce byte for byte."""
        restore(self.ref.snapshots[f"before:{stage}"], self.live)
        code, seconds, log = self.run(dict(PIPELINE)[stage], f"ref2_{stage}")
        if code:
            self.ref.failed[stage] = f"second uninterrupted run: exit {code}: {last_line(log)}"
            return
        self.ref.seconds[stage] = min(self.ref.seconds[stage], seconds)
        first, second = self.ref.hashes[f"after:{stage}"], hash_tree(self.live)
        unstable = {rel for rel in set(first) | set(second)
                    if not is_ignored(rel) and first.get(rel) != second.get(rel)}
        self.ref.unstable[stage] = unstable
        for rel in unstable:
            if rel.endswith(".json") and rel in first and rel in second:
                keys = json_volatile_keys(self.ref.snapshots[f"after:{stage}"] / rel, self.live / rel)
                if keys is not None:
                    self.ref.volatile[f"{stage}:{rel}"] = keys
        shown = ", ".join(sorted(unstable)[:4]) + (" ..." if len(unstable) > 4 else "")
        print(f"  second uninterrupted {stage}: {seconds:.1f} s; "
              f"{'byte-identical' if not unstable else f'{len(unstable)} file(s) differ: {shown}'}", flush=True)

    def check_reference(self, stage: str) -> None:
        """Every reference file reads back: else the drill's yardstick (and the stage) is broken."""
        snap = self.ref.snapshots[f"after:{stage}"]
        for rel, digest in self.ref.hashes[f"after:{stage}"].items():
            if is_ignored(rel) or digest in self.checked:
                continue
            self.checked[digest] = whole(snap / rel, None)
            if self.checked[digest]:
                self.ref.failed[stage] = f"uninterrupted run wrote {rel} not whole: {self.checked[digest]}"
            if is_temporary(rel):
                self.ref.failed[stage] = f"uninterrupted run left a temporary file: {rel}"

    # --- one kill --------------------------------------------------------------------------------------------
    def trial(self, stage: str, seed: int) -> Trial:
        """Kill ``stage`` once (seeded moment), finish it, and judge the run folder against the reference."""
        t = Trial(stage, seed)
        self.interrupt(t)
        self.recover(t)
        return t

    def interrupt(self, t: Trial) -> None:
        """The run folder as before ``t.stage``, the stage started and its process group killed mid-way."""
        stage, seed = t.stage, t.seed
        rng = random.Random(f"fault_drill:{stage}:{seed}")
        t.budget = self.ref.seconds[stage]
        low, high = 0.0, t.budget
        if self.moments == "writes":
            # A little either side: this run's pace differs from the reference's on a shared machine.
            first, last = self.ref.writes[stage]
            low, high = max(0.0, first - 0.1 * (last - first) - 0.1), min(t.budget, last + 0.1 * (last - first) + 0.1)
        for draw in range(MAX_DRAWS):
            restore(self.ref.snapshots[f"before:{stage}"], self.live)
            high = min(high, t.budget)
            if self.kill_at is not None and draw == 0:
                t.kill_at = self.kill_at[seed % len(self.kill_at)]
            else:
                # Seed k of N draws within the k-th of N equal slices: a few kills spread over the whole span
                # instead of bunching, and each moment of it is still equally likely over the seeds.
                width = (high - low) / self.seeds
                t.kill_at = rng.uniform(low + seed * width, low + (seed + 1) * width)
            proc, log = self.start(dict(PIPELINE)[stage], f"{stage}_s{seed}_killed")
            started = time.monotonic()
            try:
                proc.wait(timeout=t.kill_at)
            except subprocess.TimeoutExpired:
                kill_group(proc)
                t.landed = True
                break
            if proc.returncode:
                t.problems.append(f"failed on its own before the kill (exit {proc.returncode}: {last_line(log)})")
                return
            # Finished before the kill (the machine was quicker this time): draw within what it took.
            t.budget = min(t.budget, time.monotonic() - started)
        if not t.landed:
            t.problems.append(f"stage always finished before the kill ({MAX_DRAWS} draws)")

    def recover(self, t: Trial) -> None:
        """Finish the killed stage as a user would, then compare the run folder with the reference's."""
        stage, seed = t.stage, t.seed
        before, after = self.ref.hashes[f"before:{stage}"], self.ref.hashes[f"after:{stage}"]
        made = [rel for rel, digest in after.items() if not is_ignored(rel) and before.get(rel) != digest]
        timeout = max(300.0, 20 * self.ref.seconds[stage])
        now = hash_tree(self.live)
        t.in_place = f"{sum(1 for rel in made if now.get(rel) == after[rel])}/{len(made)}"
        if stage == "train":
            t.resumed = sorted(p.parent.parent.name for p in self.live.glob("fold*/resume/state.json"))
        code, _, log = self.run(RERUN[stage], f"{stage}_s{seed}_rerun", timeout=timeout)
        if code:
            t.problems.append(f"re-run failed (exit {code}: {last_line(log)}; {log.name})")
        self.compare(t, stage)
        decides = stage in ("train", "predict")
        if not t.problems and t.excused and decides:
            self.compare_decisions(t, seed)
        if t.problems:
            t.outcome = "lost"
        else:
            t.outcome = "identical" if not t.excused else ("decisions" if decides else "whole")

    def compare(self, t: Trial, stage: str) -> None:
        expected, snap = self.ref.hashes[f"after:{stage}"], self.ref.snapshots[f"after:{stage}"]
        now = hash_tree(self.live)
        unstable = self.ref.unstable.get(stage, set())
        for rel in sorted(set(expected) | set(now)):
            if is_ignored(rel):
                continue
            if is_temporary(rel) and rel not in expected:
                t.temporaries.append(rel)
                continue
            if rel not in now:
                t.problems.append(f"{rel}: missing")
                continue
            if rel not in expected:
                t.problems.append(f"{rel}: not in the uninterrupted run")
                continue
            if now[rel] == expected[rel]:
                continue
            broken = whole(self.live / rel, snap / rel)
            if broken:
                t.problems.append(f"{rel}: not whole ({broken})")
                continue
            keys = self.ref.volatile.get(f"{stage}:{rel}")
            if keys is not None:
                # Timings and the like differ between any two runs; the rest of the object must not.
                differ = json_volatile_keys(self.live / rel, snap / rel) or set()
                if not differ - keys:
                    continue
                if self.resumed_file(t, rel):
                    t.excused.append(rel)
                else:
                    t.problems.append(f"{rel}: differs in {sorted(differ - keys)[:4]}")
                continue
            if rel in unstable or self.resumed_file(t, rel):
                t.excused.append(rel)
                continue
            t.problems.append(f"{rel}: differs from the uninterrupted run (which is reproducible)")

    @staticmethod
    def resumed_file(t: Trial, rel: str) -> bool:
        """A file of a fold train continued from its saved epoch (its folder, or its out-of-fold CSV)."""
        return any(rel.startswith(f"{fold}/") or rel == f"oof_{fold}.csv" for fold in t.resumed)

    def compare_decisions(self, t: Trial, seed: int) -> None:
        """Files that may differ did: the submission made from this folder must tag every chip as the reference's."""
        if "after:predict" not in self.ref.hashes or "predict" in self.ref.failed:
            t.problems.append("bytes differ and no reference submission to compare decisions with")
            return
        for stage in ("tune", "predict") if t.stage == "train" else ():
            code, _, log = self.run(dict(PIPELINE)[stage], f"{t.stage}_s{seed}_{stage}")
            if code:
                t.problems.append(f"{stage} on the recovered run failed (exit {code}: {last_line(log)})")
                return
        ours = submitted_tags(self.live / "submission.csv")
        theirs = submitted_tags(self.ref.snapshots["after:predict"] / "submission.csv")
        differ = sorted(n for n in set(ours) | set(theirs) if ours.get(n) != theirs.get(n))
        if differ:
            t.problems.append(f"decisions differ for {len(differ)} chip(s), e.g. {differ[0]}: "
                              f"{ours.get(differ[0])!r} vs {theirs.get(differ[0])!r}")


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def last_line(log: Path) -> str:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1].strip()[:160] if lines else "no output"


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="kills per stage (seeds 0..N-1)")
    parser.add_argument("--stages", default=",".join(DRILLED), help="comma-separated, from " + ",".join(DRILLED))
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--moments", choices=("run", "writes"), default="run",
                        help="kill moments drawn over the whole uninterrupted run (default), or over the span in "
                             "which the reference wrote the run folder (skips start-up, e.g. dehaze's imports)")
    parser.add_argument("--kill-at", type=float, action="append", default=None, metavar="SECONDS",
                        help="kill at this moment instead of a drawn one (repeatable, one per seed in turn): "
                             "to reproduce a loss")
    parser.add_argument("--workdir", type=Path, default=None, help="work folder (new or empty; default: a temp one)")
    args = parser.parse_args()
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in stages if s not in DRILLED]
    if unknown or not stages or args.seeds < 1:
        parser.error(f"--stages takes some of {','.join(DRILLED)}; --seeds at least 1")
    if args.workdir is not None:
        if args.workdir.exists() and any(args.workdir.iterdir()):
            parser.error(f"--workdir {args.workdir} is not empty")
        args.workdir.mkdir(parents=True, exist_ok=True)
        work = args.workdir.resolve()
    else:
        work = Path(tempfile.mkdtemp(prefix="fault_drill_"))

    started = time.monotonic()
    drill = Drill(work, stages, args.seeds, args.moments, args.kill_at)
    print(f"fault drill in {work}: stages {', '.join(stages)}, seeds 0..{args.seeds - 1}, kill moments over "
          f"{'the whole run' if args.moments == 'run' else 'the writing span'}", flush=True)
    drill.reference()
    trials: list[Trial] = []
    for stage in stages:
        if stage in drill.ref.failed or f"after:{stage}" not in drill.ref.hashes:
            continue
        for seed in range(args.seeds):
            t = drill.trial(stage, seed)
            trials.append(t)
            where = f"kill at {t.kill_at:.1f} of {t.budget:.1f} s" if t.landed else "no kill landed"
            extra = f", resumed {'+'.join(t.resumed)}" if t.resumed else ""
            print(f"  {stage} seed {seed}: {where}, {t.in_place} artifacts in place{extra} -> {t.outcome}"
                  + (f" ({'; '.join(t.problems[:3])})" if t.problems else "")
                  + (f" [temporaries left: {', '.join(t.temporaries)}]" if t.temporaries else ""), flush=True)

    rows = [["stage", "kills tried", "recovered", "lost", "notes"]]
    for stage in stages:
        if stage in drill.ref.failed:
            rows.append([stage, "0", "0", "0", f"not drilled: reference {drill.ref.failed[stage]}"])
            continue
        if f"after:{stage}" not in drill.ref.hashes:
            rows.append([stage, "0", "0", "0", "not drilled: an earlier stage of the reference failed"])
            continue
        mine = [t for t in trials if t.stage == stage]
        tried = [t for t in mine if t.landed]
        recovered = [t for t in tried if t.outcome != "lost"]
        notes = [f"{sum(t.outcome == 'identical' for t in recovered)} bit-identical"]
        if any(t.outcome == "decisions" for t in recovered):
            notes.append(f"{sum(t.outcome == 'decisions' for t in recovered)} same decisions, bytes differ")
        if any(t.outcome == "whole" for t in recovered):
            notes.append(f"{sum(t.outcome == 'whole' for t in recovered)} whole, bytes differ as between clean runs")
        notes.append(f"killed at {', '.join(f'{t.kill_at:.1f}' for t in tried)} s "
                     f"(uninterrupted {drill.ref.seconds[stage]:.1f} s)")
        notes.append("in place at kill " + ", ".join(t.in_place for t in tried))
        if drill.ref.unstable.get(stage):
            notes.append(f"{len(drill.ref.unstable[stage])} file(s) not byte-reproducible uninterrupted")
        litter = sum(len(t.temporaries) for t in mine)
        if litter:
            notes.append(f"{litter} hidden .tmp file(s) left after the re-run")
        failed = [t for t in mine if not t.landed and t.outcome == "lost"]
        if failed:
            notes.append(f"{len(failed)} run(s) failed or never got killed (LOST below)")
        rows.append([stage, str(len(tried)), str(len(recovered)), str(len(tried) - len(recovered)), "; ".join(notes)])

    lost = [t for t in trials if t.outcome == "lost"]
    print()
    print(table(rows))
    for t in lost:
        print(f"\nLOST {t.stage} seed {t.seed} (kill at {t.kill_at:.1f} s, {t.in_place} in place):")
        for problem in t.problems[:10]:
            print(f"  - {problem}")
    print(f"\n{len(trials)} trials in {time.monotonic() - started:.0f} s")
    keep = args.keep or bool(lost) or bool(drill.ref.failed)
    if keep:
        print(f"work folder kept: {work} (logs in {drill.logs})")
    else:
        shutil.rmtree(work, ignore_errors=True)
    if drill.ref.failed:
        return 2
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
