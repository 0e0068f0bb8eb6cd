"""Which reduction turns a 256-px Planet chip into the competition's 32-px thumbnail?

    .venv/bin/python scripts/bench_tile_match.py [--real ../shared/data/planet_real_256] [--thumbs data/planet_32px]
    .venv/bin/python scripts/bench_tile_match.py --f2 --config configs/planet32.yaml   # + out-of-fold F2 per path

A model trained on the public 32-px thumbnails only sees scenes the way it saw its chips if scan reduces its
tiles the way those thumbnails were made, and nobody wrote down how they were made. The 533 real 256-px chips
of ../shared are all among the thumbnails under the same names, so every candidate reduction can be compared
with the real thing, pixel for pixel: mean absolute error and PSNR (both decoded with OpenCV, B,G,R), and the
Laplacian energy (mean squared Laplacian of the grey image) as a ratio to the thumbnails' (a reduction that
keeps too much fine detail scores > 1; the issue measured our INTER_AREA chips at about 1.8).

With ``--analytic`` the 16-bit stretch scan applies to analytic scenes is compared with the real JPEGs of the
same chips (the 8 of the 10 real TIFs whose bands correlate with their JPEG), for a few percentile ranges and
gammas. With ``--f2`` the run of ``--config`` (one finished fold, trained on the 32-px thumbnails) then scores the chips
of that fold, which it never trained on, from the thumbnails and from each of a few tile paths, with the run's
thresholds (thresholds.json, else 0.2): the mean F2 gap to the thumbnails is what a scan loses by the way it cuts.

What the files themselves say (their JPEG headers): the thumbnails are 4-component JPEGs with component ids
C, M, Y, K, an Adobe marker (transform 0) and every component quantised with the standard luminance table at
quality 75, i.e. exactly what Pillow writes for a CMYK image with its default quality. Pillow opens the Kaggle
originals as CMYK too. So the candidates include Pillow's own resamplers applied in CMYK and saved by Pillow,
beside OpenCV's, each with and without a JPEG round trip, and scan's own tile path
(amazonmine.scanning.tiling.tile_to_chip, which includes its JPEG). The table is sorted by mean absolute error.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def laplacian_energy(bgr: np.ndarray) -> float:
    import cv2

    grey = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY).astype(np.float32)
    return float(np.mean(cv2.Laplacian(grey, cv2.CV_32F) ** 2))


# --- reductions: 256-px original (its path) -> a Pillow image or a B,G,R array at the thumbnail size ----------

def _pil(path):
    from PIL import Image

    im = Image.open(path)
    im.load()
    return im


def pil_resize(method: str, reducing_gap: float | None = None):
    def reduce(path, size):
        from PIL import Image

        filt = getattr(Image.Resampling, method)
        return _pil(path).resize((size, size), filt, reducing_gap=reducing_gap)

    return reduce


def pil_thumbnail(resample: str, reducing_gap: float | None):
    def reduce(path, size):
        from PIL import Image

        im = Image.open(path)  # thumbnail drafts (DCT-scaled decode) before it resamples
        im.thumbnail((size, size), getattr(Image.Resampling, resample), reducing_gap=reducing_gap)
        return im

    return reduce


def pil_draft(path, size):
    im = Image_open_draft(path, size)
    return im


def Image_open_draft(path, size):
    from PIL import Image

    im = Image.open(path)
    im.draft(im.mode, (size, size))  # libjpeg's scaled IDCT: 1/8 gives each 8x8 block's mean
    im.load()
    if im.size != (size, size):
        im = im.resize((size, size), Image.Resampling.BOX)
    return im


def cv2_resize(interp: str):
    def reduce(path, size):
        import cv2

        return cv2.resize(cv2.imread(str(path)), (size, size), interpolation=getattr(cv2, interp))

    return reduce


def cv2_two_step(first: str, second: str, mid: int):
    def reduce(path, size):
        import cv2

        img = cv2.resize(cv2.imread(str(path)), (mid, mid), interpolation=getattr(cv2, first))
        return cv2.resize(img, (size, size), interpolation=getattr(cv2, second))

    return reduce


def cv2_blur_area(sigma: float):
    def reduce(path, size):
        import cv2

        img = cv2.GaussianBlur(cv2.imread(str(path)), (0, 0), sigma)
        return cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)

    return reduce


def cv2_reduced_decode(path, size):
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_REDUCED_COLOR_8)
    return img if img.shape[0] == size else cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)


def scan_tile_path(path, size):
    """What ``amazonmine scan`` does with a tile: the R,G,B pixels a scene holds -> a chip like the training ones."""
    import cv2

    from amazonmine.scanning.tiling import ChipLook, tile_to_chip

    rgb = np.ascontiguousarray(cv2.imread(str(path))[..., ::-1])
    return tile_to_chip(rgb, ChipLook("jpg", size, "cmyk", 75))


def pil_from_bgr_then(method: str):
    """Pillow's resampler on the OpenCV-decoded pixels (R,G,B): what scan can do with a tile read by rasterio."""

    def reduce(path, size):
        import cv2
        from PIL import Image

        rgb = cv2.imread(str(path))[..., ::-1]
        return Image.fromarray(np.ascontiguousarray(rgb)).resize((size, size), getattr(Image.Resampling, method))

    return reduce


