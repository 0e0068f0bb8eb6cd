"""The ``amazonmine`` command: parses options, loads the config, calls one stage function. Nothing else.

Stage modules are imported inside each command so that ``amazonmine --help`` (and the dehaze, split and tune
stages) never pay for importing TensorFlow.

Exit codes (as click and rio use them; docs/reference/cli.md lists them for users):

====  =====================================================================================================
0     done
1     an error in a file or in the data, a config file's bad value or a bad ``--set`` included; also a
      refusal by the file system or the disk (one ``error: ...`` line on stderr)
2     a wrong option or argument on the command line (click's usage errors, ``--run`` with ``--config``)
3     finished, but some items failed and were skipped: chips dehaze or predict could not read, blocks scan
      could not read (each listed in the stage's output files and its summary line)
130   interrupted (Ctrl-C, SIGTERM)
====  =====================================================================================================

Messages go through :mod:`logging` (``amazonmine.core.logs``): the stages log, this module decides what is shown
(``-v``, ``-q``) and whether progress bars are drawn (only on a terminal, never with ``--no-progress``).
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from pathlib import Path

import click

# TensorFlow's C++ start-up chatter (CUDA probing on CPU machines, oneDNN notices) hides the real output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from amazonmine import __version__  # noqa: E402
from amazonmine.core.errors import AmazonmineError  # noqa: E402

EXIT_ERROR = 1  # a file, the data or a config value is wrong (click's ClickException uses 1 too)
EXIT_USAGE = 2  # the command line is wrong (click's UsageError)
EXIT_PARTIAL = 3  # finished, with some items failed and listed
EXIT_INTERRUPTED = 130

log = logging.getLogger("amazonmine.cli")
_RUN_DIR = "amazonmine.run_dir"  # ctx.meta keys: the --run folder of this command, and settings to record
_RECORD = "amazonmine.record"


def _config_options(fn=None, *, default: str = "built-in defaults", run: bool = False):
    """--config and --set; with ``run`` (the stages after split) also --run DIR, read by :func:`_load`."""
    if fn is None:  # used as @_config_options(default=...)
        return functools.partial(_config_options, default=default, run=run)
    fn = click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
                      help="Override one config value (repeatable), e.g. --set train.epochs=5.")(fn)
    if run:
        fn = click.option("--run", "run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
                          default=None, metavar="DIR", expose_value=False, callback=_remember_run,
                          help="A run folder: its saved config.yaml is the config (not with --config); --set "
                               "applies on top and is saved into it, so the run's next stages use it too.")(fn)
    fn = click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
                      default=None, help=f"YAML config file (default: {default}).")(fn)
    return fn


def _remember_run(ctx, param, value):
    ctx.meta[_RUN_DIR] = value
    return value


def _friendly(fn):
    """Turn the package's own errors, file-system errors and Ctrl-C into one line and an exit code; a command
    that returns :data:`EXIT_PARTIAL` exits with it once the --set values of a --run are recorded."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            code = fn(*args, **kwargs)
            _record_settings()
        except AmazonmineError as exc:
            log.debug("where it was raised:", exc_info=True)
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_ERROR)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except OSError as exc:
            # The disk or the file system refused (read-only folder, disk full, permissions): the file and
            # the reason are what the user needs, not a traceback. Atomic writes left nothing half-written.
            log.debug("where it was raised:", exc_info=True)
            where = exc.filename if exc.filename2 is None else f"{exc.filename} -> {exc.filename2}"
            click.echo(f"error: {where}: {exc.strerror or exc}" if where else f"error: {exc}", err=True)
            sys.exit(EXIT_ERROR)
        if code:
            sys.exit(code)

    return wrapper


def _names_run(config_path, overrides) -> bool:
    return (config_path is not None or click.get_current_context().meta.get(_RUN_DIR) is not None
            or any(o.split("=", 1)[0].strip() == "run.dir" for o in overrides))


