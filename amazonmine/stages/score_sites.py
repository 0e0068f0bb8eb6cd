"""A scan scored as the people using its map judge it: truth sites found, false sites per 1,000 km², tiles right.

``amazonmine score-sites SCAN_DIR --truth TRUTH.geojson`` (or ``amazonmine scan ... --truth TRUTH.geojson``)
reads a finished scan (``tiles.geojson``, ``sites.geojson``, ``scan.json``) and polygons of known mine sites,
and writes ``site_scores.json`` into the scan folder, and a "Site scores" section into its ``scan_report.html``
(a table per target and the curves below as charts; :func:`amazonmine.scanning.report_page.add_site_scores`).
Per mine label of the scan, and for "any" mine (every truth site against every predicted site, whatever the
labels):

* **found**: truth sites that a predicted site overlaps (a shared area, not just a touching edge), out of
  all truth sites; the missed ones are listed by their feature index;
* **false sites per 1,000 km²**: predicted sites that overlap no truth site, per 1,000 km² of ground scanned
  (the union of the scored tiles). A predicted site inside an ignore polygon (``unlabelled``/``ignore``) of the
  truth file is neither right nor false: nobody knows;
* **tile precision and recall**: a tile is truly positive under the same coverage rule ``amazonmine chips``
  labels training chips by (:class:`amazonmine.scanning.polygon_labels.CoverageRule`), and decided positive as scan
  decided it (``has_<label>``); tiles touching an ignore polygon are left out;
* a **95% interval** for found, tile precision and tile recall from a bootstrap over sites: truth sites (with
  the predicted sites and tiles on them), and the predicted sites and loose positive tiles that overlap no
  truth, are the units drawn with replacement (each kind apart, so every draw has as many truth sites as the
  truth has). Tiles near one site are not independent evidence, sites roughly are. For false sites per 1,000
  km² the interval is the exact Poisson one of the count over the area scanned: redrawing the false sites
  themselves would keep their number, and a false site is a rare event over area;
* a **curve** along the probability threshold: the same figures (no intervals) when every tile at or above
  the threshold is positive and positive tiles are dissolved into sites as scan dissolves them (touching or
  overlapping; a lone tile must still clear the scan's isolated threshold, and sites under
  ``scan.min_site_ha`` are dropped). For "any" a tile's probability is its highest over the scan's labels.

Truth polygons are read like chip labels (GeoJSON or GeoPackage, any CRS, repaired when invalid); their
``label`` property is optional (a site without one counts under "any" only).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from amazonmine.core.data import LABELS
from amazonmine.core.errors import AmazonmineError
from amazonmine.scanning.polygon_labels import (
    IGNORE_LABELS,
    CoverageRule,
    ScenePolygons,
    label_tiles,
    read_label_polygons,
)
from amazonmine.scanning.report_page import REPORT_HTML, add_site_scores
from amazonmine.scanning.sites import component_labels

SITE_SCORES_JSON = "site_scores.json"
ANY = "any"
CURVE_THRESHOLDS = tuple(round(t, 2) for t in np.arange(0.05, 1.0, 0.05))


@dataclass
class Truth:
    """Truth polygons in lon/lat: mine sites (label or "" when the file gives none) and ignore zones."""

    path: Path
    sites: list  # shapely, lon/lat
    labels: list[str]
    indexes: list[int]  # feature index in the file, for messages
    ignore: list
    notes: list[str] = field(default_factory=list)


def read_truth(path: str | Path, vocabulary: Sequence[str] = LABELS) -> Truth:
    """Truth polygons of a GeoJSON/GeoPackage file, reprojected to lon/lat (see :func:`read_label_polygons`);
    a label must be one of ``vocabulary`` (the scanning model's) or an ignore label."""
    from pyproj import CRS

    labels = read_label_polygons(path, vocabulary, IGNORE_LABELS, require_label=False)
    geoms = labels.in_crs(CRS.from_epsg(4326).to_wkt())
    sites, names, indexes, ignore = [], [], [], []
    for p, geom in zip(labels.polygons, geoms):
        if p.label in IGNORE_LABELS:
            ignore.append(geom)
        else:
            sites.append(geom)
            names.append(p.label)
            indexes.append(p.index)
    notes = list(labels.notes)
    if labels.repaired:
        notes.append(f"{path}: repaired invalid polygon(s): {', '.join(labels.repaired[:5])}")
    return Truth(Path(path), sites, names, indexes, ignore, notes)


# --- the scores --------------------------------------------------------------------------------------------

def _overlaps(left: list, right: list) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i, j) where left[i] and right[j] share an area (touching does not count)."""
    import shapely

    if not left or not right:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    right_arr = np.asarray(right, dtype=object)
    i, j = shapely.STRtree(right_arr).query(np.asarray(left, dtype=object), predicate="intersects")
    if len(i) == 0:
        return i, j
    shared = shapely.area(shapely.intersection(np.asarray(left, dtype=object)[i], right_arr[j])) > 0
    return i[shared], j[shared]


def _ratio(num: float, den: float) -> float | None:
    return float(num) / float(den) if den else None


@dataclass
class TargetScores:
    """The scores of one target (a label, or "any") at the scan's operating point, and the curve."""

    target: str
    truth_sites: int
    found: int
    predicted_sites: int
    false_sites: int
    excused_sites: int  # predicted sites in an ignore zone, overlapping no truth
    area_km2: float
    tp: int
    fp: int
    fn: int
    intervals: dict
    missed: list  # feature indexes of truth sites no predicted site overlaps
    false_site_ids: list
    curve: list = field(default_factory=list)

    @property
    def found_rate(self) -> float | None:
        return _ratio(self.found, self.truth_sites)

    @property
    def false_per_1000_km2(self) -> float | None:
        return _ratio(1000.0 * self.false_sites, self.area_km2)

    @property
    def tile_precision(self) -> float | None:
        return _ratio(self.tp, self.tp + self.fp)

    @property
    def tile_recall(self) -> float | None:
        return _ratio(self.tp, self.tp + self.fn)

    def to_dict(self) -> dict:
        return {"truth_sites": self.truth_sites, "found": self.found, "found_rate": self.found_rate,
                "predicted_sites": self.predicted_sites, "false_sites": self.false_sites,
                "sites_in_ignore_zones": self.excused_sites, "area_km2": self.area_km2,
                "false_sites_per_1000_km2": self.false_per_1000_km2, "tiles": {"tp": self.tp, "fp": self.fp,
                                                                               "fn": self.fn},
                "tile_precision": self.tile_precision, "tile_recall": self.tile_recall,
                "intervals_95": self.intervals, "missed_truth_features": self.missed,
                "false_site_ids": self.false_site_ids, "curve": self.curve}

    def line(self) -> str:
        def pct(v, ci):
            if v is None:
                return "n/a"
            lo, hi = ci if ci else (None, None)
            return f"{100 * v:.0f}%" + (f" [{100 * lo:.0f}-{100 * hi:.0f}]" if lo is not None else "")

        rate = self.false_per_1000_km2
        ci = self.intervals.get("false_sites_per_1000_km2")
        false = "n/a" if rate is None else f"{rate:.2f}" + (f" [{ci[0]:.2f}-{ci[1]:.2f}]" if ci else "")
        return (f"{self.target}: found {self.found} of {self.truth_sites} truth sites "
                f"({pct(self.found_rate, self.intervals.get('found_rate'))}), {self.false_sites} false site(s) = "
                f"{false} per 1,000 km2; tiles precision "
                f"{pct(self.tile_precision, self.intervals.get('tile_precision'))}"
                f" recall {pct(self.tile_recall, self.intervals.get('tile_recall'))}")