# --- encodings: reduced image -> B,G,R uint8 as OpenCV decodes the stored file ------------------------------

def to_bgr(im) -> np.ndarray:
    if isinstance(im, np.ndarray):
        return im
    return np.ascontiguousarray(np.asarray(im.convert("RGB"))[..., ::-1])


def enc_none(im):
    return to_bgr(im)


def enc_cv2(quality: int, subsampling_444: bool):
    def encode(im):
        import cv2

        params = [cv2.IMWRITE_JPEG_QUALITY, quality]
        if subsampling_444:
            params += [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
        ok, buf = cv2.imencode(".jpg", to_bgr(im), params)
        return cv2.imdecode(buf, cv2.IMREAD_COLOR)

    return encode


def enc_pil_cmyk(quality: int):
    """Pillow's CMYK JPEG (what the thumbnails are), decoded by OpenCV."""

    def encode(im):
        import cv2
        from PIL import Image

        if isinstance(im, np.ndarray):
            im = Image.fromarray(np.ascontiguousarray(im[..., ::-1]))
        if im.mode != "CMYK":
            im = im.convert("CMYK")
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=quality)
        return cv2.imdecode(np.frombuffer(buf.getvalue(), np.uint8), cv2.IMREAD_COLOR)

    return encode


REDUCTIONS = {
    "scan's tile path (AREA in CMYK + q75)": scan_tile_path,
    "cv2 INTER_AREA": cv2_resize("INTER_AREA"),
    "cv2 INTER_LINEAR": cv2_resize("INTER_LINEAR"),
    "cv2 INTER_CUBIC": cv2_resize("INTER_CUBIC"),
    "cv2 IMREAD_REDUCED_8 (DCT 1/8)": cv2_reduced_decode,
    "cv2 AREA 256->64, CUBIC ->32": cv2_two_step("INTER_AREA", "INTER_CUBIC", 64),
    "cv2 AREA 256->64, LINEAR ->32": cv2_two_step("INTER_AREA", "INTER_LINEAR", 64),
    "cv2 Gaussian s=2 + AREA": cv2_blur_area(2.0),
    "cv2 Gaussian s=4 + AREA": cv2_blur_area(4.0),
    "PIL BOX (CMYK)": pil_resize("BOX"),
    "PIL BILINEAR (CMYK)": pil_resize("BILINEAR"),
    "PIL BICUBIC (CMYK)": pil_resize("BICUBIC"),
    "PIL LANCZOS (CMYK)": pil_resize("LANCZOS"),
    "PIL HAMMING (CMYK)": pil_resize("HAMMING"),
    "PIL NEAREST (CMYK)": pil_resize("NEAREST"),
    "PIL BICUBIC gap=2 (CMYK)": pil_resize("BICUBIC", 2.0),
    "PIL LANCZOS gap=3 (CMYK)": pil_resize("LANCZOS", 3.0),
    "PIL thumbnail() BICUBIC gap=2": pil_thumbnail("BICUBIC", 2.0),
    "PIL thumbnail() LANCZOS no gap": pil_thumbnail("LANCZOS", None),
    "PIL draft 1/8": pil_draft,
    "PIL BILINEAR on OpenCV RGB": pil_from_bgr_then("BILINEAR"),
    "PIL BICUBIC on OpenCV RGB": pil_from_bgr_then("BICUBIC"),
    "PIL LANCZOS on OpenCV RGB": pil_from_bgr_then("LANCZOS"),
}

ENCODINGS = {
    "none": enc_none,
    "cv2 q95 4:2:0": enc_cv2(95, False),
    "cv2 q95 4:4:4": enc_cv2(95, True),
    "cv2 q75 4:2:0": enc_cv2(75, False),
    "cv2 q75 4:4:4": enc_cv2(75, True),
    "PIL CMYK q75": enc_pil_cmyk(75),
    "PIL CMYK q85": enc_pil_cmyk(85),
    "PIL CMYK q95": enc_pil_cmyk(95),
}