def _uses_bundle(model, config_path, overrides) -> bool:
    """A model bundle predicts when one is named, or when nothing names a run (no --config, no --run, no
    --set run.dir): then it is the released model that ships with the package."""
    return model is not None or not _names_run(config_path, overrides)


def _load(config_path, overrides):
    """The config: the file (--config) or the run's saved one (--run), then the --set values."""
    from amazonmine.core.config import load_config

    ctx = click.get_current_context()
    run_dir = ctx.meta.get(_RUN_DIR)
    if run_dir is None:
        log.debug(f"config: {config_path or 'built-in defaults'}" + "".join(f", --set {o}" for o in overrides))
        return load_config(config_path, overrides)
    if config_path is not None:
        raise click.UsageError("--run and --config both name the settings: give one (the run folder's "
                               "config.yaml is its config; change it with --set)")
    if any(o.split("=", 1)[0].strip() == "run.dir" for o in overrides):
        raise click.UsageError("--run names the run folder: leave out --set run.dir")
    from amazonmine.core.runfolder import CONFIG_YAML

    saved = run_dir / CONFIG_YAML
    if not saved.is_file():
        raise AmazonmineError(f"{saved}: not found; --run takes a run folder that 'amazonmine split' or 'train' "
                              "has written (they save the run's config there)")
    cfg = load_config(saved, overrides)
    # The folder named is the run, wherever it was when its config was saved (moved, or named from elsewhere).
    cfg.run.dir = str(run_dir)
    log.debug(f"config: {saved}" + "".join(f", --set {o}" for o in overrides))
    if overrides:
        ctx.meta[_RECORD] = cfg
    return cfg


def _record_settings() -> None:
    """Save the config a --run stage ran with, its --set values included, as the run's config.yaml: the run's
    next stages read the same settings (train and split save it themselves too)."""
    cfg = click.get_current_context().meta.pop(_RECORD, None)
    if cfg is None:
        return
    from amazonmine.core.config import dump_config
    from amazonmine.core.io import write_text_atomic
    from amazonmine.core.runfolder import RunFolder

    run = RunFolder.from_config(cfg)
    text = dump_config(cfg)
    if run.config_yaml.is_file() and run.config_yaml.read_text(encoding="utf-8") == text:
        return
    with run.lock("recording --set"):
        write_text_atomic(run.config_yaml, text)
    log.info(f"saved the --set values into {run.config_yaml}")


class _PipelineOrder(click.Group):
    """List the stages in the order they run, not alphabetically."""

    def list_commands(self, ctx):
        return list(self.commands)


@click.group(cls=_PipelineOrder, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="amazonmine")
@click.option("-v", "--verbose", count=True, help="Also print debugging lines (the settings read; with an error, "
                                                  "where it was raised).")
@click.option("-q", "--quiet", is_flag=True, help="Print errors only: no summary lines, no progress bars.")
@click.option("--no-progress", is_flag=True, help="No progress bars (drawn only on a terminal in any case).")
@click.pass_context
def main(ctx, verbose, quiet, no_progress):
    """Find illegal gold mining (and 16 other labels) in Planet satellite chips of the Amazon.

    Stages share one YAML config (--config) and one run folder (run.dir):
    synth -> dehaze -> split -> train -> tune -> predict -> evaluate -> scan, or all at once with demo.
    After split, --run DIR reads the run's own saved config instead of --config.

    Exit codes: 0 done; 1 an error in a file, the data or a config value; 2 a wrong option or argument;
    3 finished, but some items (chips, blocks) failed and are listed; 130 interrupted.
    """
    from amazonmine.core.logs import configure

    if verbose and quiet:
        raise click.UsageError("-v and -q ask for opposite things: give one")
    ctx.call_on_close(configure(verbose=verbose, quiet=quiet, progress=not no_progress))


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
    from amazonmine.core.data import PLANET_RARE_LABELS
    from amazonmine.stages.synth import run_synth

    cfg = _load(config_path, overrides)
    summary = run_synth(cfg, out, n_train=n_train, n_test=n_test, size=size, seed=seed, rare_boost=rare_boost,
                        tif=tif, overwrite=overwrite)
    rare = ", ".join(f"{k}={v}" for k, v in summary["label_counts"].items() if k in PLANET_RARE_LABELS)
    log.info(f"wrote {summary['n_train']} train + {summary['n_test']} test chips "
             f"({summary['size']} px, {summary['haze']} hazy) to {summary['out']}; {rare}")


