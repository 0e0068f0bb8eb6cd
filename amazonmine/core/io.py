"""Atomic writes and locks.

Every artifact is written to a temporary file in the same folder and only then given its name, so a run killed
at any moment leaves either the old file or the new one, never half of one. On Linux the temporary has no name
at all (O_TMPFILE) and is linked in when whole; elsewhere, and to replace an existing file, it is a hidden
".<stem>.<tag>.tmp<ext>" renamed into place.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
from pathlib import Path
from typing import Any, Iterator

_TEMPORARY = re.compile(r"^\..+\.[0-9A-Za-z]+\.tmp[^/]*$")


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    # Keep the real extension last: some writers (OpenCV, Keras, matplotlib) choose the format by it.
    suffix = path.suffix if suffix is None else suffix
    try:
        fd, tmp = _open_temporary(str(path.parent), path.stem, suffix)
    except OSError as exc:
        raise _about_artifact(exc, path) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except OSError as exc:
        # The user knows the artifact, not our hidden temporary: name the artifact, and say nothing was replaced.
        raise _about_artifact(exc, path) from None
    except RuntimeError as exc:
        # h5py reports a full disk while Keras saves as "RuntimeError: Can't ..." with no errno.
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise OSError(errno.EIO, f"could not be written ({reason}; is the disk full?); the previous file, if "
                                 f"any, is unchanged", str(path)) from None
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _about_artifact(exc: OSError, path: Path) -> OSError:
    """The same error, naming ``path`` (the artifact) instead of a temporary file or no file at all."""
    if exc.errno is None:
        return exc
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        reason += " (free some space and run the stage again; the previous file, if any, is unchanged)"
    elif exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        reason += " (the folder is not writable: choose another run.dir or output folder)"
    return OSError(exc.errno, reason, str(path))


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Bytes to ``path``, whole or not at all. The hot path of dehaze (one call per chip)."""
    path = os.fspath(path)
    folder, name = os.path.split(path)
    if _write_unnamed(folder, path, data):
        return
    stem, suffix = os.path.splitext(name)
    try:
        fd, tmp = _open_temporary(folder, stem, suffix)
    except OSError as exc:
        raise _about_artifact(exc, Path(path)) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise _about_artifact(exc, Path(path)) from None
        raise


# Folders where an unnamed temporary file is not available (filesystem without O_TMPFILE, e.g. some network
# mounts; no /proc): asked once each, then written through a named temporary.
_NO_UNNAMED: set[str] = set()
# open(O_TMPFILE) errors that mean "not supported here" (EISDIR: kernels before 3.11), not a passing problem.
_UNSUPPORTED = {errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL}


def _write_unnamed(folder: str, path: str, data: bytes) -> bool:
    """Linux: write into an unnamed file in ``folder`` (O_TMPFILE) and give it its name once it is whole.

    Nothing is ever visible under a temporary name, so a killed process leaves nothing behind, and there is no
    rename (never slower than a plain open() and write where measured: scripts/bench_dehaze.py, README).
    Returns False, leaving nothing visible, where the caller must use a named temporary instead: no O_TMPFILE
    (other systems, some filesystems), a folder still to be created, no /proc, or ``path`` already exists (a
    new link cannot replace a file; the rename can). Any other error is left for the named path to report.
    """
    flag = getattr(os, "O_TMPFILE", 0)
    folder = folder or "."
    if not flag or folder in _NO_UNNAMED or os.link not in os.supports_dir_fd or os.path.lexists(path):
        return False
    try:
        fd = os.open(folder, flag | os.O_WRONLY, 0o666)  # permissions: the umask's, as for any new file
    except OSError as exc:
        if exc.errno in _UNSUPPORTED:
            _NO_UNNAMED.add(folder)
        return False
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        try:
            # linkat(AT_SYMLINK_FOLLOW) through /proc names the open file. os.link only calls linkat when given
            # a directory fd; the source path is absolute, so the kernel ignores which one.
            os.link(f"/proc/self/fd/{fd}", path, src_dir_fd=fd, follow_symlinks=True)
        except OSError as exc:
            # Created meanwhile, no /proc, ...: the unnamed file vanishes when closed, and the named-temporary
            # path writes again (and raises the real error if there is one).
            if exc.errno in (errno.ENOENT, errno.EPERM):  # no /proc, or linking not allowed: not worth a retry
                _NO_UNNAMED.add(folder)
            return False
        return True
    finally:
        os.close(fd)


