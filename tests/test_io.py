"""Atomic writes: the file appears whole or not at all, and no temporary is left behind."""

from __future__ import annotations

import os

import pytest

from amazonmine.io import write_bytes_atomic

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
