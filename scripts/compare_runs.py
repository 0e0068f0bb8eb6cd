"""F2 and training time of one fold across several run folders (one recipe each), as one table.

    .venv/bin/python scripts/compare_runs.py runs/planet32 runs/p32_ema runs/p32_prog [--fold 1]
                                             [--config configs/planet32.yaml]

Each run folder must hold the fold's ``summary.json`` and ``oof_fold{K}.csv`` (``amazonmine train``). For each
the table shows what its recipe changed against the first run's (the ``settings`` its summary recorded), the
epochs, the training time and images/s its summary recorded, and the fold's out-of-fold mean F2: at a flat
0.2, with thresholds fitted on those chips (the Kaggle F2 point, no operating points), the same fitted on one
half and scored on the other (cross-fit), the tuned figure's 95% bootstrap interval (chips resampled, 1,000
draws, seeded) and artisinal_mine's recall at the tuned thresholds. The runs must share the split (the
summaries' ``split_sha256``), or their scores are not on the same chips: that is checked.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_real32 import _grid, hms, oof_scores  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--fold", type=int, default=1)
    ap.add_argument("--config", default=str(REPO / "configs" / "planet32.yaml"))
    args = ap.parse_args(argv)

    import dataclasses

    from amazonmine.config import TrainConfig, load_config

    defaults = {f"train.{k}": v for k, v in json.loads(json.dumps(dataclasses.asdict(TrainConfig()),
                                                                 default=str)).items()}
    rows = [["run", "recipe (vs the first run)", "epochs", "train", "img/s", "flat 0.2", "tuned", "95% CI",
             "cross-fit", "artisinal rec"]]
    base_settings, split = None, None
    for run_dir in args.runs:
        summary_path = run_dir / f"fold{args.fold}" / "summary.json"
        if not summary_path.is_file():
            print(f"error: {summary_path}: no finished fold {args.fold}", file=sys.stderr)
            return 2
        summary = json.loads(summary_path.read_text())
        settings = summary.get("settings") or {}
        if split is None:
            split, base_settings = summary.get("split_sha256"), settings
        elif summary.get("split_sha256") != split:
            print(f"error: {run_dir} was trained on another split than {args.runs[0]}", file=sys.stderr)
            return 2
        # A setting newer than the first run's summary counts as changed only if it is off its default.
        before = {**defaults, **base_settings}
        changed = [f"{k.removeprefix('train.')}={v}" for k, v in settings.items() if k in before and before[k] != v]
        cfg = load_config(args.config, [f"run.dir={run_dir}"])
        scores = oof_scores(cfg, args.fold, interval=True)  # one threshold fit per run, as bench_real32's
        if scores is None:
            print(f"error: {run_dir}: no out-of-fold predictions of fold {args.fold}", file=sys.stderr)
            return 2
        lo, hi = scores["tuned_interval"]
        recall = scores["rare_recall"]["artisinal_mine"]
        rate = summary.get("train_images_per_s")
        rows.append([str(run_dir), ", ".join(changed) or "-", f"{summary['epochs_run']} (best {summary['best_epoch']})",
                     hms(summary.get("train_seconds_this_session")) if rate else "(resumed)",
                     f"{rate:.0f}" if rate else "-",
                     f"{scores['flat']:.4f}", f"{scores['tuned']:.4f}", f"{lo:.4f}-{hi:.4f}",
                     f"{scores['tuned_crossfit']:.4f}", f"{recall:.3f}"])
    print(f"fold {args.fold}, {scores['chips']} out-of-fold chips; train = training time of the session that "
          "finished the fold (a resumed fold shows only its last session)")
    print("\n".join(_grid(rows, "llrrrrrrrr")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
