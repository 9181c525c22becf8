"""The explanation report: `index.html`, `summary.json` and PNGs in one folder, published atomically.

Every link in `index.html` is relative (`images/…png`), so the folder works wherever it is copied: a
local disk, an S3 prefix behind a static file server, a KFP artifact. Every string a user or a data
set controls (file names, image ids, class names, model names, layer names, reasons) goes through
`html.escape`; PNG file names are slugs, never the raw image id. The same page is also rendered
self-contained (PNGs inlined as base64 `data:` URIs) for the Kubeflow UI's HTML artifact viewer,
which cannot follow relative links, and a short Markdown summary is produced for the KFP `Markdown`
artifact.
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
    feature_maps: list[Grid] = field(default_factory=list)
    filters: list[Grid] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)  # metrics per method, gate, counts


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


_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .5em;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}
.card{border:1px solid #ddd;border-radius:6px;padding:.6em;margin:.8em 0}
.row{display:flex;flex-wrap:wrap;gap:.6em;align-items:flex-start}
figure{margin:0}figcaption{font-size:.85em;color:#555;text-align:center}
img.t{width:192px;height:192px;object-fit:contain;image-rendering:pixelated;background:#000}
.pass{color:#080}.fail{color:#b00}
"""


def _files(report: Report) -> dict[str, np.ndarray]:
    """Relative PNG path -> pixels, with the names the HTML refers to."""
    files: dict[str, np.ndarray] = {}
    for i, e in enumerate(report.entries):
        stem = f"{IMAGES_DIR}/{i:04d}_{slug(e.image_id)}"
        files[f"{stem}_input.png"] = e.original
        files[f"{stem}_model_input.png"] = e.model_input
        for m, ov in e.overlays.items():
            files[f"{stem}_{slug(m)}.png"] = ov
    for j, g in enumerate(report.feature_maps):
        files[f"feature_maps/{j:03d}_{slug(g.title)}.png"] = g.image
    for j, g in enumerate(report.filters):
        files[f"filters/{j:03d}_{slug(g.title)}.png"] = g.image
    return files


