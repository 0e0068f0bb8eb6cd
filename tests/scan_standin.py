"""What the scan-output tests share: a stand-in model, scenes with known cells, a scan, a Range-capable local web
server, and headless Chromium. The model is not under test in them (the outputs around it are), so nothing is
trained and TensorFlow is not imported."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
MINE = "artisinal_mine"


class BrightnessModel:
    """A stand-in for a run's Predictor with what scan reads of one: every label's probability is the chip's mean
    brightness, so tiles differ and the brighter ones become sites."""

    image_format = "jpg"
    chip_size = 32
    image_size = 32
    channels = 3
    chip_ground_m = 768.0
    model_paths: list = []
    tta = 1
    dehaze = None
    thresholds = None
    weather_decoding = False

    def predict(self, chips, dehazed=False):
        mean = chips.reshape(len(chips), -1).mean(axis=1) / 255.0
        return np.repeat(mean[:, None], 17, axis=1).astype(np.float32)


def synthetic_scene(folder: Path, name: str = "synth_scene"):
    """A 5x4-cell mosaic of painted 32-px chips (24 m pixels) with 2 nodata cells, and its chip table."""
    from amazonmine.stages.synth import make_synthetic_scene

    return make_synthetic_scene(folder, cols=5, rows=4, size=32, seed=5, name=name)


def real_scene(folder: Path, cols: int = 4, rows: int = 3, empty: int = 2):
    """A mosaic of real 256-px Planet chips (3 m pixels; the four mine chips first) with ``empty`` nodata cells,
    or a skip when the real chips are not here."""
    real = SHARED / "planet_real_256"
    if not (real / "train_v2.csv").is_file():
        pytest.skip(f"real Planet 256-px chips not found at {real} (provided in ../shared/ of the project checkout)")
    import pandas as pd

    from amazonmine.scanning.mosaic import PLANET_ATTRIBUTION, mosaic_folder

    frame = pd.read_csv(real / "train_v2.csv", dtype=str, keep_default_na=False)
    mines = frame[frame["tags"].str.contains("mine")]["image_name"].tolist()
    others = frame[~frame["tags"].str.contains("mine")]["image_name"].tolist()
    names = (mines + others)[: cols * rows - empty]
    return mosaic_folder(real / "train-jpg", real / "train_v2.csv", Path(folder) / "real_scene.tif", cols, rows,
                         ground_m=768.0, names=names, attribution=PLANET_ATTRIBUTION)


def scan_config(tmp_path: Path, *extra):
    from amazonmine.core.config import load_config

    return load_config(None, [f"run.dir={tmp_path / 'run'}", f"data.root={tmp_path / 'no-data'}",
                              "data.chip_size=32", "scan.stride=1.0", *extra])


def scan(tmp_path: Path, scenes, out: Path, *extra, **kwargs):
    from amazonmine.stages.scan import run_scan

    return run_scan(scan_config(tmp_path, *extra), [str(s) for s in scenes], out=out, progress=False,
                    predictor=BrightnessModel(), **kwargs)


def median_threshold(tmp_path: Path, scene) -> float:
    """A threshold half the tiles of ``scene`` clear (the stand-in's probabilities are its brightness)."""
    scan(tmp_path, [scene], tmp_path / "probe")
    tiles = json.loads((tmp_path / "probe" / "tiles.geojson").read_text())["features"]
    return float(np.median([t["properties"][f"prob_{MINE}"] for t in tiles]))


# --- a local web server that answers Range requests and lists what it was asked --------------------------------

_SERVER = (r"""
import http.server, os, re, sys
class Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass
    def _note(self):
        print(self.command, self.path, flush=True)
    def do_HEAD(self):
        self._note()
        return super().do_HEAD()
    def do_GET(self):
        self._note()
        wanted = self.headers.get("Range")
        path = self.translate_path(self.path)
        if wanted and os.path.isfile(path):
            with open(path, "rb") as fh:
                data = fh.read()
            first, last = re.match(r"bytes=(\d+)-(\d*)", wanted).groups()
            first, last = int(first), min(int(last) if last else len(data) - 1, len(data) - 1)
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {first}-{last}/{len(data)}")
            self.send_header("Content-Length", str(last - first + 1))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            self.wfile.write(data[first:last + 1])
            return
        return super().do_GET()
server = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[2])), """  # this program line continues below
r"""lambda *a, **k: Handler(*a, directory=sys.argv[1], **k))
print("ready", flush=True)
server.serve_forever()
""")


class WebServer:
    """Serves ``folder`` on 127.0.0.1 from another process (GDAL holds the GIL while it reads a URL, so a server
    thread in this process would never answer), logging every request."""

    def __init__(self, folder: Path, log: Path):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.log = log
        self._out = open(log, "w")
        self.proc = subprocess.Popen([sys.executable, "-c", _SERVER, str(folder), str(self.port)], stdout=self._out,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while "ready" not in log.read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the test web server did not start: {log.read_text()}")
            time.sleep(0.05)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def requests(self) -> list[str]:
        return [line.strip() for line in self.log.read_text().splitlines() if line.strip() != "ready"]

    def close(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self._out.close()


# --- headless Chromium ---------------------------------------------------------------------------------------------

def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("headless Chromium is not installed (apt-get install chromium)")


def run_chromium(url: str, *args: str, budget_ms: int = 5000) -> tuple[str, list[str]]:
    """Load ``url`` headless, let its scripts run for ``budget_ms`` of virtual time; returns stdout (e.g. the DOM
    with --dump-dom) and the page's console lines (every console message and uncaught error is one)."""
    profile = Path(os.environ.get("TMPDIR", "/tmp")) / f"amazonmine-chromium-{os.getpid()}-{time.monotonic_ns()}"
    command = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars",
               "--disable-extensions", "--disable-background-networking", f"--user-data-dir={profile}",
               "--enable-logging=stderr", "--v=0", f"--virtual-time-budget={budget_ms}", *args, url]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    console = [line for line in done.stderr.splitlines() if re.search(r":CONSOLE[:(]", line)]
    return done.stdout, console
