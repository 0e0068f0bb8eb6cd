"""Peak memory of `amazonmine predict` as the number of test chips grows: streaming should keep it flat.

    .venv/bin/python scripts/bench_predict_memory.py [--counts 250,1000] [--size 32] [--tta 8]
                                                     [--batch-size 256] [--seed 0] [--keep DIR]

Builds one trained-looking run folder (a ``densenet_mini`` classifier from ``amazonmine.neural.model.build_model`` saved
where :class:`amazonmine.core.runfolder.RunFolder` puts fold 0's model, and a ``thresholds.json`` it reads back), makes
a synthetic test set per count with ``amazonmine.stages.synth`` (the Kaggle layout: test-jpg/, test-jpg-additional/,
sample_submission_v2.csv), and runs ``amazonmine.stages.predict.run_predict`` on each set in a fresh subprocess, so that
each run's peak resident memory (``ru_maxrss`` of the child itself) is its own. Each child also reports its
resident peak just before predict starts (Python + TensorFlow + the amazonmine imports), so the table separates
the fixed cost from what the chips add.

Target: peak(1000) / peak(250) close to 1 (< 1.1). Add 4000 to ``--counts`` to see past one read chunk
(``amazonmine.neural.predictor.CHUNK``): below it the whole set is one chunk, so chunk buffers still grow
with the count there.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

TARGET = 1.1


def _rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kilobytes


def child(args) -> int:
    """One predict run; prints one JSON line with its own peak RSS."""
    import keras  # noqa: F401 - counted in the baseline, as any predict run pays them
    import tensorflow  # noqa: F401

    from amazonmine.core.config import load_config
    from amazonmine.neural.predictor import CHUNK
    from amazonmine.stages.predict import run_predict

    before = _rss_mb()
    cfg = load_config(None, [f"data.root={args.data}", f"run.dir={args.run}", "dehaze.enabled=false",
                             f"predict.tta={args.tta}", f"predict.batch_size={args.batch_size}"])
    began = time.perf_counter()
    summary = run_predict(cfg, progress=False)
    wall = time.perf_counter() - began
    print(json.dumps({"n_chips": summary.n_chips, "predict_seconds": summary.seconds, "wall_seconds": wall,
                      "failed": len(summary.failed), "rss_before_mb": before, "peak_rss_mb": _rss_mb(),
                      "chunk": CHUNK}))
    return 0


def build_run(run: Path, size: int, seed: int) -> None:
    """Fold 0's model (densenet_mini, saved as train saves it), its summary.json and thresholds.json."""
    import keras
    import numpy as np

    from amazonmine.core.config import load_config
    from amazonmine.core.data import LABELS
    from amazonmine.core.io import write_json_atomic
    from amazonmine.core.runfolder import RunFolder
    from amazonmine.neural.model import build_model

    cfg = load_config(None, ["train.backbone=densenet_mini", "train.weights=none", f"train.image_size={size}",
                             f"run.dir={run}"])
    folder = RunFolder.from_config(cfg)
    fold = folder.fold(0)
    keras.utils.set_random_seed(seed)
    model = build_model(cfg.train, channels=3, image_format="jpg")
    fold.dir.mkdir(parents=True, exist_ok=True)
    model.save(fold.model, include_optimizer=False)
    # predict averages finished folds only (a summary.json beside the model); this stand-in has no split.
    write_json_atomic(fold.summary, {"fold": 0, "note": "bench_predict_memory.py: untrained"})
    rng = np.random.default_rng(seed)
    thresholds = {name: round(float(rng.uniform(0.1, 0.3)), 6) for name in LABELS}
    write_json_atomic(folder.thresholds, {"thresholds": thresholds, "weather_decoding": True,
                                          "note": "bench_predict_memory.py: stand-in thresholds"})
    folder.read_thresholds()  # the file must be one predict accepts
    keras.backend.clear_session()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="250,1000", help="Test-set sizes to run, comma-separated.")
    parser.add_argument("--size", type=int, default=32, help="Chip side (and model input) in pixels.")
    parser.add_argument("--tta", type=int, default=8, choices=(1, 2, 4, 8))
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, default=None,
                        help="Work in this folder and keep it (default: a temp dir).")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--run", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)
    counts = [int(c) for c in args.counts.split(",") if c.strip()]
    if args.size < 32:
        parser.error("--size must be at least 32 (train.image_size's lower bound)")

    from amazonmine.stages.synth import paint_dataset

    work = args.keep or Path(tempfile.mkdtemp(prefix="bench_predict_"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"bench_predict_memory: densenet_mini at {args.size} px, TTA {args.tta}, batch {args.batch_size}; "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start", flush=True)
    try:
        # The model is built in a child too, so this process never imports TensorFlow.
        template = work / "run_template"
        subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]); "
                        "import bench_predict_memory as b; "
                        "b.build_run(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))",
                        str(Path(__file__).resolve().parent), str(template), str(args.size), str(args.seed)],
                       check=True)
        rows = []
        for n in counts:
            data = work / f"data{n}"
            paint_dataset(data, n_train=1, n_test=n, size=args.size, seed=args.seed, progress=False)
            run = work / f"run{n}"
            if run.exists():
                shutil.rmtree(run)
            shutil.copytree(template, run)
            proc = subprocess.run([sys.executable, __file__, "--child", "--data", str(data), "--run", str(run),
                                   "--tta", str(args.tta), "--batch-size", str(args.batch_size)],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                sys.stderr.write(proc.stderr[-3000:])
                raise SystemExit(f"predict on {n} chips failed (exit {proc.returncode})")
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            if result["n_chips"] != n or result["failed"]:
                raise SystemExit(f"predict on {n} chips: {result}")
            rows.append(result)
            print(f"  {n} chips: done", flush=True)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)

    print()
    print(f"{'chips':>6} {'peak RSS MB':>12} {'before predict MB':>18} {'added MB':>9} {'chips/s':>8} {'wall s':>7}")
    for r in rows:
        print(f"{r['n_chips']:>6} {r['peak_rss_mb']:>12.1f} {r['rss_before_mb']:>18.1f} "
              f"{r['peak_rss_mb'] - r['rss_before_mb']:>9.1f} {r['n_chips'] / r['predict_seconds']:>8.0f} "
              f"{r['wall_seconds']:>7.1f}")
    base = rows[0]
    print()
    for r in rows[1:]:
        ratio = r["peak_rss_mb"] / base["peak_rss_mb"]
        print(f"peak({r['n_chips']}) / peak({base['n_chips']}) = {ratio:.3f}  "
              f"(target < {TARGET}: {'met' if ratio < TARGET else 'NOT met'})")
    print(f"chips are read in chunks of {rows[0]['chunk']}; chips/s is predict's own timing (model loaded, TTA "
          f"included); load average {os.getloadavg()[0]:.1f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
