"""Label polygons and the rule that labels a tile from them: shared by ``chips`` (training chips cut from scenes)
and ``score-sites`` (a scan scored against known sites), so both count a tile as a mine in exactly one way.

* :func:`read_label_polygons` -- a GeoJSON or GeoPackage file's polygons, checked (one line naming the file and
  the feature for each problem) and repaired (``shapely.make_valid``, each repair named).
* :class:`CoverageRule` -- a tile takes label L when L's polygons cover at least ``min_tile_share`` of it, or
  at least ``min_polygon_share`` of one L polygon lies in it; a tile touching an ignore polygon is left out.
* :class:`ScenePolygons` and :func:`label_tiles` -- the polygons in one scene's CRS, and the labels its tiles
  take; :func:`tile_tags` -- a tile's tags with exactly one weather label.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from amazonmine.core.data import LABELS
from amazonmine.core.errors import AmazonmineError

IGNORE_LABELS: tuple[str, ...] = ("unlabelled", "ignore")
# A share "at least" the rule's is compared with this slack: areas of a tile cut exactly at the rule's edge
# come out a few ulps either side of it.
SHARE_SLACK = 1e-9
_SHOW = 5


class ChipsError(AmazonmineError):
    """Input that cannot be made into chips as it is."""


def offenders(items: Sequence[str]) -> str:
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
                         f"{offenders(unlabelled)}")
    unknown = [(i, f["properties"]["label"]) for i, f in enumerate(features)
               if f["properties"].get("label") not in (None, "") and f["properties"]["label"] not in known]
    if unknown:
        i, label = unknown[0]
        more = f" ({len(unknown)} features in all: {offenders([str(j) for j, _ in unknown])})" \
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
    tile (ties: vocabulary order), else ``default_weather``; none when ``weather_labels`` is empty (a vocabulary
    without the four weather labels)."""
    if not weather_labels:
        return [lab for lab in vocabulary if lab in shares]
    weather = [w for w in weather_labels if w in shares]
    chosen = max(weather, key=lambda w: shares[w]) if weather else default_weather
    keep = {lab for lab in shares if lab not in weather_labels} | {chosen}
    return [lab for lab in vocabulary if lab in keep]
