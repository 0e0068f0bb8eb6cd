"""Decisions: expected-F2 decoding checked against brute force, calibration, operating points, the saved rule."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from amazonmine.core.data import LABEL_INDEX, LABELS, LAND_INDEX, WEATHER_INDEX, tags_to_matrix
from amazonmine.core.decisions import (
    Calibration,
    DecisionRule,
    Objective,
    decode,
    decode_expected_f2,
    expected_fbeta_topk,
    fit_calibration,
    fit_rule,
    operating_point,
    parse_objectives,
)
from amazonmine.core.metrics import mean_f2, per_image_f2
from amazonmine.stages.synth import load_label_combos
from amazonmine.testing import simulate_oof

CLOUDY = LABEL_INDEX["cloudy"]


def combo_labels(n: int, seed: int = 0) -> np.ndarray:
    combos, counts = load_label_combos()
    picks = np.random.default_rng(seed).choice(len(combos), size=n, p=counts / counts.sum())
    return tags_to_matrix([combos[i] for i in picks]).astype(bool)


# --- brute force -------------------------------------------------------------------------------------------

def all_sets(n: int) -> np.ndarray:
    return np.array(list(itertools.product([False, True], repeat=n)), dtype=bool).reshape(-1, n)


def brute_expected(p: np.ndarray, pred: np.ndarray, hit: float | None = None, beta: float = 2.0) -> float:
    """E[F-beta] of one prediction by summing over every truth vector (independent labels); with ``hit``, one
    more predicted label of a group with exactly one true member, right with probability ``hit``."""
    truths = all_sets(len(p))
    weight = np.prod(np.where(truths, p, 1 - p), axis=1)
    if hit is None:
        return float(weight @ per_image_f2(truths, np.broadcast_to(pred, truths.shape), beta))
    ones, zeros = np.ones((len(truths), 1), bool), np.zeros((len(truths), 1), bool)
    predicted = np.broadcast_to(np.r_[pred, True, False], (len(truths), len(p) + 2))
    right = per_image_f2(np.hstack([truths, ones, zeros]), predicted, beta)
    wrong = per_image_f2(np.hstack([truths, zeros, ones]), predicted, beta)
    return float(weight @ (hit * right + (1 - hit) * wrong))


@pytest.mark.parametrize("with_hit", [False, True])
def test_expected_fbeta_is_exact_and_its_best_set_beats_every_other(with_hit):
    rng = np.random.default_rng(11 + with_hit)
    for _ in range(60):
        n = int(rng.integers(1, 9))
        p = rng.random(n) ** rng.uniform(0.3, 3.0)
        p[rng.random(n) < 0.1] = 0.0  # certain negatives and positives are legal probabilities too
        p[rng.random(n) < 0.1] = 1.0
        free = rng.random(n) < 0.7
        on = ~free & (rng.random(n) < 0.5)
        hit = float(rng.random()) if with_hit else None
        expected, order = expected_fbeta_topk(p[None], free[None], on[None], 2.0,
                                              None if hit is None else np.array([hit]))
        # Every allowed set (fixed labels as given), scored by brute force.
        allowed = [s for s in all_sets(n) if (s[~free] == on[~free]).all()]
        brute = [brute_expected(p, s, hit) for s in allowed]
        k = int(np.argmax(expected[0]))
        chosen = on.copy()
        chosen[order[0, :k]] = True
        assert expected[0, k] == pytest.approx(max(brute), abs=1e-12)
        assert brute_expected(p, chosen, hit) == pytest.approx(max(brute), abs=1e-12)
        for size in range(int(free.sum()) + 1):  # each k's value is the exact expectation of its set
            top = on.copy()
            top[order[0, :size]] = True
            assert expected[0, size] == pytest.approx(brute_expected(p, top, hit), abs=1e-12)
        assert np.all(np.isneginf(expected[0, int(free.sum()) + 1:]))


def test_expected_fbeta_other_betas():
    rng = np.random.default_rng(5)
    for beta in (0.5, 1.0):
        p = rng.random(6)
        expected, order = expected_fbeta_topk(p[None], np.ones((1, 6), bool), np.zeros((1, 6), bool), beta)
        best = max(brute_expected(p, s, beta=beta) for s in all_sets(6))
        assert expected.max() == pytest.approx(best, abs=1e-12)


def _chip_with_few_active_labels(rng, active_land: list[int]) -> np.ndarray:
    p = np.zeros(len(LABELS))
    p[WEATHER_INDEX] = rng.random(len(WEATHER_INDEX))
    p[active_land] = rng.random(len(active_land)) ** rng.uniform(0.3, 2.0)
    return p


def test_decoder_with_weather_decoding_matches_brute_force():
    """Weather as one categorical label (argmax predicted, right with its normalised probability), a cloudy chip
    without land labels, land labels independent: the decoder's set is the best of all of them."""
    rng = np.random.default_rng(1)
    land = [LABEL_INDEX[n] for n in ("primary", "agriculture", "road", "water", "artisinal_mine", "habitation")]
    probs = np.array([_chip_with_few_active_labels(rng, land) for _ in range(25)])
    probs[:5, CLOUDY] = 2.0  # a few cloudy chips (normalised below)
    probs[:, WEATHER_INDEX] /= probs[:, WEATHER_INDEX].max(axis=1, keepdims=True)
    pred, expected = decode_expected_f2(probs, weather_decoding=True)
    for i, p in enumerate(probs):
        weather = p[WEATHER_INDEX]
        top = WEATHER_INDEX[weather.argmax()]
        hit = p[top] / weather.sum()
        assert pred[i, WEATHER_INDEX].sum() == 1 and pred[i, top]
        if top == CLOUDY:
            assert not pred[i, LAND_INDEX].any()
            best = brute_expected(p[land], np.zeros(len(land), bool), hit)
        else:
            best = max(brute_expected(p[land], s, hit) for s in all_sets(len(land)))
        assert expected[i] == pytest.approx(best, abs=1e-12)
        assert brute_expected(p[land], pred[i, land], hit) == pytest.approx(best, abs=1e-12)
        assert not pred[i, np.setdiff1d(LAND_INDEX, land)].any()


