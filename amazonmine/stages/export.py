"""Export stage: a finished run -> a model bundle (:mod:`amazonmine.core.bundle`) with its model card.

``amazonmine export --config RUN.yaml --out BUNDLE`` takes the run's finished fold models, the decisions tune
made (``thresholds.json``), the preprocessing the folds were trained with, and the chip look of its training
data, and writes them as one self-checking folder that ``scan --model``, ``predict --model`` and
:meth:`amazonmine.neural.predictor.Predictor.from_bundle` read without the run or its data.

The card's figures are measured here, not copied: on the lockbox (the chips ``split.holdout`` set aside, as
``predict`` wrote them, ``holdout_probabilities.csv``) when the run has one, else on the pooled out-of-fold
chips, and the card says which. For each mine label two operating points are given: the one tune chose (the
Kaggle F2 point, or the run's objective), and a *monitoring* point whose threshold is fitted on the
out-of-fold chips to reach a recall floor (``--monitoring-recall``, default 0.9), then scored on the held-out
chips with its false alarms per 1,000 tiles. An analyst watching a region for new pits reads those two rows.
A run of its own vocabulary (``data.labels``) exports that vocabulary: bundle.json's labels, the decisions, the
card's per-label table, and operating points for the labels scan maps by default
(:func:`amazonmine.core.data.site_labels`); chips never annotated for a label (``?label``) are left out of that
label's figures.

The bundle is written into a staging folder beside ``--out`` and renamed into place: an interrupted export
leaves no half bundle, and ``--overwrite`` replaces an earlier one only once the new one is complete.
"""

from __future__ import annotations

import json
import platform
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from amazonmine import __version__
from amazonmine.core.bundle import (
    BUNDLE_FORMAT,
    BUNDLE_JSON,
    DECISIONS_JSON,
    MANIFEST,
    MODEL_CARD,
    PREPROCESSING_JSON,
    BundleError,
    open_bundle,
    sha256_of,
)
from amazonmine.core.data import PlanetLayout, load_matrix_csv, positives_and_known, site_labels
from amazonmine.core.errors import AmazonmineError
from amazonmine.core.metrics import bootstrap_intervals, mean_f2, per_label_scores
from amazonmine.core.runfolder import HOLDOUT_FOLD, RunFolder

MONITORING_RECALL = 0.9
HELD_OUT_LIST = "held_out_chips.txt"


@dataclass
class ExportSummary:
    out: Path
    name: str
    version: str
    folds: int
    size_bytes: int
    headline: str

    def line(self) -> str:
        return (f"exported {self.name}-v{self.version}: {self.folds} fold model(s), {self.size_bytes / 1e6:.1f} MB, "
                f"{self.headline} -> {self.out}")


@dataclass
class HeldOut:
    """The chips the card's figures are measured on, with their labels, probabilities and decisions."""

    where: str
    names: list[str]  # image names, in the order of the rows below
    y: np.ndarray  # bool, or int8 with -1 (UNKNOWN) where a chip was never annotated for a label
    probs: np.ndarray
    pred: np.ndarray


