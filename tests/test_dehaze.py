"""The dehaze stage on tiny synthetic chips: the folder runner (layout, resume, provenance, errors) and the CLI.

The session's ``synth_root`` (seed 1) happens to draw no ``haze`` chip, so hazy chips with known truth are
painted here with synth's own painter and written in its truth layout (truth/clean/<name>.png and .tif).
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from amazonmine.cli import main
from amazonmine.core.data import DataError, encode_jpeg, encode_png, encode_tif, read_image
from amazonmine.core.errors import AmazonmineError
from amazonmine.core.haze import DehazeParams
from amazonmine.core.io import write_bytes_atomic
from amazonmine.core.runfolder import RunFolder
from amazonmine.stages import dehaze as dh
from amazonmine.stages.synth import paint_chip, to_jpeg_pixels, to_tif_pixels

# 64 px chips: the defaults (patch 15, radius 24) would span a quarter of the chip.
SMALL = {"dehaze.patch": 7, "dehaze.guided_radius": 8}
N_HAZY = 4
KAGGLE_DIRS = ("train-jpg", "test-jpg", "test-jpg-additional", "train-tif-v2")


def psnr(a: np.ndarray, b: np.ndarray, peak: float) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(peak ** 2 / mse))


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def train_tags(root: Path) -> dict[str, list[str]]:
    return {r["image_name"]: r["tags"].split() for r in read_rows(root / "train_v2.csv")}


def add_hazy_chips(root: Path, n: int, size: int = 64) -> list[str]:
    """Paint ``n`` hazy chips (JPEG, TIF and their clean truth) into a Kaggle-layout ``root``."""
    names = []
    for i in range(n):
        name = f"train_haze_{i}"
        extra = [["water"], ["road", "agriculture"], [], ["habitation"]][i % 4]
        chip = paint_chip(["haze", "primary", *extra], size, np.random.default_rng([2024, i]))
        write_bytes_atomic(root / "train-jpg" / f"{name}.jpg", encode_jpeg(to_jpeg_pixels(chip.bands)))
        write_bytes_atomic(root / "train-tif-v2" / f"{name}.tif", encode_tif(to_tif_pixels(chip.bands)))
        write_bytes_atomic(root / "truth" / "clean" / f"{name}.png", encode_png(to_jpeg_pixels(chip.clean)))
        write_bytes_atomic(root / "truth" / "clean" / f"{name}.tif", encode_tif(to_tif_pixels(chip.clean)))
        names.append(name)
    return names


def copy_chips(src: Path, dst: Path, n: int | None = None) -> list[str]:
    dst.mkdir(parents=True, exist_ok=True)
    names = sorted(p.name for p in src.iterdir() if p.suffix == ".jpg")[:n]
    for name in names:
        shutil.copyfile(src / name, dst / name)
    return names


@pytest.fixture(scope="module")
def layout(synth_root, tmp_path_factory):
    """A copy of synth_root's chip folders plus N_HAZY painted hazy chips."""
    root = tmp_path_factory.mktemp("dehaze_layout") / "planet"
    for sub in KAGGLE_DIRS:
        shutil.copytree(synth_root / sub, root / sub)
    shutil.copyfile(synth_root / "train_v2.csv", root / "train_v2.csv")
    hazy = add_hazy_chips(root, N_HAZY)
    return root, hazy


@pytest.fixture(scope="module")
def dehazed(layout, tmp_path_factory):
    """One default run (src/dst from the config) over the whole layout, in this process."""
    from amazonmine.core.config import load_config

    root, hazy = layout
    run_dir = tmp_path_factory.mktemp("dehaze_run")
    cfg = load_config(None, [f"data.root={root}", f"run.dir={run_dir}"] + [f"{k}={v}" for k, v in SMALL.items()])
    summary = dh.run_dehaze(cfg, workers=1)
    return cfg, summary, root, hazy


# --- the folder runner on the Kaggle layout ---------------------------------------------------------------

