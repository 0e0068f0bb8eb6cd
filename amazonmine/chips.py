"""Training chips from georeferenced scenes and label polygons, cut exactly as ``scan`` cuts its tiles.

``amazonmine chips SCENE... --labels LABELS.geojson|.gpkg --out DATA`` writes, in the Kaggle layout the rest
of the toolkit reads (``data.labels_csv``, ``data.train_dir`` / ``data.tif_dir`` names of the config)::

    DATA/train_v2.csv        image_name,tags
    DATA/train-jpg/<name>.jpg   (train-tif-v2/<name>.tif with data.image_format=tif)
    DATA/chips.csv           image_name,tags,scene,date,row,col,block,west,south,east,north
    DATA/chips.geojson       every chip's footprint (lon/lat) with image_name, tags, scene, date, row, col, block
    DATA/chips.json          settings, the labelling rule, the chip look, per-scene grids and counts, notes

**The same chips scan would make.** Each scene is opened, gridded and read with :mod:`amazonmine.tiling`,
block window by block window, with scan's settings (``scan.stride``, ``scan.stretch_percentiles``,
``scan.stretch_gamma``, ``scan.block_tiles``, ``scan.max_resolution_ratio``, ``data.chip_ground_m``), and a
chip file holds the very JPEG bytes scan decodes before the model sees the tile
(:func:`amazonmine.tiling.encode_chip`): read back, a chip is the array scan would score for that tile, bit
for bit. The look (CMYK or YCbCr JPEG, quality, size) is Kaggle's by default (``data.chip_size`` or 256 px,
4-component JPEG at quality 75), or copied from a chip given with ``--look-like``; scan later measures the
same look from these chips.

**Labels.** Each polygon carries a ``label`` property, one of the vocabulary (the 17 Planet labels by
default) or an ignore label (``unlabelled``, ``ignore``). A tile takes label L when L's polygons cover at
least ``min_tile_share`` of the tile, or when at least ``min_polygon_share`` of one L polygon's own area lies
in the tile (so a mine smaller than a tile labels the tiles that hold most of it; at stride 0.5 a polygon
smaller than half a tile lies wholly inside at least one tile). Tiles that overlap an ignore polygon at all are
left out, as are nodata and blank tiles (scan's rule). The Kaggle reader wants one weather label per chip:
a tile takes the weather label of the polygons when they give one (the one covering most of it), else
``weather`` (default ``clear``: scenes chosen for labelling are cloud-free mosaics; recorded in chips.json).
Polygons may be in any CRS (a GeoJSON ``crs`` member or a GeoPackage's CRS; plain GeoJSON is lon/lat, RFC
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
import difflib
import hashlib
import json
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from amazonmine.data import LABELS, WEATHER_LABELS
from amazonmine.errors import AmazonmineError

IGNORE_LABELS: tuple[str, ...] = ("unlabelled", "ignore")
CHIPS_CSV = "chips.csv"
CHIPS_GEOJSON = "chips.geojson"
CHIPS_JSON = "chips.json"
SCENE_SUFFIXES = (".tif", ".tiff")
# Bump when a change alters what a block's chips or records would be, so a partial run is not resumed across it.
CHIPS_FORMAT = 1
# A share "at least" the rule's is compared with this slack: areas of a tile cut exactly at the rule's edge
# come out a few ulps either side of it.
SHARE_SLACK = 1e-9
_SHOW = 5


class ChipsError(AmazonmineError):
    """Input that cannot be made into chips as it is."""


def _offenders(items: Sequence[str]) -> str:
    shown = ", ".join(str(i) for i in list(items)[:_SHOW])
    more = f" and {len(items) - _SHOW} more" if len(items) > _SHOW else ""
    return f"{shown}{more}"


# --- label polygons ----------------------------------------------------------------------------------------

@dataclass
class LabelPolygon:
    index: int  # the feature's position in its file (0-based), as messages name it
    label: str
    geometry: object  # shapely (Multi)Polygon in the file's CRS, valid


@dataclass
class LabelSet:
    """The polygons of one file, checked and repaired, in the file's CRS."""

    path: Path
    crs_wkt: str
    polygons: list[LabelPolygon]
    repaired: list[str] = field(default_factory=list)  # "feature 3 (Self-intersection[...])"
    notes: list[str] = field(default_factory=list)

    def in_crs(self, crs_wkt: str) -> list:
        """The polygons' geometries reprojected into another CRS (the same objects when it is the file's)."""
        import shapely
        from pyproj import CRS, Transformer

        source, target = CRS.from_wkt(self.crs_wkt), CRS.from_wkt(crs_wkt)
        if source == target:
            return [p.geometry for p in self.polygons]
        to_target = Transformer.from_crs(source, target, always_xy=True)
        out = []
        for p in self.polygons:
            geom = shapely.transform(p.geometry, lambda xy: np.column_stack(to_target.transform(xy[:, 0], xy[:, 1])))
            if not np.isfinite(shapely.get_coordinates(geom)).all():
                raise ChipsError(f"{self.path}: feature {p.index} cannot be expressed in the scene's CRS "
                                 f"({target.name}): it lies outside that projection's area")
            out.append(geom if geom.is_valid else shapely.make_valid(geom))
        return out


