"""Speed benchmark of the dehaze stage: run by hand (not a test), prints its ratios.

1. The math, one process, OpenCV single-threaded: ``amazonmine.core.haze.dehaze_image`` against the plain float64
   transcription of He, Sun & Tang's steps below (float64 arrays, a full argsort for the airlight, the exact
   guided filter in float64), same parameters, same decoded chips, the two timed alternately chip by chip.
   Target: >= 5x faster, outputs within >= 35 dB PSNR of the reference on every chip.
2. The whole stage: ``run_dehaze`` (what ``amazonmine dehaze SRC DST`` runs, minus interpreter start-up) over a
   folder of JPEGs against a bare loop over the same files with the same number of processes: read bytes,
   cv2.imdecode, JPEG encode with the stage's own settings (quality 95, full-resolution chroma like Kaggle's
   chips), write. A second bare loop writes with the stage's own atomic writer
   (amazonmine.core.io.write_bytes_atomic), so its ratio leaves the writer out, whatever the disk's writes cost that
   minute (on this project's VM they swing tenfold): what remains is the dehaze math, encoding the (larger)
   dehazed JPEG, and the stage's bookkeeping (folder scans, worker start, the stats CSV). The folder holds
   ``--copies`` copies of each chip (2,132 files from the 533 real chips by default), so the stage's fixed
   start-up weighs on the ratio about as little as on a real folder; the three loops take turns going first,
   each pass after the previous output is deleted and flushed to disk. Target: >= 0.5 of the bare loop's
   chips per second.

Between the two, the choices that the package's comments point here for: each step's cost per chip (decode,
math, the 4:4:4 encode, writes), whole loops in one process (why a worker reads a group of chips, dehazes it,
then writes it) and the worker body in a fresh process with and without ``amazonmine.core.workerpool.init_worker``.

Input: the real 256 px Kaggle chips in ../shared/data/planet_real_256/train-jpg when present (real pixels beat
synthetic ones), else ``--synthetic`` chips from ``amazonmine.stages.synth.paint_dataset``; or any ``--chips DIR``.
Everything is copied into a temporary folder first, so the source is never touched.

    python scripts/bench_dehaze.py                      # real chips if present
    python scripts/bench_dehaze.py --synthetic --n 300
    python scripts/bench_dehaze.py --chips /data/planet/train-jpg --workers 4
    TMPDIR=/dev/shm python scripts/bench_dehaze.py     # writes cost ~nothing: the strictest stage ratio
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from amazonmine.core.config import load_config
from amazonmine.core.data import DataError, read_image
from amazonmine.core.haze import DehazeParams, dehaze_image
from amazonmine.core.io import write_bytes_atomic
from amazonmine.core.workerpool import init_worker
from amazonmine.stages.dehaze import ChipJob, encode_output_jpeg, process_chunk, run_dehaze

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "planet_real_256" / "train-jpg"


# --- the reference: He et al. step by step, float64, no shortcuts ------------------------------------------

def reference_guided_filter(guide: np.ndarray, src: np.ndarray, radius: int, eps: float) -> np.ndarray:
    ksize = (2 * radius + 1, 2 * radius + 1)
    mean_i = cv2.boxFilter(guide, cv2.CV_64F, ksize)
    mean_p = cv2.boxFilter(src, cv2.CV_64F, ksize)
    corr_ii = cv2.boxFilter(guide * guide, cv2.CV_64F, ksize)
    corr_ip = cv2.boxFilter(guide * src, cv2.CV_64F, ksize)
    var_i = corr_ii - mean_i * mean_i
    cov_ip = corr_ip - mean_i * mean_p
    a = cov_ip / (var_i + eps)
    b = mean_p - a * mean_i
    return cv2.boxFilter(a, cv2.CV_64F, ksize) * guide + cv2.boxFilter(b, cv2.CV_64F, ksize)


def reference_dehaze(img: np.ndarray, p: DehazeParams) -> np.ndarray:
    """uint8 B, G, R chip -> uint8 dehazed chip, following the paper's equations in float64."""
    image = img.astype(np.float64) / 255.0
    kernel = np.ones((p.patch, p.patch), np.uint8)
    dark = cv2.erode(image.min(axis=2), kernel)
    flat = dark.ravel()
    k = max(1, int(round(p.top_fraction * flat.size)))
    order = np.argsort(flat)
    kth = flat[order[-k]]
    candidates = np.flatnonzero(flat >= kth)  # ties with the k-th included, the package's rule
    # Intensity summed on the 8-bit values: float sums of x/255 would break exact ties by rounding error.
    brightness = img.reshape(-1, 3)[candidates].astype(np.int64).sum(axis=1)
    airlight = np.maximum(image.reshape(-1, 3)[candidates[np.argmax(brightness)]], 1.0 / 255.0)
    t_raw = 1.0 - p.omega * cv2.erode((image / airlight).min(axis=2), kernel)
    grey = image @ np.array([0.114, 0.587, 0.299])  # ITU-R BT.601 luma of B, G, R, as OpenCV's grey
    t = reference_guided_filter(grey, t_raw, p.guided_radius, p.guided_eps)
    t = np.clip(t, p.t0, 1.0)
    recovered = (image - airlight) / t[..., None] + airlight
    return np.clip(np.round(recovered * 255.0), 0, 255).astype(np.uint8)


