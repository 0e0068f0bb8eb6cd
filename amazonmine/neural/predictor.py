"""One predictor: a run's finished fold models, with the preprocessing they were trained with, as one object.

``predict``, ``evaluate``, ``scan`` and the scripts all get their probabilities here, so a chip is prepared for
the model in exactly one way::

    from amazonmine.neural.predictor import Predictor
    predictor = Predictor.from_run("runs/planet32")      # or a loaded Config
    probs = predictor.predict(chips)                     # (N, H, W, C) chips as read_image gives them -> (N, 17)

What "the preprocessing they were trained with" means, step by step, for each chip:

1. **Dehazing**, when the folds were trained on dehazed chips (their ``summary.json`` records it, with the
   dehaze settings): the raw chip is dehazed in memory with those settings. Chips read from the run's own
   dehazed copies pass ``dehazed=True``.
2. **Band order**: chips come in file order as :func:`amazonmine.core.data.read_image` returns them (OpenCV: B, G, R
   for JPEGs; B, G, R, NIR for TIFs) and are put in the model's order (R, G, B[, NIR]).
3. **Size**: resized to the model's input side as training did (:func:`amazonmine.neural.datasets.resize_square`).
4. **Pixel scale**: none outside the model; each model rescales its raw input itself.
5. **Test-time augmentation**: the mean over ``tta`` dihedral views, then the mean over the fold models.

Inference runs in compiled functions with a fixed input signature, traced once per model, called one batch at
a time: memory stays flat however many chips go through (``model.predict`` in a loop grows it).
"""

from __future__ import annotations

import csv
import functools
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from amazonmine.core.data import LABELS, PATH_LIMIT, DataError, read_image
from amazonmine.core.errors import AmazonmineError, shorten
from amazonmine.core.io import atomic_path
from amazonmine.core.runfolder import RunFolder, read_decision_rule

CHUNK = 1024  # chips read ahead (in a thread) while the models work on the previous chunk


