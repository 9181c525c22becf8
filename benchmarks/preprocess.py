"""Preprocessing speed and fidelity on EyePACS-sized JPEGs, baselines measured in the same run.

Paths compared per image (3888×2592-class JPEGs: synthetic fundus photos + the real skimage retina upscaled):
  naive     full decode + Graham's steps at the photo's full resolution (blur σ = r/30 on the full image), resize
  graham    full decode + Graham's script order (scale the retina to the work radius first, then the steps)
  project   header-driven reduced decode (IMREAD_REDUCED_*) + the same steps at the work radius

Prints images/s of each, the ratios, PSNR of `project` against `naive` (whole image and retina region; the
requirement is ≥ 35 dB) and against `graham`, and Beam throughput with 1 vs 2 workers.

    .venv/bin/python benchmarks/preprocess.py            # ~2 minutes
    .venv/bin/python benchmarks/preprocess.py --quick    # smaller
"""

from __future__ import annotations

import argparse
import csv
import logging
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
        from components.common.synthetic import render_fundus

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


def timed(fn, images: list[tuple[str, bytes]], params: PreprocessParams, repeats: int) -> tuple[float, list]:
    outputs = [fn(data, params) for _, data in images]  # warm-up, and the outputs compared below
    start = time.perf_counter()
    for _ in range(repeats):
        for _, data in images:
            fn(data, params)
    return repeats * len(images) / (time.perf_counter() - start), outputs


def beam_throughput(images: list[tuple[str, bytes]], copies: int, image_size: int, workers: int, mode: str) -> float:
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
        start = time.perf_counter()
        manifest = run_preprocess(
            "fundus", str(root), str(Path(tmp) / "out"), PreprocessParams(image_size=image_size),
            beam_args=[f"--direct_num_workers={workers}", f"--direct_running_mode={mode}"],
            progress=lambda _line: None,
        )
        elapsed = time.perf_counter() - start
        assert manifest["num_images"] == copies, manifest["rejected_count"]
    return copies / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer, smaller images")
    parser.add_argument("--image-size", type=int, default=None, help="output side (default 512; --quick 256)")
    parser.add_argument("--beam-mode", default="multi_processing",
                        choices=["multi_processing", "multi_threading", "in_memory"])
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    height = 1296 if args.quick else 2592
    n_syn, n_real = (1, 1) if args.quick else (2, 2)
    repeats = 1 if args.quick else 2
    copies = 16 if args.quick else 48
    args.image_size = args.image_size or (256 if args.quick else 512)
    params = PreprocessParams(image_size=args.image_size)

    images = eyepacs_sized_jpegs(n_syn, n_real, height)
    first = decode_image(images[0][1], "x")
    print(f"{len(images)} JPEGs of {first.shape[1]}×{first.shape[0]} px, "
          f"{np.mean([len(d) for _, d in images]) / 1e6:.2f} MB average; output {args.image_size} px")

    naive_ips, naive_out = timed(naive, images, params, 1)
    graham_ips, graham_out = timed(graham, images, params, repeats)
    project_ips, project_out = timed(project, images, params, repeats)
    print(f"naive   (full decode, full-res steps): {naive_ips:7.2f} images/s")
    print(f"graham  (full decode, scale first)   : {graham_ips:7.2f} images/s")
    print(f"project (reduced decode)             : {project_ips:7.2f} images/s")
    print(f"speed-up project/naive  = {project_ips / naive_ips:.1f}x")
    print(f"speed-up project/graham = {project_ips / graham_ips:.2f}x")

    region = circle_mask(args.image_size, params.rim_fraction * args.image_size / 2)
    for (name, _), ours, ref, gra in zip(images, project_out, naive_out, graham_out, strict=True):
        print(f"PSNR {name:12s}: vs naive {psnr(ours, ref):5.1f} dB (retina region {psnr(ours, ref, region):5.1f} dB)"
              f", vs graham {psnr(ours, gra):5.1f} dB")
    worst = min(psnr(o, r, region) for o, r in zip(project_out, naive_out, strict=True))
    print(f"worst retina-region PSNR vs naive: {worst:.1f} dB ({'meets' if worst >= 35 else 'BELOW'} the 35 dB bound)")

    one = beam_throughput(images, copies, args.image_size, 1, args.beam_mode)
    two = beam_throughput(images, copies, args.image_size, 2, args.beam_mode)
    print(f"Beam ({args.beam_mode}, {copies} images, wall time incl. start-up): 1 worker {one:.2f} images/s, "
          f"2 workers {two:.2f} images/s, ratio {two / one:.2f}x")


if __name__ == "__main__":
    main()
