"""Dehaze on the 32 real ``haze`` chips of ../shared/data/planet_real_256 (Planet, CC BY-SA 4.0).

Real Kaggle JPEGs are 4-component files with bytes after the end-of-image marker; they go through the same
reader as everything else. Skips when the shared data is not there.
"""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest

from amazonmine.core import haze as hz
from amazonmine.core.data import read_image
from amazonmine.stages import dehaze as dh


@pytest.fixture(scope="module")
def hazy_real(real256, tmp_path_factory):
    with (real256 / "train_v2.csv").open(newline="") as fh:
        names = [r["image_name"] for r in csv.DictReader(fh) if "haze" in r["tags"].split()]
    assert len(names) == 32
    src = tmp_path_factory.mktemp("real_haze") / "chips"
    src.mkdir()
    for name in names:
        shutil.copyfile(real256 / "train-jpg" / f"{name}.jpg", src / f"{name}.jpg")  # links out are refused
    return src, [f"{n}.jpg" for n in names]


def test_real_hazy_chips_come_out_valid_with_less_haze(hazy_real, make_cfg, tmp_path):
    src, names = hazy_real
    dst = tmp_path / "out"
    cfg = make_cfg()  # the defaults are meant for these 256 px chips
    summary = dh.run_dehaze(cfg, src=src, dst=dst, workers=1)
    assert summary.failed == [] and summary.processed == 32

    params = hz.DehazeParams.from_config(cfg.dehaze)
    for name in names:
        before = read_image(src / name)
        after = read_image(dst / name)
        assert after.shape == before.shape == (256, 256, 3) and after.dtype == np.uint8
        result = hz.dehaze_image(before, params)
        t = hz.transmission(before, result.airlight, params, 255.0)
        assert np.isfinite(t).all() and np.isfinite(result.airlight).all()
        assert t.min() >= params.t0 and t.max() <= 1.0
        dark_before = hz.dark_channel(before, params.patch).mean()
        dark_after = hz.dark_channel(after, params.patch).mean()
        assert dark_after < dark_before - 10, (name, dark_before, dark_after)

    rows = list(csv.DictReader((dst / dh.DEHAZE_STATS_CSV).open(newline="")))
    assert sorted(r["file"] for r in rows) == sorted(names)
    assert all(0 < float(r["t_mean"]) < 1 for r in rows)
