"""Scan stage: satellite scenes -> tiles -> the run's models -> a map of mine sites.

``amazonmine scan SCENE... --config FILE`` takes GeoTIFFs/COGs (any CRS, 3 or 4 bands, 8 or 16 bit; or folders
of them, URLs, or STAC Items: :mod:`amazonmine.scanning.stac`) and a trained run, and writes, in
``<run.dir>/scans/<name>`` unless ``--out`` says otherwise (tiles, sites and new sites as GeoJSON, or with
``--format`` GeoPackage or FlatGeobuf, each with a QGIS style beside it: :mod:`amazonmine.scanning.gisfiles`):

* ``tiles.geojson``  every scored tile as a lon/lat polygon with a probability (``prob_<label>``) and a decision
  (``has_<label>``) for each label of the model's vocabulary (the Planet 17, or its own), and its scene;
* ``sites.geojson``  the tiles decided positive for each label of ``scan.labels`` (empty: the two mine labels
  with the Planet vocabulary, every non-weather label of a model's own), dissolved into sites
  (touching or overlapping tiles), with area in hectares, tile count, max/mean probability, first/last scene;
* ``<label>_probability.tif``  a Cloud-Optimized GeoTIFF per label of ``scan.labels`` (one per scene and label when
  there are several scenes: ``<scene>_<label>_probability.tif``) on the tile grid: one float32 cell per tile position,
  centred on the tile's centre, NaN where no tile was scored;
* ``scan_report.html``  the interactive map and table a person opens (offline);
* ``*.qml``  a QGIS style beside each layer (sites, tiles, new sites, every probability raster);
* ``new_sites.geojson``  with ``--since PREVIOUS_SCAN``: sites, or growth of sites, that the earlier scan lacked;
* ``scan.json``  config, versions, models, the chip look, every scene's grid and counts, skipped blocks, timing.

How a tile becomes a chip the model can score (ground size, bands, bit depth, JPEG look) is
:mod:`amazonmine.scanning.tiling`; dissolving and GeoJSON are :mod:`amazonmine.scanning.sites`; the report is
:mod:`amazonmine.scanning.report_page`. This module runs the work and keeps it safe to stop:

* **Blocks.** The unit of work is a block of about ``scan.block_tiles`` tiles, read as one window. Each block's
  probabilities are written to ``blocks/<scene>-<key>_<k>.npz`` as soon as it is done, atomically; ``<key>``
  fingerprints everything the numbers depend on (scene file, grid, bands, stretch, chip look, models, TTA), so a
  re-run skips exactly the blocks already scored for the same question and the outputs are then built from the
  block files alone: a scan killed half-way and re-run writes the same files as one never interrupted.
* **Where blocks run.** In this process by default (the next block is read in a thread while the models work);
  ``scan.workers`` >= 2 starts a local Dask cluster of that many worker processes, and ``--scheduler ADDRESS``
  sends the blocks to a running ``dask.distributed`` cluster. Each worker process loads the models once (a
  cache per process, keyed by the run's models) and keeps them for every block it is given; the scenes must be
  paths or URLs the workers can read. Results come back to this process, which writes the block files.
* **Bad input** is refused before any work with one line (a scene that is not a regular file, not
  georeferenced, not on the globe, resolution too far from the chips', bands the model cannot use; a malformed
  ``--since`` scan; a ``--scheduler`` address that is not one; an ``--out`` inside a scanned folder); a block
  that cannot be read is skipped, listed in scan.json and the report, and retried by the next run.
* **Outputs as a set.** Everything but ``blocks/`` is written into a staging folder and swapped in whole
  (:func:`amazonmine.core.io.staged_set`): a scan that fails leaves the previous scan's files as they were, and
  files of an earlier scan that this one does not write (``new_sites.geojson`` without ``--since``) go.
* **Empty blocks** (every tile nodata or blank) are recorded in one small file per scene, not a block file
  each: an all-nodata scene writes a few bytes per block, not a file.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from amazonmine.core.data import LABELS, WEATHER_LABELS, site_labels, weather_columns
from amazonmine.core.decisions import OperatingPoint
from amazonmine.core.errors import AmazonmineError
from amazonmine.core.io import staged_set, write_bytes_atomic, write_json_atomic
from amazonmine.scanning.report_page import REPORT_HTML  # one name for the page that score-sites fills too
from amazonmine.scanning.tiling import (
    ChipLook,
    Grid,
    Scene,
    check_scene_file,
    chip_look,
    is_remote,
    local_container,
    open_scene,
    read_block,
    require_regular_file,
    shown,
)

TILES_GEOJSON = "tiles.geojson"
SITES_GEOJSON = "sites.geojson"
NEW_SITES_GEOJSON = "new_sites.geojson"
SCAN_JSON = "scan.json"
BLOCKS_DIR = "blocks"
SCENE_SUFFIXES = (".tif", ".tiff")
MINE_LABELS = ("artisinal_mine", "conventional_mine")
# Bump when a change alters the probabilities a block would hold, so old block files are not reused.
BLOCK_FORMAT = 1


# --- settings ----------------------------------------------------------------------------------------------

@dataclass
class ScanSettings:
    """The ``scan`` config section (with its defaults where an older config lacks a field)."""

    stride: float = 0.5
    labels: list = field(default_factory=list)  # empty: data.site_labels of the model's vocabulary
    min_probability: dict = field(default_factory=dict)
    isolated_min_probability: dict = field(default_factory=dict)
    min_site_ha: float = 0.0
    stretch_percentiles: list = field(default_factory=lambda: [2.0, 98.0])
    stretch_gamma: float = 1.0
    block_tiles: int = 256
    batch_size: int = 0
    max_resolution_ratio: float = 4.0
    workers: int = 0

    @classmethod
    def from_config(cls, cfg) -> "ScanSettings":
        section = getattr(cfg, "scan", None)
        defaults = cls()
        values = {k: getattr(section, k, getattr(defaults, k)) for k in asdict(defaults)}
        return cls(**values)

    def for_model(self, vocabulary) -> "ScanSettings":
        """These settings for a model of ``vocabulary``: an empty ``labels`` becomes the labels that vocabulary maps
        by default (:func:`amazonmine.core.data.site_labels`: the mine labels of the Planet 17, else every non-weather
        label); a label named in scan.* that the model has no output for is refused in one line."""
        vocabulary = list(vocabulary)
        for key, names in (("scan.labels", self.labels), ("scan.min_probability", self.min_probability),
                           ("scan.isolated_min_probability", self.isolated_min_probability)):
            unknown = [str(lab) for lab in names if lab not in vocabulary]
            if unknown:
                raise AmazonmineError(f"{key}: {', '.join(unknown)} not among the model's labels "
                                      f"({', '.join(vocabulary)}); name labels it predicts")
        return replace(self, labels=list(self.labels) or list(site_labels(vocabulary)))


# --- which scenes ------------------------------------------------------------------------------------------

def list_scenes(items) -> list[str]:
    """Scene paths (folders expanded to their .tif/.tiff files, sorted) or URLs, each once, in the given order.
    Local paths are made absolute: Dask workers may run in another folder."""
    found: list[str] = []
    from amazonmine.scanning.stac import is_stac_item, item_scene

    for item in items:
        text = str(item)
        if is_stac_item(text):  # a STAC Item: its visual (else analytic) asset, a URL or a local file
            text = item_scene(text)
        if is_remote(text):
            container = local_container(text)  # a file:// URL or a local archive: the input-path rule applies
            if container is not None:
                require_regular_file(container, SCENE_NEED)
            found.append(text)
            continue
        if _is_folder(text):
            found += _folder_scenes(text)
            continue
        require_regular_file(text, SCENE_NEED)
        found.append(str(Path(text).resolve()))
    if not found:
        raise AmazonmineError("scan: no scene given")
    if len(set(found)) != len(found):
        raise AmazonmineError("scan: the same scene is given twice")
    names = [Path(f).stem for f in found]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise AmazonmineError(f"scan: two scenes share the name {shown(repr(dup[0]))}; outputs are named by scene, "
                              f"rename one")
    return found


SCENE_NEED = "scenes must be GeoTIFF files"


def _is_folder(text: str) -> bool:
    try:
        return stat.S_ISDIR(os.stat(text).st_mode)
    except OSError:  # missing, or a name the system refuses: said by require_regular_file
        return False


def _folder_scenes(folder: str) -> list[str]:
    """The .tif/.tiff files of a folder, sorted. Nothing named like a scene is skipped silently: an entry that
    is not a regular file (a FIFO, a device link, a folder named x.tif) is refused by name. Hidden names are
    not scenes (the temporaries of an interrupted write)."""
    with os.scandir(folder) as entries:
        names = sorted(e.name for e in entries
                       if os.path.splitext(e.name)[1].lower() in SCENE_SUFFIXES and not e.name.startswith("."))
    if not names:
        raise AmazonmineError(f"{shown(folder)}: no GeoTIFF scenes ({', '.join(SCENE_SUFFIXES)}) in this folder")
    scenes = []
    for name in names:
        path = os.path.join(folder, name)
        require_regular_file(path, SCENE_NEED)
        scenes.append(str(Path(path).resolve()))
    return scenes


def _scanned_folders(items) -> list[str]:
    return [os.path.realpath(str(i)) for i in items if not is_remote(str(i)) and _is_folder(str(i))]


def _check_out_outside(out_dir: Path, folders: list[str]) -> None:
    """Refuse an output folder inside (or equal to) a scanned folder: the scan's own rasters (GeoTIFFs) would
    become scenes of the next scan of that folder, and a scanned folder would hold a changing output set."""
    out_real = os.path.realpath(out_dir)
    for folder in folders:
        if out_real == folder or out_real.startswith(folder.rstrip(os.sep) + os.sep):
            raise AmazonmineError(f"--out {shown(out_dir)} lies inside the scanned folder {shown(folder)}: a later "
                                  f"scan of that folder would read this scan's rasters as scenes; choose an output "
                                  f"folder outside it")


SCHEDULER_SCHEMES = ("tcp", "tls", "ucx", "inproc")


def check_scheduler_address(address: str) -> str:
    """A dask.distributed scheduler address (``tcp://``, ``tls://``, ``ucx://`` HOST:PORT, ``inproc://...``,
    or a bare HOST:PORT, which Dask reads as tcp), returned as given; anything else is refused in one line,
    before any work (Dask itself would fail only once the blocks are about to be sent)."""
    text = str(address)
    expected = "expected tcp://HOST:PORT, tls://HOST:PORT, ucx://HOST:PORT, inproc://ADDRESS or HOST:PORT"

    def refused(why: str) -> AmazonmineError:
        return AmazonmineError(f"--scheduler {shown(text)}: {why}; {expected}")

    if not text or not text.isprintable() or any(c.isspace() for c in text):
        raise refused("not an address")
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "tcp", text
    if scheme not in SCHEDULER_SCHEMES:
        raise refused(f"unknown scheme {shown(scheme)}://")
    if scheme == "inproc":
        if not rest:
            raise refused("no address after inproc://")
        return text
    if rest.startswith("["):  # [IPv6]:PORT
        host, _, tail = rest[1:].partition("]")
        port = tail[1:] if tail.startswith(":") else ""
    else:
        host, _, port = rest.rpartition(":")
    if not host or "/" in host or (":" in host and not rest.startswith("[")):
        raise refused("no host")
    if not (port.isdigit() and port.isascii() and 1 <= int(port) <= 65535):
        raise refused("no port number (1-65535)")
    return text


def default_name(items, scenes: list[str]) -> str:
    if len(items) == 1:
        return Path(str(items[0]).rstrip("/")).stem or "scan"
    return f"{Path(scenes[0]).stem}+{len(scenes) - 1}"


# --- the work unit -----------------------------------------------------------------------------------------

@dataclass
class BlockTask:
    """One block of one scene: everything a worker needs, as plain picklable data."""

    scene: Scene
    grid: Grid
    index: int
    block: tuple
    look: ChipLook
    key: str  # the scene's fingerprint

    @property
    def file_name(self) -> str:
        return f"{self.scene.name}-{self.key[:12]}_{self.index:05d}.npz"


@dataclass
class BlockResult:
    index: int
    rows: np.ndarray
    cols: np.ndarray
    probs: np.ndarray  # (n, 17) float32
    nodata: int = 0
    blank: int = 0
    error: str = ""
    key: str = ""

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, rows=self.rows, cols=self.cols, probs=self.probs,
                 meta=np.array(json.dumps({"index": self.index, "nodata": self.nodata, "blank": self.blank,
                                           "key": self.key, "format": BLOCK_FORMAT})))
        return buf.getvalue()

    @classmethod
    def load(cls, path: Path, key: str) -> "BlockResult | None":
        """A persisted block, or None when it is unreadable or was scored for another question."""
        try:
            if not stat.S_ISREG(os.lstat(path).st_mode):  # a FIFO named like a block would block np.load
                return None
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                if meta.get("key") != key or meta.get("format") != BLOCK_FORMAT:
                    return None
                return cls(meta["index"], z["rows"], z["cols"], z["probs"], meta["nodata"], meta["blank"], key=key)
        except (OSError, ValueError, KeyError):
            return None


def read_task(task: BlockTask):
    """The chips of a block, or a one-line problem when the block cannot be read."""
    from rasterio.errors import RasterioError

    try:
        return read_block(task.scene, task.grid, task.block, task.look)
    except (RasterioError, OSError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        col, row, w, h = task.grid.block_window(task.block)
        return f"{shown(task.scene.path)}: block {task.index} (pixels {col},{row} {w}x{h}) unreadable: {shown(reason)}"


def predict_block(task: BlockTask, tiles, predictor) -> BlockResult:
    if isinstance(tiles, str):
        empty = np.zeros(0, np.int32)
        return BlockResult(task.index, empty, empty, np.zeros((0, len(LABELS)), np.float32), error=tiles,
                           key=task.key)
    probs = (predictor.predict(tiles.chips) if len(tiles.chips)
             else np.zeros((0, len(_labels_of(predictor))), np.float32))
    return BlockResult(task.index, tiles.rows, tiles.cols, np.asarray(probs, np.float32), tiles.nodata,
                       tiles.blank, key=task.key)


# --- one predictor per worker process ------------------------------------------------------------------------

_PREDICTORS: dict = {}
LOADS = {"count": 0}  # how many times this process loaded models (tests check: once per worker)


def worker_predictor(cfg, models_key: str, bundle: str | None = None):
    """The run's (or the bundle's) Predictor, loaded once per process and kept for every later block of the
    same models."""
    predictor = _PREDICTORS.get(models_key)
    if predictor is None:
        from amazonmine.neural.predictor import Predictor

        scan_batch = ScanSettings.from_config(cfg).batch_size or None
        predictor = (Predictor.from_bundle(bundle, batch_size=scan_batch) if bundle
                     else Predictor.from_run(cfg, batch_size=scan_batch))
        _PREDICTORS.clear()  # one run at a time per worker: the previous run's models go
        _PREDICTORS[models_key] = predictor
        LOADS["count"] += 1
    return predictor


def score_remote(task: BlockTask, cfg, models_key: str, bundle: str | None = None) -> BlockResult:
    """A Dask task: read a block and score it with this worker's predictor."""
    return predict_block(task, read_task(task), worker_predictor(cfg, models_key, bundle))


