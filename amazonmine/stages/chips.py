"""Training chips from georeferenced scenes and label polygons, cut exactly as ``scan`` cuts its tiles.

``amazonmine chips SCENE... --labels LABELS.geojson|.gpkg --out DATA`` writes, in the Kaggle layout the rest
of the toolkit reads (``data.labels_csv``, ``data.train_dir`` / ``data.tif_dir`` names of the config)::

    DATA/train_v2.csv        image_name,tags
    DATA/train-jpg/<name>.jpg   (train-tif-v2/<name>.tif with data.image_format=tif)
    DATA/chips.csv           image_name,tags,scene,date,row,col,block,west,south,east,north
    DATA/chips.geojson       every chip's footprint (lon/lat) with image_name, tags, scene, date, row, col, block
    DATA/chips.json          settings, the labelling rule, the chip look, per-scene grids and counts, notes

**The same chips scan would make.** Each scene is opened, gridded and read with :mod:`amazonmine.scanning.tiling`,
block window by block window, with scan's settings (``scan.stride``, ``scan.stretch_percentiles``,
``scan.stretch_gamma``, ``scan.block_tiles``, ``scan.max_resolution_ratio``, ``data.chip_ground_m``), and a
chip file holds the very JPEG bytes scan decodes before the model sees the tile
(:func:`amazonmine.scanning.tiling.encode_chip`): read back, a chip is the array scan would score for that tile, bit
for bit. The look (CMYK or YCbCr JPEG, quality, size) is Kaggle's by default (``data.chip_size`` or 256 px,
4-component JPEG at quality 75), or copied from a chip given with ``--look-like``; scan later measures the
same look from these chips.

**Labels.** Each polygon carries a ``label`` property, one of the run's vocabulary (``data.labels``: the 17
Planet labels by default) or an ignore label (``unlabelled``, ``ignore``); any other label is refused, naming the
feature. A vocabulary label that no polygon of the file names was never drawn, so it is written ``?label`` on
every chip (not annotated: masked out of training and scores, not a negative), and listed in chips.json. A
tile takes label L when L's polygons cover at least ``min_tile_share`` of the tile, or when at least
``min_polygon_share`` of one L polygon's own area lies in the tile (so a mine smaller than a tile labels the
tiles that hold most of it; at stride 0.5 a polygon smaller than half a tile lies wholly inside at least one
tile). Tiles that overlap an ignore polygon at all are left out, as are nodata and blank tiles (scan's rule).
With the four weather labels in the vocabulary (only then are weather labels written), the Kaggle reader wants
one weather label per chip: a tile takes the weather label of the polygons when they give one (the one covering
most of it), else ``weather`` (default ``clear``: scenes chosen for labelling are cloud-free mosaics; recorded in
chips.json). Polygons may be in any CRS (a GeoJSON ``crs`` member or a GeoPackage's CRS; plain GeoJSON is lon/lat, RFC
7946): they are reprojected into each scene's CRS, and shares are areas measured there.

**Negatives** (tiles with no label but weather) can be thinned to ``negative_share``: a tile is kept when a
seeded hash of its name falls under the share, so the choice does not depend on the order of the work.

**Spatial blocks.** Every chip records ``block``: the cell of a ``block_size_m`` grid (default 10 chip
sides) in the UTM zone of the tile's centre that holds that centre, e.g. ``utm21S_78_1212``. The id depends
on the ground only, so the same place in two scenes (two dates, two CRSs) has one id; ``split
--group-by block`` keeps whole blocks in one fold.

**Stopping and resuming.** Work goes into ``.<DATA>.chips-partial`` beside DATA: chips one file at a time,
atomically, then a small record per finished block. A re-run with the same inputs and settings (a
fingerprint) skips finished blocks; with anything different it starts that folder afresh. Only when every
block is done are the tables written and the folder renamed to DATA, so DATA is either absent, the previous
output, or complete: never a mix.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from amazonmine.core.data import WEATHER_LABELS, weather_columns
from amazonmine.scanning.polygon_labels import (
    IGNORE_LABELS,
    ChipsError,
    CoverageRule,
    LabelSet,
    ScenePolygons,
    label_tiles,
    offenders,
    read_label_polygons,
    tile_tags,
)

CHIPS_CSV = "chips.csv"
CHIPS_GEOJSON = "chips.geojson"
CHIPS_JSON = "chips.json"
SCENE_SUFFIXES = (".tif", ".tiff")
# Bump when a change alters what a block's chips or records would be, so a partial run is not resumed across it.
CHIPS_FORMAT = 1
# --- scenes ------------------------------------------------------------------------------------------------

def list_scene_files(items: Iterable) -> list[str]:
    """Scene files (folders expanded to their .tif/.tiff, sorted), each once, absolute, with distinct names."""
    found: list[str] = []
    for item in items:
        path = Path(str(item))
        if path.is_dir():
            scenes = sorted(p for p in path.iterdir() if p.suffix.lower() in SCENE_SUFFIXES
                            and not p.name.startswith("."))
            if not scenes:
                raise ChipsError(f"{path}: no GeoTIFF scenes ({', '.join(SCENE_SUFFIXES)}) in this folder")
            found += [str(p.resolve()) for p in scenes]
        elif path.is_file():
            found.append(str(path.resolve()))
        else:
            raise ChipsError(f"{path}: scene not found")
    if not found:
        raise ChipsError("chips: no scene given")
    if len(set(found)) != len(found):
        raise ChipsError("chips: the same scene is given twice")
    tags = [scene_tag(Path(f).stem) for f in found]
    if len(set(tags)) != len(tags):
        dup = sorted({t for t in tags if tags.count(t) > 1})[0]
        raise ChipsError(f"chips: two scenes would name their chips {dup!r}; chip names start with the scene's "
                         f"name, rename one")
    return found


def scene_tag(stem: str) -> str:
    """The scene's name as it starts chip names: letters, digits, '-' and '_' only."""
    tag = re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("_")
    return tag or "scene"