@dataclass
class Predictor:
    """Fold models + preprocessing -> probabilities. Build it with :meth:`from_run`."""

    models: list
    model_paths: list[Path]
    image_size: int
    channels: int
    image_format: str = "jpg"
    chip_size: int = 0
    chip_ground_m: float = 768.0
    dehaze: object | None = None  # haze.DehazeParams when the folds learnt from dehazed chips
    tta: int = 1
    batch_size: int = 256
    thresholds: np.ndarray | None = None
    weather_decoding: bool = False
    unfinished: list[str] = field(default_factory=list)
    chip_look: dict | None = None  # how the training chips were stored, when a bundle recorded it (scan remakes it)
    bundle: Path | None = None  # the model bundle the models came from (None: a run folder)
    labels: tuple[str, ...] = LABELS  # the vocabulary: one probability column per label, in this order
    _infers: list = field(default_factory=list, repr=False)

    # --- loading -------------------------------------------------------------------------------------------
    @classmethod
    def from_run(cls, run, gpu: bool = False, tta: int | None = None, batch_size: int | None = None,
                 overrides: Sequence[str] = ()) -> "Predictor":
        """The finished fold models of a run. ``run`` is a loaded Config, or a run folder (its config.yaml is
        read, with ``overrides`` as ``section.key=value`` on top). Thresholds are attached when tune has run."""
        from amazonmine.core.config import Config, load_config
        from amazonmine.neural.device import setup_device
        from amazonmine.neural.model import load_trained

        _check_options(tta, batch_size)
        if isinstance(overrides, (str, bytes)) or not all(isinstance(o, str) for o in overrides):
            raise AmazonmineError(f"overrides: expected a list of 'section.key=value' strings, got "
                                  f"{shorten(repr(overrides))}")
        if isinstance(run, Config):
            cfg = run
        elif not isinstance(run, (str, Path)):
            raise AmazonmineError(f"run: expected a run folder (a path) or a loaded Config, got "
                                  f"{type(run).__name__}")
        else:
            config_yaml = RunFolder(Path(run)).config_yaml
            if not config_yaml.is_file():
                raise AmazonmineError(f"{run}: not a run folder (no config.yaml); pass the run.dir of a trained run")
            cfg = load_config(config_yaml, [f"run.dir={run}", *overrides])
        folder = RunFolder.from_config(cfg)
        finished = folder.finished_models()
        settings = _shared_settings(finished.folds)
        dehaze = _dehaze_params(settings, cfg, finished.folds[0].summary)  # checked before any model loads
        setup_device(gpu)
        models = [load_trained(p) for p in finished.paths]
        # A model trained with progressive resizing takes any size: it was validated at train.image_size, and
        # is fed at that size, beside plain folds of the same run.
        trained_size = settings.get("train.image_size", cfg.train.image_size)

        def fed(model) -> tuple:
            height, width, channels = model.input_shape[1:]
            return (height or trained_size, width or trained_size, channels)

        shape = fed(models[0])
        for path, model in zip(finished.paths[1:], models[1:]):
            if fed(model) != shape:
                raise AmazonmineError(f"{path}: input shape {fed(model)} differs from the other folds' "
                                      f"{shape}; the folds of one run must share their input")
        size = shape[0]
        thresholds, weather = (folder.read_thresholds() if folder.thresholds.is_file()
                               else (None, cfg.tune.weather_decoding))
        return cls(models=models, model_paths=finished.paths, image_size=int(size), channels=int(shape[2]),
                   image_format=settings.get("data.image_format", cfg.data.image_format),
                   chip_size=int(settings.get("data.chip_size", cfg.data.chip_size)),
                   chip_ground_m=float(cfg.data.chip_ground_m),
                   dehaze=dehaze, tta=tta or cfg.predict.tta,
                   batch_size=batch_size or cfg.predict.batch_size, thresholds=thresholds,
                   weather_decoding=weather, unfinished=finished.unfinished, labels=tuple(cfg.data.labels))

    @classmethod
    def from_bundle(cls, bundle=None, gpu: bool = False, tta: int | None = None,
                    batch_size: int | None = None) -> "Predictor":
        """The models of a model bundle (:mod:`amazonmine.core.bundle`): a folder path, an installed bundle's name, or
        None for the released model that ships with the package. The bundle is checked against its SHA-256
        manifest before any file is used, and its models load with ``safe_mode=True``; its decisions are
        attached. Predicts exactly what the run it was exported from predicts."""
        from amazonmine.core.bundle import OWN_LABELS, open_bundle, resolve
        from amazonmine.core.config import BATCH, DehazeConfig
        from amazonmine.neural.device import setup_device
        from amazonmine.neural.model import load_trained

        _check_options(tta, batch_size)
        opened = open_bundle(resolve(bundle), labels=OWN_LABELS)
        pre = opened.preprocessing
        recorded_batch = pre.get("batch_size")
        if recorded_batch is not None and not _whole_in(recorded_batch, 1, BATCH):
            raise AmazonmineError(f"{opened.root / 'preprocessing.json'}: batch_size {shorten(repr(recorded_batch))} "
                                  f"is not a whole number from 1 to {BATCH}")
        dehaze = (_checked_dehaze(pre["dehaze"], DehazeConfig(), opened.root / "preprocessing.json")
                  if pre.get("dehaze") else None)
        rule, weather = read_decision_rule(opened.decisions_path)
        setup_device(gpu)
        models = [load_trained(p) for p in opened.models]
        size, channels = int(pre["image_size"]), int(pre["channels"])
        for path, model in zip(opened.models, models):
            height, width, got = model.input_shape[1:]
            if got != channels or (height or size) != size:
                raise AmazonmineError(f"{path}: input {(height, width, got)} does not match {opened.root.name}'s "
                                      f"preprocessing.json ({size} px, {channels} bands)")
        return cls(models=models, model_paths=list(opened.models), image_size=size, channels=channels,
                   image_format=pre["image_format"], chip_size=int(pre["chip_size"]),
                   chip_ground_m=float(pre["chip_ground_m"]), dehaze=dehaze, tta=tta or int(pre["tta"]),
                   batch_size=batch_size or int(pre.get("batch_size") or 256), thresholds=rule,
                   weather_decoding=weather, chip_look=pre.get("chip_look"), bundle=opened.root,
                   labels=tuple(opened.labels))

    def one_fold(self, model_path: Path, tta: int | None = None) -> "Predictor":
        """The same predictor with one fold's model alone (its out-of-fold chips are the other folds' training
        chips, so averaging the others in would leak), sharing the loaded model; optionally another TTA."""
        import dataclasses

        if model_path not in self.model_paths:
            raise AmazonmineError(f"{model_path}: not one of this run's finished fold models")
        index = self.model_paths.index(model_path)
        return dataclasses.replace(self, models=[self.models[index]], model_paths=[model_path],
                                   tta=tta or self.tta, _infers=[])

    # --- arrays --------------------------------------------------------------------------------------------
    def prepare(self, chip: np.ndarray, dehazed: bool = False) -> np.ndarray:
        """One chip in file band order -> the model's input (its pixel dtype, model band order, input size).
        The chip must be one :meth:`predict` takes (its rules); any other is a DataError saying why."""
        return self._prepare(chip, dehazed, "chip")

    def _prepare(self, chip, dehazed: bool, where: str) -> np.ndarray:
        from amazonmine.neural.datasets import resize_square, to_model_channels

        chip = self._check_chip(chip, where)
        if self.dehaze is not None and not dehazed:
            from amazonmine.core.haze import dehaze_image

            chip = dehaze_image(chip, self.dehaze).image
        return resize_square(to_model_channels(chip), self.image_size)

    def predict(self, chips: np.ndarray | Sequence[np.ndarray], dehazed: bool = False) -> np.ndarray:
        """(N, H, W, C) chips in file band order -> (N, 17) float32, the mean over the fold models and the TTA
        views. Chips may be any square size; each is prepared as in training.

        The pixels are raw, as :func:`amazonmine.core.data.read_image` gives them: ``uint8`` 0-255 (B, G, R) for a
        model of JPEG or PNG chips, ``uint16`` counts (B, G, R, NIR) for a model of TIF chips. An array of
        another integer type is taken when every value fits that range (an ``int64`` array of 0-255 values,
        say), except 8-bit pixels for a TIF model. Floats are refused, whatever their values: 0-1 and 0-255
        floats cannot be told apart, and one read the wrong way gives probabilities that look right and are
        not (pass the integers the file holds). So are booleans, negative or too large values, a chip that is
        not square or has the wrong number of bands: each is a :class:`~amazonmine.core.data.DataError` naming the
        chip (its position) and the problem, before any model runs. ``chips`` is an (N, H, W, C) array or a
        list of (H, W, C) arrays; one chip alone is ``chip[None]``.
        """
        checked = self._check_chips(chips)
        if len(checked) == 0:
            return np.zeros((0, len(self.labels)), np.float32)
        pixels = np.stack([self._prepare(c, dehazed, f"chip {i}") for i, c in enumerate(checked)])
        return self.predict_prepared(pixels)

    # --- what the arrays may hold (see predict) --------------------------------------------------------------
    def _pixel_dtype(self) -> np.dtype:
        """The pixels the models learnt from: 16-bit counts for TIF chips, 8-bit for JPEG and PNG."""
        return np.dtype(np.uint16 if self.image_format == "tif" else np.uint8)

    def _check_chips(self, chips) -> Sequence:
        """The chips of one :meth:`predict` call, as a sequence of (H, W, C) items; each is checked as it is
        prepared (:meth:`_check_chip`)."""
        if isinstance(chips, (list, tuple)):
            return chips
        if isinstance(chips, np.ndarray) or hasattr(chips, "__array__"):
            array = np.asarray(chips)
            if array.ndim != 4:
                one = "; one chip alone is chip[None]" if array.ndim == 3 else ""
                raise DataError(f"chips: expected an (N, H, W, bands) array, got shape {shorten(array.shape)}{one}")
            return array
        raise DataError(f"chips: expected an (N, H, W, bands) array or a list of (H, W, bands) arrays, got "
                        f"{type(chips).__name__}")

    def _check_chip(self, chip, where: str) -> np.ndarray:
        """``chip`` as the models take it (their pixel dtype), or a DataError naming ``where`` and the problem."""
        expected = self._pixel_dtype()
        raw = ("16-bit TIF counts (uint16, B, G, R, NIR)" if expected == np.uint16
               else "8-bit pixels (uint8 0-255, B, G, R)")
        try:
            array = np.asarray(chip)
        except (TypeError, ValueError):  # a ragged nest of lists
            raise DataError(f"{where}: not an array of pixels ({type(chip).__name__})") from None
        if array.ndim != 3 or array.shape[0] != array.shape[1] or array.shape[0] == 0:
            raise DataError(f"{where}: expected a square (H, W, bands) chip, got shape {shorten(array.shape)}")
        if array.shape[2] != self.channels:
            raise DataError(f"{where}: {array.shape[2]} bands, the model takes {self.channels}: {raw}")
        if array.dtype == expected:
            return array
        if array.dtype.kind == "f":
            raise DataError(f"{where}: {array.dtype} pixels; the model takes raw {raw} as read_image gives them, "
                            f"not floats (0-1 and 0-255 floats cannot be told apart)")
        if array.dtype.kind not in "iu" or (expected == np.uint16 and array.dtype == np.uint8):
            raise DataError(f"{where}: {array.dtype} values are not what the model takes: raw {raw}")
        low, high, top = int(array.min()), int(array.max()), int(np.iinfo(expected).max)
        if low < 0 or high > top:
            raise DataError(f"{where}: {array.dtype} values from {low} to {high}, outside 0..{top}: the model takes "
                            f"raw {raw}")
        return array.astype(expected)

    def predict_prepared(self, pixels: np.ndarray) -> np.ndarray:
        """Chips already at the model's input (from :meth:`prepare`) -> (N, 17) float32."""
        import tensorflow as tf

        if not self._infers:
            self._infers = [self._compile(m) for m in self.models]
        total = np.zeros((len(pixels), len(self.labels)), np.float64)
        for start in range(0, len(pixels), self.batch_size):
            batch = tf.constant(pixels[start:start + self.batch_size].astype(np.float32))
            for infer in self._infers:
                total[start:start + len(batch)] += infer(batch).numpy()
        return (total / len(self._infers)).astype(np.float32)

    def _compile(self, model):
        from amazonmine.neural.datasets import tta_predict_fn

        return tta_predict_fn(model, self.tta, (self.image_size, self.image_size, self.channels))

    def decide(self, probs: np.ndarray) -> np.ndarray:
        """(N, 17) decisions with the run's tuned thresholds (predict's rule)."""
        from amazonmine.core.decisions import decode

        if self.thresholds is None:
            raise DataError("this run has no thresholds.json: run 'amazonmine tune' first")
        return decode(_check_probabilities(probs, self.labels), self.thresholds, self.weather_decoding, self.labels)

    # --- files ---------------------------------------------------------------------------------------------
    def predict_files(self, chips: list[tuple[str, Path]], out_csv: Path, dehazed: bool = False,
                      expected_size: int = 0, progress: bool = True) -> list[tuple[str, str]]:
        """Write image_name + 17 probabilities per readable chip to ``out_csv`` (atomically), streaming.

        Chunks are read in a thread while the models work on the previous one. Returns (image_name, problem)
        for every chip that could not be read; ``expected_size`` refuses chips of another side (0 = any).
        """
        from amazonmine.core.logs import progress_bar

        read = functools.partial(self.read_chunk, dehazed=dehazed, expected_size=expected_size)
        chunks = [chips[i:i + CHUNK] for i in range(0, len(chips), CHUNK)]
        failures: list[tuple[str, str]] = []
        with atomic_path(out_csv) as tmp, open(tmp, "w", newline="") as fh, \
                ThreadPoolExecutor(max_workers=1) as pool, \
                progress_bar(total=len(chips), desc="predict", unit="chip", enabled=progress) as bar:
            writer = csv.writer(fh)
            writer.writerow(["image_name", *self.labels])
            pending = pool.submit(read, chunks[0]) if chunks else None
            for index, chunk in enumerate(chunks):
                pixels, ok, errors = pending.result()
                pending = pool.submit(read, chunks[index + 1]) if index + 1 < len(chunks) else None
                failures += errors
                probs = self.predict_prepared(pixels) if len(pixels) else np.zeros((0, len(self.labels)))
                names = [name for (name, _), keep in zip(chunk, ok) if keep]
                writer.writerows([name, *(f"{p:.6f}" for p in row)] for name, row in zip(names, probs))
                bar.update(len(chunk))
        return failures

    def read_chunk(self, items, dehazed: bool, expected_size: int):
        """Prepared pixels of the readable chips of a chunk, kept in the chips' dtype (uint8 JPEG, uint16 TIF)
        so a chunk of 256 px chips stays small; cast to float32 one batch at a time."""
        pixels = None
        ok = np.zeros(len(items), bool)
        errors: list[tuple[str, str]] = []
        for i, (name, path) in enumerate(items):
            try:
                img = self.prepare(read_image(path, expected_size), dehazed)
            except DataError as exc:
                message, shown = str(exc), shorten(path, PATH_LIMIT)  # the reader quotes long paths cut
                errors.append((name, message if message.startswith(shown) else f"{shown}: {message}"))
                continue
            if pixels is None:
                pixels = np.zeros((len(items), *img.shape), img.dtype)
            pixels[i] = img
            ok[i] = True
        if pixels is None:  # no chip of the chunk could be read
            return np.zeros((0, self.image_size, self.image_size, self.channels), np.uint8), ok, errors
        return (pixels if ok.all() else pixels[ok]), ok, errors


