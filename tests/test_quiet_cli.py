"""The stages' output is theirs: TensorFlow's start-up chatter and Keras' legacy-HDF5 notices stay hidden."""

from __future__ import annotations

import subprocess
import sys

from amazonmine.stages.synth import paint_dataset


def test_train_prints_only_its_own_lines(tmp_path):
    paint_dataset(tmp_path / "data", n_train=8, n_test=0, size=32, seed=0, progress=False)
    sets = [f"data.root={tmp_path / 'data'}", f"run.dir={tmp_path / 'run'}", "dehaze.enabled=false",
            "split.folds=2", "split.rare_target=2", "train.backbone=densenet_mini", "train.mini_blocks=[1]",
            "train.image_size=32", "train.epochs=1", "train.steps_per_epoch=1", "train.verbose=0",
            "train.batch_size=4", "data.chip_size=32"]
    args = [a for s in sets for a in ("--set", s)]
    run = [sys.executable, "-m", "amazonmine.cli"]
    subprocess.run(run + ["split", *args], check=True, capture_output=True)
    out = subprocess.run(run + ["train", *args, "--fold", "0"], check=True, capture_output=True, text=True)
    noise = [line for line in (out.stdout + out.stderr).splitlines()
             if "cudart" in line or "oneDNN" in line or "absl" in line or "HDF5 file" in line]
    assert noise == [], noise
    assert "fold 0: best epoch 1" in out.stdout
