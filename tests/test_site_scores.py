"""Site-level scores of a scan against truth polygons, on a hand-made map whose answers are known."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from amazonmine.stages.score_sites import SITE_SCORES_JSON, score_scan

X0, Y0, KM = 600_000.0, 9_310_000.0, 1000.0
UTM = "EPSG:32721"
MINE = "artisinal_mine"
# A 10 x 10 km scan of 1 km tiles (stride 1). Truth: three 600 m sites inside tiles (1,1), (5,5) and (8,2), and
# an ignore zone over tile (0,9). Scan: sites on (1,1), on (5,5)+(5,6), on (3,7), on (9,9), and on (0,9).
TRUTH_TILES = [(1, 1), (5, 5), (8, 2)]
PROBS = {(1, 1): 0.9, (5, 5): 0.9, (5, 6): 0.9, (3, 7): 0.6, (9, 9): 0.55, (0, 9): 0.9, (8, 2): 0.3}
SITES = [[(1, 1)], [(5, 5), (5, 6)], [(3, 7)], [(9, 9)], [(0, 9)]]
THRESHOLD = 0.5


def _lonlat(ring_m):
    from pyproj import Transformer

    to_lonlat = Transformer.from_crs(UTM, "EPSG:4326", always_xy=True)
    return [list(to_lonlat.transform(x, y)) for x, y in ring_m]


def _tile_ring(r, c, inset=0.0):
    x0, x1 = X0 + c * KM + inset, X0 + (c + 1) * KM - inset
    y1, y0 = Y0 - r * KM - inset, Y0 - (r + 1) * KM + inset
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]


def _scan_dir(tmp_path: Path) -> Path:
    """A finished scan's three files as scan writes them (lon/lat, prob_/has_ per tile, sites with labels)."""
    import shapely

    scan = tmp_path / "scan"
    scan.mkdir()
    tiles = []
    for r in range(10):
        for c in range(10):
            p = PROBS.get((r, c), 0.01)
            props = {"scene": "s", "row": r, "col": c, f"prob_{MINE}": p, f"has_{MINE}": p >= THRESHOLD,
                     "prob_conventional_mine": 0.0, "has_conventional_mine": False}
            tiles.append({"type": "Feature", "properties": props,
                          "geometry": {"type": "Polygon", "coordinates": [_lonlat(_tile_ring(r, c))]}})
    sites = []
    for k, cells in enumerate(SITES, start=1):
        geom = shapely.union_all([shapely.Polygon(_lonlat(_tile_ring(r, c))) for r, c in cells])
        sites.append({"type": "Feature", "properties": {"label": MINE, "site_id": f"{MINE}-{k}"},
                      "geometry": shapely.geometry.mapping(geom)})
    (scan / "tiles.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": tiles}))
    (scan / "sites.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": sites}))
    point = {"thresholds": {MINE: THRESHOLD, "conventional_mine": THRESHOLD},
             "isolated": {MINE: THRESHOLD, "conventional_mine": THRESHOLD}, "sources": {}, "min_site_ha": 0.0}
    (scan / "scan.json").write_text(json.dumps({"operating_point": point}))
    return scan


def _truth(tmp_path: Path) -> Path:
    """Truth in the scene's UTM zone (a 'crs' member): it must be reprojected to meet the lon/lat scan."""
    features = [{"type": "Feature", "properties": {"label": MINE},
                 "geometry": {"type": "Polygon", "coordinates": [[list(p) for p in _tile_ring(r, c, inset=200)]]}}
                for r, c in TRUTH_TILES]
    features.append({"type": "Feature", "properties": {"label": "ignore"},
                     "geometry": {"type": "Polygon", "coordinates": [[list(p) for p in _tile_ring(0, 9, inset=100)]]}})
    path = tmp_path / "truth.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "crs": {"type": "name", "properties": {"name": UTM}},
                                "features": features}))
    return path


