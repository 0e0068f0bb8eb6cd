"""Planet-like chips with known truth: the built-in data of the demo and the tests.

``amazonmine synth OUT`` writes a labelled dataset in the exact Kaggle layout (see :mod:`amazonmine.core.data`).
Label combinations are drawn from the real competition: ``resources/planet_label_combos.csv`` holds the 410
distinct tag sets of the 40,478 labelled Kaggle chips with their counts (Planet, CC BY-SA 4.0), so imbalance
and co-occurrence are realistic; ``rare_boost`` multiplies the weight of combinations holding a rare label so
that a few hundred chips still contain mines.

Each label is painted by its own rule on a 4-band canvas (B, G, R, NIR reflectance in [0, 1]): forest canopy
texture, rivers, roads, field rectangles, mine pits clustered beside water, an open-pit mine with terraces,
burnt patches, blooming specks, logging tracks, wind-thrown streaks, clouds. Exactly one weather label per
chip; ``cloudy`` chips carry no land label. ``haze`` follows the atmospheric scattering model
I = J*t + A*(1 - t), and the clean J, the airlight A and the transmission t are saved under ``truth/`` so the
dehaze stage can be checked against the truth.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from amazonmine.core.data import LABELS, RARE_SHARE, WEATHER_LABELS, DataError, encode_jpeg, encode_png, encode_tif
from amazonmine.core.io import write_bytes_atomic, write_csv_atomic

LAND_LABELS = tuple(label for label in LABELS if label not in WEATHER_LABELS)

# Reflectance-like colours (B, G, R, NIR) in [0, 1]; NIR is high over vegetation, low over water.
FOREST = (0.16, 0.30, 0.18, 0.62)
FIELD_GREEN = (0.30, 0.55, 0.42, 0.55)
FIELD_TAN = (0.42, 0.56, 0.66, 0.40)
BARE = (0.50, 0.62, 0.74, 0.38)
ROAD = (0.55, 0.66, 0.76, 0.36)
RIVER_BROWN = (0.28, 0.36, 0.42, 0.10)
RIVER_DARK = (0.22, 0.18, 0.10, 0.05)
MINE_POND = (0.55, 0.58, 0.35, 0.12)
MINE_MUD = (0.45, 0.58, 0.72, 0.25)
PIT_GREY = (0.58, 0.60, 0.62, 0.30)
BURN = (0.10, 0.10, 0.11, 0.12)
ROOF = (0.78, 0.78, 0.80, 0.45)
BLOOM = (0.45, 0.80, 0.85, 0.70)
BLOWDOWN = (0.26, 0.48, 0.34, 0.50)
CLOUD = (0.93, 0.93, 0.93, 0.90)


def load_label_combos() -> tuple[list[str], np.ndarray]:
    """The real competition's tag combinations and their counts (bundled with the package)."""
    import pandas as pd

    with resources.files("amazonmine.resources").joinpath("planet_label_combos.csv").open("r") as fh:
        frame = pd.read_csv(fh, dtype={"tags": str, "count": int})
    return frame["tags"].tolist(), frame["count"].to_numpy(dtype=np.float64)


def combo_weights(combos: list[str], counts: np.ndarray, rare_boost: float) -> np.ndarray:
    """Sampling weights: real counts, with combinations that hold a rare label multiplied by rare_boost."""
    total = counts.sum()
    label_counts = {label: 0.0 for label in LABELS}
    for tags, count in zip(combos, counts):
        for tag in tags.split():
            label_counts[tag] += count
    rare = {label for label, c in label_counts.items() if c / total < RARE_SHARE}
    weights = counts.copy()
    for i, tags in enumerate(combos):
        if rare.intersection(tags.split()):
            weights[i] *= rare_boost
    return weights / weights.sum()


def normalise_tags(tags: str) -> list[str]:
    """Exactly one weather label (the first in the real data's priority) and no land label under 'cloudy'."""
    present = tags.split()
    weather = [w for w in ("cloudy", "partly_cloudy", "haze", "clear") if w in present]
    chosen = weather[0] if weather else "clear"
    land = [] if chosen == "cloudy" else [t for t in present if t in LAND_LABELS]
    return sorted(land + [chosen])


