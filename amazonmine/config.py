"""One typed configuration for every stage.

The config is a tree of dataclasses (one section per stage) loaded from YAML and then overridden from the
command line with ``--set section.key=value``. Every key and every type is checked where it enters, so a typo
in a 40-line YAML file is a one-line error naming the key and the file, not a ``KeyError`` an hour into
training.

Each field says what it accepts in its own type annotation, and the loader (``_coerce``) reads it:

* ``Literal[...]`` is a choice: ``image_format: Literal["jpg", "tif"]``;
* ``Annotated[T, Range(...)]`` bounds a number and ``Annotated[T, Rule(...)]`` states any other test of one
  value; inside a ``list[...]`` or ``dict[..., ...]`` they apply to each item or value;
* ``Annotated[str, Canonical(...)]`` stores several spellings of one value as one (``train.weights``: none,
  null, an empty string -> ``"none"``), so the code downstream compares with one constant.

A new setting therefore cannot miss its check. :func:`validate` keeps only the checks that involve two fields.

YAML is read with the semantics of ``yaml.safe_load`` (no Python tags) by a loader that also refuses what no
config needs and what would let a file hang or exhaust the machine: duplicate keys, nesting deeper than
:data:`MAX_DEPTH`, aliases expanding past :data:`MAX_NODES` nodes ("billion laughs"), files that are not UTF-8
or larger than :data:`MAX_CONFIG_BYTES`. ``--set`` values go through the same loader. Values are quoted in
error messages only up to a few dozen characters.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import reprlib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Callable, Literal

import yaml

from amazonmine.data import LABELS
from amazonmine.errors import AmazonmineError


class ConfigError(AmazonmineError):
    """A config file or override that cannot be used."""


# --- constraints, attached to fields with Annotated ----------------------------------------------------------

def _num(x: float) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


@dataclass(frozen=True)
class Range:
    """Bounds on a number: ``ge``/``le`` inclusive, ``gt``/``lt`` exclusive."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def problem(self, value: float) -> str | None:
        ok = ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
              and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))
        return None if ok else self.describe()

    def describe(self) -> str:
        lo = self.gt if self.gt is not None else self.ge
        hi = self.lt if self.lt is not None else self.le
        if lo is not None and hi is not None:
            left, right = "(" if self.gt is not None else "[", ")" if self.lt is not None else "]"
            return f"must be in {left}{_num(lo)}, {_num(hi)}{right}"
        if lo is not None:
            if self.gt is not None:
                return "must be positive" if self.gt == 0 else f"must be more than {_num(lo)}"
            return f"must be at least {_num(lo)}"
        return f"must be less than {_num(hi)}" if self.lt is not None else f"must be at most {_num(hi)}"


@dataclass(frozen=True)
class Rule:
    """Any other test of one (already typed) value: ``Rule(predicate, "must be ...")``."""

    ok: Callable[[Any], bool]
    says: str

    def problem(self, value: Any) -> str | None:
        return None if self.ok(value) else self.says


@dataclass(frozen=True)
class Canonical:
    """Several spellings of one value: YAML null, or any of ``spellings`` (compared without case or surrounding
    blanks), is stored as ``value`` before the type is checked."""

    value: str
    spellings: tuple[str, ...]

    def normalise(self, raw: Any) -> Any:
        if raw is None or (isinstance(raw, str) and raw.strip().lower() in self.spellings):
            return self.value
        return raw


# "No weights" has one spelling after loading; model.py compares with this constant only.
NO_WEIGHTS = "none"
Weights = Annotated[str, Canonical(NO_WEIGHTS, ("", "none", "null", "~"))]
Label = Literal[LABELS]  # one of the 17 labels of the competition
Probability = Annotated[float, Range(ge=0, le=1)]
Percentile = Annotated[float, Range(ge=0, le=100)]


def _not_empty(text: str) -> bool:
    return bool(text.strip())


def _plain_model_file(name: str) -> bool:
    # Written inside each fold's folder: a bare name cannot land anywhere else.
    return ("/" not in name and "\\" not in name and ".." not in name
            and any(name.endswith(s) and len(name) > len(s) for s in (".h5", ".keras")))


