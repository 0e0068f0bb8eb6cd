"""Training images/s of one process against two workers over loopback, at the same global batch.

Both runs train the mini model on the same synthetic chips and read their speed from the fold's summary.json
(training steps only, validation excluded). On one machine the two workers share its cores, so this measures
what the cluster costs (gradient exchange, coordination), not what a second machine would bring.

    python scripts/bench_multiworker.py [--image-size 64] [--global-batch 32] [--steps 30] [--epochs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from amazonmine.testing import free_loopback_ports


def train(base: Path, sets: list[str], workers: int) -> dict:
    args = [sys.executable, "-m", "amazonmine.cli", "train", "--fold", "0"] + [a for s in sets for a in ("--set", s)]
    ports = free_loopback_ports(workers)
    procs = []
    for index in range(workers):
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
        if workers > 1:
            env["TF_CONFIG"] = json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                                           "task": {"type": "worker", "index": index}})
        procs.append(subprocess.Popen(args + (["--cluster", "none"] if workers == 1 else []), env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate()[0] for p in procs]
    if any(p.returncode for p in procs):
        raise SystemExit("\n".join(outputs))
    run_dir = next(Path(s.split("=", 1)[1]) for s in sets if s.startswith("run.dir="))
    return json.loads((run_dir / "fold0" / "summary.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--global-batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--chips", type=int, default=200)
    a = parser.parse_args()

    from amazonmine.core.config import load_config
    from amazonmine.stages.split import run_split
    from amazonmine.stages.synth import paint_dataset

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        paint_dataset(base / "data", n_train=a.chips, n_test=4, size=a.image_size, seed=3, progress=False)
        common = ["dehaze.enabled=false", "split.folds=2", "train.backbone=densenet_mini", "train.weights=none",
                  f"train.image_size={a.image_size}", f"train.epochs={a.epochs}", f"train.steps_per_epoch={a.steps}",
                  "train.warmup_epochs=0", "train.verbose=0", "train.cache=true", "train.bn_recalibration_batches=0",
                  "predict.tta=1", f"data.root={base / 'data'}"]
        rows = []
        for workers in (1, 2):
            sets = common + [f"run.dir={base / f'run{workers}'}", f"train.batch_size={a.global_batch // workers}"]
            run_split(load_config(None, sets))
            started = time.perf_counter()
            summary = train(base, sets, workers)
            rows.append((workers, summary["train_images_per_s"], summary["oof_f2_flat"], time.perf_counter() - started))
    print(f"{os.cpu_count()} cores, mini model at {a.image_size} px, global batch {a.global_batch}, "
          f"{a.epochs} epochs of {a.steps} steps")
    for workers, speed, f2, wall in rows:
        print(f"  {workers} worker(s): {speed:6.1f} images/s in training steps, OOF F2 {f2:.4f}, "
              f"{wall:.0f} s wall (start-up included)")


if __name__ == "__main__":
    main()
