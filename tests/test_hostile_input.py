"""Hostile or careless input files: special files, links out of the data folder, path columns, absurd headers.
Each is refused by the one reader (amazonmine.core.data) with a line naming the file, never read without bound."""

from __future__ import annotations

import os
import signal
from contextlib import contextmanager

import numpy as np
import pandas as pd
import pytest

from amazonmine.core.data import DataError, encode_jpeg, read_image


@contextmanager
def deadline(seconds: int):
    """Fail instead of hanging (the bug a FIFO caused: preflight waited forever)."""
    def expired(signum, frame):
        raise TimeoutError(f"still blocked after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _chip(path, seed=0, size=32):
    rng = np.random.default_rng(seed)
    path.write_bytes(encode_jpeg(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)))
    return path


def test_a_fifo_named_like_a_chip_is_refused_at_once(tmp_path):
    fifo = tmp_path / "chip.jpg"
    os.mkfifo(fifo)
    with deadline(10), pytest.raises(DataError, match="chip.jpg: a FIFO, not a regular file"):
        read_image(fifo)


def test_preflight_refuses_a_fifo_instead_of_hanging(tmp_path):
    from amazonmine.neural.datasets import preflight

    good = _chip(tmp_path / "good.jpg")
    os.mkfifo(tmp_path / "fifo.jpg")
    with deadline(20), pytest.raises(DataError, match="fifo.jpg: a FIFO"):
        preflight([good, tmp_path / "fifo.jpg"], 32, cache=True, progress=False)


def test_a_link_to_dev_zero_is_refused_without_reading_it(tmp_path):
    (tmp_path / "zero.jpg").symlink_to("/dev/zero")
    with deadline(10), pytest.raises(DataError, match="leads outside its folder"):
        read_image(tmp_path / "zero.jpg")


def test_a_device_inside_the_folder_is_not_a_chip(tmp_path):
    # A hard-to-make case on purpose: a character device in the folder itself (bind the name to /dev/null's
    # kind by linking to a device node we create only if allowed).
    try:
        os.mknod(tmp_path / "dev.jpg", 0o600 | 0o020000, os.makedev(1, 3))  # /dev/null's numbers
    except PermissionError:
        pytest.skip("cannot create a device node here")
    with deadline(10), pytest.raises(DataError, match="dev.jpg: a device, not a regular file"):
        read_image(tmp_path / "dev.jpg")


def test_links_within_the_folder_are_fine_and_out_of_it_are_refused(tmp_path):
    data = tmp_path / "train-jpg"
    data.mkdir()
    real = _chip(data / "real.jpg")
    (data / "alias.jpg").symlink_to(real.name)  # a dataset assembled by links, inside the folder
    assert read_image(data / "alias.jpg").shape == (32, 32, 3)
    outside = _chip(tmp_path / "secret.jpg", seed=1)
    (data / "escape.jpg").symlink_to(outside)
    with pytest.raises(DataError, match="escape.jpg: leads outside its folder"):
        read_image(data / "escape.jpg")


def test_an_oversized_file_is_refused_before_it_is_read(tmp_path, monkeypatch):
    import amazonmine.core.data as data_module

    big = _chip(tmp_path / "big.jpg")
    monkeypatch.setattr(data_module, "MAX_CHIP_BYTES", 100)
    with pytest.raises(DataError, match="big.jpg: .*larger than any chip"):
        read_image(big)


def test_a_jpeg_header_claiming_huge_dimensions_is_one_plain_line(tmp_path):
    data = bytearray(encode_jpeg(np.zeros((16, 16, 3), np.uint8)))
    sof = data.find(b"\xff\xc0")
    assert sof > 0
    data[sof + 5:sof + 9] = b"\xff\xf0\xff\xf0"  # height, width = 65520
    path = tmp_path / "huge.jpg"
    path.write_bytes(bytes(data))
    with pytest.raises(DataError) as refused:
        read_image(path)
    message = str(refused.value)
    assert message.startswith(str(path)) and "\n" not in message
    assert "error:" not in message.lower() and "assert" not in message.lower()


def test_predict_csv_lists_cannot_point_outside_with_a_path_column(tmp_path):
    from amazonmine.stages.predict import _list_from_csv

    listing = tmp_path / "list.csv"
    pd.DataFrame({"image_name": ["a"], "path": ["../../etc/passwd"]}).to_csv(listing, index=False)
    with pytest.raises(DataError, match="'path' column is not read"):
        _list_from_csv(listing)
    pd.DataFrame({"image_name": ["../a"]}).to_csv(listing, index=False)
    with pytest.raises(DataError, match="escape their folder"):
        _list_from_csv(listing)


def test_dehaze_reports_special_files_instead_of_skipping_them(tmp_path, make_cfg):
    from amazonmine.stages.dehaze import run_dehaze

    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    _chip(src / "good.jpg", size=64)
    (src / "zero.jpg").symlink_to("/dev/zero")
    os.mkfifo(src / "fifo.jpg")
    cfg = make_cfg(None, **{"dehaze.workers": 1})
    with deadline(60):
        summary = run_dehaze(cfg, src=src, dst=dst, workers=1)
    failed = " | ".join(str(f) for f in summary.failed)
    assert "zero.jpg" in failed and "fifo.jpg" in failed
    assert (dst / "good.jpg").is_file()
