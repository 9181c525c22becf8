"""Training/serving skew: the Beam path (decode_for + ops, i.e. what `preprocess_record` writes) against the
serving graph (`serving.tf_preprocess`, what the SavedModel's `predict_image` runs), for every parameter set
to a non-default value in turn, on the real retina at EyePACS size and on synthetic images, both modalities.

Documented bound (measured; see PARITY_* below): per image, PSNR between the two paths' uint8 outputs
≥ PARITY_MIN_PSNR_DB and at most PARITY_MAX_OFF_FRACTION of the pixels more than PARITY_OFF_LEVELS grey
levels apart. The differences are the ones serving/tf_preprocess.py lists (outline points, OpenCV's
fixed-point warp, non-integer resizes), amplified 4x by Graham's `image_weight`. A refused image must be
refused by both paths with the same reason. A parameter without a case in NON_DEFAULT fails the suite.
"""

from __future__ import annotations

import dataclasses
import json

import cv2
import numpy as np
import pytest

from components.common.errors import ImageRejected
from components.preprocess import header
from components.preprocess.decode import decode_for
from components.preprocess.ops import preprocess_image, psnr
from components.preprocess.params import PreprocessParams

PARITY_MIN_PSNR_DB = 36.0  # measured worst: 44.5 dB (synthetic fundus, defaults, 512 px)
PARITY_OFF_LEVELS = 8
PARITY_MAX_OFF_FRACTION = 0.01
BASE_SIZE = 256  # output size of the per-parameter cases (the defaults run at 512 too)

# One non-default value per PreprocessParams field: the harness below runs each. Add a field, add it here.
NON_DEFAULT = {
    "modality": "oct",
    "image_size": 192,
    "radius": 160,
    "sigma_ratio": 0.05,
    "image_weight": 3.0,
    "blur_weight": -3.5,
    "offset": 100.0,
    "rim_fraction": 0.8,
    "background_level": 25.0,
    "background_fraction": 0.2,
    "min_retina_fraction": 0.05,
    "reduced_decode": False,
    "decode_oversample": 1.15,  # the DCT quarter scale for an EyePACS frame (the default decodes at 1/2)
    "max_pixels": 5_000_000,  # below an EyePACS frame: both paths must refuse it, with the same reason
    "denoise": "none",  # "nlm" has no TF op: the export refuses it (test_nlm_is_refused_by_the_export)
    "denoise_strength": 5.0,
    "square_mode": "pad",
    "low_percentile": 5.0,
    "high_percentile": 98.0,
}
OCT_FIELDS = {"modality", "denoise", "denoise_strength", "square_mode", "low_percentile", "high_percentile"}
BOTH_FIELDS = {"image_size", "reduced_decode", "decode_oversample", "max_pixels"}


# ---------------------------------------------------------------------------------------------- fast checks
def test_every_parameter_has_a_non_default_parity_case():
    fields = {f.name: f for f in dataclasses.fields(PreprocessParams)}
    missing = sorted(set(fields) - set(NON_DEFAULT))
    assert not missing, f"parameters without a parity case (add them to NON_DEFAULT): {missing}"
    assert set(NON_DEFAULT) <= set(fields), sorted(set(NON_DEFAULT) - set(fields))
    for name, value in NON_DEFAULT.items():
        assert value != fields[name].default, f"{name}: the parity value must differ from the default"


def test_manifest_round_trips_the_parameter_object():
    fundus = {k: v for k, v in NON_DEFAULT.items() if k not in OCT_FIELDS}
    for params in (PreprocessParams(**fundus), PreprocessParams(**{k: NON_DEFAULT[k] for k in OCT_FIELDS})):
        stored = json.loads(json.dumps({"parameters": params.to_dict()}))  # what manifest.json holds
        assert PreprocessParams.from_dict(stored["parameters"]) == params
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.image_size = 1  # one object, not a bag of settings that drifts after it is recorded


def test_export_reads_the_recorded_parameters_through_the_one_object():
    """The drift this replaces: serving read `reduction_margin`, training wrote `decode_oversample`."""
    from serving.export import model_info_dict

    recorded = PreprocessParams(image_size=64, decode_oversample=2.2, sigma_ratio=0.05).to_dict()
    info = {"modality": "fundus", "image_size": 64, "class_names": ["a", "b"], "preprocessing": recorded}
    resolved = PreprocessParams.from_dict(model_info_dict(info)["preprocessing"])
    assert resolved == PreprocessParams(image_size=64, decode_oversample=2.2, sigma_ratio=0.05)
    bare = model_info_dict({**info, "preprocessing": {}})["preprocessing"]  # a model without a record
    assert PreprocessParams.from_dict(bare) == PreprocessParams(image_size=64)


