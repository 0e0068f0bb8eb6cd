"""A run's own label vocabulary: '?name' marks unannotated entries, which the loss, the F2 metric, the threshold
search and the calibration leave out; the weather rules only where the weather labels are in the vocabulary."""

import logging

import numpy as np
import pandas as pd
import pytest

from amazonmine.core.data import (
    LABELS,
    UNKNOWN,
    DataError,
    check_vocabulary,
    matrix_to_tags,
    read_labels,
    tags_to_matrix,
)
from amazonmine.core.decisions import Objective, decode, fit_rule, fit_thresholds, parse_objectives
from amazonmine.core.metrics import bootstrap_intervals, per_image_f2, per_label_scores

OWN = ("artisinal_mine", "airstrip")


def test_unannotated_tags_are_masked_and_outside_tags_ignored_with_a_count(caplog):
    with caplog.at_level(logging.WARNING, logger="amazonmine.core.data"):
        matrix = tags_to_matrix(["clear artisinal_mine ?airstrip", "primary airstrip", "clear"], "t.csv", OWN)
    assert matrix.tolist() == [[1, UNKNOWN], [0, 1], [0, 0]]
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith("t.csv: 3 tags outside the vocabulary") and "clear 2" in line and "primary 1" in line
    assert matrix_to_tags(matrix, OWN) == ["artisinal_mine ?airstrip", "airstrip", ""]
    assert tags_to_matrix(["clear", "primary"]).dtype == np.uint8  # fully annotated: the plain 0/1 matrix
    with pytest.raises(DataError, match="unknown labels"):  # Planet's vocabulary still refuses a typo
        tags_to_matrix(["clear artisanal_mine"], "t.csv")


@pytest.mark.parametrize("labels, problem", [([], "at least one"), (["mine", "mine"], "repeated: mine"),
                                             (["a b"], "letters, digits"), (["?mine"], "letters, digits"),
                                             (["../x"], "letters, digits")])
def test_a_vocabulary_must_be_distinct_plain_names(labels, problem):
    with pytest.raises(DataError, match=problem):
        check_vocabulary(labels, "data.labels")


def test_own_vocabulary_needs_no_weather_label(tmp_path):
    path = tmp_path / "train_v2.csv"
    pd.DataFrame({"image_name": ["a", "b"], "tags": ["artisinal_mine", "?airstrip"]}).to_csv(path, index=False)
    frame = read_labels(path, labels=OWN)
    assert frame["tags"].tolist() == ["artisinal_mine", "?airstrip"]
    pd.DataFrame({"image_name": ["a"], "tags": ["artisinal_mine"]}).to_csv(path, index=False)
    with pytest.raises(DataError, match="no weather label"):
        read_labels(path)  # the Planet vocabulary keeps Planet's rule


def _scores_with_column_removed(y, pred, j):
    keep = [c for c in range(y.shape[1]) if c != j]
    return per_image_f2(y[:, keep], pred[:, keep])


def test_unannotated_entries_count_neither_way_in_the_scores():
    rng = np.random.default_rng(0)
    y = (rng.random((200, 3)) < 0.4).astype(np.int8)
    pred = rng.random((200, 3)) < 0.5
    y[:100, 2] = UNKNOWN
    f2 = per_image_f2(y, pred)
    assert np.allclose(f2[:100], _scores_with_column_removed(y[:100], pred[:100], 2))
    flipped = pred.copy()
    flipped[:100, 2] = ~flipped[:100, 2]  # any decision on an unannotated entry
    assert np.array_equal(per_image_f2(y, flipped), f2)
    scores = per_label_scores(y, pred)
    assert scores["predicted"][2] == pred[100:, 2].sum() and scores["support"][2] == (y[100:, 2] == 1).sum()
    assert bootstrap_intervals(y, pred, draws=20)["mean_f2"] == bootstrap_intervals(y, flipped, draws=20)["mean_f2"]


def test_thresholds_do_not_follow_the_probabilities_of_unannotated_entries():
    rng = np.random.default_rng(1)
    y = (rng.random((300, 2)) < 0.3).astype(np.int8)
    probs = np.clip(y * 0.5 + rng.random((300, 2)) * 0.6, 0, 1)
    y[::2, 1] = UNKNOWN
    other = probs.copy()
    other[::2, 1] = rng.random(150)  # what the model says where nobody annotated
    assert np.array_equal(fit_thresholds(y, probs, labels=OWN), fit_thresholds(y, other, labels=OWN))
    rule, _ = fit_rule(y, probs, True, "expected_f2", "platt", labels=OWN)
    again, _ = fit_rule(y, other, True, "expected_f2", "platt", labels=OWN)
    assert rule.calibration.scale == again.calibration.scale and rule.labels == OWN


