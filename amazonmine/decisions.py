"""Decisions from probabilities: decoding with per-label thresholds, and fitting those thresholds.

``tune`` fits the thresholds; ``predict``, ``evaluate`` and ``scan`` decide with them. Kaggle scores the mean
over images of F2, not a per-label metric, so the best threshold of a label depends on what the other labels
already predict for the same chips: a rare label's extra false alarm costs little on a chip that already has
five correct tags and a lot on a chip with one. The search is therefore coordinate ascent on the dataset's mean
F2: one label at a time, the other thresholds held, several passes.

One step is exact and cheap. With the other thresholds held, a chip's F2 takes only two values: one when the
label's probability clears the candidate threshold ("on") and one when it does not ("off"). Both come from
one decode each; the mean F2 at every candidate threshold is then the sum of the "off" scores plus the gains
(on - off) of the chips whose probability clears it, which a bincount and a reversed cumulative sum give for
all candidates at once (see scripts/bench_tune.py for its speed on a 40k x 17 matrix).

Weather decoding: Planet gives every chip exactly one weather label (clear, cloudy, haze, partly_cloudy) and a
cloudy chip no land label. With ``weather_decoding`` on, the weather is the argmax of the four weather
probabilities (their thresholds are unused) and a cloudy decision drops the land labels; the land thresholds
are fitted under that decoding. With it off, each label is thresholded on its own, and a chip with no weather
label above threshold still gets the most probable one, so every submitted chip has its weather label.
"""

from __future__ import annotations

import numpy as np

from amazonmine.data import LABELS, LAND_INDEX, WEATHER_INDEX, WEATHER_LABELS
from amazonmine.metrics import per_image_f2

_CLOUDY = WEATHER_LABELS.index("cloudy")  # column of cloudy within the weather group
_TIE = 1e-12  # mean-F2 differences below this are ties (float noise of the cumulative sums)


# --- decoding ----------------------------------------------------------------------------------------------

def _decode(probs: np.ndarray, thresholds: np.ndarray, weather_decoding: bool) -> np.ndarray:
    pred = probs >= thresholds
    weather_probs = probs[:, WEATHER_INDEX]
    top = np.zeros_like(weather_probs, dtype=bool)
    top[np.arange(len(probs)), weather_probs.argmax(axis=1)] = True
    if weather_decoding:
        pred[:, WEATHER_INDEX] = top
        pred[np.ix_(top[:, _CLOUDY], LAND_INDEX)] = False
    else:
        none = ~pred[:, WEATHER_INDEX].any(axis=1)
        pred[np.ix_(none, WEATHER_INDEX)] = top[none]
    return pred


def decode(probs: np.ndarray, thresholds: np.ndarray, weather_decoding: bool) -> np.ndarray:
    """(N, 17) probabilities -> (N, 17) bool decisions; a probability equal to its threshold counts as on.

    Every row gets at least one weather label; with ``weather_decoding`` exactly one, and none of the land
    labels when that one is cloudy.
    """
    probs = np.asarray(probs, dtype=np.float64)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] != len(LABELS):
        raise ValueError(f"expected (N, {len(LABELS)}) probabilities, got shape {probs.shape}")
    if thresholds.shape != (len(LABELS),):
        raise ValueError(f"expected {len(LABELS)} thresholds, got shape {thresholds.shape}")
    return _decode(probs, thresholds, weather_decoding)


# --- the search --------------------------------------------------------------------------------------------

def _candidates(column: np.ndarray, grid: int, current: float) -> np.ndarray:
    # grid >= 3: the interior points of linspace(0, 1, grid) (0.01 steps for 101); grid == 0: every distinct
    # probability, the exact maximiser on the fitted chips. The current value is always a candidate, so a
    # step never lowers the objective.
    values = np.unique(column) if grid == 0 else np.linspace(0.0, 1.0, grid)[1:-1]
    return np.union1d(values, [current])


def _on_off_scores(y_true, probs, thresholds, j, weather_decoding):
    """Per-chip F2 with label j forced on and forced off, everything else decoded as usual."""
    t = thresholds.copy()
    t[j] = -np.inf
    on = per_image_f2(y_true, _decode(probs, t, weather_decoding))
    t[j] = np.inf
    off = per_image_f2(y_true, _decode(probs, t, weather_decoding))
    return on, off


def _curve(column, on, off, candidates):
    # A chip is "on" at candidate c_k iff p >= c_k iff k < (number of candidates <= p).
    n_below = np.searchsorted(candidates, column, side="right")
    gain_by_count = np.bincount(n_below, weights=on - off, minlength=len(candidates) + 1)
    gain = np.cumsum(gain_by_count[::-1])[::-1][1:]
    return (off.sum() + gain) / len(column)


def threshold_curve(y_true, probs, thresholds, j, grid=101, weather_decoding=True):
    """Mean F2 of the dataset as label j's threshold moves over the candidates, the others held.

    Returns (candidates, mean_f2) sorted by candidate. The curve the coordinate ascent climbs, and the one the
    report draws.
    """
    y_true = np.asarray(y_true, dtype=bool)
    probs = np.asarray(probs, dtype=np.float64)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    on, off = _on_off_scores(y_true, probs, thresholds, j, weather_decoding)
    candidates = _candidates(probs[:, j], grid, thresholds[j])
    return candidates, _curve(probs[:, j], on, off, candidates)


def _best(candidates, scores, current):
    # Among ties, the candidate nearest the current threshold: keeps rare labels (flat curves) where they were.
    ties = np.flatnonzero(scores >= scores.max() - _TIE)
    return float(candidates[ties[np.argmin(np.abs(candidates[ties] - current))]])


def fit_thresholds(y_true, probs, start=0.2, passes=3, grid=101, weather_decoding=True) -> np.ndarray:
    """Coordinate ascent over labels on the mean per-image F2. Returns 17 thresholds in LABELS order.

    ``grid`` >= 3 searches the interior of linspace(0, 1, grid); 0 searches every distinct probability.
    Under ``weather_decoding`` the weather thresholds do not affect the decisions and stay at ``start``.
    """
    y_true = np.asarray(y_true, dtype=bool)
    probs = np.asarray(probs, dtype=np.float64)
    if y_true.shape != probs.shape or probs.ndim != 2 or probs.shape[1] != len(LABELS):
        raise ValueError(f"labels {y_true.shape} and probabilities {probs.shape} must both be (N, {len(LABELS)})")
    thresholds = np.full(len(LABELS), float(start))
    labels = LAND_INDEX if weather_decoding else range(len(LABELS))
    for _ in range(passes):
        changed = False
        for j in labels:
            candidates, scores = threshold_curve(y_true, probs, thresholds, j, grid, weather_decoding)
            best = _best(candidates, scores, thresholds[j])
            changed |= best != thresholds[j]
            thresholds[j] = best
        if not changed:
            break
    return thresholds
