"""One typed configuration for every stage.

A tree of pydantic models (one section per stage) loaded from YAML, then overridden from the command line with
``--set section.key=value``. Each field states its type, choices, bounds and help text (the field types are in
:mod:`amazonmine.core.config_fields`; :mod:`amazonmine.core.config_reference` renders them for the docs); every count
and size has an upper bound, so a slip such as ``epochs: 1e8`` is refused at load, not met an hour later as a 40 GiB
allocation. A bad value is one line naming its source (the file, or the ``--set`` that gave it), the key, the value
(quoted briefly) and the problem. Models are mutable and assignments are not validated, as with the dataclasses they
replace (stages check what they use).

YAML is read by a hardened ``yaml.safe_load`` (:mod:`amazonmine.core.config_yaml`: no duplicate keys, alias bombs,
deep nesting, huge or non-UTF-8 files), ``--set`` values too; errors become one line in
:mod:`amazonmine.core.config_errors`.
"""

import difflib
import functools
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from amazonmine.core.config_errors import ConfigError, key_name, quote, validated
from amazonmine.core.config_errors import Conflict as _Conflict
from amazonmine.core.config_fields import (
    BATCH,
    EPOCHS,
    MANY,
    NO_WEIGHTS,
    PIXELS,
    WORKERS,
    BlockLayers,
    Bool,
    Float,
    FoldNumber,
    Int,
    Label,
    ListOf,
    ModelFileName,
    Name,
    ObjectiveTarget,
    Percentile,
    Probability,
    Section,
    Text,
    Weights,
    ruled,
    setting,
    whole,
)
from amazonmine.core.config_yaml import parse_override, read_sections
from amazonmine.core.data import LABELS, WEATHER_LABELS, vocabulary_problem

# --- the sections ----------------------------------------------------------------------------------------------

class DataConfig(Section):
    """Where the chips are: a folder in the Kaggle layout (train_v2.csv, train-jpg/, train-tif-v2/, test-jpg/)."""

    root: Name = setting("data/planet", "the Kaggle download, unpacked")
    labels_csv: Text = setting("train_v2.csv", "image_name,tags; relative to data.root")
    train_dir: Text = setting("train-jpg", "labelled JPEG chips")
    tif_dir: Text = setting("train-tif-v2", "labelled 4-band GeoTIFF chips (image_format: tif)")
    test_dirs: ListOf(Text) = setting(["test-jpg", "test-jpg-additional"], "chips to label for the submission")
    sample_submission: Text = setting("sample_submission_v2.csv", "Kaggle's sample: the submission's order, count")
    image_format: Literal["jpg", "tif"] = setting("jpg", "jpg: RGB JPEG chips; tif: 4-band (B, G, R, NIR) 16 bit")
    chip_size: Int = setting(0, "expected side of every chip (px); 0 accepts any square size", ge=0, cap=PIXELS)
    chip_ground_m: Float = setting(768.0, "ground side of a chip in metres (256 px at ~3 m; 32-px thumbnails cover "
                                   "the same ground): scan cuts tiles of this ground size", gt=0, cap=100_000)
    labels: ruled(ListOf(Text), lambda v: vocabulary_problem(v) is None, "must be distinct plain label names "
                  "(letters, digits, _ - .), at least one") = setting(
        list(LABELS), "the run's vocabulary: the Planet 17 labels, or a list of its own (e.g. [artisinal_mine, "
        "airstrip]); other tags in the labels file are ignored (counted in the log), a '?name' tag marks a chip "
        "never annotated for name (masked out of the loss and the scores); the weather rules apply only when all "
        "four weather labels are in it", max_length=1000)


class RunConfig(Section):
    """The run folder every stage reads and writes."""

    dir: Name = setting("runs/default", "every artifact of the run lives below this folder")
    seed: Int = setting(42, "split, oversampling and training order (numpy's range)", ge=0, le=2**32 - 1)


