"""Deterministic synthetic fundus photos and OCT B-scans, with ground-truth lesion masks.

No real EyePACS or OCT2017 download is possible here, and no real dataset has pixel masks for every
lesion. These images stand in for both: they are written in the real folder layouts, their class
is set by the lesions planted in them (so a small CNN can learn it at 64–128 px), and the masks let
tests measure whether an explanation points at the lesions.

Everything is drawn from a `numpy.random.Generator`; the same seed gives the same bytes (JPEGs are
encoded by OpenCV at a fixed quality). Sizes of anatomy and lesions are fractions of the image
size, so a lesion stays visible after downscaling.
"""

from __future__ import annotations

import csv
import io
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from components.common import storage
from components.common.config import CLASS_NAMES

JPEG_QUALITY = 92
FUNDUS_ASPECT = 1.33  # fundus photos are wider than tall (black side bands)
# EyePACS 2015 training-set grade frequencies (35 126 images): 73.5 / 6.9 / 15.1 / 2.5 / 2.0 %.
EYEPACS_GRADE_P = (0.735, 0.069, 0.151, 0.025, 0.020)
# Kermany OCT2017 class frequencies in the order of CLASS_NAMES["oct"] (NORMAL, CNV, DME, DRUSEN).
KERMANY_CLASS_P = (0.31, 0.45, 0.14, 0.10)
OCT_SPLIT_FRACTIONS = (("train", 0.8), ("test", 0.1), ("val", 0.1))

# Dark red for haemorrhages/microaneurysms, yellow for hard exudates, off-white for cotton-wool spots (RGB).
_RED_LESION = np.array([105.0, 18.0, 14.0], np.float32)
_EXUDATE = np.array([250.0, 228.0, 120.0], np.float32)
_COTTON_WOOL = np.array([238.0, 226.0, 205.0], np.float32)
_VESSEL = np.array([120.0, 22.0, 18.0], np.float32)


