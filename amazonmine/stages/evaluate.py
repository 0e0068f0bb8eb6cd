"""Evaluate stage: an HTML report of a run that a person can open offline: scores, threshold curves, confusions,
mine chips.

``<run_dir>/report/index.html``, rendered from the Jinja2 template ``templates/evaluate_report.html``
(autoescaped: every name and path reaches the page as text), has no script and no remote resource: CSS is inline
and every picture is a PNG or JPEG file beside it (``curves.png``, ``cooccurrence.png``, ``gallery/``, ``dehaze/``), so
the folder can be zipped and mailed. Sections, in the order a reviewer asks the questions:

1. per-label precision, recall, F2 and counts on the out-of-fold chips, decided as ``predict`` would decide
   (the rule tune wrote to thresholds.json, else the flat ``tune.start`` threshold), each precision and recall
   with its bootstrap 95% interval (chips resampled): a rare label's recall moves by a whole chip per positive;
2. the lockbox: the chips ``split.holdout`` set aside, which no fold trained or tuned on, scored with the
   same decisions and reported apart from the out-of-fold figures. Their probabilities are the ones ``predict``
   wrote with the run's finished fold models (``holdout_probabilities.csv``); when that file is absent or older
   than a model or the split, the section says so and names the command to run: evaluate never runs a model
   (it does not import amazonmine.neural). Each distinct set of predictions scored there is logged
   (``lockbox_looks.json``), and from the second the report says which look this is and what the first scored;
3. precision-recall curves of the mine labels with the operating point marked (and its objective, when tune
   was given one);
4. threshold curves: the dataset's mean F2 as each label's threshold moves, the others held (what ``tune``
   climbs), with the label's own F2 beside it and the chosen threshold marked;
5. true versus predicted labels: which true labels the model reports as which;
6. the chips the model is surest contain a mine, with their true tags (false alarms stand out);
7. raw versus dehazed hazy chips, when the dehaze stage has run;
8. the submission's label frequencies next to the training set's, when predict has run.

Optional inputs that are absent make their section say what is missing; only the OOF predictions are required.
Plots use matplotlib's Agg canvas through the object API (no pyplot state, no display needed).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path

import numpy as np

from amazonmine.core.data import (
    WEATHER_LABELS,
    DataError,
    PlanetLayout,
    load_matrix_csv,
    positives_and_known,
    read_image,
    site_labels,
    weather_columns,
)
from amazonmine.core.decisions import (
    DECODERS,
    DecisionRule,
    Objective,
    decode,
    label_curve_counts,
    parse_objectives,
    threshold_curve,
)
from amazonmine.core.errors import AmazonmineError
from amazonmine.core.io import (
    atomic_path,
    read_json,
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
)
from amazonmine.core.metrics import bootstrap_intervals, mean_f2, paired_mean, per_image_f2, per_label_scores
from amazonmine.core.runfolder import HOLDOUT_FOLD, LOCKBOX_LOOKS_JSON, THRESHOLDS_JSON, OofSet, RunFolder

DEHAZE_PAIRS = 8
REPORT_TEMPLATE = "evaluate_report.html"
MACROS_TEMPLATE = "evaluate_macros.html"


@dataclass
class EvaluateResult:
    path: Path
    oof_f2: float
    n_chips: int
    thresholds_source: str
    missing: list[str] = field(default_factory=list)
    oof_interval: tuple[float, float] | None = None
    lockbox: "Lockbox | None" = None

    def headline(self) -> str:
        gaps = f"; not shown: {', '.join(self.missing)}" if self.missing else ""
        interval = f" (95% {self.oof_interval[0]:.4f}-{self.oof_interval[1]:.4f})" if self.oof_interval else ""
        lockbox = ""
        if self.lockbox is not None:
            lo, hi = self.lockbox.interval
            lockbox = f"; lockbox mean F2 {self.lockbox.f2:.4f} (95% {lo:.4f}-{hi:.4f}) over {self.lockbox.n} chips"
            if len(self.lockbox.looks) > 1:
                lockbox += f", its look {len(self.lockbox.looks)} (see the report)"
            if self.lockbox.single:
                scores = [f2 for _, f2, _ in self.lockbox.single]
                lockbox += (f", each fold alone {min(scores):.4f}-{max(scores):.4f}, ensemble gain "
                            f"{self.lockbox.gain[0]:+.4f} "
                            f"(95% {self.lockbox.gain[1]:+.4f} to {self.lockbox.gain[2]:+.4f})")
        return (f"wrote {self.path} (OOF mean F2 {self.oof_f2:.4f}{interval} over {self.n_chips} chips, "
                f"{self.thresholds_source}{lockbox}){gaps}")


@dataclass
class Lockbox:
    """The hold-out chips scored with the run's decisions."""

    n: int
    f2: float
    interval: tuple[float, float]
    y_true: np.ndarray
    pred: np.ndarray
    intervals: dict
    unscored: list[str] = field(default_factory=list)
    # With two folds or more: (fold, mean F2, 95% interval) of each fold's model alone, and the ensemble's gain
    # over the average fold alone (mean, 95% interval; chips resampled, paired).
    single: list[tuple[int, float, tuple[float, float]]] = field(default_factory=list)
    gain: tuple[float, float, float] | None = None
    # With tuned decisions: each decoder's mean F2 and 95% interval on the same chips (the run's own and the
    # other, fitted on the OOF chips as tune fits it), and expected-F2 minus thresholds (mean, paired interval).
    decoders: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    decoder_difference: tuple[float, float, float] | None = None
    # Every distinct set of predictions scored on these chips in this run folder, oldest first (_record_look).
    looks: list[dict] = field(default_factory=list)


