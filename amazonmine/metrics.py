"""F2 and friends in NumPy: the Kaggle metric and the per-label view of it.

Kaggle scored the Planet competition by the mean over images of F-beta with beta = 2 (recall weighs four
times precision: a missed mine costs more than a false alarm). It equals
``sklearn.metrics.fbeta_score(y, p, beta=2, average="samples")``; this vectorised form is what the threshold
search calls thousands of times.
"""

from __future__ import annotations

import numpy as np

BETA = 2.0


def per_image_f2(y_true: np.ndarray, y_pred: np.ndarray, beta: float = BETA) -> np.ndarray:
    """F-beta of each row. A row with no true and no predicted label scores 1 (nothing to find, none claimed)."""
    y_true = np.asarray(y_true, dtype=bool)
    y_pred = np.asarray(y_pred, dtype=bool)
    tp = np.count_nonzero(y_true & y_pred, axis=1).astype(np.float64)
    fp = np.count_nonzero(~y_true & y_pred, axis=1)
    fn = np.count_nonzero(y_true & ~y_pred, axis=1)
    b2 = beta * beta
    denom = (1 + b2) * tp + b2 * fn + fp
    return np.where(denom > 0, (1 + b2) * tp / np.maximum(denom, 1e-12), 1.0)


def mean_f2(y_true: np.ndarray, y_pred: np.ndarray, beta: float = BETA) -> float:
    return float(per_image_f2(y_true, y_pred, beta).mean())


def per_label_scores(y_true: np.ndarray, y_pred: np.ndarray, beta: float = BETA) -> dict[str, np.ndarray]:
    """Per-label precision, recall, F-beta, positives and predicted positives (label-wise, not per image)."""
    y_true = np.asarray(y_true, dtype=bool)
    y_pred = np.asarray(y_pred, dtype=bool)
    tp = np.count_nonzero(y_true & y_pred, axis=0).astype(np.float64)
    pred_pos = np.count_nonzero(y_pred, axis=0)
    true_pos = np.count_nonzero(y_true, axis=0)
    precision = np.divide(tp, pred_pos, out=np.zeros_like(tp), where=pred_pos > 0)
    recall = np.divide(tp, true_pos, out=np.zeros_like(tp), where=true_pos > 0)
    b2 = beta * beta
    denom = b2 * precision + recall
    fbeta = np.divide((1 + b2) * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return {"precision": precision, "recall": recall, "f2": fbeta, "support": true_pos, "predicted": pred_pos}