# --------------------------------------------------------------------------- encoding
def encode_jpeg(image: np.ndarray) -> bytes:
    """JPEG bytes of an RGB (HxWx3) or grey (HxW) uint8 image at a fixed quality (stable bytes)."""
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:  # pragma: no cover - OpenCV only fails on invalid arrays
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def encode_png(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", image)
    if not ok:  # pragma: no cover
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


# --------------------------------------------------------------------------- drawing helpers
def _children(rng: np.random.Generator) -> tuple[np.random.Generator, np.random.Generator]:
    """(lesion generator, noise generator): independent streams split off after the anatomy is drawn."""
    seeds = rng.integers(0, 2**63 - 1, size=2)
    return np.random.default_rng(int(seeds[0])), np.random.default_rng(int(seeds[1]))


def _blend(canvas: np.ndarray, alpha: np.ndarray, colour: np.ndarray) -> None:
    """canvas = canvas*(1-alpha) + colour*alpha, in place (alpha HxW in [0, 1])."""
    a = alpha[..., None]
    canvas *= 1.0 - a
    canvas += a * colour


def _soft(alpha: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0.3:
        return alpha
    return cv2.GaussianBlur(alpha, (0, 0), sigma)


def _point_in_disc(
    rng: np.random.Generator, centre: tuple[float, float], radius: float
) -> tuple[float, float]:
    r = radius * math.sqrt(rng.uniform(0.0, 1.0))
    t = rng.uniform(0.0, 2 * math.pi)
    return centre[0] + r * math.cos(t), centre[1] + r * math.sin(t)


class _FundusGeometry:
    """Where the retina, optic disc and macula sit in one photo."""

    def __init__(self, rng: np.random.Generator, size: int, eye: str):
        self.h = size
        self.w = round(size * FUNDUS_ASPECT)
        self.radius = size * rng.uniform(0.45, 0.49)
        self.centre = (
            self.w / 2 + rng.uniform(-0.03, 0.03) * size,
            self.h / 2 + rng.uniform(-0.025, 0.025) * size,
        )
        side = 1.0 if eye == "right" else -1.0  # the optic disc sits nasally
        self.disc_radius = size * rng.uniform(0.065, 0.08)
        self.disc = (
            self.centre[0] + side * self.radius * rng.uniform(0.38, 0.46),
            self.centre[1] + self.radius * rng.uniform(-0.08, 0.04),
        )
        self.macula = (
            self.centre[0] - side * self.radius * rng.uniform(0.12, 0.2),
            self.centre[1] + self.radius * rng.uniform(-0.02, 0.08),
        )
        self.side = side

    def inside(self, x: float, y: float, margin: float = 0.9) -> bool:
        return math.hypot(x - self.centre[0], y - self.centre[1]) < self.radius * margin

    def lesion_site(self, rng: np.random.Generator, near_macula: float = 0.5) -> tuple[float, float]:
        """A point in the retina away from the optic disc; lesions cluster around the posterior pole."""
        for _ in range(100):
            if rng.uniform() < near_macula:
                x = rng.normal(self.macula[0], self.radius * 0.35)
                y = rng.normal(self.macula[1], self.radius * 0.3)
            else:
                x, y = _point_in_disc(rng, self.centre, self.radius * 0.85)
            if (
                self.inside(x, y, 0.86)
                and math.hypot(x - self.disc[0], y - self.disc[1]) > self.disc_radius * 1.6
            ):
                return x, y
        return self.macula


def _draw_vessel(
    layer: np.ndarray,
    rng: np.random.Generator,
    geo: _FundusGeometry,
    start: tuple[float, float],
    angle: float,
    thickness: float,
    step: float,
    depth: int,
) -> None:
    """A tortuous vessel walking away from the disc, branching into thinner vessels."""
    x, y = start
    points = [(x, y)]
    curl = rng.normal(0.0, 0.02)
    for _ in range(400):
        angle += curl + rng.normal(0.0, 0.06)
        x += step * math.cos(angle)
        y += step * math.sin(angle)
        if not geo.inside(x, y, 0.97):
            break
        points.append((x, y))
        if depth < 3 and len(points) > 4 and rng.uniform() < 0.06:
            branch = angle + rng.choice([-1.0, 1.0]) * rng.uniform(0.45, 0.9)
            _draw_vessel(layer, rng, geo, (x, y), branch, thickness * 0.7, step, depth + 1)
            thickness *= 0.88
        if thickness < 0.8:
            break
    if len(points) > 1:
        pts = np.round(np.array(points) * 4).astype(np.int32).reshape(-1, 1, 2)
        cv2.polylines(layer, [pts], False, 1.0, max(1, round(thickness)), cv2.LINE_AA, shift=2)


def _blob(
    alpha: np.ndarray, rng: np.random.Generator, x: float, y: float, radius: float, irregular: bool = True
) -> None:
    """An irregular filled blob (a few overlapping ellipses) drawn into `alpha`."""
    parts = 3 if irregular else 1
    for _ in range(parts):
        dx, dy = (rng.normal(0, radius * 0.35), rng.normal(0, radius * 0.35)) if irregular else (0.0, 0.0)
        axes = (max(1, round(radius * rng.uniform(0.7, 1.1))), max(1, round(radius * rng.uniform(0.6, 1.0))))
        cv2.ellipse(
            alpha,
            (round((x + dx) * 4), round((y + dy) * 4)),
            (axes[0] * 4, axes[1] * 4),
            float(rng.uniform(0, 180)),
            0,
            360,
            1.0,
            -1,
            cv2.LINE_AA,
            shift=2,
        )


# Lesion counts per grade: (microaneurysms, haemorrhages, hard exudates, cotton-wool spots, neovascular tufts).
_FUNDUS_LESIONS: dict[int, tuple[tuple[int, int], ...]] = {
    0: ((0, 0), (0, 0), (0, 0), (0, 0), (0, 0)),
    1: ((6, 10), (0, 0), (0, 0), (0, 0), (0, 0)),
    2: ((10, 16), (3, 6), (4, 8), (0, 0), (0, 0)),
    3: ((14, 22), (10, 16), (10, 18), (3, 6), (0, 0)),
    4: ((14, 22), (12, 18), (12, 20), (4, 7), (2, 4)),
}


def _healthy_fundus(geo: _FundusGeometry, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(float RGB image, distance from the centre in retina radii) of a healthy eye, before noise."""
    h, w = geo.h, geo.w
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    dist = np.hypot(xx - geo.centre[0], yy - geo.centre[1]) / geo.radius

    # Retina: orange-red, low-frequency texture, vignetting towards the rim.
    base = np.array(
        [rng.uniform(195, 225), rng.uniform(85, 110), rng.uniform(35, 60)],
        np.float32,
    )
    texture = cv2.GaussianBlur(rng.normal(0.0, 1.0, (h, w)).astype(np.float32), (0, 0), size * 0.03)
    texture /= max(float(np.abs(texture).max()), 1e-6)
    img = np.empty((h, w, 3), np.float32)
    img[:] = base
    img *= (1.0 + 0.06 * texture)[..., None]
    img *= np.clip(1.0 - 0.38 * dist**2.2, 0.0, 1.0)[..., None]

    # Macula: darker, browner, with a faint foveal reflex.
    mac = np.exp(-(((xx - geo.macula[0]) ** 2 + (yy - geo.macula[1]) ** 2) / (2 * (size * 0.07) ** 2)))
    img *= (1.0 - 0.38 * mac)[..., None]

    # Optic disc: bright yellow-white with a paler cup.
    dd = np.hypot(xx - geo.disc[0], yy - geo.disc[1])
    disc_alpha = np.clip((geo.disc_radius - dd) / (size * 0.012) + 0.5, 0.0, 1.0)
    _blend(img, disc_alpha * 0.9, np.array([250.0, 215.0, 150.0], np.float32))
    cup = np.clip((geo.disc_radius * 0.45 - dd) / (size * 0.015) + 0.5, 0.0, 1.0)
    _blend(img, cup * 0.6, np.array([255.0, 245.0, 215.0], np.float32))

    _draw_vessel_tree(img, geo, rng, size)
    return img, dist


def _draw_vessel_tree(img: np.ndarray, geo: _FundusGeometry, rng: np.random.Generator, size: int) -> None:
    h, w = geo.h, geo.w
    # Vessel tree: four arcades leaving the disc plus a few small nasal vessels.
    vessels = np.zeros((h, w), np.float32)
    towards_macula = math.atan2(geo.macula[1] - geo.disc[1], geo.macula[0] - geo.disc[0])
    main_thickness = size * 0.011
    for offset in (-1.0, 1.0):
        _draw_vessel(
            vessels,
            rng,
            geo,
            geo.disc,
            towards_macula + offset * rng.uniform(0.7, 1.0),
            main_thickness,
            size * 0.012,
            0,
        )
        _draw_vessel(
            vessels,
            rng,
            geo,
            geo.disc,
            towards_macula + offset * rng.uniform(1.9, 2.4),
            main_thickness * 0.8,
            size * 0.012,
            1,
        )
    for _ in range(3):
        _draw_vessel(
            vessels,
            rng,
            geo,
            geo.disc,
            towards_macula + math.pi + rng.normal(0, 0.6),
            main_thickness * 0.6,
            size * 0.012,
            2,
        )
    _blend(img, np.clip(vessels, 0.0, 1.0) * 0.85, _VESSEL)


def _tufts(n: int, geo: _FundusGeometry, rng: np.random.Generator, size: int) -> np.ndarray:
    """Neovascularisation at/near the disc: `n` tangles of fine looping vessels (an alpha layer)."""
    tufts = np.zeros((geo.h, geo.w), np.float32)
    for _ in range(n):  # neovascularisation at/near the disc: a tangle of fine looping vessels
        r0 = geo.disc_radius * rng.uniform(0.8, 2.2)
        t0 = rng.uniform(0, 2 * math.pi)
        cx, cy = geo.disc[0] + r0 * math.cos(t0), geo.disc[1] + r0 * math.sin(t0)
        for _ in range(int(rng.integers(6, 10))):
            n_pts = 10
            ang = rng.uniform(0, 2 * math.pi)
            pts = []
            px, py = cx, cy
            for _ in range(n_pts):
                ang += rng.normal(0, 0.9)
                px += size * 0.012 * math.cos(ang)
                py += size * 0.012 * math.sin(ang)
                pts.append((px, py))
            arr = np.round(np.array(pts) * 4).astype(np.int32).reshape(-1, 1, 2)
            cv2.polylines(tufts, [arr], False, 1.0, max(1, round(size * 0.005)), cv2.LINE_AA, shift=2)

    return tufts


def _lesion_layers(grade: int, geo: _FundusGeometry, rng: np.random.Generator, size: int) -> list[np.ndarray]:
    """Alpha layers [red, yellow, white, tufts] of the lesions a grade plants (their union is the mask)."""
    h, w = geo.h, geo.w
    counts = [int(rng.integers(lo, hi + 1)) if hi else 0 for lo, hi in _FUNDUS_LESIONS[grade]]
    n_ma, n_haem, n_exu, n_cws, n_tufts = counts
    red = np.zeros((h, w), np.float32)
    for _ in range(n_ma):
        x, y = geo.lesion_site(rng, near_macula=0.6)
        _blob(red, rng, x, y, size * rng.uniform(0.012, 0.016), irregular=False)
    for _ in range(n_haem):
        x, y = geo.lesion_site(rng, near_macula=0.5)
        if rng.uniform() < 0.3:  # flame-shaped: elongated along the nerve fibres
            axes = (round(size * rng.uniform(0.03, 0.045) * 4), round(size * rng.uniform(0.01, 0.016) * 4))
            cv2.ellipse(
                red,
                (round(x * 4), round(y * 4)),
                axes,
                float(rng.uniform(0, 180)),
                0,
                360,
                1.0,
                -1,
                cv2.LINE_AA,
                shift=2,
            )
        else:
            _blob(red, rng, x, y, size * rng.uniform(0.018, 0.03))
    yellow = np.zeros((h, w), np.float32)
    for _ in range(n_exu):  # hard exudates come in small clusters
        cx, cy = geo.lesion_site(rng, near_macula=0.75)
        for _ in range(int(rng.integers(2, 5))):
            _blob(
                yellow,
                rng,
                cx + rng.normal(0, size * 0.015),
                cy + rng.normal(0, size * 0.015),
                size * rng.uniform(0.006, 0.011),
                irregular=False,
            )
    white = np.zeros((h, w), np.float32)
    for _ in range(n_cws):
        x, y = geo.lesion_site(rng, near_macula=0.3)
        _blob(white, rng, x, y, size * rng.uniform(0.025, 0.04))
    tufts = _tufts(n_tufts, geo, rng, size)
    return [np.clip(layer, 0, 1) for layer in (red, yellow, white, tufts)]


def _paint_lesions(img: np.ndarray, layers: list[np.ndarray], size: int) -> None:
    red, yellow, white, tufts = layers
    _blend(img, _soft(white, size * 0.006) * 0.8, _COTTON_WOOL)
    _blend(img, _soft(yellow, size * 0.0015) * 0.95, _EXUDATE)
    _blend(img, _soft(red, size * 0.0015) * 0.92, _RED_LESION)
    _blend(img, tufts * 0.9, np.array([150.0, 20.0, 25.0], np.float32))



def render_fundus(
    grade: int, rng: np.random.Generator, size: int = 512, eye: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """A colour fundus photo of DR grade 0–4 and its lesion mask (255 on lesion pixels).

    Grade 1 plants microaneurysms; 2 adds blot haemorrhages and hard exudates; 3 many of those plus
    cotton-wool spots; 4 adds neovascular tufts near the optic disc. Returns (RGB HxWx3, mask HxW)
    with H = size and W = round(size * 1.33).
    """
    if grade not in _FUNDUS_LESIONS:
        raise ValueError(f"fundus grade must be 0..4, got {grade}")
    if eye is None:
        eye = "left" if rng.uniform() < 0.5 else "right"
    geo = _FundusGeometry(rng, size, eye)
    img, dist = _healthy_fundus(geo, rng, size)
    # Everything above is the healthy eye and draws the same numbers whatever the grade; the lesions and
    # the sensor noise get their own generators, split off here, so a photo outside its lesion mask is
    # the same photo at every grade (the grade can only be read from the lesions).
    rng, noise_rng = _children(rng)

    layers = _lesion_layers(grade, geo, rng, size)
    _paint_lesions(img, layers, size)
    mask = np.where((np.maximum.reduce(layers) > 0.5) & (dist < 1.0), 255, 0).astype(np.uint8)

    # Sensor noise, then the black surround outside the field stop (soft edge).
    img += noise_rng.normal(0.0, 2.5, (geo.h, geo.w, 1)).astype(np.float32)
    edge = np.clip((1.0 - dist) * geo.radius / (size * 0.006), 0.0, 1.0)
    img *= edge[..., None]
    return np.clip(img, 0, 255).astype(np.uint8), mask


# --------------------------------------------------------------------------- OCT
# Reflectivity of the retinal layers from the ILM down (fractions of the retinal thickness).
_OCT_LAYERS = (
    (0.00, 0.10, 0.62),  # nerve fibre layer
    (0.10, 0.30, 0.38),  # ganglion cell / inner plexiform
    (0.30, 0.42, 0.18),  # inner nuclear
    (0.42, 0.52, 0.42),  # outer plexiform
    (0.52, 0.90, 0.12),  # outer nuclear
    (0.90, 0.94, 0.55),  # ellipsoid zone
    (0.94, 1.00, 0.2),
)
_RPE = 0.95  # the brightest band


@dataclass
class _OctAnatomy:
    """A healthy B-scan's geometry (per column) and reflectivity; pathology is painted over it."""

    refl: np.ndarray  # [h, w] reflectivity
    bruch: np.ndarray  # [w] y of Bruch's membrane (the RPE's top in a healthy eye)
    ilm: np.ndarray  # [w] y of the inner limiting membrane
    thickness: np.ndarray  # [w] ILM -> RPE
    fovea_x: float
    rpe_thick: float


def _oct_anatomy(rng: np.random.Generator, size: int) -> _OctAnatomy:
    h = w = size
    x = np.arange(w, dtype=np.float32)
    fovea_x = w * rng.uniform(0.42, 0.58)
    tilt = rng.uniform(-0.06, 0.06) * h
    curvature = rng.uniform(0.0, 0.12) * h
    rel = (x - fovea_x) / w
    bruch = h * rng.uniform(0.6, 0.68) + tilt * rel * 2 - curvature * (1 - (2 * rel) ** 2) * 0.5
    thickness = h * rng.uniform(0.2, 0.24) * np.ones(w, np.float32)
    thickness -= h * 0.1 * np.exp(-((x - fovea_x) ** 2) / (2 * (w * 0.06) ** 2))  # the foveal pit
    ilm = bruch - thickness
    yy = np.arange(h, dtype=np.float32)[:, None]
    depth = (yy - ilm[None, :]) / np.maximum(thickness[None, :], 1.0)  # 0 at ILM, 1 at RPE
    rpe_thick = h * 0.022
    refl = np.full((h, w), 0.04, np.float32)  # vitreous
    for top, bottom, value in _OCT_LAYERS:
        refl = np.where((depth >= top) & (depth < bottom), value, refl)
    below = yy - bruch[None, :]
    refl = np.where((below >= 0) & (below < rpe_thick), _RPE, refl)
    choroid = (yy - (bruch[None, :] + rpe_thick)) / h
    refl = np.where(choroid >= 0, 0.45 * np.exp(-choroid / 0.12), refl)
    return _OctAnatomy(refl.astype(np.float32), bruch, ilm, thickness, float(fovea_x), rpe_thick)


def _paint_drusen(a: _OctAnatomy, rng: np.random.Generator, mask: np.ndarray) -> None:
    """Dome-shaped deposits under the RPE lift it into the outer retina; the mask is the lifted RPE plus
    the deposit (every pixel that differs from the healthy scan)."""
    h, w = a.refl.shape
    x = np.arange(w, dtype=np.float32)
    yy = np.arange(h, dtype=np.float32)[:, None]
    drusen = np.zeros(w, np.float32)
    for _ in range(int(rng.integers(3, 6))):
        cx = a.fovea_x + rng.uniform(-0.3, 0.3) * w
        width = w * rng.uniform(0.035, 0.06)
        height = h * rng.uniform(0.045, 0.075)
        drusen = np.maximum(drusen, height * np.exp(-((x - cx) ** 2) / (2 * width**2)))
    drusen = np.where(drusen > 1.0, drusen, 0.0)
    rpe_top = (a.bruch - drusen)[None, :]
    region = (yy >= rpe_top) & (yy < a.bruch[None, :] + a.rpe_thick) & (drusen[None, :] > 0)
    a.refl[:] = np.where(region, np.where(yy < rpe_top + a.rpe_thick, _RPE, 0.5), a.refl)
    mask[region] = 255


def _paint_dme(a: _OctAnatomy, rng: np.random.Generator, mask: np.ndarray) -> None:
    """Dark cystoid fluid pockets in the inner/outer nuclear layers."""
    h, w = a.refl.shape
    x = np.arange(w, dtype=np.float32)[None, :]
    yy = np.arange(h, dtype=np.float32)[:, None]
    for _ in range(int(rng.integers(3, 7))):
        cx = a.fovea_x + rng.normal(0, w * 0.08)
        col = int(np.clip(cx, 0, w - 1))
        cy = a.ilm[col] + a.thickness[col] * rng.uniform(0.35, 0.7)
        ax = w * rng.uniform(0.03, 0.055)
        ay = a.thickness[col] * rng.uniform(0.12, 0.22)
        pocket = ((x - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2 < 1.0
        a.refl[pocket] = 0.02
        mask[pocket] = 255


def _paint_cnv(a: _OctAnatomy, rng: np.random.Generator, mask: np.ndarray) -> None:
    """A hyper-reflective fibrovascular membrane above the RPE with dark subretinal fluid over it."""
    h, w = a.refl.shape
    x = np.arange(w, dtype=np.float32)
    yy = np.arange(h, dtype=np.float32)[:, None]
    cx = a.fovea_x + rng.normal(0, w * 0.04)
    half = w * rng.uniform(0.1, 0.16)
    lesion_h = h * rng.uniform(0.06, 0.09)
    fluid_h = h * rng.uniform(0.04, 0.07)
    profile = np.clip(1.0 - ((x - cx) / half) ** 2, 0.0, None)
    lesion_top = a.bruch - lesion_h * profile
    fluid_top = lesion_top - fluid_h * np.clip(1.0 - ((x - cx) / (half * 1.3)) ** 2, 0.0, None)
    lesion = (yy >= lesion_top[None, :]) & (yy < a.bruch[None, :] + a.rpe_thick) & (profile[None, :] > 0.02)
    fluid = (yy >= fluid_top[None, :]) & (yy < lesion_top[None, :])
    texture = 0.75 + 0.2 * rng.uniform(0, 1, (h, w)).astype(np.float32)
    a.refl[:] = np.where(lesion, texture, np.where(fluid, 0.03, a.refl))
    mask[lesion | fluid] = 255


_OCT_PATHOLOGY = {"DRUSEN": _paint_drusen, "DME": _paint_dme, "CNV": _paint_cnv}


def render_oct(label: int, rng: np.random.Generator, size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """A grey OCT B-scan of class `label` (CONFIG order NORMAL, CNV, DME, DRUSEN) and its lesion mask.

    Layered retina with speckle and a foveal pit. DRUSEN lifts the RPE in dome-shaped bumps filled
    with medium-bright material; DME adds dark intraretinal fluid pockets; CNV puts a hyper-reflective
    subretinal lesion under the fovea with dark fluid above it. The healthy anatomy and the speckle
    draw the same numbers for every class (pathology has its own generator), and pathology changes
    only pixels inside its mask: outside the mask a scan equals the NORMAL scan of the same seed, so
    the class can be read from the lesions alone (no swollen retina or shifted layers as a global cue).
    """
    names = CLASS_NAMES["oct"]
    if not 0 <= label < len(names):
        raise ValueError(f"OCT label must be 0..{len(names) - 1}, got {label}")
    anatomy = _oct_anatomy(rng, size)
    lesion_rng, noise_rng = _children(rng)
    mask = np.zeros((size, size), np.uint8)
    paint = _OCT_PATHOLOGY.get(names[label])
    if paint is not None:
        paint(anatomy, lesion_rng, mask)
    refl = cv2.GaussianBlur(anatomy.refl, (0, 0), max(0.5, size * 0.002))
    speckle = noise_rng.gamma(4.0, 0.25, (size, size)).astype(np.float32)  # multiplicative speckle, mean 1
    img = refl * speckle * 235.0 + noise_rng.normal(8.0, 4.0, (size, size)).astype(np.float32)
    img = cv2.GaussianBlur(img, (0, 0), 0.6)
    return np.clip(img, 0, 255).astype(np.uint8), mask


# --------------------------------------------------------------------------- datasets
def _write_image(out_uri: str, folder: str, image_id: str, image: np.ndarray, mask: np.ndarray) -> None:
    """`<folder>/<image_id>.jpeg` and its lesion mask `masks/<image_id>.png`, where the dataset readers look."""
    storage.write_bytes(storage.join(out_uri, folder, f"{image_id}.jpeg"), encode_jpeg(image))
    storage.write_bytes(storage.join(out_uri, "masks", f"{image_id}.png"), encode_png(mask))


def _balanced_labels(n: int, num_classes: int, rng: np.random.Generator) -> list[int]:
    labels = [i % num_classes for i in range(n)]
    rng.shuffle(labels)
    return labels


def _fundus_plan(n: int, seed: int, balance: bool) -> list[tuple[int, str, int]]:
    """(patient, eye, grade) for n images: both eyes of each patient, grades of the two eyes correlated."""
    rng = np.random.default_rng([seed, 0])
    n_patients = (n + 1) // 2
    patients = np.cumsum(rng.integers(1, 4, n_patients)) + 9  # ids like 10, 13, 15, ...
    if balance:
        # Equal counts per grade; sorting before pairing gives mostly equal grades for the two eyes.
        grades = sorted(i % 5 for i in range(2 * n_patients))
        pairs = [(grades[2 * k], grades[2 * k + 1]) for k in range(n_patients)]
        order = rng.permutation(n_patients)
        pairs = [pairs[i] for i in order]
        if 2 * n_patients > n:  # odd n: drop the right eye of the last patient, keep counts even
            pairs[-1] = (pairs[-1][0], -1)
    else:
        pairs = []
        for _ in range(n_patients):
            g = int(rng.choice(5, p=EYEPACS_GRADE_P))
            other = g if rng.uniform() < 0.7 else int(np.clip(g + rng.choice([-1, 1]), 0, 4))
            pairs.append((g, other))
    plan = []
    for pid, (left, right) in zip(patients, pairs, strict=True):
        plan.append((int(pid), "left", left))
        if len(plan) < n and right >= 0:
            plan.append((int(pid), "right", right))
    return plan[:n]


def write_fundus_dataset(
    out_uri: str,
    n: int,
    seed: int,
    size: int = 512,
    balance: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """A synthetic EyePACS-layout set: `train/<patient>_<eye>.jpeg`, `trainLabels.csv`, `masks/<id>.png`.

    Two eyes per patient with correlated grades; grades follow EyePACS frequencies (about 73% grade 0)
    or, with `balance`, equal counts. Each image has its own generator seeded by (seed, patient, eye),
    so an image does not change when `n` does. `trainLabels.csv` is written last.
    """
    if n < 1:
        raise ValueError("n must be at least 1")
    plan = _fundus_plan(n, seed, balance)
    rows = []
    for i, (pid, eye, grade) in enumerate(plan):
        rng = np.random.default_rng([seed, 1, pid, 0 if eye == "left" else 1])
        image_id = f"{pid}_{eye}"
        _write_image(out_uri, "train", image_id, *render_fundus(grade, rng, size=size, eye=eye))
        rows.append((image_id, grade))
        if progress:
            progress(i + 1, len(plan))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["image", "level"])
    writer.writerows(rows)
    storage.write_text(storage.join(out_uri, "trainLabels.csv"), buf.getvalue())
    counts = Counter(g for _, g in rows)
    return {
        "modality": "fundus",
        "root": str(out_uri),
        "images": len(rows),
        "patients": len({pid for pid, _, _ in plan}),
        "per_class": {CLASS_NAMES["fundus"][g]: counts.get(g, 0) for g in range(5)},
        "seed": seed,
        "size": size,
        "balance": balance,
    }


def _oct_plan(n: int, seed: int, balance: bool) -> list[tuple[str, str, int, int]]:
    """(split, class name, patient, scan number) for n scans; 1–4 scans per patient, split by patient."""
    rng = np.random.default_rng([seed, 2])
    names = CLASS_NAMES["oct"]
    labels = (
        _balanced_labels(n, len(names), rng)
        if balance
        else list(rng.choice(len(names), n, p=KERMANY_CLASS_P))
    )
    by_class = Counter(int(lbl) for lbl in labels)
    used_ids: set[int] = set()
    patients: list[tuple[int, int, int]] = []  # (label, patient id, number of scans)
    for label in range(len(names)):
        remaining = by_class.get(label, 0)
        while remaining > 0:
            scans = min(remaining, int(rng.integers(1, 5)))
            pid = int(rng.integers(1_000_000, 9_999_999))
            while pid in used_ids:
                pid = int(rng.integers(1_000_000, 9_999_999))
            used_ids.add(pid)
            patients.append((label, pid, scans))
            remaining -= scans
    order = rng.permutation(len(patients))
    n_test = int(round(len(patients) * OCT_SPLIT_FRACTIONS[1][1]))
    n_val = int(round(len(patients) * OCT_SPLIT_FRACTIONS[2][1]))
    plan = []
    for rank, idx in enumerate(order):
        label, pid, scans = patients[idx]
        split = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
        for k in range(1, scans + 1):
            plan.append((split, names[label], pid, k))
    return plan


def write_oct_dataset(
    out_uri: str,
    n: int,
    seed: int,
    size: int = 512,
    balance: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """A synthetic Kermany-layout set: `{train,test,val}/<CLASS>/<CLASS>-<patient>-<n>.jpeg` + `masks/<id>.png`.

    Several scans per patient, all scans of a patient in one split; class frequencies follow
    OCT2017 (CNV most common) or, with `balance`, equal counts.
    """
    if n < 1:
        raise ValueError("n must be at least 1")
    plan = _oct_plan(n, seed, balance)
    names = CLASS_NAMES["oct"]
    for i, (split, name, pid, k) in enumerate(plan):
        rng = np.random.default_rng([seed, 3, pid, k])
        image_id = f"{name}-{pid}-{k}"
        _write_image(out_uri, f"{split}/{name}", image_id, *render_oct(names.index(name), rng, size=size))
        if progress:
            progress(i + 1, len(plan))
    per_class = Counter(name for _, name, _, _ in plan)
    per_split = Counter(split for split, _, _, _ in plan)
    return {
        "modality": "oct",
        "root": str(out_uri),
        "images": len(plan),
        "patients": len({pid for _, _, pid, _ in plan}),
        "per_class": {name: per_class.get(name, 0) for name in names},
        "per_split": dict(sorted(per_split.items())),
        "seed": seed,
        "size": size,
        "balance": balance,
    }