# --- fingerprints ------------------------------------------------------------------------------------------

def _file_identity(path: str) -> dict:
    if "://" in path or path.startswith("/vsi"):
        return {"path": path}
    st = os.stat(path)
    return {"path": path, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def models_fingerprint(predictor) -> str:
    parts = {"models": [_file_identity(str(p)) for p in predictor.model_paths], "tta": predictor.tta,
             "image_size": predictor.image_size, "channels": predictor.channels,
             "dehaze": repr(predictor.dehaze)}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def scene_fingerprint(scene: Scene, grid: Grid, look: ChipLook, models_key: str, block_tiles: int) -> str:
    parts = {"scene": _file_identity(scene.path), "bands": scene.bands, "stretch": scene.stretch,
             "gamma": scene.stretch_gamma,
             "grid": grid.to_dict(), "look": look.to_dict(), "models": models_key, "block_tiles": block_tiles,
             "format": BLOCK_FORMAT}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


# --- the operating point -----------------------------------------------------------------------------------

@dataclass
class ScanPoints:
    """The operating point of each label scan maps into sites (threshold, the stricter one for a lone tile, their
    source) and the least area of a site; ``thresholds``, ``isolated`` and ``sources`` read them by label."""

    points: dict[str, OperatingPoint]
    min_site_ha: float
    columns: dict[str, int] = field(default_factory=dict)  # each label's column in the model's probabilities

    @property
    def thresholds(self) -> dict[str, float]:
        return {label: p.threshold for label, p in self.points.items()}

    @property
    def isolated(self) -> dict[str, float]:
        return {label: p.isolated for label, p in self.points.items()}

    @property
    def sources(self) -> dict[str, str]:
        return {label: p.source for label, p in self.points.items()}

    def to_dict(self) -> dict:
        return {"thresholds": self.thresholds, "isolated": self.isolated, "sources": self.sources,
                "min_site_ha": self.min_site_ha}


def model_summary(predictor, cfg) -> dict:
    """What the report says about the model that scored the tiles: a bundle's name, version, card headline and
    card path, or the run folder and its fold models."""
    models = getattr(predictor, "model_paths", None) or []
    bundle = getattr(predictor, "bundle", None)
    if bundle is None:
        return {"kind": "run", "name": str(cfg.run.dir), "models": len(models), "headline": "", "card": ""}
    from amazonmine.core.bundle import OWN_LABELS, open_bundle

    opened = open_bundle(bundle, labels=OWN_LABELS)
    return {"kind": "bundle", "name": f"{opened.name} v{opened.version}", "models": len(models),
            "headline": opened.headline, "card": str(opened.card)}


def scan_points(predictor, settings: ScanSettings, fallback: float) -> ScanPoints:
    """Each mapped label's threshold: scan.min_probability's, else the run's tuned one, else ``fallback``."""
    base = _run_thresholds(predictor)
    column = {name: j for j, name in enumerate(_labels_of(predictor))}
    points = {}
    for label in settings.labels:
        j = column[label]
        if label in settings.min_probability:
            threshold, source = float(settings.min_probability[label]), "scan.min_probability"
        elif base is not None:
            threshold, source = float(base[j]), "thresholds.json"
        else:
            threshold, source = float(fallback), "tune.start (the run has no thresholds.json)"
        iso = settings.isolated_min_probability.get(label)
        points[label] = OperatingPoint(threshold, isolated=max(threshold, float(iso)) if iso is not None else threshold,
                                       source=source)
    return ScanPoints(points, float(settings.min_site_ha), {label: column[label] for label in points})


def _run_thresholds(predictor):
    t = getattr(predictor, "thresholds", None)
    if t is None:
        return None
    t = np.asarray(getattr(t, "thresholds", t), dtype=np.float64)
    return t if t.shape == (len(_labels_of(predictor)),) else None


def _labels_of(predictor) -> list[str]:
    """The model's vocabulary: one probability column per label, in this order."""
    return list(getattr(predictor, "labels", LABELS))


def decide(predictor, probs: np.ndarray, point: ScanPoints, fallback: float) -> np.ndarray:
    """The run's decisions (predict's rule), with scan's own thresholds for the labels it maps into sites."""
    from amazonmine.core.decisions import decode

    labels = _labels_of(predictor)
    if len(probs) == 0:
        return np.zeros((0, len(labels)), bool)
    if getattr(predictor, "thresholds", None) is not None:
        decided = np.asarray(predictor.decide(probs), bool).copy()
    else:
        decided = decode(probs, np.full(len(labels), fallback), bool(predictor.weather_decoding), labels)
    # The weather rules hold only for a vocabulary with the four weather labels (data.weather_columns).
    grouped = bool(predictor.weather_decoding) and weather_columns(labels) is not None
    cloudy_decided = decided[:, labels.index("cloudy")] if grouped else np.zeros(len(probs), bool)
    for label, threshold in point.thresholds.items():
        j = labels.index(label)
        decided[:, j] = probs[:, j] >= threshold
        if label not in WEATHER_LABELS:
            decided[cloudy_decided, j] = False  # weather decoding: a cloudy tile has no land label
    return decided


# --- the stage ---------------------------------------------------------------------------------------------

@dataclass
class SceneScan:
    """One scene's work and, once done, its scored tiles."""

    scene: Scene
    grid: Grid
    key: str
    tasks: list
    results: dict = field(default_factory=dict)  # block index -> BlockResult
    failed: list = field(default_factory=list)

    def assembled(self, n_labels: int = len(LABELS)):
        """(rows, cols, probabilities (n, n_labels)) of every scored tile, in block order."""
        ok = [self.results[k] for k in sorted(self.results) if len(self.results[k].rows)]
        if not ok:
            empty = np.zeros(0, np.int32)
            return empty, empty, np.zeros((0, n_labels), np.float32)
        return (np.concatenate([r.rows for r in ok]), np.concatenate([r.cols for r in ok]),
                np.concatenate([r.probs for r in ok]))

    @property
    def empty_file_name(self) -> str:
        """This scene's record of empty blocks (:class:`EmptyBlocks`), beside its block files."""
        return f"{self.scene.name}-{self.key[:12]}{EmptyBlocks.SUFFIX}"

    @property
    def nodata(self) -> int:
        return sum(r.nodata for r in self.results.values())

    @property
    def blank(self) -> int:
        return sum(r.blank for r in self.results.values())


@dataclass
class ScanSummary:
    out_dir: Path
    scenes: int
    tiles: int
    nodata: int
    blank: int
    sites: dict
    failed_blocks: list
    resumed_blocks: int
    seconds: float
    new_sites: int | None = None
    note: str = ""

    def headline(self) -> str:
        rate = self.tiles / self.seconds if self.seconds else 0.0
        found = ", ".join(f"{label} {n['count']} ({n['area_ha']:.1f} ha)" for label, n in self.sites.items())
        lines = [f"scanned {self.tiles} tiles of {self.scenes} scene(s) ({rate:.0f} tiles/s"
                 + (f"; {self.resumed_blocks} block(s) kept from an earlier run" if self.resumed_blocks else "")
                 + f") -> {self.out_dir}",
                 f"sites: {found or 'none'}; skipped {self.nodata} nodata and {self.blank} blank tile(s)"]
        if self.new_sites is not None:
            lines.append(f"new since the previous scan: {self.new_sites} site(s) or growth -> {NEW_SITES_GEOJSON}")
        if self.note:
            lines.append(self.note)
        if self.failed_blocks:
            lines.append(f"{len(self.failed_blocks)} block(s) unreadable and skipped (listed in {SCAN_JSON}); "
                         f"first: {self.failed_blocks[0]}")
        return "\n".join(lines)


@dataclass
class ScanPlan:
    """Everything checked and decided before any block is read."""

    cfg: object
    settings: ScanSettings
    out_dir: Path
    predictor: object
    look: ChipLook
    models_key: str
    ground_m: float
    jobs: list
    since: Path | None = None
    previous_sites: list | None = None
    out_format: str = "geojson"  # tiles, sites and new sites: geojson, gpkg or fgb (amazonmine.scanning.gisfiles)

    @property
    def blocks_dir(self) -> Path:
        return self.out_dir / BLOCKS_DIR


def plan_scan(cfg, scenes, out: Path | None = None, since: Path | None = None, predictor=None,
              out_format: str = "geojson") -> ScanPlan:
    """Check the scenes, the run and the earlier scan, and cut every scene into blocks: a bad input fails here,
    in one line, before anything is read or written."""
    from amazonmine.scanning.gisfiles import vector_format

    settings = ScanSettings.from_config(cfg)
    out_format = vector_format(out_format)
    paths = list_scenes(scenes)
    if out is None:
        from amazonmine.core.runfolder import RunFolder

        out = RunFolder.from_config(cfg).scans_dir / default_name(scenes, paths)
    out_dir = Path(out)
    _check_out_outside(out_dir, _scanned_folders(scenes))
    previous = _previous_sites(Path(since)) if since is not None else None
    for path in paths:  # the model-free checks first: a wrong file is refused before the models load
        check_scene_file(path)
    if predictor is None:
        from amazonmine.neural.predictor import Predictor

        predictor = Predictor.from_run(cfg, batch_size=settings.batch_size or None)
    settings = settings.for_model(_labels_of(predictor))  # the labels mapped: named ones checked, or the default
    models_key = models_fingerprint(predictor)
    # A bundle carries the look its training chips had; a run reads it from one of its training chips.
    recorded = getattr(predictor, "chip_look", None)
    look = (ChipLook(**recorded) if recorded else
            chip_look(predictor.image_format, predictor.chip_size or predictor.image_size, _sample_chip(cfg)))
    if predictor.channels != (4 if look.kind == "tif" else 3):
        raise AmazonmineError(f"{cfg.run.dir}: the models take {predictor.channels} bands but the run's chips are "
                              f"{predictor.image_format}")
    ground = float(getattr(predictor, "chip_ground_m", 0) or cfg.data.chip_ground_m)
    jobs = []
    for path in paths:
        scene = open_scene(path, look, ground, settings.max_resolution_ratio, tuple(settings.stretch_percentiles),
                           settings.stretch_gamma)
        grid = Grid.for_scene(scene, ground, settings.stride)
        key = scene_fingerprint(scene, grid, look, models_key, settings.block_tiles)
        tasks = [BlockTask(scene, grid, k, block, look, key)
                 for k, block in enumerate(grid.blocks(settings.block_tiles))]
        jobs.append(SceneScan(scene, grid, key, tasks))
    return ScanPlan(cfg, settings, out_dir, predictor, look, models_key, ground, jobs, since, previous, out_format)


def run_scan(cfg, scenes, out: Path | None = None, scheduler: str | None = None, since: Path | None = None,
             progress: bool = True, predictor=None, out_format: str = "geojson") -> ScanSummary:
    """Scan ``scenes`` (files, folders, URLs or STAC Items) with the run's models; see the module docstring for
    outputs. ``out_format`` (geojson, gpkg, fgb) is the format of the tiles, sites and new sites.

    ``predictor`` (a loaded :class:`amazonmine.neural.predictor.Predictor`) skips loading the run's models here.
    """
    from amazonmine.core.io import exclusive_lock

    began = time.perf_counter()
    if scheduler is not None:
        scheduler = check_scheduler_address(scheduler)
    plan = plan_scan(cfg, scenes, out, since, predictor, out_format)
    plan.blocks_dir.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(plan.out_dir / ".lock", "amazonmine scan"):  # two scans into one folder would mix
        resumed = _score_blocks(plan, scheduler, progress)
        # The outputs are written beside the previous scan's and swapped in as a set once all are written.
        with staged_set(plan.out_dir, "scan", legacy=_earlier_outputs(plan.out_dir),
                        keep=(BLOCKS_DIR, ".lock")) as stage:
            summary = _write_everything(replace(plan, out_dir=stage), resumed, began)
        summary.out_dir = plan.out_dir
        return summary


def _earlier_outputs(out_dir: Path) -> tuple[str, ...]:
    """What a scan from before the folder's output list existed wrote: the fixed names, and the rasters its
    scan.json lists (read only if it is a regular file; anything unexpected in it is ignored)."""
    names = [TILES_GEOJSON, SITES_GEOJSON, NEW_SITES_GEOJSON, REPORT_HTML, SCAN_JSON]
    record = out_dir / SCAN_JSON
    try:
        if stat.S_ISREG(os.stat(record).st_mode) and os.stat(record).st_size < 64 << 20:
            rasters = json.loads(record.read_text(encoding="utf-8")).get("outputs", {}).get("rasters", [])
            names += [r for r in rasters if isinstance(r, str) and r.endswith("_probability.tif")]
    except (OSError, ValueError, AttributeError, TypeError, RecursionError):
        pass
    return tuple(names)


def _score_blocks(plan: ScanPlan, scheduler: str | None, progress: bool) -> int:
    """Score every block not already persisted for the same question; returns how many were kept."""
    pending, resumed = [], 0
    logs = {id(job): EmptyBlocks(plan.blocks_dir / job.empty_file_name, job.key) for job in plan.jobs}
    for job in plan.jobs:
        empty = logs[id(job)].read()
        for task in job.tasks:
            if task.index in empty:
                job.results[task.index] = _empty_result(task, *empty[task.index])
                resumed += 1
                continue
            kept = BlockResult.load(plan.blocks_dir / task.file_name, job.key)
            if kept is not None:
                job.results[task.index] = kept
                resumed += 1
            else:
                pending.append((job, task))

    def finished(job: SceneScan, task: BlockTask, result: BlockResult) -> None:
        if result.error:
            job.failed.append(result.error)
            return
        if len(result.rows) == 0:  # nothing scored: a record in the scene's log, not a file
            logs[id(job)].add(task.index, result.nodata, result.blank)
            result = _empty_result(task, result.nodata, result.blank)
        else:
            write_bytes_atomic(plan.blocks_dir / task.file_name, result.to_bytes())
        job.results[task.index] = result

    try:
        if pending:
            if scheduler or plan.settings.workers >= 2:
                bundle = getattr(plan.predictor, "bundle", None)
                _run_on_dask(plan.cfg, pending, finished, plan.models_key, scheduler, plan.settings.workers,
                             progress, str(bundle) if bundle else None)
            else:
                _run_here(pending, finished, plan.predictor, progress)
    finally:
        for log in logs.values():
            log.close()
    current = {task.file_name for job in plan.jobs for task in job.tasks} | {job.empty_file_name for job in plan.jobs}
    for stale in plan.blocks_dir.iterdir():  # blocks of an earlier question (other scene file, grid, models)
        if stale.suffix in (".npz", EmptyBlocks.SUFFIX) and stale.name not in current:
            stale.unlink()
    return resumed


# One set of empty arrays shared by every empty block: an all-nodata scene has many (250,000 in a 200,000 px one).
_NO_TILES = np.zeros(0, np.int32)
_NO_PROBS = np.zeros((0, len(LABELS)), np.float32)


def _empty_result(task: BlockTask, nodata: int, blank: int) -> BlockResult:
    return BlockResult(task.index, _NO_TILES, _NO_TILES, _NO_PROBS, int(nodata), int(blank), key=task.key)


class EmptyBlocks:
    """The blocks of one scene that had no tile to score (every tile nodata or blank), kept for resuming in one
    append-only file instead of a block file each, which for an all-nodata scene was thousands of files saying
    nothing was there. A record is (block index, nodata tiles, blank tiles), fixed-size, appended once the
    block is done; the header names the scene's fingerprint, so a file of another question is not read. A
    record cut short by a kill is dropped, and cut off before the next append."""

    SUFFIX = ".empty"
    RECORD = struct.Struct("<qqq")

    def __init__(self, path: Path, key: str):
        self.path = path
        self.header = f"amazonmine empty blocks format {BLOCK_FORMAT} key {key}\n".encode()
        self.whole_bytes = 0  # header and whole records of the file on disk; 0: no usable file
        self.fd: int | None = None

    def read(self) -> dict[int, tuple[int, int]]:
        """Block index -> (nodata, blank) of the blocks recorded for this question."""
        try:
            if not stat.S_ISREG(os.lstat(self.path).st_mode):
                return {}
            data = self.path.read_bytes()
        except OSError:
            return {}
        if not data.startswith(self.header):
            return {}
        body = len(data) - len(self.header)
        self.whole_bytes = len(self.header) + body - body % self.RECORD.size
        return {index: (nodata, blank)
                for index, nodata, blank in self.RECORD.iter_unpack(data[len(self.header):self.whole_bytes])}

    def add(self, index: int, nodata: int, blank: int) -> None:
        if self.fd is None:
            if not self.whole_bytes:
                write_bytes_atomic(self.path, self.header)  # a new file, or one of another question replaced
                self.whole_bytes = len(self.header)
            self.fd = os.open(self.path, os.O_WRONLY)
            os.ftruncate(self.fd, self.whole_bytes)
            os.lseek(self.fd, 0, os.SEEK_END)
        os.write(self.fd, self.RECORD.pack(index, nodata, blank))

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _write_everything(plan: ScanPlan, resumed: int, began: float) -> ScanSummary:
    """Every output, from the persisted blocks' numbers alone (so a resumed scan writes the same files), into
    ``plan.out_dir``: the staging folder that :func:`run_scan` swaps in as a set."""
    from amazonmine.scanning.gisfiles import vector_name, write_features, write_styles
    from amazonmine.scanning.report_page import ScanReport, write_report

    jobs, cfg, settings = plan.jobs, plan.cfg, plan.settings
    failed = [msg for job in jobs for msg in job.failed]
    if not any(job.results for job in jobs):
        raise AmazonmineError(f"scan: no block could be read; first problem: {failed[0]}" if failed
                              else "scan: nothing to scan")
    point = scan_points(plan.predictor, settings, cfg.tune.start)
    outputs = _write_outputs(plan.out_dir, jobs, plan.predictor, point, settings, cfg.tune.start, plan.out_format)
    new_count = fresh = None
    if plan.since is not None:
        from amazonmine.scanning.sites import new_since

        # Half a stride cell: less than any tile adds, more than the slivers of a grid shifted between scans.
        min_growth = 0.5 * (plan.ground_m * settings.stride) ** 2 / 1e4
        fresh = new_since(outputs["site_features"], plan.previous_sites, min_growth)
        outputs["files"]["new_sites"] = vector_name("new_sites", plan.out_format)
        new_count = write_features(plan.out_dir / outputs["files"]["new_sites"], fresh, "new_sites", plan.out_format)
    outputs["styles"] = write_styles(plan.out_dir, settings.labels, point.thresholds, outputs["rasters"],
                                     plan.since is not None)
    counts = {label: {"count": len(s), "area_ha": float(sum(x.area_ha for x in s))}
              for label, s in outputs["sites"].items()}
    write_report(plan.out_dir / REPORT_HTML, ScanReport(jobs, outputs["sites"], point, plan.look, failed,
                                                        _scene_counts(jobs), fresh, model_summary(plan.predictor, cfg)))
    seconds = time.perf_counter() - began
    write_json_atomic(plan.out_dir / SCAN_JSON, _scan_record(plan, point, failed, counts, outputs, new_count,
                                                             resumed, seconds))
    tiles = sum(len(r.rows) for job in jobs for r in job.results.values())
    return ScanSummary(plan.out_dir, len(jobs), tiles, sum(j.nodata for j in jobs), sum(j.blank for j in jobs),
                       counts, failed, resumed, seconds, new_count)


def _sample_chip(cfg) -> Path | None:
    """One raw training chip of the run, whose JPEG header says how the training chips were stored."""
    from amazonmine.core.data import PlanetLayout

    return PlanetLayout.from_config(cfg.data).sample_chip()


def _previous_sites(since: Path) -> list[dict]:
    """The sites of an earlier scan, every feature checked now: a malformed one would otherwise surface as a
    traceback only after the whole scan."""
    from amazonmine.scanning.gisfiles import find_vector, read_features

    path = (find_vector(since, "sites") or since / SITES_GEOJSON) if _is_folder(str(since)) else since
    if not os.path.lexists(path):
        raise AmazonmineError(f"{shown(since)}: no {SITES_GEOJSON} of an earlier scan there")
    require_regular_file(str(path), f"--since takes an earlier scan's folder or its {SITES_GEOJSON}")
    try:
        features = read_features(path)  # GeoJSON, or the GeoPackage / FlatGeobuf of a scan --format
    except RecursionError:
        raise AmazonmineError(f"{shown(path)}: cannot read GeoJSON (nested too deeply)") from None
    if not isinstance(features, list):
        raise AmazonmineError(f"{shown(path)}: 'features' is a {type(features).__name__}, not a list of sites")
    return [_checked_site(f, f"{shown(path)}: feature {k}") for k, f in enumerate(features)]


def _checked_site(feature: object, where: str) -> dict:
    """One site of an earlier scan as :func:`amazonmine.scanning.sites.new_since` reads it, or a one-line refusal."""
    import math

    import shapely
    from shapely.errors import ShapelyError
    from shapely.geometry import shape

    if not isinstance(feature, dict):
        raise AmazonmineError(f"{where} is a {type(feature).__name__}, not a GeoJSON Feature")
    props = feature.get("properties")
    if not isinstance(props, dict):
        raise AmazonmineError(f"{where} has no properties object (a scan's sites carry label, site_id, area_ha)")
    if not isinstance(props.get("label"), str):
        raise AmazonmineError(f"{where} has no label (a scan's sites carry the mine label they were found for)")
    geometry = feature.get("geometry")
    kind = geometry.get("type") if isinstance(geometry, dict) else None
    if kind not in ("Polygon", "MultiPolygon"):
        raise AmazonmineError(f"{where}: its geometry is {shown(kind or type(geometry).__name__)}, not a Polygon or "
                              f"MultiPolygon (a scan's sites are areas)")
    try:
        geom = shape(geometry)
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, ShapelyError) as exc:
        raise AmazonmineError(f"{where}: its coordinates are not a polygon's ({shown(exc)})") from None
    bounds = geom.bounds
    if geom.is_empty or not all(math.isfinite(b) for b in bounds):
        raise AmazonmineError(f"{where}: an empty geometry or one without finite coordinates")
    if bounds[0] < -180 or bounds[2] > 180 or bounds[1] < -90 or bounds[3] > 90:
        raise AmazonmineError(f"{where}: coordinates outside longitude -180..180, latitude -90..90 (a scan's sites "
                              f"are lon/lat, RFC 7946)")
    if not geom.is_valid:
        raise AmazonmineError(f"{where}: not a valid polygon ({shown(shapely.is_valid_reason(geom))})")
    return {"type": "Feature", "geometry": geometry, "properties": props}