# --- painting ----------------------------------------------------------------------------------------------

def value_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth noise in [0, 1]: a random grid of ``cells`` x ``cells`` resized with bicubic interpolation."""
    import cv2

    grid = rng.random((cells + 3, cells + 3)).astype(np.float32)
    big = cv2.resize(grid, (size + size * 3 // max(cells, 1), size + size * 3 // max(cells, 1)),
                     interpolation=cv2.INTER_CUBIC)
    off = size * 3 // max(cells, 1) // 2
    return np.clip(big[off:off + size, off:off + size], 0, 1)


def _mask(size: int) -> np.ndarray:
    return np.zeros((size, size), dtype=np.uint8)


def _blend(canvas: np.ndarray, mask: np.ndarray, colour, rng: np.random.Generator, texture: float = 0.06,
           soft: float = 0.0) -> None:
    import cv2

    alpha = mask.astype(np.float32) / 255.0 if mask.dtype == np.uint8 else mask.astype(np.float32)
    if soft > 0:
        k = max(3, int(soft) | 1)
        alpha = cv2.GaussianBlur(alpha, (k, k), 0)
    size = canvas.shape[0]
    tex = (value_noise(rng, size, max(2, size // 6)) - 0.5) * 2 * texture
    colour = np.asarray(colour, dtype=np.float32)
    layer = colour[None, None, :] * (1.0 + tex[..., None])
    canvas[:] = canvas * (1 - alpha[..., None]) + layer * alpha[..., None]


def _point(rng, size, margin=0.1):
    return rng.uniform(margin * size, (1 - margin) * size, 2)


def _curve(rng, size, wiggle=0.15, n=6):
    """A gently curving polyline crossing the chip from one edge to another."""
    a = rng.uniform(0, np.pi)
    direction = np.array([np.cos(a), np.sin(a)])
    normal = np.array([-direction[1], direction[0]])
    centre = _point(rng, size, 0.3)
    ts = np.linspace(-0.9, 0.9, n) * size
    offsets = np.cumsum(rng.normal(0, wiggle * size / n, n))
    pts = centre + ts[:, None] * direction + offsets[:, None] * normal
    return pts.astype(np.int32).reshape(-1, 1, 2)


def paint_forest(canvas, rng, size):
    fine = value_noise(rng, size, max(4, size // 4))
    coarse = value_noise(rng, size, 4)
    shade = 0.75 + 0.35 * fine + 0.2 * (coarse - 0.5)
    canvas[:] = np.asarray(FOREST, np.float32) * shade[..., None]


def paint_open_land(canvas, rng, size):
    coarse = value_noise(rng, size, 5)
    canvas[:] = (np.asarray(FIELD_GREEN, np.float32) * (1 - coarse[..., None] * 0.6)
                 + np.asarray(BARE, np.float32) * coarse[..., None] * 0.6)


def paint_water(canvas, rng, size, state):
    import cv2

    m = _mask(size)
    pts = _curve(rng, size, 0.12)
    width = max(2, int(size * rng.uniform(0.05, 0.12)))
    cv2.polylines(m, [pts], False, 255, width)
    _blend(canvas, m, RIVER_BROWN if rng.random() < 0.6 else RIVER_DARK, rng, 0.05, soft=size / 64)
    state["river"] = pts.reshape(-1, 2)


def paint_road(canvas, rng, size, state):
    import cv2

    m = _mask(size)
    for _ in range(rng.integers(1, 3)):
        pts = _curve(rng, size, 0.04, n=4)
        cv2.polylines(m, [pts], False, 255, max(1, size // 80))
    _blend(canvas, m, ROAD, rng, 0.03)


def _rotated_rect_mask(rng, size, w_range, h_range, centre=None):
    import cv2

    m = _mask(size)
    c = _point(rng, size, 0.05) if centre is None else centre
    w, h = rng.uniform(*w_range) * size, rng.uniform(*h_range) * size
    box = cv2.boxPoints(((float(c[0]), float(c[1])), (float(w), float(h)), float(rng.uniform(0, 90))))
    cv2.fillPoly(m, [box.astype(np.int32)], 255)
    return m


def paint_agriculture(canvas, rng, size, state):
    for _ in range(rng.integers(2, 5)):
        m = _rotated_rect_mask(rng, size, (0.25, 0.5), (0.2, 0.4))
        _blend(canvas, m, FIELD_GREEN if rng.random() < 0.5 else FIELD_TAN, rng, 0.04)


def paint_cultivation(canvas, rng, size, state):
    for _ in range(rng.integers(3, 7)):
        m = _rotated_rect_mask(rng, size, (0.06, 0.14), (0.05, 0.12))
        _blend(canvas, m, FIELD_GREEN if rng.random() < 0.6 else BARE, rng, 0.08, soft=2)


def paint_bare_ground(canvas, rng, size, state):
    for _ in range(rng.integers(1, 3)):
        m = _rotated_rect_mask(rng, size, (0.12, 0.3), (0.1, 0.25))
        _blend(canvas, m, BARE, rng, 0.1, soft=size / 32)


def paint_habitation(canvas, rng, size, state):
    import cv2

    centre = _point(rng, size, 0.2)
    m = _mask(size)
    side = max(1, size // 64)
    for _ in range(rng.integers(12, 30)):
        p = (centre + rng.normal(0, size * 0.08, 2)).astype(int)
        cv2.rectangle(m, tuple(int(v) for v in p), tuple(int(v) for v in p + side), 255, -1)
    _blend(canvas, m, ROOF, rng, 0.1)


def paint_artisinal_mine(canvas, rng, size, state):
    """Clustered small pits and ponds along a river bank, with churned mud around them."""
    import cv2

    river = state.get("river")
    anchor = river[rng.integers(len(river))] if river is not None else _point(rng, size, 0.25)
    anchor = np.clip(anchor + rng.normal(0, size * 0.05, 2), size * 0.15, size * 0.85)
    mud, ponds = _mask(size), _mask(size)
    cv2.circle(mud, tuple(int(v) for v in anchor), int(size * 0.16), 255, -1)
    for _ in range(rng.integers(6, 14)):
        p = anchor + rng.normal(0, size * 0.07, 2)
        r = max(1, int(size * rng.uniform(0.015, 0.035)))
        cv2.circle(ponds, tuple(int(v) for v in p), r, 255, -1)
    _blend(canvas, mud, MINE_MUD, rng, 0.12, soft=size / 32)
    _blend(canvas, ponds, MINE_POND, rng, 0.08)


def paint_conventional_mine(canvas, rng, size, state):
    """An open pit: a large grey polygon with concentric terraces and a haul road."""
    import cv2

    c = _point(rng, size, 0.3)
    radius = size * rng.uniform(0.18, 0.28)
    for level, shade in enumerate((1.0, 0.85, 0.7, 0.55)):
        m = _mask(size)
        cv2.ellipse(m, (tuple(int(v) for v in c),
                        (int(radius * 2 * (1 - 0.22 * level)), int(radius * 1.5 * (1 - 0.22 * level))),
                        float(rng.uniform(0, 180))), 255, -1)
        _blend(canvas, m, tuple(v * shade for v in PIT_GREY), rng, 0.05)
    road = _mask(size)
    cv2.line(road, tuple(int(v) for v in c), tuple(int(v) for v in _point(rng, size, 0.0)), 255, max(1, size // 64))
    _blend(canvas, road, ROAD, rng, 0.02)


def paint_slash_burn(canvas, rng, size, state):
    import cv2

    for _ in range(rng.integers(1, 3)):
        m = _rotated_rect_mask(rng, size, (0.1, 0.22), (0.08, 0.18))
        _blend(canvas, m, BURN, rng, 0.15, soft=size / 40)
        smoke = cv2.GaussianBlur(m, (0, 0), size / 16).astype(np.float32) / 255.0 * 0.5
        _blend(canvas, smoke, (0.7, 0.7, 0.7, 0.5), rng, 0.0)


def paint_blooming(canvas, rng, size, state):
    import cv2

    m = _mask(size)
    centre = _point(rng, size, 0.2)
    for _ in range(rng.integers(40, 90)):
        p = centre + rng.normal(0, size * 0.15, 2)
        cv2.circle(m, tuple(int(v) for v in p), max(1, size // 100), 255, -1)
    _blend(canvas, m, BLOOM, rng, 0.1)


def paint_selective_logging(canvas, rng, size, state):
    import cv2

    m = _mask(size)
    trunk = _curve(rng, size, 0.05, n=4).reshape(-1, 2)
    cv2.polylines(m, [trunk.reshape(-1, 1, 2)], False, 255, max(1, size // 128))
    for p in trunk[1:-1]:
        for _ in range(2):
            a = rng.uniform(0, 2 * np.pi)
            q = p + np.array([np.cos(a), np.sin(a)]) * size * rng.uniform(0.08, 0.18)
            cv2.line(m, tuple(int(v) for v in p), tuple(int(v) for v in q), 255, max(1, size // 128))
            cv2.circle(m, tuple(int(v) for v in q), max(1, size // 50), 255, -1)
    _blend(canvas, m, ROAD, rng, 0.05)


def paint_blow_down(canvas, rng, size, state):
    import cv2

    m = _mask(size)
    centre = _point(rng, size, 0.25)
    angle = rng.uniform(0, np.pi)
    d = np.array([np.cos(angle), np.sin(angle)]) * size * 0.06
    for _ in range(rng.integers(15, 30)):
        p = centre + rng.normal(0, size * 0.08, 2)
        cv2.line(m, tuple(int(v) for v in p - d), tuple(int(v) for v in p + d), 255, max(1, size // 100))
    _blend(canvas, m, BLOWDOWN, rng, 0.05)


PAINTERS = {
    "water": paint_water,  # first: mines cluster next to it
    "agriculture": paint_agriculture,
    "cultivation": paint_cultivation,
    "bare_ground": paint_bare_ground,
    "road": paint_road,
    "selective_logging": paint_selective_logging,
    "blow_down": paint_blow_down,
    "blooming": paint_blooming,
    "habitation": paint_habitation,
    "slash_burn": paint_slash_burn,
    "conventional_mine": paint_conventional_mine,
    "artisinal_mine": paint_artisinal_mine,
}


def _clouds(rng, size, cover: float) -> np.ndarray:
    """Cloud opacity in [0, 1] covering roughly ``cover`` of the chip."""
    noise = 0.6 * value_noise(rng, size, 3) + 0.4 * value_noise(rng, size, 6)
    cut = np.quantile(noise, 1 - cover)
    return np.clip((noise - cut) / 0.08, 0, 1).astype(np.float32)


@dataclass
class Chip:
    bands: np.ndarray  # float32 (S, S, 4) B, G, R, NIR in [0, 1], as seen by the satellite
    clean: np.ndarray | None  # the haze-free scene for haze chips
    airlight: np.ndarray | None  # (4,)
    transmission: np.ndarray | None  # (S, S)


def paint_chip(tags: list[str], size: int, rng: np.random.Generator) -> Chip:
    canvas = np.zeros((size, size, 4), dtype=np.float32)
    if "primary" in tags:
        paint_forest(canvas, rng, size)
    else:
        paint_open_land(canvas, rng, size)
    state: dict = {}
    for label, painter in PAINTERS.items():
        if label in tags:
            painter(canvas, rng, size, state)
    canvas += rng.normal(0, 0.008, canvas.shape).astype(np.float32)  # sensor noise
    canvas = np.clip(canvas, 0, 1)
    clean = airlight = transmission = None
    if "cloudy" in tags:
        canvas = _blend_clouds(canvas, _clouds(rng, size, rng.uniform(0.85, 1.0)), rng)
    elif "partly_cloudy" in tags:
        canvas = _blend_clouds(canvas, _clouds(rng, size, rng.uniform(0.15, 0.5)), rng)
    elif "haze" in tags:
        clean = canvas.copy()
        grey = rng.uniform(0.78, 0.92)
        airlight = np.array([grey + 0.03, grey, grey - 0.02, grey - 0.1], dtype=np.float32)
        t_low = rng.uniform(0.35, 0.6)
        transmission = (t_low + 0.2 * value_noise(rng, size, 2)).astype(np.float32)
        canvas = clean * transmission[..., None] + airlight * (1 - transmission[..., None])
    return Chip(np.clip(canvas, 0, 1), clean, airlight, transmission)


def _blend_clouds(canvas, opacity, rng):
    size = canvas.shape[0]
    shade = 0.85 + 0.15 * value_noise(rng, size, 8)
    cloud = np.asarray(CLOUD, np.float32)[None, None, :] * shade[..., None]
    return canvas * (1 - opacity[..., None]) + cloud * opacity[..., None]


def to_jpeg_pixels(bands: np.ndarray) -> np.ndarray:
    return np.clip(bands[..., :3] * 255.0 + 0.5, 0, 255).astype(np.uint8)


def to_tif_pixels(bands: np.ndarray) -> np.ndarray:
    # Planet's analytic TIFs hold roughly 2,000-12,000 counts per band.
    return np.clip(bands * 10000.0 + 1500.0, 0, 65535).astype(np.uint16)


def _test_names(n_test: int) -> tuple[list[str], list[str]]:
    n_main = n_test - n_test // 3
    return [f"test_{i}" for i in range(n_main)], [f"file_{i}" for i in range(n_test - n_main)]


def paint_dataset(  # noqa: PLR0913 - synth's options, each passed by keyword (CLI, demo, test fixtures)
                 out: str | Path, n_train: int = 200, n_test: int = 50, size: int = 256, seed: int = 0,
                 rare_boost: float = 20.0, tif: bool = False, progress: bool = True,
                 overwrite: bool = False) -> dict:
    """Write a Planet-like dataset in the Kaggle layout and its truth. Returns a small summary."""
    import pandas as pd

    from amazonmine.core.logs import progress_bar

    if size < 16:
        raise DataError(f"synth: --size {size} is too small (at least 16 px)")
    if n_train < 1:
        raise DataError("synth: --n-train must be at least 1")
    if n_test < 0:
        raise DataError("synth: --n-test must be 0 or more")
    if not np.isfinite(rare_boost) or rare_boost <= 0:
        raise DataError(f"synth: --rare-boost must be a positive number, got {rare_boost}")
    out = Path(out)
    generated = ("train-jpg", "train-tif-v2", "test-jpg", "test-jpg-additional", "truth")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise DataError(f"{out}: folder is not empty; give a new folder (or --overwrite to replace a synth set)")
        if not (out / "train_v2.csv").is_file():
            raise DataError(f"{out}: --overwrite only replaces a folder that synth wrote (no train_v2.csv here)")
        import shutil

        for name in generated:  # stale chips of an earlier, larger set would otherwise stay behind
            shutil.rmtree(out / name, ignore_errors=True)
    combos, counts = load_label_combos()
    weights = combo_weights(combos, counts, rare_boost)
    rng = np.random.default_rng(seed)
    train_tags = [" ".join(normalise_tags(combos[i])) for i in rng.choice(len(combos), n_train, p=weights)]
    test_tags = [" ".join(normalise_tags(combos[i])) for i in rng.choice(len(combos), n_test, p=weights)]
    test_main, test_extra = _test_names(n_test)
    jobs = [(f"train_{i}", t, out / "train-jpg") for i, t in enumerate(train_tags)]
    jobs += [(n, t, out / "test-jpg") for n, t in zip(test_main, test_tags)]
    jobs += [(n, t, out / "test-jpg-additional") for n, t in zip(test_extra, test_tags[len(test_main):])]
    haze_rows = []
    for index, (name, tags, folder) in enumerate(progress_bar(jobs, desc="synth", unit="chip", enabled=progress)):
        chip = paint_chip(tags.split(), size, np.random.default_rng([seed, index]))
        write_bytes_atomic(folder / f"{name}.jpg", encode_jpeg(to_jpeg_pixels(chip.bands)))
        is_train = folder.name == "train-jpg"
        if tif and is_train:
            write_bytes_atomic(out / "train-tif-v2" / f"{name}.tif", encode_tif(to_tif_pixels(chip.bands)))
        if chip.clean is not None:
            write_bytes_atomic(out / "truth" / "clean" / f"{name}.png", encode_png(to_jpeg_pixels(chip.clean)))
            if tif and is_train:
                write_bytes_atomic(out / "truth" / "clean" / f"{name}.tif", encode_tif(to_tif_pixels(chip.clean)))
            t8 = np.clip(chip.transmission * 255 + 0.5, 0, 255).astype(np.uint8)
            write_bytes_atomic(out / "truth" / "transmission" / f"{name}.png", encode_png(t8))
            a = chip.airlight
            haze_rows.append({"image_name": name, "A_b": a[0], "A_g": a[1], "A_r": a[2], "A_nir": a[3],
                              "t_mean": float(chip.transmission.mean())})
    write_csv_atomic(out / "train_v2.csv", pd.DataFrame({"image_name": [j[0] for j in jobs[:n_train]],
                                                         "tags": train_tags}))
    test_names = test_main + sorted(test_extra)  # Kaggle's order: test_* numerically, file_* as strings
    write_csv_atomic(out / "sample_submission_v2.csv",
                     pd.DataFrame({"image_name": test_names, "tags": "primary clear agriculture road water"}))
    truth_test = dict(zip(test_main + test_extra, test_tags))
    write_csv_atomic(out / "truth" / "test_labels.csv",
                     pd.DataFrame({"image_name": test_names, "tags": [truth_test[n] for n in test_names]}))
    write_csv_atomic(out / "truth" / "haze.csv", pd.DataFrame(
        haze_rows, columns=["image_name", "A_b", "A_g", "A_r", "A_nir", "t_mean"]))
    label_counts = {label: sum(label in t.split() for t in train_tags) for label in LABELS}
    return {"out": str(out), "n_train": n_train, "n_test": n_test, "size": size, "haze": len(haze_rows),
            "label_counts": label_counts}


def run_synth(cfg, out: str | Path | None = None,  # noqa: PLR0913 - one keyword per option of the synth command
              n_train: int = 200, n_test: int = 50, size: int | None = None,
              seed: int | None = None, rare_boost: float = 20.0, tif: bool = False, overwrite: bool = False,
              progress: bool = True) -> dict:
    """The synth stage: a dataset where the config expects one (``data.root``), with its chip size
    (``data.chip_size``, else 256) and seed (``run.seed``) unless given."""
    return paint_dataset(out if out is not None else cfg.data.root, n_train=n_train, n_test=n_test,
                         size=size or cfg.data.chip_size or 256, seed=cfg.run.seed if seed is None else seed,
                         rare_boost=rare_boost, tif=tif, progress=progress, overwrite=overwrite)


def make_synthetic_scene(out_dir: Path, cols: int = 6, rows: int = 5, size: int = 32, ground_m: float = 768.0,
                         seed: int = 0, nodata_cells: int = 2, name: str = "synth_scene"):
    """A tiny scene of freshly painted synthetic chips (``amazonmine synth``, rare labels boosted so mines are
    present), for the demo and the tests: fast, and with its truth. Returns the scene's ``MosaicResult``."""
    from amazonmine.scanning.mosaic import mosaic_folder

    out_dir = Path(out_dir)
    n = rows * cols - nodata_cells
    data = out_dir / f"{name}_chips"
    paint_dataset(data, n_train=n, n_test=0, size=size, seed=seed, rare_boost=60.0, progress=False, overwrite=True)
    return mosaic_folder(data / "train-jpg", data / "train_v2.csv", out_dir / f"{name}.tif", cols, rows,
                         ground_m=ground_m, seed=seed)
