"""Atomic writes: the file appears whole or not at all, and no temporary is left behind."""

from __future__ import annotations

import os

import pytest

from amazonmine.core import io as amio
from amazonmine.core.io import write_bytes_atomic

UNNAMED = bool(getattr(os, "O_TMPFILE", 0)) and os.path.isdir("/proc/self/fd")


@pytest.fixture(params=["unnamed", "named"], autouse=True)
def temporary_kind(request, monkeypatch):
    """Every test runs twice: with Linux's unnamed temporary (O_TMPFILE + link) and with the named-temporary
    path that other systems, and replacing an existing file, take."""
    if request.param == "named":
        monkeypatch.setattr(os, "O_TMPFILE", 0, raising=False)
    elif not UNNAMED:
        pytest.skip("no O_TMPFILE or /proc here")
    return request.param


def _entries(folder):
    return sorted(os.listdir(folder))

def test_write_creates_missing_folders_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "a" / "b" / "chip.jpg"
    write_bytes_atomic(target, b"first")
    write_bytes_atomic(target, b"second")  # replaces
    assert target.read_bytes() == b"second"
    assert _entries(target.parent) == ["chip.jpg"]

def test_leftover_temporary_of_the_same_pid_is_not_reused(tmp_path):
    # What a killed process with the same pid would have left: the write must not append to or rename it.
    stale = tmp_path / f".chip.{os.getpid()}.tmp.jpg"
    stale.write_bytes(b"half a chip")
    write_bytes_atomic(tmp_path / "chip.jpg", b"whole chip")
    assert (tmp_path / "chip.jpg").read_bytes() == b"whole chip"
    assert stale.read_bytes() == b"half a chip"
    assert _entries(tmp_path) == sorted(["chip.jpg", stale.name])

def test_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    target = tmp_path / "chip.jpg"
    target.write_bytes(b"old")

    with pytest.raises(TypeError):
        write_bytes_atomic(target, object())  # not bytes: the write itself fails
    assert target.read_bytes() == b"old"
    assert _entries(tmp_path) == ["chip.jpg"]


def test_permissions_follow_the_umask_on_every_path(tmp_path):
    umask = os.umask(0)
    os.umask(umask)
    expected = 0o666 & ~umask
    fresh = tmp_path / "new" / "chip.jpg"  # folder created on the way
    write_bytes_atomic(fresh, b"x")
    (tmp_path / f".taken.{os.getpid()}.tmp.jpg").write_bytes(b"")  # the pid's name is taken
    taken = tmp_path / "taken.jpg"
    write_bytes_atomic(taken, b"y")
    plain = tmp_path / "plain.jpg"
    write_bytes_atomic(plain, b"z")
    for path in (fresh, taken, plain):
        assert path.stat().st_mode & 0o777 == expected, path


def test_new_file_on_linux_is_never_renamed_into_place(tmp_path, monkeypatch, temporary_kind):
    renames = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (renames.append(b), real_replace(a, b)))
    write_bytes_atomic(tmp_path / "chip.jpg", b"new")
    write_bytes_atomic(tmp_path / "chip.jpg", b"newer")  # a link cannot replace: the rename does
    assert (tmp_path / "chip.jpg").read_bytes() == b"newer"
    assert _entries(tmp_path) == ["chip.jpg"]
    expected = [str(tmp_path / "chip.jpg")] * (1 if temporary_kind == "unnamed" else 2)
    assert [os.fspath(r) for r in renames] == expected


def test_write_interrupted_part_way_leaves_nothing(tmp_path, monkeypatch, temporary_kind):
    real_write = os.write
    named = []
    real_open_temporary = amio._open_temporary
    monkeypatch.setattr(amio, "_open_temporary", lambda *a: named.append(a) or real_open_temporary(*a))

    def write_half_then_fail(fd, data):
        real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", write_half_then_fail)
    monkeypatch.setattr(amio.os, "fdopen", lambda fd, mode: _FailingFile(fd))
    with pytest.raises(OSError, match="No space"):
        write_bytes_atomic(tmp_path / "chip.jpg", b"0123456789" * 100)
    assert _entries(tmp_path) == []
    # The unnamed write raised itself, rather than falling back to a named temporary that failed the same way.
    assert len(named) == (0 if temporary_kind == "unnamed" else 1)


def test_replacing_writes_once_through_the_named_temporary(tmp_path, monkeypatch):
    target = tmp_path / "chip.jpg"
    target.write_bytes(b"old")
    writes = []
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: writes.append(len(data)) or real_write(fd, data))
    write_bytes_atomic(target, b"new")
    assert target.read_bytes() == b"new"
    assert writes == []  # the unnamed path, which writes with os.write, was not tried for an existing file


class _FailingFile:
    """What os.fdopen returns, failing after half the bytes as a full disk would."""

    def __init__(self, fd):
        self.fd = fd

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        os.close(self.fd)

    def write(self, data):
        os.write(self.fd, data)