@dataclass
class TargetInputs:
    """One target's geometry and the scan's view of it: ``truth``/``ignore``/``sites``/``tiles`` are lon/lat
    shapely polygons; ``truth_index`` the truth sites' feature numbers, ``site_ids`` the predicted sites' ids;
    ``probs`` and ``decided`` the tiles' probability and scan decision for the target."""

    target: str
    truth: list
    ignore: list
    truth_index: list[int]
    sites: list
    site_ids: list
    tiles: list
    probs: np.ndarray
    decided: np.ndarray


@dataclass
class ScoringSettings:
    """How a target is scored: the area scanned, the tile-labelling rule, the scan's lone-tile threshold and
    least site area (held along the curve too), the bootstrap's draws and seed, and the curve's thresholds."""

    area_km2: float
    rule: CoverageRule
    isolated: float = 0.0
    min_site_ha: float = 0.0
    draws: int = 1000
    seed: int = 0
    thresholds: Sequence[float] = CURVE_THRESHOLDS


def score_target(inputs: TargetInputs, settings: ScoringSettings) -> TargetScores:
    """Scores of one target (see the module docstring)."""
    truth, ignore, sites, tiles = inputs.truth, inputs.ignore, inputs.sites, inputs.tiles
    area_km2, draws = settings.area_km2, settings.draws
    n_truth, n_sites, n_tiles = len(truth), len(sites), len(tiles)
    probs = np.asarray(inputs.probs, np.float64)
    decided = np.asarray(inputs.decided, bool)
    # Which truth site each predicted site overlaps, and which sites sit in an ignore zone.
    si, ti = _overlaps(sites, truth)
    found = np.zeros(n_truth, bool)
    found[ti] = True
    site_true = np.zeros(n_sites, bool)
    site_true[si] = True
    in_ignore = np.zeros(n_sites, bool)
    in_ignore[_overlaps(sites, ignore)[0]] = True
    site_false = ~site_true & ~in_ignore
    # Tiles: truly positive under the chips' coverage rule, left out when they touch an ignore zone.
    tiles_arr = np.asarray(tiles, dtype=object)
    polys = ScenePolygons.build(list(truth) + list(ignore), ["site"] * n_truth + ["ignore"] * len(ignore))
    taken, ignored = label_tiles(tiles_arr, polys, settings.rule)
    positive = np.array(["site" in t for t in taken], bool) & ~ignored
    scored = ~ignored
    # Units of the bootstrap: a truth site with the predicted sites overlapping it (joined when they chain), a
    # predicted site overlapping no truth, a positive tile in neither. Nodes: truth, then sites, then tiles.
    tile_truth_i, tile_truth_j = _overlaps(tiles, truth)
    tile_site_i, tile_site_j = _overlaps(tiles, sites)
    a = [si + n_truth]
    b = [ti]
    tile_first_truth = np.full(n_tiles, -1)
    tile_first_truth[tile_truth_i[::-1]] = tile_truth_j[::-1]
    tile_first_site = np.full(n_tiles, -1)
    tile_first_site[tile_site_i[::-1]] = tile_site_j[::-1]
    for t in range(n_tiles):
        if not scored[t] or not (positive[t] or decided[t]):
            continue
        node = n_truth + n_sites + t
        if positive[t] and tile_first_truth[t] >= 0:
            a.append(np.array([node]))
            b.append(np.array([tile_first_truth[t]]))
        elif decided[t] and tile_first_site[t] >= 0:
            a.append(np.array([node]))
            b.append(np.array([n_truth + tile_first_site[t]]))
    unit = component_labels(n_truth + n_sites + n_tiles, np.concatenate(a), np.concatenate(b))
    tp_t = scored & positive & decided
    fp_t = scored & ~positive & decided
    fn_t = scored & positive & ~decided
    keys = np.unique(unit)
    pos = {k: i for i, k in enumerate(keys.tolist())}
    per = np.zeros((len(keys), 6), np.float64)  # truth, found, false sites, tp, fp, fn
    tile_unit = unit[n_truth + n_sites:]
    for col, (members, weight) in enumerate([(unit[:n_truth], np.ones(n_truth)),
                                             (unit[:n_truth], found.astype(float)),
                                             (unit[n_truth:n_truth + n_sites], site_false.astype(float)),
                                             (tile_unit, tp_t.astype(float)), (tile_unit, fp_t.astype(float)),
                                             (tile_unit, fn_t.astype(float))]):
        np.add.at(per[:, col], [pos[k] for k in members.tolist()], weight)
    has_truth = per[:, 0] > 0
    relevant = has_truth | (per[:, 2:].sum(axis=1) > 0)
    intervals = _bootstrap(per[has_truth], per[~has_truth & relevant], draws, settings.seed)
    if draws > 0:
        intervals["false_sites_per_1000_km2"] = poisson_rate_interval(int(site_false.sum()), area_km2)
    scores = TargetScores(inputs.target, n_truth, int(found.sum()), n_sites, int(site_false.sum()),
                          int((in_ignore & ~site_true).sum()), float(area_km2), int(tp_t.sum()), int(fp_t.sum()),
                          int(fn_t.sum()), intervals, [inputs.truth_index[k] for k in np.flatnonzero(~found)],
                          [inputs.site_ids[k] for k in np.flatnonzero(site_false)])
    scores.curve = _curve(tiles, probs, scored, positive, (tile_truth_i, tile_truth_j), n_truth,
                          _overlaps(tiles, ignore)[0], settings)
    return scores


