"""The evaluate stage: an offline HTML report whose tables, plots and thumbnails exist and say the truth.

The out-of-fold probabilities here are fabricated (amazonmine.tune.simulate_oof, no model): the report's job is
to present whatever the run holds, so any plausible probabilities exercise it.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import cv2
import numpy as np
import pandas as pd
import pytest

from amazonmine.data import LABEL_INDEX, LABELS, DataError, PlanetLayout, matrix_to_tags, read_image
from amazonmine.decisions import decode
from amazonmine.metrics import mean_f2
from amazonmine.evaluate import run_evaluate
from amazonmine.tune import run_tune, simulate_oof

MINE = LABEL_INDEX["artisinal_mine"]


def write_oof(cfg, seed: int = 0, folds: int = 2):
    """Fabricated OOF probabilities for every labelled chip, split over ``folds`` files."""
    frame, matrix = PlanetLayout.from_config(cfg.data).load_train(check_files=False)
    probs = simulate_oof(matrix, seed)
    run = Path(cfg.run.dir)
    run.mkdir(parents=True, exist_ok=True)
    for fold in range(folds):
        rows = np.arange(len(frame)) % folds == fold
        block = pd.DataFrame(probs[rows], columns=list(LABELS))
        block.insert(0, "image_name", frame["image_name"][rows].to_numpy())
        block.to_csv(run / f"oof_fold{fold}.csv", index=False, float_format="%.6f")
    return frame, matrix.astype(bool), np.round(probs, 6)


def image_sources(index: Path) -> list[Path]:
    return [index.parent / unquote(src) for src in re.findall(r'<img src="([^"]+)"', index.read_text())]


def assert_valid_image(path: Path, min_side: int = 16) -> np.ndarray:
    assert path.is_file(), path
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert img is not None, f"{path} does not decode"
    assert min(img.shape[:2]) >= min_side, (path, img.shape)
    return img


def colour_error(thumbnail: np.ndarray, chip: np.ndarray) -> tuple[float, float]:
    """Mean absolute pixel error of a thumbnail against its chip as stored and with R and B swapped."""
    expected = cv2.resize(chip, thumbnail.shape[:2][::-1], interpolation=cv2.INTER_AREA).astype(float)
    thumb = thumbnail.astype(float)
    return float(np.abs(thumb - expected).mean()), float(np.abs(thumb - expected[..., ::-1]).mean())


@pytest.fixture
def synth_cfg(synth_root, make_cfg):
    return make_cfg(synth_root, **{"dehaze.enabled": "false", "evaluate.gallery_size": 6, "evaluate.thumbnail": 48})


def test_report_on_synthetic_run(synth_cfg):
    _, y, p = write_oof(synth_cfg)
    result = run_evaluate(synth_cfg)
    index = Path(synth_cfg.run.dir) / "report" / "index.html"
    assert result.path == index and index.is_file()
    text = index.read_text()

    for label in LABELS:
        assert re.search(rf"<tr><td>{label}</td><td[^>]*>0\.20</td>", text) or (
            re.search(rf"<tr><td>{label}</td><td[^>]*>argmax</td>", text)), label
    expected_f2 = mean_f2(y, decode(p, np.full(17, 0.2), synth_cfg.tune.weather_decoding))
    assert result.oof_f2 == pytest.approx(expected_f2)
    assert f"{expected_f2:.4f}" in text and f"{expected_f2:.4f}" in result.headline()
    assert str(index) in result.headline()

    # Offline: no scripts, nothing fetched from elsewhere, every picture a file beside the page.
    assert "<script" not in text and "http://" not in text and "https://" not in text
    sources = image_sources(index)
    assert {"curves.png", "cooccurrence.png"} <= {s.name for s in sources}
    for src in sources:
        assert src.resolve().is_relative_to(index.parent.resolve())
        assert_valid_image(src)
    assert_valid_image(index.parent / "curves.png", min_side=500)
    assert (index.parent / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    frame = PlanetLayout.from_config(synth_cfg.data).load_train(check_files=False)[0]
    names = frame["image_name"].to_numpy()
    gallery = [s for s in sources if s.parent.name == "gallery"]
    n_true = [min(6, int(y[:, LABELS.index(label)].sum())) for label in ("artisinal_mine", "conventional_mine")]
    assert sum(n_true) > 0
    assert len(gallery) == 2 * 6 + sum(n_true)
    top = re.findall(r"gallery/artisinal_mine_\d\d_(train_\d+)\.jpg", text)
    order = np.argsort(-p[:, MINE], kind="stable")[:6]
    assert top == names[order].tolist()
    # Every true mine chip, least confident first, each marked found or missed by the decision rule.
    pred = decode(p, np.full(17, 0.2), synth_cfg.tune.weather_decoding)
    true_rows = np.flatnonzero(y[:, MINE])
    true_rows = true_rows[np.argsort(p[true_rows, MINE], kind="stable")][:6]
    shown = re.findall(r"gallery/artisinal_mine_true_\d\d_(train_\d+)\.jpg", text)
    assert shown == names[true_rows].tolist()
    for i in true_rows:
        verdict = "found" if pred[i, MINE] else "missed"
        assert f"{names[i]}<br>p={p[i, MINE]:.3f}: {verdict}" in text
    assert f"{int(pred[y[:, MINE].astype(bool), MINE].sum())} of {int(y[:, MINE].sum())} found" in text

    # Sections whose inputs do not exist say so.
    assert "no dehazed chips at" in text
    assert "no submission.csv or test_probabilities.csv" in text
    assert "dehaze pairs" in result.headline() and "submission" in result.headline()


def test_report_uses_tuned_thresholds_and_predict_outputs(synth_cfg):
    write_oof(synth_cfg, seed=3)
    tuned = run_tune(synth_cfg)
    run = Path(synth_cfg.run.dir)
    n_test = 12
    probs = np.random.default_rng(0).random((n_test, 17))
    names = [f"test_{i}" for i in range(n_test)]
    frame = pd.DataFrame(probs, columns=list(LABELS))
    frame.insert(0, "image_name", names)
    frame.to_csv(run / "test_probabilities.csv", index=False)
    tags = matrix_to_tags(decode(probs, tuned.thresholds, True))
    pd.DataFrame({"image_name": names, "tags": tags}).to_csv(run / "submission.csv", index=False)

    result = run_evaluate(synth_cfg)
    text = result.path.read_text()
    assert result.thresholds_source == "tuned thresholds"
    assert result.oof_f2 == pytest.approx(tuned.f2_tuned)
    assert f'<td class="n">{tuned.thresholds[MINE]:.2f}</td>' in text
    assert "submission.csv: 12 chips" in text and "test_probabilities.csv: 12 chips" in text
    cloudy_share = np.mean(["cloudy" in t.split() for t in tags])
    assert re.search(rf"<tr><td>cloudy</td><td[^>]*>[\d.]+%</td><td[^>]*>{100 * cloudy_share:.2f}%</td>", text)
    assert "submission" not in result.headline()


def test_gallery_thumbnails_keep_colours(synth_cfg, synth_root):
    write_oof(synth_cfg)
    index = run_evaluate(synth_cfg).path
    checked = 0
    for thumb_path in (index.parent / "gallery").glob("*.jpg"):
        name = re.match(r".*_mine_(?:true_)?\d\d_(.+)\.jpg$", thumb_path.name).group(1)
        chip = read_image(synth_root / "train-jpg" / f"{name}.jpg")
        if np.abs(chip[..., 0].astype(int) - chip[..., 2]).mean() > 8:  # only then can a swap show
            same, swapped = colour_error(cv2.imread(str(thumb_path)), chip)
            assert same < swapped / 2, (thumb_path.name, same, swapped)
            checked += 1
    assert checked >= 3


def test_unreadable_gallery_chips_are_reported_not_fatal(synth_root, make_cfg):
    cfg = make_cfg(synth_root, **{"dehaze.enabled": "false", "data.train_dir": "no-such-jpg",
                                  "evaluate.gallery_size": 3})
    _, y, p = write_oof(cfg)
    result = run_evaluate(cfg)
    text = result.path.read_text()
    # The 3 most confident of each mine label and its 3 least confident true chips, each chip counted once.
    shown = set()
    for label in ("artisinal_mine", "conventional_mine"):
        j = LABELS.index(label)
        true_rows = np.flatnonzero(y[:, j])
        shown |= set(np.argsort(-p[:, j], kind="stable")[:3])
        shown |= set(true_rows[np.argsort(p[true_rows, j], kind="stable")][:3])
    assert f"{len(shown)} gallery chips could not be read" in text
    assert "no-such-jpg" in text and "some gallery chips" in result.headline()


def test_missing_oof_is_a_clear_error(synth_cfg):
    with pytest.raises(DataError, match=r"no out-of-fold predictions in .*: run 'amazonmine train' first"):
        run_evaluate(synth_cfg)


def test_report_on_real_chips(real256, tmp_path, make_cfg):
    """Real Planet chips (4-component JPEGs) in the gallery, and raw/dehazed pairs of real hazy chips."""
    cfg = make_cfg(real256, **{"dehaze.enabled": "false", "dehaze.out_dir": str(tmp_path / "dehazed"),
                               "evaluate.gallery_size": 8, "evaluate.thumbnail": 64})
    frame, y, p = write_oof(cfg, seed=5, folds=1)
    # Fabricated OOF (no model): the real mines are given high mine probabilities so they must be shown.
    p[y[:, MINE], MINE] = 0.95
    block = pd.DataFrame(p, columns=list(LABELS))
    block.insert(0, "image_name", frame["image_name"])
    block.to_csv(Path(cfg.run.dir) / "oof_fold0.csv", index=False)
    mines = frame["image_name"][y[:, MINE]].tolist()
    assert len(mines) == 3  # per ../shared/README.md

    # A stand-in "dehazed" copy of three hazy chips (a contrast stretch, not the dehaze stage).
    hazy = frame["image_name"][y[:, LABEL_INDEX["haze"]]].tolist()[:3]
    (tmp_path / "dehazed" / "train-jpg").mkdir(parents=True)
    for name in hazy:
        chip = cv2.imread(str(real256 / "train-jpg" / f"{name}.jpg"), cv2.IMREAD_COLOR)
        stretched = cv2.normalize(chip, None, 0, 255, cv2.NORM_MINMAX)
        cv2.imwrite(str(tmp_path / "dehazed" / "train-jpg" / f"{name}.jpg"), stretched)

    result = run_evaluate(cfg)
    text = result.path.read_text()
    report = result.path.parent
    try:
        read_image(real256 / "train-jpg" / f"{mines[0]}.jpg")
    except DataError as exc:
        # The report must survive chips the data layer refuses, and say so; the gallery itself cannot be
        # checked until data.read_image accepts Kaggle's JPEGs (they carry a few bytes after end-of-image).
        assert "gallery chips could not be read" in text and "some gallery chips" in result.headline()
        pytest.xfail(f"data.read_image rejects the real chips: {exc}")
    for name in mines:
        assert len(list((report / "gallery").glob(f"artisinal_mine_true_??_{name}.jpg"))) == 1, name
        thumbs = list((report / "gallery").glob(f"artisinal_mine_??_{name}.jpg"))
        assert len(thumbs) == 1, name
        assert f"gallery/{thumbs[0].name}" in text
        same, swapped = colour_error(assert_valid_image(thumbs[0]), read_image(real256 / "train-jpg" / f"{name}.jpg"))
        assert same < 6 and same < swapped, (name, same, swapped)
    assert "artisinal_mine: the 8 most confident, 3 truly artisinal_mine" in text
    assert "artisinal_mine: every true chip, 3 of 3 found" in text
    for name in hazy:
        pair = assert_valid_image(report / "dehaze" / f"{name}.jpg")
        assert pair.shape[1] > 2 * pair.shape[0]  # raw and dehazed side by side
        assert f"dehaze/{name}.jpg" in text
    assert "dehaze pairs" not in result.headline()
