"""Header-driven reduced decoding, its parity with a full decode, and readable rejections."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from components.common.errors import ImageRejected
from components.preprocess.decode import decode_image, read_header, reduction_factor
from components.preprocess.ops import PreprocessParams, circle_mask, preprocess_image, psnr, reference_fundus


@pytest.fixture(scope="module")
def big_retina_jpeg(retina_rgb, encode) -> bytes:
    """The real retina upscaled onto a 2:3 frame: an EyePACS-shaped JPEG, kept small for test speed."""
    up = cv2.resize(retina_rgb, (1296, 1296), interpolation=cv2.INTER_CUBIC)
    frame = np.zeros((1296, 1944, 3), np.uint8)
    frame[:, 324:1620] = up
    return encode.jpeg(frame)


def test_header_gives_size_without_decoding(big_retina_jpeg, encode):
    header = read_header(big_retina_jpeg, "x")
    assert (header.format, header.width, header.height, header.channels, header.bit_depth) == ("jpeg", 1944, 1296, 3, 8)
    gray = read_header(encode.png(np.zeros((20, 30), np.uint8)), "y")
    assert (gray.format, gray.width, gray.height, gray.channels) == ("png", 30, 20, 1)


def test_reduction_is_the_largest_that_stays_above_target():
    assert reduction_factor(3888, 2592, 512, margin=2.2) == 2  # 1296 >= 2.2·512 > 648
    assert reduction_factor(3888, 2592, 128) == 4  # 1/8 (DC only) is never used
    assert reduction_factor(3888, 2592, 512) == 2  # the default decode_oversample 2.0: 1296 >= 2·512 > 648
    assert reduction_factor(3888, 2592, 512, margin=1.15) == 4  # 648 >= 1.15·512
    assert PreprocessParams().decode_reduction(3888, 2592) == 2
    assert PreprocessParams(reduced_decode=False).decode_reduction(3888, 2592) == 1
    assert reduction_factor(300, 200, 512) == 1
    assert reduction_factor(3888, 2592, None) == 1


def test_reduced_decode_is_smaller_and_matches_full_resolution_reference(big_retina_jpeg):
    params = PreprocessParams(image_size=128)
    reduced = decode_image(big_retina_jpeg, "x", target_size=128)
    full = decode_image(big_retina_jpeg, "x")
    assert reduced.shape == (324, 486, 3) and full.shape == (1296, 1944, 3)  # 1/4, never 1/8
    ours = preprocess_image(reduced, params).image
    reference = reference_fundus(full, params)
    assert psnr(ours, reference) >= 35
    assert psnr(ours, reference, circle_mask(128, 0.9 * 64)) >= 35


def test_decode_returns_rgb(encode):
    img = np.zeros((64, 64, 3), np.uint8)
    img[..., 0] = 200  # red
    out = decode_image(encode.png(img), "red")
    assert out[..., 0].mean() > 190 and out[..., 2].mean() < 10


def test_grey_is_fine_for_oct_and_rejected_for_fundus(encode):
    gray = np.full((64, 64), 100, np.uint8)
    assert decode_image(encode.jpeg(gray), "o", color=False).shape == (64, 64)
    with pytest.raises(ImageRejected, match="grayscale"):
        decode_image(encode.jpeg(gray), "f", color=True)


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda e: b"", "empty file"),
        (lambda e: b"id,level\n1,2\n", "not an image"),
        (lambda e: e.jpeg(np.full((64, 64, 3), 90, np.uint8))[:300], "truncated JPEG"),
        (lambda e: e.png(np.zeros((64, 64, 4), np.uint8)), "alpha"),
        (lambda e: e.png(np.zeros((64, 64), np.uint16)), "16-bit"),
        (lambda e: e.png(np.zeros((8, 64, 3), np.uint8)), "too small"),
    ],
)
def test_bad_bytes_raise_readable_rejections(make, reason, encode):
    with pytest.raises(ImageRejected, match=reason) as info:
        decode_image(make(encode), "img_7")
    assert info.value.image_id == "img_7" and str(info.value).endswith("img_7")


def test_huge_image_is_rejected_from_its_header():
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    bomb = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 50_000, 50_000, 8, 2, 0, 0, 0))
    bomb += chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b"")
    with pytest.raises(ImageRejected, match="too large"):
        decode_image(bomb, "bomb")


@pytest.mark.slow
@pytest.mark.parametrize("source", ["real", "synthetic-1", "synthetic-2", "synthetic-4", "synthetic-5"])
def test_default_512px_output_on_eyepacs_sized_frames_matches_the_reference(source, retina_rgb, encode):
    """The issue's bound at the default size, on 3888x2592 JPEGs: PSNR >= 35 dB against Graham's steps on
    the full decode, over the frame and inside the retina (synthetic photos are the harder case: sharp
    vessels and small lesions). Seeds 2 and 5 are the sharpest: from the 1/4 DCT decode (the former default)
    their retina region scored 34.2 and 33.6 dB; from the 1/2 decode 39.6 and 39.3 dB."""
    from infra.local.synthetic import render_fundus

    if source == "real":
        frame = np.zeros((2592, 3888, 3), np.uint8)
        frame[:, 648:3240] = cv2.resize(retina_rgb, (2592, 2592), interpolation=cv2.INTER_CUBIC)
    else:  # the generator draws a whole photo (retina on a wider black frame), as a camera does
        seed = int(source.rsplit("-", 1)[1])
        photo = render_fundus(seed % 5, np.random.default_rng(seed), size=2592)[0]
        frame = cv2.resize(photo, (3888, 2592), interpolation=cv2.INTER_CUBIC) if photo.shape[:2] != (2592, 3888) \
            else photo
    data = encode.jpeg(frame)
    params = PreprocessParams()  # image_size 512, the defaults
    reduced = decode_image(data, source, target_size=params.image_size, margin=params.decode_oversample)
    assert reduced.shape[0] < 2592  # a DCT-reduced decode was used
    ours = preprocess_image(reduced, params).image
    reference = reference_fundus(decode_image(data, source), params)
    assert ours.shape == (512, 512, 3)
    assert psnr(ours, reference) >= 35
    assert psnr(ours, reference, circle_mask(512, 0.9 * 256)) >= 35


@pytest.mark.parametrize("factor", [1, 2, 3, 4, 6, 8, 16])
def test_block_means_are_exact(factor):
    """decode.block_mean_float (the Gaussian step's reduced copy) is the exact float mean of each block for the
    blur reductions (2, 4, 8), with no uint8 rounding, trailing partial blocks dropped; decode.block_mean (the thumbnail) is 2×2 means
    rounded half up as OpenCV's fast path, then the odd rest."""
    from components.preprocess.decode import block_mean, block_mean_float

    rng = np.random.default_rng(factor)
    image = rng.integers(0, 256, (8 * 16 + 5, 8 * 12 + 3, 3), np.uint8)
    image[:16, :16] = 255  # the largest sums
    h, w = image.shape[0] // factor, image.shape[1] // factor
    blocks = image[: h * factor, : w * factor].astype(np.float64).reshape(h, factor, w, factor, 3)
    exact = blocks.mean(axis=(1, 3))
    ours = block_mean_float(image, factor)
    assert ours.dtype == np.float32 and ours.shape == exact.shape
    if factor in (1, 2, 4, 8):  # the blur reductions: exact to the last bit
        np.testing.assert_array_equal(ours, exact.astype(np.float32))
    else:  # any other factor: a float32 mean, within float rounding
        np.testing.assert_allclose(ours, exact, rtol=1e-6)

    halved = image
    rest = factor
    while rest % 2 == 0:
        hh, ww = halved.shape[0] // 2, halved.shape[1] // 2
        sums = halved[: 2 * hh, : 2 * ww].astype(np.int64).reshape(hh, 2, ww, 2, 3).sum(axis=(1, 3))
        halved, rest = ((sums + 2) // 4).astype(np.uint8), rest // 2
    thumb = block_mean(image, factor)
    if rest == 1:
        np.testing.assert_array_equal(thumb, halved)
    else:
        assert thumb.shape == (halved.shape[0] // rest, halved.shape[1] // rest, 3)
