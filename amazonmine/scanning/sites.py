"""Scored tiles -> mine sites: polygons, dissolving, areas, GeoJSON and "what is new since last month".

Geometry is kept in lon/lat (EPSG:4326) from the moment a tile leaves its scene, so tiles of scenes in
different CRSs (a UTM scene beside a Web Mercator quad) meet in one place; everything written is RFC 7946
GeoJSON (lon, lat order, exterior rings counter-clockwise, no "crs" member). Areas are never taken in degrees:
each site is projected to the UTM zone of its centroid and measured there.

A site is a connected group of the tiles decided positive for one mine label, "connected" meaning the tiles
overlap or touch (an edge or a corner), as the reference system (Amazon Mining Watch) dissolves touching
patches. A site of a single tile must also clear the stricter ``isolated`` threshold (one tile alone is where
false alarms live), and sites smaller than ``min_ha`` are dropped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from amazonmine.core.io import atomic_path

COORD_DECIMALS = 7  # ~1 cm at the equator: far below a pixel, and keeps the files small


# --- tile polygons -----------------------------------------------------------------------------------------

def tile_rings(scene, grid, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """(n, 5, 2) lon/lat rings of tiles (r, c) of a scene, counter-clockwise (RFC 7946), corners transformed
    exactly from the scene's CRS, so tiles that share an edge share its coordinates to the last bit."""
    from pyproj import CRS, Transformer

    to_lonlat = Transformer.from_crs(CRS.from_wkt(scene.crs_wkt), CRS.from_epsg(4326), always_xy=True)
    t = scene.affine
    px0 = cols.astype(np.float64) * grid.stride_x
    py0 = rows.astype(np.float64) * grid.stride_y
    px1, py1 = px0 + grid.tile_w, py0 + grid.tile_h
    corner_px = np.stack([px0, px1, px1, px0, px0], axis=1)
    corner_py = np.stack([py1, py1, py0, py0, py1], axis=1)
    xs = t.a * corner_px + t.b * corner_py + t.c
    ys = t.d * corner_px + t.e * corner_py + t.f
    lon, lat = to_lonlat.transform(xs.ravel(), ys.ravel())
    rings = np.stack([np.asarray(lon), np.asarray(lat)], axis=-1).reshape(len(rows), 5, 2)
    # Shoelace sign: bottom-left, bottom-right, top-right... is counter-clockwise for a north-up scene; a
    # south-up geotransform mirrors it, and those rings are reversed.
    x, y = rings[:, :-1, 0], rings[:, :-1, 1]
    area2 = np.sum(x * np.roll(y, -1, axis=1) - np.roll(x, -1, axis=1) * y, axis=1)
    rings[area2 < 0] = rings[area2 < 0, ::-1]
    return rings


def tile_polygons(scene, grid, rows: np.ndarray, cols: np.ndarray) -> list:
    """Shapely lon/lat polygons of tiles (r, c) of a scene (see :func:`tile_rings`)."""
    import shapely

    if len(rows) == 0:
        return []
    return list(shapely.polygons(tile_rings(scene, grid, rows, cols)))


def ring_geometry(ring: np.ndarray) -> dict:
    """A GeoJSON Polygon from one ring, without building a shapely object (tiles.geojson has one per tile)."""
    return {"type": "Polygon", "coordinates": [np.round(ring, COORD_DECIMALS).tolist()]}


def utm_epsg(lon: float, lat: float) -> int:
    zone = int(np.floor((lon + 180.0) / 6.0)) % 60 + 1
    return (32600 if lat >= 0 else 32700) + zone


def area_ha(geom) -> float:
    """Area of a lon/lat geometry in hectares, measured in the UTM zone of its centroid."""
    import shapely
    from pyproj import CRS, Transformer

    if geom.is_empty:
        return 0.0
    c = geom.centroid
    to_utm = Transformer.from_crs(CRS.from_epsg(4326), CRS.from_epsg(utm_epsg(c.x, c.y)), always_xy=True)
    projected = shapely.transform(geom, lambda xy: np.column_stack(to_utm.transform(xy[:, 0], xy[:, 1])))
    return float(projected.area) / 1e4


# --- GeoJSON -----------------------------------------------------------------------------------------------

def _round_coords(obj):
    if isinstance(obj, (list, tuple)):
        if obj and isinstance(obj[0], (int, float)):
            return [round(float(v), COORD_DECIMALS) for v in obj]
        return [_round_coords(o) for o in obj]
    return obj


def geometry_json(geom) -> dict:
    import shapely
    from shapely.geometry import mapping

    geom = shapely.orient_polygons(geom) if hasattr(shapely, "orient_polygons") else geom
    m = mapping(geom)
    return {"type": m["type"], "coordinates": _round_coords(m["coordinates"])}


def feature(geom, properties: dict) -> dict:
    return {"type": "Feature", "geometry": geometry_json(geom), "properties": properties}


def write_geojson(path: Path, features: Iterable[dict], name: str = "") -> int:
    """Stream features into an RFC 7946 FeatureCollection, atomically; returns how many were written."""
    n = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write('{"type": "FeatureCollection", ' + (f'"name": {json.dumps(name)}, ' if name else "")
                 + '"features": [\n')
        for f in features:
            fh.write((",\n" if n else "") + json.dumps(f, separators=(",", ":")))
            n += 1
        fh.write("\n]}\n")
    return n


