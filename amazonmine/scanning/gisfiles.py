"""Files GIS users open: the scan's vector layers as GeoJSON, GeoPackage or FlatGeobuf, and QGIS styles.

* **Vector formats.** ``scan --format geojson|gpkg|fgb`` chooses how tiles, sites and new sites are written
  (``sites.geojson`` / ``sites.gpkg`` / ``sites.fgb``...). GeoJSON is streamed by :mod:`amazonmine.scanning.sites`;
  GeoPackage and FlatGeobuf go through pyogrio's array writer (no GeoPandas needed). All are lon/lat
  (EPSG:4326) with the same properties; a list-valued property (a site's ``scenes``, a new site's
  ``previous_sites``) is a JSON text field there, as those formats have no list type. Sites keep their order
  (most confident first); a FlatGeobuf of tiles gets a spatial index, which orders its features spatially.
* **QGIS styles.** A ``.qml`` file with the layer's base name beside it is what QGIS applies when the layer is
  opened: sites outlined in their label's colour, new sites dashed by status, tiles as thin outlines, and each
  probability raster in a colour ramp that turns warm at the label's threshold (the report's map uses the
  same ramp: :func:`probability_rgba`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable
from xml.sax.saxutils import quoteattr

import numpy as np

from amazonmine.core.errors import AmazonmineError

# name -> (file extension, OGR driver); GeoJSON is written by amazonmine.scanning.sites, streamed.
VECTOR_FORMATS = {"geojson": (".geojson", None), "gpkg": (".gpkg", "GPKG"), "fgb": (".fgb", "FlatGeobuf")}
_ALIASES = {"json": "geojson", "geopackage": "gpkg", "flatgeobuf": "fgb"}
LIST_FIELDS = ("scenes", "previous_sites")  # list-valued properties, JSON text outside GeoJSON

# Outline colour per mine label (the report's map and table use the same ones).
COLOURS = {"artisinal_mine": "#ff2d55", "conventional_mine": "#ffcc00"}
OTHER_COLOUR = "#00e5ff"
NEW_COLOURS = {"new": "#39ff14", "growth": "#00b3ff"}


def vector_format(name: str) -> str:
    """The format key of ``--format`` (geojson, gpkg, fgb), also from an extension or a driver's name."""
    key = str(name).strip().lower().lstrip(".")
    key = _ALIASES.get(key, key)
    if key not in VECTOR_FORMATS:
        raise AmazonmineError(f"--format {name}: not a vector format scan writes (choose from "
                              f"{', '.join(VECTOR_FORMATS)})")
    return key


def vector_name(stem: str, fmt: str) -> str:
    return stem + VECTOR_FORMATS[vector_format(fmt)][0]


# --- writing -------------------------------------------------------------------------------------------------

def write_features(path: Path, features: Iterable[dict], layer: str, fmt: str = "geojson") -> int:
    """Write GeoJSON-like features (lon/lat) as ``fmt``, atomically; returns how many were written."""
    fmt = vector_format(fmt)
    if fmt == "geojson":
        from amazonmine.scanning.sites import write_geojson

        return write_geojson(path, features, layer)
    import pyogrio.raw
    import shapely

    from amazonmine.core.io import atomic_path

    features = list(features)
    geometries = shapely.from_geojson([json.dumps(f["geometry"]) for f in features]) if features else []
    multi = any(g.geom_type.startswith("Multi") for g in geometries)
    names, columns = _columns([f["properties"] for f in features])
    driver = VECTOR_FORMATS[fmt][1]
    # Sites are few and listed most confident first: a FlatGeobuf spatial index would reorder them.
    options = {"SPATIAL_INDEX": "YES" if layer == "tiles" else "NO"} if fmt == "fgb" else {}
    with atomic_path(path) as tmp:
        tmp.unlink()  # the driver creates the file; an empty placeholder is not a dataset it can overwrite
        pyogrio.raw.write(str(tmp), np.asarray(shapely.to_wkb(geometries), dtype=object), columns, names,
                          layer=layer, driver=driver, geometry_type="MultiPolygon" if multi else "Polygon",
                          crs="EPSG:4326", promote_to_multi=multi, layer_options=options)
    return len(features)