def _run_here(pending, finished, predictor, progress: bool) -> None:
    """In this process: block k+1 is read in a thread while the models score block k."""
    from amazonmine.core.logs import progress_bar

    with ThreadPoolExecutor(max_workers=1) as pool, \
            progress_bar(total=len(pending), desc="scan", unit="block", enabled=progress) as bar:
        ahead = pool.submit(read_task, pending[0][1])
        for i, (job, task) in enumerate(pending):
            tiles = ahead.result()
            if i + 1 < len(pending):
                ahead = pool.submit(read_task, pending[i + 1][1])
            finished(job, task, predict_block(task, tiles, predictor))
            bar.update(1)


def _run_on_dask(cfg, pending, finished, models_key: str, scheduler: str | None, workers: int,
                 progress: bool, bundle: str | None = None) -> None:
    """Blocks as Dask tasks, on a running cluster (``scheduler``) or a local one of ``workers`` processes; each
    result is persisted here as soon as it arrives."""
    from distributed import Client, LocalCluster, as_completed

    from amazonmine.core.logs import progress_bar

    cluster = None
    try:
        if scheduler:
            try:
                client = Client(scheduler, timeout="30s")
            except (OSError, TimeoutError) as exc:
                raise AmazonmineError(f"--scheduler {scheduler}: cannot connect ({exc})") from None
        else:
            # Each worker gets its share of the cores for TensorFlow: N processes each spreading over every core
            # would only fight. Measured on 2 cores (bench_scan.py): 2 workers x 1 thread scored 156 tiles/s,
            # 1 worker x 2 threads 87, as a worker reads its next block while the other one computes.
            threads = max(1, (os.cpu_count() or 1) // workers)
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                                   dashboard_address=None,
                                   env={"TF_NUM_INTRAOP_THREADS": str(threads),
                                        "TF_CPP_MIN_LOG_LEVEL": "3"})
            client = Client(cluster)
        with client:
            futures = {client.submit(score_remote, task, cfg, models_key, bundle, pure=False,
                                     key=f"scan-{task.key[:12]}-{task.index}"): (job, task) for job, task in pending}
            with progress_bar(total=len(pending), desc="scan", unit="block", enabled=progress) as bar:
                for fut in as_completed(futures):
                    job, task = futures[fut]
                    finished(job, task, fut.result())
                    fut.release()
                    bar.update(1)
    finally:
        if cluster is not None:
            cluster.close()


