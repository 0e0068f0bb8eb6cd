"""The Kaggle "Planet: Understanding the Amazon from Space" data layout, its 17 labels, and safe image reading.

Layout (the competition download, or ``amazonmine synth`` output)::

    <root>/train_v2.csv               image_name,tags   (tags space-separated)
    <root>/train-jpg/<name>.jpg       256x256 chips, JPEG (Kaggle's are 4-component; OpenCV decodes to BGR)
    <root>/train-tif-v2/<name>.tif    256x256, 4 bands of 16 bit in the order B, G, R, NIR
    <root>/test-jpg/, test-jpg-additional/
    <root>/sample_submission_v2.csv   image_name,tags in the order Kaggle scores them

Arrays in this package keep OpenCV's channel order: a JPEG chip is ``uint8`` B, G, R; a TIF chip is
``uint16`` B, G, R, NIR (the file's own band order). Imagery by Planet, CC BY-SA 4.0.

Every check raises :class:`DataError` with one line that names the file and the problem and, for problems
that repeat, the count and the first few offenders.

**Vocabularies.** A run's labels are the Planet 17 (:data:`LABELS`, the default) or a list of its own
(``data.labels``, e.g. ``[artisinal_mine, airstrip]``); label matrices have one column per vocabulary label, in
the vocabulary's order. A tag written ``?name`` says the chip was never annotated for ``name``: that entry is
:data:`UNKNOWN` (-1) in the matrix, masked out of the loss and of every score instead of counting as a negative
(``amazonmine chips`` writes it for the vocabulary labels its polygon file never names). Tags outside a run's own
vocabulary are ignored, with a count per tag logged once per file; with the Planet vocabulary an unknown tag is
refused (it is a typo there). The weather rules (exactly one of the four weather labels per chip, cloudy
excludes land labels) hold only for a vocabulary holding all four weather labels (:func:`weather_columns`).
"""

from __future__ import annotations

import logging
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from amazonmine.core.errors import AmazonmineError, shorten

LABELS: tuple[str, ...] = (
    "agriculture",
    "artisinal_mine",  # sic: the dataset's spelling
    "bare_ground",
    "blooming",
    "blow_down",
    "clear",
    "cloudy",
    "conventional_mine",
    "cultivation",
    "habitation",
    "haze",
    "partly_cloudy",
    "primary",
    "road",
    "selective_logging",
    "slash_burn",
    "water",
)
LABEL_INDEX = {name: i for i, name in enumerate(LABELS)}
WEATHER_LABELS: tuple[str, ...] = ("clear", "cloudy", "haze", "partly_cloudy")
WEATHER_INDEX = np.array([LABEL_INDEX[w] for w in WEATHER_LABELS])
LAND_INDEX = np.array([i for i, name in enumerate(LABELS) if name not in WEATHER_LABELS])
MINE_LABELS: tuple[str, ...] = ("artisinal_mine", "conventional_mine")
# A label is rare below this share of chips (split oversamples those; synth boosts their combinations).
RARE_SHARE = 0.01
# The labels under RARE_SHARE in the competition's 40,478 training chips (tests check it against the real labels).
PLANET_RARE_LABELS: tuple[str, ...] = ("artisinal_mine", "blooming", "blow_down", "conventional_mine",
                                       "selective_logging", "slash_burn")

# A label matrix entry for a chip never annotated for that label (a "?name" tag): masked, not a negative.
UNKNOWN = -1
UNANNOTATED_MARK = "?"
# A label name: letters, digits, "_", "-" or "." (it becomes a CSV column, a file-name part and a tag).
_LABEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")
_log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = {"jpg": ".jpg", "tif": ".tif"}
# Chip file suffixes and the format each is decoded as.
CHIP_FORMATS = {".jpg": "jpg", ".jpeg": "jpg", ".tif": "tif", ".tiff": "tif", ".png": "png"}
_SHOW = 5  # offenders quoted in an error message
# A path quoted in a message is cut past this many characters (its start and end kept): a real one fits, and a
# file name made of a 50 MB cell of a CSV does not flood the line.
PATH_LIMIT = 240