_DATE_TAGS = ("ACQUISITION_DATE", "ACQUIRED", "DATE", "TIFFTAG_DATETIME")
_DATE_IN_NAME = (re.compile(r"(?<!\d)(\d{4})[-_]?(\d{2})[-_]?(\d{2})(?!\d)"),
                 re.compile(r"(?<!\d)(\d{4})[-_](\d{2})(?!\d)"))


def scene_date(path: str) -> tuple[str, str]:
    """(date, where it came from): an acquisition date tag of the file, else a date in its name (Planet scenes
    start with YYYYMMDD, NICFI quads carry YYYY-MM), else ("", "unknown")."""
    import rasterio

    try:
        with rasterio.open(path) as src:
            tags = src.tags()
    except Exception:  # the scene was checked already; a tag read that fails only loses the date
        tags = {}
    for key in _DATE_TAGS:
        value = str(tags.get(key, "")).strip()
        m = re.match(r"(\d{4})[-:/](\d{2})[-:/](\d{2})", value)
        if m:
            return "-".join(m.groups()), f"tag {key}"
    name = Path(path).stem
    for pattern in _DATE_IN_NAME:
        m = pattern.search(name)
        if m and 1990 <= int(m.group(1)) <= 2100 and 1 <= int(m.group(2)) <= 12:
            if len(m.groups()) == 3 and not 1 <= int(m.group(3)) <= 31:
                continue
            return "-".join(m.groups()), "file name"
    return "", "unknown"


# --- settings ----------------------------------------------------------------------------------------------

BLOCK_CHIP_SIDES = 10  # default spatial block: 10 x 10 chips (7.68 km at 768 m), wider than any site