def test_site_recall_and_false_site_rate_on_a_hand_made_map(tmp_path):
    scores = score_scan(_scan_dir(tmp_path), _truth(tmp_path), draws=500, seed=1)
    mine = scores.targets[MINE]
    assert scores.area_km2 == pytest.approx(100.0, rel=1e-3)
    assert (mine.truth_sites, mine.found, mine.found_rate) == (3, 2, pytest.approx(2 / 3))
    assert mine.missed == [2]  # the third feature of the truth file, in tile (8, 2)
    assert (mine.predicted_sites, mine.false_sites, mine.excused_sites) == (5, 2, 1)  # (0, 9) lies in the ignore zone
    assert mine.false_site_ids == [f"{MINE}-3", f"{MINE}-4"]
    assert mine.false_per_1000_km2 == pytest.approx(20.0, rel=1e-3)  # 2 false sites on 100 km2
    # Tiles: truly positive (1,1), (5,5), (8,2); decided (1,1), (5,5), (5,6), (3,7), (9,9); (0,9) left out.
    assert (mine.tp, mine.fp, mine.fn) == (2, 3, 1)
    assert mine.tile_precision == pytest.approx(0.4) and mine.tile_recall == pytest.approx(2 / 3)
    for name, value in (("found_rate", mine.found_rate), ("tile_precision", mine.tile_precision),
                        ("tile_recall", mine.tile_recall), ("false_sites_per_1000_km2", mine.false_per_1000_km2)):
        lo, hi = mine.intervals[name]
        assert lo <= value <= hi and lo < hi, name  # three truth sites: the interval is wide, and holds the value
    assert 0.0 <= mine.intervals["found_rate"][0] and mine.intervals["found_rate"][1] <= 1.0
    # 2 false sites on 100 km2: the exact Poisson interval of 2 events is 0.242 to 7.225, per 100 km2 here.
    assert mine.intervals["false_sites_per_1000_km2"] == pytest.approx([2.42, 72.25], abs=0.01)
    # "any" mine: the same truth and sites here (the scan found no conventional mine).
    assert scores.targets["any"].to_dict()["found"] == 2 and scores.targets["any"].false_sites == 2
    written = json.loads((tmp_path / "scan" / SITE_SCORES_JSON).read_text())
    assert written["targets"][MINE]["found_rate"] == pytest.approx(2 / 3)
    assert written["bootstrap"]["draws"] == 500


def test_the_curve_along_the_threshold(tmp_path):
    scores = score_scan(_scan_dir(tmp_path), _truth(tmp_path), draws=0, thresholds=(0.25, 0.5, 0.7, 0.95))
    curve = {p["threshold"]: p for p in scores.targets[MINE].curve}
    # 0.25: the missed site's tile (0.3) joins: every truth site found, and its tile is a true positive (the
    # scan had no stricter threshold for a lone tile: its recorded isolated threshold is its threshold).
    assert (curve[0.25]["found"], curve[0.25]["false_sites"], curve[0.25]["tile_recall"]) == (3, 2, 1.0)
    # 0.5 is the operating point: the same figures as the scan's own sites.
    assert (curve[0.5]["found"], curve[0.5]["false_sites"], curve[0.5]["sites"]) == (2, 2, 5)
    assert curve[0.5]["tile_precision"] == pytest.approx(0.4)
    # 0.7: the two false sites (0.6, 0.55) are gone; (5,6) is still a false tile beside a true one.
    assert (curve[0.7]["found"], curve[0.7]["false_sites"]) == (2, 0)
    assert curve[0.7]["tile_precision"] == pytest.approx(2 / 3)
    assert curve[0.95]["sites"] == 0 and curve[0.95]["found_rate"] == 0.0 and curve[0.95]["tile_precision"] is None
    assert scores.targets[MINE].intervals == {}


def test_every_site_found_gives_a_closed_interval_and_the_cli_writes_the_file(tmp_path):
    from amazonmine.cli import main

    scan = _scan_dir(tmp_path)
    truth = tmp_path / "found.geojson"
    one = {"type": "Feature", "properties": {},  # no label: counts under "any"
           "geometry": {"type": "Polygon", "coordinates": [_lonlat(_tile_ring(1, 1, inset=300))]}}
    truth.write_text(json.dumps({"type": "FeatureCollection", "features": [one]}))
    result = CliRunner().invoke(main, ["score-sites", str(scan), "--truth", str(truth), "--bootstrap", "200"])
    assert result.exit_code == 0, result.output
    assert "any: found 1 of 1 truth sites (100% [100-100])" in result.output
    written = json.loads((scan / SITE_SCORES_JSON).read_text())
    assert written["targets"]["any"]["intervals_95"]["found_rate"] == [1.0, 1.0]
    assert MINE not in written["targets"]  # no truth labelled with it
    # Every other site is false now: (5,5)+(5,6), (3,7), (9,9), and (0,9) with no ignore zone here.
    assert written["targets"]["any"]["false_sites"] == 4


def test_score_sites_refuses_what_is_not_a_scan_in_one_line(tmp_path):
    from amazonmine.cli import main

    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(main, ["score-sites", str(tmp_path / "empty"), "--truth", str(_truth(tmp_path))])
    assert result.exit_code == 1 and result.output.startswith("error: ") and "scan.json" in result.output
    np.testing.assert_equal(result.output.count("\n"), 1)


def test_component_labels_join_chains_and_keep_lone_nodes_apart():
    import numpy as np

    from amazonmine.scanning.sites import component_labels

    # 0-1-2 is one chain (joined through 1), 3-5 a pair given backwards, 4 touches nothing.
    labels = component_labels(6, np.array([0, 2, 5]), np.array([1, 1, 3]))
    assert labels.tolist() == [0, 0, 0, 1, 2, 1]
    assert component_labels(3, np.array([], int), np.array([], int)).tolist() == [0, 1, 2]