# --- outputs -----------------------------------------------------------------------------------------------

def _scene_counts(jobs) -> list[dict]:
    return [{"scene": j.scene.name, "tiles_in_grid": j.grid.n_tiles,
             "scored": int(sum(len(r.rows) for r in j.results.values())), "nodata": j.nodata, "blank": j.blank,
             "failed_blocks": len(j.failed)} for j in jobs]


TILE_CHUNK = 4096  # tiles turned into polygons at a time while tiles.geojson is written


def _write_outputs(out_dir: Path, jobs, predictor, point: ScanPoints, settings: ScanSettings,
                   fallback: float, out_format: str = "geojson") -> dict:
    """tiles.geojson (streamed, a chunk of tiles at a time), the probability rasters and sites.geojson (or the
    tiles and sites in ``out_format``: :mod:`amazonmine.scanning.gisfiles`)."""
    from amazonmine.scanning.gisfiles import vector_name, write_features
    from amazonmine.scanning.sites import dissolve, feature, ring_geometry, tile_polygons, tile_rings

    scene_order = [j.scene.name for j in jobs]
    labels = _labels_of(predictor)
    positives: dict[str, tuple[list, list, list]] = {label: ([], [], []) for label in settings.labels}
    scored = []
    rasters = []
    for job in jobs:
        rows, cols, probs = job.assembled(len(labels))
        decided = decide(predictor, probs, point, fallback)
        scored.append((job, rows, cols, probs, decided))
        for label in settings.labels:
            j = labels.index(label)
            hit = np.flatnonzero(decided[:, j])
            polys, ps, scenes = positives[label]
            polys += tile_polygons(job.scene, job.grid, rows[hit], cols[hit]) if len(hit) else []
            ps += probs[hit, j].tolist()
            scenes += [job.scene.name] * len(hit)
        rasters += _write_probability_rasters(out_dir, job, rows, cols, probs, settings.labels, len(jobs) > 1,
                                              labels)

    def tile_features():
        for job, rows, cols, probs, decided in scored:
            for start in range(0, len(rows), TILE_CHUNK):
                part = slice(start, start + TILE_CHUNK)
                for i, ring in enumerate(tile_rings(job.scene, job.grid, rows[part], cols[part]), start=start):
                    props = {"scene": job.scene.name, "row": int(rows[i]), "col": int(cols[i])}
                    props.update({f"prob_{label}": round(float(probs[i, j]), 6) for j, label in enumerate(labels)})
                    props.update({f"has_{label}": bool(decided[i, j]) for j, label in enumerate(labels)})
                    yield {"type": "Feature", "geometry": ring_geometry(ring), "properties": props}

    files = {"tiles": vector_name("tiles", out_format), "sites": vector_name("sites", out_format)}
    n_tiles = write_features(out_dir / files["tiles"], tile_features(), "tiles", out_format)
    sites, dropped, site_features = {}, {}, []
    for label in settings.labels:
        polys, ps, scenes = positives[label]
        found, dropped[label] = dissolve(label, polys, np.asarray(ps, np.float64), scenes, scene_order,
                                         point.isolated[label], point.min_site_ha)
        sites[label] = found
        site_features += [feature(s.geometry, s.properties(point.thresholds[label], point.isolated[label],
                                                           point.sources[label])) for s in found]
    site_features.sort(key=lambda f: -f["properties"]["max_probability"])
    write_features(out_dir / files["sites"], site_features, "sites", out_format)
    return {"sites": sites, "dropped": dropped, "site_features": site_features, "rasters": rasters,
            "tiles": n_tiles, "files": files}