class DataError(AmazonmineError):
    """Input data that cannot be used as it is."""


def _offenders(items: Sequence[str], total: int | None = None) -> str:
    total = len(items) if total is None else total
    shown = ", ".join(shorten(i) for i in list(items)[:_SHOW])
    more = f" and {total - _SHOW} more" if total > _SHOW else ""
    return f"{total} ({shown}{more})"


# --- names -------------------------------------------------------------------------------------------------

def is_safe_name(name: str) -> bool:
    """A chip name must stay inside its folder: no separators, no '..', not absolute, printable."""
    if not isinstance(name, str) or not name or name in (".", ".."):
        return False
    if "/" in name or "\\" in name or "\x00" in name or ".." in name:
        return False
    if os.path.isabs(name) or (len(name) > 1 and name[1] == ":"):
        return False
    return name.isprintable() and name.strip() == name


def check_names(names: Iterable[str], source: str) -> None:
    bad = [repr(n) for n in names if not is_safe_name(n)]
    if bad:
        raise DataError(f"{source}: image names that would escape their folder or are empty: {_offenders(bad)}")


# --- vocabularies -------------------------------------------------------------------------------------------

def vocabulary_problem(labels: Sequence[str]) -> str | None:
    """Why ``labels`` cannot be a vocabulary (empty, a name that is not a plain word, a repeat), else None."""
    labels = list(labels)
    if not labels:
        return "must hold at least one label"
    bad = [repr(n) for n in labels if not isinstance(n, str) or not _LABEL_NAME.fullmatch(n)]
    if bad:
        return (f"label names must be letters, digits, '_', '-' or '.' (at most 64, not starting with a mark): "
                f"{', '.join(bad[:_SHOW])}")
    repeated = sorted({n for n in labels if labels.count(n) > 1})
    if repeated:
        return f"labels repeated: {', '.join(repeated)}"
    return None


def check_vocabulary(labels: Sequence[str], source: str) -> tuple[str, ...]:
    """``labels`` as a tuple, or a DataError naming ``source`` when they cannot be a vocabulary."""
    problem = vocabulary_problem(labels)
    if problem:
        raise DataError(f"{source}: {problem}")
    return tuple(labels)


def weather_columns(labels: Sequence[str]) -> np.ndarray | None:
    """Columns of the four weather labels (in :data:`WEATHER_LABELS` order) when the vocabulary holds all of them,
    else None: the weather rules then do not apply."""
    index = {name: j for j, name in enumerate(labels)}
    if not all(w in index for w in WEATHER_LABELS):
        return None
    return np.array([index[w] for w in WEATHER_LABELS])


def land_columns(labels: Sequence[str]) -> np.ndarray:
    """Columns of the labels that are not weather labels."""
    return np.array([j for j, name in enumerate(labels) if name not in WEATHER_LABELS], dtype=np.int64)


def site_labels(labels: Sequence[str]) -> tuple[str, ...]:
    """The labels a scan maps into sites when ``scan.labels`` is empty, and a model card gives operating points
    for: the two mine labels with the Planet vocabulary; with a vocabulary of one's own, every label but the
    weather ones (those are what such a run was made to find)."""
    labels = tuple(labels)
    if labels == LABELS:
        return MINE_LABELS
    return tuple(name for name in labels if name not in WEATHER_LABELS) or labels


# --- tags <-> multi-hot ------------------------------------------------------------------------------------

