"""The ``amazonmine`` command: parses options, loads the config, calls one stage function. Nothing else.

Stage modules are imported inside each command so that ``amazonmine --help`` (and the dehaze, split and tune
stages) never pay for importing TensorFlow.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import click

# TensorFlow's C++ start-up chatter (CUDA probing on CPU machines, oneDNN notices) hides the real output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from amazonmine import __version__  # noqa: E402
from amazonmine.errors import AmazonmineError  # noqa: E402


def _config_options(fn=None, *, default: str = "built-in defaults"):
    if fn is None:  # used as @_config_options(default=...)
        return functools.partial(_config_options, default=default)
    fn = click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
                      help="Override one config value (repeatable), e.g. --set train.epochs=5.")(fn)
    fn = click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
                      default=None, help=f"YAML config file (default: {default}).")(fn)
    return fn


def _friendly(fn):
    """Turn the package's own errors, file-system errors and Ctrl-C into one line and a non-zero exit."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except AmazonmineError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except OSError as exc:
            # The disk or the file system refused (read-only folder, disk full, permissions): the file and
            # the reason are what the user needs, not a traceback. Atomic writes left nothing half-written.
            where = exc.filename if exc.filename2 is None else f"{exc.filename} -> {exc.filename2}"
            click.echo(f"error: {where}: {exc.strerror or exc}" if where else f"error: {exc}", err=True)
            sys.exit(2)

    return wrapper


def _load(config_path, overrides):
    from amazonmine.config import load_config

    return load_config(config_path, overrides)


class _PipelineOrder(click.Group):
    """List the stages in the order they run, not alphabetically."""

    def list_commands(self, ctx):
        return list(self.commands)


@click.group(cls=_PipelineOrder, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="amazonmine")
def main():
    """Find illegal gold mining (and 16 other labels) in Planet satellite chips of the Amazon.

    Stages share one YAML config (--config) and one run folder (run.dir):
    synth -> dehaze -> split -> train -> tune -> predict -> evaluate -> scan, or all at once with demo.
    """


@main.command(short_help="Generate a labelled Planet-like dataset (Kaggle layout).")
@click.argument("out", required=False, type=click.Path(file_okay=False, path_type=Path))
@_config_options
@click.option("--n-train", default=200, show_default=True, help="Labelled training chips.")
@click.option("--n-test", default=50, show_default=True, help="Unlabelled test chips.")
@click.option("--size", type=int, default=None, help="Chip side in pixels (default: data.chip_size, else 256).")
@click.option("--seed", type=int, default=None, help="Random seed (default: run.seed).")
@click.option("--rare-boost", default=20.0, show_default=True,
              help="Weight multiplier for label combinations holding a rare label (<1%).")
@click.option("--tif", is_flag=True, help="Also write 4-band 16-bit TIFs (train-tif-v2/).")
@click.option("--overwrite", is_flag=True, help="Replace an earlier synth set in OUT.")
@_friendly
def synth(out, config_path, overrides, n_train, n_test, size, seed, rare_boost, tif, overwrite):
    """Write a labelled Planet-like dataset in the Kaggle layout into OUT (default: data.root)."""
    from amazonmine.data import PLANET_RARE_LABELS
    from amazonmine.synth import run_synth

    cfg = _load(config_path, overrides)
    summary = run_synth(cfg, out, n_train=n_train, n_test=n_test, size=size, seed=seed, rare_boost=rare_boost,
                        tif=tif, overwrite=overwrite)
    rare = ", ".join(f"{k}={v}" for k, v in summary["label_counts"].items() if k in PLANET_RARE_LABELS)
    click.echo(f"wrote {summary['n_train']} train + {summary['n_test']} test chips "
               f"({summary['size']} px, {summary['haze']} hazy) to {summary['out']}; {rare}")


@main.command(short_help="Remove haze from every chip (dark-channel prior).")
@click.argument("src", required=False, type=click.Path(path_type=Path))
@click.argument("dst", required=False, type=click.Path(path_type=Path))
@_config_options
@click.option("--workers", type=int, default=None, help="Processes (default: dehaze.workers, 0 = all cores).")
@click.option("--overwrite", is_flag=True, help="Redo chips already present in DST.")
@_friendly
def dehaze(src, dst, config_path, overrides, workers, overwrite):
    """Remove haze (dark-channel prior + guided filter) from every chip of SRC into DST."""
    from amazonmine.dehaze import run_dehaze

    cfg = _load(config_path, overrides)
    summary = run_dehaze(cfg, src=src, dst=dst, workers=workers, overwrite=overwrite)
    click.echo(summary.headline())
    if summary.failed:
        sys.exit(1)


@main.command(short_help="Stratified k-fold plan with rare-label oversampling.")
@_config_options
@_friendly
def split(config_path, overrides):
    """Multi-label stratified k-fold plan with rare-label oversampling (folds.csv, train_manifest.csv)."""
    import warnings

    from amazonmine.split import SplitWarning, run_split

    cfg = _load(config_path, overrides)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SplitWarning)  # the headline already says it, once
        summary = run_split(cfg)
    click.echo(summary.headline())


@main.command(short_help="Train DenseNet121 per fold; out-of-fold predictions.")
@_config_options
@click.option("--fold", "folds", type=int, multiple=True, help="Fold to train (repeatable).")
@click.option("--all-folds", is_flag=True, help="Train every fold of the split.")
@click.option("--gpu", is_flag=True, help="Require a GPU; mixed precision, several GPUs mirrored.")
@click.option("--resume", is_flag=True,
              help="Continue interrupted folds from their last epoch; finished folds are kept, new ones start.")