def _write_probability_rasters(out_dir: Path, job: SceneScan, rows, cols, probs, labels, several: bool,
                               vocabulary=LABELS) -> list:
    """One float32 COG per label of ``labels`` on the scene's tile grid: NaN where no tile was scored;
    ``vocabulary`` names the columns of ``probs``."""
    import rasterio
    from rasterio.io import MemoryFile
    from rasterio.shutil import copy as rio_copy

    from amazonmine.core.io import atomic_path

    grid, scene = job.grid, job.scene
    written = []
    for label in labels:
        j = list(vocabulary).index(label)
        cells = np.full((grid.rows, grid.cols), np.nan, np.float32)
        cells[rows, cols] = probs[:, j]
        name = f"{scene.name}_{label}_probability.tif" if several else f"{label}_probability.tif"
        profile = dict(driver="GTiff", width=grid.cols, height=grid.rows, count=1, dtype="float32",
                       crs=rasterio.crs.CRS.from_wkt(scene.crs_wkt), transform=grid.raster_transform(scene),
                       nodata=float("nan"))
        with MemoryFile() as mem:
            with mem.open(**profile) as ds:
                ds.write(cells, 1)
                ds.set_band_description(1, f"probability of {label}")
                ds.update_tags(LABEL=label, SCENE=scene.name, TILE_PX=f"{grid.tile_w}x{grid.tile_h}",
                               STRIDE_PX=f"{grid.stride_x}x{grid.stride_y}")
            with atomic_path(out_dir / name) as tmp:
                rio_copy(mem.name, str(tmp), driver="COG", COMPRESS="DEFLATE", BLOCKSIZE=256)
        written.append(name)
    return written


