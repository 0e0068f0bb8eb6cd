"""Worker processes for per-chip OpenCV work: how each worker is set up, and the pool that runs them.

A stage that processes a folder chip by chip (``dehaze``) runs one process per core. Three things about those
processes are not obvious and live here, apart from the work itself:

- **The allocator.** A chip of work allocates a dozen arrays of 64-800 KB. glibc serves those with mmap/munmap
  by default (and trims the heap back on free), so every chip page-faults its buffers in anew, which cost a good
  part of the math's time. Raising the mmap and trim thresholds (``mallopt`` through ctypes) lets freed buffers
  be reused as they are; OpenCV's own thread pool is turned off, as the processes already fill the cores.
  ``scripts/bench_dehaze.py`` times the stage's worker body in a fresh process with and without this set-up.
- **Start-up.** ``forkserver``, not ``fork``: workers start clean even if the parent has TensorFlow (or an
  OpenCV thread pool) loaded; the server imports the worker's modules once and each worker is a cheap fork of it.
- **Endings.** Ctrl-C reaches the whole process group: only the parent handles it (it cancels and saves its
  state) instead of every worker printing a traceback. A parent killed outright (SIGKILL, the OOM killer) takes
  its workers with it: each watches a pipe from the parent and exits when it closes.

Nothing here knows what the work is; it imports nothing from the package.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator, Sequence


def init_worker() -> None:
    """Set up this process as a worker: single-threaded OpenCV and an allocator that keeps chip-sized buffers."""
    import ctypes

    import cv2

    cv2.setNumThreads(1)
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (macOS, musl): keep the platform's allocator as it is
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # mallopt parameters from glibc's malloc.h
    libc.mallopt(m_mmap_threshold, 32 << 20)
    libc.mallopt(m_trim_threshold, 128 << 20)


@contextlib.contextmanager
def as_worker() -> Iterator[None]:
    """Run this process as a worker for a while (one worker: the caller works in-process).

    Without it an in-process loop runs far slower than a pool worker, all of it from glibc's allocator
    thresholds (OpenCV's thread count alone made no difference). Those thresholds stay raised for the rest of
    the process: up to 128 MB of freed memory is kept for reuse rather than returned to the system. OpenCV's
    thread count is restored.
    """
    import cv2

    threads = cv2.getNumThreads()
    init_worker()
    try:
        yield
    finally:
        cv2.setNumThreads(threads)


def _pool_worker_init(parent_alive) -> None:
    import signal
    import threading
    from multiprocessing.connection import wait

    init_worker()
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def exit_with_parent() -> None:
        # The parent never writes to this pipe: it becomes readable (EOF) only when the parent's end closes,
        # i.e. when the parent is gone. Pool workers otherwise outlive a killed parent, blocked on their queue.
        wait([parent_alive])
        os._exit(1)

    threading.Thread(target=exit_with_parent, name="exit-with-parent", daemon=True).start()


@contextlib.contextmanager
def worker_pool(n_workers: int, preload: Sequence[str] = ()):
    """A started pool of ``n_workers`` worker processes, or None for 1 (the caller works in-process).

    ``preload``: modules the fork server imports once for every worker (the module holding the work).
    Every worker is started before the pool is handed over, so they boot while the caller does other work.
    Leaving the block waits for the workers' running tasks and cancels the queued ones.
    """
    if n_workers <= 1:
        yield None
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    ctx = mp.get_context("forkserver")
    # "__main__" (the default preload) must stay, or every worker would re-run the parent's main script.
    ctx.set_forkserver_preload(["__main__", *preload, "cv2", "numpy"])
    parent_alive, keep_alive = ctx.Pipe(duplex=False)
    pool = ProcessPoolExecutor(max_workers=n_workers, mp_context=ctx, initializer=_pool_worker_init,
                               initargs=(parent_alive,))
    try:
        for _ in range(n_workers):  # each submission starts a process while none is idle: start them all now
            pool.submit(int)
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        keep_alive.close()
        parent_alive.close()