def tags_to_matrix(tags: Iterable[str], source: str = "tags", labels: Sequence[str] = LABELS) -> np.ndarray:
    """Space-separated tag strings -> (N, L) multi-hot matrix in the vocabulary's order (uint8; int8 with
    :data:`UNKNOWN` entries where a ``?name`` tag marks a label the chip was never annotated for).

    With the Planet vocabulary a tag outside it is refused (a typo); with a run's own vocabulary it is ignored
    and counted (one log line per call naming each ignored tag and how often it occurred).
    """
    tags = list(tags)
    labels = tuple(labels)
    index = LABEL_INDEX if labels == LABELS else {name: j for j, name in enumerate(labels)}
    matrix = np.zeros((len(tags), len(labels)), dtype=np.int8)
    unknown: dict[str, int] = {}
    ignored: dict[str, int] = {}
    for row, text in enumerate(tags):
        if not isinstance(text, str):
            text = ""
        for tag in text.split():
            unannotated = tag.startswith(UNANNOTATED_MARK)
            name = tag[len(UNANNOTATED_MARK):] if unannotated else tag
            j = index.get(name)
            if j is None:
                if labels == LABELS and name not in LABEL_INDEX:
                    unknown.setdefault(tag, row)
                else:
                    ignored[tag] = ignored.get(tag, 0) + 1
            elif unannotated:
                if matrix[row, j] != 1:  # a chip tagged both ways carries the label: the annotation wins
                    matrix[row, j] = UNKNOWN
            else:
                matrix[row, j] = 1
    if unknown:
        names = [f"{t!r} (row {r + 2})" for t, r in unknown.items()]
        raise DataError(f"{source}: unknown labels: {_offenders(names)}; known labels: {', '.join(labels)}")
    if ignored:
        counts = ", ".join(f"{t} {n:,}" for t, n in sorted(ignored.items(), key=lambda kv: (-kv[1], kv[0])))
        _log.warning("%s: %s tags outside the vocabulary (%s) ignored: %s", source, f"{sum(ignored.values()):,}",
                     ", ".join(labels), shorten(counts, 400))
    return matrix if (matrix == UNKNOWN).any() else matrix.astype(np.uint8)


def matrix_to_tags(matrix: np.ndarray, labels: Sequence[str] = LABELS) -> list[str]:
    """(N, L) matrix -> space-separated tags in vocabulary order; an :data:`UNKNOWN` entry is written
    ``?name``."""
    matrix = np.asarray(matrix)
    labels = np.array(labels)
    if matrix.ndim != 2 or matrix.shape[1] != len(labels):
        raise ValueError(f"expected an (N, {len(labels)}) matrix, got {matrix.shape}")
    marked = np.array([UNANNOTATED_MARK + name for name in labels])
    unknown = matrix.astype(np.int64) == UNKNOWN if matrix.dtype != bool else np.zeros(matrix.shape, bool)
    on = matrix.astype(bool) & ~unknown
    return [" ".join([*labels[row], *marked[gap]]) for row, gap in zip(on, unknown)]


def positives_and_known(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(positive, annotated) boolean matrices of a label matrix that may hold :data:`UNKNOWN` entries (a bool or
    0/1 matrix is annotated everywhere)."""
    matrix = np.asarray(matrix)
    if matrix.dtype == bool:
        return matrix, np.ones(matrix.shape, dtype=bool)
    values = matrix.astype(np.float64, copy=False)
    return values > 0, values >= 0


# --- label files -------------------------------------------------------------------------------------------

def read_text_csv(path: Path, what: str, expected: str):
    """Every cell as text (names like "0001" or "NA" stay as written); a missing, empty or unparsable file is
    a one-line DataError naming it. ``what`` names the file's role, ``expected`` says what it should hold."""
    import pandas as pd

    if not path.is_file():
        raise DataError(f"{path}: {what} not found")
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: empty CSV ({expected})") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a readable CSV ({str(exc).splitlines()[0]})") from None