def _versions() -> dict:
    """Versions of what the numbers depend on, from package metadata (importing TensorFlow here would cost
    seconds when the models ran elsewhere)."""
    import platform
    from importlib import metadata

    import rasterio

    from amazonmine import __version__

    found = {"amazonmine": __version__, "python": platform.python_version(), "gdal": rasterio.__gdal_version__}
    for dist in ("numpy", "rasterio", "shapely", "pyproj", "tensorflow", "keras", "opencv-python-headless",
                 "pillow", "dask", "distributed"):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return found


def _scan_record(plan: ScanPlan, point, failed, counts, outputs, new_count, resumed, seconds) -> dict:
    p = plan.predictor
    return {
        "scenes": [{**j.scene.to_dict(), "grid": j.grid.to_dict(),
                    "tile_ground_m": [j.grid.tile_w * j.scene.res_m[0], j.grid.tile_h * j.scene.res_m[1]],
                    "blocks": len(j.tasks), "fingerprint": j.key} for j in plan.jobs],
        "counts": _scene_counts(plan.jobs),
        "failed_blocks": failed,
        "operating_point": point.to_dict(),
        "sites": counts,
        "sites_dropped": outputs["dropped"],
        "chip_look": plan.look.to_dict(),
        "chip_ground_m": plan.ground_m,
        "models": [str(m) for m in p.model_paths],
        "tta": p.tta,
        "image_size": p.image_size,
        "dehaze": repr(p.dehaze) if p.dehaze is not None else None,
        "weather_decoding": bool(p.weather_decoding),
        "labels": _labels_of(p),
        "mapped_labels": list(plan.settings.labels),
        "outputs": {"tiles": outputs["files"]["tiles"], "sites": outputs["files"]["sites"],
                    "rasters": outputs["rasters"], "report": REPORT_HTML,
                    "new_sites": outputs["files"].get("new_sites"), "styles": outputs["styles"]},
        "since": str(plan.since) if plan.since is not None else None,
        "new_sites": new_count,
        "resumed_blocks": resumed,
        "seconds": round(seconds, 2),
        "versions": _versions(),
        "config": plan.cfg.to_dict(),
    }


