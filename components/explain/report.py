"""The explanation report a clinician opens: `index.html`, `summary.json` and PNGs in one folder.

Every link in `index.html` is relative (`images/…png`), so the folder works wherever it is copied: a
local disk, an S3 prefix behind a static file server, a KFP artifact. Every string a user or a data
set controls (file names, image ids, class names, model names, layer names, reasons) goes through
`html.escape`; PNG file names are slugs, never the raw image id. The same page is also rendered
self-contained (PNGs inlined as base64 `data:` URIs) for the Kubeflow UI's HTML artifact viewer,
which cannot follow relative links, and a short Markdown summary is produced for the KFP `Markdown`
artifact.

What a reader sees, per image: the photo as taken, what the model saw, the ground-truth lesion
outline (where a mask exists, also drawn on every heatmap), each heatmap, the probabilities as a
bar chart, the ordinal view for DR (what pushes the grade up vs down), the anatomy check (heat on
the disc / vessels / outside the retina), the champion's heatmap beside the challenger's with their
SSIM, and the feature maps of every conv layer (one `<details>` per layer, no script). Both eyes of an
EyePACS patient (`<patient>_left` / `_right`) sit side by side. The page is plain HTML + CSS, no
JavaScript, no external resource; it fits a 1280 px wide window without horizontal scrolling.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from components.common import storage

IMAGES_DIR = "images"
LAST_FILES = ["summary.json", "index.html"]
LESION_COLOUR = (0, 255, 0)  # RGB, outline of the ground-truth lesions
EYE_ID = re.compile(r"^(?P<patient>.+)_(?P<eye>left|right)$")  # EyePACS image ids: 10_left, 10_right

# One sentence per number, shown under the tables: what it measures and which way is good.
METRIC_MEANINGS: dict[str, str] = {
    "deletion_auc": "Area under the target probability as the map's most important pixels are removed first "
                    "(replaced by the baseline: a blurred copy of the image, or flat grey with --baseline grey); "
                    "lower is better (the prediction collapses when what the map highlights is removed).",
    "insertion_auc": "Area under the target probability as the map's most important pixels are restored first "
                     "onto the baseline (a blurred copy, or flat grey); higher is better.",
    "insertion_minus_deletion": "Insertion minus deletion AUC; above 0 means ranking pixels by the map beats "
                                "ranking them the other way round.",
    "pointing_game": "Share of images whose hottest pixel lies inside a ground-truth lesion; compare with the "
                     "mask fraction, the hit rate of a random point.",
    "energy_in_mask": "Share of the map's total heat that falls inside the ground-truth lesions.",
    "mask_fraction": "Share of the image covered by lesions: the pointing-game hit rate of pure chance.",
    "randomization_ssim": "Similarity (SSIM) between the map of the trained model and of the same network with "
                          "random weights; low is good (the map depends on what the model learnt).",
    "outside_retina_share": "Share of the heat outside the retina (fundus: outside the field of view; OCT: in "
                            "the vitreous); a model that looks there has learnt something about the camera.",
    "optic_disc_share": "Share of the heat on the optic disc (found as the brightest disc-sized blob where the "
                        "vessels converge).",
    "vessels_share": "Share of the heat on the retinal vessels (black top-hat of the green channel).",
    "champion_ssim": "SSIM between the champion's and the challenger's map of the same image; low means the new "
                     "model looks somewhere else.",
    "ssim": "Structural similarity of the two maps (1 = the same picture).",
    "spearman": "Rank correlation of the two maps' pixel orders (1 = same ranking, 0 = unrelated).",
    "peak_agreement": "Share of the two maps' peaks that fall in the other map's hottest 10 %.",
}


@dataclass
class Figure:
    title: str
    image: np.ndarray  # uint8 RGB
    caption: str = ""


@dataclass
class ImageEntry:
    image_id: str
    source: str  # where it came from (file name / URI), shown escaped
    original: np.ndarray  # uint8 RGB as read (for display)
    model_input: np.ndarray  # uint8 RGB what the model saw
    predicted: int
    probabilities: list[float]
    true_label: int | None = None
    overlays: dict[str, np.ndarray] = field(default_factory=dict)  # method -> uint8 RGB overlay
    metrics: dict[str, dict[str, float | None]] = field(default_factory=dict)  # method -> metric -> value
    mask: np.ndarray | None = None  # ground-truth lesions on the model-input grid (255 = lesion)
    ordinal: list[Figure] = field(default_factory=list)  # DR: what pushes the grade up / down
    anatomy: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)  # method -> {mass, area}
    anatomy_view: np.ndarray | None = None  # what the anatomy check found, drawn on the model input
    feature_maps: list[Figure] = field(default_factory=list)  # one grid per conv layer
    champion_overlays: dict[str, np.ndarray] = field(default_factory=dict)  # method -> champion's overlay
    champion_ssim: dict[str, float] = field(default_factory=dict)  # method -> SSIM(champion, challenger)
    champion_predicted: int | None = None


@dataclass
class Grid:
    title: str
    image: np.ndarray  # uint8 RGB
    caption: str = ""


@dataclass
class Report:
    model_name: str
    model_version: str
    run_name: str
    model_uri: str
    images_uri: str
    class_names: list[str]
    methods: list[str]
    cam_layer: str
    score_kind: str
    entries: list[ImageEntry]
    problems: list[tuple[str, str]] = field(default_factory=list)  # (name, reason) of unreadable inputs
    feature_maps: list[Grid] = field(default_factory=list)  # report-level grids (when not per image)
    filters: list[Grid] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)  # metrics per method, gate, counts
    modality: str = ""
    champion_uri: str = ""  # the model the challenger's maps are compared with
    agreement: dict[str, dict[str, float | None]] = field(default_factory=dict)  # "rise vs gradcam" -> metric
    notes: list[str] = field(default_factory=list)  # short facts shown under the header


def slug(text: str, max_len: int = 60) -> str:
    """A file-name-safe stand-in for a user string (the original is shown, escaped, in the page)."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("._") or "x"
    return s[:max_len]


