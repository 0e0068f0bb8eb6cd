"""The split stage: stratified folds on the real Planet labels, the oversampling manifest, the CLI, the errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from amazonmine.core.config import ConfigError, load_config
from amazonmine.core.data import LABELS, PLANET_RARE_LABELS, DataError, read_labels, tags_to_matrix
from amazonmine.core.runfolder import RunFolder
from amazonmine.stages.split import (
    SplitWarning,
    choose_rare_labels,
    make_folds,
    oversample_copies,
    run_split,
    view_orders,
)

REAL_RARE = PLANET_RARE_LABELS


def load_folds(run_dir):
    return RunFolder(Path(run_dir)).read_folds()


def load_training_manifest(run_dir, fold):
    return RunFolder(Path(run_dir)).read_training_manifest(fold)


def _shares_ok(matrix: np.ndarray, folds: np.ndarray, k: int, min_positives: int = 300, tolerance: float = 0.10):
    """(labels whose fold share strays > tolerance from the overall share, labels absent from some fold)."""
    overall = matrix.mean(axis=0)
    strays, absent = set(), set()
    for fold in range(k):
        part = matrix[folds == fold]
        for j, label in enumerate(LABELS):
            if matrix[:, j].sum() >= min_positives and abs(part[:, j].mean() / overall[j] - 1) > tolerance:
                strays.add(label)
            if part[:, j].sum() == 0:
                absent.add(label)
    return strays, absent


@pytest.fixture(scope="module")
def real_matrix(real_labels_csv) -> np.ndarray:
    return tags_to_matrix(read_labels(real_labels_csv)["tags"])


@pytest.fixture(scope="module")
def real_run(real_labels_csv, tmp_path_factory):
    """run_split on the real 40,478 labels (no images: check_files=False) with the default split config."""
    run_dir = tmp_path_factory.mktemp("real_split") / "run"
    cfg = load_config(None, [f"data.root={real_labels_csv.parent}", f"data.labels_csv={real_labels_csv.name}",
                             f"run.dir={run_dir}"])
    summary = run_split(cfg, check_files=False)
    return cfg, summary


def _write_labels(root: Path, tags: list[str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"image_name": [f"train_{i}" for i in range(len(tags))], "tags": tags}).to_csv(
        root / "train_v2.csv", index=False)
    return root


# --- folds on the real labels ------------------------------------------------------------------------------

def test_real_labels_every_fold_holds_its_share(real_matrix):
    folds = make_folds(real_matrix, 5, seed=42)
    assert set(np.unique(folds)) == {0, 1, 2, 3, 4}
    sizes = np.bincount(folds)
    assert sizes.max() - sizes.min() <= 0.01 * len(folds)
    strays, absent = _shares_ok(real_matrix, folds, 5)
    assert strays == set()
    assert absent == set()


def test_real_labels_plain_kfold_fails_the_same_check(real_matrix):
    # The check above has teeth: a shuffled KFold with the same seed misses it on the rare labels.
    from sklearn.model_selection import KFold

    folds = np.empty(len(real_matrix), dtype=int)
    for fold, (_, test) in enumerate(KFold(5, shuffle=True, random_state=42).split(real_matrix)):
        folds[test] = fold
    strays, _ = _shares_ok(real_matrix, folds, 5)
    assert strays


def test_real_labels_threshold_picks_the_six_rare_labels(real_matrix):
    assert choose_rare_labels(real_matrix, 0.01) == REAL_RARE


def test_make_folds_is_seeded():
    rng = np.random.default_rng(0)
    matrix = (rng.random((400, 17)) < rng.random(17) * 0.3).astype(np.uint8)
    first = make_folds(matrix, 4, seed=7)
    assert np.array_equal(first, make_folds(matrix, 4, seed=7))
    assert not np.array_equal(first, make_folds(matrix, 4, seed=8))


@pytest.mark.parametrize("k, message", [(1, "at least 2"), (11, "more than the 10")])
def test_make_folds_rejects_impossible_k(k, message):
    with pytest.raises(ConfigError, match=message):
        make_folds(np.eye(10, 17, dtype=np.uint8), k, seed=0)


# --- oversampling ------------------------------------------------------------------------------------------

def test_oversample_fills_rarest_first_and_counts_shared_chips_once():
    # label 0 on chips 0,1 (rarest); label 1 on chips 1..4; chip 1 carries both.
    matrix = np.zeros((6, 17), dtype=np.uint8)
    matrix[[0, 1], 0] = 1
    matrix[[1, 2, 3, 4], 1] = 1
    priority = np.arange(6)
    # label 0 needs 6 rows: chips 0 and 1 get 3 copies each; chip 1's 3 copies then already give label 1 its 6.
    copies = oversample_copies(matrix, [0, 1], target=6, max_factor=4, priority=priority)
    assert copies.tolist() == [3, 3, 1, 1, 1, 1]
    # the order the labels are passed in does not matter: rarest first
    assert oversample_copies(matrix, [1, 0], target=6, max_factor=4, priority=priority).tolist() == copies.tolist()
    # target 8: label 0 hits the cap (4 + 4 rows); label 1 then has 7 and its one missing row goes to the
    # least-copied chip first in priority order: chip 2, or chip 4 when the priority is reversed.
    copies = oversample_copies(matrix, [0, 1], target=8, max_factor=4, priority=priority)
    assert copies.tolist() == [4, 4, 2, 1, 1, 1]
    copies = oversample_copies(matrix, [0, 1], target=8, max_factor=4, priority=priority[::-1].copy())
    assert copies.tolist() == [4, 4, 1, 1, 2, 1]


def test_oversample_stops_at_the_cap():
    matrix = np.zeros((3, 17), dtype=np.uint8)
    matrix[0, 4] = 1
    copies = oversample_copies(matrix, [4], target=100, max_factor=8, priority=np.arange(3))
    assert copies.tolist() == [8, 1, 1]


def test_view_orders_are_permutations_of_the_seven_non_identity_views():
    views = view_orders(50, seed=3)
    assert views.shape == (50, 7)
    assert (np.sort(views, axis=1) == np.arange(1, 8)).all()
    assert len({tuple(row) for row in views}) > 1


def test_real_manifest_reaches_target_without_leaking_validation_chips(real_run, real_matrix):
    cfg, summary = real_run
    assert summary.rare_labels == REAL_RARE
    folds = load_folds(cfg.run_dir)
    rare_cols = [LABELS.index(label) for label in REAL_RARE]
    row_of = {name: i for i, name in enumerate(folds["image_name"])}
    for fold in range(5):
        rows = load_training_manifest(cfg.run_dir, fold)
        validation = set(folds.loc[folds["fold"] == fold, "image_name"])
        assert validation.isdisjoint(rows["image_name"])
        assert not rows.duplicated(["image_name", "transform"]).any()
        assert rows["transform"].between(0, 7).all()
        per_chip = rows["image_name"].value_counts()
        assert per_chip.max() <= cfg.split.rare_max_factor
        index = rows["image_name"].map(row_of).to_numpy()
        label_rows = real_matrix[index][:, rare_cols].sum(axis=0)
        assert (label_rows >= cfg.split.rare_target).all(), dict(zip(REAL_RARE, label_rows))
        # the rarest label is filled first and exactly; chips without a rare label are never repeated
        assert label_rows.min() == cfg.split.rare_target
        repeated = per_chip.index[per_chip > 1].map(row_of).to_numpy()
        assert real_matrix[repeated][:, rare_cols].any(axis=1).all()


def test_real_summary_shows_rare_counts_per_fold(real_run):
    _, summary = real_run
    text = summary.headline()
    for label in REAL_RARE:
        line = next(line for line in text.splitlines() if line.startswith(label))
        counts = [int(v) for v in line.split()[1:7]]
        assert sum(counts[:5]) == counts[5] and min(counts[:5]) > 0
    assert "warning" not in text
    assert "blow_down" in summary.table() and summary.table().count("\n") == 6


# --- the stage end to end ----------------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore::amazonmine.stages.split.SplitWarning")  # the synthetic set has labels on < k chips
def test_cli_split_on_synthetic_set(synth_root, tmp_path):
    from amazonmine.cli import main

    run_dir = tmp_path / "run"
    args = ["split", "--set", f"data.root={synth_root}", "--set", f"run.dir={run_dir}", "--set", "split.folds=2",
            "--set", "split.rare_labels=artisinal_mine,conventional_mine", "--set", "split.rare_target=8",
            "--set", "split.rare_max_factor=4"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "artisinal_mine" in result.output and "conventional_mine" in result.output

    labels = read_labels(synth_root / "train_v2.csv")
    matrix = tags_to_matrix(labels["tags"])
    folds = pd.read_csv(run_dir / "folds.csv")
    assert folds["image_name"].tolist() == labels["image_name"].tolist()
    assert set(folds["fold"]) == {0, 1}

    counts = pd.read_csv(run_dir / "fold_counts.csv", dtype={"fold": str})
    assert counts.columns.tolist() == ["fold", *LABELS, "n_chips"]
    assert counts["fold"].tolist() == ["0", "1", "total"]
    assert counts.iloc[2][list(LABELS)].tolist() == matrix.sum(axis=0).tolist()
    assert counts.iloc[:2][list(LABELS)].sum().tolist() == matrix.sum(axis=0).tolist()
    assert counts["n_chips"].tolist()[2] == len(labels)

    manifest = pd.read_csv(run_dir / "train_manifest.csv")
    assert manifest.columns.tolist() == ["image_name", "fold", "transform"]
    for fold in (0, 1):
        rows = manifest[manifest["fold"] == fold]
        in_fold = folds.loc[folds["fold"] == fold, "image_name"]
        assert set(rows["image_name"]).isdisjoint(in_fold)
        assert set(rows.loc[rows["transform"] == 0, "image_name"]) == set(labels["image_name"]) - set(in_fold)
        assert not rows.duplicated(["image_name", "transform"]).any()
        carrying = rows["image_name"].isin(labels.loc[matrix[:, LABELS.index("conventional_mine")] == 1,
                                                       "image_name"])
        chips = rows.loc[carrying, "image_name"].nunique()
        # 2 conventional_mine chips in all: the fold's training chips, 4 views each, stay short of the target 8
        assert carrying.sum() == min(8, 4 * chips)


@pytest.mark.filterwarnings("ignore::amazonmine.stages.split.SplitWarning")  # the synthetic set has labels on < k chips
def test_split_is_reproducible(synth_root, make_cfg, tmp_path):
    cfg = make_cfg(synth_root, **{"split.folds": 2, "split.rare_labels": "artisinal_mine", "split.rare_target": 9})
    run_split(cfg)
    first = {name: (cfg.run_dir / name).read_bytes() for name in ("folds.csv", "train_manifest.csv")}
    cfg.run.dir = str(tmp_path / "again")
    run_split(cfg)
    assert first == {name: (cfg.run_dir / name).read_bytes() for name in first}


def test_split_never_imports_tensorflow():
    code = ("import sys, amazonmine.cli, amazonmine.stages.split, iterstrat.ml_stratifiers; "
            "sys.exit('tensorflow' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# --- errors ------------------------------------------------------------------------------------------------

def test_unknown_rare_label_is_a_one_line_cli_error(synth_root, tmp_path):
    from amazonmine.cli import main

    result = CliRunner().invoke(main, ["split", "--set", f"data.root={synth_root}", "--set",
                                       f"run.dir={tmp_path / 'run'}", "--set", "split.rare_labels=artisanal_mine"])
    assert result.exit_code == 1
    assert "error: split.rare_labels: unknown label 'artisanal_mine'; did you mean 'artisinal_mine'?" in result.output
    assert not (tmp_path / "run" / "folds.csv").exists()


def test_more_folds_than_chips_of_a_label_warns(tmp_path, make_cfg):
    tags = ["clear primary"] * 8 + ["clear primary conventional_mine"] * 2
    root = _write_labels(tmp_path / "tiny", tags)
    cfg = make_cfg(root, **{"split.folds": 3})
    with pytest.warns(SplitWarning, match=r"conventional_mine \(2 chips\)") as caught:
        summary = run_split(cfg, check_files=False)
    message = str(caught[0].message)
    assert "primary" not in message and "clear" not in message
    assert any("conventional_mine (2 chips)" in w for w in summary.warnings)
    assert "warning:" in summary.headline()


def test_more_folds_than_chips_is_an_error_naming_the_file(tmp_path, make_cfg):
    root = _write_labels(tmp_path / "tiny", ["clear primary"] * 3)
    with pytest.raises(DataError, match=r"train_v2\.csv: 3 chips cannot fill split\.folds=5"):
        run_split(make_cfg(root), check_files=False)


def test_label_file_problems_come_from_the_data_layer(tmp_path, make_cfg):
    root = _write_labels(tmp_path / "planet", ["clear primary", "clear gold_mine"])
    with pytest.raises(DataError, match=r"train_v2\.csv: unknown labels.*gold_mine"):
        run_split(make_cfg(root), check_files=False)
    root = _write_labels(tmp_path / "noimages", ["clear primary"] * 4)
    with pytest.raises(DataError, match="image folder not found"):
        run_split(make_cfg(root))


def test_negative_rare_target_is_refused(synth_root, make_cfg):
    with pytest.raises(ConfigError, match="split.rare_target"):
        run_split(make_cfg(synth_root, **{"split.rare_target": -1}))


def test_readers_ask_for_the_split_first(tmp_path):
    with pytest.raises(DataError, match=r"folds\.csv: not found; run 'amazonmine split' first"):
        load_folds(tmp_path)
    with pytest.raises(DataError, match=r"train_manifest\.csv: not found; run 'amazonmine split' first"):
        load_training_manifest(tmp_path, 0)


@pytest.mark.filterwarnings("ignore::amazonmine.stages.split.SplitWarning")  # the synthetic set has labels on < k chips
def test_manifest_reader_refuses_a_bad_fold_or_a_stale_manifest(synth_root, make_cfg):
    cfg = make_cfg(synth_root, **{"split.folds": 3})
    run_split(cfg)
    with pytest.raises(DataError, match=r"no fold 3 \(the split has folds 0\.\.2\)"):
        load_training_manifest(cfg.run_dir, 3)
    folds = load_folds(cfg.run_dir)
    folds["fold"] = (folds["fold"] + 1) % 3  # as if folds.csv came from another split
    folds.to_csv(cfg.run_dir / "folds.csv", index=False)
    with pytest.raises(DataError, match="does not match folds.csv"):
        load_training_manifest(cfg.run_dir, 0)


# --- the hold-out (lockbox) --------------------------------------------------------------------------------

def test_holdout_is_stratified_and_the_folds_split_the_rest(real_matrix):
    from amazonmine.stages.split import make_folds_with_holdout

    folds = make_folds_with_holdout(real_matrix, 5, 42, 0.1)
    held = folds == -1
    assert abs(held.mean() - 0.1) < 0.001
    overall = real_matrix.mean(axis=0)
    common = real_matrix.sum(axis=0) >= 300
    share = real_matrix[held].mean(axis=0)
    assert np.all(np.abs(share[common] / overall[common] - 1) < 0.05), share / overall
    assert np.all(real_matrix[held].sum(axis=0) > 0)  # even blow_down and conventional_mine are in the lockbox
    rest = real_matrix[~held]
    strays, absent = _shares_ok(rest, folds[~held], 5)
    assert strays == set() and absent == set()
    np.testing.assert_array_equal(folds[~held], make_folds(rest, 5, 42))


def test_no_holdout_is_the_plain_split(real_matrix):
    from amazonmine.stages.split import make_folds_with_holdout

    np.testing.assert_array_equal(make_folds_with_holdout(real_matrix[:3000], 4, 7, 0.0),
                                  make_folds(real_matrix[:3000], 4, 7))


@pytest.mark.filterwarnings("ignore::amazonmine.stages.split.SplitWarning")  # the synthetic set has labels on < k chips
def test_holdout_chips_are_in_no_fold_and_no_training_manifest(synth_root, make_cfg):
    from amazonmine.core.fold_plan import load_fold_plan

    cfg = make_cfg(synth_root, **{"split.folds": 2, "dehaze.enabled": "false"})
    cfg.split.holdout = 0.2  # set directly: works whether or not the config section declares the field yet
    summary = run_split(cfg)
    labels = read_labels(synth_root / "train_v2.csv")
    folds = load_folds(cfg.run_dir)
    assert folds["image_name"].tolist() == labels["image_name"].tolist()  # every chip still listed
    held = set(folds.loc[folds["fold"] == -1, "image_name"])
    assert len(held) == round(0.2 * len(labels)) == summary.n_holdout
    manifest = pd.read_csv(cfg.run_dir / "train_manifest.csv", dtype={"image_name": str})
    assert held.isdisjoint(manifest["image_name"])
    for fold in (0, 1):
        rows = load_training_manifest(cfg.run_dir, fold)  # the consistency check accepts the hold-out
        in_fold = set(folds.loc[folds["fold"] == fold, "image_name"])
        assert set(rows["image_name"]) == set(labels["image_name"]) - held - in_fold
        plan = load_fold_plan(cfg, fold)
        assert held.isdisjoint(plan.names[plan.used_rows()])
    counts = pd.read_csv(cfg.run_dir / "fold_counts.csv", dtype={"fold": str})
    assert counts["fold"].tolist() == ["0", "1", "holdout", "total"]
    assert counts["n_chips"].tolist() == [int((folds["fold"] == 0).sum()), int((folds["fold"] == 1).sum()),
                                          len(held), len(labels)]
    assert counts.iloc[:3][list(LABELS)].sum().tolist() == counts.iloc[3][list(LABELS)].tolist()
    assert f"hold-out (lockbox): {len(held)} chips" in summary.headline()


@pytest.mark.parametrize("share", [-0.1, 0.5, 0.9])
def test_a_holdout_outside_its_range_is_refused(synth_root, make_cfg, share):
    cfg = make_cfg(synth_root, **{"split.folds": 2})
    cfg.split.holdout = share
    with pytest.raises(ConfigError, match=r"split.holdout must be in \[0, 0.5\)"):
        run_split(cfg)
    assert not (cfg.run_dir / "folds.csv").exists()
