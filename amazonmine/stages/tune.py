"""Tune stage: the decision rule that maximises the out-of-fold mean F2, written to thresholds.json.

The search itself (coordinate ascent on the dataset's mean per-image F2), the expected-F2 decoder, calibration
and operating points live in :mod:`amazonmine.core.decisions`, shared with predict, evaluate and scan; this module
reads the run's out-of-fold predictions, fits the rule the config asks for and writes it with what it is worth:

* both weather decodings (in-sample, as before), so the file records what weather decoding is worth;
* both decoders cross-fitted: fitted on one random half of the chips and scored on the other, then the other
  way round. An in-sample figure flatters whichever rule has more freedom; this one does not;
* bootstrap 95% intervals (chips resampled) for the mean F2 and each label's precision and recall;
* each label's recall at its point, with labels the rule in effect switches off (recall under
  :data:`LOW_RECALL`) named in the headline: a label is never dropped without the user seeing it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from amazonmine.core.config import ConfigError
from amazonmine.core.data import LABELS, PlanetLayout
from amazonmine.core.decisions import (
    CALIBRATIONS,
    DECODERS,
    DecisionRule,
    Objective,
    OperatingPoint,
    _decode,
    fit_rule,
    parse_objectives,
)
from amazonmine.core.io import write_json_atomic
from amazonmine.core.metrics import bootstrap_intervals, mean_f2, per_image_f2, per_label_scores
from amazonmine.core.runfolder import RunFolder

LOW_RECALL = 0.1  # a label found less often than this at its point is, in effect, switched off

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
    rule: DecisionRule | None = None
    f2_interval: tuple[float, float] = (float("nan"), float("nan"))
    crossfit: dict[str, float] = field(default_factory=dict)
    crossfit_calibration: str = "none"
    recall: dict[str, float] = field(default_factory=dict)
    points: dict[str, tuple[Objective, OperatingPoint]] = field(default_factory=dict)

    @property
    def low_recall(self) -> list[str]:
        return [name for name, r in self.recall.items() if r < LOW_RECALL]

    def headline(self) -> str:
        mode = "with" if self.weather_decoding else "without"
        other = "without" if self.weather_decoding else "with"
        lines = [
            f"OOF mean F2 {self.f2_flat:.4f} (flat {self.start:g}) -> {self.f2_tuned:.4f} (tuned, {mode} weather "
            f"decoding; {other}: {self.f2_tuned_other_mode:.4f}) over {self.n_chips} chips of folds "
            f"{', '.join(map(str, self.folds))}",
        ]
        if self.rule is not None:
            lo, hi = self.f2_interval
            lines.append(f"decisions: {self.rule.describe()}; mean F2 95% interval {lo:.4f}-{hi:.4f}")
        if self.crossfit:
            named = {"thresholds": "thresholds", "expected_f2": "expected-F2" + (
                "" if self.crossfit_calibration == "none" else f" ({self.crossfit_calibration} calibration)")}
            lines.append("cross-fitted mean F2 (fitted on half the chips, scored on the other half): "
                         + ", ".join(f"{named.get(k, k)} {v:.4f}" for k, v in self.crossfit.items()))
        for name, (objective, point) in self.points.items():
            verdict = "" if point.met else " (NOT reached: no threshold gets there on these chips)"
            lines.append(f"operating point {name} {objective.describe()}: threshold {point.threshold:.4g}, "
                         f"recall {point.recall:.3f}, precision {point.precision:.3f}{verdict}")
        if self.recall:
            lines.append("recall at the decision rule: " + ", ".join(f"{k} {v:.2f}" for k, v in self.recall.items()))
        if self.low_recall:
            lines.append(f"warning: recall below {LOW_RECALL:g}, in effect switched off: "
                         + ", ".join(f"{k} {self.recall[k]:.2f}" for k in self.low_recall)
                         + f"; give them a recall floor in tune.objectives (e.g. {self.low_recall[0]}: "
                         + "{recall: 0.3})")
        lines.append(f"wrote {self.path}")
        return "\n".join(lines)


def run_tune(cfg) -> TuneResult:
    """Fit the decision rule on the run's out-of-fold predictions and write thresholds.json."""
    folder = RunFolder.from_config(cfg)
    with folder.lock("tune"):
        return _tune(cfg, folder)


@dataclass
class _Settings:
    """tune's settings, checked once: the decoder, calibration, operating points, bootstrap, and the threshold
    search (start, passes, grid)."""

    decoder: str
    calibration: str
    objectives: dict[int, Objective]
    draws: int
    seed: int
    start: float = 0.2
    passes: int = 3
    grid: int = 101

    @classmethod
    def from_config(cls, tc, labels=LABELS) -> "_Settings":
        decoder = tc.decoder
        calibration = tc.calibration
        if decoder not in DECODERS:
            raise ConfigError(f"tune.decoder must be one of {', '.join(DECODERS)}, got {decoder!r}")
        if calibration not in CALIBRATIONS:
            raise ConfigError(f"tune.calibration must be one of {', '.join(CALIBRATIONS)}, got {calibration!r}")
        try:
            objectives = parse_objectives(tc.objectives or {}, labels)
        except ValueError as exc:
            raise ConfigError(f"tune.{exc}") from None
        draws = int(tc.bootstrap)
        if draws < 1:
            raise ConfigError(f"tune.bootstrap must be at least 1 draw, got {draws}")
        return cls(decoder, calibration, objectives, draws, int(tc.bootstrap_seed), float(tc.start), int(tc.passes),
                   int(tc.grid))