def _check_probabilities(probs, labels=LABELS) -> np.ndarray:
    """What :meth:`Predictor.decide` takes: an (N, 17) array of finite probabilities in [0, 1]."""
    try:
        array = np.asarray(probs)
    except (TypeError, ValueError):
        raise DataError(f"probabilities: not an array ({type(probs).__name__})") from None
    if array.dtype.kind not in "fiu":
        raise DataError(f"probabilities: {array.dtype} values; expected numbers in [0, 1] as predict returns them")
    if array.ndim != 2 or array.shape[1] != len(labels):
        raise DataError(f"probabilities: expected an (N, {len(labels)}) array (one column per label, as predict "
                        f"returns), got shape {shorten(array.shape)}")
    if not np.isfinite(array).all():
        raise DataError("probabilities: NaN or infinite values; expected numbers in [0, 1]")
    if array.size and (array.min() < 0 or array.max() > 1):
        raise DataError(f"probabilities: values from {array.min():g} to {array.max():g}, outside [0, 1]")
    return array.astype(np.float64)


def _shared_settings(folds) -> dict:
    """The preprocessing settings the folds recorded; they must agree, since their outputs are averaged."""
    keys = ("data.image_format", "data.chip_size", "dehaze.enabled", "train.image_size")
    recorded = []
    for files in folds:
        settings = files.read_summary().get("settings") or {}
        _check_settings(files.summary, settings)
        recorded.append((files, settings))
    first_files, first = recorded[0]
    for files, settings in recorded[1:]:
        for key in keys + tuple(k for k in first if k.startswith("dehaze.")):
            if key in first and key in settings and first[key] != settings[key]:
                raise AmazonmineError(f"{files.summary}: {key} is {settings[key]!r}, but {first_files.name} has "
                                      f"{first[key]!r}; the averaged folds must share their preprocessing")
    return first