class DehazeConfig(Section):
    """Haze removal before training and prediction (dark channel prior, He et al. 2009)."""

    enabled: Bool = setting(True, "train and predict read the dehazed copies")
    method: Literal["dark_channel", "airlight_subtract"] = setting("dark_channel", "dark_channel: with guided-filter "
                                                                   "refinement; airlight_subtract: the simpler variant")
    # Past 255 px the window is wider than a Planet chip (one dark value per chip).
    patch: ruled(Int, lambda n: n % 2, "must be odd") = setting(15, "dark-channel window (px)", ge=1, cap=255)
    omega: Float = setting(0.95, "share of the haze removed (a little kept looks natural)", gt=0, le=1)
    t0: Float = setting(0.1, "lower bound on the transmission", gt=0, lt=1)
    top_fraction: Float = setting(0.001, "brightest share of the dark channel picks the airlight", gt=0, le=0.1)
    guided_radius: Int = setting(24, "guided-filter radius (px): smooth over a patch, still following field and "
                                 "river edges of a 256-px chip", ge=1, cap=PIXELS)
    # Units of a [0, 1] grey guide, whose variance is at most 0.25: past 1 the filter is a plain box mean.
    guided_eps: Float = setting(1e-3, "guided-filter smoothing (larger = smoother)", gt=0, cap=1)
    workers: Int = setting(0, "processes; 0 = all cores", ge=0, cap=WORKERS)
    out_dir: Name = setting("dehazed", "output folder, relative to run.dir unless absolute")


class SplitConfig(Section):
    """The stratified k-fold split, the lockbox and the oversampling of rare labels."""

    folds: Int = setting(5, "k of the stratified k-fold (one model per fold)", ge=2, cap=100)
    rare_threshold: Float = setting(0.01, "labels rarer than this share are oversampled in training folds", gt=0,
                                    lt=1)
    rare_labels: ListOf(Text) = setting([], "or exactly these labels, when not empty")
    rare_target: Int = setting(500, "training chips per rare label per fold, repeated under distinct dihedral "
                               "views (0 = no oversampling)", ge=0, cap=MANY)
    rare_max_factor: Int = setting(8, "but no chip more often than this (8 = every rotation/flip once)", ge=1, le=8)
    holdout: Float = setting(0.0, "stratified share set aside before the folds (fold -1): the lockbox evaluate "
                             "scores once with the final decisions; 0 = none", ge=0, lt=0.5)
    group_by: Text = setting("", "a column (of the labels file, or of chips.csv beside it, e.g. block) whose groups "
                             "each stay in one fold and whose hold-out is whole groups; \"\" = chips one by one; "
                             "split --group-by overrides it")


