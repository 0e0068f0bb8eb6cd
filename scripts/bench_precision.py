"""Training images/s per numeric setting: float32, mixed bfloat16, XLA, and both, measured in one run.

    .venv/bin/python scripts/bench_precision.py [--size 48] [--batch-size 64 | --batch-sizes 32,64,128]
                                                [--steps 12] [--rounds 3] [--data data/planet_32px]
                                                [--chips 2048] [--backbone densenet121] [--settings ...]

One model per setting (``amazonmine.neural.model.build_model`` under that Keras dtype policy, compiled as
``amazonmine.neural.trainer`` compiles it, with ``jit_compile`` for the XLA rows and the weight average of ``train.ema``
for the EMA rows, which ``--settings`` can add) trains on the same pre-decoded chips
held in memory, so the input pipeline is out of the figure. The settings are measured in turn, round after
round (``--rounds``), so that a change in the machine's load hits all of them alike; the table shows the median
round and the spread (min-max) of each, and every row's ratio to float32 in the same round.

``--batch-sizes`` measures every setting at each batch size (one model each, in the same rounds): on a CPU a
bigger batch is not always more images per second. Ratios are to float32 at the first size (or to the first row
when float32 is not among ``--settings``).

The chips are the real 32-px competition chips when ``--data`` is a Kaggle-layout folder (default
``data/planet_32px``, which ``scripts/bench_real32.py`` unpacks), else synthetic chips. The first steps of every
model (tracing, and for XLA its compilation) are not timed; the compile time is printed apart.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from bench_train import chip_paths, images_per_s  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SETTINGS = {  # name -> (Keras dtype policy, jit_compile, train.ema)
    "float32": ("float32", False, 0.0),
    "mixed_bfloat16": ("mixed_bfloat16", False, 0.0),
    "float32 + XLA": ("float32", True, 0.0),
    "mixed_bfloat16 + XLA": ("mixed_bfloat16", True, 0.0),
    # Not numerics, but a per-step cost of its own: the weight average updated after every step.
    "float32 + EMA": ("float32", False, 0.998),
    "float32 + XLA + EMA": ("float32", True, 0.998),
}
DEFAULT_SETTINGS = ["float32", "mixed_bfloat16", "float32 + XLA", "mixed_bfloat16 + XLA"]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=48, help="Model input size (train.image_size).")
    batch = parser.add_mutually_exclusive_group()
    batch.add_argument("--batch-size", type=int, default=64)
    batch.add_argument("--batch-sizes", default="",
                       help="Comma-separated batch sizes to compare in one run (instead of --batch-size).")
    parser.add_argument("--steps", type=int, default=12, help="Timed training steps per setting and round.")
    parser.add_argument("--warmup", type=int, default=3, help="Untimed steps before them (tracing, XLA compile).")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--chips", type=int, default=2048)
    default_data = REPO / "data" / "planet_32px"
    chips = parser.add_mutually_exclusive_group()
    chips.add_argument("--data", type=Path, default=default_data if default_data.is_dir() else None,
                       help="A Kaggle-layout folder (default: data/planet_32px when unpacked; else synthetic).")
    chips.add_argument("--synthetic", action="store_true", help="Synthetic chips even when data/planet_32px exists.")
    parser.add_argument("--backbone", default="densenet121")
    parser.add_argument("--settings", default=",".join(DEFAULT_SETTINGS),
                        help=f"Comma-separated subset of: {', '.join(SETTINGS)}.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.synthetic:
        args.data = None
    elif args.data is not None and not args.data.is_dir():
        parser.error(f"--data {args.data}: not a folder")
    args.settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    unknown = [s for s in args.settings if s not in SETTINGS]
    if unknown:
        parser.error(f"unknown setting(s) {unknown}; choose from {list(SETTINGS)}")
    try:
        args.batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()] or [args.batch_size]
    except ValueError:
        parser.error(f"--batch-sizes must be whole numbers separated by commas, got {args.batch_sizes!r}")
    if args.warmup < 1 or args.steps < 1 or args.rounds < 1 or min(args.batch_sizes) < 1 \
            or args.chips < max(args.batch_sizes):
        parser.error("need --warmup >= 1, --steps >= 1, --rounds >= 1, batch sizes >= 1 and --chips >= the "
                     "largest batch size")
    return args


def build(setting: str, tc, steps: int):
    """A compiled model under the setting's dtype policy (the policy is read when layers are made)."""
    import keras

    from amazonmine.neural.fitting import make_loss, make_metric, make_optimizer
    from amazonmine.neural.model import build_model

    policy, jit, ema = SETTINGS[setting]
    tc = tc.model_copy(update={"ema": ema})
    keras.mixed_precision.set_global_policy(policy)
    try:
        model = build_model(tc, channels=3, image_format="jpg")
    finally:
        keras.mixed_precision.set_global_policy("float32")
    model.compile(optimizer=make_optimizer(tc, steps), loss=make_loss(tc), metrics=[make_metric()], jit_compile=jit)
    return model