def _check_settings(summary: Path, settings) -> None:
    """The recorded settings the predictor reads, of the types training writes them with; a summary.json changed
    by hand or by another program is refused in one line naming it, not read into a wrong predictor."""
    import math

    from amazonmine.core.config import DehazeConfig

    def kind(value) -> str:
        return ("a boolean" if isinstance(value, bool) else "a number" if isinstance(value, (int, float))
                else "a string" if isinstance(value, str) else "a list" if isinstance(value, list)
                else "an object" if isinstance(value, dict) else "null")

    if not isinstance(settings, dict):
        raise AmazonmineError(f"{summary}: 'settings' is {kind(settings)}, expected an object of section.key "
                              f"values; train the fold again (--retrain) or restore the file")
    expected = {"data.image_format": "a string", "data.chip_size": "a number", "train.image_size": "a number"}
    for name, declared in DehazeConfig.model_fields.items():
        expected[f"dehaze.{name}"] = kind(declared.default)
    for key, wanted in expected.items():
        value = settings.get(key)
        if key in settings and (kind(value) != wanted or (wanted == "a number" and not math.isfinite(value))):
            raise AmazonmineError(f"{summary}: settings {key} is {kind(value)} ({shorten(repr(value))}), expected "
                                  f"{wanted if wanted != 'a number' else 'a finite number'}; train the fold again "
                                  f"(--retrain) or restore the file")
    for key in ("data.chip_size", "train.image_size"):
        value = settings.get(key, 0)
        if (isinstance(value, float) and not value.is_integer()) or value < 0:  # NaN and infinity included
            raise AmazonmineError(f"{summary}: settings {key} is {value!r}, expected a whole number of pixels")