def read_labels(csv_path: str | Path, require_weather: bool = True, labels: Sequence[str] = LABELS):
    """Read and validate a ``train_v2.csv``-style file. Returns a DataFrame with image_name, tags (rewritten
    in the vocabulary's order: tags outside a run's own ``labels`` are dropped, ``?name`` marks kept).

    Checks: readable, the two columns, at least one row, safe unique names, known labels, and (Planet's own
    rule, where the vocabulary holds the weather labels) at least one weather label per row, unless the row
    marks a weather label as never annotated.
    """
    csv_path = Path(csv_path)
    frame = read_text_csv(csv_path, "labels file", "expected a header 'image_name,tags' and one row per chip")
    missing = [c for c in ("image_name", "tags") if c not in frame.columns]
    if missing:
        raise DataError(f"{csv_path}: missing column(s) {', '.join(missing)}; found "
                        f"{shorten(', '.join(map(str, frame.columns)), 200)}")
    if frame.empty:
        raise DataError(f"{csv_path}: empty CSV (header only, no chips)")
    frame = frame[["image_name", "tags"]].copy()
    frame["image_name"] = frame["image_name"].str.strip()
    check_names(frame["image_name"], str(csv_path))
    dup = frame["image_name"][frame["image_name"].duplicated()].unique().tolist()
    if dup:
        raise DataError(f"{csv_path}: duplicate image_name: {_offenders(dup)}")
    matrix = tags_to_matrix(frame["tags"], str(csv_path), labels)
    weather = weather_columns(labels)
    if require_weather and weather is not None:
        no_weather = frame["image_name"][(matrix[:, weather] == 0).all(axis=1)].tolist()
        if no_weather:
            raise DataError(
                f"{csv_path}: rows with no weather label (one of {', '.join(WEATHER_LABELS)}): {_offenders(no_weather)}"
            )
    frame["tags"] = matrix_to_tags(matrix, labels)
    return frame.reset_index(drop=True)


def check_images_exist(names: Sequence[str], folder: str | Path, ext: str) -> None:
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: image folder not found")
    present = {p.name for p in os.scandir(folder)} if folder.is_dir() else set()
    missing = [f"{n}{ext}" for n in names if f"{n}{ext}" not in present]
    if missing:
        raise DataError(f"{folder}: image files missing: {_offenders(missing)}")


# --- images ------------------------------------------------------------------------------------------------

def _jpeg_complete(data: bytes) -> bool:
    # A truncated JPEG still decodes in OpenCV (libjpeg fills the rest with grey and only warns on stderr),
    # so check the markers: SOI at the start, EOI near the end. Kaggle's Planet chips carry ~35 bytes of
    # trailing data after EOI, so the marker is looked for in the tail rather than in the last two bytes;
    # 0xFFD9 cannot occur inside entropy-coded data (a data 0xFF is always followed by 0x00).
    if data[:2] != b"\xff\xd8":
        return False
    return b"\xff\xd9" in data[-1024:]


def decode_image(data: bytes, name: str, fmt: str = "jpg", expected_size: int = 0) -> np.ndarray:
    """Decode one chip from bytes, refusing anything that is not a whole, colour, square chip.

    Returns uint8 (H, W, 3) B,G,R for JPEG/PNG, uint16 (H, W, 4) B,G,R,NIR for TIF.
    """
    import cv2

    name = shorten(name, PATH_LIMIT)  # only quoted below
    if not data:
        raise DataError(f"{name}: empty file")
    if fmt == "jpg" and not _jpeg_complete(data):
        raise DataError(f"{name}: truncated or corrupt JPEG (no end-of-image marker)")
    buf = np.frombuffer(data, dtype=np.uint8)
    try:
        img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    except cv2.error:
        # OpenCV raises (rather than returning None) on a header claiming absurd dimensions; its assertion
        # text means nothing to a user.
        raise DataError(f"{name}: cannot decode image: its header claims impossible dimensions or is corrupt; "
                        "re-export the chip or remove it") from None
    if img is None:
        raise DataError(f"{name}: cannot decode image (corrupt or not an image)")
    if fmt == "tif":
        if img.ndim != 3 or img.shape[2] != 4:
            raise DataError(f"{name}: expected 4 bands (B, G, R, NIR), got shape {img.shape}")
        if img.dtype != np.uint16:
            raise DataError(f"{name}: expected 16-bit bands, got {img.dtype}")
        # OpenCV treats a 4-band file as RGBA and hands it back as BGRA: swap back to the file's B,G,R,NIR.
        img = img[..., [2, 1, 0, 3]]
    else:
        if img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 1):
            raise DataError(f"{name}: grayscale image, expected a colour chip")
        if img.ndim != 3 or img.shape[2] not in (3, 4):
            raise DataError(f"{name}: unexpected image shape {img.shape}")
        if img.dtype != np.uint8:
            raise DataError(f"{name}: expected 8-bit colour, got {img.dtype}")
        if img.shape[2] == 4:
            img = img[..., :3]
    h, w = img.shape[:2]
    if h != w:
        raise DataError(f"{name}: chip is {w}x{h}, expected a square chip")
    if expected_size and h != expected_size:
        raise DataError(f"{name}: chip is {w}x{h}, expected {expected_size}x{expected_size}")
    return np.ascontiguousarray(img)