def run_export(cfg, out: Path, name: str | None = None, version: str = "1", overwrite: bool = False,
               monitoring_recall: float = MONITORING_RECALL, draws: int | None = None,
               card_notes: Path | None = None) -> ExportSummary:
    """Write the run of ``cfg`` as a bundle at ``out`` (see the module docstring). ``card_notes``: a Markdown
    file about the imagery, its licence and its limits, placed in the model card as written."""
    from amazonmine.neural.predictor import Predictor

    run = RunFolder.from_config(cfg)
    out = Path(out)
    name = name or run.root.name
    notes = _read_notes(card_notes)
    if out.exists() and not overwrite:
        raise AmazonmineError(f"{out}: already exists; pass --overwrite to replace it")
    if not run.thresholds.is_file():
        raise AmazonmineError(f"{run.thresholds}: not found; run 'amazonmine tune' before exporting")
    predictor = Predictor.from_run(cfg)
    labels = list(predictor.labels)
    if predictor.unfinished:
        raise AmazonmineError(f"{run.root}: {', '.join(predictor.unfinished)} not finished; finish them "
                              f"('amazonmine train --resume') or leave them out of train.folds before exporting")
    layout = PlanetLayout.from_config(cfg.data)
    held = _held_out(cfg, run, layout, predictor)
    saved_rule = json.loads(run.thresholds.read_text(encoding="utf-8"))
    oof = run.read_oof(layout)
    points = _mine_points(oof, held, predictor.thresholds, monitoring_recall, labels)
    draws = draws or cfg.tune.bootstrap
    intervals = bootstrap_intervals(held.y, held.pred, draws, cfg.tune.bootstrap_seed)
    f2 = mean_f2(held.y, held.pred)
    headline = {"mean_f2": round(f2, 4), "interval": [round(x, 4) for x in intervals["mean_f2"]],
                "measured_on": held.where, "chips": len(held.names)}

    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model_names = []
        for files, model in zip(predictor.model_paths, predictor.models):
            fold_name = f"fold{int(Path(files).parent.name.removeprefix('fold'))}.keras"
            model.save(stage / fold_name)
            model_names.append(fold_name)
        look = _chip_look(predictor, layout)
        preprocessing = {
            "image_size": predictor.image_size, "channels": predictor.channels,
            "image_format": predictor.image_format, "chip_size": predictor.chip_size,
            "chip_ground_m": predictor.chip_ground_m, "chip_look": look,
            "dehaze": None if predictor.dehaze is None else _plain(predictor.dehaze),
            "tta": predictor.tta, "batch_size": predictor.batch_size,
            "band_order_in": "file order as OpenCV reads it (B,G,R for JPEG; B,G,R,NIR for 16-bit TIF)",
        }
        decisions = dict(saved_rule)
        decisions["operating_points"] = {p["label"]: p for p in points}
        summaries = [files.read_summary() for files in run.finished_models().folds]
        meta = {
            "format": BUNDLE_FORMAT, "name": name, "version": str(version),
            "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "labels": labels, "models": model_names, "headline": headline,
            "packages": _versions(),
            "source_run": {"dir": str(run.root), "folds": [s.get("fold") for s in summaries],
                           "split_sha256": summaries[0].get("split_sha256"),
                           "settings": summaries[0].get("settings")},
        }
        _write_json(stage / BUNDLE_JSON, meta)
        _write_json(stage / PREPROCESSING_JSON, preprocessing)
        _write_json(stage / DECISIONS_JSON, decisions)
        # The chips the card was measured on, so anyone can score the bundle on them again
        # (scripts/score_bundle.py) and no later test mistakes them for unseen chips or the reverse.
        (stage / HELD_OUT_LIST).write_text("\n".join(held.names) + "\n", encoding="utf-8")
        card = model_card(meta, preprocessing, cfg, summaries, CardScores(held, intervals, points), predictor, notes)
        (stage / MODEL_CARD).write_text(card, encoding="utf-8")
        _write_manifest(stage)
        open_bundle(stage, labels=labels)  # what is written must read back, or nothing is put in place
        _swap_into_place(stage, out)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
    bundle = open_bundle(out, labels=labels)
    return ExportSummary(out, name, str(version), len(model_names), bundle.size_bytes(), bundle.headline)


# --- what the figures are measured on ------------------------------------------------------------------------