@dataclass
class ChipSettings:
    """What the chips depend on: scan's cutting settings from the config, and the labelling options."""

    min_tile_share: float = 0.1
    min_polygon_share: float = 0.5
    weather: str = "clear"
    negative_share: float = 1.0
    block_size_m: float = 0.0  # 0 = BLOCK_CHIP_SIDES chip sides
    seed: int = 0
    kind: str = "jpg"
    size: int = 256
    look_like: str | None = None
    chip_ground_m: float = 768.0
    stride: float = 0.5
    stretch_percentiles: tuple = (2.0, 98.0)
    stretch_gamma: float = 1.0
    block_tiles: int = 256
    max_resolution_ratio: float = 4.0

    @classmethod
    def from_config(cls, cfg, **options) -> "ChipSettings":
        scan = cfg.scan
        settings = cls(kind=cfg.data.image_format, size=int(cfg.data.chip_size or 256), seed=int(cfg.run.seed),
                       chip_ground_m=float(cfg.data.chip_ground_m), stride=float(scan.stride),
                       stretch_percentiles=tuple(float(p) for p in scan.stretch_percentiles),
                       stretch_gamma=float(scan.stretch_gamma), block_tiles=int(scan.block_tiles),
                       max_resolution_ratio=float(scan.max_resolution_ratio))
        for key, value in options.items():
            if value is None:
                continue
            if not hasattr(settings, key):
                raise TypeError(f"unknown chips option {key!r}")
            setattr(settings, key, str(value) if key == "look_like" else value)
        settings.check()
        return settings

    def check(self) -> None:
        self.rule()  # the shares
        if self.weather not in WEATHER_LABELS:
            raise ChipsError(f"chips: weather must be one of {', '.join(WEATHER_LABELS)}, got {self.weather!r}")
        if not 0 < self.negative_share <= 1:
            raise ChipsError(f"chips: negative share must be in (0, 1], got {self.negative_share}")
        if self.block_size_m < 0:
            raise ChipsError(f"chips: block size must be >= 0 m (0 = {BLOCK_CHIP_SIDES} chip sides), got "
                             f"{self.block_size_m}")
        if self.size < 8:
            raise ChipsError(f"chips: chip size {self.size} px is too small")

    def rule(self) -> CoverageRule:
        return CoverageRule(self.min_tile_share, self.min_polygon_share)

    @property
    def block_m(self) -> float:
        return self.block_size_m or BLOCK_CHIP_SIDES * self.chip_ground_m

    def to_dict(self) -> dict:
        out = asdict(self)
        out["stretch_percentiles"] = list(self.stretch_percentiles)
        out["block_size_m"] = self.block_m
        return out



# --- spatial blocks ----------------------------------------------------------------------------------------

def spatial_blocks(xs: np.ndarray, ys: np.ndarray, crs_wkt: str, block_m: float) -> list[str]:
    """Block id of each point (scene CRS): its cell of a ``block_m`` grid in the UTM zone of the point."""
    from pyproj import CRS, Transformer

    from amazonmine.scanning.sites import utm_epsg

    if len(xs) == 0:
        return []
    crs = CRS.from_wkt(crs_wkt)
    lon, lat = Transformer.from_crs(crs, CRS.from_epsg(4326), always_xy=True).transform(xs, ys)
    lon, lat = np.atleast_1d(lon), np.atleast_1d(lat)
    epsg = np.array([utm_epsg(float(a), float(b)) for a, b in zip(lon, lat)])
    out = np.empty(len(xs), dtype=object)
    for code in np.unique(epsg):
        at = epsg == code
        e, n = Transformer.from_crs(CRS.from_epsg(4326), CRS.from_epsg(int(code)), always_xy=True).transform(
            lon[at], lat[at])
        zone, hemi = int(code) % 100, "N" if int(code) < 32700 else "S"
        ix, iy = np.floor(np.atleast_1d(e) / block_m).astype(int), np.floor(np.atleast_1d(n) / block_m).astype(int)
        out[at] = [f"utm{zone:02d}{hemi}_{a}_{b}" for a, b in zip(ix.tolist(), iy.tolist())]
    return out.tolist()


def _keep_negative(name: str, seed: int, share: float) -> bool:
    if share >= 1:
        return True
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


# --- the stage ---------------------------------------------------------------------------------------------

@dataclass
class SceneChips:
    scene: object  # tiling.Scene
    grid: object  # tiling.Grid
    tag: str
    date: str
    date_source: str
    polys: ScenePolygons
    blocks: list