@main.command(short_help="Cut labelled training chips from scenes and polygons (Kaggle layout).")
@click.argument("scenes", nargs=-1, required=True, metavar="SCENE...")
@click.option("--labels", "labels_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              metavar="LABELS.geojson|.gpkg", help="Polygons with a 'label' property (a label of data.labels, "
                                                   "or unlabelled/ignore for places to leave out).")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="The dataset folder to write (train_v2.csv, train-jpg/, chips.csv, chips.geojson, chips.json).")
@_config_options
@click.option("--min-tile-share", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="A tile takes a label when that label's polygons cover this share of it ... (default: "
                   "chips.min_tile_share, 0.1)")
@click.option("--min-polygon-share", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="... or when this share of one of its polygons lies in the tile (default: chips.min_polygon_share, "
                   "0.5).")
@click.option("--weather", type=click.Choice(["clear", "haze", "partly_cloudy", "cloudy"]), default=None,
              help="Weather label of chips no weather polygon covers (default: chips.weather, clear).")
@click.option("--negative-share", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="Share of the tiles without a polygon label to keep, seeded by name (default: "
                   "chips.negative_share, 1).")
@click.option("--block-size-m", type=click.FloatRange(min=0), default=None,
              help="Side of the spatial blocks chips are grouped by (default: chips.block_size_m; 0 = 10 chip "
                   "sides).")
@click.option("--size", type=int, default=None, help="Chip side in pixels (default: data.chip_size, else 256).")
@click.option("--look-like", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              metavar="CHIP", help="Store chips like this JPEG chip (default: like Kaggle's, CMYK at quality 75).")
@click.option("--seed", type=int, default=None, help="Seed of the negatives kept (default: run.seed).")
@click.option("--overwrite", is_flag=True, help="Replace chips made earlier in --out from other inputs.")
@_friendly
def chips(scenes, labels_path, out, config_path, overrides, min_tile_share, min_polygon_share, weather,
          negative_share, block_size_m, size, look_like, seed, overwrite):
    """Cut SCENE... into tiles exactly as scan does and label them from polygons, into the Kaggle layout.

    A stopped run re-run with the same inputs goes on where it stopped; the output folder appears only once
    every chip is written. Scan's settings (scan.stride, scan.stretch_*, data.chip_ground_m) come from --config.
    """
    from amazonmine.stages.chips import run_chips

    cfg = _load(config_path, overrides)
    given = {"min_tile_share": min_tile_share, "min_polygon_share": min_polygon_share, "weather": weather,
             "negative_share": negative_share, "block_size_m": block_size_m}
    # An option left out takes the config's chips.* value.
    labelling = {k: getattr(cfg.chips, k) if v is None else v for k, v in given.items()}
    summary = run_chips(cfg, list(scenes), labels_path, out, overwrite=overwrite, progress=True, **labelling,
                        size=size, look_like=look_like, seed=seed)
    log.info(summary.headline())


@main.command(short_help="Remove haze from every chip (dark-channel prior).")
@click.argument("src", required=False, type=click.Path(path_type=Path))
@click.argument("dst", required=False, type=click.Path(path_type=Path))
@_config_options
@click.option("--workers", type=int, default=None, help="Processes (default: dehaze.workers, 0 = all cores).")
@click.option("--overwrite", is_flag=True, help="Redo chips already present in DST.")
@_friendly
def dehaze(src, dst, config_path, overrides, workers, overwrite):
    """Remove haze (dark-channel prior + guided filter) from every chip of SRC into DST."""
    from amazonmine.stages.dehaze import run_dehaze

    cfg = _load(config_path, overrides)
    summary = run_dehaze(cfg, src=src, dst=dst, workers=workers, overwrite=overwrite)
    log.info(summary.headline())
    return EXIT_PARTIAL if summary.failed else 0