def _columns(rows: list[dict]) -> tuple[list[str], list[np.ndarray]]:
    """Field names in first-seen order and one typed array per field: bool, int64, float64, else text (lists
    and mappings as JSON text, a missing value as null)."""
    names: list[str] = []
    for row in rows:
        names += [k for k in row if k not in names]
    columns = []
    for name in names:
        values = [row.get(name) for row in rows]
        present = [v for v in values if v is not None]
        if present and len(present) == len(values) and all(isinstance(v, (bool, np.bool_)) for v in present):
            columns.append(np.array(values, bool))
        elif present and len(present) == len(values) and all(
                isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in present):
            columns.append(np.array(values, np.int64))
        elif present and all(isinstance(v, (int, float, np.integer, np.floating))
                             and not isinstance(v, (bool, np.bool_)) for v in present):
            columns.append(np.array([np.nan if v is None else float(v) for v in values], np.float64))
        else:
            columns.append(np.array([v if v is None or isinstance(v, str)
                                     else json.dumps(v) if isinstance(v, (list, dict, tuple)) else str(v)
                                     for v in values], dtype=object))
    return names, columns


# --- reading (an earlier scan's sites, whatever its format) ------------------------------------------------------

def find_vector(folder: Path, stem: str) -> Path | None:
    """``<stem>.geojson``, ``.gpkg`` or ``.fgb`` in ``folder``, the first that exists."""
    for ext, _ in VECTOR_FORMATS.values():
        if (folder / f"{stem}{ext}").is_file():
            return folder / f"{stem}{ext}"
    return None


def read_features(path: Path) -> list[dict]:
    """GeoJSON-like features of a file :func:`write_features` wrote (GeoJSON, GeoPackage or FlatGeobuf)."""
    path = Path(path)
    if path.suffix.lower() in (".geojson", ".json"):
        from amazonmine.scanning.sites import read_geojson

        return read_geojson(path)
    import pyogrio.raw
    import shapely
    from pyogrio.errors import DataLayerError, DataSourceError

    try:
        meta, _, wkb, columns = pyogrio.raw.read(str(path))
    except (DataSourceError, DataLayerError) as exc:
        raise AmazonmineError(f"{path}: cannot read as a vector layer ({str(exc).splitlines()[0]})") from None
    geometries = shapely.from_wkb(wkb) if wkb is not None else []
    out = []
    for i, geom in enumerate(geometries):
        props = {}
        for name, column in zip(meta["fields"], columns):
            value = column[i]
            value = value.item() if isinstance(value, np.generic) else value
            if name in LIST_FIELDS and isinstance(value, str):
                value = json.loads(value)
            props[str(name)] = value
        out.append({"type": "Feature", "geometry": json.loads(shapely.to_geojson(geom)), "properties": props})
    return out


# --- QGIS styles -------------------------------------------------------------------------------------------------

def _rgba(colour: str, alpha: int = 255) -> str:
    c = colour.lstrip("#")
    return f"{int(c[0:2], 16)},{int(c[2:4], 16)},{int(c[4:6], 16)},{alpha}"


def _options(**values) -> str:
    return "".join(f'<Option name={quoteattr(k)} type="QString" value={quoteattr(str(v))}/>'
                   for k, v in values.items())


def _fill_symbol(name: str, colour: str, fill_alpha: int, width: float, dashed: bool = False) -> str:
    layer = _options(color=_rgba(colour, fill_alpha), outline_color=_rgba(colour),
                     outline_style="dash" if dashed else "solid", outline_width=width, outline_width_unit="MM",
                     style="solid" if fill_alpha else "no", joinstyle="miter")
    return (f'<symbol type="fill" name={quoteattr(name)} alpha="1" clip_to_extent="1" force_rhr="0">'
            f'<layer class="SimpleFill" enabled="1" locked="0" pass="0"><Option type="Map">{layer}</Option>'
            f'</layer></symbol>')


def _qgis(body: str) -> str:
    return f"<!DOCTYPE qgis>\n<qgis version=\"3.28.0\" styleCategories=\"Symbology\">\n{body}\n</qgis>\n"


def categorized_style(field: str, colours: dict, fill_alpha: int = 40, width: float = 0.8,
                      dashed: bool = False) -> str:
    """A QGIS vector style: polygons outlined in one colour per value of ``field``."""
    categories = "".join(f'<category symbol="{k}" value={quoteattr(v)} label={quoteattr(v)} render="true"/>'
                         for k, v in enumerate(colours))
    symbols = "".join(_fill_symbol(str(k), c, fill_alpha, width, dashed) for k, c in enumerate(colours.values()))
    return _qgis(f'<renderer-v2 type="categorizedSymbol" attr={quoteattr(field)} symbollevels="0" '
                 f'enableorderby="0" forceraster="0"><categories>{categories}</categories>'
                 f'<symbols>{symbols}</symbols></renderer-v2>\n<layerGeometryType>2</layerGeometryType>')