def scan_chip_mosaic(cfg, chip_dir: Path, labels_csv: Path, work: Path, progress: bool = False) -> ScanSummary:
    """Mosaic labelled chips into a scene in ``work`` (``amazonmine.scanning.mosaic``), scan it with the run (outputs in
    ``<run.dir>/scans/scene``), and say how many of the mine chips ended under a site: the demo's last step, on
    chips no fold trained on."""
    import shapely
    from shapely.geometry import shape

    from amazonmine.scanning.mosaic import mosaic_folder

    names = sorted(p.stem for p in Path(chip_dir).glob("*.jpg"))
    side = int(np.ceil(np.sqrt(len(names))))
    made = mosaic_folder(chip_dir, labels_csv, Path(work) / "scene.tif", cols=side, rows=-(-len(names) // side),
                         ground_m=float(cfg.data.chip_ground_m), names=names)
    summary = run_scan(cfg, [made.tif], progress=progress)
    features = json.loads((summary.out_dir / SITES_GEOJSON).read_text())["features"]
    chips = json.loads(made.chips_geojson.read_text())["features"]
    found = []
    for label in ScanSettings.from_config(cfg).for_model(cfg.data.labels).labels:
        sites = shapely.union_all([shape(f["geometry"]) for f in features if f["properties"]["label"] == label])
        mines = [shape(c["geometry"]) for c in chips if label in c["properties"]["tags"].split()]
        hit = sum(sites.intersection(m).area > 0.25 * m.area for m in mines)
        found.append(f"{label} {hit} of {len(mines)}")
    summary.note = f"mine chips of the scene under a site: {', '.join(found)} (scene: {made.tif})"
    return summary

