"""Time the threshold search on a 40k x 17 OOF-like matrix built from the real Planet labels.

    .venv/bin/python scripts/bench_tune.py [--labels ../shared/data/planet_train_v2_labels.csv] [--seed 0]

The probabilities are amazonmine.stages.tune.simulate_oof (a model-free stand-in), so the F2 figures say how much the
search recovers from per-label miscalibration, not how good a model is. Besides the timing, it answers the
two design questions on held-out chips (fit on one half, score on the other): a 0.01 grid or every distinct
probability, and weather decoding on or off. Last, the bootstrap intervals (1,000 draws) that tune and evaluate
compute on every run, timed on one fold's worth of chips and on all of them.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from amazonmine.core.data import read_labels, tags_to_matrix
from amazonmine.core.decisions import decode, fit_thresholds
from amazonmine.core.metrics import bootstrap_intervals, mean_f2
from amazonmine.testing import simulate_oof

DEFAULT_LABELS = Path(__file__).resolve().parents[2] / "shared" / "data" / "planet_train_v2_labels.csv"


def timed_fit(y, p, **kwargs):
    began = time.perf_counter()
    thresholds = fit_thresholds(y, p, **kwargs)
    return thresholds, time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=Path, default=DEFAULT_LABELS)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    y = tags_to_matrix(read_labels(args.labels)["tags"]).astype(bool)
    p = simulate_oof(y, seed=args.seed)
    flat = np.full(y.shape[1], 0.2)
    print(f"{y.shape[0]} x {y.shape[1]} OOF-like matrix from {args.labels.name}")
    print(f"flat 0.2, plain thresholds:       F2 {mean_f2(y, p >= flat):.4f}")
    print(f"flat 0.2, weather decoding:       F2 {mean_f2(y, decode(p, flat, True)):.4f}")

    print("\nfull set (fit and score on the same chips):")
    for grid in (101, 0):
        for weather in (True, False):
            t, seconds = timed_fit(y, p, grid=grid, weather_decoding=weather)
            print(f"  grid={grid:<4} weather_decoding={weather!s:<5}  {seconds:5.2f} s  "
                  f"F2 {mean_f2(y, decode(p, t, weather)):.4f}")

    rng = np.random.default_rng(args.seed)
    half = rng.permutation(len(y)) < len(y) // 2
    print("\nheld out (fit on a random half, score on the other half):")
    print(f"  flat 0.2 plain                                 F2 {mean_f2(y[~half], p[~half] >= flat):.4f}")
    for grid in (101, 0):
        for weather in (True, False):
            t, _ = timed_fit(y[half], p[half], grid=grid, weather_decoding=weather)
            print(f"  grid={grid:<4} weather_decoding={weather!s:<5}            "
                  f"F2 {mean_f2(y[~half], decode(p[~half], t, weather)):.4f}")

    decided = p >= flat
    print("\nbootstrap intervals, 1,000 draws (best of 3):")
    for n in (6500, len(y)):
        timings = []
        for _ in range(3):
            began = time.perf_counter()
            bootstrap_intervals(y[:n], decided[:n], draws=1000, seed=0)
            timings.append(time.perf_counter() - began)
        print(f"  {n:>6} chips  {min(timings):5.2f} s")


if __name__ == "__main__":
    main()
