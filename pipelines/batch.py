"""Plain functions behind the batch-explanation pipeline's own steps (no KFP here).

- `resolve_model_uri`: pin `champion` to a concrete registry version once, at the start, so every
  shard explains the same model even if the alias moves while the run is going.
- `make_shards`: split a folder of new images into shard folders that explain steps process in parallel.
- `write_batch_index`: one report index that links the per-shard reports and aggregates their metrics.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

from components.common import storage
from components.common.config import ALIAS_CHAMPION, REGISTERED_MODEL, check_modality
from components.common.errors import RetinaError
from components.common.model_ref import ModelRef, ModelRefError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
MASKS_FOLDER = "masks"


def resolve_model_uri(modality: str, version: str = "", alias: str = ALIAS_CHAMPION) -> str:
    """`models:/<name>/<version>`: the given version, or the one `alias` points at right now."""
    name = REGISTERED_MODEL[check_modality(modality)]
    try:
        ref = ModelRef.registry(name, version=version) if version else ModelRef.registry(name, alias=alias).pinned()
    except ModelRefError as exc:
        hint = f" (leave the version empty for @{alias})" if version else ": run the training pipeline"
        raise RetinaError(f"{exc}{hint}") from exc
    return ref.uri


def _is_image(uri: str) -> bool:
    return uri.lower().endswith(IMAGE_SUFFIXES)


def list_images(images_uri: str) -> tuple[list[str], dict[str, str]]:
    """Image files under `images_uri` (sorted) and lesion masks by image stem (from any `masks/` folder)."""
    if not storage.exists(images_uri):
        raise RetinaError(f"no such image folder or prefix: {images_uri}")
    images, masks = [], {}
    for uri in storage.list_uris(images_uri):
        if not _is_image(uri):
            continue
        if f"/{MASKS_FOLDER}/" in uri.replace("\\", "/"):
            masks[storage.basename(uri).rsplit(".", 1)[0]] = uri
        else:
            images.append(uri)
    if not images:
        raise RetinaError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {images_uri}")
    return sorted(images), masks


def make_shards(images_uri: str, shard_size: int, work_uri: str, run_name: str = "batch") -> list[dict[str, str]]:
    """Shards of at most `shard_size` images: `[{"uri": folder, "run_name": "<run_name>-shard-NNNNN"}]`.

    The key is not `name`: on a ParallelFor loop item, `.name` is the KFP channel's own name.

    The name is the shard's report folder (distinct per shard and per run). A set that fits one shard
    is explained in place (no copy). Otherwise images are copied (server-side on S3) into
    `<work_uri>/shard-NNNNN/`, flat, with distinct names, masks beside in `masks/`; a dataset's labels do
    not travel (batch explanation is for new, unlabelled images).
    """
    if shard_size < 1:
        raise RetinaError(f"shard_size must be at least 1, got {shard_size}")
    images, masks = list_images(images_uri)
    if len(images) <= shard_size:
        return [{"uri": images_uri.rstrip("/"), "run_name": f"{run_name}-shard-00000"}]
    count = math.ceil(len(images) / shard_size)
    shards = []
    seen: set[str] = set()
    for i in range(count):
        shard = storage.join(work_uri, f"shard-{i:05d}")
        for uri in images[i * shard_size : (i + 1) * shard_size]:
            name = storage.basename(uri)
            stem, _, suffix = name.rpartition(".")
            unique = stem
            while unique in seen:  # same file name in two sub-folders
                unique += "_"
            seen.add(unique)
            storage.copy(uri, storage.join(shard, f"{unique}.{suffix}"))
            if stem in masks:
                storage.copy(masks[stem], storage.join(shard, MASKS_FOLDER, f"{unique}.png"))
        shards.append({"uri": shard, "run_name": f"{run_name}-shard-{i:05d}"})
    return shards


def _read_shard(report_uri: str) -> dict[str, Any] | None:
    """A shard report's `summary.json`, or None when the report is missing (a failed shard)."""
    try:
        return storage.read_json(storage.join(report_uri, "summary.json"))
    except Exception:  # noqa: BLE001 - a missing or unreadable shard is shown as such, not fatal
        return None


