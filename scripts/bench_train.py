"""Training images/s through the real input pipeline vs the same model fed pre-decoded pixels from memory.

    .venv/bin/python scripts/bench_train.py [--sizes 32,64] [--batch-size 32] [--steps 8] [--warmup 2]
                                            [--chips 512] [--data DIR] [--backbone densenet121] [--no-cached]
                                            [--rounds 1] [--deterministic]

For each input size, one model (``amazonmine.neural.model.build_model``, DenseNet121 from scratch by default) is
compiled as ``amazonmine.neural.trainer`` compiles it (AdamW + the configured schedule, binary cross-entropy, the
mean-F2 metric, from ``amazonmine.neural.fitting``) and trained with ``model.fit`` on, in turn:

* pipeline    -- ``amazonmine.neural.datasets.preflight`` + ``make_dataset(..., stream=TrainingStream(...))``: every
                 chip read from disk and decoded per element, shuffled, random dihedral view + brightness/contrast
                 jitter (what ``train.cache=false`` training does);
* in-memory   -- the same chips pre-decoded and resized once into one float32 array, served by
                 ``from_tensor_slices(...).batch().cache().repeat()``: no per-element work at all (the ceiling);
* cached      -- ``preflight(cache=True)`` + the same ``make_dataset`` (what ``train.cache=true`` does):
                 pixels in memory, augmentation still per element.

All variants use the same batch size and the same number of timed steps; the first ``--warmup`` steps of each
variant (graph tracing, pipeline start-up) are not timed. Chips are made with ``amazonmine.stages.synth`` at the
size being measured (or read from a Kaggle-layout folder with ``--data``, resized by the pipeline). The ratio
pipeline / in-memory is the pipeline's efficiency; the target is >= 0.95.

The figures are wall-clock throughput on whatever else the machine is doing: on a shared machine, run it more
than once (``--rounds``) and read the spread before trusting a difference of a few percent.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

TARGET = 0.95


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="32,64", help="Model input sizes to measure, comma-separated.")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8, help="Timed training steps per variant.")
    parser.add_argument("--warmup", type=int, default=2, help="Untimed steps before them (>= 1: tracing).")
    parser.add_argument("--chips", type=int, default=512, help="Chips to generate (or to take from --data).")
    parser.add_argument("--data", type=Path, default=None, help="A Kaggle-layout folder instead of synthetic chips.")
    parser.add_argument("--backbone", default="densenet121", help="train.backbone (densenet121, densenet_mini, ...).")
    parser.add_argument("--no-cached", action="store_true", help="Skip the cache=True row.")
    parser.add_argument("--rounds", type=int, default=1, help="Repeat every measurement; the best round is shown.")
    parser.add_argument("--deterministic", action="store_true",
                        help="Enable TF op determinism first, as train.py does when train.deterministic is true.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.sizes = [int(s) for s in str(args.sizes).split(",") if s.strip()]
    if args.warmup < 1 or args.steps < 1 or args.batch_size < 1 or args.chips < args.batch_size:
        parser.error("need --warmup >= 1, --steps >= 1, and --chips >= --batch-size")
    if any(s < 32 for s in args.sizes):
        parser.error("sizes must be at least 32 (train.image_size's lower bound)")
    return args


def chip_paths(args, size: int, workdir: Path):
    """(paths, labels matrix) of the chips to train on at this size."""
    from amazonmine.core.data import PlanetLayout, tags_to_matrix
    from amazonmine.stages.synth import paint_dataset

    if args.data is not None:
        from amazonmine.core.config import load_config

        layout = PlanetLayout.from_config(load_config(None, [f"data.root={args.data}"]).data)
        frame, matrix = layout.load_train()
        frame, matrix = frame.head(args.chips), matrix[: args.chips]
        return [layout.train_dir / f"{n}.jpg" for n in frame["image_name"]], matrix
    root = workdir / f"synth{size}"
    paint_dataset(root, n_train=args.chips, n_test=0, size=size, seed=args.seed, rare_boost=20.0, progress=False)
    import pandas as pd

    frame = pd.read_csv(root / "train_v2.csv", dtype=str, keep_default_na=False)
    return [root / "train-jpg" / f"{n}.jpg" for n in frame["image_name"]], tags_to_matrix(frame["tags"])


def make_timer():
    import keras

    class StepTimer(keras.callbacks.Callback):
        """Wall time at the end of every training step."""

        def on_train_begin(self, logs=None):
            self.times = []

        def on_train_batch_end(self, batch, logs=None):
            self.times.append(time.perf_counter())

    return StepTimer()


def images_per_s(model, dataset, args) -> float:
    timer = make_timer()
    model.fit(dataset, epochs=1, steps_per_epoch=args.warmup + args.steps, callbacks=[timer], verbose=0,
              shuffle=False)
    t = timer.times
    if len(t) != args.warmup + args.steps:  # pragma: no cover - the dataset ran out
        raise RuntimeError(f"expected {args.warmup + args.steps} steps, got {len(t)}")
    return args.steps * args.batch_size / (t[-1] - t[args.warmup - 1])


def measure_size(args, size: int, workdir: Path) -> dict:
    import tensorflow as tf

    from amazonmine.core.config import load_config
    from amazonmine.neural.datasets import Batching, TrainingStream, make_dataset, preflight
    from amazonmine.neural.fitting import make_loss, make_metric, make_optimizer
    from amazonmine.neural.model import build_model

    began = time.perf_counter()
    paths, labels = chip_paths(args, size, workdir)
    n = len(paths)
    labels = labels.astype(np.float32)
    cfg = load_config(None, [f"train.backbone={args.backbone}", "train.weights=none", f"train.image_size={size}",
                             f"train.batch_size={args.batch_size}", "train.verbose=0"])
    tc = cfg.train
    rows = np.arange(n)

    def pipeline(chips):
        stream = TrainingStream(args.seed, 0, tc.augment, tc.brightness_jitter, tc.contrast_jitter)  # endless, as train
        return make_dataset(chips, rows, labels, None, Batching(size, args.batch_size), stream=stream)

    streamed = preflight(paths, size, cache=False, progress=False)
    cached = preflight(paths, size, cache=True, progress=False)
    pixels = cached.pixels.astype(np.float32)  # (N, S, S, 3) R, G, B raw values, decoded and resized once
    memory = (tf.data.Dataset.from_tensor_slices((pixels, labels)).batch(args.batch_size).cache().repeat()
              .prefetch(tf.data.AUTOTUNE))
    variants = {"pipeline": pipeline(streamed), "in-memory": memory}
    if not args.no_cached:
        variants["cached"] = pipeline(cached)

    model = build_model(tc, channels=3, image_format="jpg")
    model.compile(optimizer=make_optimizer(tc, args.warmup + args.steps), loss=make_loss(tc), metrics=[make_metric()],
                  jit_compile=False)
    setup_seconds = time.perf_counter() - began
    best: dict[str, float] = {}
    for _ in range(args.rounds):
        for name, dataset in variants.items():
            best[name] = max(best.get(name, 0.0), images_per_s(model, dataset, args))
    import keras

    keras.backend.clear_session()
    return {"size": size, "chips": n, "setup_s": setup_seconds, **best}


def main(argv=None) -> int:
    args = parse_args(argv)
    import tensorflow as tf

    from amazonmine.neural.device import setup_device

    setup_device(False)  # the CPU, float32: as `amazonmine train` without --gpu
    if args.deterministic:
        tf.config.experimental.enable_op_determinism()
    load = os.getloadavg()
    print(f"bench_train: {args.backbone} from scratch, batch {args.batch_size}, {args.warmup} warm-up + "
          f"{args.steps} timed steps per variant, {args.rounds} round(s), "
          f"{'--data ' + str(args.data) if args.data else f'{args.chips} synthetic chips per size'}; "
          f"{os.cpu_count()} cores, load average {load[0]:.1f} at start; TF {tf.__version__}", flush=True)
    results = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        for size in args.sizes:
            result = measure_size(args, size, Path(tmp))
            results.append(result)
            print(f"  size {size}: done ({result['setup_s']:.0f} s to make chips and build the model)", flush=True)
    header = f"{'size':>5} {'pipeline img/s':>15} {'in-memory img/s':>16} {'ratio':>6}"
    if not args.no_cached:
        header += f" {'cached img/s':>13} {'ratio':>6}"
    print()
    print(header)
    met = True
    for r in results:
        ratio = r["pipeline"] / r["in-memory"]
        met &= ratio >= TARGET
        line = f"{r['size']:>5} {r['pipeline']:>15.1f} {r['in-memory']:>16.1f} {ratio:>6.3f}"
        if "cached" in r:
            line += f" {r['cached']:>13.1f} {r['cached'] / r['in-memory']:>6.3f}"
        print(line)
    print(f"\ntarget: pipeline >= {TARGET:.2f} x in-memory at every size: {'met' if met else 'NOT met'}"
          f"  ({time.perf_counter() - started:.0f} s in all; load average {os.getloadavg()[0]:.1f} at the end)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
