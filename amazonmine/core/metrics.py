"""F2 and friends in NumPy: the Kaggle metric and the per-label view of it.

Kaggle scored the Planet competition by the mean over images of F-beta with beta = 2 (recall weighs four
times precision: a missed mine costs more than a false alarm). It equals
``sklearn.metrics.fbeta_score(y, p, beta=2, average="samples")``; this vectorised form is what the threshold
search calls thousands of times.

Truth matrices may hold -1 (:data:`amazonmine.core.data.UNKNOWN`) where a chip was never annotated for a label: such
an entry is neither a positive nor a negative, so a decision on it is no hit, no false alarm and no miss (it
leaves every score as if the label were not in the chip's vocabulary). Boolean and 0/1 truths have none.
"""

from __future__ import annotations

import numpy as np

BETA = 2.0


def truth_and_decisions(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(positives, negatives, decisions on annotated entries) as boolean matrices; an entry below 0 in
    ``y_true`` is unannotated: in neither of the first two, and its decision dropped from the third."""
    truth = np.asarray(y_true)
    y_pred = np.asarray(y_pred, dtype=bool)
    if truth.dtype == bool:
        return truth, ~truth, y_pred
    if truth.dtype.kind == "u":  # unsigned (the 0/1 uint8 of a fully annotated set): nothing unannotated
        positive = truth > 0
        return positive, ~positive, y_pred
    positive, known = truth > 0, truth >= 0
    return positive, known & ~positive, y_pred & known


def per_image_f2(y_true: np.ndarray, y_pred: np.ndarray, beta: float = BETA) -> np.ndarray:
    """F-beta of each row. A row with no true and no predicted label scores 1 (nothing to find, none claimed).
    Unannotated entries (below 0 in ``y_true``) count neither way."""
    y_true, negative, y_pred = truth_and_decisions(y_true, y_pred)
    tp = np.count_nonzero(y_true & y_pred, axis=1).astype(np.float64)
    fp = np.count_nonzero(negative & y_pred, axis=1)
    fn = np.count_nonzero(y_true & ~y_pred, axis=1)
    b2 = beta * beta
    denom = (1 + b2) * tp + b2 * fn + fp
    return np.where(denom > 0, (1 + b2) * tp / np.maximum(denom, 1e-12), 1.0)


def mean_f2(y_true: np.ndarray, y_pred: np.ndarray, beta: float = BETA) -> float:
    return float(per_image_f2(y_true, y_pred, beta).mean())


def per_label_scores(y_true: np.ndarray, y_pred: np.ndarray, beta: float = BETA) -> dict[str, np.ndarray]:
    """Per-label precision, recall, F-beta, positives and predicted positives (label-wise, not per image);
    unannotated entries count neither way."""
    y_true, _, y_pred = truth_and_decisions(y_true, y_pred)
    tp = np.count_nonzero(y_true & y_pred, axis=0).astype(np.float64)
    pred_pos = np.count_nonzero(y_pred, axis=0)
    true_pos = np.count_nonzero(y_true, axis=0)
    precision = np.divide(tp, pred_pos, out=np.zeros_like(tp), where=pred_pos > 0)
    recall = np.divide(tp, true_pos, out=np.zeros_like(tp), where=true_pos > 0)
    b2 = beta * beta
    denom = b2 * precision + recall
    fbeta = np.divide((1 + b2) * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return {"precision": precision, "recall": recall, "f2": fbeta, "support": true_pos, "predicted": pred_pos}


# --- uncertainty -------------------------------------------------------------------------------------------

def bootstrap_intervals(y_true: np.ndarray, y_pred: np.ndarray, draws: int = 1000, seed: int = 0,
                        level: float = 0.95, beta: float = BETA, chunk: int = 0) -> dict:
    """Percentile bootstrap intervals (chips resampled with replacement) for the mean F-beta and each label's
    precision and recall.

    Returns {"mean_f2": (lo, hi), "precision": (L, 2), "recall": (L, 2)}; a label's bound is NaN when (almost)
    no resample has anything to divide by (no positive, or nothing predicted). A rare label's recall moves by
    a whole chip per positive, so its interval is what says how far the point estimate can be trusted.

    A resample's sums are a count vector times a per-chip table: the draws are index matrices, turned into
    counts per chip with one bincount per chunk, then one matrix product gives every statistic of every draw.
    """
    if np.shape(y_true) != np.shape(y_pred) or np.ndim(y_true) != 2:
        raise ValueError(f"labels {np.shape(y_true)} and decisions {np.shape(y_pred)} must both be (N, L)")
    f2_of_chip = per_image_f2(y_true, y_pred, beta)
    y_true, _, y_pred = truth_and_decisions(y_true, y_pred)
    if draws < 1:
        raise ValueError(f"draws must be at least 1, got {draws}")
    n, n_labels = y_true.shape
    if n == 0:
        nan = np.full((n_labels, 2), np.nan)
        return {"mean_f2": (float("nan"), float("nan")), "precision": nan, "recall": nan.copy()}
    table = np.concatenate([f2_of_chip[:, None], y_true & y_pred, y_pred, y_true],
                           axis=1).astype(np.float64)
    # A chunk holds about two million indices: memory stays bounded for any number of chips, and the chunks are
    # still large enough for the bincount and the product to run at full speed.
    chunk = chunk or max(1, min(draws, 2_000_000 // n))
    from threadpoolctl import threadpool_limits  # scikit-learn's own dependency

    rng = np.random.default_rng(seed)
    sums = np.empty((draws, table.shape[1]))
    # One BLAS thread: on cores another job is using, a threaded BLAS spends far longer waiting for its threads
    # than multiplying these thin products.
    with threadpool_limits(limits=1, user_api="blas"):
        for start in range(0, draws, chunk):
            c = min(chunk, draws - start)
            index = rng.integers(0, n, size=(c, n)) + (np.arange(c) * n)[:, None]
            counts = np.bincount(index.ravel(), minlength=c * n).reshape(c, n).astype(np.float64)
            sums[start:start + c] = counts @ table
    tp, predicted, positives = (sums[:, 1 + i * n_labels:1 + (i + 1) * n_labels] for i in range(3))
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(predicted > 0, tp / predicted, np.nan)
        recall = np.where(positives > 0, tp / positives, np.nan)
    tail = 100 * (1 - level) / 2
    q = [tail, 100 - tail]
    f2 = np.percentile(sums[:, 0] / n, q)
    return {"mean_f2": (float(f2[0]), float(f2[1])), "precision": _nan_percentile(precision, q),
            "recall": _nan_percentile(recall, q)}


def _nan_percentile(values: np.ndarray, q: list[float]) -> np.ndarray:
    """(L, 2) percentiles per column over the draws where the statistic exists; NaN where it (almost) never does."""
    out = np.full((values.shape[1], 2), np.nan)
    defined = np.isfinite(values).mean(axis=0)
    # Fewer than half the draws defining a label's statistic: its resamples mostly lack the label, and an
    # interval over the lucky few would look narrower than the truth.
    for j in np.flatnonzero(defined >= 0.5):
        column = values[:, j]
        out[j] = np.percentile(column[np.isfinite(column)], q)
    return out


def paired_mean(diff: np.ndarray, draws: int, seed: int) -> tuple[float, float, float]:
    """Mean of per-chip differences between two ways of deciding the same chips, and its 95% interval, the chips
    resampled ``draws`` times (both sides on the same draw, so what the chips share cancels)."""
    resampled = np.random.default_rng(seed).integers(0, len(diff), size=(draws, len(diff)))
    lo, hi = np.percentile(diff[resampled].mean(axis=1), [2.5, 97.5])
    return float(diff.mean()), float(lo), float(hi)
