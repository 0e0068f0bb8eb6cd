"""The report on the real 256-px Planet chips, scored by the models trained on the 32-px competition set.

    python scripts/report_real256.py                    # after scripts/bench_real32.py (or the planet32 stages)
    python scripts/report_real256.py --config configs/planet32.yaml --out runs/real256

All 533 chips of ``../shared/data/planet_real_256`` are also in the 32-px training set, so a chip is scored
only by the fold model that did *not* train on it (its fold in the 32-px run's ``folds.csv``): the scores in
the report are out-of-fold, and chips whose fold has no trained model are left out and counted. Each chip is
first reduced to the size the models were trained on (32 px, INTER_AREA, as the competition thumbnails were
made), then fed like any chip (the model's own input size, TTA as configured).

The script also dehazes the real chips into the report's run folder, so the report shows raw/dehazed pairs
of the real hazy chips. Finally it runs ``amazonmine evaluate`` on that folder, as a user would.
Imagery by Planet, CC BY-SA 4.0.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(REPO / "configs" / "planet32.yaml"))
    ap.add_argument("--set", dest="sets", action="append", default=[], help="override for the 32-px run")
    ap.add_argument("--real", default=str(REPO.parent / "shared" / "data" / "planet_real_256"))
    ap.add_argument("--out", default=str(REPO / "runs" / "real256"))
    ap.add_argument("--source-size", type=int, default=32, help="size the models were trained from")
    args = ap.parse_args()

    import pandas as pd

    from amazonmine.config import load_config
    from amazonmine.data import LABELS, PlanetLayout, read_image
    from amazonmine.io import write_csv_atomic
    from amazonmine.model import load_trained
    from amazonmine.pipeline import _resize, predict_dataset, to_model_channels, tta_predict_fn
    from amazonmine.split import load_folds
    from amazonmine.train import setup_device

    cfg = load_config(args.config, args.sets)
    real, out = Path(args.real), Path(args.out)
    if not (real / "train_v2.csv").is_file():
        print(f"error: {real}/train_v2.csv not found", file=sys.stderr)
        return 2
    folds = load_folds(cfg.run_dir).set_index("image_name")["fold"]
    layout = PlanetLayout.from_config(load_config(None, [f"data.root={real}"]).data)
    frame, _ = layout.load_train()
    setup_device(False)
    import tensorflow as tf

    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("oof_fold*.csv"):
        stale.unlink()
    scored, skipped = 0, 0
    for fold, group in frame.assign(fold=frame["image_name"].map(folds)).groupby("fold", dropna=False):
        model_path = cfg.run_dir / f"fold{int(fold)}" / cfg.train.artifact_name if fold == fold else None
        if model_path is None or not model_path.is_file():
            skipped += len(group)
            continue
        model = load_trained(model_path)
        size = int(model.input_shape[1])
        pixels = np.stack([
            _resize(_resize(to_model_channels(read_image(layout.train_dir / f"{n}.jpg")), args.source_size), size)
            for n in group["image_name"]]).astype(np.float32)
        dataset = tf.data.Dataset.from_tensor_slices(pixels).batch(cfg.predict.batch_size)
        probs = predict_dataset(tta_predict_fn(model, cfg.predict.tta), dataset, len(pixels),
                                desc=f"fold {int(fold)} model")
        table = pd.DataFrame(probs, columns=list(LABELS))
        table.insert(0, "image_name", group["image_name"].to_numpy())
        write_csv_atomic(out / f"oof_fold{int(fold)}.csv", table, float_format="%.6f")
        scored += len(group)
    if not scored:
        print(f"error: no fold model in {cfg.run_dir} covers these chips: train first", file=sys.stderr)
        return 2
    shutil.copy(cfg.run_dir / "thresholds.json", out / "thresholds.json")
    print(f"scored {scored} of {len(frame)} real chips out of fold; {skipped} left out (their fold has no model)")

    sets = [f"data.root={real}", f"run.dir={out}", "data.chip_size=256", "dehaze.patch=15",
            "dehaze.guided_radius=24", f"predict.tta={cfg.predict.tta}"]
    cli = [str(Path(sys.executable).with_name("amazonmine"))]
    flags = [a for s in sets for a in ("--set", s)]
    subprocess.run(cli + ["dehaze", str(real / "train-jpg"), str(out / "dehazed" / "train-jpg")] + flags, check=True)
    subprocess.run(cli + ["evaluate"] + flags + ["--set", "dehaze.enabled=false"], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