@main.command(short_help="Stratified k-fold plan with rare-label oversampling.")
@_config_options
@click.option("--group-by", "group_by", metavar="COLUMN", default=None,
              help="Keep chips of one group in one fold (e.g. 'block' of chips.csv from 'amazonmine chips'; "
                   "default: split.group_by).")
@_friendly
def split(config_path, overrides, group_by):
    """Multi-label stratified k-fold plan with rare-label oversampling (folds.csv, train_manifest.csv)."""
    import warnings

    from amazonmine.stages.split import SplitWarning, run_split

    cfg = _load(config_path, overrides)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SplitWarning)  # the headline already says it, once
        summary = run_split(cfg, group_by=group_by)
    log.info(summary.headline())


@main.command(short_help="Train DenseNet121 per fold; out-of-fold predictions.")
@_config_options(run=True)
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
              help="Seconds a worker waits for the other workers to start, and a training step for the "
                   "others (0: no limit); a worker that dies or goes silent is noticed within seconds either way.")
@_friendly
def train(config_path, overrides, folds, all_folds, gpu, resume, retrain, cluster_mode, cluster_timeout):
    """Train the DenseNet121 multi-label classifier; writes b01_dense121.h5 and out-of-fold predictions.

    A fold already trained on the current split is kept, not retrained, unless --retrain.
    """
    from amazonmine.core.fold_plan import resolve_folds
    from amazonmine.neural.cluster import join
    from amazonmine.stages.train import run_train

    cfg = _load(config_path, overrides)
    chosen = resolve_folds(cfg, folds, all_folds)
    # Joining a cluster must be the process's first TensorFlow call; everything above is plain Python.
    cluster = join(cluster_mode, gpu=gpu, step_timeout=cluster_timeout, join_timeout=cluster_timeout,
                   say=log.info)
    try:
        run_train(cfg, folds=chosen, gpu=gpu, resume=resume, retrain=retrain, cluster=cluster,
                  on_fold=lambda result: log.info(result.headline()))
    finally:
        if cluster is not None:
            cluster.close()


@main.command(short_help="Fit per-label F2 thresholds on out-of-fold predictions.")
@_config_options(run=True)
@_friendly
def tune(config_path, overrides):
    """Per-label decision thresholds that maximise the out-of-fold mean F2 (thresholds.json)."""
    from amazonmine.stages.tune import run_tune

    cfg = _load(config_path, overrides)
    log.info(run_tune(cfg).headline())


