"""Plain functions behind the batch-explanation pipeline's own steps (no KFP here).

- `resolve_model_uri`: pin `champion` to a concrete registry version once, at the start, so every
  shard explains the same model even if the alias moves while the run is going.
- `make_shards`: split a folder of new images into shard folders that explain steps process in parallel.
- `write_batch_index`: one report index that links the per-shard reports and aggregates their metrics.
"""

from __future__ import annotations

import html
import json
import math
import tempfile
from pathlib import Path

from components.common import storage
from components.common.config import ALIAS_CHAMPION, REGISTERED_MODEL, check_modality
from components.common.errors import RetinaError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
MASKS_FOLDER = "masks"


def resolve_model_uri(modality: str, version: str = "", alias: str = ALIAS_CHAMPION) -> str:
    """`models:/<name>/<version>`: the given version, or the one `alias` points at right now."""
    name = REGISTERED_MODEL[check_modality(modality)]
    if version:
        if not version.isdigit():
            raise RetinaError(f"model version must be a number, got {version!r} (leave it empty for @{alias})")
        return f"models:/{name}/{version}"
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        pinned = MlflowClient().get_model_version_by_alias(name, alias).version
    except MlflowException as exc:
        raise RetinaError(f"registered model {name} has no @{alias} version yet: run the training pipeline") from exc
    return f"models:/{name}/{pinned}"


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


def write_batch_index(report_uris: list[str], pointing_games: list[float], out_uri: str, title: str) -> str:
    """Publish `<out_uri>/index.html` + `summary.json` linking every shard report; returns `out_uri`.

    The mean pointing game counts only shards that had lesion masks (the explain step reports -1 otherwise).
    """
    if len(report_uris) != len(pointing_games):
        raise ValueError("one pointing game per shard report expected")
    scored = [g for g in pointing_games if g >= 0]
    summary = {
        "title": title,
        "shards": [{"report_uri": u, "pointing_game": g} for u, g in zip(report_uris, pointing_games, strict=True)],
        "mean_pointing_game": sum(scored) / len(scored) if scored else None,
    }
    rows = "\n".join(
        f'<tr><td><a href="{html.escape(_relative_link(u, out_uri), quote=True)}">{html.escape(u)}</a></td>'
        f"<td>{'n/a' if g < 0 else f'{g:.3f}'}</td></tr>"
        for u, g in zip(report_uris, pointing_games, strict=True)
    )
    mean = "n/a" if summary["mean_pointing_game"] is None else f"{summary['mean_pointing_game']:.3f}"
    page = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title></head><body>"
        f"<h1>{html.escape(title)}</h1><p>{len(report_uris)} shard report(s); mean pointing game {mean}.</p>"
        f"<table><tr><th>report</th><th>pointing game</th></tr>{rows}</table></body></html>"
    )
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "summary.json").write_text(json.dumps(summary, indent=2))
        Path(tmp, "index.html").write_text(page)
        storage.publish_folder(tmp, out_uri, last=["index.html"], overwrite=True)
    return out_uri.rstrip("/")


def _relative_link(report_uri: str, index_uri: str) -> str:
    """Link from the index to a shard report: relative when both sit in one bucket/folder tree."""
    report, index = report_uri.rstrip("/"), index_uri.rstrip("/")
    common = storage.parent(index)
    if report.startswith(common + "/"):
        return "../" + report[len(common) + 1 :] + "/index.html"
    return report + "/index.html"