def _held_out(cfg, run: RunFolder, layout: PlanetLayout, predictor) -> HeldOut:
    frame, matrix = layout.load_train(check_files=False)
    row_of = {n: i for i, n in enumerate(frame["image_name"])}
    folds = run.read_folds() if run.folds_csv.is_file() else None
    held = [] if folds is None else folds.loc[folds["fold"] == HOLDOUT_FOLD, "image_name"].tolist()
    if held:
        path = run.holdout_probabilities
        newest_model = max(p.stat().st_mtime for p in predictor.model_paths)
        if not path.is_file() or path.stat().st_mtime < newest_model:
            raise AmazonmineError(f"{path}: the lockbox has not been scored with the current models; run "
                                  f"'amazonmine predict' before exporting")
        names, probs = load_matrix_csv(path, labels=layout.labels)
        keep = [i for i, n in enumerate(names) if n in row_of]
        names = [names[i] for i in keep]
        where = f"{len(names):,} lockbox chips (split.holdout: never trained or tuned on)"
        probs = probs[keep].astype(np.float64)
    else:
        oof = run.read_oof(layout)
        names, probs = oof.names, oof.probs
        where = f"{len(names):,} out-of-fold chips (this run has no lockbox; thresholds were tuned on them)"
    y = matrix[[row_of[n] for n in names]]
    # Never-annotated entries (-1) stay for the scores to leave out; a fully annotated set is plain boolean.
    y = y if (y < 0).any() else y.astype(bool)
    return HeldOut(where, names, y, probs, np.asarray(predictor.decide(probs), bool))


def _mine_points(oof, held: HeldOut, rule, recall_floor: float, labels) -> list[dict]:
    """Per label scan maps by default (the mine labels of the Planet 17): the shipped decision point and a
    recall-floor point fitted on OOF, both scored held out on the chips annotated for the label."""
    points = []
    labels = list(labels)
    oof_positive, _ = positives_and_known(oof.y_true)
    held_positive, held_known = positives_and_known(held.y)
    for label in site_labels(labels):
        j = labels.index(label)
        shipped = float(np.asarray(rule)[j])
        positives = oof.probs[oof_positive[:, j], j]
        # The highest threshold that keeps at least the floor's share of the OOF positives.
        floor_t = float(np.quantile(positives, 1 - recall_floor, method="lower")) if len(positives) else shipped
        floor_t = min(floor_t, shipped)
        n = int(held_known[:, j].sum())  # the chips annotated for the label
        row = {"label": label, "support": int(held_positive[:, j].sum()), "chips": n}
        for key, threshold, decided in (("f2_point", shipped, held.pred[:, j]),
                                        ("monitoring", floor_t, held.probs[:, j] >= floor_t)):
            s = per_label_scores(held.y[:, [j]], decided[:, None])
            false_alarms = int((decided & held_known[:, j] & ~held_positive[:, j]).sum())
            row[key] = {"threshold": round(threshold, 6), "recall": float(s["recall"][0]),
                        "precision": float(s["precision"][0]), "found": int((decided & held_positive[:, j]).sum()),
                        "false_alarms": false_alarms,
                        "false_alarms_per_1000_tiles": round(1000 * false_alarms / max(n, 1), 2)}
        row["monitoring"]["recall_floor_on_oof"] = recall_floor
        points.append(row)
    return points


def _chip_look(predictor, layout: PlanetLayout) -> dict:
    from amazonmine.scanning.tiling import chip_look

    return chip_look(predictor.image_format, predictor.chip_size or predictor.image_size,
                     layout.sample_chip()).to_dict()


# --- the card ---------------------------------------------------------------------------------------------------

@dataclass
class CardScores:
    """What the card reports as measured: the held-out chips with their predictions, the bootstrap intervals of
    their scores, and the operating points of the labels scan maps."""

    held: HeldOut
    intervals: dict
    points: list[dict]