@main.command(short_help="Label chips: the Kaggle test set, or your own chips with a model.")
@_config_options(run=True)
@click.argument("inputs", nargs=-1, type=click.Path(path_type=Path))
@click.option("--model", "model", metavar="NAME|PATH", default=None,
              help="A model bundle (folder or installed name) instead of a run; default without --config or --run: "
                   "the released model.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="With a model: the folder for labels.csv and probabilities.csv (default: predictions).")
@click.option("--allow-missing", is_flag=True, help="Exit 0 even if some chips are missing or corrupt (else 3).")
@click.option("--gpu", is_flag=True, help="Require a GPU.")
@_friendly
def predict(config_path, overrides, inputs, model, out, allow_missing, gpu):
    """Label the test chips with the fold models and tuned thresholds; writes submission.csv.

    INPUTS (folders of chips, or CSV lists with an image_name column) label your own chips instead: the labels
    go to predictions/labels.csv in the run folder, and the Kaggle submission is left alone. With --model, or
    with no run named (no --config, --run or --set run.dir: the released model that ships with amazonmine), no
    run is needed:
    INPUTS are labelled into --out (labels.csv, probabilities.csv).
    """
    from amazonmine.stages.predict import run_predict, run_predict_bundle

    cfg = _load(config_path, overrides)
    if _uses_bundle(model, config_path, overrides):
        summary = run_predict_bundle(list(inputs), out or Path("predictions"), model=model, gpu=gpu, cfg=cfg)
    else:
        if out is not None:
            raise click.UsageError("--out goes with --model (a run writes into its own folder)")
        summary = run_predict(cfg, inputs=list(inputs) or None, allow_missing=allow_missing, gpu=gpu)
    log.info(summary.headline())
    return EXIT_PARTIAL if summary.failed and not (allow_missing or cfg.predict.allow_missing) else 0


@main.command(short_help="Write the HTML report (scores, curves, mine gallery).")
@_config_options(run=True)
@_friendly
def evaluate(config_path, overrides):
    """Write an HTML report: per-label scores, threshold curves, co-occurrence, a gallery of mine chips."""
    from amazonmine.stages.evaluate import run_evaluate

    cfg = _load(config_path, overrides)
    log.info(run_evaluate(cfg).headline())


@main.command(short_help="Run the whole pipeline on synthetic data (CPU, minutes).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/demo"),
              show_default=True, help="Folder for the generated data and the run.")
@_config_options(default="the packaged demo config, amazonmine/resources/demo.yaml")
@_friendly
def demo(out, config_path, overrides):
    """The whole pipeline on a freshly generated synthetic set, on the CPU, in a few minutes."""
    from amazonmine.demo import run_demo

    run_demo(out, config_path=config_path, overrides=list(overrides))


@main.command(short_help="Map mines in satellite scenes (GeoTIFF/COG) with a trained model.")
@click.argument("scenes", nargs=-1, required=True, metavar="SCENE...")
@_config_options(run=True)
@click.option("--model", "model", metavar="NAME|PATH", default=None,
              help="A model bundle (folder or installed name) instead of the run's models; default without "
                   "--config or --run: the released model.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output folder (default: <run.dir>/scans/<scene name>, or scans/<scene name> with a model).")
@click.option("--scheduler", metavar="ADDRESS", default=None,
              help="Send the blocks to a running dask.distributed scheduler, e.g. tcp://10.0.0.5:8786.")
@click.option("--since", "since", type=click.Path(exists=True, path_type=Path), default=None,
              metavar="PREVIOUS_SCAN", help="An earlier scan's folder: also write new_sites.geojson.")
@click.option("--format", "out_format", metavar="geojson|gpkg|fgb", default="geojson", show_default=True,
              help="How tiles, sites and new sites are written: GeoJSON, GeoPackage or FlatGeobuf (an extension "
                   "such as .gpkg names one too); QGIS styles (.qml) are written beside them.")
@click.option("--truth", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              metavar="TRUTH.geojson", help="Known mine sites: also score the scan (site_scores.json).")
@_friendly
def scan(scenes, config_path, overrides, model, out, scheduler, since, out_format, truth):
    """Scan SCENE... (GeoTIFFs or COGs in any CRS, folders of them, URLs, or STAC Items: item.json, local or a
    URL, whose visual or analytic asset is scanned) with a trained model.

    The model is the run's (--config, --run or --set run.dir=...), a bundle (--model), or, with neither, the released
    model that ships with amazonmine. Writes tiles.geojson, sites.geojson, one probability COG per mine label,
    scan_report.html and scan.json. Finished blocks are kept in blocks/, so a stopped scan re-run does only the rest.
    """
    from amazonmine.stages.scan import check_scheduler_address, default_name, list_scenes, run_scan

    cfg = _load(config_path, overrides)
    if scheduler is not None:
        check_scheduler_address(scheduler)  # refused before a bundle's models load (run_scan checks it too)
    predictor = None
    if _uses_bundle(model, config_path, overrides):
        from amazonmine.core.bundle import OWN_LABELS, open_bundle, resolve
        from amazonmine.neural.predictor import Predictor

        open_bundle(resolve(model), labels=OWN_LABELS)  # a bad bundle is refused before the scenes are opened
        predictor = Predictor.from_bundle(model, batch_size=cfg.scan.batch_size or None)
        if out is None:
            out = Path("scans") / default_name(list(scenes), list_scenes(scenes))
    summary = run_scan(cfg, list(scenes), out=out, scheduler=scheduler, since=since, predictor=predictor,
                       out_format=out_format)
    log.info(summary.headline())
    if truth is not None:
        from amazonmine.stages.score_sites import score_scan

        log.info(score_scan(summary.out_dir, truth).headline())
    return EXIT_PARTIAL if summary.failed_blocks else 0