# The one rule for every path that comes from input (label CSVs, chip folders, predict's lists, a run's files):
# a chip is named, never given as a path (is_safe_name), and the file it names is read only if it resolves to a
# regular file inside the folder it is listed in, no larger than MAX_CHIP_BYTES. Symlinks within the folder (a
# dataset assembled by links) are fine; one that leads out of it, a FIFO, a device or a folder is refused by name.
MAX_CHIP_BYTES = 256 << 20  # far above any chip or scene tile the stages read; /dev/zero would never end


def resolve_inside(folder: str | Path, path: str | Path) -> Path:
    """``path`` with symlinks resolved, refused (DataError naming it) unless it lies inside ``folder``."""
    real_folder = os.path.realpath(folder)
    real = os.path.realpath(path)
    if real != real_folder and not real.startswith(real_folder.rstrip(os.sep) + os.sep):
        raise DataError(f"{shorten(path, PATH_LIMIT)}: leads outside its folder {shorten(folder, PATH_LIMIT)} "
                        f"(to {shorten(real, PATH_LIMIT)}); chips must be files inside it")
    return Path(real)


def file_kind(mode: int) -> str:
    """What a file that is not a regular file is, in the words of the input-path rule's refusals (chips here,
    scenes in :mod:`amazonmine.stages.scan`)."""
    return ("a FIFO" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "a folder" if stat.S_ISDIR(mode) else "a socket" if stat.S_ISSOCK(mode) else "not a regular file")


def _read_bytes(path: str | Path) -> bytes:
    """The whole file, in few system calls (the dehaze stage reads every chip of a dataset; measured in
    scripts/bench_dehaze.py), under the input-path rule above."""
    path = os.fspath(path)
    # A chip that is not a link sits in its folder by construction (names carry no separator): only a link needs
    # resolving. One lstat per chip instead of two realpath walks, in the dehaze stage's hot path.
    if stat.S_ISLNK(os.lstat(path).st_mode):
        resolve_inside(os.path.dirname(path) or ".", path)
    # O_NONBLOCK: opening a FIFO named like a chip must not wait for a writer that never comes.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_BINARY", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise DataError(f"{shorten(path, PATH_LIMIT)}: {file_kind(info.st_mode)}, not a regular file; chips "
                            f"must be plain image files")
        if info.st_size > MAX_CHIP_BYTES:
            raise DataError(f"{shorten(path, PATH_LIMIT)}: {info.st_size / 2**20:.0f} MiB, larger than any chip "
                            f"({MAX_CHIP_BYTES >> 20} MiB at most)")
        size = info.st_size
        data = os.read(fd, size + 1)  # one byte more than expected: a file that grew since fstat is read on
        if len(data) > size:
            parts, total = [data], len(data)
            while part := os.read(fd, 1 << 20):
                parts.append(part)
                total += len(part)
                if total > MAX_CHIP_BYTES:
                    raise DataError(f"{shorten(path, PATH_LIMIT)}: still growing past "
                                    f"{MAX_CHIP_BYTES >> 20} MiB while read")
            data = b"".join(parts)
        return data
    finally:
        os.close(fd)


