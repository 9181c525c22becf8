"""Where on the eye a heatmap puts its mass, found with classical image analysis (no extra model).

A model that grades DR by looking at the black corners of the photo, or classifies OCT scans by the
vitreous above the retina, has learnt something about the camera, not the disease; deletion/insertion
AUCs do not see it, the pointing game needs lesion masks real data lacks. This module finds the
anatomy on the very image the heatmap lives on (the model input, raw or Graham-normalised) and
reports the share of heatmap mass on each structure, beside the structure's share of the area (the
share a map spread evenly would give):

- fundus: the field of view (FOV, the illuminated retina: everything that differs from the flat
  border colour, closed and hole-filled), the optic disc (the brightest disc-sized blob inside it:
  a blur at the disc's scale, so small bright lesions lose to it), and the vessels (a black top-hat
  on the green channel: thin structures darker than their surroundings);
- OCT B-scan: per column, the inner limiting membrane (first row clearly brighter than the
  vitreous) and the RPE (the brightest row below it); bands vitreous / inner retina / outer
  retina + RPE / choroid follow from those two lines.

Sizes are fractions of the FOV diameter (the optic disc is about 1/7 of a 45-degree field), so the
same code runs at 64 px and at 1411 px. Input: uint8 or float images, heatmaps `[H, W]` >= 0 on the
same grid. Every function is `np.ndarray -> np.ndarray`/dataclass; no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from components.common.errors import RetinaError

DISC_RADIUS_OF_FOV = 0.065  # optic disc radius / FOV diameter (real 45-degree photos and the synthetic set)
VESSEL_WIDTH_OF_FOV = 0.015  # widest vessel / FOV diameter
FLAT_TOLERANCE = 10.0  # grey levels: a pixel this close to the border colour is background
OCT_BANDS = ("vitreous", "inner_retina", "outer_retina_rpe", "choroid")
FUNDUS_REGIONS = ("optic_disc", "vessels", "outside_fov")


@dataclass(frozen=True)
class FundusAnatomy:
    fov: np.ndarray  # bool [H, W]
    disc: np.ndarray  # bool [H, W]
    vessels: np.ndarray  # bool [H, W]
    disc_centre: tuple[int, int]  # (x, y) px
    disc_radius: float  # px


@dataclass(frozen=True)
class OctAnatomy:
    ilm: np.ndarray  # [W] row of the inner limiting membrane per column
    inner_outer: np.ndarray  # [W] row between inner and outer retina
    rpe: np.ndarray  # [W] row of the bottom of the RPE per column
    bands: np.ndarray  # int [H, W]: index into OCT_BANDS


@dataclass(frozen=True)
class AnatomyShares:
    """Share of heatmap mass per region (sums need not be 1: regions overlap) and each region's area share."""

    mass: dict[str, float]
    area: dict[str, float]
    modality: str

    def flagged(self, max_outside: float) -> bool:
        """True when the map looks off the retina: outside the FOV (fundus) or in the vitreous (OCT)."""
        return self.outside_share > max_outside

    @property
    def outside_share(self) -> float:
        """Mass outside the retina: fundus outside the FOV, OCT in the vitreous."""
        key = "outside_fov" if self.modality == "fundus" else "vitreous"
        return float(self.mass.get(key, 0.0))


