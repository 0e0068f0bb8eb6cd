"""Per-label decision thresholds that maximise the out-of-fold mean F2, and the decoding that uses them.

Kaggle scores the mean over images of F2, not a per-label metric, so the best threshold of a label depends on
what the other labels already predict for the same chips: a rare label's extra false alarm costs little on a
chip that already has five correct tags and a lot on a chip with one. The search is therefore coordinate
ascent on the dataset's mean F2: one label at a time, the other thresholds held, several passes.

One step is exact and cheap. With the other thresholds held, a chip's F2 takes only two values: one when the
label's probability clears the candidate threshold ("on") and one when it does not ("off"). Both come from
one decode each; the mean F2 at every candidate threshold is then the sum of the "off" scores plus the gains
(on - off) of the chips whose probability clears it, which a bincount and a reversed cumulative sum give for
all candidates at once. A 40k x 17 OOF matrix is tuned in well under a second per pass.

Weather decoding: Planet gives every chip exactly one weather label (clear, cloudy, haze, partly_cloudy) and a
cloudy chip no land label. With ``weather_decoding`` on, the weather is the argmax of the four weather
probabilities (their thresholds are unused) and a cloudy decision drops the land labels; the land thresholds
are fitted under that decoding. With it off, each label is thresholded on its own, and a chip with no weather
label above threshold still gets the most probable one, so every submitted chip has its weather label.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from amazonmine.data import (
    LABELS,
    LAND_INDEX,
    WEATHER_INDEX,
    WEATHER_LABELS,
    DataError,
    PlanetLayout,
    _offenders,
    load_matrix_csv,
)
from amazonmine.io import write_json_atomic
from amazonmine.metrics import mean_f2, per_image_f2, per_label_scores

THRESHOLDS_FILE = "thresholds.json"
_OOF_PATTERN = re.compile(r"^oof_fold(\d+)\.csv$")
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


# --- model-free stand-in OOF -------------------------------------------------------------------------------

# How well a typical Planet CNN separates each label (positive-class shift of a unit-noise score); rare and
# subtle labels are hard. Rough shape of the competition's per-label F2, not measured on a model.
_SKILL = {
    "agriculture": 2.6, "artisinal_mine": 2.4, "bare_ground": 1.3, "blooming": 1.0, "blow_down": 0.8,
    "clear": 3.0, "cloudy": 3.4, "conventional_mine": 1.8, "cultivation": 1.4, "habitation": 2.0, "haze": 2.0,
    "partly_cloudy": 3.0, "primary": 3.4, "road": 2.1, "selective_logging": 1.2, "slash_burn": 0.9, "water": 2.1,
}


def simulate_oof(y_true: np.ndarray, seed: int = 0) -> np.ndarray:
    """Probabilities shaped like a CNN's out-of-fold output, for tests and the benchmark (no model needed).

    Each label's score is its truth shifted by a per-label skill plus noise (partly shared by the chip, as a
    hazy or dark chip is hard for every label); the calibrated probability is then mis-scaled and shifted per
    label, as real networks are (over-confident on common labels, timid on rare ones), so the best
    thresholds differ by label and from 0.2.
    """
    rng = np.random.default_rng(seed)
    y = np.asarray(y_true, dtype=np.float64)
    skill = np.array([_SKILL[name] for name in LABELS])
    prior = np.clip(y.mean(axis=0), 1e-4, 1 - 1e-4)
    noise = 0.85 * rng.standard_normal(y.shape) + 0.5 * rng.standard_normal((len(y), 1))
    score = skill * y + noise
    logit = skill * score - skill**2 / 2 + np.log(prior / (1 - prior))
    temperature = rng.uniform(0.6, 1.6, len(LABELS))
    shift = rng.normal(0.0, 0.8, len(LABELS)) - 0.6 * (prior < 0.02)
    return 1.0 / (1.0 + np.exp(-(temperature * logit + shift)))


# --- the stage ---------------------------------------------------------------------------------------------

@dataclass
class OofSet:
    """Out-of-fold probabilities of one run joined with their labels, rows in file order."""

    names: list[str]
    y_true: np.ndarray  # (N, 17) bool
    probs: np.ndarray  # (N, 17) float64
    folds: list[int]
    files: list[Path] = field(default_factory=list)
    n_labelled: int = 0


def load_oof(cfg) -> OofSet:
    """Read every oof_fold*.csv of the run folder and attach the labels of train_v2.csv."""
    run_dir = Path(cfg.run.dir)
    found = sorted(
        ((int(m.group(1)), p) for p in run_dir.glob("oof_fold*.csv") if (m := _OOF_PATTERN.match(p.name))),
    )
    if not found:
        raise DataError(f"no out-of-fold predictions in {run_dir}: run 'amazonmine train' first")
    names: list[str] = []
    blocks = []
    for _, path in found:
        fold_names, matrix = load_matrix_csv(path)
        bad = ~np.isfinite(matrix).all(axis=1) | (matrix < 0).any(axis=1) | (matrix > 1).any(axis=1)
        if bad.any():
            rows = [n for n, b in zip(fold_names, bad) if b]
            raise DataError(f"{path}: probabilities missing or outside [0, 1] for {_offenders(rows)}")
        names += fold_names
        blocks.append(matrix.astype(np.float64))
    seen: set[str] = set()
    dups = sorted({n for n in names if n in seen or seen.add(n)})
    if dups:
        raise DataError(f"{run_dir}: chips predicted in more than one oof_fold*.csv: {_offenders(dups)}")
    frame, labels = PlanetLayout.from_config(cfg.data).load_train(check_files=False)
    row_of = {name: i for i, name in enumerate(frame["image_name"])}
    unknown = [n for n in names if n not in row_of]
    if unknown:
        raise DataError(
            f"{run_dir}: out-of-fold chips not in {Path(cfg.data.root) / cfg.data.labels_csv}: {_offenders(unknown)}"
        )
    y_true = labels[[row_of[n] for n in names]].astype(bool)
    return OofSet(names, y_true, np.concatenate(blocks), [f for f, _ in found], [p for _, p in found], len(frame))


def load_thresholds(run_dir) -> tuple[np.ndarray, bool]:
    """(17 thresholds in LABELS order, weather_decoding) from <run_dir>/thresholds.json."""
    path = Path(run_dir) / THRESHOLDS_FILE
    if not path.is_file():
        raise DataError(f"{path}: thresholds not found: run 'amazonmine tune' first")
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        by_label = saved["thresholds"]
        weather_decoding = saved["weather_decoding"]
        missing = [name for name in LABELS if name not in by_label]
        values = np.array([float(by_label[name]) for name in LABELS if name in by_label])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: not a thresholds file ({type(exc).__name__}: {exc})") from None
    if missing:
        raise DataError(f"{path}: no threshold for {_offenders(missing)}")
    if not isinstance(weather_decoding, bool):
        raise DataError(f"{path}: weather_decoding must be true or false, got {weather_decoding!r}")
    if not (np.isfinite(values).all() and (values > 0).all() and (values < 1).all()):
        raise DataError(f"{path}: thresholds must be numbers in (0, 1)")
    return values, weather_decoding


@dataclass
class TuneResult:
    path: Path
    thresholds: np.ndarray
    weather_decoding: bool
    f2_flat: float
    f2_tuned: float
    f2_tuned_other_mode: float
    n_chips: int
    folds: list[int]
    start: float = 0.2

    def headline(self) -> str:
        mode = "with" if self.weather_decoding else "without"
        other = "without" if self.weather_decoding else "with"
        return (
            f"OOF mean F2 {self.f2_flat:.4f} (flat {self.start:g}) -> {self.f2_tuned:.4f} (tuned, {mode} weather "
            f"decoding; {other}: {self.f2_tuned_other_mode:.4f}) over {self.n_chips} chips of folds "
            f"{', '.join(map(str, self.folds))}\nwrote {self.path}"
        )


def run_tune(cfg) -> TuneResult:
    """Fit thresholds on the run's out-of-fold predictions and write thresholds.json."""
    oof = load_oof(cfg)
    y, p, tc = oof.y_true, oof.probs, cfg.tune
    flat = np.full(len(LABELS), tc.start)
    fitted = {}
    for mode in (True, False):  # both, so the file records what weather decoding is worth on this run
        t = fit_thresholds(y, p, tc.start, tc.passes, tc.grid, weather_decoding=mode)
        fitted[mode] = (t, mean_f2(y, _decode(p, t, mode)))
    thresholds, f2_tuned = fitted[tc.weather_decoding]
    pred = _decode(p, thresholds, tc.weather_decoding)
    scores = per_label_scores(y, pred)
    path = Path(cfg.run.dir) / THRESHOLDS_FILE
    write_json_atomic(path, {
        "thresholds": {name: round(float(v), 6) for name, v in zip(LABELS, thresholds)},
        "weather_decoding": bool(tc.weather_decoding),
        "note": "under weather decoding the weather thresholds are unused (argmax of the weather group)"
        if tc.weather_decoding else "each label thresholded alone; a chip with no weather gets the likeliest",
        "oof_f2_flat": mean_f2(y, p >= flat),
        "oof_f2_flat_with_weather": mean_f2(y, _decode(p, flat, True)),
        "oof_f2_tuned": f2_tuned,
        "oof_f2_tuned_with_weather": fitted[True][1],
        "oof_f2_tuned_without": fitted[False][1],
        "start": tc.start,
        "passes": tc.passes,
        "grid": tc.grid,
        "oof_chips": len(y),
        "labelled_chips": oof.n_labelled,
        "oof_folds": oof.folds,
        "oof_files": [p.name for p in oof.files],
        "per_label": {
            name: {
                "threshold": round(float(thresholds[j]), 6),
                **{key: float(scores[key][j]) for key in ("precision", "recall", "f2")},
                **{key: int(scores[key][j]) for key in ("support", "predicted")},
            }
            for j, name in enumerate(LABELS)
        },
    })
    return TuneResult(path, thresholds, tc.weather_decoding, mean_f2(y, p >= flat), f2_tuned,
                      fitted[not tc.weather_decoding][1], len(y), oof.folds, tc.start)