def read_geojson(path: Path) -> list[dict]:
    from amazonmine.core.errors import AmazonmineError

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AmazonmineError(f"{path}: cannot read GeoJSON ({exc})") from None
    if not isinstance(data, dict) or data.get("type") != "FeatureCollection":
        raise AmazonmineError(f"{path}: not a GeoJSON FeatureCollection")
    return data.get("features", [])


# --- sites -------------------------------------------------------------------------------------------------

@dataclass
class Site:
    label: str
    geometry: object  # shapely, lon/lat
    area_ha: float
    tiles: int
    max_probability: float
    mean_probability: float
    scenes: list[str] = field(default_factory=list)
    site_id: str = ""

    def properties(self, threshold: float, isolated_threshold: float, source: str) -> dict:
        c = self.geometry.centroid
        return {"site_id": self.site_id, "label": self.label, "area_ha": round(self.area_ha, 3),
                "tiles": self.tiles, "max_probability": round(self.max_probability, 6),
                "mean_probability": round(self.mean_probability, 6), "first_scene": self.scenes[0],
                "last_scene": self.scenes[-1], "scenes": self.scenes, "threshold": threshold,
                "isolated_threshold": isolated_threshold, "threshold_source": source,
                "centroid_lon": round(c.x, COORD_DECIMALS), "centroid_lat": round(c.y, COORD_DECIMALS)}


def component_labels(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Connected-component label of each of ``n`` nodes joined by the edges ``(a[k], b[k])``; labels are numbered
    in the order of each component's smallest node."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    edges = coo_matrix((np.ones(len(a), np.int8), (np.asarray(a, np.int64), np.asarray(b, np.int64))), shape=(n, n))
    return connected_components(edges, directed=False)[1].astype(np.int64)


def connected_groups(polys: list) -> list[list[int]]:
    """Indexes of polygons grouped by overlap or touch (edges or corners), each group sorted, groups ordered by
    their first index: the same input always gives the same groups."""
    import shapely

    n = len(polys)
    if n == 0:
        return []
    left, right = shapely.STRtree(polys).query(polys, predicate="intersects")
    groups: dict[int, list[int]] = {}
    for i, label in enumerate(component_labels(n, left, right).tolist()):
        groups.setdefault(label, []).append(i)
    return list(groups.values())


def dissolve(label: str, polys: list, probs: np.ndarray, scene_of: list[str], scene_order: list[str],
             isolated_threshold: float, min_ha: float) -> tuple[list[Site], dict]:
    """Sites of one label from its positive tiles (lon/lat polygons, their probabilities and scene names).

    Returns the sites, sorted by max probability (then position), with ids ``<label>-<k>``, and counts of what
    was dropped (single tiles under the isolated threshold, sites under ``min_ha``).
    """
    import shapely

    sites, dropped = [], {"isolated_below_threshold": 0, "smaller_than_min_ha": 0}
    rank = {s: i for i, s in enumerate(scene_order)}
    for group in connected_groups(polys):
        p = probs[group]
        if len(group) == 1 and p[0] < isolated_threshold:
            dropped["isolated_below_threshold"] += 1
            continue
        geom = shapely.union_all([polys[i] for i in group])
        ha = area_ha(geom)
        if ha < min_ha:
            dropped["smaller_than_min_ha"] += 1
            continue
        scenes = sorted({scene_of[i] for i in group}, key=lambda s: rank.get(s, len(rank)))
        sites.append(Site(label, geom, ha, len(group), float(p.max()), float(p.mean()), scenes))
    sites.sort(key=lambda s: (-s.max_probability, -s.geometry.centroid.y, s.geometry.centroid.x))
    for k, site in enumerate(sites, start=1):
        site.site_id = f"{label}-{k}"
    return sites, dropped


# --- what is new -------------------------------------------------------------------------------------------

def new_since(current: list[dict], previous: list[dict], min_growth_ha: float) -> list[dict]:
    """Features of ``current`` sites absent from ``previous`` (status "new"), or the part of a site that grew
    beyond the earlier sites of the same label it overlaps (status "growth", when at least ``min_growth_ha``).

    Both are lists of site features as written in sites.geojson.
    """
    import shapely
    from shapely.geometry import shape

    by_label: dict[str, list] = {}
    for f in previous:
        by_label.setdefault(f["properties"].get("label"), []).append(f)
    out = []
    for f in current:
        props = f["properties"]
        geom = shape(f["geometry"])
        before = [(shape(g["geometry"]), g["properties"].get("site_id")) for g in by_label.get(props["label"], [])]
        touching = [(g, sid) for g, sid in before if g.intersects(geom) and g.intersection(geom).area > 0]
        if not touching:
            out.append(feature(geom, {**props, "status": "new", "new_area_ha": props["area_ha"],
                                      "previous_sites": []}))
            continue
        grown = geom.difference(shapely.union_all([g for g, _ in touching]))
        grown_ha = area_ha(grown)
        if grown_ha >= min_growth_ha and not grown.is_empty:
            out.append(feature(grown, {**props, "status": "growth", "new_area_ha": round(grown_ha, 3),
                                       "previous_sites": [sid for _, sid in touching]}))
    return out
