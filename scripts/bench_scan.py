"""What the geo path costs: scan's tiles/s against the predictor's chips/s, memory against scene size, Dask workers.

    .venv/bin/python scripts/bench_scan.py [--config configs/planet32.yaml] [--scenes data/scenes] [--rounds 2]

On the real-pixel mosaic (``scripts/make_scene.py real``; made when missing), at the config's stride (``--stride``
to change it; 1 makes the tiles the 533 chips):

1. **throughput**: ``run_scan`` end to end (windowed reads, tile path, models, GeoJSON, COGs, report) against
   ``Predictor.predict`` on the very chips scan scored, already in memory, same models and TTA, and against
   predict's file path (``Predictor.predict_files`` on the mosaic's 533 chips as 32-px JPEG files); rounds
   alternate and each round's ratios are printed (target >= 0.8);
2. **memory**: peak resident memory of a scan of the scene and of a scene 4x its area (the same chips laid out
   four times, built once in ``--work``), each in its own process, with a process that only loads the models
   as the baseline (target ratio <= 1.1);
3. **Dask**: the same scan on a local cluster of 1 and of 2 worker processes (TensorFlow threads split between
   them), first on a fresh cluster (model loading included), then again on the warm cluster.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CHILD = """
import json, resource, sys, time
from amazonmine.core.config import load_config
from amazonmine.neural.predictor import Predictor
cfg = load_config({config!r}, {sets!r})
p = Predictor.from_run(cfg)
p.predict(__import__("numpy").zeros((2, p.chip_size or p.image_size, p.chip_size or p.image_size, p.channels),
                                    "uint8" if p.channels == 3 else "uint16"))
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
seconds, tiles, before, during = 0.0, 0, status("VmRSS"), 0.0
if {scene!r}:
    from amazonmine.stages.scan import run_scan
    with open("/proc/self/clear_refs", "w") as fh:  # resets the peak (VmHWM) to what is resident now
        fh.write("5")
    began = time.perf_counter()
    s = run_scan(cfg, [{scene!r}], out={out!r}, predictor=p, progress=False)
    seconds, tiles, during = time.perf_counter() - began, s.tiles, status("VmHWM")
print(json.dumps({{"maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "tiles": tiles,
                  "seconds": seconds, "before_mib": before, "scan_peak_mib": during}}))
