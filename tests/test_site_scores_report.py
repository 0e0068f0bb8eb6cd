"""The site scores in the scan report: score-sites fills the report's "Site scores" section (a table per target
and the curves along the threshold as inline SVG), replaces it when scored again, shows what the files hold
escaped, and leaves a report from before the section existed as it was. A stand-in model scores the tiles of
the small synthetic scene (tests/scan_standin.py): nothing trains."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import pytest
from scan_standin import MINE, scan, synthetic_scene

from amazonmine.scanning.report_page import SITE_SCORES_END, SITE_SCORES_START, site_scores_view
from amazonmine.stages.score_sites import CURVE_THRESHOLDS, SITE_SCORES_JSON, score_scan

THRESHOLD = 0.3  # four single- or two-tile artisinal sites on the synthetic scene (its tiles score 0.2 to 0.4)
SECTION = re.compile(re.escape(SITE_SCORES_START) + r"(.*?)" + re.escape(SITE_SCORES_END), re.S)


@pytest.fixture(scope="module")
def scanned(tmp_path_factory) -> Path:
    """A finished scan of the synthetic scene; tests copy it before they change it."""
    base = tmp_path_factory.mktemp("scored")
    made = synthetic_scene(base / "scene")
    scan(base, [made.tif], base / "out", f"scan.min_probability={{{MINE}: {THRESHOLD}, conventional_mine: 0.9}}")
    return base / "out"


def _copy(scanned: Path, tmp_path: Path) -> Path:
    out = tmp_path / "scan"
    shutil.copytree(scanned, out)
    return out


def _truth(scan_dir: Path, path: Path) -> Path:
    """Two known sites: one inside the scan's first site (found), one on its least likely tile (missed at the
    operating point, found once the threshold drops below that tile's probability)."""
    import shapely
    from shapely.geometry import mapping, shape

    site = shape(json.loads((scan_dir / "sites.geojson").read_text())["features"][0]["geometry"])
    tiles = json.loads((scan_dir / "tiles.geojson").read_text())["features"]
    faint = shape(min(tiles, key=lambda t: t["properties"][f"prob_{MINE}"])["geometry"])
    features = [{"type": "Feature", "properties": {"label": MINE},
                 "geometry": mapping(shapely.box(*g.representative_point().buffer(0.0005).bounds))}
                for g in (site, faint)]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def _section(page: str) -> str:
    found = SECTION.findall(page)
    assert len(found) == 1, f"{len(found)} site-score regions in the page"
    return found[0]


def test_scoring_twice_leaves_one_section_with_the_counts_and_the_curves(scanned, tmp_path):
    out = _copy(scanned, tmp_path)
    truth = _truth(out, tmp_path / "truth.geojson")
    before = (out / "scan_report.html").read_text(encoding="utf-8")
    assert '<section id="site-scores"></section>' in _section(before)  # an empty place, until scored
    score_scan(out, truth, draws=50)
    score_scan(out, truth, draws=100)
    page = (out / "scan_report.html").read_text(encoding="utf-8")
    section = _section(page)
    assert page.count('id="site-scores"') == 1 and page.count("<h2>Site scores</h2>") == 1
    assert "(100 draws)" in section and "(50 draws)" not in section  # the second scoring's section
    assert SECTION.sub("", page) == SECTION.sub("", before)  # the rest of the page as the scan wrote it
    scores = json.loads((out / SITE_SCORES_JSON).read_text())
    assert scores["targets"][MINE]["found"] == 1 and scores["targets"][MINE]["truth_sites"] == 2
    assert section.count(">1 of 2 (50%)<") == 2  # "any" and the label: found 1 of the 2 truth sites
    # Per target, two charts (found rate, false sites per 1,000 km2), each a point per threshold of the curve.
    charts = re.findall(r"<svg class=\"score-chart\".*?</svg>", section, re.S)
    assert len(charts) == 2 * len(scores["targets"]) == 4
    for chart in charts:
        assert chart.count('class="curve-point"') == len(CURVE_THRESHOLDS), chart[:200]
        assert f'data-points="{len(CURVE_THRESHOLDS)}"' in chart
        assert f">{THRESHOLD:.2f}</text>" in chart  # the operating threshold, marked
        assert "probability threshold</text>" in chart
    assert "false sites per 1,000 km\u00b2</text>" in section
    assert "<script" not in section  # drawn server-side, no script


