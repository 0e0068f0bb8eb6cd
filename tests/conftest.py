"""Shared fixtures: a tiny synthetic Planet set, the real labels and chips from ../shared when present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # tests always run on the CPU

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """60 labelled + 12 test chips at 64 px with 4-band TIFs and haze truth (read-only: copy before mutating)."""
    from amazonmine.stages.synth import paint_dataset

    root = tmp_path_factory.mktemp("synth") / "planet"
    paint_dataset(root, n_train=60, n_test=12, size=64, seed=1, rare_boost=20.0, tif=True, progress=False)
    return root


@pytest.fixture(scope="session")
def real_labels_csv() -> Path:
    path = SHARED / "planet_train_v2_labels.csv"
    if not path.is_file():
        pytest.skip(f"real Planet labels not found at {path} (provided in ../shared/ of the project checkout)")
    return path


@pytest.fixture(scope="session")
def real256() -> Path:
    path = SHARED / "planet_real_256"
    if not (path / "train_v2.csv").is_file():
        pytest.skip(f"real Planet 256-px chips not found at {path} (provided in ../shared/ of the project checkout)")
    return path


@pytest.fixture
def make_cfg(tmp_path):
    """Build a validated Config for a test: make_cfg(root, **{'train.epochs': 1, ...})."""
    from amazonmine.core.config import load_config

    def build(data_root: Path | None = None, **overrides):
        sets = [f"run.dir={tmp_path / 'run'}"]
        if data_root is not None:
            sets.append(f"data.root={data_root}")
        sets += [f"{k}={v}" for k, v in overrides.items()]
        return load_config(None, sets)

    return build