def _low_below_high(pair: list[float]) -> bool:
    return len(pair) == 2 and pair[0] < pair[1]


# --- the sections ----------------------------------------------------------------------------------------------

@dataclass
class DataConfig:
    # Folder in the Kaggle layout: train_v2.csv, train-jpg/, train-tif-v2/, test-jpg/, ...
    root: Annotated[str, Rule(_not_empty, "must not be empty")] = "data/planet"
    labels_csv: str = "train_v2.csv"
    train_dir: str = "train-jpg"
    tif_dir: str = "train-tif-v2"
    test_dirs: list[str] = field(default_factory=lambda: ["test-jpg", "test-jpg-additional"])
    sample_submission: str = "sample_submission_v2.csv"
    # "jpg" reads the RGB JPEG chips; "tif" reads the 4-band (B, G, R, NIR) 16-bit GeoTIFFs.
    image_format: Literal["jpg", "tif"] = "jpg"
    # Expected side of every chip in pixels; 0 accepts any square size.
    chip_size: Annotated[int, Range(ge=0)] = 0
    # Ground side of one chip in metres: the Kaggle chips are 256 px at about 3 m, and the 32-px thumbnails
    # cover the same ground. Scanning a scene cuts tiles of this ground size, whatever the scene's pixel size.
    chip_ground_m: Annotated[float, Range(gt=0)] = 768.0


@dataclass
class RunConfig:
    # Every artifact of a run lives below this folder (README "The stages"; amazonmine/runfolder.py).
    dir: Annotated[str, Rule(_not_empty, "must not be empty")] = "runs/default"
    # numpy's RandomState (used by the split) takes seeds in [0, 2**32).
    seed: Annotated[int, Range(ge=0, le=2**32 - 1)] = 42


@dataclass
class DehazeConfig:
    enabled: bool = True
    # "dark_channel": He et al. 2009 with guided-filter refinement; "airlight_subtract": the simpler variant
    # (subtract the airlight estimated from the dark channel, then stretch).
    method: Literal["dark_channel", "airlight_subtract"] = "dark_channel"
    patch: Annotated[int, Range(ge=1), Rule(lambda n: n % 2 == 1, "must be odd")] = 15
    omega: Annotated[float, Range(gt=0, le=1)] = 0.95
    t0: Annotated[float, Range(gt=0, lt=1)] = 0.1
    top_fraction: Annotated[float, Range(gt=0, le=0.1)] = 0.001
    # A 256 px chip is small next to the 600 px photos of the paper; radius 24 keeps the refined transmission
    # smooth over a patch-sized neighbourhood while still following field and river edges.
    guided_radius: Annotated[int, Range(ge=1)] = 24
    guided_eps: Annotated[float, Range(gt=0)] = 1e-3
    workers: Annotated[int, Range(ge=0)] = 0  # 0 = all cores
    # Output folder, relative to the run folder unless absolute.
    out_dir: Annotated[str, Rule(_not_empty, "must not be empty")] = "dehazed"


@dataclass
class SplitConfig:
    folds: Annotated[int, Range(ge=2)] = 5
    # Labels rarer than this share of chips are oversampled in training folds ...
    rare_threshold: Annotated[float, Range(gt=0, lt=1)] = 0.01
    # ... or exactly these labels, when the list is not empty (split.choose_rare_labels checks the names).
    rare_labels: list[str] = field(default_factory=list)
    # A rare label is repeated (under distinct dihedral transforms) until it reaches this many training chips
    # (0 = no oversampling),
    rare_target: Annotated[int, Range(ge=0)] = 500
    # but no chip is repeated more than this many times in all (8 = every rotation/flip once).
    rare_max_factor: Annotated[int, Range(ge=1, le=8)] = 8
    # A stratified share of the chips set aside before the folds (fold -1 in folds.csv): no fold trains or
    # tunes on it, and evaluate scores it once with the final decisions (the lockbox). 0 = none.
    holdout: Annotated[float, Range(ge=0, lt=0.5)] = 0.0


