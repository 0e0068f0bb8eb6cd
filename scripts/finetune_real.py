"""Your imagery, your labels, on real pixels: two scenes of real Planet chips, chips cut from one, the released model
fine-tuned on them, the other scanned, and the sites scored against known ones.

    .venv/bin/python scripts/finetune_real.py --work ~/amazonmine-runs/finetune_real

The chips are the released model's held-out chips (``held_out_chips.txt`` in its bundle: the 32-px lockbox it
never trained or tuned on), so neither scene holds a chip the model saw. Step by step, each a command a user
types (printed as it runs):

1. the held-out chips are split in two disjoint halves, mine chips shared out evenly, and each half is mosaicked
   into a georeferenced scene (768 m chips at 24 m per pixel, UTM 21S; ``amazonmine.scanning.mosaic.mosaic_folder``);
   every chip's footprint is written beside its scene;
2. scene A's footprints become labelled polygons (one per chip and tag, the way an analyst's GeoPackage of
   known land use would look), and ``amazonmine chips`` cuts scene A into the Kaggle layout with them;
3. ``amazonmine split`` groups those chips by spatial block (geographic folds), and ``amazonmine train`` with
   ``train.init_from`` starts from the released model's weights (same 17 labels, so its head too) for a few
   epochs at a tenth of the recipe's learning rate; ``amazonmine tune`` fits the decisions on fold 0's
   out-of-fold chips;
4. scene B is scanned twice, with the released model and with the fine-tuned run, tiles aligned with the chips
   (``scan.stride=1``), and each scan is scored against scene B's mine footprints (``amazonmine score-sites``:
   truth sites found, false sites per 1,000 km2) and, tile by tile, against every chip's 17 labels (mean F2).

What this can show is bounded by the data: about 35 mine chips in all, so each scene holds 13-18 truth
sites and every figure comes with a wide interval. The figures go to a dated page under docs/results/ (see
scripts/README.md); this script writes them nowhere else.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path, PurePosixPath

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MINE_LABELS = ("artisinal_mine", "conventional_mine")


def run(*args: str) -> str:
    """One amazonmine command, as a user would type it; its output is echoed and returned."""
    command = [str(REPO / ".venv" / "bin" / "amazonmine") if (REPO / ".venv" / "bin" / "amazonmine").exists()
               else "amazonmine", *args]
    print("$ amazonmine " + " ".join(args), flush=True)
    done = subprocess.run(command, capture_output=True, text=True)
    sys.stdout.write(done.stdout)
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        raise SystemExit(f"amazonmine {args[0]} failed (exit {done.returncode})")
    return done.stdout


def extract_chips(archive: Path, names: list[str], out: Path) -> Path:
    """The named chips of a Kaggle-layout archive, with their labels, as ``out/train-jpg`` + ``out/train_v2.csv``."""
    import pandas as pd

    wanted = set(names)
    (out / "train-jpg").mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        for member in tar:
            path = PurePosixPath(member.name)
            if path.name == "train_v2.csv":
                labels = pd.read_csv(tar.extractfile(member), dtype=str, keep_default_na=False)
            elif member.isfile() and path.parent.name == "train-jpg" and path.stem in wanted:
                (out / "train-jpg" / path.name).write_bytes(tar.extractfile(member).read())
    labels = labels[labels["image_name"].isin(wanted)]
    labels.to_csv(out / "train_v2.csv", index=False)
    return out / "train_v2.csv"


def halves(labels, seed: int) -> tuple[list[str], list[str]]:
    """Two disjoint halves of the chips, the mine chips dealt out alternately so each scene holds about half."""
    rng = random.Random(seed)
    mines = [n for n, t in zip(labels["image_name"], labels["tags"]) if set(t.split()) & set(MINE_LABELS)]
    rest = [n for n in labels["image_name"] if n not in set(mines)]
    rng.shuffle(mines)
    rng.shuffle(rest)
    return mines[0::2] + rest[0::2], mines[1::2] + rest[1::2]


def footprints(scene_tif: Path) -> list[dict]:
    return json.loads(Path(f"{scene_tif.with_suffix('')}_chips.geojson").read_text())["features"]


def write_polygons(features: list[dict], path: Path, keep=lambda tag: True) -> int:
    """One polygon per chip footprint and tag (``label``), for the tags ``keep`` accepts."""
    out = [{"type": "Feature", "geometry": f["geometry"],
            "properties": {"label": tag, "image_name": f["properties"]["image_name"]}}
           for f in features for tag in f["properties"]["tags"].split() if keep(tag)]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": out}))
    return len(out)


def tile_f2(scan_dir: Path, scene_tif: Path) -> float:
    """Mean F2 of the scan's per-tile decisions against every chip's 17 labels (tiles aligned with the chips)."""
    import numpy as np

    from amazonmine.core.data import LABELS
    from amazonmine.core.metrics import mean_f2
    from amazonmine.scanning.mosaic import chip_table

    tiles = {(f["properties"]["row"], f["properties"]["col"]): f["properties"]
             for f in json.loads((scan_dir / "tiles.geojson").read_text())["features"]}
    chips, truth = chip_table(scene_tif)
    decided = np.array([[bool(tiles[(int(r), int(c))][f"has_{lab}"]) for lab in LABELS]
                        for r, c in zip(chips["cell_row"], chips["cell_col"])])
    return float(mean_f2(truth.astype(bool), decided))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", default="planet32-v1", help="the model to fine-tune (default: the released one)")
    ap.add_argument("--archive", type=Path, default=REPO.parent / "shared" / "data" / "planet_32px.tar.gz")
    ap.add_argument("--work", type=Path, default=None, help="keep everything in this folder (default: a temporary one)")
    ap.add_argument("--epochs", type=int, default=4, help="fine-tuning epochs")
    ap.add_argument("--learning-rate", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--chip-stride", type=float, default=0.5,
                    help="step of scene A's training chips as a share of the chip side (0.5: chips' default, "
                         "overlapping; 1: edge to edge, each chip one source chip with its exact labels)")
    args = ap.parse_args()

    from amazonmine.core.bundle import open_bundle, resolve
    from amazonmine.scanning.mosaic import mosaic_folder

    bundle = open_bundle(resolve(args.bundle))
    held_out = (bundle.root / "held_out_chips.txt").read_text().split()
    work = args.work or Path(tempfile.mkdtemp(prefix="finetune_real_"))
    work.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()

    source = work / "source"
    labels_csv = source / "train_v2.csv"
    if not labels_csv.is_file():
        extract_chips(args.archive, held_out, source)
    import pandas as pd

    labels = pd.read_csv(labels_csv, dtype=str, keep_default_na=False)
    names = dict(zip(("a", "b"), halves(labels, args.seed)))
    scenes = {}
    for key, subset in names.items():
        side = int(len(subset) ** 0.5) + 1
        tif = work / f"scene_{key}.tif"
        if not tif.is_file():
            mosaic_folder(source / "train-jpg", labels_csv, tif, cols=side, rows=(len(subset) + side - 1) // side,
                          names=subset, seed=args.seed)
        scenes[key] = tif
        mines = sum(bool(set(t.split()) & set(MINE_LABELS))
                    for t in labels.set_index("image_name").loc[subset, "tags"])
        print(f"scene {key.upper()}: {len(subset)} held-out chips, {mines} with a mine -> {tif}")

    polygons_a = work / "scene_a_labels.geojson"
    truth_b = work / "scene_b_mines.geojson"
    print(f"scene A: {write_polygons(footprints(scenes['a']), polygons_a)} labelled polygons -> {polygons_a}")
    print(f"scene B: {write_polygons(footprints(scenes['b']), truth_b, lambda t: t in MINE_LABELS)} mine "
          f"polygons (the truth) -> {truth_b}")

    variant = "" if args.chip_stride == 0.5 else f"_stride{args.chip_stride:g}"
    data_a, run_dir = work / f"chips_a{variant}", work / f"run{variant}"
    chip_stride = ["--set", f"scan.stride={args.chip_stride}"]
    if not (data_a / "train_v2.csv").is_file():
        run("chips", str(scenes["a"]), "--labels", str(polygons_a), "--out", str(data_a), "--size", "32",
            "--config", str(REPO / "configs" / "planet32.yaml"), *chip_stride)
    settings = ["--config", str(REPO / "configs" / "planet32.yaml"), "--set", f"data.root={data_a}",
                "--set", f"run.dir={run_dir}", "--set", "split.group_by=block", "--set", "split.holdout=0",
                "--set", f"train.init_from={bundle.root}", "--set", f"train.epochs={args.epochs}",
                "--set", "train.warmup_epochs=0", "--set", f"train.learning_rate={args.learning_rate}",
                "--set", "train.folds=[0]", "--set", "train.xla=true"]
    if not (run_dir / "folds.csv").is_file():
        run("split", *settings)
    run("train", *settings, "--resume")
    run("tune", *settings)

    results = {}
    for name, model in (("released", ["--model", str(bundle.root)]), ("fine-tuned", settings)):
        out = work / f"scan_b_{name}{variant if name == 'fine-tuned' else ''}"
        run("scan", str(scenes["b"]), *model, "--set", "scan.stride=1.0", "--out", str(out))
        run("score-sites", str(out), "--truth", str(truth_b))
        scores = json.loads((out / "site_scores.json").read_text())
        results[name] = {"sites": scores, "tile_f2": tile_f2(out, scenes["b"])}

    print(f"\nscene B, {len(names['b'])} held-out chips; 95% intervals over sites")
    print(f"{'model':<12} {'found':>10} {'recall':>20} {'false per 1,000 km2':>26} {'tile mean F2':>13}")
    for name, result in results.items():
        any_mine = result["sites"]["targets"]["any"]
        found, iv = any_mine["found_rate"], any_mine["intervals_95"]
        false = any_mine["false_sites_per_1000_km2"]
        print(f"{name:<12} {any_mine['found']:>4} of {any_mine['truth_sites']:<3} "
              f"{found:>7.2f} [{iv['found_rate'][0]:.2f}-{iv['found_rate'][1]:.2f}] "
              f"{false:>12.1f} [{iv['false_sites_per_1000_km2'][0]:.1f}-{iv['false_sites_per_1000_km2'][1]:.1f}] "
              f"{result['tile_f2']:>13.4f}")
    print(f"({time.perf_counter() - began:.0f} s in all; everything in {work})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