def model_card(meta, pre, cfg, summaries, scores: CardScores, predictor, notes: str = "") -> str:
    """The card: what the toolkit knows (task, recipe, hardware, measured scores, operating points, the limits
    every scan has) and ``notes``, the user's own Markdown about the imagery, its licence and further limits."""
    tc = cfg.train
    held, intervals, points = scores.held, scores.intervals, scores.points
    hours = sum(float(s.get("train_seconds_this_session") or 0) for s in summaries) / 3600
    speeds = [s.get("train_images_per_s") for s in summaries if s.get("train_images_per_s")]
    gpu = any(s.get("mixed_precision") for s in summaries)
    h = meta["headline"]
    labels = list(meta["labels"])
    scores = per_label_scores(held.y, held.pred)
    rows = _label_rows(scores, intervals, labels)
    point_rows = []
    for p in points:
        for key, title in (("f2_point", "shipped"), ("monitoring", "monitoring (recall floor)")):
            q = p[key]
            point_rows.append(f"| {p['label']} | {title} | {q['threshold']:.4f} | {q['recall']:.3f} "
                              f"({q['found']} of {p['support']}) | {q['precision']:.3f} | "
                              f"{q['false_alarms_per_1000_tiles']:.1f} |")
    floor = points[0]["monitoring"]["recall_floor_on_oof"] if points else MONITORING_RECALL
    look = pre["chip_look"] or {}
    side = f"{pre['chip_ground_m']:.0f} m"
    weights = "from scratch (no pretrained weights)" if tc.weights == "none" else f"from {tc.weights} weights"
    extras = [x for x, on in (("dihedral and brightness/contrast augmentation", tc.augment),
                              (f"rare labels oversampled to {cfg.split.rare_target} training rows",
                               cfg.split.rare_target > 0),
                              ("precise BatchNorm on the best checkpoint", tc.bn_recalibration_batches > 0),
                              (f"weights averaged (EMA {tc.ema:g})", tc.ema > 0)) if on]
    speed = f" at {np.mean(speeds):.0f} images/s" if speeds else ""
    mapped_labels = site_labels(labels)
    mapped = "mines" if set(mapped_labels) <= {"artisinal_mine", "conventional_mine"} else ", ".join(mapped_labels)
    example = points[0]["label"] if points else mapped_labels[0]
    return f"""# Model card: {meta['name']} v{meta['version']}

**Headline:** mean F2 {h['mean_f2']:.4f} (95% interval {h['interval'][0]:.4f}-{h['interval'][1]:.4f}) on
{h['measured_on']}.

Bundle format {meta['format']}, made {meta['created']} by amazonmine {meta['packages'].get('amazonmine')}.

## What it does
A multi-label classifier: given one square chip covering {side} x {side} of ground, it gives the probability
of each of {len(labels)} labels ({', '.join(labels)}) and the decisions tuned for them. `amazonmine scan`
cuts GeoTIFF scenes into such tiles and dissolves the tiles decided as {mapped} into sites; `amazonmine predict`
labels chips. Its training chips were {pre['chip_size'] or 'square'} px {look.get('kind', pre['image_format'])}
files ({look.get('encoding', '-')} encoding, JPEG quality {look.get('quality', '-')}), seen by the model at
{pre['image_size']} px; scan makes every tile the same way.

{notes.strip() or "## Data" + chr(10) + "Not described: pass `amazonmine export --card-notes FILE` (Markdown)."}

## Recipe
{tc.backbone} {weights}, {pre['image_size']} px input, {tc.epochs} epochs, batch {tc.batch_size}, {tc.schedule}
learning rate from {tc.learning_rate:g} (warm-up {tc.warmup_epochs} epoch(s)), weight decay {tc.weight_decay:g},
dropout {tc.dropout:g}{"; " + "; ".join(extras) if extras else ""}; best epoch by validation F2.
{len(summaries)} fold model(s) of a {cfg.split.folds}-fold split, averaged at prediction, with
{pre['tta']}-view test-time augmentation. Trained on {"GPU(s)" if gpu else "a CPU"}: {hours:.1f} h of
training{speed}. Decisions: {predictor.thresholds.describe()}, fitted on the out-of-fold chips.

## Held-out scores
{len(held.names):,} chips: {held.where}; decisions as shipped; 95% intervals by bootstrap over chips.

| label | positives | precision (95%) | recall (95%) |
|---|---|---|---|
{chr(10).join(rows)}

## Operating points for the {"mine labels" if mapped == "mines" else "labels scan maps"}
"Shipped" is the decision above. The monitoring point's threshold is fitted on the out-of-fold chips to keep
at least {floor:.0%} of their positives, then scored on the same held-out chips: more pits found, more false
alarms to look at. Use it in a scan with `--set "scan.min_probability={{{example}: T}}"`.

| label | point | threshold | recall (found) | precision | false alarms per 1,000 tiles |
|---|---|---|---|---|---|
{chr(10).join(point_rows)}

## Limits every scan with it has
- **Sites are unions of {side} tiles.** A site's area is the area of the tiles that fired, which overstates
  the pit itself many times over.
- **Rare labels:** {_weak(scores, labels)} are found in under 30% of cases at the shipped point (table above).
- **Trained on {"GPU(s)" if gpu else "a CPU only, never on a GPU"}.**
"""


