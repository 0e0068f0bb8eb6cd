"""Predict stage: a submission Kaggle would accept, TTA that does not care how a chip is turned, bad chips."""

import shutil

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from amazonmine.core.data import LABELS, apply_dihedral, matrix_to_tags, read_image
from amazonmine.core.errors import AmazonmineError
from amazonmine.stages.predict import validate_submission

pytestmark = pytest.mark.slow

TINY = ["dehaze.enabled=false", "split.folds=2", "split.rare_target=4", "train.backbone=densenet_mini",
        "train.mini_blocks=[2]", "train.image_size=32", "train.batch_size=16", "train.epochs=1",
        "train.steps_per_epoch=3", "train.verbose=0", "train.cache=true", "predict.tta=2", "predict.batch_size=16",
        "tune.weather_decoding=true"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny end-to-end run folder: synth -> split -> train (both folds) -> tune."""
    from amazonmine.core.config import load_config
    from amazonmine.stages.split import run_split
    from amazonmine.stages.synth import paint_dataset
    from amazonmine.stages.train import run_train
    from amazonmine.stages.tune import run_tune

    base = tmp_path_factory.mktemp("predict")
    paint_dataset(base / "data", n_train=40, n_test=30, size=32, seed=3, progress=False)
    sets = TINY + [f"data.root={base / 'data'}", f"run.dir={base / 'run'}"]
    cfg = load_config(None, sets)
    run_split(cfg)
    list(run_train(cfg, folds=[0, 1]))
    run_tune(cfg)
    return base, sets


def test_submission_matches_the_sample(run):
    from amazonmine.core.config import load_config
    from amazonmine.stages.predict import run_predict

    base, sets = run
    summary = run_predict(load_config(None, sets), progress=False)
    assert not summary.failed and summary.n_models == 2
    sub = pd.read_csv(summary.submission, dtype=str, keep_default_na=False)
    sample = pd.read_csv(base / "data" / "sample_submission_v2.csv", dtype=str)
    assert list(sub.columns) == ["image_name", "tags"]
    assert sub["image_name"].tolist() == sample["image_name"].tolist()  # Kaggle's order, each chip once
    assert not sub["image_name"].str.contains(".jpg", regex=False).any()
    assert all(t in LABELS for tags in sub["tags"] for t in tags.split())
    weather = {"clear", "cloudy", "haze", "partly_cloudy"}
    assert all(len(weather & set(tags.split())) == 1 for tags in sub["tags"])  # weather decoding is on
    probs = pd.read_csv(summary.probabilities)
    assert list(probs.columns) == ["image_name", *LABELS] and len(probs) == 30
    assert validate_submission(summary.submission, base / "data" / "sample_submission_v2.csv") == []


def test_missing_and_corrupt_chips_are_listed_and_exit_nonzero(run, tmp_path):
    from amazonmine.cli import main

    base, sets = run
    data = tmp_path / "data"
    shutil.copytree(base / "data", data)
    (data / "test-jpg" / "test_1.jpg").unlink()
    bad = data / "test-jpg" / "test_2.jpg"
    bad.write_bytes(bad.read_bytes()[:100])
    args = ["predict"] + [a for s in sets for a in ("--set", s)] + ["--set", f"data.root={data}",
                                                                     "--set", f"run.dir={tmp_path / 'run'}"]
    shutil.copytree(base / "run", tmp_path / "run")
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 3, result.output
    assert "2 chip(s) missing or unreadable" in result.output
    failures = pd.read_csv(tmp_path / "run" / "predict_failures.csv")["problem"].tolist()
    assert any("test_2.jpg: truncated" in f for f in failures) and any("test_1" in f for f in failures)
    sub = pd.read_csv(tmp_path / "run" / "submission.csv")
    assert len(sub) == 30  # still a complete submission: the missing chips get the fallback tags
    assert CliRunner().invoke(main, args + ["--allow-missing"]).exit_code == 0


def test_tta_is_invariant_to_the_chip_orientation():
    import tensorflow as tf

    from amazonmine.core.config import load_config
    from amazonmine.neural.datasets import tta_predict_fn
    from amazonmine.neural.model import build_model

    cfg = load_config(None, ["train.backbone=densenet_mini", "train.mini_blocks=[2,2]", "train.image_size=32"])
    model = build_model(cfg.train)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)
    infer8 = tta_predict_fn(model, 8)
    reference = infer8(tf.constant(x)).numpy()
    single = tta_predict_fn(model, 1)
    for k in range(1, 8):
        turned = np.ascontiguousarray(apply_dihedral(x, k))
        np.testing.assert_allclose(infer8(tf.constant(turned)).numpy(), reference, atol=1e-5)
    # without TTA the same turn changes the output: the invariance above is the TTA's doing
    assert np.abs(single(tf.constant(np.ascontiguousarray(apply_dihedral(x, 1)))).numpy()
                  - single(tf.constant(x)).numpy()).max() > 1e-4


def test_inference_functions_of_several_models_do_not_warn_of_retracing():
    # Train and predict build one TTA function per model (folds, before/after BatchNorm recalibration); each
    # traces once or twice, which must not add up to TensorFlow's "frequent retracing" warning.
    import logging

    import tensorflow as tf

    from amazonmine.core.config import load_config
    from amazonmine.neural.datasets import tta_predict_fn
    from amazonmine.neural.model import build_model

    cfg = load_config(None, ["train.backbone=densenet_mini", "train.mini_blocks=[1]", "train.image_size=32"])
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    tf.get_logger().addHandler(handler)
    try:
        for _ in range(6):
            infer = tta_predict_fn(build_model(cfg.train), 1)
            for n in (4, 3):  # full batches, then the shorter last one
                infer(tf.zeros((n, 32, 32, 3)))
    finally:
        tf.get_logger().removeHandler(handler)
    assert not [r for r in records if "retracing" in r.getMessage()]


def test_validate_submission_catches_the_classic_mistakes(tmp_path):
    sample = tmp_path / "sample.csv"
    pd.DataFrame({"image_name": ["test_0", "test_1", "file_0"], "tags": "clear"}).to_csv(sample, index=False)

    def check(rows):
        path = tmp_path / "sub.csv"
        pd.DataFrame(rows, columns=["image_name", "tags"]).to_csv(path, index=False)
        return " | ".join(validate_submission(path, sample))

    ok = [("test_0", "clear primary"), ("test_1", "cloudy"), ("file_0", "haze primary")]
    assert check(ok) == ""
    assert "order differs" in check([ok[1], ok[0], ok[2]])
    assert "file extension" in check([("test_0.jpg", "clear")] + ok[1:])
    assert "vocabulary" in check([("test_0", "clear gold")] + ok[1:])
    assert "rows, the sample has 3" in check(ok[:2])
    assert "duplicated" in check(ok + [ok[0]])


def test_predict_needs_thresholds_and_models(tmp_path, make_cfg, synth_root):
    from amazonmine.stages.predict import run_predict

    cfg = make_cfg(synth_root, **{"dehaze.enabled": "false"})
    with pytest.raises(AmazonmineError, match="thresholds.json"):
        run_predict(cfg, progress=False)


def test_explicit_folder_keeps_every_chip_in_input_order(run, tmp_path):
    from amazonmine.core.config import load_config
    from amazonmine.stages.predict import FALLBACK_TAGS, run_predict

    base, sets = run
    folder = tmp_path / "chips"
    shutil.copytree(base / "data" / "test-jpg", folder)
    names = sorted(p.stem for p in folder.glob("*.jpg"))
    broken = folder / f"{names[3]}.jpg"
    broken.write_bytes(b"garbage")
    shutil.copytree(base / "run", tmp_path / "run")
    cfg = load_config(None, sets + [f"run.dir={tmp_path / 'run'}"])
    summary = run_predict(cfg, inputs=[folder], progress=False)
    sub = pd.read_csv(summary.submission, dtype=str, keep_default_na=False)
    assert sub["image_name"].tolist() == names  # the unreadable chip keeps its row, in place
    assert sub.loc[sub["image_name"] == names[3], "tags"].item() == FALLBACK_TAGS
    assert len(summary.failed) == 1 and f"{names[3]}.jpg: truncated or corrupt" in summary.failed[0]


def _copy_run(run, tmp_path, *extra):
    """A private copy of the trained run (tests write into it) and its config."""
    from amazonmine.core.config import load_config

    base, sets = run
    shutil.copytree(base / "run", tmp_path / "run")
    return load_config(None, sets + [f"run.dir={tmp_path / 'run'}", *extra])


def test_a_folder_of_only_corrupt_chips_gets_fallback_rows(run, tmp_path):
    from amazonmine.cli import main
    from amazonmine.stages.predict import FALLBACK_TAGS

    base, sets = run
    folder = tmp_path / "chips"
    folder.mkdir()
    for name in ("x", "y"):
        (folder / f"{name}.jpg").write_bytes(b"garbage")
    shutil.copytree(base / "run", tmp_path / "run")
    args = ["predict", str(folder), "--allow-missing"] + [a for s in sets for a in ("--set", s)] \
        + ["--set", f"run.dir={tmp_path / 'run'}"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "2 chip(s) missing or unreadable" in result.output
    out = tmp_path / "run" / "predictions"
    labels = pd.read_csv(out / "labels.csv", dtype=str, keep_default_na=False)
    assert labels.values.tolist() == [["x", FALLBACK_TAGS], ["y", FALLBACK_TAGS]]
    assert len(pd.read_csv(out / "predict_failures.csv")) == 2


def test_chips_of_the_wrong_size_are_refused(run, tmp_path):
    import cv2

    from amazonmine.stages.predict import FALLBACK_TAGS, run_predict

    base, _ = run
    folder = tmp_path / "chips"
    shutil.copytree(base / "data" / "test-jpg", folder)
    small = sorted(folder.glob("*.jpg"))[0]
    cv2.imwrite(str(small), cv2.resize(cv2.imread(str(small)), (20, 20)))
    cfg = _copy_run(run, tmp_path, "data.chip_size=32")  # the synthetic chips are 32 px
    summary = run_predict(cfg, inputs=[folder], progress=False)
    assert len(summary.failed) == 1 and f"{small}: chip is 20x20, expected 32x32" in summary.failed[0]
    labels = pd.read_csv(summary.submission, dtype=str, keep_default_na=False).set_index("image_name")
    assert labels.loc[small.stem, "tags"] == FALLBACK_TAGS


def test_a_clean_rerun_removes_the_stale_failure_list(run, tmp_path):
    from amazonmine.stages.predict import run_predict

    cfg = _copy_run(run, tmp_path)
    stale = tmp_path / "run" / "predict_failures.csv"
    stale.write_text("problem\ntest_1: listed in sample_submission_v2.csv but no chip file found\n")
    summary = run_predict(cfg, progress=False)
    assert not summary.failed and not stale.exists()


def test_explicit_inputs_are_dehazed_in_memory_and_kept_apart_from_the_submission(run, tmp_path):
    import cv2

    from amazonmine.core.decisions import decode
    from amazonmine.core.haze import DehazeParams, dehaze_image
    from amazonmine.core.runfolder import RunFolder
    from amazonmine.stages.predict import run_predict

    base, _ = run
    raw, clean = tmp_path / "raw", tmp_path / "clean"
    raw.mkdir()
    clean.mkdir()
    # Names pandas would read as numbers or as missing must come through as written.
    for name, src in zip(["0001", "NA", "7", "test_a"], sorted((base / "data" / "test-jpg").glob("*.jpg"))):
        shutil.copy(src, raw / f"{name}.jpg")
        # The reference: each chip dehazed by the dehaze module, stored losslessly.
        cv2.imwrite(str(clean / f"{name}.png"), dehaze_image(read_image(src), DehazeParams()).image)
    kaggle = {f: (tmp_path / "run" / f) for f in ("submission.csv", "test_probabilities.csv")}
    cfg = _copy_run(run, tmp_path, "dehaze.enabled=true")
    for path in kaggle.values():
        path.write_text("left alone\n")

    def predict(folder, dehaze: bool):
        # The predictor follows what the folds recorded they learnt from: make the copied run say it.
        cfg.dehaze.enabled = dehaze
        _record_dehaze(RunFolder.from_config(cfg), cfg, dehaze)
        summary = run_predict(cfg, inputs=[folder], progress=False)
        assert not summary.failed
        return summary, pd.read_csv(summary.probabilities, dtype={"image_name": str}, keep_default_na=False)

    summary, dehazed = predict(raw, True)
    out = tmp_path / "run" / "predictions"
    assert (summary.submission, summary.probabilities) == (out / "labels.csv", out / "probabilities.csv")
    assert all(path.read_text() == "left alone\n" for path in kaggle.values())
    assert validate_submission(summary.submission) == []
    labels = pd.read_csv(summary.submission, dtype=str, keep_default_na=False)
    assert labels["image_name"].tolist() == dehazed["image_name"].tolist() == ["0001", "7", "NA", "test_a"]
    thresholds, weather_decoding = RunFolder.from_config(cfg).read_thresholds()
    expected = matrix_to_tags(decode(dehazed[list(LABELS)].to_numpy(), thresholds, weather_decoding))
    assert labels["tags"].tolist() == expected

    _, reference = predict(clean, False)
    _, untouched = predict(raw, False)
    np.testing.assert_allclose(dehazed[list(LABELS)], reference[list(LABELS)], atol=1e-5)
    assert np.abs(dehazed[list(LABELS)].to_numpy() - untouched[list(LABELS)].to_numpy()).max() > 1e-3


def test_unfinished_folds_are_left_out_and_other_splits_refused(run, tmp_path):
    from amazonmine.core.config import load_config
    from amazonmine.stages.predict import run_predict

    base, sets = run
    copy = tmp_path / "run"
    shutil.copytree(base / "run", copy)
    cfg = load_config(None, [*sets, f"run.dir={copy}"])
    # fold3: a model file but no summary.json, as a fold interrupted (or still training) leaves it
    (copy / "fold3").mkdir()
    shutil.copyfile(copy / "fold0" / "b01_dense121.h5", copy / "fold3" / "b01_dense121.h5")
    summary = run_predict(cfg, progress=False)
    assert summary.n_models == 2 and "left out fold3: not finished" in summary.headline()
    # fold1 as if trained on another split: refused, naming it
    import json

    path = copy / "fold1" / "summary.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "split_sha256": "0" * 64}))
    with pytest.raises(AmazonmineError, match=r"fold1 trained on another split than the run's folds.csv"):
        run_predict(cfg, progress=False)


def test_the_predictor_in_three_lines_gives_predicts_probabilities(run):
    # The notebook recipe of the README: a run folder in, probabilities for an array of chips out, equal to
    # what the predict stage wrote for the same chips (it rounds to 6 decimals).
    from amazonmine.core.config import load_config
    from amazonmine.neural.predictor import Predictor
    from amazonmine.stages.predict import run_predict

    base, sets = run
    written = pd.read_csv(run_predict(load_config(None, sets), progress=False).probabilities, dtype={"image_name": str})
    chips = np.stack([read_image(base / "data" / "test-jpg" / f"{n}.jpg") for n in written["image_name"][:7]])

    predictor = Predictor.from_run(base / "run")
    probs = predictor.predict(chips)

    assert probs.shape == (7, 17) and probs.dtype == np.float32
    np.testing.assert_allclose(probs, written[list(LABELS)].to_numpy()[:7], atol=2e-6)
    assert predictor.decide(probs).shape == (7, 17)


def test_each_model_is_traced_once_whatever_the_batch_sizes(run):
    from amazonmine.neural.predictor import Predictor

    base, _ = run
    predictor = Predictor.from_run(base / "run", batch_size=4)
    chips = np.random.default_rng(0).integers(0, 256, (11, 32, 32, 3), dtype=np.uint8)
    predictor.predict(chips)  # batches of 4, 4, 3
    predictor.predict(chips[:2])
    assert [f.experimental_get_tracing_count() for f in predictor._infers] == [1] * len(predictor.models)


def _record_dehaze(run, cfg, enabled: bool) -> None:
    """Rewrite the folds' recorded settings as if they had been trained with dehazing on (or off)."""
    import json

    for k in run.fold_numbers():
        summary = json.loads(run.fold(k).summary.read_text())
        settings = {key: v for key, v in summary["settings"].items() if not key.startswith("dehaze.")}
        settings["dehaze.enabled"] = enabled
        if enabled:
            settings.update({f"dehaze.{f}": v for f, v in cfg.dehaze.model_dump().items()
                             if f not in ("enabled", "workers", "out_dir")})
        summary["settings"] = settings
        run.fold(k).summary.write_text(json.dumps(summary))


def test_without_the_sample_submission_predict_says_the_order_was_not_checked(run, tmp_path):
    from amazonmine.stages.predict import run_predict

    base, _ = run
    data = tmp_path / "data"
    shutil.copytree(base / "data", data)
    (data / "sample_submission_v2.csv").unlink()
    cfg = _copy_run(run, tmp_path, f"data.root={data}")
    summary = run_predict(cfg, progress=False)
    assert "no sample_submission_v2.csv" in summary.headline() and "not checked" in summary.headline()
