"""Predict's inputs without a model: chip names pandas would mangle, unreadable chunks, wrong sizes, empty
lists, tif test folders, in-memory dehazing."""

import cv2
import numpy as np
import pandas as pd
import pytest

from amazonmine.core.data import LABELS, DataError, PlanetLayout, encode_jpeg, encode_tif, load_matrix_csv, read_image
from amazonmine.neural.predictor import Predictor
from amazonmine.stages.predict import _list_from_csv, write_submission

# Names pandas reads as numbers or as missing unless told not to.
AWKWARD = ["0001", "NA", "1e3"]


def probability_csv(path, rows: dict[str, list[str]]):
    """image_name + 17 probabilities: 0.9 for the given labels, 0.1 for the others."""
    lines = ["image_name," + ",".join(LABELS)]
    lines += [name + "," + ",".join("0.9" if label in on else "0.1" for label in LABELS) for name, on in rows.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_submission_keeps_names_that_look_like_numbers_or_missing(tmp_path):
    rows = {"0001": ["cloudy"], "NA": ["haze", "primary", "water"], "1e3": ["partly_cloudy", "road"]}
    probs = probability_csv(tmp_path / "probs.csv", rows)
    out = tmp_path / "labels.csv"
    counts, _, missing = write_submission(probs, out, np.full(len(LABELS), 0.5), False, None, AWKWARD)
    sub = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert sub["image_name"].tolist() == AWKWARD and missing == []
    assert sub["tags"].tolist() == ["cloudy", "haze primary water", "partly_cloudy road"]
    assert counts["cloudy"] == 1 and counts["water"] == 1


def test_matrix_csv_keeps_names_that_look_like_numbers_or_missing(tmp_path):
    path = probability_csv(tmp_path / "oof_fold0.csv", {n: ["clear"] for n in AWKWARD})
    names, matrix = load_matrix_csv(path)
    assert names == AWKWARD and matrix.shape == (3, len(LABELS))


def _read_chunk(items, image_size, channels, expected_size=0, dehaze=None):
    """The predictor's chunk reader, for a model of this input (no model needed to read chips)."""
    reader = Predictor(models=[], model_paths=[], image_size=image_size, channels=channels, dehaze=dehaze)
    return reader.read_chunk(items, dehazed=False, expected_size=expected_size)


def chip_file(path, size: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    path.write_bytes(encode_jpeg(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)))
    return path


def test_a_chunk_of_only_unreadable_chips_is_empty_not_an_error(tmp_path):
    items = []
    for name in ("a", "b"):
        (tmp_path / f"{name}.jpg").write_bytes(b"garbage")
        items.append((name, tmp_path / f"{name}.jpg"))
    pixels, ok, errors = _read_chunk(items, 32, 3)
    assert pixels.shape == (0, 32, 32, 3) and not ok.any()
    assert [n for n, _ in errors] == ["a", "b"] and "a.jpg: truncated or corrupt" in errors[0][1]


def test_a_chip_of_the_wrong_size_is_refused(tmp_path):
    items = [("small", chip_file(tmp_path / "small.jpg", 100)), ("right", chip_file(tmp_path / "right.jpg", 64))]
    pixels, ok, errors = _read_chunk(items, 32, 3, expected_size=64)
    assert ok.tolist() == [False, True] and pixels.shape == (1, 32, 32, 3)
    assert "small.jpg: chip is 100x100, expected 64x64" in errors[0][1]
    _, ok, _ = _read_chunk(items, 32, 3, expected_size=0)  # 0: any size, resized to the model's
    assert ok.all()


def test_chunk_is_dehazed_in_memory_when_asked(tmp_path):
    from amazonmine.core.haze import DehazeParams, dehaze_image

    params = DehazeParams()
    path = chip_file(tmp_path / "a.jpg", 32)
    raw, _, _ = _read_chunk([("a", path)], 32, 3)
    dehazed, _, _ = _read_chunk([("a", path)], 32, 3, dehaze=params)
    expected = dehaze_image(read_image(path), params).image[..., ::-1]  # B, G, R -> the model's R, G, B
    np.testing.assert_array_equal(dehazed[0], expected)
    assert np.abs(dehazed[0].astype(int) - raw[0]).max() > 0


@pytest.mark.parametrize("content, problem", [
    ("", "no chips listed"),
    ("image_name\n", "no chips listed"),
    ("name\nx\n", "expected an 'image_name' column"),
    (None, "not found"),
])
def test_unusable_chip_lists_are_one_line_errors_naming_the_file(tmp_path, content, problem):
    path = tmp_path / "chips.csv"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DataError, match=problem) as err:
        _list_from_csv(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_chip_list_keeps_awkward_names(tmp_path):
    path = tmp_path / "chips.csv"
    path.write_text("image_name\n" + "\n".join(AWKWARD) + "\n")
    assert _list_from_csv(path) == [(n, tmp_path / f"{n}.jpg") for n in AWKWARD]


def test_an_explicit_folder_without_chips_is_an_error(tmp_path, make_cfg):
    from amazonmine.stages.predict import list_inputs

    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no chip files") as err:
        list_inputs(make_cfg(), [tmp_path / "empty"])
    assert str(tmp_path / "empty") in str(err.value)


def test_tif_layout_lists_tif_test_chips(tmp_path, make_cfg):
    folder = tmp_path / "test-tif-v2"
    folder.mkdir()
    bands = np.zeros((8, 8, 4), np.uint16)
    for name in ("test_1", "test_0"):
        (folder / f"{name}.tif").write_bytes(encode_tif(bands))
    cv2.imwrite(str(folder / "stray.jpg"), np.zeros((8, 8, 3), np.uint8))
    layout = PlanetLayout.from_config(make_cfg(tmp_path, **{"data.image_format": "tif",
                                                            "data.test_dirs": "[test-tif-v2]"}).data)
    assert layout.list_test() == [("test_0", folder / "test_0.tif"), ("test_1", folder / "test_1.tif")]
