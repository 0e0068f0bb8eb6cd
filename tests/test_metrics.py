"""Metrics: per-label scores and the bootstrap intervals (coverage on simulated data, speed, edge cases)."""

from __future__ import annotations

import numpy as np
import pytest

from amazonmine.core.data import LABEL_INDEX, tags_to_matrix
from amazonmine.core.metrics import bootstrap_intervals, per_image_f2, per_label_scores
from amazonmine.stages.synth import load_label_combos


def combo_labels(n: int, seed: int = 0) -> np.ndarray:
    combos, counts = load_label_combos()
    picks = np.random.default_rng(seed).choice(len(combos), size=n, p=counts / counts.sum())
    return tags_to_matrix([combos[i] for i in picks]).astype(bool)


def noisy_decisions(y: np.ndarray, seed: int) -> np.ndarray:
    """Decisions that miss some positives and raise some false alarms, more on some chips than others."""
    rng = np.random.default_rng(seed)
    hard = rng.random((len(y), 1)) < 0.2  # hard chips: errors cluster, as they do on hazy chips
    miss = rng.random(y.shape) < np.where(hard, 0.4, 0.08)
    alarm = rng.random(y.shape) < np.where(hard, 0.08, 0.02)
    return (y & ~miss) | (~y & alarm)


def test_per_label_scores_by_hand():
    y = np.array([[1, 0], [1, 1], [0, 0], [1, 0]], bool)
    pred = np.array([[1, 1], [0, 1], [0, 0], [1, 0]], bool)
    s = per_label_scores(y, pred)
    np.testing.assert_allclose(s["precision"], [1.0, 0.5])
    np.testing.assert_allclose(s["recall"], [2 / 3, 1.0])
    np.testing.assert_allclose(s["f2"], [5 * (2 / 3) / (4 + 2 / 3), 5 * 0.5 / (4 * 0.5 + 1)])
    np.testing.assert_array_equal(s["support"], [3, 1])


def test_intervals_cover_the_population_value_at_about_the_nominal_rate():
    """200 samples of 400 chips from a population of known mean F2, precision and recall: each 95% interval
    must hold the population's value in about 95% of the samples (binomial noise: 0.90-0.99)."""
    population_y = combo_labels(200_000, seed=1)
    population_pred = noisy_decisions(population_y, seed=2)
    f2 = per_image_f2(population_y, population_pred).mean()
    truth = per_label_scores(population_y, population_pred)
    labels = [LABEL_INDEX[name] for name in ("agriculture", "water", "habitation")]
    rng = np.random.default_rng(3)
    hits = {"mean_f2": 0, "precision": np.zeros(len(labels)), "recall": np.zeros(len(labels))}
    n_samples = 200
    for sample in range(n_samples):
        rows = rng.integers(0, len(population_y), 400)
        got = bootstrap_intervals(population_y[rows], population_pred[rows], draws=1000, seed=sample)
        lo, hi = got["mean_f2"]
        hits["mean_f2"] += lo <= f2 <= hi
        for key in ("precision", "recall"):
            bounds = got[key][labels]
            hits[key] += (bounds[:, 0] <= truth[key][labels]) & (truth[key][labels] <= bounds[:, 1])
    coverage = {key: np.asarray(v) / n_samples for key, v in hits.items()}
    for key, value in coverage.items():
        assert np.all((0.90 <= value) & (value <= 0.99)), (key, value)


def test_intervals_are_seeded_and_hold_the_point_estimate():
    y = combo_labels(2000, seed=4)
    pred = noisy_decisions(y, seed=5)
    a = bootstrap_intervals(y, pred, draws=300, seed=7)
    b = bootstrap_intervals(y, pred, draws=300, seed=7, chunk=17)  # chunking does not change the draws' sums
    c = bootstrap_intervals(y, pred, draws=300, seed=8)
    assert a["mean_f2"] == pytest.approx(b["mean_f2"])
    np.testing.assert_allclose(a["recall"], b["recall"], equal_nan=True)
    assert a["mean_f2"] != c["mean_f2"]
    point = per_image_f2(y, pred).mean()
    assert a["mean_f2"][0] < point < a["mean_f2"][1]
    s = per_label_scores(y, pred)
    common = s["support"] > 100
    assert np.all(a["recall"][common, 0] <= s["recall"][common])
    assert np.all(s["recall"][common] <= a["recall"][common, 1])


def test_a_label_with_nothing_to_divide_by_has_no_interval():
    y = combo_labels(500, seed=6)
    pred = y.copy()
    j = LABEL_INDEX["blow_down"]
    y[:, j] = pred[:, j] = False
    pred[0, j] = True  # one false alarm: precision is 0 in the resamples that hold it, recall never exists
    got = bootstrap_intervals(y, pred, draws=200, seed=0)
    assert np.isnan(got["recall"][j]).all()
    np.testing.assert_array_equal(got["precision"][j], [0.0, 0.0])
    k = LABEL_INDEX["slash_burn"]
    y[:, k] = pred[:, k] = False
    pred[:2, k] = True
    pred[0, k] = False
    y[1, k] = True  # one positive in 500 chips: most resamples have at least it, and find it
    rare = bootstrap_intervals(y, pred, draws=200, seed=0)
    np.testing.assert_array_equal(rare["recall"][k], [1.0, 1.0])
    assert got["mean_f2"][1] <= 1.0
    with pytest.raises(ValueError, match="must both be"):
        bootstrap_intervals(y[:, :3], pred, draws=10)