def render_html(report: Report, src: Callable[[str], str]) -> str:
    """The page; `src(relative_path)` gives each image's `src` (the path itself, or a data URI)."""
    e_ = html.escape
    names = report.class_names
    out = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>Explanations: {e_(report.model_name)} {e_(report.model_version)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>Explanations for {e_(report.model_name)} <small>version {e_(report.model_version)}</small></h1>",
        "<table>",
        f"<tr><th class=l>run</th><td class=l>{e_(report.run_name)}</td></tr>",
        f"<tr><th class=l>model</th><td class=l>{e_(report.model_uri)}</td></tr>",
        f"<tr><th class=l>images</th><td class=l>{e_(report.images_uri)}</td></tr>",
        f"<tr><th class=l>CAM layer</th><td class=l>{e_(report.cam_layer)} (gradients of {e_(report.score_kind)})</td></tr>",
        f"<tr><th class=l>explained / unreadable</th><td class=l>{len(report.entries)} / {len(report.problems)}</td></tr>",
        "</table>",
    ]
    # Metrics table: one row per method.
    per_method = report.summary.get("metrics", {})
    if per_method:
        metric_names = sorted({k for v in per_method.values() for k in v})
        out.append("<h2>Faithfulness</h2><table><tr><th class=l>method</th>")
        out += [f"<th>{e_(m)}</th>" for m in metric_names]
        out.append("</tr>")
        for method, vals in per_method.items():
            out.append(f"<tr><td class=l>{e_(method)}</td>" + "".join(f"<td>{_fmt(vals.get(m))}</td>" for m in metric_names) + "</tr>")
        out.append("</table>")
    gate = report.summary.get("gate")
    if gate:
        out.append("<table><tr><th class=l>gate</th><th>value</th><th>threshold</th><th>result</th></tr>")
        for name, g in gate.get("metrics", {}).items():
            verdict = "n/a" if g["passed"] is None else ("pass" if g["passed"] else "fail")
            out.append(
                f"<tr><td class=l>{e_(name)}</td><td>{_fmt(g['value'])}</td><td>{e_(g['op'])} {_fmt(g['threshold'])}</td>"
                f"<td class={'pass' if g['passed'] else 'fail'}>{verdict}</td></tr>"
            )
        out.append("</table>")
    # Images.
    out.append("<h2>Images</h2>")
    for i, e in enumerate(report.entries):
        stem = f"{IMAGES_DIR}/{i:04d}_{slug(e.image_id)}"
        probs = ", ".join(f"{e_(_class_name(names, k))}: {p:.3f}" for k, p in enumerate(e.probabilities))
        truth = _class_name(names, e.true_label)
        out.append(f"<div class=card><h3>{e_(e.image_id)}</h3><p>source: <code>{e_(e.source)}</code><br>")
        out.append(f"predicted: <b>{e_(_class_name(names, e.predicted))}</b> · true: <b>{e_(truth)}</b><br>")
        out.append(f"probabilities: {probs}</p><div class=row>")
        figures = [(f"{stem}_input.png", "input"), (f"{stem}_model_input.png", "preprocessed")]
        figures += [(f"{stem}_{slug(m)}.png", m) for m in e.overlays]
        for path, label in figures:
            out.append(f"<figure><img class=t src=\"{e_(src(path))}\" alt=\"{e_(label)}\"><figcaption>{e_(label)}</figcaption></figure>")
        out.append("</div>")
        if e.metrics:
            keys = sorted({k for v in e.metrics.values() for k in v})
            out.append("<table><tr><th class=l>method</th>" + "".join(f"<th>{e_(k)}</th>" for k in keys) + "</tr>")
            for method, vals in e.metrics.items():
                out.append(f"<tr><td class=l>{e_(method)}</td>" + "".join(f"<td>{_fmt(vals.get(k))}</td>" for k in keys) + "</tr>")
            out.append("</table>")
        out.append("</div>")
    if report.problems:
        out.append("<h2>Images that could not be read</h2><table><tr><th class=l>name</th><th class=l>reason</th></tr>")
        out += [f"<tr><td class=l>{e_(n)}</td><td class=l>{e_(r)}</td></tr>" for n, r in report.problems]
        out.append("</table>")
    for heading, grids, folder in (("Feature maps", report.feature_maps, "feature_maps"), ("Filters", report.filters, "filters")):
        if not grids:
            continue
        out.append(f"<h2>{heading}</h2>")
        for j, g in enumerate(grids):
            path = f"{folder}/{j:03d}_{slug(g.title)}.png"
            out.append(f"<div class=card><h3>{e_(g.title)}</h3><p>{e_(g.caption)}</p>")
            out.append(f"<img src=\"{e_(src(path))}\" alt=\"{e_(g.title)}\" style=\"max-width:100%\"></div>")
    out.append("</body></html>")
    return "\n".join(out)


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def summary_json(report: Report) -> dict[str, Any]:
    names = report.class_names
    return _json_safe({
        **report.summary,
        "model_name": report.model_name,
        "model_version": report.model_version,
        "run": report.run_name,
        "model_uri": report.model_uri,
        "images_uri": report.images_uri,
        "methods": report.methods,
        "cam_layer": report.cam_layer,
        "score_kind": report.score_kind,
        "num_images": len(report.entries),
        "unreadable": [{"name": n, "reason": r} for n, r in report.problems],
        "images": [
            {
                "image_id": e.image_id,
                "source": e.source,
                "predicted": e.predicted,
                "predicted_name": _class_name(names, e.predicted),
                "true_label": e.true_label,
                "probabilities": [float(p) for p in e.probabilities],
                "metrics": e.metrics,
            }
            for e in report.entries
        ],
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
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
    gate = report.summary.get("gate")
    if gate:
        lines += ["", f"Gate: {'passed' if gate.get('passed') else 'failed'}"]
    return "\n".join(line for line in lines if line is not None) + "\n"


def report_uri(reports_uri: str, model_name: str, model_version: str, run_name: str) -> str:
    """`<reports>/<model>/<version>/<run>` with each part made path-safe."""
    return storage.join(reports_uri, slug(model_name), slug(model_version), slug(run_name))


def publish_report(local_dir: str | Path, uri: str) -> str:
    """Make the report visible at `uri` all at once; `summary.json` then `index.html` land last."""
    return storage.publish_folder(local_dir, uri, last=LAST_FILES)
