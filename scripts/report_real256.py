"""The report on the real 256-px Planet chips, scored by the models trained on the 32-px competition set.

    python scripts/report_real256.py                    # after scripts/bench_real32.py (or the planet32 stages)
    python scripts/report_real256.py --config configs/planet32.yaml --out runs/real256

All 533 chips of ``../shared/data/planet_real_256`` are also in the 32-px training set, so a chip is scored
only by the fold model that did *not* train on it (its fold in the 32-px run's ``folds.csv``): the scores in
the report are out-of-fold, and chips whose fold has no finished model are left out and counted. Each chip is
first reduced to the size the models were trained on (32 px, as the competition thumbnails were made), then
given to the run's :class:`amazonmine.neural.predictor.Predictor`, which prepares it as training did.

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

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(REPO / "configs" / "planet32.yaml"))
    ap.add_argument("--set", dest="sets", action="append", default=[], help="override for the 32-px run")
    ap.add_argument("--real", default=str(REPO.parent / "shared" / "data" / "planet_real_256"))
    ap.add_argument("--out", default=str(REPO / "runs" / "real256"))
    ap.add_argument("--source-size", type=int, default=32, help="size the models were trained from")
    args = ap.parse_args()

    import pandas as pd

    from amazonmine.core.config import load_config
    from amazonmine.core.data import LABELS, PlanetLayout, read_image
    from amazonmine.core.errors import AmazonmineError
    from amazonmine.core.io import write_csv_atomic
    from amazonmine.core.runfolder import RunFolder
    from amazonmine.neural.datasets import resize_square
    from amazonmine.neural.predictor import Predictor

    cfg = load_config(args.config, args.sets)
    run, real = RunFolder.from_config(cfg), Path(args.real)
    # The report's own run: the real chips as its data, dehazed copies beside it for the raw/dehazed pairs.
    sets = [f"data.root={real}", f"run.dir={args.out}", "data.chip_size=256", "dehaze.patch=15",
            "dehaze.guided_radius=24", f"predict.tta={cfg.predict.tta}"]
    out_cfg = load_config(None, sets)
    out, layout = RunFolder.from_config(out_cfg), PlanetLayout.from_config(out_cfg.data)
    if not layout.labels_csv.is_file():
        print(f"error: {layout.labels_csv} not found", file=sys.stderr)
        return 2
    if not run.thresholds.is_file():
        print(f"error: {run.thresholds} not found: run 'amazonmine tune' on the 32-px run first", file=sys.stderr)
        return 2
    try:
        predictor = Predictor.from_run(cfg)
    except AmazonmineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    fold_of = run.read_folds().set_index("image_name")["fold"]
    frame, _ = layout.load_train()
    out.root.mkdir(parents=True, exist_ok=True)
    for _, stale in out.oof_files():
        stale.unlink()
    scored = 0
    for fold, group in frame.assign(fold=frame["image_name"].map(fold_of)).groupby("fold"):
        model_path = run.fold(int(fold)).model
        if model_path not in predictor.model_paths:
            continue
        # The model that did not train on these chips, alone: averaging in the other folds would leak.
        one = predictor.one_fold(model_path)
        chips = [resize_square(read_image(layout.image_dir / f"{n}{layout.ext}"), args.source_size)
                 for n in group["image_name"]]
        table = pd.DataFrame(one.predict(chips), columns=list(LABELS))
        table.insert(0, "image_name", group["image_name"].to_numpy())
        write_csv_atomic(out.fold(int(fold)).oof, table, float_format="%.6f")
        scored += len(group)
    if not scored:
        print(f"error: no finished fold model in {run.root} covers these chips: train first", file=sys.stderr)
        return 2
    shutil.copy(run.thresholds, out.thresholds)
    print(f"scored {scored} of {len(frame)} real chips out of fold; {len(frame) - scored} left out (their fold "
          f"has no finished model)")

    cli = [str(Path(sys.executable).with_name("amazonmine"))]
    flags = [a for s in sets for a in ("--set", s)]
    subprocess.run(cli + ["dehaze", str(layout.train_dir), str(out.dehazed / layout.train_dir.name)] + flags,
                   check=True)
    subprocess.run(cli + ["evaluate"] + flags + ["--set", "dehaze.enabled=false"], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
