"""Fine-tuning: start a fold's network from a trained model (``train.init_from``).

The source is a finished run folder (its fold of the same number, else its lowest finished fold), a model bundle
(a folder, or an installed bundle's name such as ``planet32-v1``, :func:`amazonmine.core.bundle.resolve`) or a bare
model file (.h5 or .keras). Every layer but the head is copied by name, so the backbone starts where the source
ended; the head (:data:`amazonmine.neural.model.HEAD_LAYERS`) is copied too when the source's vocabulary is the run's
(same labels, same order), else it stays freshly initialised for the run's labels. With ``train.head_epochs``
the head alone trains first (backbone frozen, BatchNorm in inference mode), so a new head does not send large
gradients into a pretrained backbone; then the whole network trains for ``train.epochs``.

What cannot work is refused in one line naming the source and both values: another input size, another number
of bands, another backbone, or layers that differ. Models load with Keras ``safe_mode=True`` only.

:func:`resolve_source` reads metadata only (no TensorFlow), so ``train`` checks the source before any chip is read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from amazonmine.core.data import LABELS
from amazonmine.core.errors import AmazonmineError

MODEL_SUFFIXES = (".h5", ".keras")


class InitFromError(AmazonmineError):
    """A train.init_from source that cannot start this run."""

    def __init__(self, message: str):
        super().__init__(f"train.init_from: {message}")


@dataclass
class InitSource:
    """Where a fold's starting weights come from, and what is known of them before loading."""

    spec: str                  # as given in train.init_from
    kind: str                  # "run", "bundle" or "model file"
    model: Path                # the model file loaded
    labels: tuple[str, ...] | None = None  # its vocabulary; None: not recorded (a bare model file)
    image_size: int | None = None
    channels: int | None = None
    backbone: str | None = None

    def describe(self) -> str:
        return f"{self.kind} {self.spec}" if self.kind != "model file" else str(self.model)

    def record(self) -> dict:
        return {"source": self.spec, "kind": self.kind, "model": str(self.model),
                "labels": None if self.labels is None else list(self.labels), "image_size": self.image_size,
                "backbone": self.backbone}


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InitFromError(f"{path}: not readable JSON ({type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise InitFromError(f"{path}: not a JSON object")
    return data


def _from_run(root: Path, spec: str, fold: int) -> InitSource:
    finished = sorted((p for p in root.glob("fold*/summary.json") if p.parent.name[4:].isdigit()),
                      key=lambda p: int(p.parent.name[4:]))
    if not finished:
        raise InitFromError(f"{root}: neither a finished run (no fold*/summary.json) nor a model bundle "
                            f"(no bundle.json)")
    same = [p for p in finished if p.parent.name == f"fold{fold}"]
    summary_path = (same or finished)[0]
    summary = _read_json(summary_path)
    name = Path(str(summary.get("model", ""))).name
    model = summary_path.parent / name
    if not name or not model.is_file():
        raise InitFromError(f"{summary_path}: its model file {name or '(none named)'} is not in {model.parent}")
    labels = summary.get("labels", list(LABELS))  # a run from before vocabularies used Planet's
    return InitSource(spec, "run", model, tuple(labels), _int(summary.get("image_size")), None,
                      summary.get("backbone"))


def _from_bundle(root: Path, spec: str, fold: int) -> InitSource:
    from amazonmine.core.bundle import OWN_LABELS, BundleError, open_bundle

    try:
        bundle = open_bundle(root, labels=OWN_LABELS)
    except BundleError as exc:
        raise InitFromError(str(exc)) from None
    by_name = {p.name: p for p in bundle.models}
    model = by_name.get(f"fold{fold}.keras", bundle.models[0])
    settings = (bundle.meta.get("source_run") or {}).get("settings") or {}
    return InitSource(spec, "bundle", model, tuple(bundle.labels), _int(bundle.preprocessing.get("image_size")),
                      _int(bundle.preprocessing.get("channels")), settings.get("train.backbone"))


def _int(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def resolve_source(spec: str, fold: int) -> InitSource:
    """The source ``train.init_from`` names, checked as far as its files tell without loading a model."""
    from amazonmine.core.bundle import BUNDLE_JSON, BundleError, resolve

    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix.lower() not in MODEL_SUFFIXES:
            raise InitFromError(f"{spec}: not a model file (.h5 or .keras), a run folder or a model bundle")
        return InitSource(spec, "model file", path)
    if path.is_dir():
        return _from_bundle(path, spec, fold) if (path / BUNDLE_JSON).is_file() else _from_run(path, spec, fold)
    if path.suffix.lower() in MODEL_SUFFIXES or "/" in spec or "\\" in spec:
        raise InitFromError(f"{spec}: no such model file (check the path)")
    try:
        root = resolve(spec)  # an installed bundle's name
    except BundleError:
        raise InitFromError(f"{spec}: no such model file, run folder or installed model bundle (see "
                            f"'amazonmine models')") from None
    return _from_bundle(root, spec, fold)


def check_compatible(source: InitSource, train_cfg, channels: int | None = None) -> None:
    """Refuse a source of another input size, bands or backbone, in one line naming it and both values."""
    name = source.describe()
    if source.image_size is not None and source.image_size != train_cfg.image_size:
        raise InitFromError(f"{name} was trained at image size {source.image_size} px, this run's train.image_size "
                            f"is {train_cfg.image_size}: set train.image_size={source.image_size}")
    if channels is not None and source.channels is not None and source.channels != channels:
        raise InitFromError(f"{name} takes {source.channels} bands, this run's chips have {channels} "
                            f"(data.image_format)")
    if source.backbone is not None and source.backbone != train_cfg.backbone:
        raise InitFromError(f"{name} is a {source.backbone}, this run's train.backbone is {train_cfg.backbone}")


def _layers_with_weights(model) -> dict:
    return {layer.name: layer for layer in model.layers if layer.weights}


def start_from(model, source: InitSource, labels: Sequence[str], train_cfg) -> dict:
    """Copy ``source``'s weights into the freshly built ``model`` (head too when the vocabularies agree).
    Returns what the fold's summary records of it."""
    from amazonmine.neural.model import HEAD_LAYERS, load_trained

    check_compatible(source, train_cfg)
    try:
        trained = load_trained(source.model)
    except AmazonmineError as exc:
        raise InitFromError(str(exc)) from None
    name = source.describe()
    theirs_in, ours_in = trained.inputs[0].shape, model.inputs[0].shape
    if theirs_in[-1] != ours_in[-1]:
        raise InitFromError(f"{name} takes {theirs_in[-1]} bands, this run's chips have {ours_in[-1]} "
                            f"(data.image_format)")
    if theirs_in[1] is not None and ours_in[1] is not None and theirs_in[1] != ours_in[1]:
        raise InitFromError(f"{name} was trained at image size {theirs_in[1]} px, this run's train.image_size "
                            f"is {ours_in[1]}: set train.image_size={theirs_in[1]}")
    theirs, ours = _layers_with_weights(trained), _layers_with_weights(model)
    body = [n for n in ours if n not in HEAD_LAYERS]
    differ = sorted(set(body) ^ {n for n in theirs if n not in HEAD_LAYERS})
    if differ:
        raise InitFromError(f"{name} is not the same architecture as train.backbone={train_cfg.backbone} at this "
                            f"image size (layers {', '.join(differ[:4])} in one of them only)")
    for layer_name in body:
        mine, source_weights = ours[layer_name].get_weights(), theirs[layer_name].get_weights()
        if len(mine) != len(source_weights) or any(a.shape != b.shape for a, b in zip(mine, source_weights)):
            raise InitFromError(f"{name} is not the same architecture as train.backbone={train_cfg.backbone} at "
                                f"this image size (layer {layer_name} differs)")
        ours[layer_name].set_weights(source_weights)
    width = int(trained.outputs[0].shape[-1])
    same_vocabulary = (tuple(labels) == source.labels if source.labels is not None else width == len(labels))
    head_kept = same_vocabulary and all(n in theirs for n in HEAD_LAYERS)
    if head_kept:
        for layer_name in HEAD_LAYERS:
            ours[layer_name].set_weights(theirs[layer_name].get_weights())
    return {**source.record(), "head": "kept" if head_kept else "new",
            "source_outputs": width, "layers_copied": len(body) + (len(HEAD_LAYERS) if head_kept else 0)}


def backbone_layers(model) -> list:
    """The layers a head-only phase freezes: every layer with weights outside the head."""
    from amazonmine.neural.model import HEAD_LAYERS

    return [layer for layer in model.layers if layer.weights and layer.name not in HEAD_LAYERS]


def train_head(model, train_cfg, compile_model, train_ds, val_ds, steps: int) -> dict:
    """``train_cfg.head_epochs`` epochs of the head alone (backbone frozen, its BatchNorm in inference mode) at a
    constant train.learning_rate; the backbone is trainable again afterwards and the model left uncompiled for
    the main phase. ``compile_model(optimizer)`` compiles as the fold does. Returns the phase's last figures."""
    import keras

    frozen = backbone_layers(model)
    for layer in frozen:
        layer.trainable = False
    try:
        compile_model(keras.optimizers.AdamW(train_cfg.learning_rate, weight_decay=train_cfg.weight_decay))
        history = model.fit(train_ds, validation_data=val_ds, epochs=train_cfg.head_epochs, steps_per_epoch=steps,
                            verbose=train_cfg.verbose, shuffle=False)
    finally:
        for layer in frozen:
            layer.trainable = True
    last = {k: float(v[-1]) for k, v in history.history.items() if v}
    return {"epochs": train_cfg.head_epochs, "frozen_layers": len(frozen), "last": last}
