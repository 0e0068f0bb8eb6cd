"""Test scenes with known truth: chips mosaicked into a georeferenced GeoTIFF, every chip's place recorded.

There is no real Planet scene in this project, so scenes are built from chips whose labels are known: the 533
real 256-px Planet chips of ``../shared/data/planet_real_256`` (4 mines among them), its 10 real 4-band TIFs,
or chips of a synthetic set (``amazonmine synth``). Chip k of the mosaic fills grid cell (row, col) exactly, so a
scan with stride = tile cuts exactly the chips back out, and a chip's footprint on the ground is known.

Files a mosaic writes (``<stem>`` = the scene's name):

* ``<stem>.tif`` -- tiled, DEFLATE-compressed GeoTIFF with overviews and an internal mask (cells without a chip
  are nodata). An 8-bit colour scene stores bands in the order **R, G, B** with that colour interpretation, as
  a normal "visual" product (the chips' pixels exactly as OpenCV decodes the JPEGs, reordered); a 16-bit
  "analytic" scene stores **B, G, R, NIR** as Planet's analytic products and the Kaggle TIFs do, with colour
  interpretation blue/green/red/undefined and band descriptions blue/green/red/nir.
* ``<stem>_chips.csv`` -- one row per grid cell: image_name (empty for a nodata cell), tags, cell row/col, its
  pixel window (col_off, row_off, width, height), bounds in the scene's CRS and in lon/lat, and is_<mine> flags.
* ``<stem>_chips.geojson`` -- the same cells as lon/lat polygons (opens in QGIS beside a scan's output).
* ``<stem>.json`` -- CRS, resolution, grid, the mines and where they are, attribution.

:func:`reproject_scene` resamples a scene to another CRS and resolution (e.g. EPSG:3857 at 4.77 m, the grid of
the NICFI basemap quads) through a warped view, window by window, and carries the chip table along.
Imagery in the real scenes by Planet, CC BY-SA 4.0 (the competition's release): keep the attribution.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from amazonmine.core.data import LABELS, DataError
from amazonmine.core.io import atomic_path, write_csv_atomic, write_json_atomic, write_text_atomic

MINE_LABELS = ("artisinal_mine", "conventional_mine")
# Tapajos basin, Para, Brazil (about 55.9 W, 6.3 S): the heart of Amazonian artisanal gold mining, UTM 21S.
DEFAULT_EPSG = 32721
DEFAULT_ORIGIN = (600_000.0, 9_310_000.0)
PLANET_ATTRIBUTION = "Imagery by Planet (Kaggle 'Planet: Understanding the Amazon from Space'), CC BY-SA 4.0"


@dataclass(frozen=True)
class Placement:
    """Where a mosaic's chips go on the ground: each chip covers ``ground_m`` metres, the grid's top-left corner
    is ``origin`` in EPSG:``epsg``, and ``seed`` shuffles which cell each chip takes."""

    ground_m: float = 768.0
    epsg: int = DEFAULT_EPSG
    origin: tuple[float, float] = DEFAULT_ORIGIN
    seed: int = 0


@dataclass(frozen=True)
class _SceneGrid:
    """A written scene's grid, as its chip table is georeferenced: affine transform, CRS, pixel size, cells."""

    transform: object
    crs: str
    res: float
    rows: int
    cols: int
    side: int


@dataclass
class MosaicResult:
    tif: Path
    chips_csv: Path
    chips_geojson: Path
    info: dict


def _read_chip(path: Path, kind: str) -> np.ndarray:
    """Pixels in the scene's band order: R,G,B uint8 for 'rgb', B,G,R,NIR uint16 for 'analytic'."""
    if kind == "analytic":
        import tifffile

        img = tifffile.imread(str(path))
        if img.ndim != 3 or img.shape[2] != 4 or img.dtype != np.uint16:
            raise DataError(f"{path}: expected a 4-band 16-bit TIF (B, G, R, NIR), got {img.shape} {img.dtype}")
        return img
    from amazonmine.core.data import read_image

    return np.ascontiguousarray(read_image(path)[..., ::-1])