def read_chip_bytes(path: str | Path) -> bytes:
    """The bytes of one chip file; a missing or unreadable file is a DataError naming it."""
    try:
        return _read_bytes(path)
    except FileNotFoundError:
        raise DataError(f"{shorten(path, PATH_LIMIT)}: image file not found") from None
    except OSError as exc:
        raise DataError(f"{shorten(path, PATH_LIMIT)}: cannot read ({exc.strerror or exc})") from None


def chip_format(path: str | Path) -> str:
    """'tif', 'png' or 'jpg' (anything else is decoded as JPEG), from the file's extension."""
    return CHIP_FORMATS.get(os.path.splitext(os.fspath(path))[1].lower(), "jpg")


def read_image(path: str | Path, expected_size: int = 0) -> np.ndarray:
    """Read one chip file (format from its extension) with the checks of :func:`decode_image`."""
    return decode_image(read_chip_bytes(path), str(path), chip_format(path), expected_size)


# --- the Kaggle layout -------------------------------------------------------------------------------------

@dataclass
class PlanetLayout:
    """Paths of one dataset in the Kaggle layout, resolved from the ``data`` config section."""

    root: Path
    labels_csv: Path
    train_dir: Path
    tif_dir: Path
    test_dirs: list[Path]
    sample_submission: Path
    image_format: str = "jpg"
    chip_size: int = 0
    labels: tuple[str, ...] = LABELS  # the run's vocabulary (data.labels)

    @classmethod
    def from_config(cls, data_cfg) -> "PlanetLayout":
        root = Path(data_cfg.root)
        return cls(
            root=root,
            labels_csv=root / data_cfg.labels_csv,
            train_dir=root / data_cfg.train_dir,
            tif_dir=root / data_cfg.tif_dir,
            test_dirs=[root / d for d in data_cfg.test_dirs],
            sample_submission=root / data_cfg.sample_submission,
            image_format=data_cfg.image_format,
            chip_size=data_cfg.chip_size,
            labels=tuple(getattr(data_cfg, "labels", LABELS)),
        )

    @property
    def ext(self) -> str:
        return IMAGE_EXTENSIONS[self.image_format]

    @property
    def image_dir(self) -> Path:
        return self.tif_dir if self.image_format == "tif" else self.train_dir

    def sample_chip(self) -> Path:
        """One training chip, whose header says how the chips were stored (JPEG quality, components); a
        pattern path that names the folder when there is none (the data is not on this machine)."""
        try:
            with os.scandir(self.image_dir) as entries:
                for entry in entries:
                    if entry.name.lower().endswith(self.ext) and not entry.name.startswith("."):
                        return Path(entry.path)
        except OSError:
            pass
        return self.image_dir / f"*{self.ext}"

    def load_train(self, check_files: bool = True):
        """Validated labels (DataFrame image_name, tags) and their (N, L) matrix over the layout's vocabulary
        (:data:`UNKNOWN` where a chip was never annotated for a label)."""
        if not self.root.is_dir():
            raise DataError(f"{self.root}: data folder not found "
                            f"(set data.root, or run 'amazonmine synth {self.root}')")
        frame = read_labels(self.labels_csv, labels=self.labels)
        if check_files:
            check_images_exist(frame["image_name"].tolist(), self.image_dir, self.ext)
        # The tags are rewritten in the vocabulary already: nothing is ignored (nor logged) a second time.
        return frame, tags_to_matrix(frame["tags"], str(self.labels_csv), self.labels)

    def list_test(self) -> list[tuple[str, Path]]:
        """(image_name, path) of every chip in the layout's format (.jpg or .tif) in the test folders that exist,
        sorted by name per folder."""
        found: list[tuple[str, Path]] = []
        ext = self.ext
        for folder in self.test_dirs:
            if not folder.is_dir():
                continue
            for entry in sorted(os.scandir(folder), key=lambda e: e.name):
                if entry.name.lower().endswith(ext) and not entry.name.startswith("."):
                    found.append((entry.name[:-len(ext)], Path(entry.path)))
        names = [n for n, _ in found]
        if len(set(names)) != len(names):
            seen: set[str] = set()
            dups = [n for n in names if n in seen or seen.add(n)]
            raise DataError(f"{self.root}: the same test chip name appears in two test folders: {_offenders(dups)}")
        return found