def outline_style(colour: str = "#9a9a9a", width: float = 0.2) -> str:
    """A QGIS vector style: every polygon as a thin outline (tiles: thousands of them)."""
    return _qgis(f'<renderer-v2 type="singleSymbol" symbollevels="0" enableorderby="0" forceraster="0">'
                 f'<symbols>{_fill_symbol("0", colour, 0, width)}</symbols></renderer-v2>\n'
                 f'<layerGeometryType>2</layerGeometryType>')


def probability_ramp(threshold: float) -> list[tuple[float, tuple[int, int, int, int]]]:
    """(probability, RGBA) stops: clear at 0, a faint blue below the threshold, yellow at it, red at 1."""
    t = float(min(max(threshold, 0.02), 0.98))
    return [(0.0, (43, 131, 186, 0)), (t / 2, (43, 131, 186, 90)), (t, (255, 230, 80, 180)),
            (1.0, (215, 25, 28, 235))]


def probability_rgba(cells: np.ndarray, threshold: float) -> np.ndarray:
    """(H, W) probabilities (NaN: not scored) -> (H, W, 4) uint8 in the ramp of :func:`probability_ramp`."""
    stops = probability_ramp(threshold)
    xs = [s[0] for s in stops]
    out = np.zeros((*cells.shape, 4), np.uint8)
    scored = np.isfinite(cells)
    values = np.clip(cells[scored], 0.0, 1.0)
    for ch in range(4):
        out[..., ch][scored] = np.round(np.interp(values, xs, [s[1][ch] for s in stops])).astype(np.uint8)
    return out


def raster_style(label: str, threshold: float) -> str:
    """A QGIS raster style for a probability COG: band 1 in the ramp of :func:`probability_ramp`, 0..1."""
    items = "".join(f'<item value="{v:.6g}" label={quoteattr(f"{v:.2f}")} '
                    f'color="#{r:02x}{g:02x}{b:02x}" alpha="{a}"/>' for v, (r, g, b, a) in probability_ramp(threshold))
    return _qgis(
        f'<pipe><rasterrenderer type="singlebandpseudocolor" band="1" opacity="1" alphaBand="-1" '
        f'classificationMin="0" classificationMax="1" nodataColor="">'
        f'<rasterTransparency/><minMaxOrigin><limits>None</limits><extent>WholeRaster</extent>'
        f'<statAccuracy>Estimated</statAccuracy></minMaxOrigin>'
        f'<rastershader><colorrampshader colorRampType="INTERPOLATED" classificationMode="1" clip="0" '
        f'minimumValue="0" maximumValue="1" labelPrecision="2">{items}</colorrampshader></rastershader>'
        f'</rasterrenderer><rasterresampler maxOversampling="2"/></pipe>\n'
        f'<!-- probability of {label.replace("--", "-")}: yellow at the threshold {threshold:.3f}, red at 1 -->\n'
        f'<blendMode>0</blendMode>')


def write_styles(out_dir: Path, labels: Iterable[str], thresholds: dict, rasters: Iterable[str],
                 with_new_sites: bool) -> list[str]:
    """The .qml beside each layer a scan wrote (``sites``, ``tiles``, ``new_sites`` and every probability
    raster, whose label its name ends with); returns their names."""
    from amazonmine.core.io import write_text_atomic

    labels = list(labels)
    styles = {"sites.qml": categorized_style("label", {lab: COLOURS.get(lab, OTHER_COLOUR) for lab in labels}),
              "tiles.qml": outline_style()}
    if with_new_sites:
        styles["new_sites.qml"] = categorized_style("status", NEW_COLOURS, fill_alpha=0, width=1.0, dashed=True)
    for name in rasters:
        label = next((lab for lab in labels if name.endswith(f"{lab}_probability.tif")), None)
        if label is not None:
            styles[name[: -len(".tif")] + ".qml"] = raster_style(label, thresholds[label])
    for name, text in styles.items():
        write_text_atomic(out_dir / name, text)
    return sorted(styles)
