"""F2 and training time of one fold across several run folders (one recipe each), as one table.

    .venv/bin/python scripts/compare_runs.py runs/planet32 runs/p32_ema runs/p32_prog [--fold 1]
                                             [--config configs/planet32.yaml]

Each run folder must hold the fold's ``summary.json`` and ``oof_fold{K}.csv`` (``amazonmine train``). For each
the table shows what its recipe changed against the first run's (the ``settings`` its summary recorded), the
epochs, the training time and images/s its summary recorded, and the fold's out-of-fold mean F2: at a flat
0.2, with thresholds fitted on those chips (the Kaggle F2 point, no operating points), the same fitted on one
half and scored on the other (cross-fit), the tuned figure's 95% bootstrap interval (chips resampled, 1,000
draws, seeded), the difference to the first run in cross-fitted F2 with its 95% interval, paired over the chips
(each chip's cross-fitted F2 averaged over 10 seeded half-splits, the same in every run; the chips are resampled,
the thresholds not refitted, so the interval leaves out their fitting noise), and artisinal_mine's recall at the
tuned thresholds. The runs must share the split (the
summaries' ``split_sha256``), or their scores are not on the same chips: that is checked.

``--lockbox`` adds a second table for runs whose split set chips aside (``split.holdout``): each run's fold
model on those chips (``fold{K}/holdout_probabilities.csv``, written by ``amazonmine predict``), decided by
the thresholds fitted on the fold's out-of-fold chips (the Kaggle F2 point), with 95% intervals and each run's
difference to the first run, paired over the chips. ``--average`` adds the runs' probabilities averaged, out
of fold and on the lockbox, as one more model: do two recipes gain by being ensembled?
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_real32 import hms, oof_scores, text_table  # noqa: E402

LOCKBOX_DRAWS = 1000


def lockbox_table(cfgs: list, names: list[str], fold: int, average: bool) -> list[str]:
    """The --lockbox rows: per run (and their average), lockbox mean F2 at the fold's tuned thresholds."""
    import numpy as np

    from amazonmine.core.data import LABELS, PlanetLayout
    from amazonmine.core.decisions import decode, fit_thresholds
    from amazonmine.core.errors import AmazonmineError
    from amazonmine.core.metrics import bootstrap_intervals, paired_mean, per_image_f2
    from amazonmine.core.runfolder import RunFolder, read_probabilities

    layout = PlanetLayout.from_config(cfgs[0].data)
    frame, labels = layout.load_train(check_files=False)
    row_of = {name: i for i, name in enumerate(frame["image_name"])}
    models = []
    for cfg in cfgs:
        run = RunFolder.from_config(cfg)
        oof = run.read_oof(layout)
        keep = np.flatnonzero(oof.fold_of_row == fold)
        keep = keep[np.argsort([oof.names[i] for i in keep])]  # the same chip order in every run
        path = run.fold(fold).holdout
        if not path.is_file():
            raise AmazonmineError(f"{path}: no lockbox predictions of fold {fold}; run 'amazonmine predict' on "
                                  f"{run.root} (its split needs split.holdout > 0)")
        box_names, box = read_probabilities(path)
        unknown = [n for n in box_names if n not in row_of]
        if unknown:
            raise AmazonmineError(f"{path}: {len(unknown)} chip(s) not in {layout.labels_csv} (e.g. {unknown[0]}); "
                                  "is --config's data.root the run's?")
        order = np.argsort(box_names)
        models.append(([oof.names[i] for i in keep], oof.y_true[keep], oof.probs[keep],
                       [box_names[i] for i in order], box[order]))
    if any(m[0] != models[0][0] or m[3] != models[0][3] for m in models[1:]):
        raise AmazonmineError("the runs' out-of-fold or lockbox chips differ: they were not split alike")
    y_oof, y_box = models[0][1], labels[[row_of[n] for n in models[0][3]]].astype(bool)
    entries = [(name, m[2], m[4]) for name, m in zip(names, models)]
    if average:
        entries.append(("average of the runs", np.mean([m[2] for m in models], axis=0),
                        np.mean([m[4] for m in models], axis=0)))
    tc, weather = cfgs[0].tune, cfgs[0].tune.weather_decoding
    mine = LABELS.index("artisinal_mine")
    rows = [["model", "OOF tuned", "lockbox tuned", "95% CI", "lockbox flat", "artisinal found",
             "vs first (paired 95%)"]]
    first = None
    for name, p_oof, p_box in entries:
        fitted = fit_thresholds(y_oof, p_oof, tc.start, tc.passes, tc.grid, weather_decoding=weather)
        decided = decode(p_box, fitted, weather)
        per_chip = per_image_f2(y_box, decided)
        lo, hi = bootstrap_intervals(y_box, decided, LOCKBOX_DRAWS, 0)["mean_f2"]
        flat = per_image_f2(y_box, decode(p_box, np.full(len(LABELS), tc.start), weather)).mean()
        if first is None:
            first, versus = per_chip, "-"
        else:
            mean, d_lo, d_hi = paired_mean(per_chip - first, LOCKBOX_DRAWS, 0)  # as evaluate's ensemble gain
            versus = f"{mean:+.4f} ({d_lo:+.4f} to {d_hi:+.4f})"
        oof_f2 = per_image_f2(y_oof, decode(p_oof, fitted, weather)).mean()
        found = int((decided[:, mine] & y_box[:, mine]).sum())
        rows.append([name, f"{oof_f2:.4f}", f"{per_chip.mean():.4f}", f"{lo:.4f}-{hi:.4f}", f"{flat:.4f}",
                     f"{found} of {int(y_box[:, mine].sum())}", versus])
    return [f"lockbox: {len(y_box)} chips no fold trained or tuned on; thresholds fitted on fold {fold}'s "
            f"{len(y_oof)} out-of-fold chips (Kaggle F2 point)", *text_table(rows, "lrrrrrr")]

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--fold", type=int, default=1)
    ap.add_argument("--config", default=str(REPO / "configs" / "planet32.yaml"))
    ap.add_argument("--lockbox", action="store_true", help="also score each run's fold model on the lockbox")
    ap.add_argument("--average", action="store_true", help="with --lockbox: add the runs averaged")
    args = ap.parse_args(argv)
    if args.average and not args.lockbox:
        ap.error("--average needs --lockbox")
    from amazonmine.core.errors import AmazonmineError

    try:
        return compare(args)
    except (AmazonmineError, OSError, ValueError) as exc:  # a bad config, CSV or summary.json: one line
        print(f"error: {exc}", file=sys.stderr)
        return 2


