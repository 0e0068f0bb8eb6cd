"""Synthetic Planet chips: the Kaggle layout, label rules, haze truth, rare boost, determinism, TIFs, the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from amazonmine.core.data import LABELS, WEATHER_LABELS

RARE = ("artisinal_mine", "blooming", "blow_down", "conventional_mine", "selective_logging", "slash_burn")
LAND = tuple(label for label in LABELS if label not in WEATHER_LABELS)
SIZE = 32
N_TRAIN, N_TEST = 48, 33  # 33 test chips -> 22 test_* and 11 file_* (file_0 .. file_10)
SEED = 4  # gives haze chips in train and test, and cloudy ones (checked in the tests that need them)


def _make(root: Path, **kwargs) -> dict:
    from amazonmine.stages.synth import paint_dataset

    kwargs.setdefault("progress", False)
    return paint_dataset(root, **kwargs)


def _folder_of(name: str) -> str:
    if name.startswith("train_"):
        return "train-jpg"
    return "test-jpg" if name.startswith("test_") else "test-jpg-additional"


def _all_tags(root: Path) -> pd.DataFrame:
    train = pd.read_csv(root / "train_v2.csv", dtype=str, keep_default_na=False)
    test = pd.read_csv(root / "truth" / "test_labels.csv", dtype=str, keep_default_na=False)
    return pd.concat([train, test], ignore_index=True)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "planet"
    summary = _make(root, n_train=N_TRAIN, n_test=N_TEST, size=SIZE, seed=SEED, rare_boost=20.0, tif=True)
    return root, summary


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """A few hundred chips with the real label frequencies (rare_boost=1); 16 px keeps it fast."""
    root = tmp_path_factory.mktemp("plain") / "planet"
    _make(root, n_train=300, n_test=0, size=16, seed=3, rare_boost=1.0)
    return root


# --- layout and data layer ---------------------------------------------------------------------------------

def test_kaggle_layout_is_written(synth):
    root, summary = synth
    for name in ("train_v2.csv", "sample_submission_v2.csv", "truth/test_labels.csv", "truth/haze.csv"):
        assert (root / name).is_file(), name
    train = pd.read_csv(root / "train_v2.csv", dtype=str)
    assert list(train.columns) == ["image_name", "tags"]
    assert train["image_name"].tolist() == [f"train_{i}" for i in range(N_TRAIN)]
    assert sorted(p.name for p in (root / "train-jpg").iterdir()) == sorted(f"train_{i}.jpg" for i in range(N_TRAIN))
    tests = sorted(p.stem for p in (root / "test-jpg").iterdir())
    extra = sorted(p.stem for p in (root / "test-jpg-additional").iterdir())
    assert all(n.startswith("test_") for n in tests) and all(n.startswith("file_") for n in extra)
    assert len(tests) + len(extra) == N_TEST and len(extra) == 11
    assert summary["n_train"] == N_TRAIN and summary["n_test"] == N_TEST and summary["size"] == SIZE
    assert summary["label_counts"] == {label: int(train["tags"].str.split().apply(lambda t: label in t).sum())
                                       for label in LABELS}


def test_sample_submission_is_in_kaggles_order(synth):
    root, _ = synth
    sample = pd.read_csv(root / "sample_submission_v2.csv", dtype=str)
    assert list(sample.columns) == ["image_name", "tags"]
    names = sample["image_name"].tolist()
    n_main = N_TEST - N_TEST // 3
    # test_* numerically (test_2 before test_10), then file_* as strings (file_10 before file_2).
    assert names[:n_main] == [f"test_{i}" for i in range(n_main)]
    assert names[n_main:] == ["file_0", "file_1", "file_10"] + [f"file_{i}" for i in range(2, 10)]
    truth = pd.read_csv(root / "truth" / "test_labels.csv", dtype=str)
    assert truth["image_name"].tolist() == names


def test_data_layer_loads_the_synthetic_set(synth):
    from amazonmine.core.config import load_config
    from amazonmine.core.data import PlanetLayout, read_image, read_labels

    root, _ = synth
    cfg = load_config(None, [f"data.root={root}", f"data.chip_size={SIZE}"])
    layout = PlanetLayout.from_config(cfg.data)
    frame, matrix = layout.load_train()  # checks every listed chip exists
    assert len(frame) == N_TRAIN and matrix.shape == (N_TRAIN, len(LABELS))
    found = layout.list_test()
    sample = pd.read_csv(root / "sample_submission_v2.csv", dtype=str)
    assert sorted(n for n, _ in found) == sorted(sample["image_name"])
    truth = read_labels(root / "truth" / "test_labels.csv")
    assert len(truth) == N_TEST
    for name, path in found[:5] + [(n, layout.train_dir / f"{n}.jpg") for n in frame["image_name"][:5]]:
        img = read_image(path, expected_size=SIZE)
        assert img.shape == (SIZE, SIZE, 3) and img.dtype == np.uint8, name
    tif_cfg = load_config(None, [f"data.root={root}", "data.image_format=tif"])
    tif_layout = PlanetLayout.from_config(tif_cfg.data)
    tif_layout.load_train()
    img = read_image(tif_layout.image_dir / "train_0.tif", expected_size=SIZE)
    assert img.shape == (SIZE, SIZE, 4) and img.dtype == np.uint16


# --- label rules -------------------------------------------------------------------------------------------

def test_exactly_one_weather_label_and_cloudy_chips_have_no_land(synth):
    root, _ = synth
    tags = _all_tags(root)["tags"].str.split()
    weather_counts = tags.apply(lambda t: sum(w in t for w in WEATHER_LABELS))
    assert (weather_counts == 1).all(), tags[weather_counts != 1].tolist()
    cloudy = tags[tags.apply(lambda t: "cloudy" in t)]
    assert len(cloudy) > 0, "the fixture's seed should give cloudy chips"
    assert all(t == ["cloudy"] for t in cloudy), cloudy.tolist()
    assert all(t == sorted(t) for t in tags)  # Kaggle's alphabetical tag order


def test_label_combinations_follow_the_real_distribution(plain, real_labels_csv):
    from amazonmine.stages.synth import normalise_tags

    train = pd.read_csv(plain / "train_v2.csv", dtype=str)
    tags = train["tags"].str.split()
    n = len(tags)
    share = {label: tags.apply(lambda t, lab=label: lab in t).mean() for label in LABELS}
    assert share["primary"] > 0.8, share["primary"]  # 93 % of the real chips
    weather = {w: share[w] for w in WEATHER_LABELS}
    assert max(weather, key=weather.get) == "clear", weather
    assert 0.5 < share["clear"] < 0.85, share["clear"]  # 70 % of the real chips
    rare_chips = tags.apply(lambda t: bool(set(RARE) & set(t))).sum()
    assert rare_chips < 0.1 * n, rare_chips  # ~4 % of the real chips hold a rare label
    real = pd.read_csv(real_labels_csv, dtype=str, keep_default_na=False)
    real_sets = {" ".join(normalise_tags(t)) for t in real["tags"]}
    unseen = sorted(set(train["tags"]) - real_sets)
    assert not unseen, unseen


def test_bundled_combinations_match_the_real_labels(real_labels_csv):
    from amazonmine.stages.synth import load_label_combos

    combos, counts = load_label_combos()
    real = pd.read_csv(real_labels_csv, dtype=str, keep_default_na=False)["tags"].value_counts()
    assert dict(zip(combos, counts.astype(int).tolist())) == real.to_dict()


def test_rare_boost_raises_rare_label_counts(plain, tmp_path):
    boosted = tmp_path / "boosted"
    _make(boosted, n_train=300, n_test=0, size=16, seed=3, rare_boost=20.0)

    def counts(root):
        tags = pd.read_csv(root / "train_v2.csv", dtype=str)["tags"].str.split()
        per_label = {label: int(tags.apply(lambda t, lab=label: lab in t).sum()) for label in RARE}
        return per_label, int(tags.apply(lambda t: bool(set(RARE) & set(t))).sum())

    (plain_labels, plain_any), (boost_labels, boost_any) = counts(plain), counts(boosted)
    assert boost_any >= 3 * max(plain_any, 1), (plain_any, boost_any)
    assert boost_labels["artisinal_mine"] > plain_labels["artisinal_mine"], (plain_labels, boost_labels)
    assert sum(v > 0 for v in boost_labels.values()) >= 5, boost_labels


# --- haze truth --------------------------------------------------------------------------------------------

def test_haze_truth_reproduces_the_hazy_jpeg(synth):
    import cv2

    root, summary = synth
    haze = pd.read_csv(root / "truth" / "haze.csv")
    tags = _all_tags(root)
    hazy_names = sorted(tags.loc[tags["tags"].str.split().apply(lambda t: "haze" in t), "image_name"])
    assert sorted(haze["image_name"]) == hazy_names and summary["haze"] == len(hazy_names)
    assert any(n.startswith("train_") for n in hazy_names), "the fixture's seed should give hazy training chips"
    assert sorted(p.stem for p in (root / "truth" / "clean").glob("*.png")) == hazy_names
    assert sorted(p.stem for p in (root / "truth" / "transmission").glob("*.png")) == hazy_names
    for row in haze.itertuples():
        hazy = cv2.imread(str(root / _folder_of(row.image_name) / f"{row.image_name}.jpg")).astype(np.float64)
        clean = cv2.imread(str(root / "truth" / "clean" / f"{row.image_name}.png")).astype(np.float64)
        t8 = cv2.imread(str(root / "truth" / "transmission" / f"{row.image_name}.png"), cv2.IMREAD_UNCHANGED)
        assert t8.shape == (SIZE, SIZE) and t8.dtype == np.uint8
        t = t8.astype(np.float64)[..., None] / 255.0
        airlight = np.array([row.A_b, row.A_g, row.A_r]) * 255.0  # OpenCV's B, G, R order
        rebuilt = clean * t + airlight * (1 - t)
        error = np.abs(rebuilt - hazy).mean()
        change = np.abs(hazy - clean).mean()
        assert error < 4.0, (row.image_name, error)  # JPEG q95 (4:2:0) + 8-bit rounding, in grey levels
        assert change > 25.0 and change > 8 * error, (row.image_name, change, error)
        assert abs(t8.mean() / 255.0 - row.t_mean) < 0.01
        assert 0 < t.min() and t.max() < 1
        assert 0.6 < min(row.A_b, row.A_g, row.A_r) and max(row.A_b, row.A_g, row.A_r) <= 1.0


def test_paint_chip_follows_the_scattering_model():
    from amazonmine.stages.synth import paint_chip

    chip = paint_chip(["haze", "primary", "water"], 24, np.random.default_rng(0))
    assert chip.bands.shape == chip.clean.shape == (24, 24, 4) and chip.transmission.shape == (24, 24)
    t = chip.transmission[..., None]
    np.testing.assert_allclose(chip.bands, np.clip(chip.clean * t + chip.airlight * (1 - t), 0, 1), atol=1e-6)
    assert np.abs(chip.bands - chip.clean).mean() > 0.1
    clear = paint_chip(["clear", "primary"], 24, np.random.default_rng(0))
    assert clear.clean is None and clear.airlight is None and clear.transmission is None
    assert clear.bands.dtype == np.float32 and 0 <= clear.bands.min() and clear.bands.max() <= 1
    cloudy = paint_chip(["cloudy"], 24, np.random.default_rng(0))
    assert cloudy.bands[..., :3].mean() > clear.bands[..., :3].mean() + 0.3


# --- determinism -------------------------------------------------------------------------------------------

def test_same_seed_same_files_different_seed_different(tmp_path):
    kwargs = dict(n_train=12, n_test=6, size=16, rare_boost=20.0, tif=True)
    _make(tmp_path / "a", seed=7, **kwargs)
    _make(tmp_path / "b", seed=7, **kwargs)
    _make(tmp_path / "c", seed=8, **kwargs)
    a, b, c = _tree(tmp_path / "a"), _tree(tmp_path / "b"), _tree(tmp_path / "c")
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a), [k for k in a if a[k] != b.get(k)]
    chips = [k for k in a if k.startswith("train-jpg/")]
    assert c["train_v2.csv"] != a["train_v2.csv"]
    assert sum(a[k] != c.get(k) for k in chips) > len(chips) // 2


# --- TIFs --------------------------------------------------------------------------------------------------

def test_tifs_are_4_band_uint16_and_match_the_jpeg(synth):
    import cv2
    import tifffile

    root, _ = synth
    tifs = sorted((root / "train-tif-v2").glob("*.tif"))
    assert len(tifs) == N_TRAIN
    assert not (root / "train-tif-v2" / "test_0.tif").exists()
    correlations = []
    for path in tifs:
        bands = tifffile.imread(path)
        assert bands.shape == (SIZE, SIZE, 4) and bands.dtype == np.uint16, path.name
        jpeg = cv2.imread(str(root / "train-jpg" / f"{path.stem}.jpg")).astype(np.float64)
        for b in range(3):  # file band order B, G, R, NIR; OpenCV's JPEG order B, G, R
            if jpeg[..., b].std() < 3:
                continue  # a flat band (e.g. under cloud) has no correlation to measure
            r = np.corrcoef(bands[..., b].astype(np.float64).ravel(), jpeg[..., b].ravel())[0, 1]
            # Plain forest (JPEG std ~5 grey levels) loses some correlation to JPEG error: ~0.8 measured.
            assert r > 0.7, (path.name, b, r)
            correlations.append(r)
    assert len(correlations) > N_TRAIN and np.median(correlations) > 0.95, np.median(correlations)
    hazy_train = [p for p in (root / "truth" / "clean").glob("train_*.png")]
    for png in hazy_train:
        clean_tif = tifffile.imread(root / "truth" / "clean" / f"{png.stem}.tif")
        assert clean_tif.shape == (SIZE, SIZE, 4) and clean_tif.dtype == np.uint16


# --- CLI ---------------------------------------------------------------------------------------------------

def test_cli_synth_writes_and_summarises(tmp_path):
    from click.testing import CliRunner

    from amazonmine.cli import main

    out = tmp_path / "cli"
    result = CliRunner().invoke(main, ["synth", str(out), "--n-train", "20", "--n-test", "5", "--size", "32"])
    assert result.exit_code == 0, result.output
    assert "wrote 20 train + 5 test chips (32 px" in result.stdout
    assert "artisinal_mine=" in result.stdout
    assert len(list((out / "train-jpg").glob("*.jpg"))) == 20
    assert len(pd.read_csv(out / "sample_submission_v2.csv")) == 5


def test_cli_synth_too_small_is_a_one_line_error(tmp_path):
    from click.testing import CliRunner

    from amazonmine.cli import main

    out = tmp_path / "tiny"
    result = CliRunner().invoke(main, ["synth", str(out), "--size", "8"])
    assert result.exit_code != 0
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "--size 8" in lines[0], result.stderr
    assert not out.exists()


def test_synth_refuses_bad_counts_and_a_non_empty_folder(tmp_path):
    from amazonmine.core.data import DataError
    from amazonmine.stages.synth import paint_dataset

    with pytest.raises(DataError, match="--n-test must be 0 or more"):
        paint_dataset(tmp_path / "a", n_train=4, n_test=-3, size=16, progress=False)
    with pytest.raises(DataError, match="--rare-boost must be a positive number"):
        paint_dataset(tmp_path / "b", n_train=4, n_test=2, size=16, rare_boost=-1, progress=False)
    out = tmp_path / "c"
    paint_dataset(out, n_train=10, n_test=9, size=16, progress=False)
    with pytest.raises(DataError, match="folder is not empty"):
        paint_dataset(out, n_train=5, n_test=3, size=16, progress=False)
    paint_dataset(out, n_train=5, n_test=3, size=16, progress=False, overwrite=True)
    assert len(list((out / "train-jpg").iterdir())) == 5  # nothing left of the larger set
    assert len(list((out / "test-jpg").iterdir())) + len(list((out / "test-jpg-additional").iterdir())) == 3