def mosaic_scene(chips: list[Path], tags: list[str], out_tif: Path, cols: int, rows: int,
                 place: Placement = Placement(), kind: str = "rgb", attribution: str = "") -> MosaicResult:
    """Place every chip in a cell of a rows x cols grid (order shuffled by ``place.seed``; cells left over are
    nodata).

    Each chip covers ``place.ground_m`` metres, so the pixel size is that over the chip side; all chips must have
    one size.
    The scene is written one chip at a time, never held whole.
    """
    import rasterio
    from rasterio.enums import ColorInterp, Resampling
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    if len(chips) != len(tags):
        raise ValueError("one tag string per chip")
    if len(chips) > rows * cols:
        raise DataError(f"{len(chips)} chips do not fit a {rows}x{cols} grid")
    if not chips:
        raise DataError("no chips to mosaic")
    first = _read_chip(chips[0], kind)
    side = first.shape[0]
    res = place.ground_m / side
    rng = np.random.default_rng(place.seed)
    cells = rng.permutation(rows * cols)[:len(chips)]
    transform = from_origin(place.origin[0], place.origin[1], res, res)
    bands = 4 if kind == "analytic" else 3
    dtype = "uint16" if kind == "analytic" else "uint8"
    # Internal tiles of about one chip (multiples of 16, as TIFF requires): a damaged tile spoils one cell.
    block = min(256, 16 * -(-side // 16))
    profile = dict(driver="GTiff", width=cols * side, height=rows * side, count=bands, dtype=dtype,
                   crs=f"EPSG:{place.epsg}", transform=transform, tiled=True, blockxsize=block, blockysize=block,
                   compress="deflate", predictor=2, interleave="pixel")
    if kind == "rgb":
        profile["photometric"] = "RGB"
    out_tif = Path(out_tif)
    out_tif.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_tif) as tmp:
        with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(tmp, "w", **profile) as dst:
            if kind == "analytic":
                dst.colorinterp = [ColorInterp.blue, ColorInterp.green, ColorInterp.red, ColorInterp.undefined]
                for i, name in enumerate(("blue", "green", "red", "nir"), start=1):
                    dst.set_band_description(i, name)
            else:
                for i, name in enumerate(("red", "green", "blue"), start=1):
                    dst.set_band_description(i, name)
            placed = {int(cell): path for path, cell in zip(chips, cells)}
            on, off = np.full((side, side), 255, np.uint8), np.zeros((side, side), np.uint8)
            for cell in range(rows * cols):
                r, c = divmod(cell, cols)
                window = Window(c * side, r * side, side, side)
                path = placed.get(cell)
                if path is None:
                    dst.write(np.zeros((bands, side, side), dtype), window=window)
                    dst.write_mask(off, window=window)
                    continue
                img = first if path == chips[0] else _read_chip(path, kind)
                if img.shape[:2] != (side, side):
                    raise DataError(f"{path}: chip is {img.shape[1]}x{img.shape[0]}, the others {side}x{side}")
                dst.write(np.moveaxis(img, -1, 0), window=window)
                dst.write_mask(on, window=window)
            levels = [f for f in (2, 4, 8, 16, 32) if min(rows, cols) * side // f >= 64]
            if levels:
                dst.build_overviews(levels, Resampling.average)
            dst.update_tags(ATTRIBUTION=attribution, BAND_ORDER="B,G,R,NIR" if kind == "analytic" else "R,G,B",
                            SOURCE="amazonmine.scanning.mosaic.mosaic_scene")
    tag_of = dict(zip(chips, tags))
    table = []
    for cell in range(rows * cols):
        r, c = divmod(cell, cols)
        path = placed.get(cell)
        table.append({"image_name": Path(path).stem if path else "", "tags": tag_of[path] if path else "",
                      "cell_row": r, "cell_col": c, "col_off": c * side, "row_off": r * side,
                      "width": side, "height": side})
    return _write_tables(out_tif, table, _SceneGrid(transform, f"EPSG:{place.epsg}", res, rows, cols, side), kind,
                         attribution)


def _write_tables(out_tif: Path, table: list[dict], grid: _SceneGrid, kind: str, attribution: str,
                  extra: dict | None = None) -> MosaicResult:
    """Bounds (scene CRS and lon/lat) for every cell, then the CSV, GeoJSON and JSON beside the scene."""
    import pandas as pd
    from pyproj import CRS, Transformer

    transform, crs = grid.transform, grid.crs

    to_lonlat = Transformer.from_crs(CRS.from_user_input(crs), CRS.from_epsg(4326), always_xy=True)
    features = []
    for row in table:
        if "minx" not in row:
            x0, y0 = transform @ (row["col_off"], row["row_off"])
            x1, y1 = transform @ (row["col_off"] + row["width"], row["row_off"] + row["height"])
            row.update(minx=min(x0, x1), miny=min(y0, y1), maxx=max(x0, x1), maxy=max(y0, y1))
        ring = [(row["minx"], row["miny"]), (row["maxx"], row["miny"]), (row["maxx"], row["maxy"]),
                (row["minx"], row["maxy"]), (row["minx"], row["miny"])]
        lons, lats = to_lonlat.transform([p[0] for p in ring], [p[1] for p in ring])
        row.update(west=min(lons), south=min(lats), east=max(lons), north=max(lats))
        present = set(row["tags"].split())
        for label in MINE_LABELS:
            row[f"is_{label}"] = int(label in present)
        features.append({"type": "Feature",
                         "geometry": {"type": "Polygon", "coordinates": [[[round(x, 7), round(y, 7)]
                                                                          for x, y in zip(lons, lats)]]},
                         "properties": {k: row[k] for k in ("image_name", "tags", "cell_row", "cell_col")}})
    stem = out_tif.with_suffix("")
    chips_csv = Path(f"{stem}_chips.csv")
    chips_geojson = Path(f"{stem}_chips.geojson")
    write_csv_atomic(chips_csv, pd.DataFrame(table))
    write_text_atomic(chips_geojson, json.dumps({"type": "FeatureCollection", "features": features}) + "\n")
    mines = [{"image_name": r["image_name"], "tags": r["tags"], "cell_row": r["cell_row"],
              "cell_col": r["cell_col"], "window": [r["col_off"], r["row_off"], r["width"], r["height"]],
              "lonlat_bounds": [r["west"], r["south"], r["east"], r["north"]]}
             for r in table if any(r[f"is_{m}"] for m in MINE_LABELS)]
    info = {"scene": str(out_tif), "crs": str(crs), "resolution_m": grid.res, "grid": [grid.rows, grid.cols],
            "chip_px": grid.side,
            "kind": kind, "band_order": "B,G,R,NIR" if kind == "analytic" else "R,G,B",
            "chips": sum(1 for r in table if r["image_name"]),
            "nodata_cells": sum(1 for r in table if not r["image_name"]),
            "mines": mines, "attribution": attribution, **(extra or {})}
    write_json_atomic(Path(f"{stem}.json"), info)
    return MosaicResult(out_tif, chips_csv, chips_geojson, info)


def reproject_scene(src_tif: Path, out_tif: Path, epsg: int = 3857, res: float = 4.77,
                    resampling: str = "bilinear", block: int = 512) -> MosaicResult:
    """``src_tif`` resampled to EPSG:``epsg`` at ``res`` CRS units per pixel, window by window through a warped
    view (a NICFI quad's grid by default: Web Mercator, 4.77 m). Its chip table comes along: each cell's
    footprint is mapped into the new CRS (bounds of its transformed corners)."""
    import pandas as pd
    import rasterio
    from pyproj import Transformer
    from rasterio.enums import Resampling
    from rasterio.transform import from_origin
    from rasterio.vrt import WarpedVRT
    from rasterio.warp import transform_bounds
    from rasterio.windows import Window

    src_tif, out_tif = Path(src_tif), Path(out_tif)
    with rasterio.open(src_tif) as src:
        dst_crs = f"EPSG:{epsg}"
        left, bottom, right, top = transform_bounds(src.crs, dst_crs, *src.bounds, densify_pts=21)
        # Snap to the resolution grid from the CRS origin, as web-map quads are.
        left, top = np.floor(left / res) * res, np.ceil(top / res) * res
        width, height = int(np.ceil((right - left) / res)), int(np.ceil((top - bottom) / res))
        transform = from_origin(left, top, res, res)
        profile = src.profile.copy()
        profile.update(crs=dst_crs, transform=transform, width=width, height=height, tiled=True,
                       blockxsize=256, blockysize=256, compress="deflate", predictor=2)
        profile.pop("nodata", None)
        tags = src.tags()
        interp, descr = src.colorinterp, src.descriptions
        bands = list(range(1, src.count + 1))
        # The added alpha band carries the source's mask (nodata cells) and its footprint into the new grid.
        with WarpedVRT(src, crs=dst_crs, transform=transform, width=width, height=height, add_alpha=True,
                       resampling=getattr(Resampling, resampling)) as vrt, atomic_path(out_tif) as tmp:
            with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(tmp, "w", **profile) as dst:
                dst.colorinterp = interp
                for i, d in enumerate(descr, start=1):
                    if d:
                        dst.set_band_description(i, d)
                for row in range(0, height, block):
                    for col in range(0, width, block):
                        w = Window(col, row, min(block, width - col), min(block, height - row))
                        dst.write(vrt.read(bands, window=w), window=w)
                        dst.write_mask(vrt.read(src.count + 1, window=w), window=w)
                levels = [f for f in (2, 4, 8, 16, 32) if min(width, height) // f >= 64]
                if levels:
                    dst.build_overviews(levels, Resampling.average)
                dst.update_tags(**tags)
                dst.update_tags(SOURCE=f"amazonmine.scanning.mosaic.reproject_scene from {src_tif.name} ({resampling})")
        src_crs = src.crs
    table = pd.read_csv(Path(f"{src_tif.with_suffix('')}_chips.csv"), dtype={"image_name": str, "tags": str},
                        keep_default_na=False).to_dict("records")
    to_dst = Transformer.from_crs(src_crs, dst_crs, always_xy=True)
    inverse = ~transform
    for row in table:
        xs, ys = to_dst.transform([row["minx"], row["maxx"], row["maxx"], row["minx"]],
                                  [row["miny"], row["miny"], row["maxy"], row["maxy"]])
        row.update(minx=min(xs), miny=min(ys), maxx=max(xs), maxy=max(ys))
        c0, r0 = inverse @ (row["minx"], row["maxy"])
        c1, r1 = inverse @ (row["maxx"], row["miny"])
        row.update(col_off=round(c0, 2), row_off=round(r0, 2), width=round(c1 - c0, 2), height=round(r1 - r0, 2))
    info = json.loads(Path(f"{src_tif.with_suffix('')}.json").read_text())
    kept = {k: info.get(k) for k in ("chip_px", "kind", "attribution")}
    return _write_tables(out_tif, table, _SceneGrid(transform, dst_crs, res, *info["grid"], kept["chip_px"]),
                         kept["kind"], kept["attribution"],
                         extra={"reprojected_from": str(src_tif), "resampling": resampling})


def make_real_scenes(real_dir: Path, out_dir: Path, seed: int = 0) -> list[MosaicResult]:
    """The three real-pixel scenes: the 533 chips at 3 m in UTM 21S (24 x 23 cells, 19 of them nodata), the same
    area resampled to EPSG:3857 at 4.77 m like a NICFI quad, and the 10 real 4-band TIFs as a 16-bit analytic
    scene (4 x 3 cells)."""
    from amazonmine.core.data import read_labels

    real_dir, out_dir = Path(real_dir), Path(out_dir)
    frame = read_labels(real_dir / "train_v2.csv")
    paths = [real_dir / "train-jpg" / f"{n}.jpg" for n in frame["image_name"]]
    utm = mosaic_scene(paths, frame["tags"].tolist(), out_dir / "real_utm21s_3m.tif", cols=24, rows=23,
                       place=Placement(seed=seed), attribution=PLANET_ATTRIBUTION)
    mercator = reproject_scene(utm.tif, out_dir / "real_3857_4.77m.tif")
    tag_of = dict(zip(frame["image_name"], frame["tags"]))
    tifs = sorted((real_dir / "train-tif-v2").glob("*.tif"))
    analytic = mosaic_scene(tifs, [tag_of.get(p.stem, "") for p in tifs], out_dir / "real_analytic_3m.tif",
                            cols=4, rows=3, kind="analytic", attribution=PLANET_ATTRIBUTION,
                            place=Placement(origin=(DEFAULT_ORIGIN[0], DEFAULT_ORIGIN[1] + 30_000), seed=seed))
    return [utm, mercator, analytic]


def mosaic_folder(chip_dir: Path, labels_csv: Path, out_tif: Path, cols: int, rows: int, ground_m: float = 768.0,
                  seed: int = 0, names: list[str] | None = None, **kwargs) -> MosaicResult:
    """Mosaic the JPEG chips of a Kaggle-layout folder (labels from ``labels_csv``; ``names`` picks a subset)."""
    import pandas as pd

    frame = pd.read_csv(labels_csv, dtype=str, keep_default_na=False)
    if names is not None:
        frame = frame.set_index("image_name").loc[names].reset_index()
    paths = [Path(chip_dir) / f"{n}.jpg" for n in frame["image_name"]]
    return mosaic_scene(paths, frame["tags"].tolist(), out_tif, cols, rows, Placement(ground_m, seed=seed), **kwargs)


def chip_table(scene_tif: Path):
    """The chip table written beside a mosaic (DataFrame), with a (N, 17) truth matrix for the chip rows."""
    import pandas as pd

    from amazonmine.core.data import tags_to_matrix

    frame = pd.read_csv(Path(f"{Path(scene_tif).with_suffix('')}_chips.csv"), dtype={"image_name": str, "tags": str},
                        keep_default_na=False)
    chips = frame[frame["image_name"] != ""].reset_index(drop=True)
    return chips, tags_to_matrix(chips["tags"]) if len(chips) else np.zeros((0, len(LABELS)), np.uint8)