def test_default_run_mirrors_the_layout_where_training_reads(dehazed):
    cfg, summary, root, hazy = dehazed
    assert summary.failed == [] and summary.skipped == 0
    total = 0
    for sub in KAGGLE_DIRS:
        names = sorted(p.name for p in (root / sub).iterdir())
        out_dir = RunFolder.from_config(cfg).dehazed / sub
        assert sorted(p.name for p in out_dir.iterdir()) == names
        for name in names:
            src, out = read_image(root / sub / name), read_image(out_dir / name)
            assert out.shape == src.shape and out.dtype == src.dtype
        total += len(names)
    assert summary.processed == total
    assert RunFolder.from_config(cfg).chip_dir("train-jpg") == RunFolder.from_config(cfg).dehazed / "train-jpg"
    assert not (RunFolder.from_config(cfg).dehazed / dh.DEHAZE_ERRORS_CSV).exists()
    assert "dehaze (dark_channel)" in summary.headline() and str(total) in summary.headline()


def test_stats_csv_has_a_row_per_chip_and_flags_the_hazy_ones(dehazed):
    cfg, summary, root, hazy = dehazed
    rows = {r["file"]: r for r in read_rows(RunFolder.from_config(cfg).dehazed / dh.DEHAZE_STATS_CSV)}
    expected = {f"{sub}/{p.name}" for sub in KAGGLE_DIRS for p in (root / sub).iterdir()}
    assert set(rows) == expected
    assert list(next(iter(rows.values()))) == list(dh.STATS_COLUMNS)
    assert {r["method"] for r in rows.values()} == {"dark_channel"}
    t_hazy = [float(rows[f"train-jpg/{n}.jpg"]["t_mean"]) for n in hazy]
    clear = [n for n, tags in train_tags(root).items() if "clear" in tags]
    t_clear = [float(rows[f"train-jpg/{n}.jpg"]["t_mean"]) for n in clear]
    assert max(t_hazy) < np.median(t_clear)
    # The airlight is a pixel colour of the chip, in its own units: 8-bit for JPEG, counts for TIF.
    a_jpg = [float(rows[f"train-jpg/{hazy[0]}.jpg"][c]) for c in ("A_b", "A_g", "A_r")]
    a_tif = [float(rows[f"train-tif-v2/{hazy[0]}.tif"][c]) for c in ("A_b", "A_g", "A_r")]
    assert all(0 < v <= 255 for v in a_jpg) and all(v > 1000 for v in a_tif)


def test_hazy_jpeg_moves_closer_to_the_clean_scene(dehazed):
    cfg, _, root, hazy = dehazed
    for name in hazy:
        clean = read_image(root / "truth" / "clean" / f"{name}.png")
        before = psnr(read_image(root / "train-jpg" / f"{name}.jpg"), clean, 255)
        after = psnr(read_image(RunFolder.from_config(cfg).dehazed / "train-jpg" / f"{name}.jpg"), clean, 255)
        assert after > before + 3.0, (name, before, after)


def test_hazy_tif_moves_closer_to_the_clean_scene_and_keeps_nir(dehazed):
    cfg, _, root, hazy = dehazed
    for name in hazy:
        clean = read_image(root / "truth" / "clean" / f"{name}.tif")
        src = read_image(root / "train-tif-v2" / f"{name}.tif")
        out = read_image(RunFolder.from_config(cfg).dehazed / "train-tif-v2" / f"{name}.tif")
        before = psnr(src[..., :3], clean[..., :3], 65535)
        after = psnr(out[..., :3], clean[..., :3], 65535)
        assert after > before + 1.0, (name, before, after)
        np.testing.assert_array_equal(out[..., 3], src[..., 3])


def test_clear_chips_keep_their_structure_and_change_less_than_hazy_ones(dehazed):
    cfg, _, root, hazy = dehazed

    def change(name: str) -> tuple[float, float]:
        src = read_image(root / "train-jpg" / name)
        out = read_image(RunFolder.from_config(cfg).dehazed / "train-jpg" / name)
        g0 = cv2.cvtColor(src, cv2.COLOR_BGR2GRAY).ravel().astype(np.float64)
        g1 = cv2.cvtColor(out, cv2.COLOR_BGR2GRAY).ravel().astype(np.float64)
        return float(np.abs(out.astype(np.float64) - src).mean()), float(np.corrcoef(g0, g1)[0, 1])

    # Plain clear scenes: forest, or forest and fields.
    clear = [f"{n}.jpg" for n, tags in train_tags(root).items()
             if tags in (["clear", "primary"], ["agriculture", "clear", "primary"])]
    assert clear
    hazy_change = np.mean([change(f"{n}.jpg")[0] for n in hazy])
    for name in clear:
        diff, corr = change(name)
        assert corr > 0.95 and diff < 0.5 * hazy_change, (name, diff, corr, hazy_change)