@dataclass
class TrainConfig:
    backbone: str = "densenet121"
    # "none" (train from scratch; null and "" mean the same), "imagenet" (Keras cache or download) or a path
    # to a local .h5 file.
    weights: Weights = NO_WEIGHTS
    image_size: Annotated[int, Range(ge=32)] = 256
    batch_size: Annotated[int, Range(ge=1)] = 32
    epochs: Annotated[int, Range(ge=1)] = 30
    learning_rate: Annotated[float, Range(gt=0)] = 1e-3
    warmup_epochs: Annotated[int, Range(ge=0)] = 1
    # cosine: warmup_epochs from a tenth of learning_rate up to it, then cosine decay to 1% of it by the last
    # epoch. one_cycle (Smith's one-cycle policy, learning-rate part, with PyTorch OneCycleLR's defaults):
    # from learning_rate/25 up to learning_rate over the first one_cycle_warmup share of all steps, then
    # cosine decay to 1/10,000 of the start; warmup_epochs is not used. Adam's beta_1 is not cycled (Keras
    # keeps it a constant of the traced step, and Adam's bias correction assumes it fixed). constant and
    # plateau: learning_rate throughout, or cut on a validation plateau.
    schedule: Literal["cosine", "one_cycle", "constant", "plateau"] = "cosine"
    one_cycle_warmup: Annotated[float, Range(gt=0, lt=1)] = 0.3
    weight_decay: Annotated[float, Range(ge=0)] = 1e-4
    dropout: Annotated[float, Range(ge=0, lt=1)] = 0.2
    soft_f2_weight: Annotated[float, Range(ge=0)] = 0.0
    label_smoothing: Annotated[float, Range(ge=0, lt=1)] = 0.0
    early_stopping_patience: Annotated[int, Range(ge=0)] = 8
    # Progressive resizing: the first small_epochs epochs train on chips shrunk to small_size (cheaper steps);
    # the rest, validation, the kept model and every prediction are at image_size. 0 = off.
    small_size: Annotated[int, Range(ge=0)] = 0
    small_epochs: Annotated[int, Range(ge=0)] = 0
    # XLA-compiled training steps on the CPU too (on GPUs they always are, except across workers): about 9%
    # more images/s for DenseNet121 at 48 px here, after a compile of about a minute (scripts/bench_precision.py).
    # On the CPU it needs deterministic: false (op determinism turns XLA off; train refuses the pair).
    xla: bool = False
    # Weight averaging: > 0 keeps an exponential moving average of the weights with this momentum per step
    # (0.998 averages over roughly the last 500 steps); validation, the best checkpoint and every prediction
    # use the averaged weights (with BatchNorm statistics recalibrated for them, keras_parts.averaged_weights),
    # training continues from the raw ones. 0 = off.
    ema: Annotated[float, Range(ge=0, lt=1)] = 0.0
    # Folds to train; empty = all folds of the split.
    folds: list[Annotated[int, Range(ge=0)]] = field(default_factory=lambda: [0])
    # The model's file name inside each fold's folder.
    artifact_name: Annotated[str, Rule(_plain_model_file, "must be a plain file name ending in .h5 or .keras "
                                                           "(no folder, no '..')")] = "b01_dense121.h5"
    # Start from a trained classifier of the same architecture (a fold's .h5) instead of the weights policy:
    # a second, low-learning-rate schedule on a finished run ("" = off).
    init_from: str = ""
    augment: bool = True
    brightness_jitter: Annotated[float, Range(ge=0)] = 0.05
    contrast_jitter: Annotated[float, Range(ge=0)] = 0.1
    # Share of training chips remade as another chip-making pipeline would have made them: random resampling,
    # blur or sharpening, and JPEG re-encoding at quality 40-95 (3-band chips), see pipeline.remake_chip. The
    # same scene cut by another tool must keep its labels.
    chip_augment: Annotated[float, Range(ge=0, le=1)] = 0.0
    cache: bool = False
    # Mini backbones for tests and demos: dense-block sizes and growth of a from-scratch DenseNet.
    mini_blocks: list[Annotated[int, Range(ge=1)]] = field(default_factory=lambda: [2, 2, 2])
    mini_growth: Annotated[int, Range(ge=1)] = 12
    steps_per_epoch: Annotated[int, Range(ge=0)] = 0  # 0 = one pass over the training manifest
    # "Precise BatchNorm": after training, the best checkpoint's BatchNorm statistics are recomputed as plain
    # averages over this many training batches with the final weights (0 = off). The moving averages kept
    # during training lag behind weights that change fast at a high learning rate; on by default because it
    # helped on the real 32-px set (README "Real data", the precise BatchNorm rows; scripts/bench_real32.py).
    bn_recalibration_batches: Annotated[int, Range(ge=0)] = 100
    # > 0: before each validation the statistics are recomputed the same way, on this many batches with the
    # epoch's weights, and kept, so validation F2 (and with it the best checkpoint and early stopping) sees the
    # weights' own statistics rather than running averages that lag them while the learning rate is high. One
    # GPU or the CPU, and without ema (averaged weights are recalibrated before each validation already, on
    # min(25, bn_recalibration_batches) batches); train refuses the other cases. Off by default: not yet
    # measured on the real data (README "The fold ensemble and its lockbox", fold 1's early stop).
    validation_bn_batches: Annotated[int, Range(ge=0)] = 0
    # Same seed + same data -> same numbers on the CPU (TensorFlow op determinism). Costs some speed.
    deterministic: bool = True
    verbose: Annotated[int, Range(ge=0, le=2)] = 1