def poisson_rate_interval(count: int, area_km2: float) -> list[float] | None:
    """Exact (Garwood) 95% interval of a count over an area, as events per 1,000 km²."""
    from scipy.stats import chi2

    if not area_km2:
        return None
    lo = 0.0 if count == 0 else chi2.ppf(0.025, 2 * count) / 2.0
    hi = chi2.ppf(0.975, 2 * count + 2) / 2.0
    return [1000.0 * float(lo) / area_km2, 1000.0 * float(hi) / area_km2]


def _bootstrap(truth_units: np.ndarray, other_units: np.ndarray, draws: int, seed: int) -> dict:
    """2.5 and 97.5 percentiles of found rate, tile precision and recall over ``draws`` stratified resamplings
    of the units (columns: truth sites, found, false sites, tp, fp, fn)."""
    if draws <= 0:
        return {}
    rng = np.random.default_rng([seed, 32])
    total = np.zeros((draws, 6))
    if len(truth_units):
        total += truth_units[rng.integers(0, len(truth_units), (draws, len(truth_units)))].sum(axis=1)
    if len(other_units):
        total += other_units[rng.integers(0, len(other_units), (draws, len(other_units)))].sum(axis=1)
    truth, found, _, tp, fp, fn = total.T
    with np.errstate(invalid="ignore", divide="ignore"):
        figures = {"found_rate": found / truth, "tile_precision": tp / (tp + fp), "tile_recall": tp / (tp + fn)}
    out = {}
    for name, values in figures.items():
        values = values[np.isfinite(values)]
        out[name] = [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))] if len(values) else None
    return out