def test_decoder_without_weather_decoding_matches_brute_force():
    """The likeliest weather always predicted; the other weather labels compete as independent labels."""
    rng = np.random.default_rng(2)
    land = [LABEL_INDEX[n] for n in ("primary", "agriculture", "road", "conventional_mine")]
    probs = np.array([_chip_with_few_active_labels(rng, land) for _ in range(20)])
    pred, expected = decode_expected_f2(probs, weather_decoding=False)
    for i, p in enumerate(probs):
        top = WEATHER_INDEX[p[WEATHER_INDEX].argmax()]
        others = [j for j in WEATHER_INDEX if j != top]
        free = others + land
        columns = [top, *free]
        best = max(brute_expected(p[columns], np.r_[True, s]) for s in all_sets(len(free)))
        assert pred[i, top]
        assert expected[i] == pytest.approx(best, abs=1e-12)
        assert brute_expected(p[columns], pred[i, columns]) == pytest.approx(best, abs=1e-12)


def test_decoder_holds_labels_at_their_thresholds():
    y = combo_labels(800, seed=3)
    p = simulate_oof(y, seed=3)
    mine = LABEL_INDEX["artisinal_mine"]
    fixed = np.zeros(len(LABELS), bool)
    fixed[mine] = True
    thresholds = np.full(len(LABELS), 0.5)
    thresholds[mine] = 0.01
    for weather in (True, False):
        pred, _ = decode_expected_f2(p, weather, thresholds, fixed)
        expected_on = p[:, mine] >= 0.01
        if weather:
            expected_on &= ~pred[:, CLOUDY]
        np.testing.assert_array_equal(pred[:, mine], expected_on)


def test_decoder_beats_a_flat_threshold_and_calibration_helps_it():
    # A guard, not a law: simulated probabilities are mis-scaled per label, which the decoder reads literally
    # until they are calibrated.
    y = combo_labels(3000, seed=4)
    p = simulate_oof(y, seed=4)
    calibration = fit_calibration(y, p, "platt")
    for weather in (True, False):
        pred, expected = decode_expected_f2(p, weather)
        assert mean_f2(y, pred) > mean_f2(y, p >= 0.5)
        assert np.all((expected >= 0) & (expected <= 1))
        calibrated, _ = decode_expected_f2(p, weather, calibration=calibration)
        assert mean_f2(y, calibrated) > mean_f2(y, pred) + 0.005


# --- calibration -------------------------------------------------------------------------------------------

def log_loss(y, p):
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())


@pytest.mark.parametrize("kind", ["temperature", "platt", "isotonic"])
def test_calibration_improves_held_out_log_loss_and_survives_json(kind):
    y = combo_labels(6000, seed=6)
    p = simulate_oof(y, seed=6)  # mis-scaled and shifted per label on purpose
    fit = np.arange(len(y)) % 2 == 0
    calibration = fit_calibration(y[fit], p[fit], kind)
    held = ~fit
    assert log_loss(y[held], calibration.apply(p[held])) < log_loss(y[held], p[held]) - 0.005
    again = Calibration.from_json(calibration.to_json())
    np.testing.assert_allclose(again.apply(p[held]), calibration.apply(p[held]), atol=1e-5)
    # Increasing per label: a threshold's order of chips is kept.
    grid = np.tile(np.linspace(0, 1, 201)[:, None], (1, len(LABELS)))
    assert np.all(np.diff(calibration.apply(grid), axis=0) >= -1e-12)


def test_calibration_errors():
    with pytest.raises(ValueError, match="calibration must be one of"):
        fit_calibration(np.zeros((2, 17)), np.zeros((2, 17)), "beta")
    with pytest.raises(ValueError, match="kind among"):
        Calibration.from_json({"kind": "magic"})
    with pytest.raises(ValueError, match="incomplete"):
        Calibration.from_json({"kind": "platt", "scale": {}})


# --- operating points --------------------------------------------------------------------------------------