def _luminance(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 3:
        img = img[..., :3] @ np.array([0.299, 0.587, 0.114], np.float32)
    if img.max() <= 1.0 + 1e-6:
        img = img * 255.0
    return img


def _as_255(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image, dtype=np.float32)
    return img * 255.0 if img.max() <= 1.0 + 1e-6 else img


def _disk(radius: float) -> np.ndarray:
    import cv2

    r = max(1, int(round(radius)))
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def _largest_component(mask: np.ndarray) -> np.ndarray:
    import cv2

    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if n <= 1:
        return mask.astype(bool)
    biggest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return labels == biggest


def field_of_view(image: np.ndarray) -> np.ndarray:
    """The illuminated retina: pixels that differ from the flat border colour, closed and hole-filled.

    Works on a raw photo (black surround) and on Graham's output (surround set to grey 128): the
    surround is whatever colour the frame's border has. A full-frame photo (no flat border) is all FOV.
    """
    import cv2
    from scipy.ndimage import binary_fill_holes
    from skimage.morphology import convex_hull_image

    img = _as_255(image)
    if img.ndim == 2:
        img = img[..., None]
    h, w = img.shape[:2]
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
    background = np.median(border, axis=0)
    if float(np.abs(border - background).max(axis=-1).mean()) > FLAT_TOLERANCE:
        return np.ones((h, w), bool)  # no flat surround: the photo is all retina
    differs = np.abs(img - background).max(axis=-1) > FLAT_TOLERANCE
    closed = cv2.morphologyEx(differs.astype(np.uint8), cv2.MORPH_CLOSE, _disk(max(h, w) / 40)) > 0
    filled = binary_fill_holes(closed)
    fov = _largest_component(filled)
    # Opening removes threads of noise reaching into the surround (JPEG ringing at the rim); the hull
    # fills what Graham's normalisation flattened to the surround's grey inside a smooth retina.
    fov = _largest_component(cv2.morphologyEx(fov.astype(np.uint8), cv2.MORPH_OPEN, _disk(max(h, w) / 100)) > 0)
    if fov.any():
        fov = _round_field(convex_hull_image(fov))
    if fov.sum() < 0.05 * h * w:
        raise RetinaError("no field of view found: the image is (almost) uniform")
    return fov


def _round_field(hull: np.ndarray) -> np.ndarray:
    """The circle around the hull (clipped by the frame) when the hull fills most of it.

    A fundus camera's field stop is a circle; where Graham's normalisation left a smooth retina as flat
    as the surround, the hull of what remains falls short of the rim, the circle through its outermost
    points (vessels reach the rim) does not. A hull far from round (a cropped or odd frame) stays as it is.
    """
    import cv2

    points = np.argwhere(hull)[:, ::-1].astype(np.float32)
    (cx, cy), r = cv2.minEnclosingCircle(points)
    yy, xx = np.ogrid[: hull.shape[0], : hull.shape[1]]
    circle = (xx - cx) ** 2 + (yy - cy) ** 2 <= r**2
    return circle if hull.sum() >= 0.6 * circle.sum() else hull


def _fov_diameter(fov: np.ndarray) -> float:
    return float(2.0 * np.sqrt(fov.sum() / np.pi))


def optic_disc(image: np.ndarray, fov: np.ndarray) -> tuple[np.ndarray, tuple[int, int], float]:
    """(mask, (x, y), radius): the brightest disc-sized blob in the FOV where the vessels converge.

    Brightness above the FOV's median, blurred at the disc's scale, so a disc-sized bright region
    beats small bright lesions (exudates) and single bright pixels; plus the density of vessels at the
    same scale, since every vessel leaves through the disc (it tips the balance when cotton-wool spots
    are as bright, or neovascular tufts darken the disc). The radius is that of the bright region
    around the peak, kept within 0.6-1.5x the anatomical expectation.
    """
    import cv2

    lum = _luminance(image)
    expected = DISC_RADIUS_OF_FOV * _fov_diameter(fov)
    inner = cv2.erode(fov.astype(np.uint8), _disk(expected * 0.5)) > 0
    if not inner.any():
        inner = fov
    bright = np.where(fov, np.maximum(lum - float(np.median(lum[fov])), 0.0), 0.0).astype(np.float32)
    brightness = cv2.GaussianBlur(bright, (0, 0), max(1.0, expected / 2))
    density = cv2.GaussianBlur(vessels(image, fov).astype(np.float32), (0, 0), max(1.0, expected))
    score = brightness / max(float(brightness[inner].max()), 1e-6) + density / max(float(density[inner].max()), 1e-6)
    score[~inner] = -1.0
    y, x = np.unravel_index(int(np.argmax(score)), score.shape)
    peak, floor = float(score[y, x]), float(np.median(score[inner]))
    region = _largest_component_at((score >= floor + 0.5 * (peak - floor)) & fov, (y, x))
    radius = float(np.clip(np.sqrt(region.sum() / np.pi), 0.6 * expected, 1.5 * expected))
    yy, xx = np.ogrid[: fov.shape[0], : fov.shape[1]]
    mask = ((xx - x) ** 2 + (yy - y) ** 2 <= radius**2) & fov
    return mask, (int(x), int(y)), radius


def _largest_component_at(mask: np.ndarray, point: tuple[int, int]) -> np.ndarray:
    import cv2

    _, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    label = labels[point]
    return labels == label if label else np.zeros_like(mask, bool)


def vessels(image: np.ndarray, fov: np.ndarray, disc: np.ndarray | None = None) -> np.ndarray:
    """Thin structures darker than their surroundings (black top-hat of the green channel) in the FOV.

    The top-hat's element is wider than the widest vessel, so every vessel (and small dark lesion)
    responds; the threshold is the mean plus two standard deviations of the response in the FOV, and
    specks smaller than a vessel segment are dropped. The FOV rim is excluded (its dark edge is no vessel).
    """
    import cv2

    img = _as_255(image)
    green = img[..., 1] if img.ndim == 3 else img
    diameter = _fov_diameter(fov)
    width = max(1.5, VESSEL_WIDTH_OF_FOV * diameter)
    smooth = cv2.GaussianBlur(green.astype(np.float32), (0, 0), max(0.5, width / 8))
    hat = cv2.morphologyEx(smooth, cv2.MORPH_BLACKHAT, _disk(width))
    inner = cv2.erode(fov.astype(np.uint8), _disk(width * 1.5)) > 0
    if not inner.any():
        return np.zeros_like(fov, bool)
    values = hat[inner]
    found = (hat > values.mean() + 2.0 * values.std()) & inner
    n, labels, stats, _ = cv2.connectedComponentsWithStats(found.astype(np.uint8), connectivity=8)
    keep = np.zeros(n, bool)
    keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= max(3, int(width * width))
    out = keep[labels]
    if disc is not None:  # inside the disc the vessels converge; the disc counts as disc
        out &= ~disc
    return out


def fundus_anatomy(image: np.ndarray) -> FundusAnatomy:
    fov = field_of_view(image)
    disc, centre, radius = optic_disc(image, fov)
    return FundusAnatomy(fov=fov, disc=disc, vessels=vessels(image, fov, disc), disc_centre=centre, disc_radius=radius)


def oct_anatomy(image: np.ndarray) -> OctAnatomy:
    """Depth bands of a B-scan from its intensity profile, column by column.

    ILM: the first row whose (vertically and laterally smoothed) intensity rises above halfway from
    the vitreous level to the retina's; RPE: the brightest row below the ILM; its bottom edge is where
    the intensity falls back under half its peak. Inner/outer retina split halfway between ILM and
    RPE (the outer plexiform layer sits near the middle). Lines are median-filtered across columns,
    so a speckle column cannot tear them.
    """
    import cv2
    from scipy.ndimage import median_filter

    lum = _luminance(image)
    if float(lum.std()) < 1.0:
        raise RetinaError("blank B-scan: no layers to find")
    h, w = lum.shape
    smooth = cv2.GaussianBlur(lum, (0, 0), sigmaX=max(1.0, w / 64), sigmaY=max(1.0, h / 128))
    vitreous_level = float(np.percentile(smooth[: max(2, h // 10)], 50))
    tissue_level = float(np.percentile(smooth, 90))
    threshold = vitreous_level + 0.5 * (tissue_level - vitreous_level)
    above = smooth > threshold
    ilm = np.where(above.any(axis=0), above.argmax(axis=0), h - 1).astype(np.float32)
    rows = np.arange(h)[:, None]
    below_ilm = np.where(rows >= ilm[None, :], smooth, -np.inf)
    rpe_peak = below_ilm.argmax(axis=0)
    peak_val = smooth[rpe_peak, np.arange(w)]
    under = (rows > rpe_peak[None, :]) & (smooth < (0.5 * (peak_val + vitreous_level))[None, :])
    rpe_bottom = np.where(under.any(axis=0), under.argmax(axis=0), h - 1).astype(np.float32)
    window = max(3, (w // 16) | 1)
    ilm = median_filter(ilm, size=window, mode="nearest")
    rpe_bottom = np.maximum(median_filter(rpe_bottom, size=window, mode="nearest"), ilm + 1)
    middle = ilm + 0.5 * (median_filter(rpe_peak.astype(np.float32), size=window, mode="nearest") - ilm)
    bands = np.select(
        [rows < ilm[None, :], rows < middle[None, :], rows <= rpe_bottom[None, :]], [0, 1, 2], default=3
    ).astype(np.int8)
    return OctAnatomy(ilm=ilm, inner_outer=middle, rpe=rpe_bottom, bands=bands)


def _shares(heatmap: np.ndarray, regions: dict[str, np.ndarray], modality: str) -> AnatomyShares:
    cam = np.clip(np.asarray(heatmap, dtype=np.float64), 0.0, None)
    for name, region in regions.items():
        if region.shape != cam.shape:
            raise RetinaError(f"heatmap {cam.shape} and {name} region {region.shape} are on different grids")
    total = float(cam.sum())
    mass = {k: float(cam[r].sum() / total) if total > 0 else 0.0 for k, r in regions.items()}
    area = {k: float(r.mean()) for k, r in regions.items()}
    return AnatomyShares(mass=mass, area=area, modality=modality)


def fundus_shares(heatmap: np.ndarray, anatomy: FundusAnatomy) -> AnatomyShares:
    return _shares(heatmap, {"optic_disc": anatomy.disc, "vessels": anatomy.vessels,
                             "outside_fov": ~anatomy.fov}, "fundus")


def oct_shares(heatmap: np.ndarray, anatomy: OctAnatomy) -> AnatomyShares:
    return _shares(heatmap, {name: anatomy.bands == i for i, name in enumerate(OCT_BANDS)}, "oct")


def anatomy_shares(image: np.ndarray, heatmaps: dict[str, np.ndarray], modality: str) -> dict[str, AnatomyShares]:
    """Shares for several heatmaps of one image (the anatomy is found once). `image` on the heatmaps' grid."""
    if modality == "oct":
        anatomy = oct_anatomy(image)
        return {k: oct_shares(v, anatomy) for k, v in heatmaps.items()}
    anatomy_f = fundus_anatomy(image)
    return {k: fundus_shares(v, anatomy_f) for k, v in heatmaps.items()}


def outline(image_u8: np.ndarray, region: np.ndarray, colour: tuple[int, int, int], thickness: int = 1) -> np.ndarray:
    """The image with the region's outline drawn in `colour` (for the report's anatomy and lesion views)."""
    import cv2

    out = np.ascontiguousarray(image_u8 if image_u8.ndim == 3 else np.repeat(image_u8[..., None], 3, -1)).copy()
    contours, _ = cv2.findContours(region.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(out, contours, -1, colour, thickness)
    return out


def anatomy_view(image_u8: np.ndarray, modality: str) -> np.ndarray:
    """What the anatomy check found, drawn on the image: FOV (white), disc (yellow), vessels (cyan) / OCT lines."""
    if modality == "oct":
        a = oct_anatomy(image_u8)
        out = np.ascontiguousarray(image_u8 if image_u8.ndim == 3 else np.repeat(image_u8[..., None], 3, -1)).copy()
        cols = np.arange(out.shape[1])
        for line, colour in ((a.ilm, (255, 255, 0)), (a.inner_outer, (0, 255, 255)), (a.rpe, (255, 0, 255))):
            out[np.clip(line.astype(int), 0, out.shape[0] - 1), cols] = colour
        return out
    a_f = fundus_anatomy(image_u8)
    out = image_u8.copy() if image_u8.ndim == 3 else np.repeat(image_u8[..., None], 3, -1)
    out[a_f.vessels] = (0.5 * out[a_f.vessels] + 0.5 * np.array([0, 255, 255])).astype(np.uint8)
    out = outline(out, a_f.fov, (255, 255, 255))
    return outline(out, a_f.disc, (255, 255, 0), thickness=max(1, out.shape[0] // 128))