# --- the other method, plain folders --------------------------------------------------------------------------

def test_airlight_subtract_also_improves_hazy_chips(layout, make_cfg, tmp_path):
    root, hazy = layout
    src = tmp_path / "chips"
    src.mkdir()
    for name in hazy:
        shutil.copyfile(root / "train-jpg" / f"{name}.jpg", src / f"{name}.jpg")
    cfg = make_cfg(**SMALL, **{"dehaze.method": "airlight_subtract"})
    summary = dh.run_dehaze(cfg, src=src, dst=tmp_path / "out", workers=1)
    assert summary.processed == len(hazy) and not summary.failed
    # A plain folder of chips goes straight into DST, no subfolder.
    for name in hazy:
        clean = read_image(root / "truth" / "clean" / f"{name}.png")
        out = read_image(tmp_path / "out" / f"{name}.jpg")
        assert psnr(out, clean, 255) > psnr(read_image(src / f"{name}.jpg"), clean, 255) + 1.0
    rows = read_rows(tmp_path / "out" / dh.DEHAZE_STATS_CSV)
    assert {r["method"] for r in rows} == {"airlight_subtract"} and len(rows) == len(hazy)


# --- resume, errors, the command --------------------------------------------------------------------------------

def test_interrupted_run_resumes_to_a_complete_folder(synth_root, make_cfg, tmp_path, monkeypatch):
    src = tmp_path / "chips"
    names = copy_chips(synth_root / "train-jpg", src, 20)
    dst = tmp_path / "out"
    cfg = make_cfg(**SMALL)
    real = dh.dehaze_image
    calls = {"n": 0}

    def dies_on_the_eighth(img, params):
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt  # Ctrl-C in the middle of the run
        return real(img, params)

    monkeypatch.setattr(dh, "dehaze_image", dies_on_the_eighth)
    with pytest.raises(KeyboardInterrupt):
        dh.run_dehaze(cfg, src=src, dst=dst, workers=1)
    monkeypatch.setattr(dh, "dehaze_image", real)
    done = sorted(p.name for p in dst.glob("*.jpg"))
    assert done == names[:7]
    first_rows = {r["file"]: r for r in read_rows(dst / dh.DEHAZE_STATS_CSV)}
    assert set(first_rows) == set(done)  # saved on the way out

    # What a SIGKILL leaves behind: a half-written temporary file and an output whose stats row was not saved.
    (dst / f".{Path(names[7]).stem}.abc123.tmp.jpg").write_bytes(b"\xff\xd8 half a chip")
    lost = done[0]
    kept = [r for f, r in first_rows.items() if f != lost]
    (dst / dh.DEHAZE_STATS_CSV).write_text(dh._rows_csv(dh.STATS_COLUMNS, kept))
    lost_bytes = (dst / lost).read_bytes()

    summary = dh.run_dehaze(cfg, src=src, dst=dst, workers=1)
    assert summary.skipped == 7 and summary.processed == 13 and not summary.failed
    assert sorted(p.name for p in dst.glob("*.jpg")) == names
    for name in names:
        assert read_image(dst / name).shape == read_image(src / name).shape
    rows = {r["file"]: r for r in read_rows(dst / dh.DEHAZE_STATS_CSV)}
    assert set(rows) == set(names)
    assert rows[lost]["t_mean"] == first_rows[lost]["t_mean"]  # recomputed from the source
    assert (dst / lost).read_bytes() == lost_bytes  # ... without rewriting the chip
    for name in done[1:]:
        assert rows[name] == first_rows[name]  # skipped chips keep their stats


def test_overwrite_redoes_chips_already_present(synth_root, make_cfg, tmp_path):
    src = tmp_path / "chips"
    names = copy_chips(synth_root / "train-jpg", src, 3)
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / names[0]).write_bytes(b"stale")
    cfg = make_cfg(**SMALL)
    first = dh.run_dehaze(cfg, src=src, dst=dst, workers=1)
    assert first.skipped == 1 and first.processed == 2
    again = dh.run_dehaze(cfg, src=src, dst=dst, workers=1, overwrite=True)
    assert again.processed == 3 and again.skipped == 0
    assert read_image(dst / names[0]).shape == (64, 64, 3)


