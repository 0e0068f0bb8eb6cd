"""One typed configuration for every stage.

The config is a tree of dataclasses (one section per stage) loaded from YAML with ``yaml.safe_load`` and
then overridden from the command line with ``--set section.key=value``. Every key and every type is checked
where it enters, so a typo in a 40-line YAML file is a one-line error naming the key and the file, not a
``KeyError`` an hour into training.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from amazonmine.errors import AmazonmineError


class ConfigError(AmazonmineError):
    """A config file or override that cannot be used."""


@dataclass
class DataConfig:
    # Folder in the Kaggle layout: train_v2.csv, train-jpg/, train-tif-v2/, test-jpg/, ...
    root: str = "data/planet"
    labels_csv: str = "train_v2.csv"
    train_dir: str = "train-jpg"
    tif_dir: str = "train-tif-v2"
    test_dirs: list[str] = field(default_factory=lambda: ["test-jpg", "test-jpg-additional"])
    sample_submission: str = "sample_submission_v2.csv"
    # "jpg" reads the RGB JPEG chips; "tif" reads the 4-band (B, G, R, NIR) 16-bit GeoTIFFs.
    image_format: str = "jpg"
    # Expected side of every chip in pixels; 0 accepts any square size.
    chip_size: int = 0


@dataclass
class RunConfig:
    # Every artifact of a run lives below this folder (see README "Run folder").
    dir: str = "runs/default"
    seed: int = 42


@dataclass
class DehazeConfig:
    enabled: bool = True
    # "dark_channel": He et al. 2009 with guided-filter refinement; "airlight_subtract": the simpler variant
    # (subtract the airlight estimated from the dark channel, then stretch).
    method: str = "dark_channel"
    patch: int = 15
    omega: float = 0.95
    t0: float = 0.1
    top_fraction: float = 0.001
    # A 256 px chip is small next to the 600 px photos of the paper; radius 24 keeps the refined transmission
    # smooth over a patch-sized neighbourhood while still following field and river edges.
    guided_radius: int = 24
    guided_eps: float = 1e-3
    workers: int = 0  # 0 = all cores
    # Output folder, relative to the run folder unless absolute.
    out_dir: str = "dehazed"


@dataclass
class SplitConfig:
    folds: int = 5
    # Labels rarer than this share of chips are oversampled in training folds ...
    rare_threshold: float = 0.01
    # ... or exactly these labels, when the list is not empty.
    rare_labels: list[str] = field(default_factory=list)
    # A rare label is repeated (under distinct dihedral transforms) until it reaches this many training chips,
    rare_target: int = 500
    # but no chip is repeated more than this many times in all (8 = every rotation/flip once).
    rare_max_factor: int = 8


@dataclass
class TrainConfig:
    backbone: str = "densenet121"
    # "none" (train from scratch), "imagenet" (Keras cache or download) or a path to a local .h5 file.
    weights: str = "none"
    image_size: int = 256
    batch_size: int = 32
    epochs: int = 30
    learning_rate: float = 1e-3
    warmup_epochs: int = 1
    schedule: str = "cosine"  # cosine | constant | plateau
    weight_decay: float = 1e-4
    dropout: float = 0.2
    soft_f2_weight: float = 0.0
    label_smoothing: float = 0.0
    early_stopping_patience: int = 8
    # Folds to train; empty = all folds of the split.
    folds: list[int] = field(default_factory=lambda: [0])
    artifact_name: str = "b01_dense121.h5"
    # Start from a trained classifier of the same architecture (a fold's .h5) instead of the weights policy:
    # a second, low-learning-rate schedule on a finished run ("" = off).
    init_from: str = ""
    augment: bool = True
    brightness_jitter: float = 0.05
    contrast_jitter: float = 0.1
    cache: bool = False
    # Mini backbones for tests and demos: dense-block sizes and growth of a from-scratch DenseNet.
    mini_blocks: list[int] = field(default_factory=lambda: [2, 2, 2])
    mini_growth: int = 12
    steps_per_epoch: int = 0  # 0 = one pass over the training manifest
    # "Precise BatchNorm": after training, the best checkpoint's BatchNorm statistics are recomputed as plain
    # averages over this many training batches with the final weights (0 = off). The moving averages kept
    # during training lag behind weights that change fast at a high learning rate; measured on the real
    # 32-px set mid-run: validation F2 0.815 with the moving averages vs 0.870 with batch statistics.
    bn_recalibration_batches: int = 100
    # Same seed + same data -> same numbers on the CPU (TensorFlow op determinism). Costs some speed.
    deterministic: bool = True
    verbose: int = 1


@dataclass
class TuneConfig:
    start: float = 0.2
    passes: int = 3
    grid: int = 101
    # Exactly one weather label per chip (argmax of the weather group); "cloudy" drops the land labels.
    # Off by default: on the real 32-px competition OOF it cost 0.011 F2 (tuned 0.8922 vs 0.9030), and
    # thresholds.json records both figures on every run. Without it every chip still gets at least one
    # weather label (its likeliest, when none passes its threshold).
    weather_decoding: bool = False


@dataclass
class PredictConfig:
    batch_size: int = 256
    # Dihedral test-time augmentation: how many of the 8 views (1 = none, 2, 4 or 8).
    tta: int = 8
    allow_missing: bool = False
    # Folders or CSV lists to label; empty = the test folders of the data section.
    inputs: list[str] = field(default_factory=list)


@dataclass
class EvaluateConfig:
    gallery_size: int = 24
    thumbnail: int = 128


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

    # --- paths every stage agrees on -------------------------------------------------------------------
    @property
    def run_dir(self) -> Path:
        return Path(self.run.dir)

    @property
    def data_root(self) -> Path:
        return Path(self.data.root)

    @property
    def dehaze_dir(self) -> Path:
        p = Path(self.dehaze.out_dir)
        return p if p.is_absolute() else self.run_dir / p

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_CHOICES = {
    ("data", "image_format"): ("jpg", "tif"),
    ("dehaze", "method"): ("dark_channel", "airlight_subtract"),
    ("train", "schedule"): ("cosine", "constant", "plateau"),
    ("predict", "tta"): (1, 2, 4, 8),
}


def _coerce(value: Any, typ: Any, where: str) -> Any:
    origin = typing.get_origin(typ)
    if origin is list:
        (inner,) = typing.get_args(typ)
        if isinstance(value, str):
            value = [v for v in (s.strip() for s in value.split(",")) if v]
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, inner, where) for v in value]
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if typ in (int, float):
        # bool is an int subclass: "epochs: true" is a mistake, not 1. A float is no integer either.
        accepted = (int,) if typ is int else (int, float)
        if isinstance(value, accepted) and not isinstance(value, bool):
            return typ(value)
        if isinstance(value, str):
            try:
                return typ(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected {'an integer' if typ is int else 'a number'}, got {value!r}")
    if typ is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    raise ConfigError(f"{where}: unsupported type {typ}")  # pragma: no cover


def _section_types(section_cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(section_cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(section_cls)}


def _apply(cfg: Config, section: str, key: str, value: Any, source: str) -> None:
    if section not in _section_types(Config):
        known = ", ".join(_section_types(Config))
        raise ConfigError(f"{source}: unknown section '{section}' (known: {known})")
    sec_obj = getattr(cfg, section)
    types = _section_types(type(sec_obj))
    if key not in types:
        raise ConfigError(f"{source}: unknown key '{section}.{key}' (known: {', '.join(types)})")
    coerced = _coerce(value, types[key], f"{source}: {section}.{key}")
    choices = _CHOICES.get((section, key))
    if choices is not None and coerced not in choices:
        raise ConfigError(f"{source}: {section}.{key} must be one of {list(choices)}, got {coerced!r}")
    setattr(sec_obj, key, coerced)


def validate(cfg: Config, source: str = "config") -> Config:
    """Cross-field checks that a single key's type cannot express."""
    checks = [
        (cfg.split.folds >= 2, "split.folds must be at least 2"),
        (0 < cfg.dehaze.omega <= 1, "dehaze.omega must be in (0, 1]"),
        (0 < cfg.dehaze.t0 < 1, "dehaze.t0 must be in (0, 1)"),
        (cfg.dehaze.patch >= 1 and cfg.dehaze.patch % 2 == 1, "dehaze.patch must be a positive odd number"),
        (0 < cfg.dehaze.top_fraction <= 0.1, "dehaze.top_fraction must be in (0, 0.1]"),
        (cfg.dehaze.guided_radius >= 1, "dehaze.guided_radius must be at least 1"),
        (cfg.dehaze.guided_eps > 0, "dehaze.guided_eps must be positive"),
        (cfg.dehaze.workers >= 0, "dehaze.workers must be 0 (all cores) or more"),
        (0 < cfg.split.rare_threshold < 1, "split.rare_threshold must be in (0, 1)"),
        (1 <= cfg.split.rare_max_factor <= 8, "split.rare_max_factor must be 1..8 (the 8 dihedral views)"),
        (cfg.train.image_size >= 32, "train.image_size must be at least 32"),
        (cfg.train.batch_size >= 1, "train.batch_size must be at least 1"),
        (cfg.train.epochs >= 1, "train.epochs must be at least 1"),
        (cfg.train.learning_rate > 0, "train.learning_rate must be positive"),
        (0 <= cfg.train.dropout < 1, "train.dropout must be in [0, 1)"),
        (all(f >= 0 for f in cfg.train.folds), "train.folds must be fold numbers >= 0"),
        (cfg.train.artifact_name.endswith((".h5", ".keras")), "train.artifact_name must end in .h5 or .keras"),
        (0 < cfg.tune.start < 1, "tune.start must be in (0, 1)"),
        (cfg.tune.passes >= 1, "tune.passes must be at least 1"),
        (cfg.tune.grid >= 3, "tune.grid must be at least 3"),
        (cfg.predict.batch_size >= 1, "predict.batch_size must be at least 1"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(f"{source}: {message}")
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults <- YAML file <- ``section.key=value`` overrides, validated at each step."""
    cfg = Config()
    if path is not None:
        path = Path(path)
        source = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read config ({exc.strerror or exc})") from None
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            at = f" at line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{path}: not valid YAML{at}") from None
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections")
        for section, body in raw.items():
            if body is None:
                continue
            if not isinstance(body, dict):
                if section in _section_types(Config):
                    raise ConfigError(f"{path}: section '{section}' must be a mapping")
                raise ConfigError(f"{path}: unknown section '{section}'")
            for key, value in body.items():
                _apply(cfg, str(section), str(key), value, source)
    for item in overrides:
        name, sep, value = item.partition("=")
        if not sep or "." not in name:
            raise ConfigError(f"--set {item!r}: expected section.key=value")
        section, key = name.strip().split(".", 1)
        # Values are parsed as YAML scalars/lists so "--set train.folds=[0,1]" works like the file.
        try:
            parsed = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            parsed = value
        if parsed is None:
            parsed = value
        _apply(cfg, section, key, parsed, f"--set {name}")
    return validate(cfg, str(path) if path is not None else "config")


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