# --- inputs ----------------------------------------------------------------------------------------------------

def prepare_chips(args, work: Path) -> tuple[Path, str]:
    """Copy (or make) the benchmark's JPEGs into work/src; returns the folder and a description."""
    src = work / "src"
    src.mkdir()
    if args.synthetic or (args.chips is None and not REAL.is_dir()):
        from amazonmine.stages.synth import paint_dataset

        paint_dataset(work / "synth", n_train=args.n, n_test=0, size=args.size, seed=0, progress=False)
        for path in sorted((work / "synth" / "train-jpg").glob("*.jpg")):
            shutil.copyfile(path, src / path.name)
        return src, f"{args.n} synthetic {args.size} px chips (amazonmine.stages.synth)"

    origin = Path(args.chips) if args.chips else REAL
    files = sorted(p for p in origin.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))[: args.n]
    if not files:
        sys.exit(f"error: {origin}: no JPEG chips")
    reencoded = 0
    for path in files:
        try:
            read_image(path)
            shutil.copyfile(path, src / path.name)
        except DataError:
            # A chip the package's reader refuses would only be timed as an error: keep its pixels by
            # re-encoding, so both loops still work on the same, readable files.
            img = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR)
            if img is None:
                continue
            cv2.imwrite(str(src / path.name), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
            reencoded += 1
    n = len(list(src.iterdir()))
    note = f"{n} real chips from {origin}"
    if reencoded:
        note += f" ({reencoded} refused by amazonmine.core.data.read_image, re-encoded at quality 95 first)"
    return src, note


def replicate(src: Path, dst: Path, copies: int) -> Path:
    """``copies`` copies of every chip under new names: a folder big enough that the stage's fixed start-up
    (worker processes, folder scans, the stats file) weighs on the ratio as little as on a real 40k-chip run."""
    if copies <= 1:
        return src
    dst.mkdir()
    for path in sorted(src.iterdir()):
        for j in range(copies):
            shutil.copyfile(path, dst / f"{path.stem}_copy{j}{path.suffix}")
    return dst


# --- 1. the math ---------------------------------------------------------------------------------------------

def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))


def bench_math(src: Path, repeat: int) -> tuple[float, float, float]:
    init_worker()  # this process now runs as a stage worker does: OpenCV single-threaded, same allocator
    params = DehazeParams()
    images = [read_image(p) for p in sorted(src.iterdir())]
    fast_t = np.full(len(images), np.inf)
    ref_t = np.full(len(images), np.inf)
    scores, sq_err = [], 0.0
    for rep in range(repeat):
        for i, img in enumerate(images):
            t = time.perf_counter()
            fast = dehaze_image(img, params).image
            fast_t[i] = min(fast_t[i], time.perf_counter() - t)
            t = time.perf_counter()
            ref = reference_dehaze(img, params)
            ref_t[i] = min(ref_t[i], time.perf_counter() - t)
            if rep == 0:
                scores.append(psnr(fast, ref))
                sq_err += float(np.mean((fast.astype(np.float64) - ref) ** 2))
    pooled = 10 * np.log10(255.0 ** 2 / max(sq_err / len(images), 1e-12))
    print(f"math, 1 process: package {fast_t.sum() / len(images) * 1e3:.2f} ms/chip, "
          f"float64 reference {ref_t.sum() / len(images) * 1e3:.2f} ms/chip")
    return float(ref_t.sum() / fast_t.sum()), float(min(scores)), float(pooled)