# ---------------------------------------------------------------------------------------------- images
def _jpeg(rgb: np.ndarray, quality: int = 92) -> bytes:
    bgr = rgb[..., ::-1] if rgb.ndim == 3 else rgb
    return cv2.imencode(".jpg", np.ascontiguousarray(bgr), [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()


def _png(image: np.ndarray) -> bytes:
    bgr = image[..., ::-1] if image.ndim == 3 and image.shape[2] == 3 else image
    return cv2.imencode(".png", np.ascontiguousarray(bgr))[1].tobytes()


@pytest.fixture(scope="module")
def images(retina_rgb) -> dict[str, dict[str, bytes]]:
    """Per modality: the real retina on a 3888×2592 frame (EyePACS size), synthetic photos/scans (JPEG, PNG)."""
    from infra.local.synthetic import render_fundus, render_oct

    frame = np.zeros((2592, 3888, 3), np.uint8)
    frame[:, 648:3240] = cv2.resize(retina_rgb, (2592, 2592), interpolation=cv2.INTER_CUBIC)
    rng = np.random.default_rng(5)
    photo = render_fundus(3, rng, size=1024)[0]
    scan = render_oct(1, rng, size=384)[0]
    return {"fundus": {"real-eyepacs.jpg": _jpeg(frame), "real.jpg": _jpeg(retina_rgb), "synthetic.jpg": _jpeg(photo),
                       "synthetic.png": _png(photo)},
            "oct": {"synthetic.jpg": _jpeg(scan), "synthetic-wide.png": _png(np.ascontiguousarray(scan[:, :300])),
                    "synthetic-colour.png": _png(np.dstack([scan, (scan * 0.8).astype(np.uint8), scan // 2]))}}


def _beam(data: bytes, params: PreprocessParams) -> np.ndarray | str:
    """What the Beam DoFn computes for these bytes (`preprocess_record` = read + this + PNG), or the reason."""
    try:
        return preprocess_image(decode_for(data, "parity", params), params).image
    except ImageRejected as exc:
        return exc.reason


@pytest.fixture(scope="module")
def serve():
    """`serve(params, data)` -> the serving graph's uint8 output, or its error text; one traced function
    per parameter object, reused across images (TensorFlow is imported once for the module)."""
    import tensorflow as tf

    from serving import tf_preprocess

    # each parameter object is a new graph: skip Grappler's rewrites, which cost more than these small runs
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    cache: dict[PreprocessParams, object] = {}

    def run(params: PreprocessParams, data: bytes) -> np.ndarray | str:
        if params not in cache:
            cache[params] = tf.function(lambda b: tf_preprocess.preprocess_bytes_uint8(b, params), autograph=False)
        try:
            return cache[params](tf.constant(data)).numpy().astype(np.uint8)
        except tf.errors.InvalidArgumentError as exc:
            return exc.message

    return run


def _assert_same(name: str, params: PreprocessParams, ours: np.ndarray | str, served: np.ndarray | str) -> None:
    if isinstance(ours, str) or isinstance(served, str):
        assert isinstance(ours, str) and isinstance(served, str), f"{name}: one path refused ({ours!r} / {served!r})"
        reason = ours.split(":")[0] if ours.startswith(header.TOO_LARGE) else ours
        assert reason in served, f"{name}: different reasons: Beam {ours!r}, serving {served!r}"
        return
    assert ours.shape == served.shape, name
    off = float(np.mean(np.abs(ours.astype(int) - served.astype(int)) > PARITY_OFF_LEVELS))
    assert psnr(ours, served) >= PARITY_MIN_PSNR_DB, f"{name} {params}: PSNR {psnr(ours, served):.1f} dB"
    assert off <= PARITY_MAX_OFF_FRACTION, f"{name} {params}: {off:.2%} of pixels off by > {PARITY_OFF_LEVELS}"


def _decode_case(name: str) -> bool:
    return name == "defaults-512" or name in BOTH_FIELDS


def _psnr_or_inf(ours: np.ndarray | str, served: np.ndarray | str) -> float:
    return float("inf") if isinstance(ours, str) or isinstance(served, str) else psnr(ours, served)


def _cases() -> list[tuple[str, str, object]]:
    cases = [("fundus", "defaults-512", None), ("oct", "defaults-512", None)]
    for name, value in NON_DEFAULT.items():
        modalities = ["oct"] if name in OCT_FIELDS else ["fundus", "oct"] if name in BOTH_FIELDS else ["fundus"]
        cases += [(modality, name, value) for modality in modalities]
    return cases


@pytest.mark.slow
def test_beam_and_serving_agree_for_every_parameter(images, serve):
    refused, failures, worst = [], [], (float("inf"), "")
    for modality, name, value in _cases():
        if name == "defaults-512":
            params = PreprocessParams(modality=modality)
        else:
            base = PreprocessParams(modality="fundus" if name == "modality" else modality, image_size=BASE_SIZE)
            params = base.replace(**{name: value})
        for image_name, data in images[params.modality].items():
            if not _decode_case(name) and image_name in ("real-eyepacs.jpg", "synthetic.png"):
                continue  # the big frame and the PNG decode matter for the decode parameters and defaults
            ours, served = _beam(data, params), serve(params, data)
            worst = min(worst, (_psnr_or_inf(ours, served), f"{modality}/{name}/{image_name}"))
            try:
                _assert_same(f"{modality}/{name}={value}/{image_name}", params, ours, served)
            except AssertionError as exc:
                failures.append(str(exc).splitlines()[0])
            refused += [name] if isinstance(ours, str) else []
    print(f"parity: worst PSNR {worst[0]:.1f} dB ({worst[1]})")
    assert not failures, "\n".join(failures)
    assert set(refused) == {"max_pixels"}  # only the pixel cap refuses the EyePACS-sized frame


# ---------------------------------------------------------------------------------------------- inputs
def _with_segment(jpeg: bytes, marker: int, payload: bytes) -> bytes:
    """Insert an APPn segment right after SOI."""
    return jpeg[:2] + bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload + jpeg[2:]


def _exif(orientation: int, little: bool = True) -> bytes:
    order = "<" if little else ">"
    import struct

    tiff = (b"II" if little else b"MM") + struct.pack(f"{order}HI", 42, 8)
    ifd = struct.pack(f"{order}H", 2) + struct.pack(f"{order}HHIHH", 0x010F, 2, 1, 0, 0)
    ifd += struct.pack(f"{order}HHIHH", header.ORIENTATION_TAG, 3, 1, orientation, 0) + struct.pack(f"{order}I", 0)
    return header.EXIF_MAGIC + tiff + ifd


# stored = what the camera wrote; orientation o says how to turn it upright
_STORED = {3: lambda u: u[::-1, ::-1], 6: lambda u: np.rot90(u, 1), 8: lambda u: np.rot90(u, -1),
           5: lambda u: np.swapaxes(u, 0, 1), 2: lambda u: u[:, ::-1]}


@pytest.mark.slow
@pytest.mark.parametrize("orientation, little", [(6, True), (8, False), (3, True), (5, False), (2, True)])
def test_exif_rotated_jpeg_gives_the_same_tensor_on_both_paths(orientation, little, draw_fundus, serve):
    upright = draw_fundus((300, 420), (250, 140), 120, seed=orientation)  # off-centre: rotation shows
    stored = np.ascontiguousarray(_STORED[orientation](upright))
    data = _with_segment(_jpeg(stored), 0xE1, _exif(orientation, little))
    assert header.read_header(data, "x").orientation == orientation
    params = PreprocessParams(image_size=64)
    ours, served = _beam(data, params), serve(params, data)
    _assert_same(f"exif-{orientation}", params, ours, served)
    reference = _beam(_jpeg(upright), params)
    assert psnr(ours, reference) >= 30  # upright, as the plain upright photo
    ignored = _beam(_jpeg(stored), params)  # the same pixels without the tag: a visibly different image
    assert orientation == 2 or psnr(ignored, reference) < psnr(ours, reference) - 3


@pytest.mark.slow
def test_colour_profile_is_ignored_alike_on_both_paths(draw_fundus, serve):
    photo = draw_fundus((240, 320), (160, 120), 100)
    plain = _jpeg(photo)
    tagged = _with_segment(plain, 0xE2, b"ICC_PROFILE\x00\x01\x01" + bytes(range(256)) * 4)
    params = PreprocessParams(image_size=64)
    for data in (plain, tagged):
        _assert_same("icc", params, _beam(data, params), serve(params, data))
    np.testing.assert_array_equal(_beam(tagged, params), _beam(plain, params))


def _bad_inputs(draw_fundus) -> dict[str, tuple[bytes, str]]:
    photo = draw_fundus((120, 160), (80, 60), 50)
    good = _jpeg(photo)
    return {
        "empty": (b"", header.EMPTY),
        "not-an-image": (b"<html>not found</html>", header.NOT_AN_IMAGE),
        "truncated-jpeg": (good[: len(good) // 2], header.TRUNCATED_JPEG),
        "truncated-png": (_png(photo)[:-20], header.TRUNCATED_PNG),
        "grayscale": (_jpeg(photo[..., 1]), header.GRAYSCALE),
        "grayscale-png": (_png(photo[..., 1]), header.GRAYSCALE),
        "alpha": (_png(np.dstack([photo, np.full(photo.shape[:2], 255, np.uint8)])), header.ALPHA),
        "16-bit": (cv2.imencode(".png", photo.astype(np.uint16) * 257)[1].tobytes(), header.NOT_8_BIT),
        "tiny": (_jpeg(photo[:10, :10]), header.TOO_SMALL),
        "corrupt-jpeg-header": (b"\xff\xd8\xff\x00garbage" * 4, header.CORRUPT_JPEG_HEADER),
        "cmyk": (_cmyk_jpeg(photo), header.NOT_RGB_JPEG),
    }


def _cmyk_jpeg(rgb: np.ndarray) -> bytes:
    import io

    from PIL import Image  # scikit-image's dependency; OpenCV cannot write CMYK

    buf = io.BytesIO()
    Image.fromarray(rgb).convert("CMYK").save(buf, format="JPEG")
    return buf.getvalue()


@pytest.mark.slow
def test_bad_inputs_are_refused_alike_with_the_same_reason(draw_fundus, serve):
    params = PreprocessParams(image_size=64)
    for name, (data, reason) in _bad_inputs(draw_fundus).items():
        ours, served = _beam(data, params), serve(params, data)
        assert isinstance(ours, str) and reason in ours, f"{name}: Beam gave {ours!r}"
        assert isinstance(served, str) and reason in served, f"{name}: serving gave {served!r}"


@pytest.mark.slow
def test_serving_reads_every_parameter():
    """The serving graph builder touches every field of the object (no parameter is silently ignored)."""
    import tensorflow as tf

    from serving import tf_preprocess

    read: set[str] = set()

    class Recording(PreprocessParams):
        def __getattribute__(self, name: str):
            if name in PreprocessParams.__dataclass_fields__:
                read.add(name)
            return super().__getattribute__(name)

    for modality in ("fundus", "oct"):
        params = Recording(modality=modality, image_size=32)
        tf.function(lambda b, p=params: tf_preprocess.preprocess_bytes_uint8(b, p),
                    autograph=False).get_concrete_function(tf.TensorSpec([], tf.string))
    assert read == set(PreprocessParams.__dataclass_fields__), sorted(set(PreprocessParams.__dataclass_fields__) - read)


def test_nlm_is_refused_by_the_export():
    from components.common.errors import RetinaError
    from serving.tf_preprocess import check_exportable

    with pytest.raises(RetinaError, match="non-local-means"):
        check_exportable(PreprocessParams(modality="oct", denoise="nlm"))


@pytest.mark.slow
@pytest.mark.parametrize("modality, size", [("oct", 496), ("fundus", 300)])
def test_a_full_scale_jpeg_decodes_to_the_same_pixels_on_both_paths(modality, size):
    """OpenCV decodes with libjpeg's accurate IDCT; TF's default (IFAST) was up to 3 levels off at full
    scale — the served OCT model saw other pixels than training (validation measured 0.039 on probabilities)."""
    import tensorflow as tf

    from infra.local.synthetic import render_fundus, render_oct

    rng = np.random.default_rng(21)
    picture = render_oct(2, rng, size=size)[0] if modality == "oct" else render_fundus(2, rng, size=size)[0]
    data = _jpeg(picture)
    params = PreprocessParams(modality=modality, image_size=size)  # no reduced decode at this size
    ours = decode_for(data, "decode-parity", params).astype(np.float32)
    served = tf.function(lambda b: tf_decode(b, params), autograph=False)(tf.constant(data)).numpy()
    assert ours.shape == served.shape
    assert np.array_equal(ours, served), f"max difference {np.abs(ours - served).max()}"


def tf_decode(data, params):
    from serving import tf_preprocess

    return tf_preprocess.decode(data, params)
