"""The data layer: labels, names, Kaggle layout, and images that must never be read as a silent wrong array."""

import shutil
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest

from amazonmine.core.data import (
    LABELS,
    DataError,
    PlanetLayout,
    apply_dihedral,
    matrix_to_tags,
    read_image,
    read_labels,
    tags_to_matrix,
)


def write_labels(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("image_name,tags\n" + "".join(f"{n},{t}\n" for n, t in rows))
    return path


def test_tags_matrix_round_trip():
    tags = ["clear primary water", "cloudy", "artisinal_mine haze primary"]
    matrix = tags_to_matrix(tags)
    assert matrix.shape == (3, 17) and matrix.dtype == np.uint8
    assert matrix[2, LABELS.index("artisinal_mine")] == 1
    assert matrix_to_tags(matrix) == ["clear primary water", "cloudy", "artisinal_mine haze primary"]


def test_real_labels_load(real_labels_csv):
    frame = read_labels(real_labels_csv)
    assert len(frame) == 40478
    matrix = tags_to_matrix(frame["tags"])
    assert matrix[:, LABELS.index("primary")].sum() == 37513
    assert matrix[:, LABELS.index("conventional_mine")].sum() == 100


@pytest.mark.parametrize("rows, fragment", [
    ([("a", "clear primary"), ("b", "clear goldmine")], "unknown labels"),
    ([("a", "clear primary"), ("a", "haze")], "duplicate image_name"),
    ([("../x", "clear primary")], "escape their folder"),
    ([("/etc/passwd", "clear primary")], "escape their folder"),
    ([("a", "primary water")], "no weather label"),
])
def test_label_file_errors_name_file_and_offenders(tmp_path, rows, fragment):
    path = write_labels(tmp_path / "train_v2.csv", rows)
    with pytest.raises(DataError) as err:
        read_labels(path)
    assert fragment in str(err.value) and str(path) in str(err.value)


def test_error_lists_first_offenders_and_count(tmp_path):
    rows = [(f"c{i}", "clear primary") for i in range(10)] + [(f"c{i}", "haze") for i in range(8)]
    path = write_labels(tmp_path / "train_v2.csv", rows)
    with pytest.raises(DataError, match=r"duplicate image_name: 8 \(c0, c1, c2, c3, c4 and 3 more\)"):
        read_labels(path)


def test_empty_and_header_only_csv(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DataError, match="empty CSV"):
        read_labels(empty)
    header = tmp_path / "header.csv"
    header.write_text("image_name,tags\n")
    with pytest.raises(DataError, match="empty CSV"):
        read_labels(header)
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("name,labels\na,clear\n")
    with pytest.raises(DataError, match="missing column"):
        read_labels(wrong)


def test_layout_reports_missing_images(tmp_path, synth_root, make_cfg):
    root = tmp_path / "planet"
    shutil.copytree(synth_root, root)
    (root / "train-jpg" / "train_3.jpg").unlink()
    cfg = make_cfg(root)
    with pytest.raises(DataError, match=r"image files missing: 1 \(train_3.jpg\)"):
        PlanetLayout.from_config(cfg.data).load_train()
    frame, matrix = PlanetLayout.from_config(cfg.data).load_train(check_files=False)
    assert len(frame) == matrix.shape[0] == 60


def test_layout_on_synth(synth_root, make_cfg):
    layout = PlanetLayout.from_config(make_cfg(synth_root).data)
    frame, matrix = layout.load_train()
    assert matrix.shape == (60, 17)
    tests = layout.list_test()
    assert len(tests) == 12 and tests[0][0] == "test_0" and any(n.startswith("file_") for n, _ in tests)
    chip = read_image(layout.train_dir / "train_0.jpg", expected_size=64)
    assert chip.shape == (64, 64, 3) and chip.dtype == np.uint8


# --- images that must be refused, by name ------------------------------------------------------------------

@pytest.fixture
def good_jpeg(synth_root) -> bytes:
    return (synth_root / "train-jpg" / "train_0.jpg").read_bytes()


def test_truncated_jpeg_is_refused(tmp_path, good_jpeg):
    bad = tmp_path / "cut.jpg"
    bad.write_bytes(good_jpeg[: len(good_jpeg) // 2])
    # OpenCV itself would hand back a full-size array (grey-filled): the check must not rely on it.
    assert cv2.imread(str(bad)) is not None
    with pytest.raises(DataError, match=r"cut\.jpg: truncated or corrupt JPEG"):
        read_image(bad)


def test_garbage_and_empty_files(tmp_path):
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"\xff\xd8" + b"not a jpeg at all" * 10 + b"\xff\xd9")
    with pytest.raises(DataError, match="junk.jpg: cannot decode"):
        read_image(junk)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match="empty.jpg: empty file"):
        read_image(empty)
    with pytest.raises(DataError, match="nothere.jpg: image file not found"):
        read_image(tmp_path / "nothere.jpg")


def test_grayscale_wrong_size_and_non_square(tmp_path):
    grey = tmp_path / "grey.jpg"
    cv2.imwrite(str(grey), np.full((64, 64), 90, np.uint8))
    with pytest.raises(DataError, match="grey.jpg: grayscale"):
        read_image(grey)
    small = tmp_path / "small.jpg"
    cv2.imwrite(str(small), np.full((32, 32, 3), 90, np.uint8))
    with pytest.raises(DataError, match="small.jpg: chip is 32x32, expected 64x64"):
        read_image(small, expected_size=64)
    wide = tmp_path / "wide.jpg"
    cv2.imwrite(str(wide), np.full((32, 48, 3), 90, np.uint8))
    with pytest.raises(DataError, match="wide.jpg: chip is 48x32, expected a square"):
        read_image(wide)


def test_header_claiming_huge_dimensions(tmp_path):
    # A PNG whose header claims 100000 x 100000 pixels: OpenCV raises (or returns None) instead of decoding.
    import zlib

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0)
    data = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 10))
            + chunk(b"IEND", b""))
    path = tmp_path / "huge.png"
    path.write_bytes(data)
    with pytest.raises(DataError, match="huge.png: cannot decode"):
        read_image(path)