class TrainConfig(Section):
    """The classifier and how each fold trains it."""

    backbone: Text = setting("densenet121", "any keras.applications name; densenet_mini for tests")
    weights: Weights = setting(NO_WEIGHTS, "none (from scratch; null and \"\" too), imagenet (Keras cache or "
                               "download) or a local no-top .h5 path")
    # DenseNet121 at 2048 px takes gigabytes of activations per chip: 8x the Planet chip is plenty.
    image_size: Int = setting(256, "chips are resized to this side (px) before the model", ge=32, cap=2048)
    batch_size: Int = setting(32, "per replica (each GPU or CPU worker)", ge=1, cap=BATCH)
    epochs: Int = setting(30, "at most; early stopping may end a fold sooner", ge=1, cap=EPOCHS)
    learning_rate: Float = setting(1e-3, "peak AdamW learning rate (after warm-up)", gt=0, cap=1)
    warmup_epochs: Int = setting(1, "cosine: epochs rising from a tenth of learning_rate to it", ge=0, cap=EPOCHS)
    schedule: Literal["cosine", "one_cycle", "constant", "plateau"] = setting("cosine", (
        "cosine: warm-up, then cosine decay to 1% of learning_rate by the last epoch; one_cycle (PyTorch "
        "OneCycleLR's defaults): from learning_rate/25 up over one_cycle_warmup of all steps, then cosine decay to "
        "1/10,000 of the start (beta_1 not cycled); constant; plateau: cut on a validation plateau"))
    one_cycle_warmup: Float = setting(0.3, "one_cycle: share of all steps rising to learning_rate", gt=0, lt=1)
    weight_decay: Float = setting(1e-4, "decoupled weight decay (AdamW)", ge=0, cap=1)
    dropout: Float = setting(0.2, "before the 17-way head", ge=0, lt=1)
    soft_f2_weight: Float = setting(0.0, "> 0 adds a differentiable F2 term to the cross-entropy", ge=0, cap=100)
    label_smoothing: Float = setting(0.0, "of the binary cross-entropy", ge=0, lt=1)
    early_stopping_patience: Int = setting(8, "epochs without a better validation F2 before a fold stops", ge=0,
                                           cap=EPOCHS)
    small_size: Int = setting(0, "progressive resizing: the first small_epochs epochs on chips this small (px); "
                              "validation and predictions at image_size; 0 = off", ge=0, cap=2048)
    small_epochs: Int = setting(0, "epochs at small_size before the rest", ge=0, cap=EPOCHS)
    xla: Bool = setting(False, "XLA-compiled steps on the CPU too (GPUs always): ~9% faster for DenseNet121 at 48 "
                        "px after a minute's compile (scripts/bench_precision.py); needs deterministic: false")
    ema: Float = setting(0.0, "> 0: momentum of a moving average of the weights (0.998 ~ the last 500 steps) used to "
                         "validate, keep and predict (BatchNorm recalibrated for it); 0 = off", ge=0, lt=1)
    folds: ListOf(FoldNumber) = setting([0], "folds to train; empty = every fold of the split")
    artifact_name: ModelFileName = setting("b01_dense121.h5", "the model's file name in each fold's folder")
    init_from: Text = setting("", "start from a trained model: a finished run folder (its fold of the same "
                              "number, else its first), a model bundle (folder or installed name, e.g. "
                              "planet32-v1) or a model file (.h5/.keras); the backbone's weights are copied, the "
                              "head too when the vocabulary is the same, else the head is new; \"\" = "
                              "train.weights")
    head_epochs: Int = setting(0, "with init_from: epochs training the head alone (backbone frozen) before "
                               "train.epochs of the whole network; 0 = none", ge=0, cap=EPOCHS)
    augment: Bool = setting(True, "random D4 views + brightness/contrast jitter")
    brightness_jitter: Float = setting(0.05, "random brightness shift, as a share of full scale", ge=0, le=1)
    contrast_jitter: Float = setting(0.1, "random contrast factor within 1 +- this", ge=0, le=1)
    chip_augment: Float = setting(0.0, "share of chips remade as another chip-making pipeline would (resampling, "
                                  "blur/sharpening, JPEG quality 40-95): same scene, same labels", ge=0, le=1)
    cache: Bool = setting(False, "keep decoded chips in memory (40k x 256 px x 3 = 8 GB)")
    mini_blocks: ListOf(BlockLayers) = setting([2, 2, 2], "densenet_mini only: layers per dense block", max_length=8)
    mini_growth: Int = setting(12, "densenet_mini only: channels each layer adds", ge=1, cap=256)
    steps_per_epoch: Int = setting(0, "0 = one pass over the training manifest", ge=0, cap=MANY)
    bn_recalibration_batches: Int = setting(100, "precise BatchNorm: the best checkpoint's statistics recomputed "
                                            "over this many training batches (helped on real 32-px chips, README "
                                            "\"Real data\"); 0 = off", ge=0, cap=MANY)
    validation_bn_batches: Int = setting(0, "> 0: the same before each validation, so validation F2 sees the "
                                         "weights' own statistics (one GPU or CPU, no ema; not yet measured)", ge=0,
                                         cap=MANY)
    deterministic: Bool = setting(True, "same seed + data -> same numbers on the CPU (costs some speed)")
    verbose: Int = setting(1, "Keras output: 0 silent, 1 progress bar, 2 one line per epoch", ge=0, le=2)


class TuneConfig(Section):
    """Per-label thresholds (or the expected-F2 decoder) fitted on the out-of-fold predictions."""

    start: Float = setting(0.2, "every threshold starts here (the flat baseline too)", gt=0, lt=1)
    passes: Int = setting(3, "coordinate-ascent passes over the 17 labels", ge=1, cap=100)
    # 100,001 candidates are steps of 1e-5, far finer than any out-of-fold set resolves.
    grid: Int = setting(101, "candidate thresholds: the interior of linspace(0, 1, grid)", ge=3, cap=100_001)
    weather_decoding: Bool = setting(False, "one weather label per chip, cloudy drops land labels (lowered the "
                                     "tuned F2 on the real 32-px OOF, README \"Real data\")")
    decoder: Literal["thresholds", "expected_f2"] = setting("thresholds", "thresholds: per-label tuned thresholds; "
                                                            "expected_f2: per chip, the label set of highest "
                                                            "expected F2")
    calibration: Literal["none", "temperature", "platt", "isotonic"] = setting("platt", "per-label, fitted on the "
                                                                               "OOF (expected_f2 only)")
    objectives: dict[Label, dict[Literal["recall", "precision", "fbeta"], ObjectiveTarget]] = setting({}, (
        "per-label operating points instead of the Kaggle F2: {recall: 0.85}, {precision: 0.8} or {fbeta: 0.5}"))
    # A draw is a row of counts per chip: 100,000 draws of 40k chips take minutes already.
    bootstrap: Int = setting(1000, "draws (chips resampled) for the 95% intervals", ge=1, cap=100_000)
    bootstrap_seed: Int = setting(0, "their seed", ge=0, le=2**32 - 1)