def test_weather_rules_apply_only_with_the_weather_labels():
    probs = np.full((2, len(LABELS)), 0.01)
    probs[1, LABELS.index("cloudy")] = 0.9
    probs[1, LABELS.index("primary")] = 0.9
    planet = decode(probs, np.full(len(LABELS), 0.5), True)
    assert planet[0].sum() == 1 and not planet[1, LABELS.index("primary")]  # one weather; cloudy drops land
    own = ("cloudy", "primary", "airstrip")  # cloudy without the rest of its group: a label like any other
    cols = [LABELS.index("cloudy"), LABELS.index("primary"), 0]
    decided = decode(probs[:, cols], np.full(3, 0.5), True, own)
    assert decided.tolist() == [[False, False, False], [True, True, False]]
    y = np.array([[0, 0, 1], [1, 1, 0]])
    assert np.count_nonzero(fit_thresholds(y, probs[:, cols], start=0.3, labels=own) != 0.3) > 0
    assert parse_objectives({"cloudy": {"recall": 0.9}}, own) == {0: Objective("recall", 0.9)}
    with pytest.raises(ValueError, match="weather label"):
        parse_objectives({"cloudy": {"recall": 0.9}})


def test_masked_labels_do_not_move_the_loss_or_the_metric():
    from types import SimpleNamespace

    import keras

    from amazonmine.neural.fitting import make_loss, make_metric

    y = np.array([[1, -1, 0], [0, 1, -1]], np.float32)
    low = np.array([[0.8, 0.01, 0.3], [0.2, 0.7, 0.01]], np.float32)
    high = low.copy()
    high[y < 0] = 0.99  # only the unannotated entries change
    for smoothing, soft_f2 in ((0.0, 0.0), (0.1, 0.5)):
        loss = make_loss(SimpleNamespace(label_smoothing=smoothing, soft_f2_weight=soft_f2))
        assert np.allclose(keras.ops.convert_to_numpy(loss(y, low)), keras.ops.convert_to_numpy(loss(y, high)))
        annotated = low.copy()
        annotated[0, 0] = 0.1
        assert not np.allclose(keras.ops.convert_to_numpy(loss(y, low)), keras.ops.convert_to_numpy(loss(y, annotated)))
    full = np.array([[1, 0, 0]], np.float32)  # every entry annotated: Keras' own binary cross-entropy
    plain = keras.losses.BinaryCrossentropy(label_smoothing=0.1)(full, low[:1])
    ours = make_loss(SimpleNamespace(label_smoothing=0.1, soft_f2_weight=0.0))(full, low[:1])
    assert np.isclose(float(plain), float(np.mean(keras.ops.convert_to_numpy(ours))), atol=1e-6)
    scores = []
    for p in (low, high):
        metric = make_metric()
        metric.update_state(y, p)
        scores.append(float(metric.result()))
    assert scores[0] == scores[1]


@pytest.mark.slow
def test_a_two_label_vocabulary_trains_tunes_and_predicts(tmp_path, make_cfg):
    import json

    from amazonmine.stages.predict import run_predict
    from amazonmine.stages.split import run_split
    from amazonmine.stages.synth import paint_dataset
    from amazonmine.stages.train import run_train
    from amazonmine.stages.tune import run_tune

    root = tmp_path / "planet"
    paint_dataset(root, n_train=60, n_test=6, size=32, seed=3, rare_boost=1.0, progress=False)
    frame = pd.read_csv(root / "train_v2.csv", dtype=str, keep_default_na=False)
    frame.loc[::3, "tags"] += " ?water"  # a third of the chips never looked at for water
    frame.to_csv(root / "train_v2.csv", index=False)
    cfg = make_cfg(root, **{"data.labels": "[agriculture, water]", "dehaze.enabled": "false", "split.folds": 2,
                            "split.rare_target": 0, "train.backbone": "densenet_mini", "train.mini_blocks": "[2]",
                            "train.image_size": 32, "train.batch_size": 16, "train.epochs": 1,
                            "train.steps_per_epoch": 2, "train.warmup_epochs": 0, "train.verbose": 0,
                            "train.bn_recalibration_batches": 0, "predict.tta": 1, "tune.bootstrap": 10})
    run_split(cfg)
    (result,) = run_train(cfg, folds=[0])
    assert result.summary["labels"] == ["agriculture", "water"]
    oof = pd.read_csv(cfg.run_dir / "oof_fold0.csv")
    assert list(oof.columns) == ["image_name", "agriculture", "water"]
    tuned = run_tune(cfg)
    saved = json.loads((cfg.run_dir / "thresholds.json").read_text())
    assert saved["labels"] == ["agriculture", "water"] and set(saved["thresholds"]) == {"agriculture", "water"}
    assert len(tuned.thresholds) == 2
    run_predict(cfg)
    submission = pd.read_csv(cfg.run_dir / "submission.csv", dtype=str, keep_default_na=False)
    assert {t for tags in submission["tags"] for t in tags.split()} <= {"agriculture", "water"}