"""


def child_run(config, sets, scene, out) -> dict:
    code = CHILD.format(config=str(config), sets=list(sets), scene=str(scene) if scene else "", out=str(out))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    if proc.returncode:
        raise SystemExit(f"child failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def four_times(scene: Path, work: Path) -> Path:
    """The scene's chips laid out four times (a 2x2 arrangement of the grid), written once."""
    from amazonmine.scanning.mosaic import Placement, chip_table, mosaic_scene

    out = work / "real_utm21s_3m_x4.tif"
    if out.is_file():
        return out
    info = json.loads(Path(f"{scene.with_suffix('')}.json").read_text())
    table, _ = chip_table(scene)
    chips_dir = REPO.parent / "shared" / "data" / "planet_real_256" / "train-jpg"
    paths = [chips_dir / f"{n}.jpg" for n in table["image_name"]] * 4
    rows, cols = info["grid"]
    mosaic_scene(paths, table["tags"].tolist() * 4, out, cols=2 * cols, rows=2 * rows, place=Placement(seed=1))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(REPO / "configs" / "planet32.yaml"))
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--scenes", type=Path, default=REPO / "data" / "scenes")
    ap.add_argument("--work", type=Path, default=REPO / "data" / "scenes" / "bench")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--stride", type=float, default=0.0, help="tile stride (default: the config's, 0.5)")
    ap.add_argument("--thumbs", type=Path, default=REPO / "data" / "planet_32px" / "train-jpg",
                    help="the chips' 32-px files, for predict's own file path")
    ap.add_argument("--skip", action="append", default=[], choices=["throughput", "memory", "dask"])
    args = ap.parse_args()


    from amazonmine.core.config import load_config
    from amazonmine.neural.predictor import Predictor
    from amazonmine.scanning.mosaic import chip_table, make_real_scenes
    from amazonmine.stages.scan import run_scan

    scene = args.scenes / "real_utm21s_3m.tif"
    if not scene.is_file():
        make_real_scenes(REPO.parent / "shared" / "data" / "planet_real_256", args.scenes)
    sets = args.sets + ([f"scan.stride={args.stride}"] if args.stride else [])
    cfg = load_config(args.config, sets)
    args.work.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench_scan_", dir=args.work))

    if "throughput" not in args.skip:
        predictor = Predictor.from_run(cfg)
        first = run_scan(cfg, [scene], out=tmp / "warm", predictor=predictor, progress=False)  # traces the models
        # The predictor's side gets exactly the chips scan scored: every block's tiles, made by scan's own path.
        from amazonmine.scanning.tiling import read_block
        from amazonmine.stages.scan import plan_scan

        plan = plan_scan(cfg, [scene], out=tmp / "plan", predictor=predictor)
        chips = np.concatenate([read_block(t.scene, t.grid, t.block, t.look).chips for t in plan.jobs[0].tasks])
        assert len(chips) == first.tiles
        table, _ = chip_table(scene)
        files = [(n, args.thumbs / f"{n}.jpg") for n in table["image_name"]]
        have_files = all(path.is_file() for _, path in files)
        print(f"1. throughput: {len(chips)} tiles (stride {cfg.scan.stride:g} of a tile), "
              f"{len(predictor.model_paths)} model(s) x TTA {predictor.tta}, model input {predictor.image_size} px, "
              f"chips {chips.shape[1]} px")
        ratios, file_ratios = [], []
        for k in range(args.rounds):
            order = ("predict", "files", "scan") if k % 2 == 0 else ("scan", "files", "predict")
            rate = {}
            for what in order:
                began = time.perf_counter()
                if what == "predict":
                    predictor.predict(chips)
                    rate[what] = len(chips) / (time.perf_counter() - began)
                elif what == "files":
                    if have_files:
                        predictor.predict_files(files, tmp / f"files{k}.csv", progress=False)
                        rate[what] = len(files) / (time.perf_counter() - began)
                else:
                    s = run_scan(cfg, [scene], out=tmp / f"round{k}", predictor=predictor, progress=False)
                    rate[what] = s.tiles / (time.perf_counter() - began)
            ratios.append(rate["scan"] / rate["predict"])
            line = (f"   round {k + 1}: Predictor.predict {rate['predict']:.1f} chips/s, scan {rate['scan']:.1f} "
                    f"tiles/s, ratio {ratios[-1]:.3f}")
            if "files" in rate:
                file_ratios.append(rate["scan"] / rate["files"])
                line += f"; predict's file path {rate['files']:.1f} chips/s, ratio {file_ratios[-1]:.3f}"
            print(line)
        print(f"   scan / Predictor.predict: median {np.median(ratios):.3f} (target >= 0.8)"
              + (f"; scan / predict's file path (the {len(files)} chips' 32-px JPEG files): median "
                 f"{np.median(file_ratios):.3f}" if file_ratios else ""))
        del predictor, chips

    if "memory" not in args.skip:
        big = four_times(scene, args.work)
        base = child_run(args.config, sets, None, None)
        one = child_run(args.config, sets, scene, tmp / "mem1")
        four = child_run(args.config, sets, big, tmp / "mem4")
        print(f"2. peak resident memory, each scan in its own process (models loaded first: "
              f"{base['maxrss_mib']:.0f} MiB peak with nothing scanned):")
        for name, r in (("scene", one), ("4x its area", four)):
            print(f"   {name:<12} {r['tiles']:>6} tiles: process peak {r['maxrss_mib']:.0f} MiB; during the scan "
                  f"{r['scan_peak_mib']:.0f} MiB, {r['scan_peak_mib'] - r['before_mib']:.0f} MiB above what was "
                  f"resident before it ({r['tiles'] / r['seconds']:.0f} tiles/s)")
        print(f"   ratio 4x / 1x: process peak {four['maxrss_mib'] / one['maxrss_mib']:.3f}, peak during the scan "
              f"{four['scan_peak_mib'] / one['scan_peak_mib']:.3f} (target <= 1.1)")

    if "dask" not in args.skip:
        from distributed import Client, LocalCluster

        cores = os.cpu_count() or 1
        print(f"3. Dask on this machine ({cores} cores), {cfg.scan.block_tiles} tiles per block:")
        for n in (1, 2):
            threads = max(1, cores // n)
            env = {"TF_NUM_INTRAOP_THREADS": str(threads), "TF_CPP_MIN_LOG_LEVEL": "3"}
            with LocalCluster(n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1",
                              dashboard_address=None, env=env) as cluster, Client(cluster):
                times = []
                for label in ("fresh", "warm"):
                    began = time.perf_counter()
                    s = run_scan(cfg, [scene], out=tmp / f"dask{n}_{label}", scheduler=cluster.scheduler_address,
                                 progress=False)
                    times.append((label, s.tiles / (time.perf_counter() - began)))
            print(f"   {n} worker(s) x {threads} TF thread(s): " + ", ".join(f"{lab} cluster {r:.1f} tiles/s"
                                                                         for lab, r in times))
    print(f"(outputs in {tmp})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