# --- small helpers -----------------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def _templates():
    """The report's templates: autoescaped, and a name the page uses but the code does not pass is an error."""
    from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

    return Environment(loader=PackageLoader("amazonmine", "templates"),
                       autoescape=select_autoescape(default=True, default_for_string=True),
                       undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)


def _save_figure(fig, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")


def _write_jpeg(path: Path, bgr: np.ndarray) -> None:
    import cv2

    # OpenCV encodes B, G, R as the file's R, G, B: the chip arrays are already in its order, no swap needed.
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:  # pragma: no cover - encoding a valid uint8 array does not fail
        raise DataError(f"{path}: cannot encode thumbnail")
    write_bytes_atomic(path, buf.tobytes())


def _thumbnail(bgr: np.ndarray, size: int) -> np.ndarray:
    import cv2

    return cv2.resize(bgr, (size, size), interpolation=cv2.INTER_AREA)


# --- decisions ---------------------------------------------------------------------------------------------

def _decision_rule(cfg) -> tuple[DecisionRule | np.ndarray, bool, str]:
    """The rule predict would use: thresholds.json if tune has run, else the flat start threshold."""
    run = RunFolder.from_config(cfg)
    if run.thresholds.is_file():
        rule, weather = run.read_thresholds()
        source = "tuned thresholds" if rule.decoder == "thresholds" else f"tuned {rule.describe()}"
        return rule, weather, source
    flat = np.full(len(cfg.data.labels), cfg.tune.start)
    return flat, cfg.tune.weather_decoding, f"flat threshold {cfg.tune.start:g} (no {THRESHOLDS_JSON})"


def _tuned(run: RunFolder, labels) -> tuple[dict, dict[int, Objective]]:
    """What tune recorded beside the rule (cross-fitted figures, objectives); empty without a thresholds.json."""
    if not run.thresholds.is_file():
        return {}, {}
    saved = read_json(run.thresholds)
    try:
        return saved, parse_objectives(saved.get("objectives") or {}, labels)
    except ValueError as exc:
        raise DataError(f"{run.thresholds}: {exc}") from None


def _bootstrap_settings(cfg) -> tuple[int, int]:
    return int(cfg.tune.bootstrap), int(cfg.tune.bootstrap_seed)


def _interval(pair) -> str:
    lo, hi = pair
    return "n/a" if not (np.isfinite(lo) and np.isfinite(hi)) else f"{lo:.3f}-{hi:.3f}"


def _label_curve(y, probs, thresholds, j, candidates, weather_decoding, labels) -> np.ndarray:
    """Label j's own F2 at each candidate threshold, decided exactly as decode decides (weather rules included);
    chips never annotated for the label count neither way."""
    positive, known = positives_and_known(y)
    t = thresholds.copy()
    t[j] = -np.inf
    on = decode(probs, t, weather_decoding, labels)[:, j]
    t[j] = np.inf
    off = decode(probs, t, weather_decoding, labels)[:, j]
    decided = np.where(probs[:, j, None] >= candidates[None, :], on[:, None], off[:, None]) & known[:, j, None]
    tp = (decided & positive[:, j, None]).sum(axis=0)
    # F2 = 5 P R / (4 P + R) = 5 tp / (4 positives + predicted); 0 when there is nothing to find or claim.
    denom = 4 * positive[:, j].sum() + decided.sum(axis=0)
    return np.divide(5.0 * tp, denom, out=np.zeros(len(candidates)), where=denom > 0)


# --- sections ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Scoring:
    """How evaluate decides and scores, the same in every section: the run's rule (thresholds, or the
    expected-F2 decoder) with weather decoding on or off over the run's labels, and the bootstrap's draws and
    seed behind every interval."""

    rule: object
    weather: bool
    labels: list
    draws: int
    seed: int

    def decide(self, probs: np.ndarray) -> np.ndarray:
        return decode(probs, self.rule, self.weather, self.labels)


def _summary(cfg, oof: OofSet, pred: np.ndarray, source: str, weather: bool, interval: tuple[float, float],
             saved: dict, lockbox: Lockbox | None) -> list[list[str]]:
    f2, f2_flat = mean_f2(oof.y_true, pred), mean_f2(oof.y_true, oof.probs >= cfg.tune.start)
    rows = [
        ["run folder", str(Path(cfg.run.dir).resolve())],
        ["out-of-fold chips", f"{len(oof.names)} of {oof.n_labelled} labelled, folds {', '.join(map(str, oof.folds))}"],
        ["decisions", f"{source}, weather decoding {'on' if weather else 'off'}"],
        ["OOF mean F2 (Kaggle metric)", f"{f2:.4f} (95% interval {interval[0]:.4f}-{interval[1]:.4f})"],
        [f"OOF mean F2 at a flat {cfg.tune.start:g}, no decoding", f"{f2_flat:.4f}"],
    ]
    if len(oof.folds) > 1:
        rows.append(["OOF mean F2 of each fold's chips (these decisions)",
                     ", ".join(f"fold {k} {mean_f2(oof.y_true[rows], pred[rows]):.4f}" for k, rows in oof.by_fold())])
    if saved.get("crossfit_f2"):
        rows.append(["OOF mean F2 cross-fitted (rule fitted on one half, scored on the other)",
                     ", ".join(f"{k} {v:.4f}" for k, v in saved["crossfit_f2"].items())])
    if lockbox is not None:
        first = "" if len(lockbox.looks) < 2 else (f"; look {len(lockbox.looks)} at these chips, the first "
                                                    f"scored {lockbox.looks[0].get('mean_f2', float('nan')):.4f}")
        rows.append(["lockbox mean F2 (held-out chips)",
                     f"{lockbox.f2:.4f} (95% interval {lockbox.interval[0]:.4f}-{lockbox.interval[1]:.4f}) over "
                     f"{lockbox.n} chips{first}"])
    return rows


def _score_rows(y: np.ndarray, pred: np.ndarray, intervals: dict, first_columns, labels) -> list[list]:
    """One row per label of the vocabulary; chips never annotated for a label are not counted in its row."""
    s = per_label_scores(y, pred)
    positive, known = positives_and_known(y)
    tp = (positive & known & np.asarray(pred, bool)).sum(axis=0)
    return [[name, *first_columns(j, name), int(s["support"][j]), int(s["predicted"][j]), int(tp[j]),
             int(s["predicted"][j] - tp[j]), int(s["support"][j] - tp[j]),
             f"{s['precision'][j]:.3f}", f"{s['recall'][j]:.3f}", f"{s['f2'][j]:.3f}",
             _interval(intervals["precision"][j]), _interval(intervals["recall"][j])]
            for j, name in enumerate(labels)]


_COUNT_HEADER = ["positives", "predicted", "TP", "FP", "FN", "precision", "recall", "F2", "precision 95%",
                 "recall 95%"]


def _scores(oof: OofSet, pred: np.ndarray, thresholds: np.ndarray, weather: bool, intervals: dict,
            objectives: dict[int, Objective], labels) -> dict:
    grouped = weather and weather_columns(labels) is not None

    def first(j, name):
        return ["argmax" if grouped and name in WEATHER_LABELS else f"{thresholds[j]:.2f}"]

    rows = _score_rows(oof.y_true, pred, intervals, first, labels)
    for j, row in enumerate(rows):
        row.append(objectives[j].describe() if j in objectives else "mean F2")
    return {"header": ["label", "threshold", *_COUNT_HEADER, "objective"], "rows": rows}


def _curves(out: Path, oof: OofSet, thresholds, weather: bool, grid: int, labels) -> None:
    from matplotlib.figure import Figure

    positive, _ = positives_and_known(oof.y_true)
    grouped = weather and weather_columns(labels) is not None
    rows = -(-(len(labels) + 1) // 4)  # a panel per label and one for the key (5 x 4 for the Planet 17)
    fig = Figure(figsize=(16, 2.6 * rows))
    axes = np.atleast_1d(fig.subplots(rows, 4)).ravel()
    for j, name in enumerate(labels):
        ax = axes[j]
        candidates, objective = threshold_curve(oof.y_true, oof.probs, thresholds, j, grid, weather, labels)
        own = _label_curve(oof.y_true, oof.probs, thresholds, j, candidates, weather, labels)
        ax.plot(candidates, objective, color="tab:blue", label="mean F2 (all labels)")
        ax.set_ylabel("mean F2", color="tab:blue", fontsize=8)
        twin = ax.twinx()
        twin.plot(candidates, own, color="tab:orange", lw=1, ls="--", label=f"{name} F2")
        twin.set_ylim(0, 1.02)
        twin.tick_params(labelsize=7)
        ax.tick_params(labelsize=7)
        ax.set_xlim(0, 1)
        decided_by_argmax = grouped and name in WEATHER_LABELS
        if not decided_by_argmax:
            ax.axvline(thresholds[j], color="k", lw=1)
        title = f"{name} (argmax)" if decided_by_argmax else f"{name} @ {thresholds[j]:.2f}"
        ax.set_title(f"{title}, n={int(positive[:, j].sum())}", fontsize=9)
    for ax in axes[len(labels):]:
        ax.axis("off")
    # The spare panel holds the key: a legend in each of 17 small panels would hide the curves.
    axes[-1].text(0, 0.6, "solid: dataset mean F2 (left axis)\ndashed: the label's own F2 (right axis)\n"
                  "vertical line: chosen threshold", fontsize=11, va="top")
    fig.tight_layout()
    _save_figure(fig, out / "curves.png")


def _pr_curves(out: Path, oof: OofSet, scoring: Scoring, thresholds: np.ndarray, pred: np.ndarray,
               objectives: dict[int, Objective], lockbox: Lockbox | None) -> None:
    """Precision against recall of the labels scan maps (the mine labels of the Planet 17)."""
    from matplotlib.figure import Figure

    labels, weather = scoring.labels, scoring.weather
    decoder = getattr(scoring.rule, "decoder", "thresholds")
    shown = site_labels(labels)
    fig = Figure(figsize=(6 * len(shown), 5))
    axes = np.atleast_1d(fig.subplots(1, len(shown)))
    for ax, name in zip(axes, shown):
        j = list(labels).index(name)
        _, tp, predicted, positives = label_curve_counts(oof.y_true, oof.probs, thresholds, j, weather, labels)
        if positives == 0:
            ax.text(0.5, 0.5, f"no {name} chip among the OOF chips", ha="center", va="center")
            ax.set_title(name)
            continue
        keep = predicted > 0
        ax.plot(tp[keep] / positives, tp[keep] / predicted[keep], color="tab:blue", lw=1.5,
                label="OOF, threshold moved")
        s = per_label_scores(oof.y_true[:, [j]], pred[:, [j]])
        held = j in objectives
        label = f"decisions: {objectives[j].describe()}" if held else (
            f"decisions: threshold {thresholds[j]:.3f}" if decoder == "thresholds" else "decisions: expected F2")
        ax.plot(s["recall"][0], s["precision"][0], "o", color="k", ms=8, label=f"{label} (OOF)")
        if held and objectives[j].kind == "recall":
            ax.axvline(objectives[j].value, color="k", ls=":", lw=1, label="recall floor")
        if held and objectives[j].kind == "precision":
            ax.axhline(objectives[j].value, color="k", ls=":", lw=1, label="precision floor")
        if lockbox is not None and (lockbox.y_true[:, j] > 0).any():
            h = per_label_scores(lockbox.y_true[:, [j]], lockbox.pred[:, [j]])
            ax.plot(h["recall"][0], h["precision"][0], "s", color="tab:green", ms=8, label="decisions (lockbox)")
        ax.set_xlim(0, 1.02)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_title(f"{name}, {int(positives)} positives")
        ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    _save_figure(fig, out / "pr_curves.png")


def _cooccurrence(out: Path, y: np.ndarray, pred: np.ndarray, labels) -> None:
    from matplotlib.figure import Figure

    y, _ = positives_and_known(y)  # a chip never annotated for a is not truly a
    support = y.sum(axis=0)
    counts = y.T.astype(np.int64) @ pred.astype(np.int64)  # [a, b]: chips truly a that were predicted b
    share = np.divide(counts, support[:, None], out=np.zeros(counts.shape), where=support[:, None] > 0)
    fig = Figure(figsize=(10, 9))
    ax = fig.subplots()
    im = ax.imshow(share, cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=9)
    ax.set_yticks(range(len(labels)), [f"{n} ({int(c)})" for n, c in zip(labels, support)], fontsize=9)
    ax.set_xlabel("predicted label")
    ax.set_ylabel("true label (chips)")
    for a in range(len(labels)):
        for b in range(len(labels)):
            if share[a, b] >= 0.005:
                ax.text(b, a, f"{100 * share[a, b]:.0f}", ha="center", va="center", fontsize=7,
                        color="black" if share[a, b] > 0.6 else "white")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true label's chips")
    fig.tight_layout()
    _save_figure(fig, out / "cooccurrence.png")


def _chip_folders(cfg) -> list[Path]:
    # The chips the model saw first (the dehazed copy when dehaze is on), then the raw download.
    first = RunFolder.from_config(cfg).chip_dir(cfg.data.train_dir)
    raw = Path(cfg.data.root) / cfg.data.train_dir
    return [first] if first == raw else [first, raw]


def _read_chip(folders: list[Path], name: str) -> np.ndarray:
    for folder in folders:
        path = folder / f"{name}.jpg"
        if path.is_file():
            return read_image(path)
    raise DataError(f"{name}.jpg not found in {' or '.join(map(str, folders))}")


def _figure(out: Path, folders: list[Path], name: str, rel: str, caption: list[str], good: bool,
            size: int) -> dict:
    """One thumbnail (written to ``out/rel``) with its caption lines, in a green box if ``good`` else red; or,
    for a chip that cannot be read, the problem in its place."""
    figure = {"name": name, "rel": rel, "caption": caption, "good": good, "size": size, "problem": None}
    try:
        chip = _read_chip(folders, name)
    except DataError as exc:
        return {**figure, "problem": str(exc)}
    _write_jpeg(out / rel, _thumbnail(chip, size))
    return figure


def _gallery(out: Path, cfg, oof: OofSet, pred: np.ndarray, labels) -> tuple[dict, bool]:
    """Chips of the labels scan maps (the mine labels of the Planet 17): the surest, and every true one."""
    folders = _chip_folders(cfg)
    size, n = cfg.evaluate.thumbnail, cfg.evaluate.gallery_size
    mines = []
    unreadable: set[str] = set()
    positive, _ = positives_and_known(oof.y_true)

    def tags_of(i: int) -> str:
        return " ".join(t for t, on in zip(labels, positive[i]) if on)

    for label in site_labels(labels):
        j = list(labels).index(label)
        # What the model is surest of: false alarms stand out (red).
        order = np.argsort(-oof.probs[:, j], kind="stable")[:n]
        top = []
        for rank, i in enumerate(order):
            caption = [oof.names[i], f"p={oof.probs[i, j]:.3f}", tags_of(i)]
            top.append(_figure(out, folders, oof.names[i], f"gallery/{label}_{rank:02d}_{oof.names[i]}.jpg",
                               caption, bool(positive[i, j]), size))
        unreadable.update(f["name"] for f in top if f["problem"])
        # Every true chip of the label, least confident first: the misses a recall-weighted score cares about.
        all_true = np.flatnonzero(positive[:, j])
        true_rows = all_true[np.argsort(oof.probs[all_true, j], kind="stable")][:n]
        true = []
        for rank, i in enumerate(true_rows):
            verdict = "found" if pred[i, j] else "missed"
            caption = [oof.names[i], f"p={oof.probs[i, j]:.3f}: {verdict}", tags_of(i)]
            true.append(_figure(out, folders, oof.names[i], f"gallery/{label}_true_{rank:02d}_{oof.names[i]}.jpg",
                                caption, bool(pred[i, j]), size))
        unreadable.update(f["name"] for f in true if f["problem"])
        mines.append({"label": label, "top": top, "found": int(positive[order, j].sum()), "true": true,
                      "caught": int(pred[all_true, j].sum()), "total": len(all_true)})
    return {"folders": [str(f) for f in folders], "labels": mines, "unreadable": len(unreadable)}, not unreadable


def _dehaze_pairs(out: Path, cfg, frame, matrix) -> tuple[dict, bool]:
    raw_dir = Path(cfg.data.root) / cfg.data.train_dir
    clean_dir = RunFolder.from_config(cfg).dehazed / cfg.data.train_dir
    if not clean_dir.is_dir():
        return {"problem": f"no dehazed chips at {clean_dir} (dehaze disabled or not run): nothing to compare."}, False
    labels = list(cfg.data.labels)
    if "haze" not in labels:
        return {"problem": "haze is not a label of this run's vocabulary (data.labels): no hazy chips to show."}, False
    hazy = frame["image_name"][matrix[:, labels.index("haze")] == 1]
    pairs = [n for n in hazy if (raw_dir / f"{n}.jpg").is_file() and (clean_dir / f"{n}.jpg").is_file()]
    if not pairs:
        return {"problem": f"no chip labelled haze has both {raw_dir}/<name>.jpg and {clean_dir}/<name>.jpg."}, False
    size = max(cfg.evaluate.thumbnail, 160)
    figures = []
    for name in pairs[:DEHAZE_PAIRS]:
        try:
            raw = _thumbnail(read_image(raw_dir / f"{name}.jpg"), size)
            clean = _thumbnail(read_image(clean_dir / f"{name}.jpg"), size)
        except DataError as exc:
            figures.append({"problem": str(exc)})
            continue
        gap = np.full((size, 6, 3), 255, dtype=np.uint8)
        rel = f"dehaze/{name}.jpg"
        _write_jpeg(out / rel, np.hstack([raw, gap, clean]))
        figures.append({"problem": None, "rel": rel, "name": name, "width": 2 * size + 6})
    return {"problem": None, "figures": figures, "total": len(pairs), "raw_dir": str(raw_dir),
            "clean_dir": str(clean_dir)}, True


def _submission(run: RunFolder, train_matrix: np.ndarray, labels) -> tuple[dict, bool]:
    from amazonmine.core.data import read_labels, tags_to_matrix

    sub_path, prob_path = run.submission, run.test_probabilities
    if not sub_path.is_file() and not prob_path.is_file():
        return {"problem": f"no {sub_path.name} or {prob_path.name} in {run.root} (run 'amazonmine predict')."}, False
    columns = {"training share": positives_and_known(train_matrix)[0].mean(axis=0)}
    notes = []
    try:
        if sub_path.is_file():
            sub = tags_to_matrix(read_labels(sub_path, require_weather=False, labels=labels)["tags"], str(sub_path),
                                 labels)
            columns["submission share"] = sub.mean(axis=0)
            notes.append(f"submission.csv: {len(sub)} chips, {sub.sum(axis=1).mean():.2f} labels per chip")
        else:
            notes.append(f"no {sub_path.name}")
        if prob_path.is_file():
            names, probs = load_matrix_csv(prob_path, labels=labels)
            columns["mean test probability"] = probs.mean(axis=0)
            notes.append(f"test_probabilities.csv: {len(names)} chips")
        else:
            notes.append(f"no {prob_path.name}")
    except DataError as exc:
        return {"problem": f"cannot read the predict outputs: {exc}"}, False
    rows = [[name] + [f"{100 * v[j]:.2f}%" if "share" in k else f"{v[j]:.3f}" for k, v in columns.items()]
            for j, name in enumerate(labels)]
    return {"problem": None, "notes": notes, "columns": list(columns), "rows": rows}, True


def _lockbox_decoders(cfg, oof: OofSet, rule, y: np.ndarray, probs: np.ndarray, draws: int, seed: int):
    """(decoders, difference, table rows): both decoders on the lockbox with the run's thresholds and operating
    points, the one the run does not use fitted on the OOF chips as tune would fit it; None without tuning."""
    if not isinstance(rule, DecisionRule):
        return None
    calibration = cfg.tune.calibration
    rules = {name: rule if name == rule.decoder else rule.with_decoder(name, calibration, oof.y_true, oof.probs)
             for name in DECODERS}
    decided = {name: r.decide(probs) for name, r in rules.items()}  # the expected-F2 decoder is the dear one
    per_chip = {name: per_image_f2(y, pred) for name, pred in decided.items()}
    scored = {}
    for name, pred in decided.items():
        lo, hi = bootstrap_intervals(y, pred, draws, seed)["mean_f2"]
        scored[name] = (float(per_chip[name].mean()), float(lo), float(hi))
    difference = paired_mean(per_chip["expected_f2"] - per_chip["thresholds"], draws, seed)
    rows = [[f"{rules[name].describe()}{' (this run)' if name == rule.decoder else ''}", f"{f2:.4f}",
             f"{lo:.4f}-{hi:.4f}"] for name, (f2, lo, hi) in scored.items()]
    return scored, difference, rows


def _record_look(run: RunFolder, names: list[str], pred: np.ndarray, f2: float) -> list[dict]:
    """Log this lockbox score in the run folder unless the same predictions were scored before; the log.

    A hold-out stays a fair test only while nothing is chosen by looking at it. Re-running evaluate with the
    same models and decisions is the same look; new decisions, folds or models that change what is predicted
    for the held-out chips are a new one, and the report says how many there have been."""
    path = run.lockbox_looks
    restart = "delete the file to start the count again"
    try:
        looks = read_json(path).get("looks", []) if path.is_file() else []
    except AmazonmineError as exc:
        raise AmazonmineError(f"{exc}; {restart}") from None
    if not isinstance(looks, list) or not all(isinstance(look, dict) for look in looks):
        raise AmazonmineError(f"{path}: 'looks' must be a list of objects; {restart}")
    digest = hashlib.sha256("\n".join(names).encode() + np.packbits(pred.astype(bool)).tobytes()).hexdigest()
    if not any(look.get("predictions_sha256") == digest for look in looks):
        try:
            folds = run.finished_models().folds
        except AmazonmineError:
            folds = []
        looks.append({"scored_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                      "mean_f2": round(float(f2), 6), "folds": [files.fold for files in folds],
                      "predictions_sha256": digest})
        write_json_atomic(path, {"looks": looks})
    return looks


def _looks_warning(looks: list[dict]) -> str | None:
    """None for a first look; otherwise a warning with every earlier score."""
    if len(looks) < 2:
        return None
    earlier = "; ".join(f"{look.get('scored_utc', '?')}: {look.get('mean_f2', float('nan')):.4f}"
                        for look in looks[:-1])
    return (f"This is look {len(looks)} at the lockbox: it has been scored with {len(looks)} different "
            f"sets of predictions in this run folder (earlier: {earlier}; all in {LOCKBOX_LOOKS_JSON}). "
            "Whatever was chosen by comparing them was fitted to these chips, so the best of them is "
            "optimistic: quote the first look, or set aside a new hold-out (a new split) for a fair test.")


def _looks_html(looks: list[dict]) -> str:
    """The warning as the report shows it ('' for a first look)."""
    warning = _looks_warning(looks)
    return "" if warning is None else str(_templates().get_template(MACROS_TEMPLATE).module.missing(warning))


def _lockbox(cfg, run: RunFolder, layout: PlanetLayout, frame, matrix, scoring: Scoring,
             oof: OofSet) -> tuple[dict, Lockbox | None, bool]:
    """The lockbox section's values, its scores, and whether a hold-out that exists could be scored."""
    held = run.held_out_chips()
    if not held:
        return {"state": "none"}, None, True
    try:
        stale = run.lockbox_staleness(held, layout.labels)
        if stale is None:
            names, probs = load_matrix_csv(run.holdout_probabilities, labels=layout.labels)
    except (AmazonmineError, OSError) as exc:
        return {"state": "failed", "problem": f"{len(held)} chips are held out but could not be scored: {exc}"}, \
            None, False
    if stale is not None:
        # Predict writes the lockbox probabilities; a report only reads them (it never runs a model).
        command = f"amazonmine predict --run {run.root}"
        return {"state": "failed", "hint": f"lockbox ({stale}: run '{command}')",
                "problem": f"{len(held)} chips are held out, but their probabilities are not current: {stale}. "
                           f"Evaluate scores what predict wrote and runs no model itself: run '{command}' "
                           "to score them with the fold models, then evaluate again."}, None, False
    row_of = {name: i for i, name in enumerate(frame["image_name"])}
    keep = [i for i, name in enumerate(names) if name in row_of]
    y = matrix[[row_of[names[i]] for i in keep]]
    y = y if (y < 0).any() else y.astype(bool)  # never-annotated entries (-1) stay for the scores to leave out
    pred = scoring.decide(probs[keep])
    intervals = bootstrap_intervals(y, pred, scoring.draws, scoring.seed)
    scored = {names[i] for i in keep}
    box = Lockbox(len(y), mean_f2(y, pred), intervals["mean_f2"], y, pred, intervals,
                  sorted(set(held) - scored))
    box.looks = _record_look(run, [names[i] for i in keep], pred, box.f2)
    section = {"state": "scored", "n": box.n, "fold": HOLDOUT_FOLD, "file": run.holdout_probabilities.name,
               "f2": box.f2, "interval": box.interval, "looks_warning": _looks_warning(box.looks), "alone": None,
               "decoders": None, "unscored": box.unscored,
               "rows": _score_rows(y, pred, intervals, lambda j, name: [], layout.labels)}
    alone = _each_fold_alone(run, names, keep, y, pred, box.interval, scoring)
    if alone is not None:
        box.single, box.gain, alone_rows = alone
        if box.single:
            section["alone"] = {"gain": box.gain, "rows": alone_rows}
    decoders = _lockbox_decoders(cfg, oof, scoring.rule, y, probs[keep], scoring.draws, scoring.seed)
    if decoders is not None:
        box.decoders, box.decoder_difference, decoder_rows = decoders
        section["decoders"] = {"difference": box.decoder_difference, "rows": decoder_rows}
    return section, box, True


def _each_fold_alone(run: RunFolder, names: list[str], keep: list[int], y: np.ndarray, pred: np.ndarray,
                     interval: tuple[float, float], scoring: Scoring):
    """(single, gain, table rows): every fold's model alone on the lockbox with the same decisions, and the
    ensemble's gain over the average fold alone; None with fewer than two folds' files."""
    try:
        folds = run.finished_models().folds
    except AmazonmineError:
        return None
    if len(folds) < 2 or not all(files.holdout.is_file() for files in folds):
        return None
    ensemble_chip = per_image_f2(y, pred)
    single, fold_chip = [], []
    for files in folds:
        fold_names, probs = load_matrix_csv(files.holdout, labels=scoring.labels)
        if list(fold_names) != list(names):
            return None
        decided = scoring.decide(probs[keep])
        per_chip = per_image_f2(y, decided)
        lo, hi = bootstrap_intervals(y, decided, scoring.draws, scoring.seed)["mean_f2"]
        single.append((files.fold, float(per_chip.mean()), (float(lo), float(hi))))
        fold_chip.append(per_chip)
    gain = paired_mean(ensemble_chip - np.mean(fold_chip, axis=0), scoring.draws, scoring.seed)
    rows = [[f"fold {k} alone", f"{f2:.4f}", f"{a:.4f}-{b:.4f}"] for k, f2, (a, b) in single]
    rows.append([f"the {len(single)} folds averaged (what predict uses)", f"{ensemble_chip.mean():.4f}",
                 f"{interval[0]:.4f}-{interval[1]:.4f}"])
    return single, gain, rows


def _lockbox_record(box: Lockbox, labels) -> dict:
    """The lockbox figures for scripts (report/lockbox.json): the ensemble's, each fold's alone, the gain."""
    def pair(values):
        return [None if v != v else round(float(v), 6) for v in values]

    scores = per_label_scores(box.y_true, box.pred)
    per_label = {name: {"support": int(scores["support"][j]), "predicted": int(scores["predicted"][j]),
                        "precision_interval": pair(box.intervals["precision"][j]),
                        "recall_interval": pair(box.intervals["recall"][j])}
                 for j, name in enumerate(labels)}
    for j, name in enumerate(labels):
        per_label[name].update(precision=float(scores["precision"][j]), recall=float(scores["recall"][j]))
    return {"chips": box.n, "mean_f2": None if box.f2 != box.f2 else float(box.f2), "interval": pair(box.interval),
            "single": [{"fold": k, "mean_f2": f2, "interval": pair(i)} for k, f2, i in box.single],
            "gain": None if box.gain is None else {"mean": box.gain[0], "interval": pair(box.gain[1:])},
            "decoders": {name: {"mean_f2": f2, "interval": pair((lo, hi))}
                         for name, (f2, lo, hi) in box.decoders.items()},
            "expected_f2_minus_thresholds": None if box.decoder_difference is None else {
                "mean": box.decoder_difference[0], "interval": pair(box.decoder_difference[1:])},
            "unscored": len(box.unscored), "looks": len(box.looks),
            "first_look": box.looks[0] if box.looks else None, "per_label": per_label}


def _credit(layout: PlanetLayout) -> str:
    """Credit what the report shows: Planet's imagery, or chips that amazonmine synth painted (a synth set
    carries its known truth in truth/test_labels.csv, which no real download has)."""
    if (layout.root / "truth" / "test_labels.csv").is_file():
        return ("Chips painted by amazonmine synth (synthetic, not satellite imagery); their label combinations "
                "are counted from Planet's competition labels, CC BY-SA 4.0.")
    return ("Imagery by Planet (Kaggle \"Planet: Understanding the Amazon from Space\"), CC BY-SA 4.0.")


# --- the stage ---------------------------------------------------------------------------------------------

def run_evaluate(cfg) -> EvaluateResult:
    """Write <run_dir>/report/index.html (+ PNG/JPEG files) from the run's OOF predictions and outputs."""
    run = RunFolder.from_config(cfg)
    with run.lock("evaluate"):
        return _evaluate(cfg, run)


def _evaluate(cfg, run: RunFolder) -> EvaluateResult:
    run_dir, out = run.root, run.report_dir
    layout = PlanetLayout.from_config(cfg.data)
    oof = run.read_oof(layout)
    frame, matrix = layout.load_train(check_files=False)
    labels = list(layout.labels)
    rule, weather, source = _decision_rule(cfg)
    thresholds = np.asarray(rule, dtype=np.float64)
    saved, objectives = _tuned(run, labels)
    pred = decode(oof.probs, rule, weather, labels)
    f2 = mean_f2(oof.y_true, pred)
    draws, seed = _bootstrap_settings(cfg)
    scoring = Scoring(rule, weather, labels, draws, seed)
    intervals = bootstrap_intervals(oof.y_true, pred, draws, seed)

    missing = []
    lockbox_section, lockbox, ok = _lockbox(cfg, run, layout, frame, matrix, scoring, oof)
    if not ok:
        missing.append(lockbox_section.get("hint", "lockbox"))
    gallery, ok = _gallery(out, cfg, oof, pred, labels)
    if not ok:
        missing.append("some gallery chips")
    dehaze, ok = _dehaze_pairs(out, cfg, frame, matrix)
    if not ok:
        missing.append("dehaze pairs")
    submission, ok = _submission(run, matrix, labels)
    if not ok:
        missing.append("submission")
    _pr_curves(out, oof, scoring, thresholds, pred, objectives, lockbox)
    _curves(out, oof, thresholds, weather, cfg.tune.grid, labels)
    _cooccurrence(out, oof.y_true, pred, labels)
    page = _templates().get_template(REPORT_TEMPLATE).render(
        run_name=run_dir.name,
        summary_rows=_summary(cfg, oof, pred, source, weather, intervals["mean_f2"], saved, lockbox),
        scores=_scores(oof, pred, thresholds, weather, intervals, objectives, labels),
        count_header=_COUNT_HEADER, lockbox=lockbox_section,
        expected_f2_decoding=getattr(rule, "decoder", "thresholds") != "thresholds", weather_decoding=weather,
        gallery=gallery, dehaze=dehaze, submission=submission, credit=_credit(layout))
    index = out / "index.html"
    write_text_atomic(index, page)
    lockbox_json = out / "lockbox.json"
    if lockbox is not None:
        write_json_atomic(lockbox_json, _lockbox_record(lockbox, labels))
    elif lockbox_json.is_file():
        lockbox_json.unlink()  # an older run's lockbox must not pass for this one's
    return EvaluateResult(index, f2, len(oof.names), source, missing, intervals["mean_f2"], lockbox)
