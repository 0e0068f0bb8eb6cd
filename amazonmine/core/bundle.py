"""Model bundles: everything a prediction depends on, in one folder that can be handed to someone else.

A run folder holds a model's whole history (splits, checkpoints, out-of-fold files, reports) and needs its
training data to say how its chips looked. A *bundle* holds only what turning pixels into decisions needs, so
``scan`` and ``predict`` can run on a machine that never saw the training data::

    planet32-v1/
      bundle.json         format version, name, version, labels, created, package versions, the source run,
                          the card's headline (held-out mean F2 and its interval)
      preprocessing.json  image size, bands, chip side and ground size, the chip look scan must reproduce,
                          dehaze settings, TTA
      decisions.json      the run's thresholds.json as tune wrote it, plus the operating points measured at export
      fold0.keras ...     the fold models, Keras 3 native format, loaded with ``safe_mode=True`` only
      MODEL_CARD.md       what it detects, data and licence, recipe, held-out scores with intervals, limits
      held_out_chips.txt  the chips the card was measured on (one image name a line)
      SHA256SUMS          ``<sha256>  <file>`` for every other file, checked before anything is read

``amazonmine export`` writes one from a finished run (:mod:`amazonmine.stages.export`); :func:`open_bundle` checks and
reads one; :meth:`amazonmine.neural.predictor.Predictor.from_bundle` loads its models. This module never imports
TensorFlow: listing and checking bundles (``amazonmine models``) stays fast.

Why a manifest: a bundle travels by e-mail, shared drives and pip wheels; a truncated copy or a hand-edited
threshold would otherwise predict silently wrong. Every file is hashed before the first byte of it is used,
and a bundle with a file the manifest does not name is refused too (a stray ``fold9.keras`` must not be read).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from amazonmine.core.data import LABELS
from amazonmine.core.errors import AmazonmineError

#: The bundle layout this code writes and reads. A bundle of a higher format is refused with advice to upgrade.
BUNDLE_FORMAT = 1
BUNDLE_JSON = "bundle.json"
PREPROCESSING_JSON = "preprocessing.json"
DECISIONS_JSON = "decisions.json"
MODEL_CARD = "MODEL_CARD.md"
MANIFEST = "SHA256SUMS"
#: The released model that ships inside the package; ``scan``/``predict`` use it when given no run and no model.
RELEASED = "planet32-v1"
#: Extra folders to look for bundles in, ``os.pathsep``-separated (``amazonmine models`` lists them all).
MODELS_ENV = "AMAZONMINE_MODELS"

#: ``open_bundle(labels=OWN_LABELS)``: accept the bundle's own vocabulary (a fine-tuned model's labels).
OWN_LABELS = "own"
_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_FOLD_MODEL = re.compile(r"^fold\d{1,3}\.keras$")
_MAX_JSON_BYTES = 4 * 1024 * 1024  # bundle metadata is a few kB; a bigger file is not one of ours


class BundleError(AmazonmineError):
    """A bundle that cannot be used: one line naming the bundle file and the problem."""


@dataclass
class Bundle:
    """A checked bundle's metadata (no model loaded). Build it with :func:`open_bundle`."""

    root: Path
    meta: dict
    preprocessing: dict
    decisions: dict
    models: list[Path] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.meta["name"])

    @property
    def version(self) -> str:
        return str(self.meta["version"])

    @property
    def labels(self) -> list[str]:
        return list(self.meta["labels"])

    @property
    def card(self) -> Path:
        return self.root / MODEL_CARD

    @property
    def decisions_path(self) -> Path:
        return self.root / DECISIONS_JSON

    @property
    def headline(self) -> str:
        """The card's one-line summary: held-out mean F2 with its interval, where it was measured."""
        h = self.meta.get("headline") or {}
        f2, interval, where = h.get("mean_f2"), h.get("interval"), h.get("measured_on", "held-out chips")
        if not isinstance(f2, (int, float)):
            return "no held-out score recorded"
        text = f"mean F2 {f2:.4f}"
        if isinstance(interval, list) and len(interval) == 2:
            text += f" (95% {interval[0]:.4f}-{interval[1]:.4f})"
        return f"{text} on {where}"

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.root.iterdir() if p.is_file())


# --- reading and checking ------------------------------------------------------------------------------------