def test_corrupt_chips_are_listed_and_the_rest_processed_in_parallel(synth_root, make_cfg, tmp_path):
    src = tmp_path / "chips"
    names = copy_chips(synth_root / "train-jpg", src)
    data = (src / names[0]).read_bytes()
    (src / names[0]).write_bytes(data[: len(data) // 2])  # truncated download
    (src / names[1]).write_bytes(b"\xff\xd8" + bytes(range(256)) * 4 + b"\xff\xd9")  # garbage between markers
    ok, grey = cv2.imencode(".jpg", np.full((64, 64), 90, dtype=np.uint8))
    (src / names[2]).write_bytes(grey.tobytes())
    dst = tmp_path / "out"
    summary = dh.run_dehaze(make_cfg(**SMALL), src=src, dst=dst, workers=2)

    bad = dict(summary.failed)
    assert sorted(bad) == sorted(names[:3])
    assert "truncated" in bad[names[0]] and "decode" in bad[names[1]] and "grayscale" in bad[names[2]]
    errors = read_rows(dst / dh.DEHAZE_ERRORS_CSV)
    assert {r["file"]: r["problem"] for r in errors} == bad
    assert summary.processed == len(names) - 3
    assert sorted(p.name for p in dst.glob("*.jpg")) == sorted(names[3:])
    assert len(read_rows(dst / dh.DEHAZE_STATS_CSV)) == len(names) - 3
    assert "3 failed" in summary.headline() and dh.DEHAZE_ERRORS_CSV in summary.headline()

    # Once the bad chips are gone the errors file goes too: it always describes the last run.
    for name in names[:3]:
        (src / name).unlink()
    again = dh.run_dehaze(make_cfg(**SMALL), src=src, dst=dst, workers=2)
    assert not again.failed and again.skipped == len(names) - 3 and not (dst / dh.DEHAZE_ERRORS_CSV).exists()


def test_unusable_paths_are_one_line_errors(synth_root, make_cfg, tmp_path):
    cfg = make_cfg(**SMALL)
    with pytest.raises(DataError, match="source folder not found"):
        dh.run_dehaze(cfg, src=tmp_path / "nowhere", dst=tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .jpg or .tif chips"):
        dh.run_dehaze(cfg, src=tmp_path / "empty", dst=tmp_path / "out")
    src = tmp_path / "chips"
    copy_chips(synth_root / "train-jpg", src, 2)
    with pytest.raises(AmazonmineError, match="output folder is the source folder"):
        dh.run_dehaze(cfg, src=src, dst=src, overwrite=True)


def _cli(src: Path, dst: Path, run_dir: Path):
    args = ["dehaze", str(src), str(dst), "--workers", "1", "--set", f"run.dir={run_dir}"]
    for key, value in SMALL.items():
        args += ["--set", f"{key}={value}"]
    return CliRunner().invoke(main, args)


def test_cli_exits_0_when_all_chips_pass_and_3_with_failures(synth_root, tmp_path):
    src = tmp_path / "chips"
    names = copy_chips(synth_root / "train-jpg", src, 4)
    result = _cli(src, tmp_path / "out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert "4 chips done" in result.output

    (src / names[0]).write_bytes(b"not a jpeg at all")
    result = _cli(src, tmp_path / "out2", tmp_path / "run")
    assert result.exit_code == 3
    assert "1 failed" in result.output and dh.DEHAZE_ERRORS_CSV in result.output


def test_cli_reports_a_missing_source_without_traceback(tmp_path):
    result = _cli(tmp_path / "missing", tmp_path / "out", tmp_path / "run")
    assert result.exit_code == 1 and "source folder not found" in result.output
    assert "Traceback" not in result.output


def test_dehaze_never_imports_tensorflow():
    code = "import sys, amazonmine.stages.dehaze, amazonmine.cli; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("n_jobs, workers", [(0, 2), (1, 2), (2, 2), (3, 2), (8, 8), (16, 8), (2132, 2)])
def test_chunks_cover_every_job_once_and_keep_every_worker_busy(n_jobs, workers):
    chunks = dh._chunks(list(range(n_jobs)), workers)
    assert [j for chunk in chunks for j in chunk] == list(range(n_jobs))
    assert len(chunks) >= min(workers, n_jobs)
    assert all(1 <= len(c) <= 64 for c in chunks)
    if n_jobs > 100:  # the tail shrinks: the last chunk is far smaller than the first
        assert len(chunks[-1]) * 8 <= len(chunks[0])


def _jpeg_sampling_factors(data: bytes) -> list[tuple[int, int]]:
    """(horizontal, vertical) sampling factor of each component, from the JPEG's start-of-frame marker."""
    i = 2
    while i + 4 <= len(data):
        marker = data[i + 1]
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if marker in (0xC0, 0xC1, 0xC2):
            n = data[i + 9]
            return [(data[i + 11 + 3 * k] >> 4, data[i + 11 + 3 * k] & 15) for k in range(n)]
        i += 2 + length
    raise AssertionError("no start-of-frame marker")


def test_dehazed_jpeg_keeps_colour_at_full_resolution(tmp_path):
    # Kaggle's chips store colour unsubsampled; OpenCV's default 4:2:0 would halve a mine's colour detail.
    chip = paint_chip(["haze", "primary", "artisinal_mine", "water"], 64, np.random.default_rng(5))
    src = tmp_path / "chip.jpg"
    src.write_bytes(encode_jpeg(to_jpeg_pixels(chip.bands), full_chroma=True))
    result = dh.dehaze_file(src, tmp_path / "out" / "chip.jpg", DehazeParams(patch=7, guided_radius=8))
    written = (tmp_path / "out" / "chip.jpg").read_bytes()
    assert _jpeg_sampling_factors(written) == [(1, 1)] * 3
    assert _jpeg_sampling_factors(encode_jpeg(result.image)) == [(2, 2), (1, 1), (1, 1)]  # the parser can tell

    def decode(data: bytes) -> np.ndarray:
        return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)

    # Closer to the dehazed pixels than OpenCV's default encoding would be.
    assert psnr(decode(written), result.image, 255) > psnr(decode(encode_jpeg(result.image)), result.image, 255)


def test_chips_made_with_other_settings_are_redone(synth_root, make_cfg, tmp_path):
    # The stage knows, per chip, what made it (issue 16): a chip of another method, or of the same method with
    # another parameter, is redone without --overwrite; a chip of the current settings is kept.
    cfg = make_cfg(synth_root, **SMALL)
    src, dst = synth_root / "train-jpg", tmp_path / "out"
    first = dh.run_dehaze(cfg, src=src, dst=dst, workers=1)
    n = first.processed
    assert n > 0 and "redone" not in first.headline()
    for overrides in ({"dehaze.method": "airlight_subtract"}, {"dehaze.omega": 0.8}, {}):
        again = dh.run_dehaze(make_cfg(synth_root, **{**SMALL, **overrides}), src=src, dst=dst, workers=1)
        assert again.processed == n and again.skipped == 0
        assert f"redone: {n} made with other dehaze settings" in again.headline()
    kept = dh.run_dehaze(cfg, src=src, dst=dst, workers=1)
    assert kept.processed == 0 and kept.skipped == n and "redone" not in kept.headline()
    settings = dh.settings_digest(DehazeParams.from_config(cfg.dehaze))
    assert {(r["method"], r["settings"]) for r in read_rows(dst / dh.DEHAZE_STATS_CSV)} == {("dark_channel", settings)}


def test_settings_digest_tells_settings_apart_but_not_how_a_number_is_written():
    base = dh.settings_digest(DehazeParams())
    assert dh.settings_digest(DehazeParams(omega=1)) == dh.settings_digest(DehazeParams(omega=1.0))
    assert dh.settings_digest(DehazeParams(patch=15.0)) == base
    others = [DehazeParams(method="airlight_subtract"), DehazeParams(patch=7), DehazeParams(guided_eps=1e-4)]
    assert len({base, *(dh.settings_digest(p) for p in others)}) == 4


def test_chips_of_a_version_that_recorded_only_the_method_are_judged_by_it(synth_root, make_cfg, tmp_path):
    src, dst = tmp_path / "chips", tmp_path / "out"
    names = copy_chips(synth_root / "train-jpg", src, 6)
    cfg = make_cfg(**SMALL)
    dh.run_dehaze(cfg, src=src, dst=dst, workers=1)
    clean = {name: (dst / name).read_bytes() for name in names}
    clean_stats = (dst / dh.DEHAZE_STATS_CSV).read_text()
    # The stats file as an older version wrote it: no settings column. Two chips it says another method made
    # (and really did: they are replaced by that method's output).
    rows = read_rows(dst / dh.DEHAZE_STATS_CSV)
    for row in rows:
        del row["settings"]
    other = make_cfg(**SMALL, **{"dehaze.method": "airlight_subtract"})
    for row in rows[:2]:
        row["method"] = "airlight_subtract"
        dh.dehaze_file(src / row["file"], dst / row["file"], DehazeParams.from_config(other.dehaze))
    (dst / dh.DEHAZE_STATS_CSV).write_text(dh._rows_csv(dh.STATS_COLUMNS[:-1], rows))

    summary = dh.run_dehaze(cfg, src=src, dst=dst, workers=1)
    assert summary.processed == 2 and summary.skipped == 4
    assert "redone: 2 made with other dehaze settings" in summary.headline()
    assert "4 of the skipped chips had no record of their settings" in summary.headline()
    assert {name: (dst / name).read_bytes() for name in names} == clean
    assert (dst / dh.DEHAZE_STATS_CSV).read_text() == clean_stats  # the kept chips now carry the current settings
    again = dh.run_dehaze(cfg, src=src, dst=dst, workers=1)
    assert again.skipped == 6 and again.processed == 0 and not again.note


# A run of `dehaze --overwrite` killed with SIGKILL at a chosen moment: in-process, right after a chip is
# written and before the stage has recorded it; with worker processes, in the parent as a chunk's results
# arrive (the workers have written more chips than it knows of). Writes the workers' pids before dying.
_KILLED_RUN = r"""
import concurrent.futures
import multiprocessing as mp
import os
import signal
import sys

from amazonmine.stages import dehaze as dh
from amazonmine.core.config import load_config

src, dst, run_dir, method, workers, kill_at, checkpoint, pids = sys.argv[1:]
kill_at = int(kill_at)
dh._CHECKPOINT_SECONDS = float(checkpoint)


def die():
    with open(pids, "w") as fh:
        fh.write(" ".join(str(p.pid) for p in mp.active_children()))
    os.kill(os.getpid(), signal.SIGKILL)


if workers == "1":
    written = []
    real_write = dh.write_bytes_atomic

    def write_then_die(path, data):
        real_write(path, data)
        written.append(path)
        if len(written) == kill_at:
            die()

    dh.write_bytes_atomic = write_then_die
else:
    real_as_completed = concurrent.futures.as_completed

    def as_completed_then_die(futures):
        for i, fut in enumerate(real_as_completed(futures)):
            if i == kill_at:
                die()
            yield fut

    concurrent.futures.as_completed = as_completed_then_die

sets = [f"run.dir={run_dir}", f"dehaze.method={method}", "dehaze.patch=7", "dehaze.guided_radius=8"]
dh.run_dehaze(load_config(None, sets), src=src, dst=dst, workers=int(workers), overwrite=True)
sys.exit("the run finished: it was meant to be killed")
"""


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones too) by relative path: two folders are equal byte for byte."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def wait_until_gone(pids: list[int], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [pid for pid in alive if _exists(pid)]
    assert not alive, f"workers outlived their killed parent: {alive}"


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("workers, kill_at, checkpoint", [(1, 5, 30.0), (1, 5, 0.0), (2, 1, 0.0)])
def test_kill_9_during_an_overwrite_with_another_method_then_a_rerun_with_either_gives_a_clean_folder(
        synth_root, make_cfg, tmp_path, workers, kill_at, checkpoint):
    # Issue 16: the killed run left 640 chips of one method and 1,360 of the other under stats that claimed
    # one method for all, and a re-run with the first method reported nothing.
    src = tmp_path / "chips"
    names = copy_chips(synth_root / "train-jpg", src)
    methods = ("dark_channel", "airlight_subtract")
    cfgs = {m: make_cfg(**SMALL, **{"dehaze.method": m}) for m in methods}
    clean = {}
    for method in methods:
        dh.run_dehaze(cfgs[method], src=src, dst=tmp_path / f"clean_{method}", workers=1)
        clean[method] = snapshot(tmp_path / f"clean_{method}")
    crashed = tmp_path / "crashed"
    shutil.copytree(tmp_path / "clean_dark_channel", crashed)

    pids = tmp_path / "pids"
    args = [str(src), str(crashed), str(tmp_path / "run"), "airlight_subtract", str(workers), str(kill_at),
            str(checkpoint), str(pids)]
    proc = subprocess.run([sys.executable, "-c", _KILLED_RUN, *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    wait_until_gone([int(p) for p in pids.read_text().split()])

    # A mixed folder, as in the issue, in which no row claims a chip for settings that did not make it.
    state = snapshot(crashed)
    made_by = {m: {n for n in names if state[n] == clean[m][n]} for m in methods}
    assert made_by["airlight_subtract"] and made_by["dark_channel"] | made_by["airlight_subtract"] == set(names)
    if workers == 1:
        assert len(made_by["airlight_subtract"]) == kill_at
    digests = {dh.settings_digest(DehazeParams.from_config(cfgs[m].dehaze)): m for m in methods}
    rows = read_rows(crashed / dh.DEHAZE_STATS_CSV)
    assert {r["file"] for r in rows} == set(names)
    for row in rows:
        assert row["settings"] == dh.PENDING or row["file"] in made_by[digests[row["settings"]]], row
    if checkpoint == 0:  # recorded as they finished: a re-run keeps those
        assert any(r["settings"] != dh.PENDING for r in rows)

    for method in methods:
        dst = tmp_path / f"rerun_{method}"
        shutil.copytree(crashed, dst)
        summary = dh.run_dehaze(cfgs[method], src=src, dst=dst, workers=1)
        assert not summary.failed and summary.processed + summary.skipped == len(names)
        assert "left unfinished by an interrupted run" in summary.headline()
        assert snapshot(dst) == clean[method], method


@pytest.mark.parametrize("group_bytes", [8 << 20, 1])  # groups of 3 chips; or one chip each (the byte cap)
def test_worker_reads_a_group_then_writes_it_keeping_job_order(synth_root, tmp_path, monkeypatch, group_bytes):
    monkeypatch.setattr(dh, "_IO_GROUP_CHIPS", 3)
    monkeypatch.setattr(dh, "_IO_GROUP_BYTES", group_bytes)
    chips = sorted((synth_root / "train-jpg").glob("*.jpg"))[:5]
    src = tmp_path / "src"
    src.mkdir()
    for chip in chips:
        shutil.copyfile(chip, src / chip.name)
    (src / "broken.jpg").write_bytes(chips[0].read_bytes()[:300])
    names = [chips[0].name, "broken.jpg", chips[1].name, "gone.jpg", *(c.name for c in chips[2:])]
    jobs = [dh.ChipJob(n, str(src / n), str(tmp_path / "out" / n)) for n in names]
    (tmp_path / "out").mkdir()
    events = []
    read, write = dh.read_chip_bytes, dh.write_bytes_atomic
    monkeypatch.setattr(dh, "read_chip_bytes", lambda p: events.append("r") or read(p))
    monkeypatch.setattr(dh, "write_bytes_atomic", lambda p, d: events.append("w") or write(p, d))
    results = dh.process_chunk(jobs, DehazeParams(patch=7, guided_radius=8), 0)
    assert [r[1] for r in results] == names  # in job order, errors included
    assert [r[0] for r in results] == ["ok", "error", "ok", "error", "ok", "ok", "ok"]
    assert "truncated" in results[1][2] and "not found" in results[3][2]
    for name in names:
        assert (tmp_path / "out" / name).exists() == (name not in ("broken.jpg", "gone.jpg"))
    # Groups of 3 jobs; with the byte cap, a group ends at the first chip read (an unreadable one adds no bytes).
    expected = "rrr ww rrr ww r w" if group_bytes > 1 else "rw r rw rr w rw rw"
    assert "".join(events) == expected.replace(" ", ""), "".join(events)


def test_a_folder_named_like_a_chip_is_refused_by_name_not_skipped(synth_root, make_cfg, tmp_path):
    # The input-path rule (README): a folder where a chip should be is refused by name, like a FIFO.
    src = tmp_path / "chips"
    names = copy_chips(synth_root / "train-jpg", src, 2)
    (src / "folder_chip.jpg").mkdir()
    (src / "folder_chip.jpg" / "inside.jpg").write_bytes((src / names[0]).read_bytes())
    dst = tmp_path / "out"
    summary = dh.run_dehaze(make_cfg(**SMALL), src=src, dst=dst, workers=1)
    assert summary.failed == [("folder_chip.jpg", "a folder, not a regular file; chips must be plain image files")]
    assert summary.processed == 2 and "1 failed" in summary.headline()
    assert {r["file"] for r in read_rows(dst / dh.DEHAZE_ERRORS_CSV)} == {"folder_chip.jpg"}
    assert not (dst / "folder_chip.jpg").exists()
