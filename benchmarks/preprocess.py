"""Preprocessing speed and fidelity on EyePACS-sized JPEGs, baselines measured in the same run.

Paths compared per image (3888×2592-class JPEGs: synthetic fundus photos + the real skimage retina upscaled):
  naive     full decode + Graham's steps at the photo's full resolution (blur σ = r/30 on the full image), resize
  graham    full decode + Graham's script order (scale the retina to the work radius first, then the steps)
  project   header-driven reduced decode (IMREAD_REDUCED_*) + the same steps at the work radius
  project-1.15  the same with `decode_oversample=1.15` (one DCT scale smaller: faster, lower PSNR)

Per core: OpenCV runs on `--threads` threads (default 1), so images/s are per core, as Beam workers use
them. Prints images/s of each, the ratios against both baselines, PSNR of each project path against
`naive` (whole image and retina region; the requirement is ≥ 35 dB) and against `graham`, and Beam
throughput with 1 vs 2 workers: whole run, and in the workers (Beam metrics: first image started to last
finished). OpenCV in the workers runs on one thread each (`OPENCV_FOR_THREADS_NUM=1`, set here) so the
worker count, not OpenCV's own threads, decides how many cores are busy.

    .venv/bin/python benchmarks/preprocess.py            # ~2 minutes
    .venv/bin/python benchmarks/preprocess.py --quick    # smaller
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from components.preprocess.decode import decode_image
from components.preprocess.ops import PreprocessParams, circle_mask, preprocess_image, psnr, reference_fundus


def eyepacs_sized_jpegs(n_synthetic: int, n_real: int, height: int) -> list[tuple[str, bytes]]:
    """JPEGs of EyePACS size (height 2592 by default, 3:2-ish frame), quality 92 like the camera's export."""
    out = []
    try:
        from infra.local.synthetic import render_fundus

        rng = np.random.default_rng(0)
        for i in range(n_synthetic):
            rgb, _ = render_fundus(i % 5, rng, size=height)
            out.append((f"synthetic-{i}", rgb))
    except ImportError:  # pragma: no cover - foundation module missing
        pass
    from skimage import data

    retina = data.retina()
    width = round(height * 1.5)
    for i in range(n_real):
        frame = np.zeros((height, width, 3), np.uint8)
        side = height if i % 2 == 0 else int(height * 0.9)  # one clipped-to-frame, one with a margin
        up = cv2.resize(retina, (side, side), interpolation=cv2.INTER_CUBIC)
        y0, x0 = (height - side) // 2, (width - side) // 2
        frame[y0 : y0 + side, x0 : x0 + side] = up
        # sensor noise, so the JPEG carries real-photo entropy (decode cost depends on it)
        noise = np.random.default_rng(i).normal(0, 2.0, frame.shape).astype(np.float32)
        frame = np.clip(frame + noise * (frame > 8), 0, 255).astype(np.uint8)
        out.append((f"retina-{i}", frame))
    encoded = []
    for name, rgb in out:
        ok, buf = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 92])
        assert ok
        encoded.append((name, buf.tobytes()))
    return encoded


def naive(data: bytes, params: PreprocessParams) -> np.ndarray:
    return reference_fundus(decode_image(data, "x"), params)


def graham(data: bytes, params: PreprocessParams) -> np.ndarray:
    return preprocess_image(decode_image(data, "x"), params).image


def project(data: bytes, params: PreprocessParams) -> np.ndarray:
    image = decode_image(data, "x", target_size=params.image_size, margin=params.decode_oversample)
    return preprocess_image(image, params).image


def project_fast(data: bytes, params: PreprocessParams) -> np.ndarray:
    return project(data, PreprocessParams(**{**params.to_dict(), "decode_oversample": 1.15}))


def timed(fn, images: list[tuple[str, bytes]], params: PreprocessParams, repeats: int) -> tuple[float, list]:
    outputs = [fn(data, params) for _, data in images]  # warm-up, and the outputs compared below
    start = time.perf_counter()
    for _ in range(repeats):
        for _, data in images:
            fn(data, params)
    return repeats * len(images) / (time.perf_counter() - start), outputs