def _did_you_mean(name: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(str(name), list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _geojson_features(path: Path) -> tuple[list[dict], str, list[str]]:
    """(features, CRS as WKT) of a GeoJSON file; no ``crs`` member means lon/lat (RFC 7946)."""
    from pyproj import CRS
    from pyproj.exceptions import CRSError

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ChipsError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise ChipsError(f"{path}: not valid JSON ({exc})") from None
    if isinstance(data, dict) and data.get("type") == "Feature":
        data = {"type": "FeatureCollection", "features": [data], "crs": data.get("crs")}
    if not isinstance(data, dict) or data.get("type") != "FeatureCollection" or \
            not isinstance(data.get("features"), list):
        raise ChipsError(f"{path}: not a GeoJSON FeatureCollection")
    crs = CRS.from_epsg(4326)
    member = data.get("crs")
    if member:
        name = (member.get("properties") or {}).get("name") if isinstance(member, dict) else None
        try:
            crs = CRS.from_user_input(name)
        except (CRSError, TypeError):
            raise ChipsError(f"{path}: its 'crs' member {member!r} names no coordinate reference system "
                             f"pyproj knows (expected e.g. {{'type': 'name', 'properties': {{'name': "
                             f"'EPSG:32721'}}}})") from None
    features = []
    for i, f in enumerate(data["features"]):
        if not isinstance(f, dict) or f.get("type") != "Feature":
            raise ChipsError(f"{path}: feature {i} is not a GeoJSON Feature")
        features.append({"geometry": f.get("geometry"), "properties": f.get("properties") or {}})
    return features, crs.to_wkt(), []


def _geopackage_features(path: Path) -> tuple[list[dict], str, list[str]]:
    """(features, CRS as WKT, notes) of the first layer of a GeoPackage (or another vector file GDAL reads)."""
    try:
        import pyogrio
    except ImportError:
        raise ChipsError(f"{path}: reading GeoPackage files needs pyogrio (pip install pyogrio), or give the "
                         f"polygons as GeoJSON") from None
    import shapely
    from pyproj import CRS

    try:
        layers = pyogrio.list_layers(path)
        meta, _, geometry, fields = pyogrio.raw.read(path)
    except Exception as exc:  # pyogrio raises its own DataSourceError/DataLayerError and GDAL's errors
        raise ChipsError(f"{path}: cannot read as a vector file ({str(exc).splitlines()[0]})") from None
    if meta.get("crs") is None:
        raise ChipsError(f"{path}: its layer has no coordinate reference system: set one (e.g. ogr2ogr -a_srs)")
    names = list(meta["fields"])
    features = []
    for i in range(len(geometry) if geometry is not None else 0):
        wkb = geometry[i]
        geom = None if wkb is None else shapely.geometry.mapping(shapely.from_wkb(wkb))
        features.append({"geometry": geom, "properties": {n: fields[k][i] for k, n in enumerate(names)}})
    # The first layer is what GDAL reads by default; a labels file of several layers is rare, and said.
    notes = [f"{path}: {len(layers)} layers; read the first, {layers[0][0]!r}"] if len(layers) > 1 else []
    return features, CRS.from_user_input(meta["crs"]).to_wkt(), notes


def read_label_polygons(path: str | Path, vocabulary: Sequence[str] = LABELS,
                        ignore_labels: Sequence[str] = IGNORE_LABELS, require_label: bool = True) -> LabelSet:
    """Checked, repaired label polygons of a GeoJSON or GeoPackage file.

    Refused in one line naming the file and the feature(s): unreadable, no features, no ``label`` property, a
    label outside ``vocabulary`` + ``ignore_labels``, a feature without a polygon, coordinates that cannot be
    lon/lat in a file that names no CRS. Invalid polygons (self-intersections, ...) are repaired with
    ``shapely.make_valid`` and named in ``repaired``; one with no area left once repaired is refused.
    ``require_label=False`` (truth files for site scores) accepts features without a label (label "").
    """
    import shapely
    from pyproj import CRS
    from shapely.geometry import shape

    path = Path(path)
    if not path.is_file():
        raise ChipsError(f"{path}: label polygons not found")
    suffix = path.suffix.lower()
    if suffix in (".geojson", ".json"):
        features, crs_wkt, notes = _geojson_features(path)
    elif suffix in (".gpkg", ".shp", ".fgb"):
        features, crs_wkt, notes = _geopackage_features(path)
    else:
        raise ChipsError(f"{path}: unknown polygon file type {suffix!r}; give GeoJSON (.geojson) or a GeoPackage "
                         f"(.gpkg)")
    if not features:
        raise ChipsError(f"{path}: no features")
    known = list(vocabulary) + list(ignore_labels)
    unlabelled = [i for i, f in enumerate(features) if f["properties"].get("label") in (None, "")]
    if require_label and len(unlabelled) == len(features):
        found = sorted({k for f in features for k in f["properties"]})
        raise ChipsError(f"{path}: no 'label' property on its features (properties found: "
                         f"{', '.join(found) or 'none'}); each polygon needs one of {', '.join(known)}")
    if require_label and unlabelled:
        raise ChipsError(f"{path}: {len(unlabelled)} feature(s) without a 'label' property: feature "
                         f"{_offenders(unlabelled)}")
    unknown = [(i, f["properties"]["label"]) for i, f in enumerate(features)
               if f["properties"].get("label") not in (None, "") and f["properties"]["label"] not in known]
    if unknown:
        i, label = unknown[0]
        more = f" ({len(unknown)} features in all: {_offenders([str(j) for j, _ in unknown])})" \
            if len(unknown) > 1 else ""
        raise ChipsError(f"{path}: feature {i}: label {label!r} is not in the vocabulary"
                         f"{_did_you_mean(label, known)}{more}; known labels: {', '.join(known)}")
    geographic = CRS.from_wkt(crs_wkt).is_geographic
    polygons, repaired = [], []
    for i, f in enumerate(features):
        geometry = f["geometry"]
        if not geometry:
            raise ChipsError(f"{path}: feature {i} has no geometry")
        try:
            geom = shape(geometry)
        except (ValueError, TypeError, AttributeError, KeyError, shapely.errors.GEOSException) as exc:
            raise ChipsError(f"{path}: feature {i}: malformed geometry ({exc})") from None
        if geom.geom_type not in ("Polygon", "MultiPolygon"):
            raise ChipsError(f"{path}: feature {i} is a {geom.geom_type}, not a polygon: labels come from areas")
        if geom.is_empty:
            raise ChipsError(f"{path}: feature {i} is an empty polygon")
        if geographic:
            minx, miny, maxx, maxy = geom.bounds
            if minx < -180 or maxx > 180 or miny < -90 or maxy > 90:
                raise ChipsError(f"{path}: feature {i} has coordinates outside longitude/latitude ({minx:.0f}, "
                                 f"{miny:.0f}, ...) but the file names no other CRS (plain GeoJSON is lon/lat): "
                                 f"reproject it to EPSG:4326 or add a 'crs' member")
        if not geom.is_valid:
            reason = shapely.is_valid_reason(geom)
            fixed = shapely.make_valid(geom)
            parts = [g for g in shapely.get_parts(fixed) if g.geom_type in ("Polygon", "MultiPolygon")]
            geom = shapely.union_all(parts) if parts else shapely.Polygon()
            if geom.is_empty or geom.area <= 0:
                raise ChipsError(f"{path}: feature {i} is an invalid polygon ({reason}) with no area once repaired")
            repaired.append(f"feature {i} ({reason})")
        polygons.append(LabelPolygon(i, str(f["properties"].get("label") or ""), geom))
    return LabelSet(path, crs_wkt, polygons, repaired, notes)


# --- the labelling rule ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CoverageRule:
    """When a tile takes a polygon's label; see the module docstring."""

    min_tile_share: float = 0.1
    min_polygon_share: float = 0.5

    def __post_init__(self):
        for name in ("min_tile_share", "min_polygon_share"):
            value = getattr(self, name)
            if not 0 < value <= 1:
                raise ChipsError(f"{name} must be in (0, 1], got {value}")

    def describe(self, weather: str) -> str:
        return (f"a tile takes label L when L's polygons cover at least {self.min_tile_share:g} of the tile, or at "
                f"least {self.min_polygon_share:g} of one L polygon's own area lies in the tile; a tile overlapping "
                f"an ignore polygon ({', '.join(IGNORE_LABELS)}) is left out; its weather label is the polygons' "
                f"(the one covering most of it) or else {weather!r}")


@dataclass
class ScenePolygons:
    """A label set in one scene's CRS, indexed for tile queries."""

    geoms: list
    labels: list[str]
    areas: np.ndarray
    ignore: np.ndarray  # bool per polygon
    tree: object = None

    @classmethod
    def build(cls, geoms: list, labels: list[str], ignore_labels: Sequence[str] = IGNORE_LABELS) -> "ScenePolygons":
        import shapely

        geoms = list(geoms)
        return cls(geoms, list(labels), np.array([g.area for g in geoms], np.float64),
                   np.array([lab in ignore_labels for lab in labels], bool), shapely.STRtree(geoms))


def label_tiles(boxes: np.ndarray, polys: ScenePolygons, rule: CoverageRule
                ) -> tuple[list[dict[str, float]], np.ndarray]:
    """Per tile (a shapely box in the polygons' CRS): {label: share of the tile L covers} for the labels the tile
    takes under ``rule``, and (n,) bool: the tile overlaps an ignore polygon."""
    import shapely

    n = len(boxes)
    taken: list[dict[str, float]] = [{} for _ in range(n)]
    ignored = np.zeros(n, bool)
    if n == 0 or not polys.geoms:
        return taken, ignored
    tiles, hits = polys.tree.query(boxes, predicate="intersects")
    if len(tiles) == 0:
        return taken, ignored
    parts = shapely.intersection(boxes[tiles], np.asarray(polys.geoms, dtype=object)[hits])
    area = shapely.area(parts)
    tile_area = shapely.area(boxes)
    by_tile_label: dict[tuple[int, str], list[int]] = {}
    for k, (t, p) in enumerate(zip(tiles.tolist(), hits.tolist())):
        if area[k] <= 0:
            continue  # touching along an edge or a corner covers nothing
        if polys.ignore[p]:
            ignored[t] = True
            continue
        by_tile_label.setdefault((t, polys.labels[p]), []).append(k)
    for (t, label), ks in by_tile_label.items():
        # Overlapping polygons of one label must not be counted twice: their union is measured when several meet.
        covered = area[ks[0]] if len(ks) == 1 else shapely.union_all(parts[ks]).area
        tile_share = covered / tile_area[t]
        polygon_share = max(area[k] / polys.areas[hits[k]] for k in ks)
        if tile_share >= rule.min_tile_share - SHARE_SLACK or polygon_share >= rule.min_polygon_share - SHARE_SLACK:
            taken[t][label] = float(tile_share)
    return taken, ignored


def tile_tags(shares: dict[str, float], vocabulary: Sequence[str], weather_labels: Sequence[str],
              default_weather: str) -> list[str]:
    """A tile's labels in vocabulary order, with exactly one weather label: the polygons' that covers most of the
    tile (ties: vocabulary order), else ``default_weather``."""
    weather = [w for w in weather_labels if w in shares]
    chosen = max(weather, key=lambda w: shares[w]) if weather else default_weather
    keep = {lab for lab in shares if lab not in weather_labels} | {chosen}
    return [lab for lab in vocabulary if lab in keep]


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
_DATE_IN_NAME = (re.compile(r"(?<!\d)(\d{4})[-_]?(\d{2})[-_]?(\d{2})(?!\d)"), re.compile(r"(?<!\d)(\d{4})[-_](\d{2})(?!\d)"))


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

    from amazonmine.sites import utm_epsg

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

    from amazonmine.tiling import Grid, open_scene

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


def _block_record(job: SceneChips, block, settings: ChipSettings, look, vocabulary, weather_labels,
                  images: Path, ext: str, src) -> dict:
    """Label a block's tiles, read and write the chips wanted, and return the block's record."""
    from amazonmine.io import write_bytes_atomic
    from amazonmine.sites import tile_rings
    from amazonmine.tiling import read_block

    r0, r1, c0, c1 = block
    rr, cc = np.meshgrid(np.arange(r0, r1), np.arange(c0, c1), indexing="ij")
    rows, cols = rr.ravel(), cc.ravel()
    boxes, cx, cy = _tile_boxes(job.scene, job.grid, rows, cols)
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
        wanted[(int(rows[i]), int(cols[i]))] = (i, tile_tags(taken[i], vocabulary, weather_labels, settings.weather))
    if not wanted:
        return record  # nothing to read: every tile ignored or a dropped negative
    tiles = read_block(job.scene, job.grid, block, look, src, wanted=lambda r, c: (r, c) in wanted, encode=True)
    record["nodata"], record["blank"] = int(tiles.nodata), int(tiles.blank)
    if not len(tiles.rows):
        return record
    index = np.array([wanted[(int(r), int(c))][0] for r, c in zip(tiles.rows, tiles.cols)])
    blocks = spatial_blocks(cx[index], cy[index], job.scene.crs_wkt, settings.block_m)
    rings = tile_rings(job.scene, job.grid, tiles.rows, tiles.cols)
    for k, (r, c, data) in enumerate(zip(tiles.rows.tolist(), tiles.cols.tolist(), tiles.chips)):
        name = f"{job.tag}_{r:04d}_{c:04d}"
        write_bytes_atomic(images / f"{name}{ext}", data)
        ring = np.round(rings[k], 7)
        record["chips"].append({"image_name": name, "tags": " ".join(wanted[(r, c)][1]), "row": r, "col": c,
                                "block": blocks[k], "ring": ring.tolist()})
    return record


def run_chips(cfg, scenes, labels_path: str | Path, out: str | Path, *, overwrite: bool = False,
              progress: bool = False, vocabulary: Sequence[str] = LABELS,
              weather_labels: Sequence[str] = WEATHER_LABELS, **options) -> ChipsSummary:
    """Cut ``scenes`` into chips labelled from ``labels_path`` and write the Kaggle layout into ``out``.

    ``options`` are :class:`ChipSettings` fields (min_tile_share, min_polygon_share, weather, negative_share,
    block_size_m, seed, size, look_like, ...); the rest comes from the config's ``data`` and ``scan`` sections.
    """
    import time

    from rasterio.errors import RasterioError

    from amazonmine.io import exclusive_lock, write_text_atomic
    from amazonmine.tiling import check_scene_file, chip_look, open_raster

    began = time.perf_counter()
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
    out.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(out.parent / f".{out.name}.chips.lock", "amazonmine chips"):
        _prepare_staging(staging, key)
        images = staging / layout["images"]
        records_dir = staging / "blocks"
        images.mkdir(parents=True, exist_ok=True)
        records_dir.mkdir(exist_ok=True)
        from tqdm import tqdm

        total = sum(len(j.blocks) for j in jobs)
        resumed = 0
        with tqdm(total=total, desc="chips", unit="block", disable=not progress, mininterval=1.0) as bar:
            for job in jobs:
                with open_raster(job.scene.path) as src:
                    for k, block in enumerate(job.blocks):
                        record_path = records_dir / f"{job.tag}_{k:05d}.json"
                        if record_path.is_file():
                            resumed += 1
                        else:
                            try:
                                record = _block_record(job, block, settings, look, vocabulary, weather_labels,
                                                       images, layout["ext"], src)
                            except RasterioError as exc:
                                col, row, w, h = job.grid.block_window(block)
                                reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                                raise ChipsError(f"{job.scene.path}: block {k} (pixels {col},{row} {w}x{h}) "
                                                 f"unreadable ({reason}); the blocks done so far are kept in "
                                                 f"{staging} for the next run") from None
                            write_text_atomic(record_path, json.dumps(record, separators=(",", ":")))
                        bar.update(1)
        summary = _write_tables(staging, jobs, settings, look, labels, outside, layout, key, vocabulary, cfg)
        if summary["counts"]["chips"] == 0:
            raise ChipsError(f"chips: no chip made: every tile of the {len(paths)} scene(s) was nodata, blank, "
                             f"ignored or a dropped negative")
        shutil.rmtree(records_dir)
        (staging / "fingerprint.json").unlink()
        _move_into_place(staging, out)
    counts = summary["counts"]
    return ChipsSummary(out, counts["chips"], counts["positives"], counts["negatives"], summary["label_counts"],
                        summary["skipped"], len(paths), resumed, time.perf_counter() - began, summary["notes"])


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
    from amazonmine.io import write_json_atomic

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


def _write_tables(staging: Path, jobs, settings: ChipSettings, look, labels: LabelSet, outside, layout, key,
                  vocabulary, cfg) -> dict:
    """train_v2.csv, chips.csv, chips.geojson and chips.json from the block records, streamed."""
    from amazonmine.io import atomic_path, write_json_atomic
    from amazonmine.sites import ring_geometry, write_geojson

    label_counts = {lab: 0 for lab in vocabulary}
    skipped = {"nodata": 0, "blank": 0, "ignored": 0, "negatives_dropped": 0}
    counts = {"chips": 0, "positives": 0, "negatives": 0}
    per_scene = {job.tag: {"chips": 0, "nodata": 0, "blank": 0, "ignored": 0, "negatives_dropped": 0} for job in jobs}
    weather = set(WEATHER_LABELS)
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
                label_writer.writerow([chip["image_name"], chip["tags"]])
                table_writer.writerow([chip["image_name"], chip["tags"], job.scene.name, job.date, chip["row"],
                                       chip["col"], chip["block"], ring[:, 0].min(), ring[:, 1].min(),
                                       ring[:, 0].max(), ring[:, 1].max()])

    def features():
        for job, record in _records(staging, jobs):
            for chip in record["chips"]:
                yield {"type": "Feature", "geometry": ring_geometry(np.asarray(chip["ring"])),
                       "properties": {"image_name": chip["image_name"], "tags": chip["tags"],
                                      "scene": job.scene.name, "date": job.date, "row": chip["row"],
                                      "col": chip["col"], "block": chip["block"]}}

    write_geojson(staging / CHIPS_GEOJSON, features(), "chips")
    notes = list(labels.notes)
    if labels.repaired:
        notes.append(f"{labels.path}: repaired {len(labels.repaired)} invalid polygon(s): "
                     f"{_offenders(labels.repaired)}")
    if outside:
        notes.append(f"{labels.path}: {len(outside)} polygon(s) outside every scene, unused: feature "
                     f"{_offenders([str(p.index) for p in outside])}")
    unknown_dates = [job.scene.name for job in jobs if not job.date]
    if unknown_dates:
        notes.append(f"no acquisition date found for {_offenders(unknown_dates)} (no date tag, no date in the name)")
    rule = settings.rule()
    record = {
        "made_by": "amazonmine chips",
        "fingerprint": key,
        "labels_file": str(labels.path),
        "vocabulary": list(vocabulary),
        "ignore_labels": list(IGNORE_LABELS),
        "rule": {"min_tile_share": rule.min_tile_share, "min_polygon_share": rule.min_polygon_share,
                 "default_weather": settings.weather, "text": rule.describe(settings.weather)},
        "negatives": {"share_kept": settings.negative_share, "seed": settings.seed,
                      "rule": "a tile with no label but weather is kept when the first 8 bytes of "
                              "sha256('<seed>:<image_name>'), as a fraction of 2**64, are under share_kept"},
        "spatial_blocks": {"size_m": settings.block_m, "column": "block",
                           "rule": "cell of a size_m grid in the UTM zone of the tile's centre that holds the centre"},
        "settings": settings.to_dict(),
        "chip_look": look.to_dict(),
        "layout": layout,
        "scenes": [{"path": job.scene.path, "name": job.scene.name, "chip_prefix": job.tag, "date": job.date,
                    "date_source": job.date_source, "crs": job.scene.epsg or job.scene.crs_wkt,
                    "res_m": list(job.scene.res_m), "bands": job.scene.bands, "band_note": job.scene.band_note,
                    "stretch": job.scene.stretch, "grid": job.grid.to_dict(), **per_scene[job.tag]} for job in jobs],
        "counts": counts,
        "label_counts": label_counts,
        "skipped": skipped,
        "repaired_polygons": labels.repaired,
        "polygons_outside_every_scene": [p.index for p in outside],
        "notes": notes,
        "versions": _versions(),
        "config": {"data": {"chip_ground_m": settings.chip_ground_m, "image_format": settings.kind},
                   "scan": {k: getattr(cfg.scan, k) for k in ("stride", "stretch_percentiles", "stretch_gamma",
                                                              "block_tiles", "max_resolution_ratio")}},
    }
    write_json_atomic(staging / CHIPS_JSON, record)
    return {"counts": counts, "label_counts": label_counts, "skipped": skipped, "notes": notes}


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
