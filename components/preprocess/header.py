"""The input policy, decided from an image file's header before any pixel is decoded; pure Python.

One rule set, two implementations that mirror it step for step: this module (the Beam path, through
`decode.decode_image`) and `serving.tf_preprocess` (the same marker walk and the same checks as TF ops
inside the SavedModel). The reasons below are the exact texts both paths give, so an image is accepted or
refused the same way with the same reason on either path (tests/preprocess/test_parity.py checks it).

- Formats: JPEG and PNG (what `tf.io` can decode in the serving graph too). Anything else: refused.
- Size: width·height > `max_pixels` is refused from the header (decompression-bomb guard); < 16 px a side too.
- Samples: 8-bit only (12-bit JPEG, 16-bit PNG refused: their useful range depends on the device);
  alpha (PNG grey+alpha / RGBA) refused; CMYK/4-component JPEG refused; grey refused for fundus.
- EXIF orientation (JPEG APP1, tag 0x0112): applied by both paths after decoding, by the same rule
  (`ORIENTATION_STEPS`), so a phone-rotated photo gives the same tensor everywhere.
- Colour profiles (ICC, APP2 / iCCP): ignored by both decoders alike: pixel values are used as stored,
  i.e. as sRGB (fundus cameras write sRGB); no path converts, so no path differs.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from components.common.errors import ImageRejected

MIN_SIDE = 16
JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EXIF_MAGIC = b"Exif\x00\x00"
ORIENTATION_TAG = 0x0112
MAX_IFD_ENTRIES = 64  # entries of IFD0 searched for the orientation tag
HEADER_SCAN_BYTES = 1 << 16  # the frame header must lie in the first 64 KiB (it does in any camera file)
# Start-of-frame markers (baseline, progressive, lossless, arithmetic); C4, C8, CC are not frames.
SOF_MARKERS = (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF)
STANDALONE_MARKERS = (0x01, *range(0xD0, 0xD9))  # TEM, RST0-7, SOI: no length field
# EXIF orientation -> (transpose, flip rows, flip columns), applied in that order
ORIENTATION_STEPS = {1: (False, False, False), 2: (False, False, True), 3: (False, True, True),
                     4: (False, True, False), 5: (True, False, False), 6: (True, False, True),
                     7: (True, True, True), 8: (True, True, False)}

# Reasons (dead-letter lines, serving errors). Both paths build their message from these.
EMPTY = "empty file (0 bytes)"
NOT_AN_IMAGE = "not an image (unrecognised file header; JPEG or PNG expected)"
CORRUPT_JPEG_HEADER = "corrupt or truncated JPEG header (no frame header)"
CORRUPT_PNG_HEADER = "corrupt or truncated PNG header (no IHDR chunk)"
TOO_LARGE = "image too large"
TOO_SMALL = "image too small"
NOT_8_BIT = "more than 8 bits per sample (8-bit expected)"
ALPHA = "PNG with alpha channel (RGB or grey expected)"
NOT_RGB_JPEG = "JPEG with 2 or 4 colour components (CMYK?; RGB expected)"
GRAYSCALE = "grayscale image (fundus preprocessing needs a colour photo)"
TRUNCATED_JPEG = "truncated JPEG (no end-of-image marker)"
TRUNCATED_PNG = "truncated PNG (no IEND chunk)"


def too_large(max_pixels: int) -> str:
    return f"{TOO_LARGE} (limit {max_pixels} px)"


@dataclass(frozen=True)
class ImageHeader:
    format: str  # "jpeg" | "png"
    width: int  # as stored (before EXIF orientation)
    height: int
    channels: int  # colour channels the file stores (1 grey, 3 colour; PNG grey+alpha 2, RGBA 4; CMYK 4)
    bit_depth: int
    has_alpha: bool = False
    orientation: int = 1  # EXIF orientation 1..8 (1: as stored)


def _u16(data: bytes, pos: int, little: bool = False) -> int:
    return struct.unpack("<H" if little else ">H", data[pos : pos + 2])[0] if pos + 2 <= len(data) else 0


def _u32(data: bytes, pos: int, little: bool = False) -> int:
    return struct.unpack("<I" if little else ">I", data[pos : pos + 4])[0] if pos + 4 <= len(data) else 0


def exif_orientation(data: bytes, tiff: int) -> int:
    """Orientation tag of IFD0 of the TIFF structure at `tiff` (an EXIF APP1 payload); 1 if absent or invalid."""
    little = data[tiff : tiff + 2] == b"II"
    ifd = tiff + _u32(data, tiff + 4, little)
    count = min(_u16(data, ifd, little), MAX_IFD_ENTRIES)
    for i in range(count):
        entry = ifd + 2 + 12 * i
        if _u16(data, entry, little) == ORIENTATION_TAG:
            value = _u16(data, entry + 8, little)
            return value if 1 <= value <= 8 else 1
    return 1


def _jpeg_header(data: bytes, image_id: str) -> ImageHeader:
    """Walk the marker segments to the frame header, noting the EXIF orientation on the way."""
    n = min(len(data), HEADER_SCAN_BYTES)
    pos, orientation = 2, 1
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            break
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in STANDALONE_MARKERS:
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            break
        length = _u16(data, pos + 2)
        if marker == 0xE1 and data[pos + 4 : pos + 10] == EXIF_MAGIC:
            orientation = exif_orientation(data, pos + 10)
        if marker in SOF_MARKERS and pos + 10 <= n:
            precision, height, width, components = struct.unpack(">BHHB", data[pos + 4 : pos + 10])
            return ImageHeader("jpeg", width, height, components, precision, False, orientation)
        pos += 2 + length
    raise ImageRejected(image_id, CORRUPT_JPEG_HEADER)


def _png_header(data: bytes, image_id: str) -> ImageHeader:
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise ImageRejected(image_id, CORRUPT_PNG_HEADER)
    width, height, bit_depth, colour_type = struct.unpack(">IIBB", data[16:26])
    channels = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}.get(colour_type)
    if channels is None:
        raise ImageRejected(image_id, CORRUPT_PNG_HEADER)
    return ImageHeader("png", width, height, channels, bit_depth, colour_type in (4, 6))


def read_header(data: bytes, image_id: str) -> ImageHeader:
    """Format, size, channels, bit depth and orientation from the first bytes; ImageRejected otherwise."""
    if not data:
        raise ImageRejected(image_id, EMPTY)
    if data.startswith(JPEG_MAGIC):
        return _jpeg_header(data, image_id)
    if data.startswith(PNG_MAGIC):
        return _png_header(data, image_id)
    raise ImageRejected(image_id, NOT_AN_IMAGE)


def check_header(header: ImageHeader, image_id: str, color: bool, max_pixels: int) -> None:
    """Refuse by header alone, in the order the serving graph checks too."""
    if header.width * header.height > max_pixels:
        raise ImageRejected(image_id, f"{too_large(max_pixels)}: {header.width}×{header.height}")
    if min(header.width, header.height) < MIN_SIDE:
        raise ImageRejected(image_id, f"{TOO_SMALL} ({header.width}×{header.height} px)")
    if header.bit_depth != 8:
        raise ImageRejected(image_id, f"{header.bit_depth}-bit {header.format.upper()}: {NOT_8_BIT}")
    if header.has_alpha:
        raise ImageRejected(image_id, ALPHA)
    if header.channels not in (1, 3):
        raise ImageRejected(image_id, NOT_RGB_JPEG)
    if color and header.channels == 1:
        raise ImageRejected(image_id, GRAYSCALE)


def is_complete(data: bytes, header: ImageHeader) -> bool:
    """JPEG ends with EOI (FFD9), PNG has its IEND chunk, allowing trailing padding (NUL / whitespace)."""
    tail = data[-64:].rstrip(b"\x00\r\n\t ")
    if header.format == "jpeg":
        return tail.endswith(b"\xff\xd9")
    return b"IEND" in tail


def check_complete(data: bytes, header: ImageHeader, image_id: str) -> None:
    if not is_complete(data, header):
        raise ImageRejected(image_id, TRUNCATED_JPEG if header.format == "jpeg" else TRUNCATED_PNG)