def _label_rows(scores: dict, intervals: dict, labels) -> list[str]:
    """The card's held-out table: a row per label of the vocabulary (chips never annotated for it left out)."""
    rows = []
    for j, label in enumerate(labels):
        precision = ("- (none predicted)" if not scores["predicted"][j] else
                     f"{scores['precision'][j]:.3f} ({_interval(intervals['precision'][j])})")
        recall = ("- (no positives)" if not scores["support"][j] else
                  f"{scores['recall'][j]:.3f} ({_interval(intervals['recall'][j])})")
        rows.append(f"| {label} | {int(scores['support'][j])} | {precision} | {recall} |")
    return rows


def _interval(pair) -> str:
    lo, hi = pair
    return "-" if not (np.isfinite(lo) and np.isfinite(hi)) else f"{lo:.2f}-{hi:.2f}"


def _weak(scores, labels) -> str:
    weak = [label for j, label in enumerate(labels) if scores["support"][j] and scores["recall"][j] < 0.3]
    return ", ".join(weak) if weak else "none of the labels"


# --- files -------------------------------------------------------------------------------------------------------

def _read_notes(path: Path | None) -> str:
    if path is None:
        return ""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise AmazonmineError(f"{path}: cannot read the card notes ({exc})") from None
    if len(text) > 64_000:
        raise AmazonmineError(f"{path}: card notes longer than 64 kB; keep them to a page")
    return text


def _plain(params) -> dict:
    import dataclasses

    return {k: (float(v) if isinstance(v, float) else v) for k, v in dataclasses.asdict(params).items()}


def _write_json(path: Path, value: dict) -> None:
    path.write_text(json.dumps(value, indent=2, sort_keys=False, default=str) + "\n", encoding="utf-8")


def _write_manifest(stage: Path) -> None:
    lines = [f"{sha256_of(p)}  {p.name}" for p in sorted(stage.iterdir()) if p.is_file() and p.name != MANIFEST]
    (stage / MANIFEST).write_text("\n".join(lines) + "\n", encoding="utf-8")


def _swap_into_place(stage: Path, out: Path) -> None:
    """Rename the finished bundle to ``out``; an older bundle there goes only after the new one is in place."""
    if out.is_symlink() or out.is_file():
        raise BundleError(f"{out}: a file or link is in the way; remove it or choose another --out")
    old = None
    if out.exists():
        if not (out / BUNDLE_JSON).is_file():
            raise BundleError(f"{out}: exists and is not a model bundle; it is left alone")
        old = out.with_name(f".{out.name}.old")
        if old.exists():
            shutil.rmtree(old)
        out.rename(old)
    stage.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {"amazonmine": __version__, "python": platform.python_version()}
    for package in ("tensorflow", "keras", "numpy", "opencv-python-headless"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            pass
    return found