def load_matrix_csv(path: str | Path, id_column: str = "image_name", labels: Sequence[str] = LABELS):
    """Read a CSV of image_name plus one column per label (probabilities or 0/1) -> (names, matrix)."""
    import pandas as pd

    path = Path(path)
    # Names as written: pandas would read "0001" as 1 and "NA" as missing. So every cell is read as text and
    # only the label columns are made numbers; an empty or non-numeric one becomes NaN, for callers to report.
    frame = read_text_csv(path, "file", f"expected {id_column} and the {len(labels)} label columns")
    missing = [c for c in (id_column, *labels) if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {_offenders(missing)}")
    values = frame[list(labels)].apply(pd.to_numeric, errors="coerce")
    return frame[id_column].tolist(), values.to_numpy(dtype=np.float32)


# --- the dihedral group of the square ----------------------------------------------------------------------
# Satellite chips have no "up": the 8 rotations/flips are equally valid views. Transform k rotates by
# k % 4 quarter turns (counter-clockwise, as numpy.rot90) and then, for k >= 4, flips left-right. The split
# manifest, the training pipeline and test-time augmentation all use this one numbering.
DIHEDRAL = tuple(range(8))
DIHEDRAL_NAMES = ("identity", "rot90", "rot180", "rot270", "flip", "rot90+flip", "rot180+flip", "rot270+flip")


def apply_dihedral(img: np.ndarray, k: int) -> np.ndarray:
    """Apply dihedral transform ``k`` (0..7) to an (H, W, C) or (N, H, W, C) array (NumPy view)."""
    axes = (0, 1) if img.ndim == 3 else (1, 2)
    out = np.rot90(img, k % 4, axes=axes)
    if k >= 4:
        out = np.flip(out, axis=axes[1])
    return out


# --- chip encoders -----------------------------------------------------------------------------------------
# Below every stage that writes chips (synth paints them, dehaze rewrites them), so neither imports the other.

def encode_jpeg(bgr: np.ndarray, quality: int = 95, full_chroma: bool = False) -> bytes:
    """JPEG bytes; ``full_chroma`` keeps colour at full resolution (4:4:4) instead of OpenCV's default 4:2:0."""
    import cv2

    params = [cv2.IMWRITE_JPEG_QUALITY, quality]
    if full_chroma:
        params += [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
    ok, buf = cv2.imencode(".jpg", bgr, params)
    if not ok:  # pragma: no cover
        raise DataError("JPEG encoding failed")
    return buf.tobytes()


def encode_png(img: np.ndarray) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".png", img)
    if not ok:  # pragma: no cover
        raise DataError("PNG encoding failed")
    return buf.tobytes()


def encode_tif(bgrn: np.ndarray) -> bytes:
    """4-band uint16 B,G,R,NIR -> TIFF bytes tagged like Kaggle's train-tif-v2 files.

    Kaggle's files are uncompressed, contiguous, photometric RGB with the 4th band marked as associated
    alpha; writing the same tags keeps OpenCV's reading of our files identical to its reading of theirs
    (OpenCV's own 4-channel TIFF writer leaves the extra-sample tag out and every read then warns).
    """
    import io

    import tifffile

    buf = io.BytesIO()
    tifffile.imwrite(buf, np.ascontiguousarray(bgrn, dtype=np.uint16), photometric="rgb",
                     extrasamples=["assocalpha"], planarconfig="contig", compression=None, metadata=None)
    return buf.getvalue()