def breakdown(src: Path, work: Path) -> None:
    """Per-chip cost of each step of both loops, in this process: says where a ratio below 1 comes from."""
    files = sorted(src.iterdir())
    out = work / "steps"
    out.mkdir()
    params = DehazeParams()
    images = [read_image(p) for p in files]
    encoded = [encode_output_jpeg(img) for img in images]

    def per_chip(fn) -> float:
        start = time.perf_counter()
        for i, path in enumerate(files):
            fn(i, path)
        return (time.perf_counter() - start) / len(files) * 1e3

    steps = {
        "cv2.imdecode": per_chip(lambda i, p: cv2.imdecode(np.fromfile(p, np.uint8), cv2.IMREAD_UNCHANGED)),
        "read_image": per_chip(lambda i, p: read_image(p)),
        "dehaze math": per_chip(lambda i, p: dehaze_image(images[i], params)),
        "encode": per_chip(lambda i, p: encode_output_jpeg(images[i])),
        "plain write": per_chip(lambda i, p: (out / f"plain_{p.name}").write_bytes(encoded[i])),
        "atomic write": per_chip(lambda i, p: write_bytes_atomic(out / p.name, encoded[i])),
    }
    print("per chip, 1 process: " + ", ".join(f"{k} {v:.2f} ms" for k, v in steps.items()))
    loop_gap(files, out, params, steps["dehaze math"])
    worker_setup(files, out, params)


def loop_gap(files: list[Path], out: Path, params: DehazeParams, math_alone: float, rounds: int = 3) -> None:
    """Where the stage's time per chip goes beyond the bare loop's, in one process, whole loops over the files:
    the bare loop (read, decode, encode, write through the stage's writer), the same with the dehaze math
    between decode and encode, and the stage's worker body (which reads a group of chips, dehazes it, then
    writes it, and checks what it reads). The math run between file reads and writes costs more than the math
    alone over decoded chips; the gap is printed."""
    expected = read_image(files[0]).shape[0]

    def bare(dst: Path, with_math: bool) -> None:
        for path in files:
            img = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_UNCHANGED)
            if with_math:
                img = dehaze_image(img, params).image
            write_bytes_atomic(dst / path.name, encode_output_jpeg(img))

    def stage_worker(dst: Path) -> None:
        jobs = [ChipJob(p.name, str(p), str(dst / p.name)) for p in files]
        for start in range(0, len(jobs), 64):  # the stage's chunk size
            process_chunk(jobs[start:start + 64], params, expected)

    loops = {"bare": lambda dst: bare(dst, False), "bare + math": lambda dst: bare(dst, True),
             "stage worker": stage_worker}
    best = {name: float("inf") for name in loops}
    for rep in range(rounds):
        for name, loop in loops.items():
            dst = out / f"gap_{rep}_{name.replace(' ', '_').replace('+', 'and')}"
            dst.mkdir()  # a fresh folder each pass: writing over existing files would cost differently
            start = time.perf_counter()
            loop(dst)
            best[name] = min(best[name], (time.perf_counter() - start) / len(files) * 1e3)
            shutil.rmtree(dst)
    in_loop = best["bare + math"] - best["bare"]
    in_stage = best["stage worker"] - best["bare"]
    print(f"whole loops, 1 process, best of {rounds}: bare {best['bare']:.2f} ms/chip; bare with the math "
          f"{best['bare + math']:.2f} (the math costs {in_loop:.2f} there, {math_alone:.2f} alone); the stage's "
          f"worker {best['stage worker']:.2f} (costs {in_stage:.2f} more than bare: {in_stage - math_alone:+.2f} "
          f"beyond the math alone); ratio bare / stage worker {best['bare'] / best['stage worker']:.2f}")


def _worker_body_ms(files: list[str], dst: str, params: DehazeParams, expected: int) -> float:
    """The stage's worker body over ``files`` in the calling process, in the stage's chunks: ms per chip."""
    jobs = [ChipJob(Path(f).name, f, str(Path(dst) / Path(f).name)) for f in files]
    start = time.perf_counter()
    for i in range(0, len(jobs), 64):
        process_chunk(jobs[i:i + 64], params, expected)
    return (time.perf_counter() - start) / len(jobs) * 1e3