class ChipsConfig(Section):
    """How ``amazonmine chips`` labels tiles from polygons (its command-line options override these)."""

    min_tile_share: Float = setting(0.1, "a tile takes a label when that label's polygons cover this share of it ...",
                                    gt=0, le=1)
    min_polygon_share: Float = setting(0.5, "... or when this share of one of its polygons lies in the tile", gt=0,
                                       le=1)
    weather: Literal[WEATHER_LABELS] = setting("clear", "weather label of the chips no weather polygon covers (when "
                                               "the vocabulary holds the weather labels)")
    negative_share: Float = setting(1.0, "share of the tiles without a polygon label kept (seeded by name)", gt=0,
                                    le=1)
    block_size_m: Float = setting(0.0, "side (m) of the spatial blocks chips are grouped by; 0 = 10 chip sides",
                                  ge=0, cap=10_000_000)


class PredictConfig(Section):
    """Labelling new chips with the fold ensemble."""

    batch_size: Int = setting(256, "chips per inference batch", ge=1, cap=BATCH)
    tta: Annotated[Literal[1, 2, 4, 8], BeforeValidator(whole)] = setting(8, "dihedral views averaged")
    allow_missing: Bool = setting(False, "exit 0 even if some chips are missing or corrupt")
    inputs: ListOf(Text) = setting([], "folders or CSV lists to label; empty = data.test_dirs")


class EvaluateConfig(Section):
    """The HTML report."""

    gallery_size: Int = setting(24, "chips shown per mine label in the gallery", ge=0, cap=1000)
    thumbnail: Int = setting(128, "side (px) of each gallery thumbnail", ge=1, cap=PIXELS)


class ScanConfig(Section):
    """Whole scenes -> tiles -> sites and probability rasters."""

    stride: Float = setting(0.5, "tile step as a share of the tile side (1 = edge to edge)", gt=0, le=1)
    labels: ListOf(Label) = setting([], "labels mapped into sites and rasters; empty = the two mine labels with "
                                    "the Planet vocabulary, every label but the weather ones of a vocabulary of "
                                    "its own (the model's)")
    min_probability: dict[Label, Probability] = setting({}, "per-label threshold overriding thresholds.json")
    isolated_min_probability: dict[Label, Probability] = setting({}, "stricter threshold for a single-tile site")
    min_site_ha: Float = setting(0.0, "sites smaller than this (hectares) are dropped", ge=0, cap=MANY)
    stretch_percentiles: ruled(ListOf(Percentile), lambda p: len(p) == 2 and p[0] < p[1], "must be two percentiles "
                               "[lo, hi] with lo < hi") = setting([2.0, 98.0], "per-scene stretch of a 16-bit scene "
                                                                  "to 8 bit")
    stretch_gamma: Float = setting(1.0, "gamma after that stretch (1 = linear)", gt=0, cap=10)
    # A block of 4096 256-px tiles is ~3 GiB as float32 already.
    block_tiles: Int = setting(256, "tiles per work unit (one Dask task)", ge=1, cap=4096)
    batch_size: Int = setting(0, "tiles per model batch; 0 = predict.batch_size", ge=0, cap=BATCH)
    max_resolution_ratio: Float = setting(4.0, "refuse a scene whose pixel size is farther than this factor from "
                                          "the chips'", gt=1, cap=100)
    workers: Int = setting(0, "0 or 1: in this process; N >= 2: a local Dask cluster", ge=0, cap=WORKERS)