@main.command("score-sites", short_help="Score a scan against known sites (found, false sites per 1,000 km2).")
@click.argument("scan_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--truth", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              metavar="TRUTH.geojson|.gpkg", help="Polygons of known mine sites ('label' optional).")
@click.option("--min-tile-share", type=click.FloatRange(0, 1, min_open=True), default=0.1, show_default=True,
              help="Tile truth: a site covers this share of the tile ...")
@click.option("--min-polygon-share", type=click.FloatRange(0, 1, min_open=True), default=0.5, show_default=True,
              help="... or this share of the site lies in the tile (the rule 'chips' labels by).")
@click.option("--bootstrap", "draws", type=click.IntRange(min=0), default=1000, show_default=True,
              help="Bootstrap draws over sites for the 95% intervals (0: none).")
@_friendly
def score_sites(scan_dir, truth, min_tile_share, min_polygon_share, draws):
    """Score the scan in SCAN_DIR as its users judge it: truth sites found, false sites per 1,000 km2, tile
    precision and recall with intervals over sites, and a curve along the threshold (site_scores.json)."""
    from amazonmine.stages.score_sites import score_scan

    log.info(score_scan(scan_dir, truth, min_tile_share=min_tile_share, min_polygon_share=min_polygon_share,
                        draws=draws).headline())


@main.command(short_help="Write a finished run as a model bundle (models, decisions, card).")
@_config_options(run=True)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="The bundle folder to write.")
@click.option("--name", default=None, help="The bundle's name (default: the run folder's name).")
@click.option("--version", "version", default="1", show_default=True, help="The bundle's version.")
@click.option("--card-notes", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Markdown about the imagery, its licence and limits, placed in the model card.")
@click.option("--overwrite", is_flag=True, help="Replace an earlier bundle at --out (once the new one is complete).")
@_friendly
def export(config_path, overrides, out, name, version, card_notes, overwrite):
    """Export the run's finished fold models, tuned decisions and preprocessing as one self-checking folder
    that scan --model, predict --model and Predictor.from_bundle read without the run or its data."""
    from amazonmine.stages.export import run_export

    cfg = _load(config_path, overrides)
    log.info(run_export(cfg, out, name=name, version=version, overwrite=overwrite, card_notes=card_notes).line())


@main.command(short_help="List the model bundles amazonmine can see.")
@_friendly
def models():
    """List the installed model bundles (the released one, and those in $AMAZONMINE_MODELS folders): name,
    version, labels, held-out F2 from the card, size. A bundle that fails its checks is listed with the reason."""
    from amazonmine.core.bundle import BundleError, installed

    found = installed()
    if not found:
        click.echo("no model bundles found (the package's models/ folder and $AMAZONMINE_MODELS are empty)")
        return
    for folder, bundle in found:
        if isinstance(bundle, BundleError):
            click.echo(f"{folder.name}  UNUSABLE: {bundle}")
            continue
        click.echo(f"{bundle.name} v{bundle.version}  {len(bundle.labels)} labels  {bundle.headline}  "
                   f"{bundle.size_bytes() / 1e6:.1f} MB  {folder}")


if __name__ == "__main__":  # pragma: no cover
    main()