@dataclass
class TuneConfig:
    start: Annotated[float, Range(gt=0, lt=1)] = 0.2
    passes: Annotated[int, Range(ge=1)] = 3
    grid: Annotated[int, Range(ge=3)] = 101
    # Exactly one weather label per chip (argmax of the weather group); "cloudy" drops the land labels.
    # Off by default: it lowered the tuned F2 on the real 32-px competition OOF (README "Real data", the
    # weather decoding row), and thresholds.json records the F2 with and without it on every run. Without it
    # every chip still gets at least one weather label (its likeliest, when none passes its threshold).
    weather_decoding: bool = False
    # "thresholds": a label is on when its probability clears its tuned threshold. "expected_f2": per chip,
    # the label set with the highest expected F2 given the (calibrated) probabilities (exact under
    # independence); tune reports both, cross-fitted, in thresholds.json.
    decoder: Literal["thresholds", "expected_f2"] = "thresholds"
    # Per-label calibration fitted on the OOF probabilities, used by the expected-F2 decoder only.
    calibration: Literal["none", "temperature", "platt", "isotonic"] = "platt"
    # Per-label operating points instead of the Kaggle F2, e.g. {artisinal_mine: {recall: 0.85}} (a recall
    # floor), {precision: 0.8} (a precision floor) or {fbeta: 0.5} (F-beta with another beta).
    objectives: dict[Label, dict[Literal["recall", "precision", "fbeta"], Annotated[float, Range(gt=0)]]] = \
        field(default_factory=dict)
    # Bootstrap draws (chips resampled) for the 95% intervals in thresholds.json and the report, and their seed.
    bootstrap: Annotated[int, Range(ge=1)] = 1000
    bootstrap_seed: Annotated[int, Range(ge=0)] = 0


@dataclass
class PredictConfig:
    batch_size: Annotated[int, Range(ge=1)] = 256
    # Dihedral test-time augmentation: how many of the 8 views (1 = none, 2, 4 or 8).
    tta: Literal[1, 2, 4, 8] = 8
    allow_missing: bool = False
    # Folders or CSV lists to label; empty = the test folders of the data section.
    inputs: list[str] = field(default_factory=list)


@dataclass
class EvaluateConfig:
    gallery_size: Annotated[int, Range(ge=0)] = 24
    thumbnail: Annotated[int, Range(ge=1)] = 128