@click.option("--retrain", is_flag=True, help="Train the folds again from scratch, replacing finished models.")
@click.option("--cluster", "cluster_mode", type=click.Choice(["auto", "tf-config", "slurm", "none"]),
              default="auto", show_default=True,
              help="Train with other machines, each running this same command: auto joins the workers TF_CONFIG "
                   "names when it is set; slurm joins the tasks of the srun job step; none trains alone.")
@click.option("--cluster-timeout", type=click.FloatRange(min=0), default=600.0, show_default=True,
              help="Seconds a training step waits for the other workers (0: no limit); a worker that dies or "
                   "goes silent is noticed within seconds either way.")
@_friendly
def train(config_path, overrides, folds, all_folds, gpu, resume, retrain, cluster_mode, cluster_timeout):
    """Train the DenseNet121 multi-label classifier; writes b01_dense121.h5 and out-of-fold predictions.

    A fold already trained on the current split is kept, not retrained, unless --retrain.
    """
    from amazonmine.cluster import join
    from amazonmine.fold_policy import resolve_folds
    from amazonmine.train import run_train

    cfg = _load(config_path, overrides)
    chosen = resolve_folds(cfg, folds, all_folds)
    # Joining a cluster must be the process's first TensorFlow call; everything above is plain Python.
    cluster = join(cluster_mode, gpu=gpu, step_timeout=cluster_timeout)
    try:
        run_train(cfg, folds=chosen, gpu=gpu, resume=resume, retrain=retrain, cluster=cluster,
                  on_fold=lambda result: click.echo(result.headline()))
    finally:
        if cluster is not None:
            cluster.close()


@main.command(short_help="Fit per-label F2 thresholds on out-of-fold predictions.")
@_config_options
@_friendly
def tune(config_path, overrides):
    """Per-label decision thresholds that maximise the out-of-fold mean F2 (thresholds.json)."""
    from amazonmine.tune import run_tune

    cfg = _load(config_path, overrides)
    click.echo(run_tune(cfg).headline())


@main.command(short_help="Label the test chips; write a Kaggle submission.")
@_config_options
@click.argument("inputs", nargs=-1, type=click.Path(path_type=Path))
@click.option("--allow-missing", is_flag=True, help="Exit 0 even if some chips are missing or corrupt.")
@click.option("--gpu", is_flag=True, help="Require a GPU.")
@_friendly
def predict(config_path, overrides, inputs, allow_missing, gpu):
    """Label the test chips with the fold models and tuned thresholds; writes submission.csv.

    INPUTS (folders of chips, or CSV lists with an image_name column) label your own chips instead: the labels
    go to predictions/labels.csv in the run folder, and the Kaggle submission is left alone.
    """
    from amazonmine.predict import run_predict

    cfg = _load(config_path, overrides)
    summary = run_predict(cfg, inputs=list(inputs) or None, allow_missing=allow_missing, gpu=gpu)
    click.echo(summary.headline())
    if summary.failed and not (allow_missing or cfg.predict.allow_missing):
        sys.exit(1)


@main.command(short_help="Write the HTML report (scores, curves, mine gallery).")
@_config_options
@_friendly
def evaluate(config_path, overrides):
    """Write an HTML report: per-label scores, threshold curves, co-occurrence, a gallery of mine chips."""
    from amazonmine.evaluate import run_evaluate

    cfg = _load(config_path, overrides)
    click.echo(run_evaluate(cfg).headline())


@main.command(short_help="Run the whole pipeline on synthetic data (CPU, minutes).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/demo"),
              show_default=True, help="Folder for the generated data and the run.")
@_config_options(default="the packaged demo config, amazonmine/resources/demo.yaml")
@_friendly
def demo(out, config_path, overrides):
    """The whole pipeline on a freshly generated synthetic set, on the CPU, in a few minutes."""
    from amazonmine.demo import run_demo

    run_demo(out, config_path=config_path, overrides=list(overrides))


@main.command(short_help="Map mines in satellite scenes (GeoTIFF/COG) with a trained run.")
@click.argument("scenes", nargs=-1, required=True, metavar="SCENE...")
@_config_options
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output folder (default: <run.dir>/scans/<scene name>).")
@click.option("--scheduler", metavar="ADDRESS", default=None,
              help="Send the blocks to a running dask.distributed scheduler, e.g. tcp://10.0.0.5:8786.")
@click.option("--since", "since", type=click.Path(exists=True, path_type=Path), default=None,
              metavar="PREVIOUS_SCAN", help="An earlier scan's folder: also write new_sites.geojson.")
@_friendly
def scan(scenes, config_path, overrides, out, scheduler, since):
    """Scan SCENE... (GeoTIFFs or COGs in any CRS, folders of them, or URLs) with the run's models.

    Writes tiles.geojson, sites.geojson, one probability COG per mine label, scan_report.html and scan.json.
    Finished blocks are kept in blocks/, so a stopped scan re-run does only the rest.
    """
    from amazonmine.scan import run_scan

    cfg = _load(config_path, overrides)
    summary = run_scan(cfg, list(scenes), out=out, scheduler=scheduler, since=since)
    click.echo(summary.headline())
    if summary.failed_blocks:
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
