"""How well and how fast the split stratifies the real Planet labels, next to a plain shuffled KFold.

    .venv/bin/python scripts/bench_split.py [--labels ../shared/data/planet_train_v2_labels.csv] [--folds 5]

For every label and fold, the relative deviation is |share of the label in the fold / share overall - 1|.
Printed: the worst deviation over the labels with at least 300 positives and over all labels, per splitter,
the seconds each split takes (best of --repeats), the seconds the oversampling manifest adds, and a per-label
table of the worst deviation.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from amazonmine.core.config import SplitConfig
from amazonmine.core.data import LABELS, read_labels, tags_to_matrix
from amazonmine.stages.split import RarePolicy, build_manifest, choose_rare_labels, make_folds

DEFAULT_LABELS = Path(__file__).resolve().parents[2] / "shared" / "data" / "planet_train_v2_labels.csv"
MIN_POSITIVES = 300


def shuffled_kfold(matrix: np.ndarray, k: int, seed: int) -> np.ndarray:
    from sklearn.model_selection import KFold

    folds = np.empty(len(matrix), dtype=np.int64)
    for fold, (_, test) in enumerate(KFold(k, shuffle=True, random_state=seed).split(matrix)):
        folds[test] = fold
    return folds


def worst_deviation(matrix: np.ndarray, folds: np.ndarray, k: int) -> np.ndarray:
    """Per label, the largest relative deviation of a fold's positive share from the overall share."""
    overall = matrix.mean(axis=0)
    per_fold = np.stack([matrix[folds == fold].mean(axis=0) for fold in range(k)])
    return np.abs(per_fold / overall - 1).max(axis=0)


def timed(fn, repeats: int):
    best, result = float("inf"), None
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - started)
    return result, best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=Path, default=DEFAULT_LABELS)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    matrix = tags_to_matrix(read_labels(args.labels)["tags"]).astype(np.float64)
    k = args.folds
    common = matrix.sum(axis=0) >= MIN_POSITIVES
    print(f"{args.labels}: {len(matrix)} chips x {matrix.shape[1]} labels, k={k}, seed={args.seed}")

    results = {}
    for name, fn in (("iterative", lambda: make_folds(matrix, k, args.seed)),
                     ("kfold", lambda: shuffled_kfold(matrix, k, args.seed))):
        folds, seconds = timed(fn, args.repeats)
        worst = worst_deviation(matrix, folds, k)
        results[name] = worst
        print(f"{name:>9}: worst deviation {worst[common].max():.1%} (labels >= {MIN_POSITIVES} positives), "
              f"{worst.max():.1%} (all labels); split {seconds:.2f} s")

    names = [f"train_{i}" for i in range(len(matrix))]
    folds = make_folds(matrix, k, args.seed)
    plan = SplitConfig()  # the default rare-label settings
    rare = choose_rare_labels(matrix, plan.rare_threshold)
    policy = RarePolicy(tuple(rare), plan.rare_target, plan.rare_max_factor)
    _, seconds = timed(lambda: build_manifest(names, matrix, folds, k, policy, args.seed), args.repeats)
    print(f"manifest (rare {', '.join(rare)}; target {plan.rare_target}, {plan.rare_max_factor} views): "
          f"{seconds:.2f} s")

    print(f"\n{'label':<18}{'positives':>10}{'iterative':>11}{'kfold':>8}")
    for j in np.argsort(matrix.sum(axis=0)):
        print(f"{LABELS[j]:<18}{int(matrix[:, j].sum()):>10}{results['iterative'][j]:>11.1%}"
              f"{results['kfold'][j]:>8.1%}")


if __name__ == "__main__":
    main()
