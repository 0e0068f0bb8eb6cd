"""The split stage: a multi-label stratified k-fold plan and the rare-label oversampling manifest.

Why stratify: 6 of the 17 Planet labels are on fewer than 1% of chips (blow_down on 98 of 40,478). A plain
shuffled KFold leaves a fold with a third fewer blow_down chips than another, so out-of-fold scores and the
per-label thresholds tuned on them wobble with the luck of the draw. Iterative stratification (Sechidis,
Tsoumakas and Vlahavas 2011, "On the Stratification of Multi-Label Data") deals chips out rarest label first,
each to the fold that still lacks the most of that label; every label then keeps its share in every fold.
We use the implementation in ``iterstrat.ml_stratifiers.MultilabelStratifiedKFold``, seeded by ``run.seed``.

Why oversample: a network sees 80 conventional_mine chips among 32,000 per epoch and learns to ignore them.
Each fold's *training* rows repeat the chips of rare labels under distinct dihedral views (rotations/flips,
numbered as :data:`amazonmine.core.data.DIHEDRAL`), so a rare label reaches ``split.rare_target`` training rows.
Validation folds are never oversampled: they must measure the real label mix.

Grouped folds (``--group-by COLUMN``): chips cut from one place are near copies of each other (at scan's
stride 0.5 neighbouring tiles share half their pixels), so a fold that validates on one of them and trains on
its neighbour scores the model on what it has seen. With a group column (``block`` of ``amazonmine chips``:
the spatial block of each chip; or any column of the labels file or of ``chips.csv`` beside it) every group
lies wholly in one fold, and the lockbox is a set of whole groups, so out-of-fold scores are hold-out scores
for places never trained on. Groups are dealt by :func:`make_group_folds` (iterative stratification with
groups as the items); the headline says, per rare label, how far the folds are from an even share.

The lockbox: with ``split.holdout`` > 0 that share of the chips is set aside first, by the same iterative
stratification (``MultilabelStratifiedShuffleSplit``), and never enters a fold: no model trains on it, no
threshold is tuned on it. ``evaluate`` scores it once with the final decisions, apart from the out-of-fold
figures, which is the honest measure of what tuning and ensembling bought. Those chips have fold
``HOLDOUT_FOLD`` (-1) in folds.csv, so the file still lists every labelled chip and the split's fingerprint
covers the hold-out too.

Files written to the run folder (``run.dir``)::

    folds.csv           image_name,fold          the validation fold of every chip (-1: hold-out), labels' order
    fold_counts.csv     fold,<17 labels>,n_chips  positives per validation fold, a 'holdout' row, a 'total' row
    train_manifest.csv  image_name,fold,transform

Manifest semantics: the rows with ``fold == K`` are what a model validated on fold K trains on. Every chip
in another fold (not in fold K, not held out) appears once with transform 0 (the chip as stored); a chip carrying a rare
label appears ``copies`` times in all, with distinct transforms: 0 plus ``copies - 1`` of 1..7. A chip of fold K never
appears among fold K's rows, and no (image_name, transform) pair repeats within a fold. Rows are grouped by
fold, then in the labels file's order, a chip's extra views right after its transform-0 row.

How many copies: rare labels are filled one at a time, rarest first. A label's shortfall (target minus the
rows already carrying it, including copies given to chips for a rarer label) is added one copy at a time to
its chips with the fewest copies so far, ties broken in a seeded order, never beyond ``rare_max_factor``
copies of one chip. So a chip with several rare labels counts once toward each of them: it gets the copies
its rarest label needs, and a commoner rare label tops up its other chips first. A label with too few chips
(n * rare_max_factor < target) stops short of the target; the summary says so. Everything derives from the
labels file, the split config and ``run.seed``: the same inputs give the same files, byte for byte.
"""

from __future__ import annotations

import difflib
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from amazonmine.core.config import ConfigError
from amazonmine.core.data import LABELS, DataError, PlanetLayout
from amazonmine.core.io import write_csv_atomic
from amazonmine.core.runfolder import FOLD_COUNTS_CSV, FOLDS_CSV, HOLDOUT_FOLD, MANIFEST_CSV, RunFolder