def main(argv=None) -> int:
    args = parse_args(argv)
    import tensorflow as tf

    from amazonmine.core.config import load_config
    from amazonmine.core.errors import AmazonmineError
    from amazonmine.neural.datasets import preflight
    from amazonmine.neural.device import setup_device

    setup_device(False)
    args.sizes = [args.size]
    cfg = load_config(None, [f"train.backbone={args.backbone}", "train.weights=none", f"train.image_size={args.size}",
                             f"train.batch_size={args.batch_sizes[0]}", "train.verbose=0"])
    with tempfile.TemporaryDirectory(prefix="bench_precision_") as tmp:
        try:
            paths, labels = chip_paths(args, args.size, Path(tmp))
            pixels = preflight(paths, args.size, cache=True, progress=False).pixels.astype(np.float32)
        except AmazonmineError as exc:
            raise SystemExit(f"error: {exc}") from None
    labels = labels.astype(np.float32)
    if len(pixels) < max(args.batch_sizes):
        raise SystemExit(f"error: {len(pixels)} chips, fewer than one batch of {max(args.batch_sizes)}")
    # Whole batches only: a short last one would be timed as a full one (and make XLA compile again).
    memory = {b: tf.data.Dataset.from_tensor_slices((pixels, labels)).batch(b, drop_remainder=True).cache()
              .repeat().prefetch(tf.data.AUTOTUNE) for b in args.batch_sizes}
    source = f"{len(paths)} real chips from {args.data}" if args.data else f"{len(paths)} synthetic chips"
    batches = ", ".join(map(str, args.batch_sizes))
    print(f"bench_precision: {args.backbone} from scratch at {args.size} px, batch {batches}, {source}; "
          f"{args.warmup} warm-up + {args.steps} timed steps per setting, {args.rounds} rounds; {os.cpu_count()} "
          f"cores, load average {os.getloadavg()[0]:.1f}; TF {tf.__version__}", flush=True)

    variants = {(f"{s}, batch {b}" if len(args.batch_sizes) > 1 else s): (s, b)
                for s in args.settings for b in args.batch_sizes}
    models, first_s = {}, {}
    for name, (setting, batch) in variants.items():
        began = time.perf_counter()
        models[name] = build(setting, cfg.train, args.warmup + args.steps)
        # The first call traces (and for XLA compiles); it is timed apart from the rounds.
        images_per_s(models[name], memory[batch], argparse.Namespace(warmup=1, steps=1, batch_size=batch))
        first_s[name] = time.perf_counter() - began
        print(f"  {name}: built and first step in {first_s[name]:.0f} s", flush=True)

    rounds: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(args.rounds):
        for name, (_, batch) in variants.items():
            timing = argparse.Namespace(warmup=args.warmup, steps=args.steps, batch_size=batch)
            rounds[name].append(images_per_s(models[name], memory[batch], timing))
        print(f"  round {r + 1}: " + ", ".join(f"{name} {rounds[name][-1]:.1f}" for name in variants), flush=True)

    # Ratios to float32 at the first batch size, or to the first row when float32 is not among the settings.
    reference = next((name for name, (s, b) in variants.items() if s == "float32" and b == args.batch_sizes[0]),
                     next(iter(variants)))
    base = rounds[reference]
    width = max(22, *map(len, variants))
    ratio_header = f"x {reference} (median of rounds)"
    print()
    print(f"{'setting':<{width}} {'img/s (median)':>15} {'min-max':>15} {ratio_header:>29} "
          f"{'build + first step s':>21}")
    for name in variants:
        values = rounds[name]
        ratio = f"{statistics.median(v / b for v, b in zip(values, base)):.3f}"
        print(f"{name:<{width}} {statistics.median(values):>15.1f} {f'{min(values):.1f}-{max(values):.1f}':>15} "
              f"{ratio:>{max(29, len(ratio_header))}} {first_s[name]:>21.0f}")
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