@dataclass
class ChipsSummary:
    out_dir: Path
    chips: int
    positives: int
    negatives: int
    counts: dict  # label -> chips
    skipped: dict  # nodata, blank, ignored, negatives_dropped
    scenes: int
    resumed_blocks: int = 0
    seconds: float = 0.0
    notes: list = field(default_factory=list)
    already: bool = False

    def headline(self) -> str:
        if self.already:
            return f"{self.out_dir}: already made from the same scenes, polygons and settings ({self.chips} chips)"
        rate = self.chips / self.seconds if self.seconds else 0.0
        labels = ", ".join(f"{k} {v}" for k, v in self.counts.items() if v) or "none"
        lines = [f"wrote {self.chips} chips of {self.scenes} scene(s) ({rate:.0f} chips/s"
                 + (f"; {self.resumed_blocks} block(s) kept from an interrupted run" if self.resumed_blocks else "")
                 + f") -> {self.out_dir}",
                 f"{self.positives} with a label from the polygons, {self.negatives} without; labels: {labels}",
                 "left out: " + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in self.skipped.items())]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def _file_identity(path: str | Path) -> dict:
    st = os.stat(path)
    return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _fingerprint(scenes: list[str], labels_path: Path, settings: ChipSettings, look, vocabulary,
                 layout_names: dict) -> str:
    digest = hashlib.sha256(Path(labels_path).read_bytes()).hexdigest()
    parts = {"scenes": [_file_identity(p) for p in scenes], "labels": str(labels_path), "labels_sha256": digest,
             "settings": settings.to_dict(), "look": look.to_dict(), "vocabulary": list(vocabulary),
             "layout": layout_names, "format": CHIPS_FORMAT}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _tile_boxes(scene, grid, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shapely boxes of tiles (r, c) in the scene's CRS, and their centres (x, y)."""
    import shapely

    t = scene.affine
    px0, py0 = cols * grid.stride_x, rows * grid.stride_y
    xa, ya = t.c + t.a * px0, t.f + t.e * py0
    xb, yb = t.c + t.a * (px0 + grid.tile_w), t.f + t.e * (py0 + grid.tile_h)
    boxes = shapely.box(np.minimum(xa, xb), np.minimum(ya, yb), np.maximum(xa, xb), np.maximum(ya, yb))
    return boxes, (xa + xb) / 2.0, (ya + yb) / 2.0


def _plan_scenes(paths: list[str], labels: LabelSet, settings: ChipSettings, look) -> tuple[list[SceneChips], list]:
    """Open and grid every scene, bring the polygons into each CRS; the polygons outside every scene."""
    import shapely

    from amazonmine.scanning.tiling import Grid, open_scene

    jobs, inside = [], np.zeros(len(labels.polygons), bool)
    for path in paths:
        scene = open_scene(path, look, settings.chip_ground_m, settings.max_resolution_ratio,
                           settings.stretch_percentiles, settings.stretch_gamma)
        grid = Grid.for_scene(scene, settings.chip_ground_m, settings.stride)
        geoms = labels.in_crs(scene.crs_wkt)
        t = scene.affine
        xa, xb = t.c, t.c + t.a * scene.width
        ya, yb = t.f, t.f + t.e * scene.height
        footprint = shapely.box(min(xa, xb), min(ya, yb), max(xa, xb), max(ya, yb))
        touching = shapely.intersects(np.asarray(geoms, dtype=object), footprint) if geoms else np.zeros(0, bool)
        inside |= touching
        kept = [i for i in range(len(geoms)) if touching[i]]
        polys = ScenePolygons.build([geoms[i] for i in kept], [labels.polygons[i].label for i in kept])
        date, source = scene_date(path)
        jobs.append(SceneChips(scene, grid, scene_tag(scene.name), date, source, polys,
                               grid.blocks(settings.block_tiles)))
    outside = [p for p, hit in zip(labels.polygons, inside) if not hit]
    labelled = [hit for p, hit in zip(labels.polygons, inside) if p.label not in IGNORE_LABELS]
    if labelled and not any(labelled):
        raise ChipsError(f"{labels.path}: none of its {len(labelled)} labelled polygon(s) lies in any of the "
                         f"{len(paths)} scene(s); is the file's CRS right? (plain GeoJSON is lon/lat)")
    if not labelled:
        raise ChipsError(f"{labels.path}: only ignore polygons ({', '.join(IGNORE_LABELS)}); nothing to label")
    return jobs, outside


@dataclass
class _ChipRun:
    """What every block and table of one chips run reads: its settings, look, vocabulary, labels and scenes, the
    output layout (label CSV name, image folder, file extension), the inputs' fingerprint and the staging folder."""

    cfg: object
    settings: ChipSettings
    look: object
    vocabulary: Sequence[str]
    weather_labels: Sequence[str]
    labels: LabelSet
    jobs: list[SceneChips]
    outside: list
    layout: dict
    key: str
    staging: Path
    unannotated: tuple = ()  # vocabulary labels the polygon file never names: '?label' on every chip

    @property
    def images(self) -> Path:
        return self.staging / self.layout["images"]

    def tags(self, chip_tags: str) -> str:
        """A chip's tags as written: its labels from the polygons, then '?label' for each label never drawn."""
        return " ".join([*chip_tags.split(), *(f"?{lab}" for lab in self.unannotated)])


def _block_record(run: _ChipRun, job: SceneChips, block, src) -> dict:
    """Label a block's tiles, read and write the chips wanted, and return the block's record."""
    from amazonmine.core.io import write_bytes_atomic
    from amazonmine.scanning.sites import tile_rings
    from amazonmine.scanning.tiling import read_block

    r0, r1, c0, c1 = block
    rr, cc = np.meshgrid(np.arange(r0, r1), np.arange(c0, c1), indexing="ij")
    rows, cols = rr.ravel(), cc.ravel()
    boxes, cx, cy = _tile_boxes(job.scene, job.grid, rows, cols)
    settings, weather_labels = run.settings, run.weather_labels
    taken, ignored = label_tiles(boxes, job.polys, settings.rule())
    record = {"ignored": int(ignored.sum()), "negatives_dropped": 0, "nodata": 0, "blank": 0, "chips": []}
    wanted: dict[tuple[int, int], tuple[int, list[str]]] = {}
    for i in range(len(rows)):
        if ignored[i]:
            continue
        name = f"{job.tag}_{int(rows[i]):04d}_{int(cols[i]):04d}"
        positive = any(lab not in weather_labels for lab in taken[i])
        if not positive and not _keep_negative(name, settings.seed, settings.negative_share):
            record["negatives_dropped"] += 1
            continue
        wanted[(int(rows[i]), int(cols[i]))] = (i, tile_tags(taken[i], run.vocabulary, weather_labels,
                                                             settings.weather))
    if not wanted:
        return record  # nothing to read: every tile ignored or a dropped negative
    tiles = read_block(job.scene, job.grid, block, run.look, src, wanted=lambda r, c: (r, c) in wanted, encode=True)
    record["nodata"], record["blank"] = int(tiles.nodata), int(tiles.blank)
    if not len(tiles.rows):
        return record
    index = np.array([wanted[(int(r), int(c))][0] for r, c in zip(tiles.rows, tiles.cols)])
    blocks = spatial_blocks(cx[index], cy[index], job.scene.crs_wkt, settings.block_m)
    rings = tile_rings(job.scene, job.grid, tiles.rows, tiles.cols)
    for k, (r, c, data) in enumerate(zip(tiles.rows.tolist(), tiles.cols.tolist(), tiles.chips)):
        name = f"{job.tag}_{r:04d}_{c:04d}"
        write_bytes_atomic(run.images / f"{name}{run.layout['ext']}", data)
        ring = np.round(rings[k], 7)
        record["chips"].append({"image_name": name, "tags": " ".join(wanted[(r, c)][1]), "row": r, "col": c,
                                "block": blocks[k], "ring": ring.tolist()})
    return record


def run_chips(cfg, scenes, labels_path: str | Path, out: str | Path, *, overwrite: bool = False,
              progress: bool = False, vocabulary: Sequence[str] | None = None, **options) -> ChipsSummary:
    """Cut ``scenes`` into chips labelled from ``labels_path`` and write the Kaggle layout into ``out``.

    ``vocabulary`` (default: the config's ``data.labels``) is what a polygon's label may be; a label of it that
    no polygon of the file names is written ``?label`` on every chip (never annotated, so not a negative). The
    weather labels are written only when the vocabulary holds all four. ``options`` are :class:`ChipSettings` fields
    (min_tile_share, min_polygon_share, weather, negative_share, block_size_m, seed, size, look_like, ...); the rest
    comes from the config's ``data`` and ``scan`` sections.
    """
    import time

    from amazonmine.core.io import exclusive_lock
    from amazonmine.scanning.tiling import check_scene_file, chip_look

    began = time.perf_counter()
    vocabulary = tuple(cfg.data.labels if vocabulary is None else vocabulary)
    weather_labels = WEATHER_LABELS if weather_columns(vocabulary) is not None else ()
    settings = ChipSettings.from_config(cfg, **options)
    paths = list_scene_files(scenes)
    for path in paths:  # a bad scene is refused before anything is written
        check_scene_file(path)
    labels = read_label_polygons(labels_path, vocabulary)
    look = chip_look(settings.kind, settings.size, Path(settings.look_like) if settings.look_like else None)
    if settings.look_like and not look.source.startswith("measured"):
        raise ChipsError(f"{settings.look_like}: not a JPEG chip whose quality can be read (--look-like)")
    layout = {"labels_csv": cfg.data.labels_csv,
              "images": cfg.data.tif_dir if settings.kind == "tif" else cfg.data.train_dir,
              "ext": ".tif" if settings.kind == "tif" else ".jpg"}
    jobs, outside = _plan_scenes(paths, labels, settings, look)
    key = _fingerprint(paths, Path(labels_path), settings, look, vocabulary, layout)

    out = Path(out)
    done = _finished_record(out)
    if done is not None and done.get("fingerprint") == key:
        return ChipsSummary(out, done["counts"]["chips"], done["counts"]["positives"], done["counts"]["negatives"],
                            done["label_counts"], done["skipped"], len(paths), already=True)
    if out.exists() and any(out.iterdir()):
        if done is None:
            raise ChipsError(f"{out}: exists and is not the output of 'amazonmine chips'; choose an empty or new "
                             f"folder")
        if not overwrite:
            raise ChipsError(f"{out}: holds chips made from other inputs or settings; --overwrite replaces them")
    staging = out.parent / f".{out.name}.chips-partial"
    drawn = {p.label for p in labels.polygons}
    unannotated = tuple(lab for lab in vocabulary if lab not in drawn and lab not in weather_labels)
    run = _ChipRun(cfg, settings, look, vocabulary, weather_labels, labels, jobs, outside, layout, key, staging,
                   unannotated)
    out.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(out.parent / f".{out.name}.chips.lock", "amazonmine chips"):
        _prepare_staging(staging, key)
        resumed = _make_blocks(run, progress)
        summary = _write_tables(run)
        if summary["counts"]["chips"] == 0:
            raise ChipsError(f"chips: no chip made: every tile of the {len(paths)} scene(s) was nodata, blank, "
                             f"ignored or a dropped negative")
        shutil.rmtree(staging / "blocks")
        (staging / "fingerprint.json").unlink()
        _move_into_place(staging, out)
    counts = summary["counts"]
    return ChipsSummary(out, counts["chips"], counts["positives"], counts["negatives"], summary["label_counts"],
                        summary["skipped"], len(paths), resumed, time.perf_counter() - began, summary["notes"])


def _make_blocks(run: _ChipRun, progress: bool) -> int:
    """Every block's chips and record into the staging folder, skipping blocks recorded by an earlier, cut run
    (their number is returned)."""
    from rasterio.errors import RasterioError

    from amazonmine.core.io import write_text_atomic
    from amazonmine.core.logs import progress_bar
    from amazonmine.scanning.tiling import open_raster

    records_dir = run.staging / "blocks"
    run.images.mkdir(parents=True, exist_ok=True)
    records_dir.mkdir(exist_ok=True)
    resumed = 0
    with progress_bar(total=sum(len(j.blocks) for j in run.jobs), desc="chips", unit="block", enabled=progress) as bar:
        for job in run.jobs:
            with open_raster(job.scene.path) as src:
                for k, block in enumerate(job.blocks):
                    record_path = records_dir / f"{job.tag}_{k:05d}.json"
                    if record_path.is_file():
                        resumed += 1
                    else:
                        try:
                            record = _block_record(run, job, block, src)
                        except RasterioError as exc:
                            col, row, w, h = job.grid.block_window(block)
                            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                            raise ChipsError(f"{job.scene.path}: block {k} (pixels {col},{row} {w}x{h}) "
                                             f"unreadable ({reason}); the blocks done so far are kept in "
                                             f"{run.staging} for the next run") from None
                        write_text_atomic(record_path, json.dumps(record, separators=(",", ":")))
                    bar.update(1)
    return resumed


def _finished_record(out: Path) -> dict | None:
    path = out / CHIPS_JSON
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("made_by") == "amazonmine chips" else None


def _prepare_staging(staging: Path, key: str) -> bool:
    """Resume a partial run of the same fingerprint, or start the staging folder afresh; True when resumed."""
    from amazonmine.core.io import write_json_atomic

    marker = staging / "fingerprint.json"
    if staging.exists():
        try:
            same = json.loads(marker.read_text()).get("fingerprint") == key
        except (OSError, ValueError, AttributeError):
            same = False
        if same:
            return True
        if not marker.is_file() and any(staging.iterdir()):
            raise ChipsError(f"{staging}: exists and is not a partial 'amazonmine chips' run; move it away")
        shutil.rmtree(staging)  # another question's partial work: never mixed with this one
    staging.mkdir(parents=True)
    write_json_atomic(marker, {"fingerprint": key})
    return False


def _move_into_place(staging: Path, out: Path) -> None:
    """Rename the finished staging folder to ``out`` (replacing an earlier chips output there)."""
    old = None
    if out.exists():
        if any(out.iterdir()):
            old = out.parent / f".{out.name}.chips-replaced"
            if old.exists():
                shutil.rmtree(old)
            os.rename(out, old)
        else:
            out.rmdir()
    os.rename(staging, out)
    if old is not None:
        shutil.rmtree(old)


def _records(staging: Path, jobs: list[SceneChips]):
    """(job, record) of every block, in scene and block order: the same order however the run was split up."""
    for job in jobs:
        for k in range(len(job.blocks)):
            yield job, json.loads((staging / "blocks" / f"{job.tag}_{k:05d}.json").read_text())


def _write_tables(run: _ChipRun) -> dict:
    """train_v2.csv, chips.csv, chips.geojson and chips.json from the block records, streamed; returns the
    counts, label counts, skipped tiles and notes."""
    from amazonmine.core.io import write_json_atomic
    from amazonmine.scanning.sites import ring_geometry, write_geojson

    staging, jobs = run.staging, run.jobs
    tallies = _write_csv_tables(run)

    def features():
        for job, record in _records(staging, jobs):
            for chip in record["chips"]:
                yield {"type": "Feature", "geometry": ring_geometry(np.asarray(chip["ring"])),
                       "properties": {"image_name": chip["image_name"], "tags": run.tags(chip["tags"]),
                                      "scene": job.scene.name, "date": job.date, "row": chip["row"],
                                      "col": chip["col"], "block": chip["block"]}}

    write_geojson(staging / CHIPS_GEOJSON, features(), "chips")
    labels = run.labels
    notes = list(labels.notes)
    if labels.repaired:
        notes.append(f"{labels.path}: repaired {len(labels.repaired)} invalid polygon(s): "
                     f"{offenders(labels.repaired)}")
    if run.unannotated:
        notes.append(f"{labels.path} names no polygon of {', '.join(run.unannotated)}: written ?label on every "
                     f"chip (not annotated, so not a negative)")
    if run.outside:
        notes.append(f"{labels.path}: {len(run.outside)} polygon(s) outside every scene, unused: feature "
                     f"{offenders([str(p.index) for p in run.outside])}")
    unknown_dates = [job.scene.name for job in jobs if not job.date]
    if unknown_dates:
        notes.append(f"no acquisition date found for {offenders(unknown_dates)} (no date tag, no date in the name)")
    write_json_atomic(staging / CHIPS_JSON, _chips_record(run, tallies, notes))
    return {**tallies, "notes": notes}


def _write_csv_tables(run: _ChipRun) -> dict:
    """train_v2.csv and chips.csv, streamed from the block records; returns counts, label counts, skipped tiles
    and per scene counts."""
    from amazonmine.core.io import atomic_path

    staging, jobs, layout = run.staging, run.jobs, run.layout
    label_counts = {lab: 0 for lab in run.vocabulary}
    skipped = {"nodata": 0, "blank": 0, "ignored": 0, "negatives_dropped": 0}
    counts = {"chips": 0, "positives": 0, "negatives": 0}
    per_scene = {job.tag: {"chips": 0, "nodata": 0, "blank": 0, "ignored": 0, "negatives_dropped": 0} for job in jobs}
    weather = set(run.weather_labels)
    columns = ["image_name", "tags", "scene", "date", "row", "col", "block", "west", "south", "east", "north"]
    with atomic_path(staging / layout["labels_csv"]) as labels_tmp, open(labels_tmp, "w", newline="") as lf, \
            atomic_path(staging / CHIPS_CSV) as table_tmp, open(table_tmp, "w", newline="") as tf:
        label_writer, table_writer = csv.writer(lf, lineterminator="\n"), csv.writer(tf, lineterminator="\n")
        label_writer.writerow(["image_name", "tags"])
        table_writer.writerow(columns)
        for job, record in _records(staging, jobs):
            for k in skipped:
                skipped[k] += record[k]
                per_scene[job.tag][k] += record[k]
            for chip in record["chips"]:
                tags = chip["tags"].split()
                for t in tags:
                    label_counts[t] += 1
                positive = any(t not in weather for t in tags)
                counts["chips"] += 1
                counts["positives" if positive else "negatives"] += 1
                per_scene[job.tag]["chips"] += 1
                ring = np.asarray(chip["ring"])
                tags_written = run.tags(chip["tags"])
                label_writer.writerow([chip["image_name"], tags_written])
                table_writer.writerow([chip["image_name"], tags_written, job.scene.name, job.date, chip["row"],
                                       chip["col"], chip["block"], ring[:, 0].min(), ring[:, 1].min(),
                                       ring[:, 0].max(), ring[:, 1].max()])
    return {"counts": counts, "label_counts": label_counts, "skipped": skipped, "per_scene": per_scene}


def _chips_record(run: _ChipRun, tallies: dict, notes: list[str]) -> dict:
    """chips.json: how the chips were made (inputs, rule, settings, look, scenes) and what came of it."""
    settings, labels, jobs, per_scene = run.settings, run.labels, run.jobs, tallies["per_scene"]
    rule = settings.rule()
    return {
        "made_by": "amazonmine chips",
        "fingerprint": run.key,
        "labels_file": str(labels.path),
        "vocabulary": list(run.vocabulary),
        "unannotated": list(run.unannotated),
        "weather_labels": list(run.weather_labels),
        "ignore_labels": list(IGNORE_LABELS),
        "rule": {"min_tile_share": rule.min_tile_share, "min_polygon_share": rule.min_polygon_share,
                 "default_weather": settings.weather, "text": rule.describe(settings.weather)},
        "negatives": {"share_kept": settings.negative_share, "seed": settings.seed,
                      "rule": "a tile with no label but weather is kept when the first 8 bytes of "
                              "sha256('<seed>:<image_name>'), as a fraction of 2**64, are under share_kept"},
        "spatial_blocks": {"size_m": settings.block_m, "column": "block",
                           "rule": "cell of a size_m grid in the UTM zone of the tile's centre that holds the centre"},
        "settings": settings.to_dict(),
        "chip_look": run.look.to_dict(),
        "layout": run.layout,
        "scenes": [{"path": job.scene.path, "name": job.scene.name, "chip_prefix": job.tag, "date": job.date,
                    "date_source": job.date_source, "crs": job.scene.epsg or job.scene.crs_wkt,
                    "res_m": list(job.scene.res_m), "bands": job.scene.bands, "band_note": job.scene.band_note,
                    "stretch": job.scene.stretch, "grid": job.grid.to_dict(), **per_scene[job.tag]} for job in jobs],
        "counts": tallies["counts"],
        "label_counts": tallies["label_counts"],
        "skipped": tallies["skipped"],
        "repaired_polygons": labels.repaired,
        "polygons_outside_every_scene": [p.index for p in run.outside],
        "notes": notes,
        "versions": _versions(),
        "config": {"data": {"chip_ground_m": settings.chip_ground_m, "image_format": settings.kind},
                   "scan": {k: getattr(run.cfg.scan, k) for k in ("stride", "stretch_percentiles", "stretch_gamma",
                                                                  "block_tiles", "max_resolution_ratio")}},
    }


def _versions() -> dict:
    import platform
    from importlib import metadata

    from amazonmine import __version__

    found = {"amazonmine": __version__, "python": platform.python_version()}
    for dist in ("numpy", "rasterio", "shapely", "pyproj", "opencv-python-headless", "pillow"):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return found
