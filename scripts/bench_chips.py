"""What ``amazonmine chips`` costs against scan's own tile path: chips/s, and peak memory against scene area.

    .venv/bin/python scripts/bench_chips.py [--side 4096] [--scale 2] [--rounds 2] [--scene SCENE.tif]

On a synthetic 8-bit R,G,B scene in UTM 21S at 3 m (``--side`` px square; built in ``--work``, window by window)
or on ``--scene``, at the built-in config's settings (768 m tiles of 256 px, stride 0.5, Kaggle's CMYK JPEG
look):

1. **throughput**: chips/s of ``run_chips`` end to end (label polygons, windowed reads, JPEG bytes written one
   file at a time, chips.csv/.geojson/.json) against tiles/s of scan's reading path on the same scene: every
   block read with :func:`amazonmine.scanning.tiling.read_block`, tiles made into the chips the model would get, no
   model. A real scan also runs the models, which only lowers its tiles/s, so the printed ratio (target >= 0.8)
   is the hard case. Every tile is labelled and kept (a polygon over the middle, no negatives dropped), so
   chips writes as many files as scan makes tiles. Rounds alternate; each round's ratio is printed.
2. **memory**: peak resident memory (VmHWM, reset after imports) of a chips run on the scene and on one
   ``--scale`` x ``--scale`` times its area, each in its own process (target ratio <= 1.1: blocks are read one
   at a time, and the tables are streamed from per-block records). Both run with ``GDAL_CACHEMAX=16`` (MB):
   GDAL keeps decoded blocks of the file in a cache of up to 5% of the RAM by default, which grows with the
   area read until it is full (measured: 49 -> 75 MiB above the imports from 1280^2 to 2560^2 px with GDAL's
   default, 49 -> 56 MiB with it capped at 16 MB); that cache is bounded, not the chips path's own, and the
   same under scan. Memory is flat only for scenes larger than one block (``scan.block_tiles`` 256: 16 x 16
   tiles, a 2176 px window; ``--block-tiles 16`` for a quick run on small scenes).

Run it on an idle machine; a person's numbers belong in the README with the machine named.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

X0, Y0, RES = 600_000.0, 9_310_000.0, 3.0

CHILD = """
import json, sys, time
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
from amazonmine.core.config import load_config
from amazonmine.stages.chips import run_chips
from amazonmine.scanning.tiling import Grid, chip_look, open_scene, read_block
import cv2, rasterio, shapely, pyproj  # imported before the peak is reset: the work is measured, not imports
cfg = load_config(None, {sets!r})
with open("/proc/self/clear_refs", "w") as fh:  # resets the peak (VmHWM) to what is resident now
    fh.write("5")
before = status("VmRSS")
began = time.perf_counter()
if {what!r} == "scan":
    look = chip_look("jpg", 256, None)
    scene = open_scene({scene!r}, look, 768.0, 4.0)
    grid = Grid.for_scene(scene, 768.0, float(cfg.scan.stride))
    n = 0
    with rasterio.open(scene.path) as src:
        for block in grid.blocks(int(cfg.scan.block_tiles)):
            n += len(read_block(scene, grid, block, look, src).rows)
else:
    n = run_chips(cfg, [{scene!r}], {labels!r}, {out!r}).chips
print(json.dumps({{"items": n, "seconds": time.perf_counter() - began, "peak_mib": status("VmHWM"),
                  "before_mib": before}}))
