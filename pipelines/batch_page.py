"""The batch-explanation index page: aggregate numbers, the gate verdict and one row per shard report.

Same look as the per-shard reports (their stylesheet), plain HTML, no script, every string escaped.
`links=True` gives the page published beside the shard reports (relative links that resolve from S3
behind a static server or a local copy); `links=False` the copy for the Kubeflow UI's HTML artifact,
which renders the page on its own, where relative links cannot resolve: the report locations are text.
"""

from __future__ import annotations

import html
from typing import Any

from components.explain.report import _CSS, METRIC_MEANINGS, _fmt, _meanings, _table


def _badge(passed: bool | None) -> str:
    if passed is None:
        return "<span class='badge na'>no gate</span>"
    return "<span class='badge pass'>pass</span>" if passed else "<span class='badge fail'>fail</span>"


def _metrics_section(aggregate: dict[str, Any]) -> list[str]:
    metrics = aggregate.get("metrics") or {}
    if not metrics:
        return ["<p class=muted>No image could be explained in any shard.</p>"]
    names = sorted({k for v in metrics.values() for k in v})
    rows = [[html.escape(m)] + [_fmt(v.get(k)) for k in names] for m, v in metrics.items()]
    out = ["<h2>Faithfulness over all shards</h2>",
           "<p class=muted>Pooled over every explained image, computed exactly as one report over all of them "
           "would; a dash means the number does not apply (e.g. no image had a lesion mask).</p>",
           _table(["method"] + [html.escape(n) for n in names], rows), _meanings(names)]
    anatomy = aggregate.get("anatomy") or {}
    if anatomy:
        regions = sorted({r for v in anatomy.values() for r in v["mass"]})
        rows = [[html.escape(m)] + [f"{_fmt(v['mass'].get(r))} <span class=muted>({_fmt(v['area'].get(r))})</span>"
                                    for r in regions] + [str(v.get("flagged", 0))] for m, v in anatomy.items()]
        out += ["<h2>Where the heat is (anatomy check)</h2>",
                _table(["method"] + [html.escape(r) for r in regions] + ["images flagged"], rows)]
    return out


def _shard_rows(summary: dict[str, Any], shards: list[dict[str, Any] | None], links: bool) -> list[list[str]]:
    rows = []
    for item, shard in zip(summary["shards"], shards, strict=True):
        uri = item["report_uri"]
        name = html.escape(uri.rstrip("/").rsplit("/", 1)[-1])
        where = (f'<a href="{html.escape(item["link"], quote=True)}">{name}</a>' if links
                 else f"{name}<br><code class=muted>{html.escape(uri)}/index.html</code>")
        if shard is None:
            rows.append([where, "–", "–", "<span class='badge fail'>report missing</span>", "–", "–"])
            continue
        metrics = next(iter((shard.get("metrics") or {}).values()), {})
        pg = item["pointing_game"]
        rows.append([where, str(shard.get("num_images", 0)), str(len(shard.get("unreadable", []))),
                     _badge(item["gate_passed"]), "no lesion masks" if pg is None or pg < 0 else f"{pg:.3f}",
                     _fmt(metrics.get("insertion_minus_deletion"))])
    return rows


def render_index(summary: dict[str, Any], shards: list[dict[str, Any] | None], index_uri: str, links: bool) -> str:
    e_ = html.escape
    agg = summary["aggregate"]
    verdict = _badge(agg["gate_passed"] if agg["num_images"] or agg["missing_shards"] else None)
    facts = [("shards", str(agg["shards"])), ("images explained", str(agg["num_images"])),
             ("unreadable", str(agg["unreadable"])), ("faithfulness gate", verdict)]
    out = ["<!doctype html><html lang=en><head><meta charset='utf-8'>",
           "<meta name=viewport content='width=device-width,initial-scale=1'>",
           f"<title>{e_(summary['title'])}</title><style>{_CSS}</style></head><body><main>",
           f"<h1>{e_(summary['title'])}</h1>",
           "<div class=facts>" + "".join(f"<div class=fact><span class=muted>{k}</span><strong>{v}</strong></div>" for k, v in facts) + "</div>"]
    problems = [f"{n} shard(s) failed the faithfulness gate" for n in [agg["gate_shards_failed"]] if n]
    problems += [f"{n} shard report(s) missing (the explain step did not publish)" for n in [agg["missing_shards"]] if n]
    if problems:
        out.append(f"<p class=flag>{'; '.join(problems)}: see the shard reports below.</p>")
    if not links:
        out.append(f"<p class=muted>The links work in the published copy, <code>{e_(index_uri)}/index.html</code> "
                   "(from S3, a static file server or a local copy); here each report's location is shown as text.</p>")
    out += _metrics_section(agg)
    out += ["<h2>Shard reports</h2>",
            _table(["report", "images", "unreadable", "gate", "pointing game", "insertion − deletion"],
                   _shard_rows(summary, shards, links))]
    out.append(f"<p class=muted>{e_(METRIC_MEANINGS['pointing_game'])}</p></main></body></html>")
    return "\n".join(out)