def test_tif_round_trip_keeps_band_order(synth_root):
    import tifffile

    path = next((synth_root / "train-tif-v2").glob("*.tif"))
    ours = read_image(path)
    assert ours.shape == (64, 64, 4) and ours.dtype == np.uint16
    np.testing.assert_array_equal(ours, tifffile.imread(path))


def test_dihedral_numbering_is_the_group_of_the_square():
    img = np.arange(2 * 3 * 3).reshape(3, 3, 2)
    views = {apply_dihedral(img, k).tobytes() for k in range(8)}
    assert len(views) == 8
    np.testing.assert_array_equal(apply_dihedral(img, 1), np.rot90(img))
    np.testing.assert_array_equal(apply_dihedral(img, 4), img[:, ::-1])


# --- the real Planet chips ---------------------------------------------------------------------------------

def test_real_cmyk_jpegs_decode_like_opencv(real256):
    names = sorted((real256 / "train-jpg").glob("*.jpg"))[:40]
    for path in names:
        ours = read_image(path, expected_size=256)
        np.testing.assert_array_equal(ours, cv2.imread(str(path), cv2.IMREAD_COLOR))


def test_real_tifs_are_bgrn_and_match_their_jpeg(real256):
    import tifffile

    checked = 0
    for path in sorted((real256 / "train-tif-v2").glob("*.tif")):
        tif = read_image(path, expected_size=256)
        assert tif.shape == (256, 256, 4) and tif.dtype == np.uint16
        np.testing.assert_array_equal(tif, tifffile.imread(path))  # file band order: B, G, R, NIR
        if path.stem in ("train_0", "train_10000"):  # near-featureless chips (see ../shared/README.md)
            continue
        jpg = read_image(real256 / "train-jpg" / f"{path.stem}.jpg").astype(np.float64)
        for band in range(3):
            r = np.corrcoef(tif[..., band].ravel(), jpg[..., band].ravel())[0, 1]
            assert r > 0.5, f"{path.name} band {band}: correlation {r:.2f}"
        checked += 1
    assert checked == 8


def test_real_256_labels_and_chips_load(real256, make_cfg):
    cfg = make_cfg(real256)
    frame, matrix = PlanetLayout.from_config(cfg.data).load_train()
    assert len(frame) == 533
    assert matrix[:, LABELS.index("artisinal_mine")].sum() == 3


def test_read_bytes_returns_the_whole_file_even_if_it_grew_since_fstat(tmp_path, monkeypatch):
    import os

    from amazonmine.core import data as data_module

    payload = np.random.default_rng(0).integers(0, 256, 3_000_000, dtype=np.uint8).tobytes()
    path = tmp_path / "big.bin"
    path.write_bytes(payload)
    assert data_module._read_bytes(path) == payload
    real_fstat = os.fstat

    class Smaller:  # what fstat said before the file grew
        def __init__(self, st):
            self.st_size = st.st_size // 3
            self.st_mode = st.st_mode

    monkeypatch.setattr(os, "fstat", lambda fd: Smaller(real_fstat(fd)))
    assert data_module._read_bytes(path) == payload


def test_a_huge_image_name_is_cut_in_the_error_line_not_echoed_whole(tmp_path):
    from amazonmine.core.data import check_images_exist
    from amazonmine.core.errors import shorten

    huge = "n" * 5_000_000 + "_end"  # a printable name: nothing refuses it before its file is looked for
    with pytest.raises(DataError, match="no weather label") as err:
        read_labels(write_labels(tmp_path / "train_v2.csv", [(huge, "primary")]))
    assert len(str(err.value)) < 500
    with pytest.raises(DataError, match="unknown labels") as err:
        read_labels(write_labels(tmp_path / "train_v2.csv", [("ok", "clear " + huge)]))
    assert len(str(err.value)) < 1000
    (tmp_path / "train-jpg").mkdir()
    with pytest.raises(DataError, match=r"image files missing: 1 \(n+\.\.\.\(5000008 characters\)\.\.\.n+_end\.jpg\)"
                       ) as err:
        check_images_exist([huge], tmp_path / "train-jpg", ".jpg")
    assert len(str(err.value)) < 500 and "\n" not in str(err.value)
    with pytest.raises(DataError, match="cannot read") as err:
        read_image(tmp_path / "train-jpg" / f"{huge}.jpg")  # the system refuses the name: too long
    assert len(str(err.value)) < 500 and str(err.value).startswith(str(tmp_path))
    assert shorten("short") == "short" and len(shorten("x" * 1000, 60)) == 60