"""


def make_scene(path: Path, side: int, seed: int = 0) -> Path:
    """A side x side px 8-bit R,G,B GeoTIFF of smooth colour fields and noise, written 512 rows at a time."""
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    if path.is_file():
        return path
    rng = np.random.default_rng(seed)
    profile = dict(driver="GTiff", width=side, height=side, count=3, dtype="uint8", crs="EPSG:32721",
                   transform=from_origin(X0, Y0, RES, RES), photometric="RGB", tiled=True, blockxsize=256,
                   blockysize=256, compress="deflate")
    tmp = path.with_suffix(".partial.tif")
    with rasterio.open(tmp, "w", **profile) as dst:
        for row in range(0, side, 512):
            h = min(512, side - row)
            yy, xx = np.mgrid[row:row + h, 0:side]
            base = np.stack([80 + 60 * np.sin(xx / 53.0), 90 + 50 * np.cos(yy / 41.0),
                             70 + 40 * np.sin((xx + yy) / 97.0)])
            dst.write(np.clip(base + rng.normal(0, 14, base.shape), 1, 254).astype(np.uint8),
                      window=Window(0, row, side, h))
    tmp.rename(path)
    return path


def make_labels(path: Path, scene: Path) -> Path:
    """One mine polygon over the scene's middle, in the scene's CRS (every other tile is a kept negative)."""
    import rasterio

    with rasterio.open(scene) as src:
        left, bottom, right, top = src.bounds
        crs = src.crs.to_string()
    cx, cy, half = (left + right) / 2, (bottom + top) / 2, (right - left) / 8
    ring = [[cx - half, cy - half], [cx + half, cy - half], [cx + half, cy + half], [cx - half, cy + half],
            [cx - half, cy - half]]
    path.write_text(json.dumps({"type": "FeatureCollection", "crs": {"type": "name", "properties": {"name": crs}},
                                "features": [{"type": "Feature", "properties": {"label": "artisinal_mine"},
                                              "geometry": {"type": "Polygon", "coordinates": [ring]}}]}))
    return path


def child(what: str, scene: Path, labels: Path, out: Path, work: Path, block_tiles: int,
          env: dict | None = None) -> dict:
    import os
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    code = CHILD.format(what=what, scene=str(scene), labels=str(labels), out=str(out),
                        sets=[f"run.dir={work / 'run'}", f"scan.block_tiles={block_tiles}"])
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, **(env or {})})
    if done.returncode != 0:
        raise SystemExit(f"{what} on {scene} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", type=int, default=4096, help="Side of the synthetic scene in px (3 m pixels).")
    ap.add_argument("--scale", type=int, default=2, help="The memory check's larger scene is scale x scale times it.")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--scene", type=Path, default=None, help="A scene of your own instead (memory check skipped).")
    ap.add_argument("--work", type=Path, default=None, help="Folder for the scenes and outputs (default: a temp).")
    ap.add_argument("--block-tiles", type=int, default=256,
                    help="scan.block_tiles (the config's default 256 is a 16 x 16-tile window, 2176 px square: memory "
                         "is flat in area only for scenes larger than one block, so a quick run on a small scene "
                         "needs smaller blocks).")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        scene = args.scene or make_scene(work / f"bench_{args.side}.tif", args.side)
        labels = make_labels(work / "labels.geojson", scene)
        print(f"scene {scene}")
        ratios = []
        for k in range(args.rounds):
            chips = child("chips", scene, labels, work / "chips_out", work, args.block_tiles)
            scan = child("scan", scene, labels, work / "chips_out", work, args.block_tiles)
            chips_rate, scan_rate = chips["items"] / chips["seconds"], scan["items"] / scan["seconds"]
            ratios.append(chips_rate / scan_rate)
            print(f"round {k + 1}: chips {chips['items']} in {chips['seconds']:.2f} s = {chips_rate:.1f} chips/s; "
                  f"scan's tile path {scan['items']} in {scan['seconds']:.2f} s = {scan_rate:.1f} tiles/s; "
                  f"ratio {ratios[-1]:.2f} (target >= 0.8)")
        print(f"chips/s against scan's tiles/s: median ratio {sorted(ratios)[len(ratios) // 2]:.2f} over "
              f"{len(ratios)} round(s)")
        if args.scene is None:
            big = make_scene(work / f"bench_{args.side * args.scale}.tif", args.side * args.scale, seed=1)
            capped = {"GDAL_CACHEMAX": "16"}
            small_run = child("chips", scene, labels, work / "chips_out", work, args.block_tiles, capped)
            big_run = child("chips", big, make_labels(work / "labels_big.geojson", big), work / "chips_out", work,
                            args.block_tiles, capped)
            grow = (big_run["peak_mib"] - big_run["before_mib"]) / max(1e-6, small_run["peak_mib"]
                                                                        - small_run["before_mib"])
            print(f"peak memory of chips: {small_run['peak_mib']:.0f} MiB on {args.side}^2 px "
                  f"({small_run['items']} chips), {big_run['peak_mib']:.0f} MiB on {args.side * args.scale}^2 px "
                  f"({big_run['items']} chips, {args.scale ** 2}x the area): ratio "
                  f"{big_run['peak_mib'] / small_run['peak_mib']:.2f} (target <= 1.1); above the imports "
                  f"{small_run['peak_mib'] - small_run['before_mib']:.0f} -> "
                  f"{big_run['peak_mib'] - big_run['before_mib']:.0f} MiB ({grow:.2f}x); GDAL_CACHEMAX=16")
    return 0


if __name__ == "__main__":
    sys.exit(main())