def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _regular_file_inside(root: Path, name: str, where: str) -> Path:
    """``root/name`` when it is a plain file name of a regular file (not a link) directly inside ``root``."""
    if not _FILE_NAME.match(name) or name in (".", ".."):
        raise BundleError(f"{where}: {name[:80]!r} is not a plain file name inside the bundle")
    path = root / name
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise BundleError(f"{path}: missing (named in {MANIFEST}); the bundle is incomplete") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a link" if stat.S_ISLNK(st.st_mode) else "not a regular file"
        raise BundleError(f"{path}: {kind}; a bundle holds regular files only")
    return path


def read_manifest(root: Path) -> dict[str, str]:
    """file name -> sha256, from SHA256SUMS (``sha256sum`` format)."""
    path = root / MANIFEST
    if not path.is_file() or path.is_symlink():
        raise BundleError(f"{path}: missing; not a model bundle (or an incomplete copy)")
    entries: dict[str, str] = {}
    text = path.read_bytes()[:_MAX_JSON_BYTES].decode("utf-8", errors="replace")
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        match = re.fullmatch(r"([0-9a-f]{64}) [ *](\S+)", line.strip())
        if not match:
            raise BundleError(f"{path}: line {number} is not '<sha256>  <file>'")
        digest, name = match.groups()
        if name in entries:
            raise BundleError(f"{path}: {name} is listed twice")
        entries[name] = digest
    if not entries:
        raise BundleError(f"{path}: lists no file")
    return entries


def verify(root: Path) -> dict[str, Path]:
    """Check every file against SHA256SUMS: none missing, changed, linked, or unlisted. Returns name -> path."""
    entries = read_manifest(root)
    files = {}
    for name, digest in entries.items():
        path = _regular_file_inside(root, name, str(root / MANIFEST))
        if sha256_of(path) != digest:
            raise BundleError(f"{path}: changed since the bundle was made (SHA-256 differs from {MANIFEST})")
        files[name] = path
    unlisted = sorted(p.name for p in root.iterdir() if p.name not in entries and p.name != MANIFEST
                      and not p.name.startswith("."))
    if unlisted:
        raise BundleError(f"{root / unlisted[0]}: not in {MANIFEST}; a bundle holds only the files it lists")
    return files


def _read_json(path: Path) -> dict:
    try:
        if path.stat().st_size > _MAX_JSON_BYTES:
            raise BundleError(f"{path}: too large for bundle metadata")
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise BundleError(f"{path}: cannot read ({type(exc).__name__}: {str(exc)[:120]})") from None
    if not isinstance(value, dict):
        raise BundleError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def _require(path: Path, data: dict, key: str, kind: type | tuple, check=None, what: str = ""):
    value = data.get(key)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise BundleError(f"{path}: {key} missing or of the wrong type")
    if check is not None and not check(value):
        raise BundleError(f"{path}: {key} = {str(value)[:60]!r} {what}")
    return value


