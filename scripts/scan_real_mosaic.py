"""Scan the real-pixel mosaics with a run trained on the 32-px competition set, and check the map against the chips.

    .venv/bin/python scripts/scan_real_mosaic.py [--config configs/planet32.yaml] [--scenes data/scenes]

The mosaics are ``scripts/make_scene.py real`` (made here when missing): the 533 real 256-px Planet chips at 3 m
in UTM 21S, the same area as a Web Mercator quad at 4.77 m, and the 10 real 16-bit analytic TIFs. What it shows:

1. **scan agrees with predict**: the UTM mosaic is scanned with stride = tile, so every tile is exactly one chip;
   each tile's 17 probabilities are compared with ``Predictor.predict`` on the same tile pixels (made into a chip
   by scan's tile path), and with ``Predictor.predict`` on the chip's public 32-px thumbnail;
2. **sites sit where the model fired**: a chip's footprint lies in a site of a mine label exactly when its tile
   cleared that label's threshold;
3. **sensitivity and specificity per mine label** on the mosaic's chips (tile decision vs the chip's label), on all
   chips and on the run's out-of-fold chips only (the others were trained on, as thumbnails);
4. the NICFI-like quad and the analytic scene scanned at the default stride (tile counts, sites, and whether each
   mine chip's footprint meets a site).
Imagery by Planet, CC BY-SA 4.0.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
MINES = ("artisinal_mine", "conventional_mine")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(REPO / "configs" / "planet32.yaml"))
    ap.add_argument("--set", dest="sets", action="append", default=[], help="config override")
    ap.add_argument("--scenes", type=Path, default=REPO / "data" / "scenes")
    ap.add_argument("--real", type=Path, default=REPO.parent / "shared" / "data" / "planet_real_256")
    ap.add_argument("--thumbs", type=Path, default=REPO / "data" / "planet_32px" / "train-jpg")
    ap.add_argument("--out", type=Path, default=None, help="scan outputs (default <run.dir>/scans/<scene>)")
    args = ap.parse_args()

    import cv2
    import rasterio
    import shapely
    from rasterio.windows import Window
    from shapely.geometry import shape

    from amazonmine.core.config import load_config
    from amazonmine.core.data import LABEL_INDEX, LABELS
    from amazonmine.core.runfolder import RunFolder
    from amazonmine.neural.predictor import Predictor
    from amazonmine.scanning.mosaic import chip_table, make_real_scenes
    from amazonmine.scanning.tiling import ChipLook, tile_to_chip
    from amazonmine.stages.scan import run_scan

    utm = args.scenes / "real_utm21s_3m.tif"
    if not utm.is_file():
        print(f"making the real-pixel scenes in {args.scenes} ...")
        make_real_scenes(args.real, args.scenes)
    cfg = load_config(args.config, args.sets)
    predictor = Predictor.from_run(cfg)
    out_root = args.out or Path(cfg.run.dir) / "scans"

    # 1. aligned scan of the UTM mosaic
    began = time.perf_counter()
    aligned = load_config(args.config, args.sets + ["scan.stride=1.0"])
    summary = run_scan(aligned, [utm], out=out_root / "real_utm21s_3m_aligned", predictor=predictor,
                       progress=False)
    print(summary.headline(), f"[{time.perf_counter() - began:.0f} s]")
    out = summary.out_dir
    tiles = {(f["properties"]["row"], f["properties"]["col"]): f
             for f in json.loads((out / "tiles.geojson").read_text())["features"]}
    chips, truth = chip_table(utm)
    look = ChipLook(**json.loads((out / "scan.json").read_text())["chip_look"])
    with rasterio.open(utm) as src:
        same = np.stack([tile_to_chip(np.moveaxis(src.read(window=Window(r.col_off, r.row_off, r.width, r.height)),
                                                  0, -1), look) for r in chips.itertuples()])
    scanned = np.array([[tiles[(r.cell_row, r.cell_col)]["properties"][f"prob_{lab}"] for lab in LABELS]
                        for r in chips.itertuples()])
    decided = np.array([[tiles[(r.cell_row, r.cell_col)]["properties"][f"has_{lab}"] for lab in LABELS]
                        for r in chips.itertuples()])
    direct = predictor.predict(same)
    print(f"\n1. scan vs predict on the same tile pixels, {len(chips)} aligned tiles: max |difference| "
          f"{np.abs(scanned - direct).max():.2e} (GeoJSON keeps 6 decimals)")
    if args.thumbs.is_dir():
        thumbs = np.stack([cv2.imread(str(args.thumbs / f"{n}.jpg")) for n in chips["image_name"]])
        from_thumbs = predictor.predict(thumbs)
        diff = np.abs(scanned - from_thumbs)
        print(f"   scan vs predict on the public thumbnails of the same chips: mean |difference| {diff.mean():.2e}, "
              f"max {diff.max():.3f}; tiles identical to their thumbnail: "
              f"{int(sum((a == b).all() for a, b in zip(same, thumbs)))} of {len(chips)}")

    # 2. sites vs threshold
    sites = json.loads((out / "sites.geojson").read_text())["features"]
    geojson_chips = {f["properties"]["image_name"]: shape(f["geometry"]) for f in
                     json.loads(Path(f"{utm.with_suffix('')}_chips.geojson").read_text())["features"]
                     if f["properties"]["image_name"]}
    agree = 0
    for label in MINES:
        union = shapely.union_all([shape(f["geometry"]) for f in sites if f["properties"]["label"] == label])
        j = LABEL_INDEX[label]
        for k, name in enumerate(chips["image_name"]):
            inside = union.intersection(geojson_chips[name]).area / geojson_chips[name].area > 0.5
            agree += inside == bool(decided[k, j])
    print(f"\n2. chip footprint in a site <=> its tile cleared the threshold: {agree} of {2 * len(chips)} "
          f"(chip, mine label) pairs agree")

    # 3. sensitivity / specificity
    folds = RunFolder.from_config(cfg).read_folds().set_index("image_name")["fold"]
    # The model of fold K never trained on fold K's chips; the mean of several fold models trained on them all.
    model_folds = {int(p.parent.name.removeprefix("fold")) for p in predictor.model_paths}
    held = next(iter(model_folds)) if len(model_folds) == 1 else None
    oof = np.array([held is not None and int(folds.get(n, -1)) == held for n in chips["image_name"]])
    print(f"\n3. per mine label on the mosaic (tile decision vs chip label); out of fold = the chips of fold "
          f"{held if held is not None else '- (several fold models averaged)'} ({oof.sum()} chips); thresholds: "
          + ", ".join(f"{lab} {json.loads((out / 'scan.json').read_text())['operating_point']['thresholds'][lab]:.3f}"
                      for lab in MINES))
    print(f"   {'label':<18} {'chips':<12} {'positives':>9} {'found':>6} {'sensitivity':>11} {'false alarms':>12} "
          f"{'specificity':>11}")
    for label in MINES:
        j = LABEL_INDEX[label]
        for name, rows in (("all", np.ones(len(chips), bool)), ("out of fold", oof)):
            y, d = truth[rows, j].astype(bool), decided[rows, j]
            pos, neg = int(y.sum()), int((~y).sum())
            sens = f"{(d & y).sum() / pos:.3f}" if pos else "-"
            spec = f"{(~d & ~y).sum() / neg:.3f}" if neg else "-"
            print(f"   {label:<18} {name:<12} {pos:>9} {int((d & y).sum()):>6} {sens:>11} {int((d & ~y).sum()):>12} "
                  f"{spec:>11}")
        for k in np.flatnonzero(truth[:, j]):
            print(f"      {chips['image_name'][k]}: p = {scanned[k, j]:.3f} "
                  f"({'found' if decided[k, j] else 'missed'}{', out of fold' if oof[k] else ''})")

    # 4. the NICFI-like quad and the analytic scene at the default stride
    for stem in ("real_3857_4.77m", "real_analytic_3m"):
        path = args.scenes / f"{stem}.tif"
        began = time.perf_counter()
        s = run_scan(cfg, [path], out=out_root / stem, predictor=predictor, progress=False)
        print(f"\n4. {stem}: {s.headline()} [{time.perf_counter() - began:.0f} s]")
        site_geoms = {lab: shapely.union_all([shape(f["geometry"]) for f in
                                              json.loads((s.out_dir / "sites.geojson").read_text())["features"]
                                              if f["properties"]["label"] == lab]) for lab in MINES}
        table, y = chip_table(path)
        for k in np.flatnonzero(y[:, [LABEL_INDEX[m] for m in MINES]].any(axis=1)):
            row = table.iloc[k]
            foot = shapely.box(row["west"], row["south"], row["east"], row["north"])
            hits = [lab for lab in MINES if site_geoms[lab].intersects(foot)]
            print(f"   mine chip {row['image_name']} ({row['tags']}): meets a site of {', '.join(hits) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