def read_json(path: Path) -> dict:
    """A JSON object file (a summary, a resume state); unreadable or not an object is a one-line error."""
    from amazonmine.core.errors import AmazonmineError

    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise AmazonmineError(f"{path}: cannot read ({exc})") from None
    if not isinstance(data, dict):
        raise AmazonmineError(f"{path}: expected a JSON object")
    return data


_STAMP = "amazonmine_"


def stamp_h5(path: str | Path, **facts: float | int | str) -> None:
    """Write ``facts`` into an HDF5 file's root attributes (a model or weights file still at its temporary
    name): the file then says which epoch and score it holds, whatever happens between it and the next file.
    A ``.keras`` model is a zip archive, not HDF5: it is left as it is (and reads back with no facts)."""
    import h5py

    if not h5py.is_hdf5(path):
        return
    with h5py.File(path, "a") as f:
        for key, value in facts.items():
            f.attrs[_STAMP + key] = value


def _stamp(path: str | Path) -> dict:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return {k[len(_STAMP):]: v for k, v in f.attrs.items() if k.startswith(_STAMP)}
    except OSError:
        return {}


def read_h5_stamp(path: str | Path) -> dict[str, float]:
    """The numbers :func:`stamp_h5` wrote, or {} (an older file, or none at all)."""
    return {k: float(v) for k, v in _stamp(path).items() if not isinstance(v, (str, bytes))}


def read_h5_text(path: str | Path, key: str) -> str | None:
    """A text :func:`stamp_h5` wrote under ``key``, or None."""
    value = _stamp(path).get(key)
    return value.decode() if isinstance(value, bytes) else value if isinstance(value, str) else None


def _open_temporary(folder: str, stem: str, suffix: str) -> tuple[int, str]:
    """A new file ".<stem>.<tag>.tmp<suffix>" in ``folder`` (created if missing), opened for writing.

    The tag is the pid first: no random draws on the hot path. O_EXCL refuses a leftover of a killed process
    that had the same pid, or another thread writing the same file; those get a random tag. Permissions are
    the umask's, as for any file the user writes (mkstemp would make them owner-only).
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    tags = [str(os.getpid())] + [secrets.token_hex(4) for _ in range(20)]
    for attempt, tag in enumerate(tags):
        tmp = os.path.join(folder, f".{stem}.{tag}.tmp{suffix}")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileNotFoundError:
            if attempt:
                raise
            os.makedirs(folder or ".", exist_ok=True)
            with contextlib.suppress(FileExistsError):
                return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"{folder}: no free temporary name for {stem}{suffix}")


def write_text_atomic(path: str | Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def write_csv_atomic(path: str | Path, frame: Any, **kwargs: Any) -> None:
    """Write a pandas DataFrame as CSV atomically (index off unless asked)."""
    kwargs.setdefault("index", False)
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, **kwargs)


def _json_default(obj: Any) -> Any:
    # numpy scalars and arrays, Paths
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__}")


def is_temporary_name(name: str) -> bool:
    """Whether a file name is one of our write temporaries (".<stem>.<pid or random>.tmp<ext>")."""
    return name.startswith(".") and ".tmp" in name and _TEMPORARY.match(name) is not None


def remove_stale_temporaries(folder: str | Path, recursive: bool = False, skip: tuple[Path, ...] = ()) -> int:
    """Delete the temporaries a killed writer left in ``folder``. Call it only while no other process writes
    there (under the run-folder lock, or for a stage's own output folder): a temporary is never a finished
    artifact, so nothing is lost. Returns how many were removed."""
    folder = Path(folder)
    removed = 0
    if not folder.is_dir():
        return 0
    skipped = {os.path.realpath(p) for p in skip}
    for entry in os.scandir(folder):
        if entry.is_dir(follow_symlinks=False):
            if recursive and os.path.realpath(entry.path) not in skipped:
                removed += remove_stale_temporaries(entry.path, True, skip)
        elif is_temporary_name(entry.name) and entry.is_file(follow_symlinks=False):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
                removed += 1
    return removed


class LockedError(OSError):
    """Another process holds the lock."""


@contextlib.contextmanager
def exclusive_lock(lock_file: str | Path, what: str) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_file`` for the block, or refuse at once naming the holder.

    An advisory ``flock`` on an open file: the kernel releases it when the holder exits in any way, ``kill -9``
    included, so a stale lock never blocks (the file stays, holding the last holder's note). The note (pid,
    host, since, what) is written for the refusal message only. Limit: ``flock`` is not shared between machines
    on some network file systems.
    """
    import datetime
    import fcntl
    import socket

    lock_file = Path(lock_file)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "another process"
            raise LockedError(errno.EWOULDBLOCK, f"in use by {holder}; wait for it to finish or stop it",
                              str(lock_file.parent)) from None
        since = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        note = f"pid {os.getpid()} on {socket.gethostname()} since {since} ({what})".encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, note, 0)
        yield
    finally:
        os.close(fd)  # releases the lock


