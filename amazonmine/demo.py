"""The main job: the whole pipeline on a freshly generated synthetic Planet set, on the CPU, in minutes.

synth -> dehaze -> split -> train (every fold) -> tune -> predict -> evaluate -> scan, each stage called as the CLI
would call it, with one config (``resources/demo.yaml``). The synthetic test
chips have known labels, so the demo ends by scoring its own submission: an honest held-out F2.
"""

from __future__ import annotations

import logging
import time
from importlib import resources
from pathlib import Path

import click

from amazonmine.core.config import load_config

log = logging.getLogger(__name__)

DEMO_TRAIN = 360
DEMO_TEST = 120


def demo_config_path() -> Path:
    return Path(str(resources.files("amazonmine.resources").joinpath("demo.yaml")))


def score_submission(submission: Path, truth_csv: Path) -> float:
    """Mean F2 of a submission against known test labels (synthetic data only)."""
    import pandas as pd

    from amazonmine.core.data import tags_to_matrix
    from amazonmine.core.metrics import mean_f2

    sub = pd.read_csv(submission, dtype=str, keep_default_na=False)
    truth = pd.read_csv(truth_csv, dtype=str, keep_default_na=False).set_index("image_name").loc[sub["image_name"]]
    return mean_f2(tags_to_matrix(truth["tags"]), tags_to_matrix(sub["tags"]))


def run_demo(out: Path, config_path: Path | None = None, overrides: list[str] | None = None,
             n_train: int = DEMO_TRAIN, n_test: int = DEMO_TEST) -> dict:
    from amazonmine.core.fold_plan import resolve_folds
    from amazonmine.stages.dehaze import run_dehaze
    from amazonmine.stages.evaluate import run_evaluate
    from amazonmine.stages.predict import run_predict
    from amazonmine.stages.split import run_split
    from amazonmine.stages.synth import paint_dataset
    from amazonmine.stages.train import run_train
    from amazonmine.stages.tune import run_tune

    out = Path(out)
    data_root = out / "data"
    sets = [f"data.root={data_root}", f"run.dir={out / 'run'}", *(overrides or [])]
    cfg = load_config(config_path or demo_config_path(), sets)
    timings: dict[str, float] = {}

    def stage(name: str):
        log.info(click.style(f"== {name}", bold=True))
        timings[name] = time.perf_counter()

    def done(name: str, text: str):
        timings[name] = time.perf_counter() - timings[name]
        log.info(f"{text}  [{timings[name]:.0f} s]")

    # A demo re-run in the same folder starts clean: no stale chips, folds or models of the last one.
    import shutil

    if (cfg.run_dir / "config.yaml").is_file():  # only ever a folder an earlier run wrote
        shutil.rmtree(cfg.run_dir)
    stage("synth")
    info = paint_dataset(data_root, n_train=n_train, n_test=n_test, size=cfg.data.chip_size or 48,
                        seed=cfg.run.seed, rare_boost=20.0, overwrite=True)
    done("synth", f"{info['n_train']} train + {info['n_test']} test chips, {info['haze']} hazy, "
         f"artisinal_mine {info['label_counts']['artisinal_mine']}")
    if cfg.dehaze.enabled:
        stage("dehaze")
        summary = run_dehaze(cfg)
        done("dehaze", summary.headline())
    stage("split")
    done("split", run_split(cfg).headline().splitlines()[0])
    stage("train")
    results = run_train(cfg, folds=resolve_folds(cfg))
    done("train", "\n".join(r.headline() for r in results))
    stage("tune")
    done("tune", run_tune(cfg).headline())
    stage("predict")
    predicted = run_predict(cfg)
    done("predict", predicted.headline())
    stage("evaluate")
    report = run_evaluate(cfg)
    done("evaluate", report.headline())
    stage("scan")
    from amazonmine.stages.scan import scan_chip_mosaic

    # The synthetic test chips (no fold trained on them) laid out as a georeferenced scene, then mapped.
    scanned = scan_chip_mosaic(cfg, data_root / "test-jpg", data_root / "truth" / "test_labels.csv", out / "scene")
    done("scan", scanned.headline())
    test_f2 = score_submission(predicted.submission, data_root / "truth" / "test_labels.csv")
    log.info(click.style(f"\nheld-out test F2 (the {n_test} synthetic test chips, labels known): {test_f2:.4f}",
                         bold=True))
    log.info(f"submission: {predicted.submission}\nreport:     {report.path}")
    return {"test_f2": test_f2, "timings": timings, "submission": predicted.submission}