def worker_setup(files: list[Path], out: Path, params: DehazeParams, rounds: int = 3) -> None:
    """What amazonmine.core.workerpool.init_worker (single-threaded OpenCV, glibc's allocator thresholds raised) is
    worth: the stage's worker body in a fresh process without it and with it."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")  # a fresh process each pass: the allocator settings cannot be undone
    expected = read_image(files[0]).shape[0]
    best = {"plain": float("inf"), "init_worker": float("inf")}
    for rep in range(rounds):
        for name, init in (("plain", None), ("init_worker", init_worker)):
            dst = out / f"setup_{rep}_{name}"
            dst.mkdir()
            with ProcessPoolExecutor(max_workers=1, mp_context=ctx, initializer=init) as pool:
                ms = pool.submit(_worker_body_ms, [str(f) for f in files], str(dst), params, expected).result()
            best[name] = min(best[name], ms)
            shutil.rmtree(dst)
    print(f"worker set-up, a fresh process, best of {rounds}: the stage's worker body {best['plain']:.2f} ms/chip "
          f"as the process starts, {best['init_worker']:.2f} after init_worker "
          f"(ratio {best['plain'] / best['init_worker']:.2f})")


# --- 2. the whole stage --------------------------------------------------------------------------------------

def _bare_one(job: tuple[str, str, bool]) -> None:
    src, dst, atomic = job
    img = cv2.imdecode(np.fromfile(src, np.uint8), cv2.IMREAD_UNCHANGED)
    # Encoded as the stage encodes its output (quality, chroma sampling): the same JPEG I/O on both sides.
    data = encode_output_jpeg(img)
    if atomic:
        write_bytes_atomic(dst, data)
    else:
        Path(dst).write_bytes(data)


def bare_loop(src: Path, dst: Path, workers: int, atomic: bool = False) -> float:
    dst.mkdir()
    jobs = [(str(p), str(dst / p.name), atomic) for p in sorted(src.iterdir())]
    start = time.perf_counter()
    # Same worker set-up as the stage's, so the ratio measures the stage's work, not process settings.
    with ProcessPoolExecutor(max_workers=workers, initializer=init_worker) as pool:
        list(pool.map(_bare_one, jobs, chunksize=max(1, len(jobs) // (workers * 8))))
    return time.perf_counter() - start


def bench_stage(src: Path, work: Path, workers: int, repeat: int) -> tuple[float, float]:
    """Returns the stage's throughput over the bare loop's: (plain writes, the stage's own atomic writer)."""
    cfg = load_config(None, [f"run.dir={work / 'run'}"])
    n = len(list(src.iterdir()))
    loops = ("bare", "bare_atomic", "stage")
    seconds: dict[str, list[float]] = {name: [] for name in loops}
    for rep in range(repeat):
        # Rotate which loop goes first, and start each from the same state: the previous pass's output
        # deleted and flushed (os.sync), or its writeback would be billed to whichever loop runs next.
        for name in loops[rep % 3:] + loops[:rep % 3]:
            shutil.rmtree(work / name, ignore_errors=True)
            os.sync()
            if name != "stage":
                seconds[name].append(bare_loop(src, work / name, workers, atomic=name == "bare_atomic"))
                continue
            start = time.perf_counter()
            summary = run_dehaze(cfg, src=src, dst=work / "stage", workers=workers)
            seconds[name].append(time.perf_counter() - start)
            if summary.failed or summary.processed != n:
                sys.exit(f"error: the stage did not process every chip: {summary.headline()}")
    best = {name: min(s) for name, s in seconds.items()}
    runs = "; ".join(f"{name} {', '.join(f'{x:.2f}' for x in s)} s" for name, s in seconds.items())
    print(f"stage, {workers} processes, {n} chips, best of {repeat}: bare decode+encode {n / best['bare']:.0f} "
          f"chips/s (plain writes), {n / best['bare_atomic']:.0f} chips/s (written by amazonmine.core.io like the "
          f"stage's); run_dehaze {n / best['stage']:.0f} chips/s (runs: {runs})")
    # Each pass's ratio against the bare pass of the same round too: their spread shows the machine's noise.
    per_round = sorted(b / s for b, s in zip(seconds["bare"], seconds["stage"]))
    print(f"stage / bare ratio per round: {', '.join(f'{r:.2f}' for r in per_round)} "
          f"(median {float(np.median(per_round)):.2f})")
    return best["bare"] / best["stage"], best["bare_atomic"] / best["stage"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chips", help="folder of JPEG chips (default: the real 256 px chips in ../shared)")
    parser.add_argument("--synthetic", action="store_true", help="use amazonmine.stages.synth chips")
    parser.add_argument("--n", type=int, default=400, help="chips to use (default 400)")
    parser.add_argument("--size", type=int, default=256, help="synthetic chip side (default 256)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: all cores)")
    parser.add_argument("--repeat", type=int, default=3, help="timed passes; the best counts (default 3)")
    parser.add_argument("--copies", type=int, default=4,
                        help="the stage comparison runs over this many copies of each chip (default 4)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_dehaze_") as tmp:
        work = Path(tmp)
        src, note = prepare_chips(args, work)
        print(f"input: {note}")
        speedup, worst, pooled = bench_math(src, args.repeat)
        breakdown(src, work)
        ratio, strict = bench_stage(replicate(src, work / "src_copies", args.copies), work, args.workers,
                                    args.repeat)
    print(f"(1) math speed-up vs float64 reference: {speedup:.1f}x (target >= 5); "
          f"PSNR vs reference: worst chip {worst:.1f} dB, pooled {pooled:.1f} dB (target >= 35)")
    print(f"(2) stage throughput / bare decode+encode loop: {ratio:.2f} (target >= 0.5); "
          f"with the bare loop writing through the stage's own writer: {strict:.2f}")


if __name__ == "__main__":
    main()