def open_bundle(path: str | Path, labels: list[str] | None = None) -> Bundle:
    """Check and read a bundle folder; no model is loaded. ``labels`` (default: the package's 17) must equal the
    bundle's vocabulary. Every problem is one :class:`BundleError` line naming the file."""
    root = Path(path)
    if root.is_symlink():
        raise BundleError(f"{root}: a link; pass the bundle folder itself")
    if not root.exists():
        raise BundleError(f"{root}: no such model bundle (see 'amazonmine models' for the ones installed)")
    if not root.is_dir():
        raise BundleError(f"{root}: a file, not a model bundle folder")
    meta_path = root / BUNDLE_JSON
    if not meta_path.is_file():
        raise BundleError(f"{meta_path}: missing; not a model bundle")
    # The format is read before the manifest is checked, so a bundle from a newer release says so plainly
    # instead of failing on a file this version does not know.
    meta = _read_json(meta_path)
    fmt = meta.get("format")
    if not isinstance(fmt, int) or isinstance(fmt, bool):
        raise BundleError(f"{meta_path}: no integer 'format'; not a model bundle")
    if fmt > BUNDLE_FORMAT:
        raise BundleError(f"{meta_path}: bundle format {fmt} is newer than this amazonmine reads ({BUNDLE_FORMAT}); "
                          f"upgrade amazonmine")
    if fmt < 1:
        raise BundleError(f"{meta_path}: bundle format {fmt} is not one amazonmine ever wrote")
    files = verify(root)
    for required in (BUNDLE_JSON, PREPROCESSING_JSON, DECISIONS_JSON):
        if required not in files:
            raise BundleError(f"{root / required}: missing from {MANIFEST}")
    _require(meta_path, meta, "name", str, lambda s: bool(_FILE_NAME.match(s)), "is not a plain name")
    _require(meta_path, meta, "version", str, lambda s: bool(_FILE_NAME.match(s)), "is not a plain version")
    got = _require(meta_path, meta, "labels", list, lambda v: all(isinstance(x, str) for x in v),
                   "must be a list of label names")
    want = list(LABELS if labels is None else got if labels == OWN_LABELS else labels)
    if got != want:
        extra, missing = sorted(set(got) - set(want)), sorted(set(want) - set(got))
        detail = (f"has {', '.join(extra[:5])} not in the vocabulary" if extra else
                  f"lacks {', '.join(missing[:5])}" if missing else "orders them differently")
        raise BundleError(f"{meta_path}: its labels differ from this vocabulary's ({detail})")
    folds = _require(meta_path, meta, "models", list,
                     lambda v: bool(v) and all(isinstance(x, str) and _FOLD_MODEL.match(x) for x in v),
                     "must list fold models named fold<K>.keras")
    missing_models = [name for name in folds if name not in files]
    if missing_models:
        raise BundleError(f"{root / missing_models[0]}: named in {BUNDLE_JSON} but not in {MANIFEST}")
    pre_path = root / PREPROCESSING_JSON
    pre = _read_json(pre_path)
    _require(pre_path, pre, "image_size", int, lambda n: 8 <= n <= 4096, "must be in [8, 4096]")
    _require(pre_path, pre, "channels", int, lambda n: n in (3, 4), "must be 3 or 4")
    _require(pre_path, pre, "image_format", str, lambda s: s in ("jpg", "tif"), "must be jpg or tif")
    _require(pre_path, pre, "chip_size", int, lambda n: 0 <= n <= 4096, "must be in [0, 4096]")
    _require(pre_path, pre, "chip_ground_m", (int, float), lambda x: 1 <= x <= 100_000, "must be in [1, 100000]")
    _require(pre_path, pre, "tta", int, lambda n: n in (1, 2, 4, 8), "must be 1, 2, 4 or 8")
    if pre.get("dehaze") is not None and not isinstance(pre["dehaze"], dict):
        raise BundleError(f"{pre_path}: dehaze must be null or an object")
    if pre.get("chip_look") is not None and not isinstance(pre["chip_look"], dict):
        raise BundleError(f"{pre_path}: chip_look must be null or an object")
    decisions = _read_json(root / DECISIONS_JSON)
    return Bundle(root, meta, pre, decisions, [files[name] for name in folds])


# --- where bundles are ---------------------------------------------------------------------------------------

def packaged_dir() -> Path:
    """The bundles installed with the package (the released model)."""
    return Path(__file__).resolve().parents[1] / "models"


def search_dirs() -> list[Path]:
    extra = [Path(p).expanduser() for p in os.environ.get(MODELS_ENV, "").split(os.pathsep) if p.strip()]
    return [packaged_dir(), *extra]


def installed() -> list[tuple[Path, Bundle | BundleError]]:
    """Every folder with a bundle.json under the search folders, checked: (folder, bundle or the reason)."""
    found = []
    for folder in search_dirs():
        if not folder.is_dir():
            continue
        for candidate in sorted(folder.iterdir()):
            if candidate.is_dir() and (candidate / BUNDLE_JSON).is_file():
                try:
                    found.append((candidate, open_bundle(candidate, labels=OWN_LABELS)))  # any vocabulary
                except BundleError as exc:
                    found.append((candidate, exc))
    return found


def resolve(spec: str | Path | None) -> Path:
    """A bundle folder from ``--model``: a path to a folder, or an installed bundle's folder name (``planet32-v1``)
    or name (the newest version wins); None is the released model."""
    if spec is None:
        released = packaged_dir() / RELEASED
        if not (released / BUNDLE_JSON).is_file():
            raise BundleError(f"{released}: the released model is not installed with this copy of amazonmine; "
                              f"pass --model PATH or --config RUN.yaml")
        return released
    text = str(spec)
    path = Path(text).expanduser()
    if path.exists() or path.is_symlink() or os.sep in text or text.startswith("."):
        return path
    matches = []
    for folder in search_dirs():
        if (folder / text / BUNDLE_JSON).is_file():
            return folder / text
        if folder.is_dir():
            matches += [c for c in folder.iterdir() if c.is_dir() and c.name.startswith(f"{text}-v")]
    if matches:
        return sorted(matches, key=lambda p: _version_key(p.name[len(text) + 2:]))[-1]
    raise BundleError(f"{text}: no such model folder or installed model (see 'amazonmine models')")


def _version_key(version: str) -> tuple:
    return tuple(int(x) if x.isdigit() else x for x in re.split(r"[.-]", version))