def score(candidates: np.ndarray, thumbs: np.ndarray, thumb_energy: float) -> dict:
    diff = candidates.astype(np.float64) - thumbs.astype(np.float64)
    mse = np.mean(diff ** 2, axis=(1, 2, 3))
    psnr = 10 * np.log10(255.0 ** 2 / np.maximum(mse, 1e-12))
    energy = np.mean([laplacian_energy(c) for c in candidates])
    return {"mae": float(np.mean(np.abs(diff))), "psnr": float(np.mean(psnr)), "lap": energy / thumb_energy,
            "exact": float(np.mean(np.all(diff == 0, axis=(1, 2, 3))))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--real", type=Path, default=REPO.parent / "shared" / "data" / "planet_real_256")
    ap.add_argument("--thumbs", type=Path, default=REPO / "data" / "planet_32px")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--n", type=int, default=0, help="first N chips only (0 = all)")
    ap.add_argument("--quick", action="store_true", help="only the encodings 'none' and 'PIL CMYK q75'")
    ap.add_argument("--f2", action="store_true", help="also score the run's out-of-fold chips by each tile path")
    ap.add_argument("--analytic", action="store_true", help="also measure the 16-bit -> 8-bit stretch on real TIFs")
    ap.add_argument("--config", default=str(REPO / "configs" / "planet32.yaml"))
    ap.add_argument("--set", dest="sets", action="append", default=[], help="config override (section.key=value)")
    args = ap.parse_args()

    import cv2

    names = sorted(p.stem for p in (args.real / "train-jpg").glob("*.jpg"))
    names = [n for n in names if (args.thumbs / "train-jpg" / f"{n}.jpg").is_file()]
    if args.n:
        names = names[:args.n]
    if not names:
        print(f"error: no chip of {args.real}/train-jpg is also in {args.thumbs}/train-jpg", file=sys.stderr)
        return 2
    thumbs = np.stack([cv2.imread(str(args.thumbs / "train-jpg" / f"{n}.jpg")) for n in names])
    thumb_energy = float(np.mean([laplacian_energy(t) for t in thumbs]))
    originals = [args.real / "train-jpg" / f"{n}.jpg" for n in names]
    encodings = {k: ENCODINGS[k] for k in (("none", "PIL CMYK q75") if args.quick else ENCODINGS)}
    print(f"{len(names)} chips: 256-px originals from {args.real}, thumbnails from {args.thumbs}; "
          f"thumbnails' Laplacian energy {thumb_energy:.1f}")
    rows = []
    began = time.perf_counter()
    for rname, reduce in REDUCTIONS.items():
        reduced = [reduce(p, args.size) for p in originals]
        for ename, encode in encodings.items():
            if rname.startswith("scan's") and ename != "none":
                continue  # its JPEG is part of it
            out = np.stack([encode(im) for im in reduced])
            rows.append((rname, ename, score(out, thumbs, thumb_energy)))
    rows.sort(key=lambda r: r[2]["mae"])
    print(f"\n{'reduction':<34} {'stored as':<14} {'MAE':>6} {'PSNR dB':>8} {'Laplacian':>9} {'identical':>9}")
    for rname, ename, s in rows:
        print(f"{rname:<34} {ename:<14} {s['mae']:6.3f} {s['psnr']:8.2f} {s['lap']:8.2f}x {s['exact']:8.1%}")
    print(f"\n({len(rows)} candidates in {time.perf_counter() - began:.0f} s; Laplacian = candidate / thumbnails; "
          f"identical = share of chips equal to the thumbnail in every pixel)")
    if args.analytic:
        analytic_stretch(args)
    if args.f2:
        return out_of_fold_f2(args, names, thumbs, originals)
    return 0


# train_0 (haze) and train_10000 (plain forest) are nearly featureless: their TIF and JPEG do not correlate.
UNUSABLE_PAIRS = ("train_0", "train_10000")


def analytic_stretch(args) -> None:
    """How close a 16-bit analytic chip, stretched to 8 bit as scan stretches a scene, comes to the same chip's
    JPEG: per-band percentiles pooled over all 10 TIFs (as over a scene), then a power 1/gamma."""
    import cv2
    import tifffile

    from amazonmine.scanning.tiling import to_8bit

    tifs = sorted((args.real / "train-tif-v2").glob("*.tif"))
    if not tifs:
        print(f"\n(no TIFs in {args.real}/train-tif-v2: analytic stretch not measured)")
        return
    bands = {p.stem: np.moveaxis(tifffile.imread(p)[..., [2, 1, 0]], -1, 0) for p in tifs}  # B,G,R,NIR -> R,G,B
    pooled = np.concatenate([b.reshape(3, -1) for b in bands.values()], axis=1)
    pairs = [(n, b, cv2.imread(str(args.real / "train-jpg" / f"{n}.jpg"))[..., ::-1])
             for n, b in bands.items() if n not in UNUSABLE_PAIRS]
    print(f"\n16-bit analytic -> 8 bit: mean |stretched TIF - JPEG| over {len(pairs)} real pairs "
          f"({', '.join(n for n, _, _ in pairs)}), grey levels")
    gammas = (1.0, 1.5, 1.8, 2.0, 2.2, 2.5)
    print(f"{'percentiles':<14}" + "".join(f"{'gamma ' + str(g):>11}" for g in gammas))
    for pct in ((2.0, 98.0), (1.0, 99.0), (0.5, 99.5), (0.1, 99.9)):
        stretch = [tuple(np.percentile(band, pct)) for band in pooled]
        row = []
        for g in gammas:
            row.append(np.mean([np.abs(to_8bit(np.moveaxis(b, 0, -1), stretch, g).astype(float) - j).mean()
                                for _, b, j in pairs]))
        print(f"{str(pct):<14}" + "".join(f"{v:11.1f}" for v in row))


F2_PATHS = {
    "scan's tile path (AREA in CMYK + Pillow CMYK q75)": ("scan's tile path (AREA in CMYK + q75)", "none"),
    "issue: cv2 INTER_AREA + cv2 JPEG q95": ("cv2 INTER_AREA", "cv2 q95 4:2:0"),
    "issue: PIL BILINEAR + cv2 JPEG q95": ("PIL BILINEAR on OpenCV RGB", "cv2 q95 4:2:0"),
    "issue: cv2 INTER_AREA + cv2 JPEG q75": ("cv2 INTER_AREA", "cv2 q75 4:2:0"),
    "cv2 INTER_AREA, no JPEG": ("cv2 INTER_AREA", "none"),
}


def out_of_fold_f2(args, names, thumbs, originals) -> int:

    from amazonmine.core.config import load_config
    from amazonmine.core.data import LABEL_INDEX, read_labels, tags_to_matrix
    from amazonmine.core.decisions import decode
    from amazonmine.core.metrics import mean_f2, per_image_f2, per_label_scores
    from amazonmine.core.runfolder import RunFolder
    from amazonmine.neural.predictor import Predictor

    cfg = load_config(args.config, args.sets)
    predictor = Predictor.from_run(cfg)
    if len(predictor.model_paths) != 1:
        print("error: --f2 needs a run with exactly one finished fold (out-of-fold chips are that fold's)",
              file=sys.stderr)
        return 2
    fold = int(predictor.model_paths[0].parent.name.removeprefix("fold"))
    folds = RunFolder.from_config(cfg).read_folds().set_index("image_name")["fold"]
    keep = [i for i, n in enumerate(names) if n in folds.index and int(folds[n]) == fold]
    labels = read_labels(args.real / "train_v2.csv").set_index("image_name").loc[[names[i] for i in keep], "tags"]
    y = tags_to_matrix(labels).astype(bool)
    thresholds = predictor.thresholds
    source = "thresholds.json" if thresholds is not None else "flat 0.2 (no thresholds.json)"
    thresholds = np.full(17, 0.2) if thresholds is None else thresholds

    def score(chips: np.ndarray) -> tuple[float, dict]:
        probs = predictor.predict(chips)
        decided = decode(probs, thresholds, predictor.weather_decoding)
        per = per_label_scores(y, decided)
        pick = {f"{lab} {m}": per[m][LABEL_INDEX[lab]] for lab in ("road", "partly_cloudy")
                for m in ("recall", "precision")}
        pick["per chip"] = per_image_f2(y, decided)
        return mean_f2(y, decided), pick

    print(f"\nout of fold: {len(keep)} of the {len(names)} chips are in fold {fold} of {cfg.run.dir} "
          f"(model {predictor.model_paths[0]}, TTA {predictor.tta}, thresholds: {source})")
    base, base_detail = score(thumbs[keep])
    print(f"{'chips scored from':<52} {'mean F2':>8} {'gap':>7} {'gap 95% CI':>16}  road rec/prec  "
          f"partly_cloudy rec/prec")
    # The gap's interval: the same chips resampled for both paths (1,000 draws, seeded), so it is paired.
    draws = np.random.default_rng(0).integers(0, len(keep), size=(1000, len(keep)))

    def line(name, f2, d):
        diff = d["per chip"] - base_detail["per chip"]
        lo, hi = np.percentile(diff[draws].mean(axis=1), [2.5, 97.5]) if diff.any() else (0.0, 0.0)
        print(f"{name:<52} {f2:8.4f} {f2 - base:+7.4f} {f'{lo:+.3f} to {hi:+.3f}':>16}  "
              f"{d['road recall']:.2f}/{d['road precision']:.2f}"
              f"        {d['partly_cloudy recall']:.2f}/{d['partly_cloudy precision']:.2f}")

    line("the public 32-px thumbnails", base, base_detail)
    for name, (reduction, encoding) in F2_PATHS.items():
        chips = np.stack([ENCODINGS[encoding](REDUCTIONS[reduction](originals[i], args.size)) for i in keep])
        f2, detail = score(chips)
        line(name, f2, detail)
    return 0


if __name__ == "__main__":
    sys.exit(main())
