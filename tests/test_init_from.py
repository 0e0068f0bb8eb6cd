"""train.init_from: a run folder, a bundle or a model file starts the network; a new vocabulary gets a new head,
the same one keeps it; train.head_epochs trains the head alone first; a mismatch is one line."""

import numpy as np
import pytest

from amazonmine.core.data import LABELS
from amazonmine.core.errors import AmazonmineError

TINY = {"dehaze.enabled": "false", "split.folds": 2, "split.rare_target": 0, "train.backbone": "densenet_mini",
        "train.mini_blocks": "[2]", "train.image_size": 32, "train.batch_size": 16, "train.epochs": 1,
        "train.steps_per_epoch": 2, "train.warmup_epochs": 0, "train.verbose": 0,
        "train.bn_recalibration_batches": 0, "predict.tta": 1}


def test_the_released_bundle_is_a_source_and_a_mismatch_is_one_line():
    from amazonmine.core.config import load_config
    from amazonmine.neural.finetune import check_compatible, resolve_source

    source = resolve_source("planet32-v1", 0)
    assert source.kind == "bundle" and source.labels == LABELS and source.image_size == 48
    cfg = load_config(None, ["train.image_size=64", "train.backbone=densenet121"])
    with pytest.raises(AmazonmineError) as refused:
        check_compatible(source, cfg.train)
    message = str(refused.value)
    assert "\n" not in message and message.startswith("train.init_from: bundle planet32-v1")
    assert "48" in message and "64" in message
    cfg = load_config(None, ["train.image_size=48", "train.backbone=densenet_mini"])
    with pytest.raises(AmazonmineError, match="is a densenet121, this run's train.backbone is densenet_mini"):
        check_compatible(source, cfg.train)
    with pytest.raises(AmazonmineError, match="no such model file, run folder or installed model bundle"):
        resolve_source("planet99-v9", 0)


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
    """A tiny model trained on the Planet vocabulary (one epoch of two steps: only its weights matter)."""
    from amazonmine.core.config import load_config
    from amazonmine.stages.split import run_split
    from amazonmine.stages.synth import paint_dataset
    from amazonmine.stages.train import run_train

    root = tmp_path_factory.mktemp("source") / "planet"
    paint_dataset(root, n_train=40, n_test=4, size=32, seed=7, rare_boost=1.0, progress=False)
    run_dir = tmp_path_factory.mktemp("source_run")
    cfg = load_config(None, [f"{k}={v}" for k, v in TINY.items()] + [f"data.root={root}", f"run.dir={run_dir}"])
    run_split(cfg)
    (result,) = run_train(cfg, folds=[0])
    return root, run_dir, result


@pytest.mark.slow
def test_fine_tuning_with_a_new_head_trains_saves_and_starts_from_the_backbone(source_run, make_cfg):
    import keras

    from amazonmine.stages.split import run_split
    from amazonmine.stages.train import run_train

    root, run_dir, source = source_run
    # A near-zero learning rate after the head phase: the saved backbone is the source's, the head is new.
    cfg = make_cfg(root, **{**TINY, "data.labels": "[agriculture, water]", "train.init_from": run_dir,
                            "train.head_epochs": 1, "train.learning_rate": 1e-9})
    run_split(cfg)
    (result,) = run_train(cfg, folds=[0])
    record = result.summary["init_from"]
    assert record["kind"] == "run" and record["head"] == "new" and record["labels"] == list(LABELS)
    assert record["head_phase"]["epochs"] == 1 and record["head_phase"]["frozen_layers"] >= 1
    before = keras.models.load_model(source.model_path, safe_mode=True)
    after = keras.models.load_model(result.model_path, safe_mode=True)
    assert after.output_shape[-1] == 2 and before.output_shape[-1] == len(LABELS)
    backbone = [layer.name for layer in after.layers if layer.weights and layer.name != "logits"]
    for name in backbone:
        kernels = [(a, b) for a, b in zip(before.get_layer(name).get_weights(), after.get_layer(name).get_weights())
                   if a.ndim == 4]
        assert kernels and all(np.allclose(a, b, atol=1e-5) for a, b in kernels), name


@pytest.mark.slow
def test_the_same_vocabulary_keeps_the_head_and_the_head_phase_leaves_the_backbone(source_run, make_cfg):
    from amazonmine.neural.finetune import resolve_source, start_from, train_head
    from amazonmine.neural.fitting import make_loss, make_metric
    from amazonmine.neural.model import build_model, load_trained

    root, run_dir, source = source_run
    cfg = make_cfg(root, **{**TINY, "train.init_from": run_dir, "train.head_epochs": 1})
    model = build_model(cfg.train, num_labels=len(LABELS))
    record = start_from(model, resolve_source(str(run_dir), 0), LABELS, cfg.train)
    trained = load_trained(source.model_path)
    assert record["head"] == "kept"
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), trained.get_weights()))
    frozen = [w.copy() for layer in model.layers if layer.weights and layer.name != "logits"
              for w in layer.get_weights()]
    head = model.get_layer("logits").get_weights()[0].copy()
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (32, 32, 32, 3)).astype(np.float32)
    y = (rng.random((32, len(LABELS))) < 0.3).astype(np.float32)
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(16).repeat()
    val = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)

    def compile_model(optimizer):
        model.compile(optimizer=optimizer, loss=make_loss(cfg.train), metrics=[make_metric()])

    phase = train_head(model, cfg.train, compile_model, ds, val, steps=2)
    assert phase["epochs"] == 1
    after = [w for layer in model.layers if layer.weights and layer.name != "logits" for w in layer.get_weights()]
    assert all(np.array_equal(a, b) for a, b in zip(frozen, after))  # BatchNorm statistics included
    assert not np.array_equal(head, model.get_layer("logits").get_weights()[0])
    assert all(layer.trainable for layer in model.layers)  # the whole network trains next


@pytest.mark.slow
def test_a_size_mismatch_is_one_line_before_the_fold_is_written(source_run, make_cfg):
    from amazonmine.stages.split import run_split
    from amazonmine.stages.train import run_train

    root, run_dir, _ = source_run
    cfg = make_cfg(root, **{**TINY, "train.image_size": 48, "train.init_from": run_dir})
    run_split(cfg)
    with pytest.raises(AmazonmineError) as refused:
        run_train(cfg, folds=[0])
    message = str(refused.value)
    assert "\n" not in message and message.startswith(f"train.init_from: run {run_dir}")
    assert "image size 32 px" in message and "train.image_size is 48" in message
    assert not (cfg.run_dir / "fold0").exists()