def _curve(tiles: list, probs: np.ndarray, scored: np.ndarray, positive: np.ndarray, tile_truth: tuple,
           n_truth: int, in_ignore_tiles: np.ndarray, settings: ScoringSettings) -> list[dict]:
    """Found rate, false sites per 1,000 km², tile precision and recall when every tile >= t is positive, for
    each t of ``settings.thresholds``; ``tile_truth`` is (tile, truth site) index pairs of their overlaps."""
    import shapely

    from amazonmine.scanning.sites import area_ha

    tile_truth_i, tile_truth_j = tile_truth
    area_km2, isolated, min_site_ha = settings.area_km2, settings.isolated, settings.min_site_ha

    n = len(tiles)
    if n == 0:
        return []
    arr = np.asarray(tiles, dtype=object)
    left, right = shapely.STRtree(arr).query(arr, predicate="intersects")  # scan dissolves touching tiles
    keep_edge = left < right
    left, right = left[keep_edge], right[keep_edge]
    touches_ignore = np.zeros(n, bool)
    touches_ignore[in_ignore_tiles] = True
    truth_of_tile: dict[int, list[int]] = {}
    for t, j in zip(tile_truth_i.tolist(), tile_truth_j.tolist()):
        truth_of_tile.setdefault(t, []).append(j)
    out = []
    for threshold in settings.thresholds:
        on = probs >= threshold
        both = on[left] & on[right]
        group = component_labels(n, left[both], right[both])
        found = np.zeros(n_truth, bool)
        sites = false = 0
        chosen = np.flatnonzero(on)
        chosen = chosen[np.argsort(group[chosen], kind="stable")]
        starts = np.flatnonzero(np.r_[True, np.diff(group[chosen]) != 0]) if len(chosen) else np.zeros(0, int)
        for members in np.split(chosen, starts[1:]) if len(chosen) else []:
            if len(members) == 1 and probs[members[0]] < max(threshold, isolated):
                continue
            if min_site_ha > 0 and area_ha(shapely.union_all(arr[members])) < min_site_ha:
                continue
            sites += 1
            hits = [j for t in members.tolist() for j in truth_of_tile.get(t, [])]
            found[hits] = True
            if not hits and not touches_ignore[members].any():
                false += 1
        tp = int((scored & positive & on).sum())
        fp = int((scored & ~positive & on).sum())
        fn = int((scored & positive & ~on).sum())
        out.append({"threshold": float(threshold), "sites": sites, "found": int(found.sum()),
                    "found_rate": _ratio(found.sum(), n_truth), "false_sites": false,
                    "false_sites_per_1000_km2": _ratio(1000.0 * false, area_km2),
                    "tile_precision": _ratio(tp, tp + fp), "tile_recall": _ratio(tp, tp + fn)})
    return out


