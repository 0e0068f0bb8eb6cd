"""A canary for the suite's own machinery: tests that share an ``xdist_group`` must run on one pytest-xdist
worker. The cluster tests rely on it (two Dask or multi-worker clusters side by side compete for the cores and
ports) and so do the resume-equality cases (they share one uninterrupted reference run). pytest 9.2 with
pytest-xdist 3.8 dropped the groups without a word (xdist issue 1386; pytest is pinned below 9.2 for it): if a
later pair does the same, these two tests fail.

Each writes the worker it runs on, then reads the other's: both write before either reads, so whichever reads
last sees both, and on two workers it fails."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.xdist_group("canary")


def _check_same_worker(tmp_path_factory, me: str, other: str) -> None:
    # The session's base folder is shared by all workers (each has its own popen-gwN below it); under -n 0 it
    # is the run's own folder, and the check holds trivially.
    shared = Path(tmp_path_factory.getbasetemp()).parent if os.environ.get("PYTEST_XDIST_WORKER") else \
        Path(tmp_path_factory.getbasetemp())
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    (shared / f"xdist_canary_{me}").write_text(worker)
    seen = shared / f"xdist_canary_{other}"
    if seen.is_file():
        assert seen.read_text() == worker, (
            f"xdist_group 'canary' ran on workers {seen.read_text()} and {worker}: --dist loadgroup is not "
            "grouping under this pytest/pytest-xdist pair, so the cluster and resume-equality tests are not "
            "kept together either; pip install -e '.[test]' for the pinned versions")


def test_a_group_runs_on_one_worker_first_half(tmp_path_factory):
    _check_same_worker(tmp_path_factory, "a", "b")


def test_a_group_runs_on_one_worker_second_half(tmp_path_factory):
    _check_same_worker(tmp_path_factory, "b", "a")
