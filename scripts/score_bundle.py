"""Score a model bundle on labelled chips it never saw, through the command a user types.

    .venv/bin/python scripts/score_bundle.py                          # the released model on its own held-out list
    .venv/bin/python scripts/score_bundle.py --bundle exports/my-v1 --archive ../shared/data/planet_32px.tar.gz

This reproduces a model card's held-out figures from the bundle alone:

1. reads the chips the card was measured on from the bundle (``held_out_chips.txt``, written by ``export``), or
   ``--names FILE``;
2. extracts exactly those chips from ``--archive`` (the Kaggle layout, 32 px by default: ../shared's
   planet_32px.tar.gz) into a scratch folder, with their labels from the archive's ``train_v2.csv``;
3. runs ``amazonmine predict FOLDER --model BUNDLE --out OUT`` as a user would (a subprocess, no run folder);
4. scores ``OUT/labels.csv`` against the labels: mean F2 with a 95% bootstrap interval (chips resampled), each
   label's precision and recall, and prints them beside the card's headline.

Figures go to a dated page under docs/results/ (see scripts/README.md); they are not written anywhere by this
script.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path, PurePosixPath

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", default=None, help="bundle folder or installed name (default: the released model)")
    ap.add_argument("--archive", type=Path, default=REPO.parent / "shared" / "data" / "planet_32px.tar.gz")
    ap.add_argument("--names", type=Path, default=None, help="image names to score, one a line (default: the "
                                                               "bundle's held_out_chips.txt)")
    ap.add_argument("--draws", type=int, default=1000, help="bootstrap draws for the interval")
    ap.add_argument("--keep", type=Path, default=None, help="keep the chips and predictions in this folder")
    args = ap.parse_args()

    import numpy as np
    import pandas as pd

    from amazonmine.core.bundle import open_bundle, resolve
    from amazonmine.core.data import LABELS, read_labels, tags_to_matrix
    from amazonmine.core.errors import AmazonmineError
    from amazonmine.core.metrics import bootstrap_intervals, mean_f2, per_label_scores

    try:
        bundle = open_bundle(resolve(args.bundle))
    except AmazonmineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    names_file = args.names or bundle.root / "held_out_chips.txt"
    if not names_file.is_file():
        print(f"error: {names_file}: no list of held-out chips (pass --names)", file=sys.stderr)
        return 2
    wanted = [n.strip() for n in names_file.read_text().splitlines() if n.strip()]
    work = args.keep or Path(tempfile.mkdtemp(prefix="score_bundle."))
    chips = work / "chips"
    chips.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    labels_csv = _extract(args.archive, set(wanted), chips)
    truth = read_labels(labels_csv).set_index("image_name")
    missing = [n for n in wanted if n not in truth.index or not (chips / f"{n}.jpg").is_file()]
    if missing:
        print(f"error: {len(missing)} listed chips are not in {args.archive} (first: {missing[0]})", file=sys.stderr)
        return 2
    out = work / "predicted"
    command = [sys.executable, "-m", "amazonmine.cli", "predict", str(chips), "--model", str(bundle.root),
               "--out", str(out)]
    print("$ amazonmine " + " ".join(command[3:]), flush=True)
    done = subprocess.run(command, cwd=REPO)
    if done.returncode != 0:
        print(f"error: predict exited {done.returncode}", file=sys.stderr)
        return 2
    predicted = pd.read_csv(out / "labels.csv", dtype=str, keep_default_na=False).set_index("image_name")
    y = tags_to_matrix(truth.loc[wanted, "tags"]).astype(bool)
    pred = tags_to_matrix(predicted.loc[wanted, "tags"]).astype(bool)
    f2 = mean_f2(y, pred)
    interval = bootstrap_intervals(y, pred, args.draws, 0)
    scores = per_label_scores(y, pred)
    print(f"\n{bundle.name} v{bundle.version} on {len(wanted):,} chips from {names_file.name} "
          f"({time.perf_counter() - began:.0f} s)")
    print(f"mean F2 {f2:.4f} (95% {interval['mean_f2'][0]:.4f}-{interval['mean_f2'][1]:.4f}); "
          f"the card says: {bundle.headline}")
    print(f"{'label':20s} {'positives':>9s} {'precision':>9s} {'recall':>7s}")
    for j, label in enumerate(LABELS):
        print(f"{label:20s} {int(scores['support'][j]):9d} {scores['precision'][j]:9.3f} {scores['recall'][j]:7.3f}")
    print(json.dumps({"mean_f2": round(f2, 4), "interval": [round(x, 4) for x in interval["mean_f2"]],
                      "chips": len(wanted)}))
    return 0 if np.isfinite(f2) else 1


def _extract(archive: Path, wanted: set[str], chips: Path) -> Path:
    """Only the wanted chips and the labels file, as plain files flattened into ``chips`` (nothing else of the
    archive is written, and no member name can leave the folder)."""
    labels_csv = chips.parent / "train_v2.csv"
    with tarfile.open(archive) as tar:
        for member in tar:
            if not member.isfile():
                continue
            parts = PurePosixPath(member.name).parts
            if parts[-1] == "train_v2.csv" and len(parts) == 2:
                labels_csv.write_bytes(tar.extractfile(member).read())
            elif len(parts) == 3 and parts[1] == "train-jpg" and parts[2].removesuffix(".jpg") in wanted:
                (chips / parts[2]).write_bytes(tar.extractfile(member).read())
    return labels_csv


if __name__ == "__main__":
    sys.exit(main())