@pytest.mark.parametrize("weather", [True, False])
@pytest.mark.parametrize("floor", [0.3, 0.75, 0.9, 1.0])
def test_recall_floor_is_met_on_the_chips_it_was_fitted_on(weather, floor):
    y = combo_labels(2500, seed=8)
    p = np.round(simulate_oof(y, seed=8), 4)  # ties between chips: ">=" must still count them all
    rule, points = fit_rule(y, p, weather, objectives=parse_objectives(
        {"artisinal_mine": {"recall": floor}, "blow_down": {"recall": floor}, "road": {"recall": floor}}))
    pred = decode(p, rule, weather)
    for name in ("artisinal_mine", "blow_down", "road"):
        j = LABEL_INDEX[name]
        truth = y[:, j]
        recall = (pred[:, j] & truth).sum() / truth.sum()
        point = points[j]
        assert point.recall == pytest.approx(recall)
        reachable = (~pred[:, CLOUDY] | (not weather))[truth].mean()  # cloudy chips keep no land label
        if reachable >= floor:
            assert point.met and recall >= floor, (name, recall)
            # The threshold sits just under the lowest probability it keeps (same decisions); the most precise
            # such point: the next probability up leaves that chip out and falls below the floor.
            above = np.unique(p[:, j][p[:, j] > point.threshold])
            same = (decode(p, _with(rule, j, above[0]), weather)[:, j] & truth).sum() / truth.sum()
            assert same == pytest.approx(recall)
            if above.size > 1:
                higher = (decode(p, _with(rule, j, above[1]), weather)[:, j] & truth).sum() / truth.sum()
                assert higher < floor
        else:
            assert not point.met


def _with(rule: DecisionRule, j: int, value: float) -> DecisionRule:
    thresholds = rule.thresholds.copy()
    thresholds[j] = value
    return DecisionRule(thresholds, rule.weather_decoding, rule.decoder, rule.calibration, rule.fixed)


def test_precision_floor_and_fbeta_points():
    y = combo_labels(3000, seed=9)
    p = simulate_oof(y, seed=9)
    j = LABEL_INDEX["agriculture"]
    t = np.full(len(LABELS), 0.2)
    point = operating_point(y, p, t, j, Objective("precision", 0.9), False)
    on = p[:, j] >= point.threshold
    assert point.met and (on & y[:, j]).sum() / on.sum() >= 0.9
    # The most recall that keeps it: any lower probability as threshold breaks the floor.
    lower = np.unique(p[:, j][p[:, j] < point.threshold])
    assert all(((p[:, j] >= c) & y[:, j]).sum() / (p[:, j] >= c).sum() < 0.9 for c in lower[-20:])
    for beta in (0.5, 2.0):
        best = operating_point(y, p, t, j, Objective("fbeta", beta), False)
        b2 = beta * beta

        def fbeta(c):
            on = p[:, j] >= c
            tp = (on & y[:, j]).sum()
            return (1 + b2) * tp / (b2 * y[:, j].sum() + on.sum())

        assert all(fbeta(best.threshold) >= fbeta(c) - 1e-12 for c in np.linspace(0.01, 0.99, 99))


def test_parse_objectives_errors():
    assert parse_objectives({"artisinal_mine": {"recall": 0.9}}) == {LABEL_INDEX["artisinal_mine"]:
                                                                      Objective("recall", 0.9)}
    for spec, message in [({"artisanal_mine": {"recall": 0.9}}, "unknown label"),
                          ({"haze": {"recall": 0.9}}, "weather label"),
                          ({"road": {"recall": 1.5}}, r"in \(0, 1\]"),
                          ({"road": {"recall": "high"}}, "must be a number"),
                          ({"road": {"accuracy": 0.9}}, "is not one of"),
                          ({"road": {"recall": 0.9, "precision": 0.5}}, "expected one of"),
                          ({"road": {"fbeta": 0}}, "positive beta")]:
        with pytest.raises(ValueError, match=message):
            parse_objectives(spec)


# --- the rule ----------------------------------------------------------------------------------------------

def test_rule_from_an_old_file_decides_by_thresholds_and_reads_as_an_array():
    t = np.linspace(0.1, 0.9, len(LABELS))
    rule = DecisionRule.from_saved({"thresholds": {}, "weather_decoding": True}, t, True)
    p = np.random.default_rng(0).random((50, len(LABELS)))
    np.testing.assert_array_equal(decode(p, rule, True), decode(p, t, True))
    np.testing.assert_array_equal(np.asarray(rule), t)
    with pytest.raises(ValueError, match="decoder must be one of"):
        DecisionRule.from_saved({"decoder": "oracle"}, t, True)


def test_rule_with_expected_f2_decodes_with_its_calibration():
    y = combo_labels(1500, seed=10)
    p = simulate_oof(y, seed=10)
    rule, _ = fit_rule(y, p, True, "expected_f2", "platt")
    np.testing.assert_array_equal(decode(p, rule, True),
                                  decode_expected_f2(p, True, rule.thresholds, rule.fixed, rule.calibration)[0])
    saved = {"decoder": "expected_f2", "calibration": rule.calibration.to_json()}
    again = DecisionRule.from_saved(saved, rule.thresholds, True)
    assert (decode(p, again, True) != decode(p, rule, True)).sum() <= 2  # parameters rounded to 6 decimals
