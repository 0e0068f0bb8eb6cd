"""Tune stage: per-label decision thresholds that maximise the out-of-fold mean F2, written to thresholds.json.

The search itself (coordinate ascent on the dataset's mean per-image F2) and the decoding live in
:mod:`amazonmine.decisions`, shared with predict, evaluate and scan; this module reads the run's out-of-fold
predictions, fits both decodings (with and without weather decoding, so the file records what each is worth)
and writes the result.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from amazonmine.data import LABELS, PlanetLayout
from amazonmine.decisions import _decode, fit_thresholds
from amazonmine.io import write_json_atomic
from amazonmine.metrics import mean_f2, per_label_scores
from amazonmine.runfolder import RunFolder

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
    folder = RunFolder.from_config(cfg)
    oof = folder.read_oof(PlanetLayout.from_config(cfg.data))
    y, p, tc = oof.y_true, oof.probs, cfg.tune
    flat = np.full(len(LABELS), tc.start)
    fitted = {}
    for mode in (True, False):  # both, so the file records what weather decoding is worth on this run
        t = fit_thresholds(y, p, tc.start, tc.passes, tc.grid, weather_decoding=mode)
        fitted[mode] = (t, mean_f2(y, _decode(p, t, mode)))
    thresholds, f2_tuned = fitted[tc.weather_decoding]
    pred = _decode(p, thresholds, tc.weather_decoding)
    scores = per_label_scores(y, pred)
    path = folder.thresholds
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