def aggregate_shards(summaries: list[dict[str, Any] | None]) -> dict[str, Any]:
    """Metrics over every image of every shard, computed as a single report computes them.

    Per-image numbers (deletion/insertion AUC, pointing hits, randomisation SSIM, ...) are pooled and
    summarised by `faithfulness.summarize`, so the batch numbers equal those of one report over all the
    images; anatomy shares are image-weighted means. The gate passes when every shard's gate passed.
    """
    from components.explain.faithfulness import summarize

    present = [s for s in summaries if s]
    pooled: dict[str, dict[str, list[float]]] = {}
    for s in present:
        for image in s.get("images", []):
            for method, values in (image.get("metrics") or {}).items():
                for name, value in values.items():
                    pooled.setdefault(method, {}).setdefault(name, []).append(math.nan if value is None else float(value))
    metrics = {m: summarize(v) for m, v in pooled.items()}
    anatomy: dict[str, dict[str, Any]] = {}
    for s in present:
        weight = int(s.get("num_images", 0))
        for method, a in (s.get("anatomy") or {}).items():
            agg = anatomy.setdefault(method, {"mass": {}, "area": {}, "flagged": 0, "_n": 0})
            agg["flagged"] += int(a.get("flagged", 0))
            agg["_n"] += weight
            for kind in ("mass", "area"):
                for region, value in (a.get(kind) or {}).items():
                    agg[kind][region] = agg[kind].get(region, 0.0) + weight * float(value)
    for agg in anatomy.values():
        n = max(agg.pop("_n"), 1)
        for kind in ("mass", "area"):
            agg[kind] = {r: v / n for r, v in agg[kind].items()}
    gates = [s.get("gate") or {} for s in present]
    decided = [g for g in gates if g.get("metrics")]
    return {
        "num_images": sum(int(s.get("num_images", 0)) for s in present),
        "unreadable": sum(len(s.get("unreadable", [])) for s in present),
        "shards": len(summaries),
        "missing_shards": len(summaries) - len(present),
        "metrics": metrics,
        "anatomy": anatomy,
        "gate_passed": all(bool(g.get("passed", True)) for g in decided) and len(present) == len(summaries),
        "gate_shards_failed": sum(1 for g in decided if not g.get("passed", True)),
    }


def write_batch_index(report_uris: list[str], pointing_games: list[float], out_uri: str, title: str,
                      html_path: str | None = None) -> str:
    """Publish `<out_uri>/index.html` + `summary.json` over every shard report; returns `out_uri`.

    The page links each shard's report relatively (`../<shard>/index.html`), so it works from S3 behind a
    static file server or a local copy; with `html_path` the same page is also written for the KFP HTML
    artifact, where relative links cannot resolve, so there the report locations are shown as text.
    The mean pointing game counts only shards that had lesion masks (the explain step reports -1 otherwise).
    """
    if len(report_uris) != len(pointing_games):
        raise ValueError("one pointing game per shard report expected")
    scored = [g for g in pointing_games if g >= 0]
    shards = [_read_shard(u) for u in report_uris]
    aggregate = aggregate_shards(shards)
    summary = {
        "title": title,
        "shards": [{"report_uri": u, "link": _relative_link(u, out_uri), "pointing_game": g,
                    "num_images": (s or {}).get("num_images"), "gate_passed": _shard_gate(s)}
                   for u, g, s in zip(report_uris, pointing_games, shards, strict=True)],
        "mean_pointing_game": sum(scored) / len(scored) if scored else None,
        "aggregate": aggregate,
    }
    from pipelines.batch_page import render_index

    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "summary.json").write_text(json.dumps(summary, indent=2))
        Path(tmp, "index.html").write_text(render_index(summary, shards, out_uri, links=True), encoding="utf-8")
        if html_path:
            Path(html_path).parent.mkdir(parents=True, exist_ok=True)
            Path(html_path).write_text(render_index(summary, shards, out_uri, links=False), encoding="utf-8")
        storage.publish_folder(tmp, out_uri, last=["index.html"], overwrite=True)
    return out_uri.rstrip("/")


def _shard_gate(summary: dict[str, Any] | None) -> bool | None:
    if summary is None:
        return None
    gate = summary.get("gate") or {}
    return bool(gate.get("passed", True)) if gate.get("metrics") else None


def _relative_link(report_uri: str, index_uri: str) -> str:
    """Link from the index to a shard report: relative when both sit in one bucket/folder tree."""
    report, index = report_uri.rstrip("/"), index_uri.rstrip("/")
    common = storage.parent(index)
    if report.startswith(common + "/"):
        return "../" + report[len(common) + 1 :] + "/index.html"
    return report + "/index.html"