# --- a scan folder -----------------------------------------------------------------------------------------

@dataclass
class SiteScores:
    scan_dir: Path
    truth: Path
    targets: dict  # name -> TargetScores
    area_km2: float
    notes: list = field(default_factory=list)

    def headline(self) -> str:
        lines = [f"site scores of {self.scan_dir} against {self.truth} ({self.area_km2:.1f} km2 scanned; 95% "
                 f"intervals over sites) -> {self.scan_dir / SITE_SCORES_JSON}"]
        lines += [t.line() for t in self.targets.values()]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def _read_features(path: Path) -> list[dict]:
    from amazonmine.scanning.sites import read_geojson

    if not path.is_file():
        raise AmazonmineError(f"{path}: not found; is {path.parent} a finished scan folder?")
    return read_geojson(path)


def scanned_area_km2(tiles: list) -> float:
    """Ground area of the union of lon/lat tile polygons, in km²."""
    import shapely

    from amazonmine.scanning.sites import area_ha

    if not tiles:
        return 0.0
    return area_ha(shapely.union_all(np.asarray(tiles, dtype=object))) / 100.0


def score_scan(scan_dir: str | Path, truth_path: str | Path, *, min_tile_share: float = 0.1,
               min_polygon_share: float = 0.5, draws: int = 1000, seed: int = 0,
               thresholds: Sequence[float] = CURVE_THRESHOLDS) -> SiteScores:
    """Score a finished scan folder against truth polygons; writes ``site_scores.json`` there."""
    from shapely.geometry import shape

    from amazonmine.core.io import read_json, write_json_atomic

    scan_dir = Path(scan_dir)
    record = read_json(scan_dir / "scan.json") if (scan_dir / "scan.json").is_file() else None
    if record is None:
        raise AmazonmineError(f"{scan_dir}: no scan.json; give the folder of a finished scan")
    point = record.get("operating_point", {})
    labels = list(point.get("thresholds", {}))
    if not labels:
        raise AmazonmineError(f"{scan_dir / 'scan.json'}: no operating point (scan.labels); rerun the scan")
    truth = read_truth(truth_path, record.get("labels") or LABELS)  # the model's vocabulary (Planet's before)
    tile_features = _read_features(scan_dir / "tiles.geojson")
    site_features = _read_features(scan_dir / "sites.geojson")
    tiles = [shape(f["geometry"]) for f in tile_features]
    probs = np.array([[f["properties"].get(f"prob_{lab}", 0.0) for lab in labels] for f in tile_features],
                     np.float64).reshape(len(tiles), len(labels))
    decided = np.array([[bool(f["properties"].get(f"has_{lab}", False)) for lab in labels] for f in tile_features],
                       bool).reshape(len(tiles), len(labels))
    area = scanned_area_km2(tiles)
    rule = CoverageRule(min_tile_share, min_polygon_share)
    notes = list(truth.notes)
    other = sorted({lab for lab in truth.labels if lab and lab not in labels})
    if other:
        notes.append(f"{truth.path}: truth labels the scan does not map ({', '.join(other)}) count under "
                     f"'{ANY}' only")
    targets = {}
    # A lone tile's stricter threshold (scan.isolated_min_probability) holds along the curve too; where the scan
    # had none, scan.json records the label's own threshold, and a lone tile then just needs the curve's.
    isolated = {lab: float(v) for lab, v in point.get("isolated", {}).items()
                if float(v) > float(point["thresholds"].get(lab, 0.0))}
    plan = [(ANY, list(range(len(truth.sites))), site_features, probs.max(axis=1, initial=0.0), decided.any(axis=1),
             min((isolated.get(lab, 0.0) for lab in labels), default=0.0))]
    for j, label in enumerate(labels):
        chosen = [i for i, lab in enumerate(truth.labels) if lab == label]
        if chosen:
            plan.append((label, chosen, [f for f in site_features if f["properties"].get("label") == label],
                         probs[:, j], decided[:, j], isolated.get(label, 0.0)))
    for name, chosen, sites, p, d, isolated in plan:
        inputs = TargetInputs(name, [truth.sites[i] for i in chosen], truth.ignore, [truth.indexes[i] for i in chosen],
                              [shape(f["geometry"]) for f in sites],
                              [f["properties"].get("site_id", "") for f in sites], tiles, p, d)
        targets[name] = score_target(inputs, ScoringSettings(area, rule, isolated, float(point.get("min_site_ha", 0.0)),
                                                             draws, seed, thresholds))
    scores = SiteScores(scan_dir, Path(truth_path), targets, area, notes)
    written = {
        "scan": str(scan_dir), "truth": str(truth_path), "area_km2": area,
        "rule": {"found": "a predicted site shares an area with the truth site",
                 "false_site": "a predicted site sharing no area with any truth site, outside the ignore zones",
                 "tile_truth": rule.describe("n/a"), "min_tile_share": rule.min_tile_share,
                 "min_polygon_share": rule.min_polygon_share},
        "bootstrap": {"draws": draws, "seed": seed, "interval": [2.5, 97.5],
                      "units": "truth sites (with the predicted sites and tiles on them); predicted sites and "
                               "positive tiles on no truth; each kind drawn apart",
                      "false_sites": "exact Poisson 95% interval of the count over the area scanned"},
        "operating_point": point, "targets": {k: v.to_dict() for k, v in targets.items()}, "notes": notes}
    write_json_atomic(scan_dir / SITE_SCORES_JSON, written)
    if (scan_dir / REPORT_HTML).is_file():  # the scan's report shows them too (an older one: a warning)
        add_site_scores(scan_dir / REPORT_HTML, written)
    return scores