@dataclass
class ScanConfig:
    # Tile step as a fraction of the tile side (1 = edge to edge, 0.5 = every ground point in 4 tiles).
    stride: Annotated[float, Range(gt=0, le=1)] = 0.5
    # Labels mapped into sites and probability rasters.
    labels: list[Label] = field(default_factory=lambda: ["artisinal_mine", "conventional_mine"])
    # Per-label decision threshold overriding the run's thresholds.json ({} = the run's thresholds).
    min_probability: dict[Label, Probability] = field(default_factory=dict)
    # A stricter threshold for a site of a single tile, per label ({} = the same as a larger site's).
    isolated_min_probability: dict[Label, Probability] = field(default_factory=dict)
    # Sites smaller than this many hectares are dropped (0 = keep every site).
    min_site_ha: Annotated[float, Range(ge=0)] = 0.0
    # Per-scene percentile stretch [lo, hi] that maps a 16-bit scene to 8 bit like the training chips.
    stretch_percentiles: Annotated[list[Percentile], Rule(_low_below_high, "must be two percentiles [lo, hi] "
                                                                          "with lo < hi")] = field(
        default_factory=lambda: [2.0, 98.0])
    # Gamma applied after that stretch (1 = linear); see scan's docs for how it was compared on real TIF/JPEG pairs.
    stretch_gamma: Annotated[float, Range(gt=0)] = 1.0
    # Tiles per work unit (one Dask task reads, predicts and writes a block of this many tiles).
    block_tiles: Annotated[int, Range(ge=1)] = 256
    # Tiles per model batch; 0 = predict.batch_size.
    batch_size: Annotated[int, Range(ge=0)] = 0
    # A scene whose pixel size is farther than this factor from the training chips' (either way) is refused.
    max_resolution_ratio: Annotated[float, Range(gt=1)] = 4.0
    # 0 or 1: blocks are scored in this process; N >= 2: on a local Dask cluster of N worker processes
    # (--scheduler ADDRESS sends them to a running cluster instead).
    workers: Annotated[int, Range(ge=0)] = 0


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    run: RunConfig = field(default_factory=RunConfig)
    dehaze: DehazeConfig = field(default_factory=DehazeConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    scan: ScanConfig = field(default_factory=ScanConfig)

    # --- paths every stage agrees on -------------------------------------------------------------------
    @property
    def run_dir(self) -> Path:
        return Path(self.run.dir)

    @property
    def data_root(self) -> Path:
        return Path(self.data.root)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --- reading a value into its field's type ---------------------------------------------------------------------

_QUOTE = reprlib.Repr()
_QUOTE.maxlevel, _QUOTE.maxlist, _QUOTE.maxdict, _QUOTE.maxstring, _QUOTE.maxother = 3, 6, 4, 60, 60
QUOTE_CHARS = 60


def _short(text: str, limit: int = QUOTE_CHARS) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _quote(value: Any) -> str:
    """repr of a value from the input, cut short: the value may be huge, and the message is one line."""
    return _short(_QUOTE.repr(value))


def _problem(meta: Any, value: Any) -> str | None:
    return meta.problem(value) if isinstance(meta, (Range, Rule)) else None


def _coerce(value: Any, typ: Any, where: str) -> Any:
    origin = typing.get_origin(typ)
    if origin is Annotated:
        base, *metadata = typing.get_args(typ)
        for meta in metadata:
            if isinstance(meta, Canonical):
                value = meta.normalise(value)
        value = _coerce(value, base, where)
        for meta in metadata:
            problem = _problem(meta, value)
            if problem:
                raise ConfigError(f"{where} {problem}, got {_quote(value)}")
        return value
    if origin is Literal:
        choices = typing.get_args(typ)
        value = _coerce(value, type(choices[0]), where)
        if value not in choices:
            short_text = isinstance(value, str) and len(value) < 100
            close = difflib.get_close_matches(value, choices, n=1) if short_text else []
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{where} must be one of {list(choices)}, got {_quote(value)}{hint}")
        return value
    if origin is list:
        (inner,) = typing.get_args(typ)
        if isinstance(value, str):
            value = [v for v in (s.strip() for s in value.split(",")) if v]
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {_quote(value)}")
        return [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        key_type, value_type = typing.get_args(typ)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {_quote(value)}")
        out = {}
        for k, v in value.items():
            k = _coerce(k, key_type, f"{where} keys")
            out[k] = _coerce(v, value_type, f"{where}.{k}")
        return out
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        raise ConfigError(f"{where}: expected true/false, got {_quote(value)}")
    if typ in (int, float):
        # bool is an int subclass: "epochs: true" is a mistake, not 1. A float is no integer either.
        accepted = (int,) if typ is int else (int, float)
        number = None
        if isinstance(value, (accepted, str)) and not isinstance(value, bool):
            try:
                number = typ(value)
            except (ValueError, OverflowError):
                pass
        if number is None:
            raise ConfigError(f"{where}: expected {'an integer' if typ is int else 'a number'}, got {_quote(value)}")
        if typ is float and not math.isfinite(number):
            raise ConfigError(f"{where}: expected a finite number, got {_quote(value)}")
        return number
    if typ is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            text = str(value)
            if "\x00" in text:
                raise ConfigError(f"{where}: a NUL character is not allowed, got {_quote(text)}")
            return text
        raise ConfigError(f"{where}: expected a string, got {_quote(value)}")
    raise ConfigError(f"{where}: unsupported type {typ}")  # pragma: no cover


@functools.cache
def _section_types(section_cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(section_cls, include_extras=True)
    return {f.name: hints[f.name] for f in dataclasses.fields(section_cls)}


def _apply(cfg: Config, section: str, key: str, value: Any, source: str) -> None:
    if section not in _section_types(Config):
        known = ", ".join(_section_types(Config))
        raise ConfigError(f"{source}: unknown section '{_short(section)}' (known: {known})")
    sec_obj = getattr(cfg, section)
    types = _section_types(type(sec_obj))
    if key not in types:
        close = difflib.get_close_matches(key, types, n=3) if len(key) < 100 else []
        hint = f"did you mean {' or '.join(close)}?" if close else f"known: {', '.join(types)}"
        raise ConfigError(f"{source}: unknown key '{section}.{_short(key)}' ({hint})")
    setattr(sec_obj, key, _coerce(value, types[key], f"{source}: {section}.{key}"))


def validate(cfg: Config, source: str = "config") -> Config:
    """Checks that involve two fields (each field's own constraint is checked as it is read)."""
    k = cfg.split.folds
    missing = [f for f in cfg.train.folds if f >= k]
    if missing:
        raise ConfigError(f"{source}: train.folds {missing} do not exist with split.folds={k} (folds 0..{k - 1})")
    tc = cfg.train
    if (tc.small_size > 0) != (tc.small_epochs > 0):
        raise ConfigError(f"{source}: train.small_size and train.small_epochs go together (both 0 = off), got "
                          f"{tc.small_size} and {tc.small_epochs}")
    if tc.small_size and not 32 <= tc.small_size < tc.image_size:
        raise ConfigError(f"{source}: train.small_size must be at least 32 and below train.image_size "
                          f"({tc.image_size}), got {tc.small_size}")
    if tc.small_epochs >= tc.epochs:
        raise ConfigError(f"{source}: train.small_epochs ({tc.small_epochs}) must leave epochs at train.image_size "
                          f"(train.epochs is {tc.epochs})")
    for label, p in cfg.scan.isolated_min_probability.items():
        if p < cfg.scan.min_probability.get(label, 0.0):
            raise ConfigError(f"{source}: scan.isolated_min_probability.{label} ({p:g}) must not be below "
                              f"scan.min_probability.{label} ({cfg.scan.min_probability[label]:g})")
    for label, objective in cfg.tune.objectives.items():
        if len(objective) != 1:
            raise ConfigError(f"{source}: tune.objectives.{label} must hold one of recall, precision or fbeta, "
                              f"got {sorted(objective)}")
        kind, value = next(iter(objective.items()))
        if kind in ("recall", "precision") and value > 1:
            raise ConfigError(f"{source}: tune.objectives.{label}.{kind} must be in (0, 1], got {value:g}")
    return cfg


# --- reading YAML ------------------------------------------------------------------------------------------------

MAX_CONFIG_BYTES = 1 << 20
MAX_DEPTH = 20  # a config is a few levels deep (section, key, list, mapping)
MAX_NODES = 10_000  # counting every node an alias expands to


class _Refused(yaml.composer.ComposerError):
    """YAML that parses but that no config needs (too deep, too many nodes through aliases)."""


class _ConfigLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate keys, deep nesting and alias bombs while composing, before
    any Python object is built. An alias counts as every node it stands for, so nine levels of nine aliases
    each are refused after a few thousand steps instead of expanding to 9**9 nodes downstream."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0
        self._sizes: dict[int, int] = {}  # id(node) -> nodes it expands to, once composed

    def _count(self, n: int, mark: Any) -> None:
        self._nodes += n
        if self._nodes > MAX_NODES:
            raise _Refused(None, None, f"more than {MAX_NODES:,} nodes once aliases are expanded", mark)

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            node = self.anchors.get(event.anchor)
            if node is not None:  # an undefined alias is yaml's own error
                if id(node) not in self._sizes:
                    raise _Refused(None, None, f"alias *{_short(event.anchor)} refers to a node containing it",
                                   event.start_mark)
                self._count(self._sizes[id(node)], event.start_mark)
            return super().compose_node(parent, index)
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise _Refused(None, None, f"nested deeper than {MAX_DEPTH} levels", event.start_mark)
        before = self._nodes
        self._count(1, event.start_mark)
        node = super().compose_node(parent, index)
        self._depth -= 1
        self._sizes[id(node)] = self._nodes - before
        return node

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # "<<: *base" may be overridden, by design
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                except TypeError:  # an unhashable key: yaml's own error follows
                    continue
                if duplicate:
                    raise yaml.constructor.ConstructorError(None, None, f"duplicate key {_quote(key)}",
                                                            key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _load_yaml(text: str) -> Any:
    loader = _ConfigLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _yaml_problem(exc: Exception) -> str:
    """'at line N (what)' for a YAML error, on one line and short."""
    mark = getattr(exc, "problem_mark", None)
    at = f" at line {mark.line + 1}" if mark is not None else ""
    what = getattr(exc, "problem", None) or getattr(exc, "reason", None)
    if what is None and not isinstance(exc, yaml.YAMLError):
        what = str(exc)  # e.g. an integer of more digits than Python converts
    what = " ".join(str(what).split()) if what else ""
    return f"{at} ({_short(what)})" if what else at


def _read_config_text(path: Path) -> str:
    try:
        with path.open("rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror or exc})") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES >> 20} MiB; not a config file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a UTF-8 text file (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
                          "save the config as UTF-8") from None


def _parse_override(text: str) -> Any:
    """An override's value as YAML (so "--set train.folds=[0,1]" works like the file), else the text itself."""
    if not text.strip():
        return ""
    try:
        parsed = _load_yaml(text)
    except (yaml.YAMLError, ValueError):
        return text
    return text if parsed is None else parsed


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults <- YAML file <- ``section.key=value`` overrides, each value checked as it is read."""
    cfg = Config()
    if path is not None:
        path = Path(path)
        source = str(path)
        text = _read_config_text(path)
        try:
            raw = _load_yaml(text)
        except _Refused as exc:
            raise ConfigError(f"{path}: YAML refused{_yaml_problem(exc)}") from None
        except (yaml.YAMLError, ValueError) as exc:
            raise ConfigError(f"{path}: not valid YAML{_yaml_problem(exc)}") from None
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections")
        for section, body in raw.items():
            section = str(section)
            if body is None:
                continue
            if not isinstance(body, dict):
                if section in _section_types(Config):
                    raise ConfigError(f"{path}: section '{section}' must be a mapping")
                raise ConfigError(f"{path}: unknown section '{_short(section)}'")
            for key, value in body.items():
                _apply(cfg, section, str(key), value, source)
    for item in overrides:
        name, sep, value = item.partition("=")
        if not sep or "." not in name:
            raise ConfigError(f"--set {_quote(item)}: expected section.key=value")
        section, key = name.strip().split(".", 1)
        _apply(cfg, section, key, _parse_override(value), f"--set {_short(name)}")
    return validate(cfg, str(path) if path is not None else "config")


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