N_VIEWS = 8  # the dihedral group of the square
HOLDOUT_ROW = "holdout"  # fold_counts.csv's row of the held-out chips
_MAX_SEED = 2**32 - 1  # numpy's RandomState, which iterstrat uses, takes seeds in [0, 2**32)


class SplitWarning(UserWarning):
    """A split that works but cannot give every fold its share (e.g. a label rarer than the fold count)."""


# --- folds -------------------------------------------------------------------------------------------------

def make_folds(matrix: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Validation fold (0..k-1) of every row of an (N, L) 0/1 label matrix, by iterative stratification."""
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

    matrix = np.asarray(matrix)
    _check_k(k, len(matrix))
    if not 0 <= seed <= _MAX_SEED:
        raise ConfigError(f"run.seed must be in 0..{_MAX_SEED} for the split, got {seed}")
    # shuffle=True: recent scikit-learn refuses a random_state without it, and it keeps the fold of a chip from
    # depending on where the chip sits in the labels file (ties are broken by the same seeded generator).
    splitter = MultilabelStratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    folds = np.full(len(matrix), -1, dtype=np.int64)
    for fold, (_, test_index) in enumerate(splitter.split(np.zeros(len(matrix)), matrix.astype(bool))):
        folds[test_index] = fold
    return folds


def make_holdout(matrix: np.ndarray, share: float, seed: int) -> np.ndarray:
    """(N,) bool: the rows set aside as the lockbox, ``share`` of them, stratified over the labels."""
    from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit

    matrix = np.asarray(matrix)
    if not 0 <= share < 0.5:
        raise ConfigError(f"split.holdout must be in [0, 0.5) (a share of the chips), got {share}")
    held = np.zeros(len(matrix), dtype=bool)
    if share == 0:
        return held
    if round(share * len(matrix)) < 1:
        raise ConfigError(f"split.holdout={share} of {len(matrix)} chips holds out no chip; raise it or set 0")
    # Its own seed stream: the same run.seed must not deal the hold-out and the folds from one sequence.
    splitter = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=share, random_state=(seed + 1) % (_MAX_SEED + 1))
    _, test_index = next(splitter.split(np.zeros(len(matrix)), matrix.astype(bool)))
    held[test_index] = True
    return held


def make_folds_with_holdout(matrix: np.ndarray, k: int, seed: int, share: float) -> np.ndarray:
    """Validation fold of every row, HOLDOUT_FOLD for the stratified hold-out (see :func:`make_holdout`)."""
    held = make_holdout(matrix, share, seed)
    if not held.any():
        return make_folds(matrix, k, seed)
    folds = np.full(len(matrix), HOLDOUT_FOLD, dtype=np.int64)
    folds[~held] = make_folds(np.asarray(matrix)[~held], k, seed)
    return folds


def deal_groups(matrix: np.ndarray, groups: np.ndarray, shares: Sequence[float], seed: int) -> np.ndarray:
    """Bin (0..len(shares)-1) of every row, every group wholly in one bin, labels spread by the bins' shares.

    Iterative stratification (Sechidis et al. 2011) with groups, not rows, as the items dealt. Each group
    carries its rows' label counts; bin b wants ``shares[b]`` of every label's rows and of all rows. Until every
    group is dealt: take the label with the fewest rows in groups still undealt (ties: label order); deal its
    groups, most rows of that label first, each to the bin that still wants most of that label (ties: the bin
    that wants most rows, then a seeded draw), and take the group's counts off that bin's wants for every label.
    Groups carrying no label go last, largest first, to the bin wanting most rows. A group with many rows of a
    rare label cannot be split, so a bin may end far from its share of that label; the split's headline says by
    how much. Deterministic for a given seed; the order of the rows does not matter, only their groups.
    """
    matrix = np.asarray(matrix, dtype=np.int64)
    keys, group_of = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    n_groups, n_bins = len(keys), len(shares)
    counts = np.zeros((n_groups, matrix.shape[1]), np.int64)
    np.add.at(counts, group_of, matrix)
    sizes = np.bincount(group_of, minlength=n_groups).astype(np.float64)
    shares = np.asarray(shares, np.float64) / np.sum(shares)
    want = shares[:, None] * counts.sum(axis=0)[None, :].astype(np.float64)  # (bins, labels)
    want_rows = shares * len(matrix)
    rng = np.random.default_rng([seed, 3])
    group_draw = rng.permutation(n_groups)  # seeded tie-break among groups
    bin_draw = rng.permutation(n_bins)  # ... and among bins
    bin_of = np.full(n_groups, -1, np.int64)
    left = np.ones(n_groups, bool)

    def give(g: int, b: int) -> None:
        bin_of[g] = b
        left[g] = False
        want[b] -= counts[g]
        want_rows[b] -= sizes[g]

    while True:
        remaining = counts[left].sum(axis=0)
        carried = np.flatnonzero(remaining > 0)
        if carried.size == 0:
            break
        j = int(carried[np.argmin(remaining[carried])])
        holders = np.flatnonzero(left & (counts[:, j] > 0))
        for g in holders[np.lexsort((group_draw[holders], -counts[holders, j]))].tolist():
            b = int(np.lexsort((bin_draw, -want_rows, -want[:, j]))[0])
            give(g, b)
    unlabelled = np.flatnonzero(left)
    for g in unlabelled[np.lexsort((group_draw[unlabelled], -sizes[unlabelled]))].tolist():
        give(g, int(np.lexsort((bin_draw, -want_rows))[0]))
    return bin_of[group_of]


def make_group_folds(matrix: np.ndarray, groups: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Validation fold (0..k-1) of every row, no group in two folds (:func:`deal_groups`, equal shares)."""
    n_groups = len(np.unique(np.asarray(groups).astype(str)))
    _check_k(k, len(matrix))
    if k > n_groups:
        raise ConfigError(f"split.folds={k} is more than the {n_groups} groups: a fold needs at least one whole group")
    return deal_groups(matrix, groups, [1.0] * k, seed)


def make_group_holdout(matrix: np.ndarray, groups: np.ndarray, share: float, seed: int) -> np.ndarray:
    """(N,) bool: the lockbox as whole groups, about ``share`` of the rows, labels spread as evenly as groups allow."""
    if not 0 <= share < 0.5:
        raise ConfigError(f"split.holdout must be in [0, 0.5) (a share of the chips), got {share}")
    if share == 0:
        return np.zeros(len(matrix), bool)
    # Its own seed stream, as make_holdout: the hold-out and the folds are not dealt from one sequence.
    held = deal_groups(matrix, groups, [share, 1.0 - share], (seed + 1) % (_MAX_SEED + 1)) == 0
    if not held.any():
        raise ConfigError(f"split.holdout={share} holds out no whole group; raise it, use smaller groups or set 0")
    return held


def make_group_folds_with_holdout(matrix: np.ndarray, groups: np.ndarray, k: int, seed: int,
                                  share: float) -> np.ndarray:
    """Validation fold of every row, HOLDOUT_FOLD for a hold-out of whole groups."""
    held = make_group_holdout(matrix, groups, share, seed)
    folds = np.full(len(matrix), HOLDOUT_FOLD, dtype=np.int64)
    folds[~held] = make_group_folds(np.asarray(matrix)[~held], np.asarray(groups)[~held], k, seed)
    return folds


def read_groups(layout: PlanetLayout, names: Sequence[str], column: str) -> np.ndarray:
    """The ``column`` value of every chip: from the labels file when it has that column, else from
    ``chips.csv`` beside it (written by ``amazonmine chips``). Every chip needs a non-empty value."""
    from amazonmine.core.data import read_text_csv

    source = layout.labels_csv
    frame = read_text_csv(source, "labels file", "image_name,tags")
    if column not in frame.columns:
        source = layout.labels_csv.parent / "chips.csv"
        if not source.is_file():
            raise DataError(f"{layout.labels_csv}: no column {column!r} to group by, and no chips.csv beside it "
                            f"('amazonmine chips' writes one with a 'block' column)")
        frame = read_text_csv(source, "chip table", f"image_name,{column}")
        if column not in frame.columns or "image_name" not in frame.columns:
            raise DataError(f"{source}: no column {column!r} to group by (columns: {', '.join(frame.columns)})")
    value_of = dict(zip(frame["image_name"].str.strip(), frame[column].str.strip()))
    values = [value_of.get(name, "") for name in names]
    empty = [name for name, v in zip(names, values) if not v]
    if empty:
        shown = ", ".join(empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
        raise DataError(f"{source}: {len(empty)} chip(s) without a {column!r} value to group by: {shown}")
    return np.asarray(values, dtype=object)


def stratification_gaps(counts, labels: Sequence[str], k: int) -> list[tuple[str, float, int]]:
    """Per label: (label, ideal positives per fold, largest gap of a fold from it), from fold_label_counts."""
    per_fold = counts[~counts["fold"].isin(["total", HOLDOUT_ROW])]
    out = []
    for label in labels:
        values = per_fold[label].to_numpy(dtype=np.float64)
        ideal = values.sum() / k
        out.append((label, float(ideal), int(round(np.abs(values - ideal).max()))))
    return out


def _check_k(k: int, n_chips: int) -> None:
    if k < 2:
        raise ConfigError(f"split.folds must be at least 2, got {k}")
    if k > n_chips:
        raise ConfigError(f"split.folds={k} is more than the {n_chips} labelled chips")


def _label_columns(columns) -> list[str]:
    """The label columns of a fold_label_counts table (or one of its rows): every column but the bookkeeping."""
    return [c for c in columns if c not in ("fold", "n_chips", "n_rows", "n_repeats")]


def fold_label_counts(matrix: np.ndarray, folds: np.ndarray, k: int, labels: Sequence[str] = LABELS):
    """DataFrame: one row per validation fold, 'holdout' when chips are held out, then 'total' (every chip); the
    17 label counts and n_chips."""
    import pandas as pd

    matrix = np.asarray(matrix, dtype=np.int64)
    folds = np.asarray(folds)
    groups = [str(fold) for fold in range(k)]
    masks = [folds == fold for fold in range(k)]
    if (folds == HOLDOUT_FOLD).any():
        groups.append(HOLDOUT_ROW)
        masks.append(folds == HOLDOUT_FOLD)
    groups.append("total")
    masks.append(np.ones(len(folds), dtype=bool))
    frame = pd.DataFrame(np.array([matrix[m].sum(axis=0) for m in masks]), columns=list(labels))
    frame["n_chips"] = [int(m.sum()) for m in masks]
    frame.insert(0, "fold", groups)
    return frame


def labels_missing_from_folds(counts) -> list[str]:
    """'label (n chips)' for each label that has no positive in at least one fold of a fold_label_counts table."""
    per_fold = counts[~counts["fold"].isin(["total", HOLDOUT_ROW])]
    total = counts[counts["fold"] == "total"].iloc[0]
    return [f"{label} ({int(total[label])} chip{'' if int(total[label]) == 1 else 's'})"
            for label in _label_columns(counts.columns) if (per_fold[label] == 0).any()]


# --- which labels are rare ---------------------------------------------------------------------------------

def choose_rare_labels(matrix: np.ndarray, threshold: float, explicit: Sequence[str] = (),
                       labels: Sequence[str] = LABELS) -> tuple[str, ...]:
    """The explicit list when given (validated), else labels on more than 0 and under ``threshold`` of chips."""
    if explicit:
        for name in explicit:
            if name not in labels:
                raise ConfigError(f"split.rare_labels: unknown label {name!r}{_did_you_mean(name, labels)}")
        wanted = set(explicit)
        return tuple(label for label in labels if label in wanted)  # canonical order, no duplicates
    share = np.asarray(matrix, dtype=np.float64).mean(axis=0)
    return tuple(label for label, s in zip(labels, share) if 0 < s < threshold)


def _did_you_mean(name: str, labels: Sequence[str] = LABELS) -> str:
    # 'artisanal_mine' (the English spelling) is the likeliest typo: the dataset spells it 'artisinal_mine'.
    close = difflib.get_close_matches(name, labels, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{hint} (known labels: {', '.join(labels)})"


# --- oversampling ------------------------------------------------------------------------------------------

def oversample_copies(train_matrix: np.ndarray, rare_index: Sequence[int], target: int, max_factor: int,
                      priority: np.ndarray) -> np.ndarray:
    """Copies (>= 1) of each training row so every rare label reaches ``target`` rows where the cap allows.

    ``priority`` (one distinct number per row) breaks ties between equally copied chips, lowest first.
    """
    train_matrix = np.asarray(train_matrix, dtype=bool)
    copies = np.ones(len(train_matrix), dtype=np.int64)
    counts = train_matrix.sum(axis=0)
    for j in sorted(rare_index, key=lambda j: (counts[j], j)):  # rarest first; label order breaks ties
        holders = np.flatnonzero(train_matrix[:, j])
        holders = holders[np.argsort(priority[holders], kind="stable")]
        _water_fill(copies, holders, target - int(copies[holders].sum()), max_factor)
    return copies


def _water_fill(copies: np.ndarray, holders: np.ndarray, shortfall: int, cap: int) -> None:
    """Add ``shortfall`` copies among ``holders``, always to the least-copied ones, none beyond ``cap``."""
    while shortfall > 0:
        room = holders[copies[holders] < cap]
        if room.size == 0:
            return
        lowest = room[copies[room] == copies[room].min()]
        take = lowest[:shortfall]
        copies[take] += 1
        shortfall -= take.size


def view_orders(n: int, seed: int) -> np.ndarray:
    """(n, 7): for each chip, a seeded order of the non-identity transforms 1..7; its extra copies take a prefix.

    A fixed order per chip (rather than 1, 2, 3, ... for all) spreads the views evenly over rotations and flips,
    and a chip keeps the same views in every fold it trains in.
    """
    rng = np.random.default_rng([seed, 2])
    return np.argsort(rng.random((n, N_VIEWS - 1)), axis=1) + 1


@dataclass(frozen=True)
class RarePolicy:
    """How rare labels are oversampled in the training folds: which labels, the training rows wanted per label
    and fold (``target``), and how often one chip may appear at most (``max_factor``, one dihedral view each)."""

    labels: tuple[str, ...]
    target: int
    max_factor: int


def build_manifest(names: Sequence[str], matrix: np.ndarray, folds: np.ndarray, k: int, rare: RarePolicy,
                   seed: int, labels: Sequence[str] = LABELS):
    """DataFrame image_name,fold,transform: each fold's training rows with rare-label repeats (see module doc)."""
    import pandas as pd

    names = np.asarray(names, dtype=object)
    matrix = np.asarray(matrix)
    rare_index = [list(labels).index(label) for label in rare.labels]
    priority = np.random.default_rng([seed, 1]).permutation(len(names))
    views = view_orders(len(names), seed)
    parts = []
    for fold in range(k):
        train = np.flatnonzero((folds != fold) & (folds != HOLDOUT_FOLD))
        copies = oversample_copies(matrix[train], rare_index, rare.target, rare.max_factor, priority[train])
        rows = np.repeat(train, copies)
        # copy number of each row within its chip: 0 for the stored chip, 1.. for its extra views
        nth = np.arange(len(rows)) - np.repeat(np.cumsum(copies) - copies, copies)
        transform = np.where(nth == 0, 0, views[rows, np.maximum(nth - 1, 0)])
        parts.append(pd.DataFrame({"image_name": names[rows], "fold": fold, "transform": transform}))
    return pd.concat(parts, ignore_index=True)


def manifest_label_counts(manifest, names: Sequence[str], matrix: np.ndarray, k: int,
                          labels: Sequence[str] = LABELS):
    """DataFrame: per fold, the rows of its training manifest carrying each label, plus n_rows and n_repeats."""
    import pandas as pd

    row_of = {name: i for i, name in enumerate(names)}
    matrix = np.asarray(matrix, dtype=np.int64)
    records = []
    for fold in range(k):
        part = manifest[manifest["fold"] == fold]
        index = part["image_name"].map(row_of).to_numpy()
        record = dict(zip(labels, matrix[index].sum(axis=0).tolist()))
        record.update(fold=fold, n_rows=len(part), n_repeats=int((part["transform"] != 0).sum()))
        records.append(record)
    return pd.DataFrame(records, columns=["fold", *labels, "n_rows", "n_repeats"])


# --- the stage ---------------------------------------------------------------------------------------------

@dataclass
class SplitSummary:
    labels_csv: Path
    run_dir: Path
    k: int
    seed: int
    n_chips: int
    rare_labels: tuple[str, ...]
    rare_target: int
    rare_max_factor: int
    fold_counts: object  # DataFrame from fold_label_counts (validation folds + total)
    train_counts: object  # DataFrame from manifest_label_counts (training rows after oversampling)
    seconds: float
    warnings: list[str] = field(default_factory=list)
    n_holdout: int = 0
    group_by: str | None = None
    n_groups: int = 0

    def short_of_target(self) -> list[str]:
        """Rare labels whose training rows stay under the target in some fold (too few chips for the cap)."""
        return [label for label in self.rare_labels if (self.train_counts[label] < self.rare_target).any()]

    def table(self) -> str:
        """The full fold_counts table (validation positives per fold) as text."""
        return self.fold_counts.to_string(index=False)

    def headline(self) -> str:
        fold_names = [f"fold{f}" for f in range(self.k)]
        lines = [
            f"split {self.n_chips} chips of {self.labels_csv} into {self.k} folds (seed {self.seed}, "
            f"{self.seconds:.1f} s) -> {self.run_dir}/{{{FOLDS_CSV},{FOLD_COUNTS_CSV},{MANIFEST_CSV}}}",
        ]
        per_fold = self.fold_counts[~self.fold_counts["fold"].isin(["total", HOLDOUT_ROW])]
        total = self.fold_counts[self.fold_counts["fold"] == "total"].iloc[0]
        # without rare labels, still show the three rarest: they are the ones a fold could lack
        shown = self.rare_labels or _rarest(total, 3)
        width = max(len(label) for label in (*shown, "validation chips"))
        head = "".join(f"{name:>8}" for name in (*fold_names, "total"))
        lines.append(f"{'':<{width}}{head}  training rows per fold (min-max)")
        lines.append(_count_row("validation chips", per_fold["n_chips"], total["n_chips"], width,
                                self.train_counts["n_rows"]))
        for label in shown:
            lines.append(_count_row(label, per_fold[label], total[label], width, self.train_counts[label]))
        if self.rare_labels and self.rare_target > 0 and self.rare_max_factor > 1:
            lines.append(f"rare labels oversampled to {self.rare_target} training rows, at most "
                         f"{self.rare_max_factor} views per chip; validation folds as they are")
        else:
            lines.append("no oversampling (no rare labels, rare_target 0 or rare_max_factor 1)")
        short = self.short_of_target()
        if short and self.rare_target > 0 and self.rare_max_factor > 1:
            lines.append(f"note: too few chips to reach {self.rare_target} even at {self.rare_max_factor} views: "
                         f"{', '.join(short)}")
        if self.n_holdout:
            held = self.fold_counts[self.fold_counts["fold"] == HOLDOUT_ROW].iloc[0]
            lines.append(f"hold-out (lockbox): {self.n_holdout} chips in no fold (fold {HOLDOUT_FOLD} in {FOLDS_CSV}), "
                         "never trained or tuned on; 'amazonmine evaluate' scores them once. "
                         + ", ".join(f"{label} {int(held[label])}" for label in shown))
        if self.group_by:
            # The rare labels, else the three rarest labels some chip carries: how well whole groups spread them.
            present = tuple(label for label in _rarest(total, len(_label_columns(total.index)))
                            if int(total[label]) > 0)
            gaps = stratification_gaps(self.fold_counts, self.rare_labels or present[:3], self.k)
            lines.append(f"grouped by {self.group_by!r}: {self.n_groups} groups, each wholly in one fold"
                         + (" or in the hold-out" if self.n_holdout else "") + "; per fold against an even share: "
                         + ", ".join(f"{label} ideal {ideal:.1f}, off by up to {gap}" for label, ideal, gap in gaps))
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _rarest(total, n: int) -> tuple[str, ...]:
    ranked = sorted(_label_columns(total.index), key=lambda label: (int(total[label]), label))
    return tuple(ranked[:n])


def _count_row(name: str, per_fold, total, width: int, train) -> str:
    cells = "".join(f"{int(v):>8}" for v in (*per_fold.tolist(), total))
    low, high = int(min(train)), int(max(train))
    spread = f"{low}" if low == high else f"{low}-{high}"
    return f"{name:<{width}}{cells}  {spread}"


def run_split(cfg, check_files: bool = True, group_by: str | None = None) -> SplitSummary:
    """Read the labels, split them into folds, oversample rare labels; write the three CSVs to the run folder.

    ``group_by`` names a column (of the labels file, or of chips.csv beside it) whose groups must each stay in
    one fold and whose hold-out is whole groups (see the module docstring).
    """
    import pandas as pd

    split_cfg = cfg.split
    layout = PlanetLayout.from_config(cfg.data)
    frame, matrix = layout.load_train(check_files=check_files)
    # Folds and oversampling follow the positives: a chip never annotated for a label counts as without it.
    labels, matrix = layout.labels, (np.asarray(matrix) > 0).astype(np.uint8)
    group_by = (split_cfg.group_by or None) if group_by is None else group_by
    names = frame["image_name"].tolist()
    rare = choose_rare_labels(matrix, split_cfg.rare_threshold, split_cfg.rare_labels, labels)
    if split_cfg.folds > len(names):
        raise DataError(f"{layout.labels_csv}: {len(names)} chips cannot fill split.folds={split_cfg.folds} folds")

    groups = read_groups(layout, names, group_by) if group_by else None
    started = time.perf_counter()
    if groups is not None:
        folds = make_group_folds_with_holdout(matrix, groups, split_cfg.folds, cfg.run.seed, float(split_cfg.holdout))
    else:
        folds = make_folds_with_holdout(matrix, split_cfg.folds, cfg.run.seed, float(split_cfg.holdout))
    policy = RarePolicy(tuple(rare), split_cfg.rare_target, split_cfg.rare_max_factor)
    manifest = build_manifest(names, matrix, folds, split_cfg.folds, policy, cfg.run.seed, labels)
    seconds = time.perf_counter() - started
    counts = fold_label_counts(matrix, folds, split_cfg.folds, labels)

    problems = []
    missing = labels_missing_from_folds(counts)
    if missing:
        why = "fewer chips, or groups of them, than folds" if group_by else "fewer chips than folds"
        problems.append(f"{len(missing)} label(s) cannot appear in every one of the {split_cfg.folds} folds "
                        f"({why}): {', '.join(missing)}")
        warnings.warn(problems[-1], SplitWarning, stacklevel=2)

    run = RunFolder.from_config(cfg)
    with run.lock("split"):
        run_dir = run.prepare(cfg)
        write_csv_atomic(run.folds_csv, pd.DataFrame({"image_name": names, "fold": folds}))
        write_csv_atomic(run.fold_counts_csv, counts)
        write_csv_atomic(run.manifest_csv, manifest)
    return SplitSummary(
        labels_csv=layout.labels_csv, run_dir=run_dir, k=split_cfg.folds, seed=cfg.run.seed, n_chips=len(names),
        rare_labels=rare, rare_target=split_cfg.rare_target, rare_max_factor=split_cfg.rare_max_factor,
        fold_counts=counts, train_counts=manifest_label_counts(manifest, names, matrix, split_cfg.folds, labels),
        seconds=seconds, warnings=problems, n_holdout=int((folds == HOLDOUT_FOLD).sum()),
        group_by=group_by, n_groups=len(set(groups.tolist())) if groups is not None else 0,
    )