def crossfit(y, p, weather_decoding: bool, settings: _Settings, labels=LABELS) -> dict[str, float]:
    """Mean F2 of each decoder fitted on one random half of the chips and scored on the other, both ways round
    (the halves drawn with the bootstrap's seed)."""
    half = np.random.default_rng(settings.seed).permutation(len(y)) < len(y) // 2
    if half.all() or not half.any():
        return {}
    scores = {decoder: np.zeros(len(y)) for decoder in DECODERS}
    for fit in (half, ~half):
        rule, _ = fit_rule(y[fit], p[fit], weather_decoding, "thresholds", "none", settings.objectives,
                           settings.start, settings.passes, settings.grid, labels)
        for decoder in DECODERS:
            decided = rule.with_decoder(decoder, settings.calibration, y[fit], p[fit]).decide(p[~fit])
            scores[decoder][~fit] = per_image_f2(y[~fit], decided)
    return {decoder: float(s.mean()) for decoder, s in scores.items()}


def _number(value: float) -> float | None:
    return None if not np.isfinite(value) else round(float(value), 6)


def _tune(cfg, folder: RunFolder) -> TuneResult:
    oof = folder.read_oof(PlanetLayout.from_config(cfg.data))
    y, p, tc = oof.y_true, oof.probs, cfg.tune
    labels = tuple(cfg.data.labels)  # the run's vocabulary: the OOF columns, and the names thresholds.json keeps
    settings = _Settings.from_config(tc, labels)
    flat = np.full(len(labels), tc.start)
    fitted = {}
    for mode in (True, False):  # both, so the file records what weather decoding is worth on this run
        rule, points = fit_rule(y, p, mode, "thresholds", "none", settings.objectives, tc.start, tc.passes, tc.grid,
                                labels)
        fitted[mode] = (rule, points, mean_f2(y, rule.decide(p)))
    rule, points, _ = fitted[tc.weather_decoding]
    rule = rule.with_decoder(settings.decoder, settings.calibration, y, p)
    thresholds = rule.thresholds
    pred = rule.decide(p)
    f2_tuned = mean_f2(y, pred)
    scores = per_label_scores(y, pred)
    intervals = bootstrap_intervals(y, pred, settings.draws, settings.seed)
    cross = crossfit(y, p, tc.weather_decoding, settings, labels)
    objective_of = {labels[j]: o for j, o in settings.objectives.items()}
    point_of = {labels[j]: pt for j, pt in points.items()}
    recall = {name: float(scores["recall"][j]) for j, name in enumerate(labels)}
    path = folder.thresholds
    write_json_atomic(path, {
        # Operating-point thresholds sit halfway between two chips' probabilities, which may be closer than the
        # rounding: kept as they are. Searched ones are grid values, rounded for the reader.
        "thresholds": {name: float(v) if name in point_of else round(float(v), 6)
                       for name, v in zip(labels, thresholds)},
        "labels": list(labels),
        "weather_decoding": bool(tc.weather_decoding),
        "decoder": rule.decoder,
        "calibration": rule.calibration.to_json(labels),
        "objectives": {name: o.to_json() for name, o in objective_of.items()},
        "note": "under weather decoding the weather thresholds are unused (argmax of the weather group)"
        if tc.weather_decoding else "each label thresholded alone; a chip with no weather gets the likeliest",
        "oof_f2_flat": mean_f2(y, p >= flat),
        "oof_f2_flat_with_weather": mean_f2(y, _decode(p, flat, True, labels)),
        "oof_f2_tuned": f2_tuned,
        "oof_f2_tuned_with_weather": fitted[True][2],
        "oof_f2_tuned_without": fitted[False][2],
        "oof_f2_interval": [_number(v) for v in intervals["mean_f2"]],
        "crossfit_f2": cross,
        "crossfit_calibration": settings.calibration,
        "bootstrap": {"draws": settings.draws, "seed": settings.seed, "level": 0.95, "resampled": "chips"},
        "low_recall": [name for name, r in recall.items() if r < LOW_RECALL],
        "start": tc.start,
        "passes": tc.passes,
        "grid": tc.grid,
        "oof_chips": len(y),
        "labelled_chips": oof.n_labelled,
        "oof_folds": oof.folds,
        # Each fold's own chips under the pooled decisions: how far apart the folds' models are.
        "per_fold": [{"fold": fold, "chips": int(rows.sum()), "f2_flat": mean_f2(y[rows], p[rows] >= flat),
                      "f2_tuned": mean_f2(y[rows], pred[rows])} for fold, rows in oof.by_fold()],
        "oof_files": [p.name for p in oof.files],
        "per_label": {
            name: {
                "threshold": float(thresholds[j]) if name in point_of else round(float(thresholds[j]), 6),
                "objective": objective_of[name].to_json() if name in objective_of else "mean F2",
                **({"floor_met": point_of[name].met} if name in point_of else {}),
                **{key: float(scores[key][j]) for key in ("precision", "recall", "f2")},
                **{key: int(scores[key][j]) for key in ("support", "predicted")},
                "precision_interval": [_number(v) for v in intervals["precision"][j]],
                "recall_interval": [_number(v) for v in intervals["recall"][j]],
            }
            for j, name in enumerate(labels)
        },
    })
    return TuneResult(path, thresholds, tc.weather_decoding, mean_f2(y, p >= flat), f2_tuned,
                      fitted[not tc.weather_decoding][2], len(y), oof.folds, tc.start, rule,
                      intervals["mean_f2"], cross, settings.calibration, recall,
                      {name: (objective_of[name], point) for name, point in point_of.items()})