def _dehaze_params(settings: dict, cfg, summary: Path):
    """The dehaze settings the folds learnt with (from their summaries; the config for older folds)."""
    from amazonmine.core.haze import DehazeParams

    if "dehaze.enabled" not in settings:
        return DehazeParams.from_config(cfg.dehaze) if cfg.dehaze.enabled else None
    if not settings["dehaze.enabled"]:
        return None
    recorded = {k.split(".", 1)[1]: v for k, v in settings.items() if k.startswith("dehaze.")}
    fields = type(cfg.dehaze).model_fields
    return _checked_dehaze({k: v for k, v in recorded.items() if k in fields}, cfg.dehaze, summary)


def _checked_dehaze(recorded, base, where: Path):
    """DehazeParams from dehaze settings a file recorded (a fold's summary.json, a bundle's preprocessing.json)
    over ``base`` (a DehazeConfig), each value held to the config's own type and bounds: an even patch or an
    omega of 5 in a file changed by hand is one line naming the file, not an OpenCV error at the first chip."""
    from pydantic import ValidationError

    from amazonmine.core.config import DehazeConfig
    from amazonmine.core.haze import DehazeParams

    if not isinstance(recorded, dict):
        raise AmazonmineError(f"{where}: dehaze settings are not an object")
    unknown = sorted(set(recorded) - set(DehazeConfig.model_fields))
    if unknown:
        raise AmazonmineError(f"{where}: dehaze setting {shorten(unknown[0])} is unknown to this version of amazonmine")
    try:
        section = DehazeConfig.model_validate({**base.model_dump(), **recorded})
    except ValidationError as exc:
        error = exc.errors()[0]
        key = ".".join(str(part) for part in error["loc"])
        raise AmazonmineError(f"{where}: dehaze.{key} = {shorten(repr(error.get('input')))}: "
                              f"{error['msg']}") from None
    return DehazeParams.from_config(section)


def _whole_in(value, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _check_options(tta, batch_size) -> None:
    """``tta`` and ``batch_size`` as :meth:`Predictor.from_run` and :meth:`Predictor.from_bundle` take them
    (None: the run's or the bundle's own)."""
    from amazonmine.core.config import BATCH

    if tta is not None and not (_whole_in(tta, 1, 8) and tta in (1, 2, 4, 8)):
        raise AmazonmineError(f"tta {shorten(repr(tta))}: choose 1, 2, 4 or 8 dihedral views (or None: the run's)")
    if batch_size is not None and not _whole_in(batch_size, 1, BATCH):
        raise AmazonmineError(f"batch_size {shorten(repr(batch_size))}: a whole number of chips from 1 to {BATCH} "
                              f"(or None: the run's)")