class Config(BaseModel):
    """Every stage's settings."""

    model_config = ConfigDict(extra="forbid")
    data: DataConfig = Field(default_factory=DataConfig)
    run: RunConfig = Field(default_factory=RunConfig)
    dehaze: DehazeConfig = Field(default_factory=DehazeConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    chips: ChipsConfig = Field(default_factory=ChipsConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)
    predict: PredictConfig = Field(default_factory=PredictConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    scan: ScanConfig = Field(default_factory=ScanConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.run.dir)

    @property
    def data_root(self) -> Path:
        return Path(self.data.root)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    @model_validator(mode="after")
    def _settings_agree(self) -> "Config":
        """The rules that involve two fields (each field's own limits are on the field)."""
        k, tc, floor = self.split.folds, self.train, self.scan.min_probability
        missing = [f for f in tc.folds if f >= k]
        if missing:
            raise _Conflict(f"train.folds {missing} do not exist with split.folds={k} (folds 0..{k - 1})",
                            "train.folds", "split.folds")
        sizes = "train.small_size", "train.small_epochs", "train.image_size", "train.epochs"
        if (tc.small_size > 0) != (tc.small_epochs > 0):
            raise _Conflict(f"train.small_size and train.small_epochs go together (both 0 = off), got "
                            f"{tc.small_size} and {tc.small_epochs}", *sizes)
        if tc.small_size and not 32 <= tc.small_size < tc.image_size:
            raise _Conflict(f"train.small_size must be at least 32 and below train.image_size ({tc.image_size}), "
                            f"got {tc.small_size}", *sizes)
        if tc.small_epochs >= tc.epochs:
            raise _Conflict(f"train.small_epochs ({tc.small_epochs}) must leave epochs at train.image_size "
                            f"(train.epochs is {tc.epochs})", *sizes)
        if tc.head_epochs and not tc.init_from:
            raise _Conflict(f"train.head_epochs ({tc.head_epochs}) trains a head on a backbone started from "
                            f"train.init_from, which is not set", "train.head_epochs", "train.init_from")
        for label, p in self.scan.isolated_min_probability.items():
            if p < floor.get(label, 0.0):
                raise _Conflict(f"scan.isolated_min_probability.{label} ({p:g}) must not be below "
                                f"scan.min_probability.{label} ({floor[label]:g})",
                                "scan.isolated_min_probability", "scan.min_probability")
        self._labels_in_vocabulary()
        for label, objective in self.tune.objectives.items():
            kind, value = next(iter(objective.items()), (None, 0))
            if len(objective) != 1:
                raise _Conflict(f"tune.objectives.{label} must hold one of recall, precision or fbeta, got "
                                f"{sorted(objective)}", "tune.objectives")
            if kind in ("recall", "precision") and value > 1:
                raise _Conflict(f"tune.objectives.{label}.{kind} must be in (0, 1], got {value:g}", "tune.objectives")
        return self

    def _labels_in_vocabulary(self) -> None:
        """Labels named in scan and tune must be labels of data.labels (the run's vocabulary)."""
        vocabulary = list(self.data.labels)
        named = [("scan.labels", "", self.scan.labels), ("scan.min_probability", " keys", self.scan.min_probability),
                 ("scan.isolated_min_probability", " keys", self.scan.isolated_min_probability),
                 ("tune.objectives", " keys", self.tune.objectives)]
        for key, what, names in named:
            for name in names:
                if name not in vocabulary:
                    close = difflib.get_close_matches(str(name), vocabulary, n=1, cutoff=0.8)
                    hint = f"; did you mean {close[0]!r}?" if close else ""
                    raise _Conflict(f"{key}{what} must be one of data.labels ({', '.join(vocabulary)}), got "
                                    f"{quote(name)}{hint}", key, "data.labels")


SECTIONS: dict[str, type[Section]] = {name: f.annotation for name, f in Config.model_fields.items()}


@functools.cache
def config_schema() -> dict:
    """The JSON Schema of a config file (shared: callers that change it take a copy)."""
    return Config.model_json_schema()


def _validate(model: type[BaseModel], raw: dict, sources: dict[str, str], default: str, prefix: tuple = ()) -> Any:
    return validated(model, raw, sources, default, config_schema(), prefix)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults <- YAML file <- ``section.key=value`` overrides. The file's values are checked on their own
    first, so a bad one is reported (naming the file) even where an override replaces it; then the whole, where
    an error names the source of its value: the ``--set`` that gave it, else the file."""
    raw: dict[str, dict] = {}
    sources: dict[str, str] = {}  # "section.key" -> where its value came from, in the order applied
    default = "config" if path is None else str(path)
    if path is not None:
        for section, body in read_sections(Path(path)).items():
            section = str(section)
            if section not in SECTIONS:
                raise ConfigError(f"{path}: unknown section '{key_name(section)}' (known: {', '.join(SECTIONS)})")
            if body is not None and not isinstance(body, dict):
                raise ConfigError(f"{path}: section '{section}' must be a mapping")
            body = {str(k): v for k, v in (body or {}).items()}
            _validate(SECTIONS[section], body, {}, default, (section,))
            raw[section] = body
            sources.update((f"{section}.{k}", default) for k in body)
    for item in overrides:
        name, sep, value = item.partition("=")
        if not sep or "." not in name:
            raise ConfigError(f"--set {quote(item)}: expected section.key=value")
        section, key = name.strip().split(".", 1)
        source = f"--set {key_name(name.strip())}"
        if section not in SECTIONS:
            raise ConfigError(f"{source}: unknown section '{key_name(section)}' (known: {', '.join(SECTIONS)})")
        raw.setdefault(section, {})[key] = parse_override(value)
        sources.pop(f"{section}.{key}", None)
        sources[f"{section}.{key}"] = source
    return _validate(Config, raw, sources, default)


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