def beam_throughput(images: list[tuple[str, bytes]], copies: int, image_size: int, workers: int, mode: str) -> tuple[float, float]:
    """(images/s over the whole run, images/s in the workers: first image started to last finished, from the
    pipeline's Beam metrics, i.e. without the runner's start-up and the shard writing)."""
    from components.preprocess.pipeline import run_preprocess

    with tempfile.TemporaryDirectory(prefix="retina-bench-") as tmp:
        root = Path(tmp) / "raw"
        (root / "train").mkdir(parents=True)
        rows = []
        for i in range(copies):
            name, data = images[i % len(images)]
            image_id = f"{i + 1}_left"
            (root / "train" / f"{image_id}.jpeg").write_bytes(data)
            rows.append((image_id, i % 5))
        with (root / "trainLabels.csv").open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["image", "level"])
            writer.writerows(rows)
        manifest = run_preprocess(
            "fundus", str(root), str(Path(tmp) / "out"), PreprocessParams(image_size=image_size),
            beam_args=[f"--direct_num_workers={workers}", f"--direct_running_mode={mode}",
                       "--default_sdk_harness_log_level=WARNING"],
            progress=lambda _line: None,
        )
        assert manifest["num_images"] == copies, manifest["rejected_count"]
    timing = manifest["timing"]
    return copies / timing["wall_seconds"], timing.get("images_per_second", float("nan"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer, smaller images")
    parser.add_argument("--image-size", type=int, default=None, help="output side (default 512; --quick 256)")
    parser.add_argument("--beam-mode", default="multi_processing",
                        choices=["multi_processing", "multi_threading", "in_memory"])
    parser.add_argument("--threads", type=int, default=1, help="OpenCV threads for the per-image paths (1 = per core)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    cv2.setNumThreads(args.threads)
    os.environ["OPENCV_FOR_THREADS_NUM"] = "1"  # Beam worker processes: one core per worker
    height = 1296 if args.quick else 2592
    n_syn, n_real = (1, 1) if args.quick else (2, 2)
    repeats = 1 if args.quick else 2
    copies = 16 if args.quick else 48
    args.image_size = args.image_size or (256 if args.quick else 512)
    params = PreprocessParams(image_size=args.image_size)

    images = eyepacs_sized_jpegs(n_syn, n_real, height)
    first = decode_image(images[0][1], "x")
    print(f"{len(images)} JPEGs of {first.shape[1]}×{first.shape[0]} px, "
          f"{np.mean([len(d) for _, d in images]) / 1e6:.2f} MB average; output {args.image_size} px; "
          f"OpenCV threads {cv2.getNumThreads()}")

    naive_ips, naive_out = timed(naive, images, params, 1)
    graham_ips, graham_out = timed(graham, images, params, repeats)
    project_ips, project_out = timed(project, images, params, repeats)
    fast_ips, fast_out = timed(project_fast, images, params, repeats)
    print(f"naive        (full decode, full-res steps): {naive_ips:7.2f} images/s")
    print(f"graham       (full decode, scale first)   : {graham_ips:7.2f} images/s")
    print(f"project      (reduced decode, default)    : {project_ips:7.2f} images/s   "
          f"{project_ips / naive_ips:5.1f}x naive  {project_ips / graham_ips:5.2f}x graham")
    print(f"project-1.15 (one DCT scale smaller)      : {fast_ips:7.2f} images/s   "
          f"{fast_ips / naive_ips:5.1f}x naive  {fast_ips / graham_ips:5.2f}x graham")

    region = circle_mask(args.image_size, params.rim_fraction * args.image_size / 2)
    for label, outputs in (("project", project_out), ("project-1.15", fast_out)):
        for (name, _), ours, ref, gra in zip(images, outputs, naive_out, graham_out, strict=True):
            print(f"PSNR {label:12s} {name:12s}: vs naive {psnr(ours, ref):5.1f} dB "
                  f"(retina region {psnr(ours, ref, region):5.1f} dB), vs graham {psnr(ours, gra):5.1f} dB")
        worst = min(psnr(o, r, region) for o, r in zip(outputs, naive_out, strict=True))
        print(f"  worst retina-region PSNR of {label} vs naive: {worst:.1f} dB "
              f"({'meets' if worst >= 35 else 'BELOW'} the 35 dB bound)")

    one_wall, one_steady = beam_throughput(images, copies, args.image_size, 1, args.beam_mode)
    two_wall, two_steady = beam_throughput(images, copies, args.image_size, 2, args.beam_mode)
    print(f"Beam ({args.beam_mode}, {copies} images): wall time incl. start-up 1 worker {one_wall:.2f} images/s, "
          f"2 workers {two_wall:.2f} images/s, ratio {two_wall / one_wall:.2f}x")
    print(f"Beam in the workers (metrics, start-up excluded): 1 worker {one_steady:.2f} images/s, "
          f"2 workers {two_steady:.2f} images/s, ratio {two_steady / one_steady:.2f}x")


if __name__ == "__main__":
    main()