def overlay(image_u8: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Heatmap (jet) of a [0, 1] CAM blended over the RGB image."""
    from components.explain.feature_maps import colorize

    heat = colorize(cam, "jet").astype(np.float32)
    base = image_u8.astype(np.float32)
    if base.ndim == 2:
        base = np.repeat(base[..., None], 3, axis=-1)
    return np.clip((1 - alpha) * base + alpha * heat, 0, 255).astype(np.uint8)


def signed_overlay(image_u8: np.ndarray, signed: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """A signed map in [-1, 1] over the image: red where it pushes the score up, blue where it pushes down."""
    base = image_u8.astype(np.float32)
    if base.ndim == 2:
        base = np.repeat(base[..., None], 3, axis=-1)
    grey = base.mean(axis=-1, keepdims=True).repeat(3, axis=-1)  # colour belongs to the map alone
    s = np.clip(np.asarray(signed, np.float32), -1.0, 1.0)[..., None]
    up, down = np.array([230.0, 30.0, 30.0]), np.array([30.0, 90.0, 230.0])
    colour = np.where(s > 0, up, down)
    weight = alpha * np.abs(s)
    return np.clip((1 - weight) * grey + weight * colour, 0, 255).astype(np.uint8)


def _with_outline(image: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    if mask is None or not np.asarray(mask).any():
        return image
    import cv2

    from components.explain.anatomy import outline

    m = mask[..., 0] if mask.ndim == 3 else mask
    if m.shape[:2] != image.shape[:2]:
        m = cv2.resize(m.astype(np.uint8), (image.shape[1], image.shape[0]), interpolation=cv2.INTER_NEAREST)
    return outline(image, m > (127 if m.max() > 1 else 0), LESION_COLOUR, thickness=max(1, image.shape[0] // 160))


def _png(image: np.ndarray) -> bytes:
    import cv2

    img = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", img)
    if not ok:  # pragma: no cover - OpenCV refuses only impossible shapes
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}"
    return html.escape(str(value))


def _class_name(names: list[str], idx: int | None) -> str:
    if idx is None:
        return "unknown"
    return names[idx] if 0 <= idx < len(names) else f"class {idx}"


def _stem(i: int, entry: ImageEntry) -> str:
    return f"{IMAGES_DIR}/{i:04d}_{slug(entry.image_id)}"


def _entry_figures(i: int, e: ImageEntry) -> list[tuple[str, str, str, np.ndarray]]:
    """(relative path, title, caption, pixels) of an entry's figures in the order they are shown."""
    stem = _stem(i, e)
    figs = [(f"{stem}_input.png", "as taken", "", e.original),
            (f"{stem}_model_input.png", "model input", "after preprocessing", e.model_input)]
    if e.mask is not None and np.asarray(e.mask).any():
        figs.append((f"{stem}_lesions.png", "lesions", "ground truth (green)", _with_outline(e.model_input, e.mask)))
    if e.anatomy_view is not None:
        figs.append((f"{stem}_anatomy.png", "anatomy", "what the anatomy check found", e.anatomy_view))
    for m, ov in e.overlays.items():
        figs.append((f"{stem}_{slug(m)}.png", m, "", _with_outline(ov, e.mask)))
    for j, f in enumerate(e.ordinal):
        figs.append((f"{stem}_ordinal{j}.png", f.title, f.caption, f.image))
    return figs


def _champion_files(i: int, e: ImageEntry) -> list[tuple[str, str, np.ndarray]]:
    stem = _stem(i, e)
    return [(f"{stem}_champion_{slug(m)}.png", m, _with_outline(ov, e.mask)) for m, ov in e.champion_overlays.items()]


def _map_files(i: int, e: ImageEntry) -> list[tuple[str, Figure]]:
    return [(f"feature_maps/{i:04d}_{j:02d}_{slug(f.title)}.png", f) for j, f in enumerate(e.feature_maps)]


def _report_level_maps(report: Report) -> list[Grid]:
    """The report-level feature-map grids, unless every image carries its own (then they would repeat)."""
    return [] if any(e.feature_maps for e in report.entries) else report.feature_maps


def _files(report: Report) -> dict[str, np.ndarray]:
    """Relative PNG path -> pixels, with the names the HTML refers to."""
    files: dict[str, np.ndarray] = {}
    for i, e in enumerate(report.entries):
        files.update({path: pixels for path, _, _, pixels in _entry_figures(i, e)})
        files.update({path: pixels for path, _, pixels in _champion_files(i, e)})
        files.update({path: f.image for path, f in _map_files(i, e)})
    for j, g in enumerate(_report_level_maps(report)):
        files[f"feature_maps/{j:03d}_{slug(g.title)}.png"] = g.image
    for j, g in enumerate(report.filters):
        files[f"filters/{j:03d}_{slug(g.title)}.png"] = g.image
    return files


# --------------------------------------------------------------------------- page
_CSS = """
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1d2630;background:#f4f6f8;line-height:1.4}
main{max-width:1240px;margin:0 auto;padding:16px 20px 40px}
h1{font-size:1.5em;margin:.2em 0}h2{font-size:1.2em;margin:1.4em 0 .5em;border-bottom:2px solid #d5dde5;padding-bottom:.2em}
h3{font-size:1.02em;margin:.1em 0 .4em;overflow-wrap:anywhere}
code,.wrap{overflow-wrap:anywhere;word-break:break-word}
.muted{color:#5b6875;font-size:.88em}
.facts{display:flex;flex-wrap:wrap;gap:10px;margin:.6em 0}
.fact{background:#fff;border:1px solid #d5dde5;border-radius:8px;padding:8px 12px;min-width:130px}
.fact strong{display:block;font-size:1.25em}
.pass{color:#137333}.fail{color:#b3261e}.na{color:#5b6875}
.badge{display:inline-block;border-radius:10px;padding:1px 9px;font-size:.85em;font-weight:600;color:#fff;white-space:nowrap}
.badge.pass{background:#137333;color:#fff}.badge.fail{background:#b3261e;color:#fff}.badge.na{background:#77818b;color:#fff}
.scroll{max-width:100%;overflow-x:auto}
table{border-collapse:collapse;margin:.4em 0;background:#fff;font-size:.9em}
td,th{border:1px solid #d5dde5;padding:4px 8px;text-align:right;vertical-align:top}
th{background:#eef2f5}td.l,th.l{text-align:left}
dl.meaning{font-size:.88em;margin:.3em 0 0}dl.meaning dt{font-weight:600;float:left;clear:left;margin-right:.4em}
dl.meaning dd{margin:0 0 .2em}
.patient{display:grid;grid-template-columns:minmax(0,1fr) minmax(0,1fr);gap:12px;margin:12px 0}
.patient>.card{margin:0}
.patient-title{grid-column:1/-1;font-weight:600;margin:0}
.card{background:#fff;border:1px solid #d5dde5;border-radius:8px;padding:12px;margin:12px 0;min-width:0}
.row{display:flex;flex-wrap:wrap;gap:8px;align-items:flex-start}
figure{margin:0;width:156px}figcaption{font-size:.8em;color:#3b4650;text-align:center;overflow-wrap:anywhere}
img.t{width:156px;height:156px;object-fit:contain;image-rendering:auto;background:#000;border-radius:4px;display:block}
img.grid{max-width:100%;height:auto;display:block;image-rendering:pixelated}
.bars{display:grid;grid-template-columns:minmax(60px,max-content) minmax(80px,1fr) 3.6em;gap:3px 8px;align-items:center;
 font-size:.85em;max-width:520px;margin:.4em 0}
.bar{height:12px;background:#e6ebf0;border-radius:3px;overflow:hidden}
.bar>span{display:block;height:100%;background:#7b8a99}
.bar.pred>span{background:#1a73e8}.bars .truth{font-weight:700}
details{margin:.4em 0}summary{cursor:pointer;font-weight:600;font-size:.92em}
details details{margin-left:1em}details details summary{font-weight:400}
.legend{display:inline-block;width:140px;height:10px;vertical-align:middle;border-radius:2px;
 background:linear-gradient(90deg,#00007f,#0000ff,#00ffff,#ffff00,#ff0000,#7f0000)}
.legend.signed{background:linear-gradient(90deg,#1e5ae6,#bbb,#e61e1e)}
.flag{background:#fdecea;border:1px solid #f3b8b2;border-radius:6px;padding:4px 8px;font-size:.88em;margin:.4em 0}
"""


def _verdict(passed: bool | None) -> tuple[str, str]:
    if passed is None:
        return "na", "n/a"
    return ("pass", "pass") if passed else ("fail", "fail")


def _table(header: list[str], rows: list[list[str]], left: int = 1, left_cols: tuple[int, ...] = ()) -> str:
    """An HTML table from cells that are ALREADY escaped/formatted; the first `left` columns and `left_cols`
    align left (text), the others right (numbers). An all-empty header is left out."""
    cls = [" class=l" if j < left or j in left_cols else "" for j in range(len(header))]
    out = ["<div class=scroll><table>"]
    if any(header):  # metric names break after their underscores, so wide tables fit the page
        out.append("<tr>" + "".join(f"<th{cls[j]}>{h.replace('_', '_<wbr>')}</th>" for j, h in enumerate(header)) + "</tr>")
    for r in rows:
        out.append("<tr>" + "".join(f"<td{cls[j] if j < len(cls) else ''}>{c}</td>" for j, c in enumerate(r)) + "</tr>")
    out.append("</table></div>")
    return "".join(out)


def _meanings(names: list[str]) -> str:
    items = [f"<dt>{html.escape(n)}</dt><dd>{html.escape(METRIC_MEANINGS[n])}</dd>" for n in names if n in METRIC_MEANINGS]
    return f"<dl class=meaning>{''.join(items)}</dl>" if items else ""


def _header(report: Report) -> list[str]:
    e_ = html.escape
    gate = report.summary.get("gate") or {}
    gate_cls, gate_word = _verdict(gate.get("passed") if gate.get("metrics") else None)
    facts = [("images explained", str(len(report.entries))), ("unreadable", str(len(report.problems))),
             ("methods", e_(", ".join(report.methods)))]
    facts.append(("faithfulness gate", f"<span class='badge {gate_cls}'>{gate_word}</span>"))
    champion = report.summary.get("champion_ssim")
    if champion is not None:
        facts.append(("SSIM vs champion", _fmt(champion)))
    out = [
        f"<h1>Explanations for {e_(report.model_name)} <span class=muted>version {e_(report.model_version)}</span></h1>",
        "<div class=facts>" + "".join(f"<div class=fact><span class=muted>{k}</span><strong>{v}</strong></div>" for k, v in facts) + "</div>",
        _table(["", ""], [
            ["run", e_(report.run_name)], ["model", f"<code>{e_(report.model_uri)}</code>"],
            ["images", f"<code>{e_(report.images_uri)}</code>"],
            ["heatmaps", f"layer <code>{e_(report.cam_layer)}</code>, {e_(report.score_kind)}"],
        ] + ([["champion", f"<code>{e_(report.champion_uri)}</code>"]] if report.champion_uri else []), left=2),
        "<p class=muted>Heat: <span class=legend></span> low → high. Ordinal view: "
        "<span class='legend signed'></span> pushes the grade down → up. Green outline: ground-truth lesions.</p>",
    ]
    out += [f"<p class=muted>{e_(n)}</p>" for n in report.notes]
    return out


def _gate_and_metrics(report: Report) -> list[str]:
    e_ = html.escape
    out: list[str] = []
    gate = report.summary.get("gate") or {}
    if gate.get("metrics"):
        rows = []
        for name, g in gate["metrics"].items():
            cls, word = _verdict(g.get("passed"))
            rows.append([e_(name), _fmt(g.get("value")), f"{e_(g['op'])} {_fmt(g['threshold'])}",
                         f"<span class='badge {cls}'>{word}</span>", e_(METRIC_MEANINGS.get(name, ""))])
        out += ["<h2>Gate</h2>", _table(["metric", "value", "threshold", "result", "what it means"], rows, left_cols=(4,))]
    per_method = report.summary.get("metrics", {})
    if per_method:
        names = sorted({k for v in per_method.values() for k in v})
        rows = [[e_(m)] + [_fmt(vals.get(k)) for k in names] for m, vals in per_method.items()]
        out += ["<h2>Faithfulness</h2>", _table(["method"] + [e_(n) for n in names], rows), _meanings(names)]
    if report.agreement:
        names = sorted({k for v in report.agreement.values() for k in v})
        rows = [[e_(pair)] + [_fmt(vals.get(k)) for k in names] for pair, vals in report.agreement.items()]
        out += ["<h2>Agreement between methods</h2>", _table(["maps compared"] + [e_(n) for n in names], rows),
                _meanings(names)]
    return out


def _anatomy_summary(report: Report) -> list[str]:
    anatomy = report.summary.get("anatomy") or {}
    if not anatomy:
        return []
    e_ = html.escape
    regions = sorted({r for v in anatomy.values() for r in v.get("mass", {})})
    rows = []
    for method, v in anatomy.items():
        cells = [f"{_fmt(v['mass'].get(r))} <span class=muted>({_fmt(v['area'].get(r))})</span>" for r in regions]
        rows.append([e_(method)] + cells + [str(v.get("flagged", 0))])
    out = ["<h2>Where the heat is (anatomy check)</h2>",
           "<p class=muted>Share of heat on each structure, mean over images; in brackets the structure's share of "
           "the image (what a map spread evenly would give). Found with classical image analysis on the model "
           "input.</p>",
           _table(["method"] + [e_(r) for r in regions] + ["images flagged"], rows)]
    flagged = sum(v.get("flagged", 0) for v in anatomy.values())
    if flagged:
        out.append(f"<p class=flag>{flagged} map(s) put more than {_fmt(report.summary.get('anatomy_limit'))} of "
                   "their heat outside the retina: the model may be looking at the camera, not the eye.</p>")
    return out


def _bars(e: ImageEntry, names: list[str]) -> str:
    """The prediction as a bar chart (pure CSS); a regression head's single grade as one bar on 0..max."""
    e_ = html.escape
    probs = [float(p) for p in e.probabilities]
    if len(probs) == 1 and len(names) > 1:  # regression head: the continuous grade
        grade = probs[0]
        width = 100.0 * min(max(grade / (len(names) - 1), 0.0), 1.0)
        return (f"<div class=bars><span>grade</span><div class='bar pred'><span style='width:{width:.1f}%'></span></div>"
                f"<span>{grade:.2f}</span></div>")
    rows = []
    for k, p in enumerate(probs):
        cls = "bar pred" if k == e.predicted else "bar"
        label = e_(_class_name(names, k)) + (" ✓" if k == e.true_label else "")
        label_cls = " class=truth" if k == e.true_label else ""
        rows.append(f"<span{label_cls}>{label}</span><div class='{cls}'><span style='width:{100 * min(max(p, 0), 1):.1f}%'>"
                    f"</span></div><span>{p:.3f}</span>")
    return "<div class=bars>" + "".join(rows) + "</div>"


def _img(src: Callable[[str], str], path: str, alt: str, cls: str = "t") -> str:
    return f'<img class={cls} src="{html.escape(src(path))}" alt="{html.escape(alt)}">'


def _image_anatomy(e: ImageEntry, limit: float | None) -> str:
    if not e.anatomy:
        return ""
    method, v = next(iter(e.anatomy.items()))
    regions = list(v["mass"])
    cells = [f"{_fmt(v['mass'][r])} <span class=muted>({_fmt(v['area'].get(r))})</span>" for r in regions]
    out = f"<p class=muted>Heat of {html.escape(method)} per structure (area in brackets):</p>"
    out += _table([html.escape(r) for r in regions], [cells], left=0)
    outside = v["mass"].get("outside_fov", v["mass"].get("vitreous"))
    if limit is not None and outside is not None and outside > limit:
        out += f"<p class=flag>{_fmt(outside)} of the heat lies outside the retina (limit {_fmt(limit)}).</p>"
    return out


def _image_card(i: int, e: ImageEntry, report: Report, src: Callable[[str], str]) -> str:
    e_ = html.escape
    names = report.class_names
    truth = "" if e.true_label is None else f" · true: <strong>{e_(_class_name(names, e.true_label))}</strong>"
    out = [f"<div class=card id='img{i}'><h3>{e_(e.image_id)}</h3>",
           f"<p class='muted wrap'>{e_(e.source)}</p>",
           f"<p>predicted: <strong>{e_(_class_name(names, e.predicted))}</strong>{truth}</p>", _bars(e, names), "<div class=row>"]
    for path, title, caption, _ in _entry_figures(i, e):
        cap = e_(title) + (f"<br><span class=muted>{e_(caption)}</span>" if caption else "")
        out.append(f"<figure>{_img(src, path, title)}<figcaption>{cap}</figcaption></figure>")
    out.append("</div>")
    if e.champion_overlays:
        champ = "" if e.champion_predicted is None else f" (champion predicted {e_(_class_name(names, e.champion_predicted))})"
        out.append(f"<p class=muted>Champion vs challenger{champ}:</p><div class=row>")
        stem = _stem(i, e)
        for path, method, _ in _champion_files(i, e):
            ssim = e.champion_ssim.get(method)
            out.append(f"<figure>{_img(src, path, 'champion ' + method)}<figcaption>champion {e_(method)}</figcaption></figure>")
            out.append(f"<figure>{_img(src, f'{stem}_{slug(method)}.png', 'challenger ' + method)}"
                       f"<figcaption>challenger {e_(method)}<br>SSIM {_fmt(ssim)}</figcaption></figure>")
        out.append("</div>")
    out.append(_image_anatomy(e, report.summary.get("anatomy_limit")))
    if e.metrics:
        keys = sorted({k for v in e.metrics.values() for k in v})
        rows = [[e_(m)] + [_fmt(vals.get(k)) for k in keys] for m, vals in e.metrics.items()]
        out.append(f"<details><summary>Numbers for this image</summary>{_table(['method'] + [e_(k) for k in keys], rows)}</details>")
    maps = _map_files(i, e)
    if maps:
        out.append(f"<details><summary>Feature maps ({len(maps)} conv layers)</summary>")
        for path, f in maps:
            out.append(f"<details><summary>{e_(f.title)} <span class=muted>{e_(f.caption)}</span></summary>"
                       f"{_img(src, path, f.title, 'grid')}</details>")
        out.append("</details>")
    out.append("</div>")
    return "".join(out)


def patient_groups(entries: list[ImageEntry]) -> list[list[int]]:
    """Indices of entries, grouped so both eyes of an EyePACS patient (`<p>_left`, `<p>_right`) sit together."""
    by_patient: dict[str, dict[str, int]] = {}
    for i, e in enumerate(entries):
        m = EYE_ID.match(e.image_id)
        if m:
            by_patient.setdefault(m["patient"], {})[m["eye"]] = i
    pairs = {p: (eyes["right"], eyes["left"]) for p, eyes in by_patient.items() if len(eyes) == 2}
    placed: set[int] = set()
    groups: list[list[int]] = []
    for i, e in enumerate(entries):
        if i in placed:
            continue
        m = EYE_ID.match(e.image_id)
        pair = pairs.get(m["patient"]) if m else None
        group = list(pair) if pair else [i]  # right eye first, as the clinician faces the patient
        placed.update(group)
        groups.append(group)
    return groups


def _images_section(report: Report, src: Callable[[str], str]) -> list[str]:
    out = ["<h2>Images</h2>"]
    for group in patient_groups(report.entries):
        if len(group) == 2:
            patient = EYE_ID.match(report.entries[group[0]].image_id)["patient"]  # type: ignore[index]
            out.append(f"<section class=patient><p class=patient-title>Patient {html.escape(patient)}: right and left eye</p>")
            out += [_image_card(i, report.entries[i], report, src) for i in group]
            out.append("</section>")
        else:
            out.append(_image_card(group[0], report.entries[group[0]], report, src))
    return out


def _tail(report: Report, src: Callable[[str], str]) -> list[str]:
    e_ = html.escape
    out: list[str] = []
    if report.problems:
        out += ["<h2>Images that could not be read</h2>",
                _table(["name", "reason"], [[e_(n), e_(r)] for n, r in report.problems], left=2)]
    for heading, grids, folder in (("Feature maps", _report_level_maps(report), "feature_maps"),
                                   ("Filters", report.filters, "filters")):
        if not grids:
            continue
        out.append(f"<h2>{heading}</h2>")
        for j, g in enumerate(grids):
            path = f"{folder}/{j:03d}_{slug(g.title)}.png"
            out.append(f"<div class=card><h3>{e_(g.title)}</h3><p class=muted>{e_(g.caption)}</p>{_img(src, path, g.title, 'grid')}</div>")
    return out


def render_html(report: Report, src: Callable[[str], str]) -> str:
    """The page; `src(relative_path)` gives each image's `src` (the path itself, or a data URI)."""
    e_ = html.escape
    out = ["<!doctype html><html lang=en><head><meta charset='utf-8'>",
           "<meta name=viewport content='width=device-width,initial-scale=1'>",
           f"<title>Explanations: {e_(report.model_name)} {e_(report.model_version)}</title>",
           f"<style>{_CSS}</style></head><body><main>"]
    out += _header(report)
    out += _gate_and_metrics(report)
    out += _anatomy_summary(report)
    out += _images_section(report, src)
    out += _tail(report, src)
    out.append("</main></body></html>")
    return "\n".join(out)


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _json_safe(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _image_summary(e: ImageEntry, names: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "image_id": e.image_id, "source": e.source, "predicted": e.predicted,
        "predicted_name": _class_name(names, e.predicted), "true_label": e.true_label,
        "probabilities": [float(p) for p in e.probabilities], "metrics": e.metrics,
    }
    if e.anatomy:
        out["anatomy"] = e.anatomy
    if e.champion_ssim:
        out["champion_ssim"] = e.champion_ssim
        out["champion_predicted"] = e.champion_predicted
    return out


def summary_json(report: Report) -> dict[str, Any]:
    return _json_safe({
        **report.summary,
        "model_name": report.model_name,
        "model_version": report.model_version,
        "run": report.run_name,
        "model_uri": report.model_uri,
        "images_uri": report.images_uri,
        "modality": report.modality,
        "methods": report.methods,
        "cam_layer": report.cam_layer,
        "score_kind": report.score_kind,
        "champion_uri": report.champion_uri,
        "agreement": report.agreement,
        "num_images": len(report.entries),
        "unreadable": [{"name": n, "reason": r} for n, r in report.problems],
        "images": [_image_summary(e, report.class_names) for e in report.entries],
    })


def write_report(report: Report, out_dir: str | Path) -> Path:
    """Write PNGs, `summary.json` and `index.html` (relative links) into a local folder."""
    out_dir = Path(out_dir)
    for rel, pixels in _files(report).items():
        path = out_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_png(pixels))
    (out_dir / "summary.json").write_text(json.dumps(summary_json(report), indent=2, sort_keys=True) + "\n")
    (out_dir / "index.html").write_text(render_html(report, src=lambda rel: rel), encoding="utf-8")
    return out_dir


def self_contained_html(report: Report, out_dir: str | Path) -> str:
    """The same page with every PNG inlined as a data URI (for the KFP HTML artifact)."""
    out_dir = Path(out_dir)

    def inline(rel: str) -> str:
        return "data:image/png;base64," + base64.b64encode((out_dir / rel).read_bytes()).decode("ascii")

    return render_html(report, src=inline)


def markdown_summary(report: Report, report_uri: str = "") -> str:
    """A few lines for the KFP Markdown artifact: where the report is, the metrics, the gate."""
    lines = [
        f"# Explanations: {html.escape(report.model_name)} version {html.escape(report.model_version)}",
        "",
        f"- report: `{html.escape(report_uri)}`" if report_uri else "",
        f"- images explained: {len(report.entries)}, unreadable: {len(report.problems)}",
        f"- CAM layer: `{html.escape(report.cam_layer)}`",
        "",
    ]
    per_method = report.summary.get("metrics", {})
    if per_method:
        metric_names = sorted({k for v in per_method.values() for k in v})
        lines.append("| method | " + " | ".join(metric_names) + " |")
        lines.append("|---" * (len(metric_names) + 1) + "|")
        for method, vals in per_method.items():
            cells = [_fmt(vals.get(m)).replace("–", "-") for m in metric_names]
            lines.append(f"| {html.escape(method)} | " + " | ".join(cells) + " |")
    gate = report.summary.get("gate")
    if gate:
        lines += ["", f"Gate: {'passed' if gate.get('passed') else 'failed'}"]
        from components.explain.faithfulness import format_failures

        failures = format_failures(gate)
        if failures:
            lines.append(f"Failed: {html.escape(failures)}")
    return "\n".join(line for line in lines if line is not None) + "\n"


def report_uri(reports_uri: str, model_name: str, model_version: str, run_name: str) -> str:
    """`<reports>/<model>/<version>/<run>` with each part made path-safe."""
    return storage.join(reports_uri, slug(model_name), slug(model_version), slug(run_name))


def publish_report(local_dir: str | Path, uri: str) -> str:
    """Make the report visible at `uri` all at once; `summary.json` then `index.html` land last."""
    return storage.publish_folder(local_dir, uri, last=LAST_FILES)