def compare(args) -> int:
    from amazonmine.core.config import TrainConfig, load_config
    from amazonmine.core.metrics import paired_mean

    defaults = {f"train.{k}": v for k, v in json.loads(json.dumps(TrainConfig().model_dump(),
                                                                 default=str)).items()}
    rows = [["run", "recipe (vs the first run)", "epochs", "train", "img/s", "flat 0.2", "tuned", "95% CI",
             "cross-fit", "vs first (paired 95%)", "artisinal rec"]]
    base_settings, split, first = None, None, None
    for run_dir in args.runs:
        summary_path = run_dir / f"fold{args.fold}" / "summary.json"
        if not summary_path.is_file():
            print(f"error: {summary_path}: no finished fold {args.fold}", file=sys.stderr)
            return 2
        try:
            summary = json.loads(summary_path.read_text())
        except (OSError, ValueError) as exc:
            print(f"error: {summary_path}: unreadable ({exc})", file=sys.stderr)
            return 2
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
        scores = oof_scores(cfg, args.fold, interval=True, per_chip=True)  # the same fits as bench_real32's
        if scores is None:
            print(f"error: {run_dir}: no out-of-fold predictions of fold {args.fold}", file=sys.stderr)
            return 2
        lo, hi = scores["tuned_interval"]
        # Cross-fitted, so neither side is scored on the chips its thresholds were fitted on; the half-splits are
        # the same in every run (seeded, same chip order), so the difference is paired chip by chip.
        if first is None:
            first, versus = scores, "-"
        elif scores["names"] != first["names"]:
            print(f"error: {run_dir}: its out-of-fold chips differ from {args.runs[0]}'s (or come in another "
                  "order), so its half-splits would not be the same chips", file=sys.stderr)
            return 2
        else:
            mean, d_lo, d_hi = paired_mean(scores["crossfit_per_chip"] - first["crossfit_per_chip"], LOCKBOX_DRAWS, 0)
            versus = f"{mean:+.4f} ({d_lo:+.4f} to {d_hi:+.4f})"
        recall = scores["rare_recall"]["artisinal_mine"]
        rate = summary.get("train_images_per_s")
        rows.append([str(run_dir), ", ".join(changed) or "-", f"{summary['epochs_run']} (best {summary['best_epoch']})",
                     hms(summary.get("train_seconds_this_session")) if rate else "(resumed)",
                     f"{rate:.0f}" if rate else "-",
                     f"{scores['flat']:.4f}", f"{scores['tuned']:.4f}", f"{lo:.4f}-{hi:.4f}",
                     f"{scores['tuned_crossfit']:.4f}", versus, f"{recall:.3f}"])
    print(f"fold {args.fold}, {scores['chips']} out-of-fold chips; train = training time of the session that "
          "finished the fold (a resumed fold shows only its last session)")
    print("\n".join(text_table(rows, "llrrrrrrrrr")))
    if args.lockbox:
        cfgs = [load_config(args.config, [f"run.dir={run_dir}"]) for run_dir in args.runs]
        print("\n" + "\n".join(lockbox_table(cfgs, [str(r) for r in args.runs], args.fold, args.average)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