# --- a set of artifacts replaced as a whole ----------------------------------------------------------------

_COMMITTED = ".complete"  # in a staging folder: the staged set is whole and replaces the one in place


def _staging_dir(folder: Path, name: str) -> Path:
    return folder / f".{name}-staging"


def _set_list(folder: Path, name: str) -> Path:
    return folder / f".{name}-outputs.json"


def _plain_names(names: Any) -> list[str]:
    """The entries of a set's list that are plain names in its folder; anything else (a path, '..', not a
    string) is dropped, never followed."""
    if not isinstance(names, (list, tuple)):
        return []
    return [n for n in names if isinstance(n, str) and n not in ("", ".", "..") and "/" not in n
            and "\0" not in n and (os.altsep is None or os.altsep not in n)]


def _listed(path: Path) -> list[str] | None:
    """The "outputs" list of a set file (a commit marker or a folder's set list), or None if there is none."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    names = data.get("outputs") if isinstance(data, dict) else None
    return _plain_names(names) if isinstance(names, list) else None


def _remove_entry(path: Path) -> None:
    import shutil

    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def staged_set(folder: str | Path, name: str, legacy: tuple[str, ...] = (),
               keep: tuple[str, ...] = ()) -> Iterator[Path]:
    """Write a set of artifacts that replaces the previous set in ``folder`` as a whole, or not at all.

    The block writes every file of the new set into the yielded staging folder (``folder/.<name>-staging``, on
    the same file system). If the block raises, the staging folder is removed and ``folder`` is exactly as it
    was. If it returns, a commit marker listing the new set is written (atomically: the moment the new set
    wins), and :func:`finish_staged_set` moves it into place. The folder's current set is listed in
    ``folder/.<name>-outputs.json``; ``legacy`` names what a writer from before that list existed may have
    left; ``keep`` names what is never removed (a resume cache, a lock). One writer at a time: call it under
    the folder's lock. Disk: both sets exist until the swap.
    """
    import shutil

    folder = Path(folder)
    finish_staged_set(folder, name, legacy, keep)  # a swap a killed writer left half-done is completed first
    stage = _staging_dir(folder, name)
    stage.mkdir(parents=True)
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    names = sorted(e.name for e in os.scandir(stage) if not is_temporary_name(e.name) and e.name != _COMMITTED)
    write_json_atomic(stage / _COMMITTED, {"outputs": names})
    finish_staged_set(folder, name, legacy, keep)


def finish_staged_set(folder: str | Path, name: str, legacy: tuple[str, ...] = (),
                      keep: tuple[str, ...] = ()) -> None:
    """Complete a committed swap (see :func:`staged_set`); drop a staging folder that was never committed.

    Idempotent, so a writer killed half-way through a swap (some files moved, some not) leaves a folder the
    next call makes whole: what the previous set had and the new one lacks is removed, each staged file is
    renamed over its old version (one rename each), and only then is the set list rewritten.
    """
    import shutil

    folder = Path(folder)
    stage = _staging_dir(folder, name)
    if not stage.is_dir():
        return
    new = _listed(stage / _COMMITTED)
    if new is None:  # never committed: the set in place was not touched
        shutil.rmtree(stage)
        return
    set_list = _set_list(folder, name)
    protected = {stage.name, set_list.name, *keep}
    previous = set(_plain_names(list(legacy))) | set(_listed(set_list) or [])
    for old in sorted(previous - set(new) - protected):
        _remove_entry(folder / old)
    for entry in new:
        if entry in protected or not os.path.lexists(stage / entry):  # moved before a kill, or not ours to move
            continue
        target = folder / entry
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)  # os.replace cannot put a file or a folder over a folder that has files
        os.replace(stage / entry, target)
    write_json_atomic(set_list, {"outputs": [n for n in new if n not in protected]})
    shutil.rmtree(stage)
