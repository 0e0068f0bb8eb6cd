"""Build georeferenced test scenes whose truth is known, for `amazonmine scan`.

    .venv/bin/python scripts/make_scene.py real [--real ../shared/data/planet_real_256] [--out data/scenes]
    .venv/bin/python scripts/make_scene.py synth [--out data/scenes] [--cols 6 --rows 5 --size 48]

``real`` writes three scenes from the real Planet chips of ../shared (see amazonmine/scanning/mosaic.py for the files):
``real_utm21s_3m.tif`` (the 533 256-px chips at 3 m in UTM zone 21S, a 24 x 23 grid with 19 nodata cells, bands
R,G,B), ``real_3857_4.77m.tif`` (the same area resampled to Web Mercator at 4.77 m, like a NICFI quad) and
``real_analytic_3m.tif`` (the 10 real 16-bit TIFs, bands B,G,R,NIR). Each comes with ``<stem>_chips.csv`` and
``<stem>_chips.geojson`` (where every chip is) and ``<stem>.json`` (CRS, grid, where the mines are).
``synth`` writes a small scene of freshly painted synthetic chips (the demo's kind), fast. Imagery of the real
scenes by Planet, CC BY-SA 4.0.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    real = sub.add_parser("real", help="the real-pixel scenes from ../shared/data/planet_real_256")
    real.add_argument("--real", type=Path, default=REPO.parent / "shared" / "data" / "planet_real_256")
    real.add_argument("--out", type=Path, default=REPO / "data" / "scenes")
    real.add_argument("--seed", type=int, default=0, help="shuffles which cell each chip goes to")
    synth = sub.add_parser("synth", help="a small scene of synthetic chips")
    synth.add_argument("--out", type=Path, default=REPO / "data" / "scenes")
    synth.add_argument("--cols", type=int, default=6)
    synth.add_argument("--rows", type=int, default=5)
    synth.add_argument("--size", type=int, default=48, help="chip side in px (the demo's chips are 48)")
    synth.add_argument("--ground-m", type=float, default=768.0)
    synth.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from amazonmine.core.errors import AmazonmineError
    from amazonmine.scanning.mosaic import make_real_scenes
    from amazonmine.stages.synth import make_synthetic_scene

    began = time.perf_counter()
    try:
        if args.what == "real":
            if not (args.real / "train_v2.csv").is_file():
                print(f"error: {args.real}/train_v2.csv not found", file=sys.stderr)
                return 2
            made = make_real_scenes(args.real, args.out, seed=args.seed)
        else:
            made = [make_synthetic_scene(args.out, cols=args.cols, rows=args.rows, size=args.size,
                                         ground_m=args.ground_m, seed=args.seed)]
    except AmazonmineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for m in made:
        info = m.info
        mines = ", ".join(f"{x['image_name']} ({' '.join(t for t in x['tags'].split() if 'mine' in t)}) at cell "
                          f"{x['cell_row']},{x['cell_col']}" for x in info["mines"]) or "none"
        print(f"{m.tif}: {info['crs']}, {info['resolution_m']} m, {info['grid'][0]}x{info['grid'][1]} cells, "
              f"{info['chips']} chips + {info['nodata_cells']} nodata, bands {info['band_order']}; mines: {mines}")
    print(f"({time.perf_counter() - began:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