def test_the_curves_lie_where_their_values_are():
    curve = [{"threshold": t, "sites": 1, "found": f, "found_rate": f / 2, "false_sites": k,
              "false_sites_per_1000_km2": 10.0 * k} for t, f, k in ((0.25, 2, 3), (0.5, 1, 1), (0.75, 0, 0))]
    curve.append({"threshold": 0.9, "sites": 0, "found": 0, "found_rate": None, "false_sites": 0,
                  "false_sites_per_1000_km2": None})  # no truth and no area: nothing to draw there
    target = {"truth_sites": 2, "found": 1, "found_rate": 0.5, "predicted_sites": 2, "false_sites": 1,
              "false_sites_per_1000_km2": 10.0, "tiles": {"tp": 1, "fp": 1, "fn": 1}, "tile_precision": 0.5,
              "tile_recall": 0.5, "intervals_95": {}, "missed_truth_features": [1], "curve": curve}
    view = site_scores_view({"truth": "t.geojson", "area_km2": 100.0, "operating_point": {"thresholds": {MINE: 0.5}},
                             "targets": {MINE: target}})
    found, false = view["targets"][0]["charts"]
    assert [p["x"] for p in found["points"]] == sorted(p["x"] for p in found["points"]) and len(found["points"]) == 3
    assert [p["y"] for p in found["points"]] == [found["top"], (found["top"] + found["bottom"]) / 2, found["bottom"]]
    assert found["operating"][0]["at"] == found["points"][1]["x"]  # the line at 0.5, through the 0.5 point
    assert found["ring"]["y"] == found["points"][1]["y"]
    # False sites: 30 per 1,000 km2 at most, on an axis up to a round 30 (ticks 0, 10, 20, 30).
    assert [t["label"] for t in false["y_ticks"]] == ["0", "10", "20", "30"] and false["points"][0]["y"] == false["top"]
    rows = {r["figure"]: r for r in view["targets"][0]["rows"]}
    assert rows["truth sites found"]["value"] == "1 of 2 (50%)" and rows["truth sites found"]["interval"] == "\u2013"
    assert rows["truth sites found"]["detail"] == "missed: feature 1"


def test_what_the_files_hold_is_shown_as_text(scanned, tmp_path):
    out = _copy(scanned, tmp_path)
    odd = tmp_path / 'known<script>alert("x")<b>&.geojson'
    score_scan(out, _truth(out, odd), draws=0)
    section = _section((out / "scan_report.html").read_text(encoding="utf-8"))
    assert "<script" not in section and "<b>" not in section
    assert "known&lt;script&gt;alert(&#34;x&#34;)&lt;b&gt;&amp;.geojson" in section
    assert "none (scored without a bootstrap)" in section


def test_a_report_from_before_the_section_is_left_as_it_was(scanned, tmp_path, caplog):
    out = _copy(scanned, tmp_path)
    report = out / "scan_report.html"
    old = SECTION.sub("", report.read_text(encoding="utf-8")).encode("utf-8")  # as scans wrote it before
    report.write_bytes(old)
    with caplog.at_level(logging.WARNING, logger="amazonmine"):
        score_scan(out, _truth(out, tmp_path / "truth.geojson"), draws=0)
    assert report.read_bytes() == old
    assert (out / SITE_SCORES_JSON).is_file()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(report) in warnings[0] and "\n" not in warnings[0]
    # No report at all: the scores are written, no report is made up.
    report.unlink()
    score_scan(out, tmp_path / "truth.geojson", draws=0)
    assert not report.exists() and (out / SITE_SCORES_JSON).is_file()
