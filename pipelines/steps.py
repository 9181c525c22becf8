"""The batch-explanation pipeline's own small steps, thin over `pipelines.batch`.

No `from __future__ import annotations`: KFP reads the real annotation objects.
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Output

from components.common.images import PROJECT_IMAGE


@dsl.component(base_image=PROJECT_IMAGE, install_kfp_package=False)
def resolve_model(modality: str, version: str = "") -> str:
    """`models:/<name>/<version>` for `version`, or for the current `champion` when empty."""
    from pipelines.batch import resolve_model_uri

    return resolve_model_uri(modality, version)


@dsl.component(base_image=PROJECT_IMAGE, install_kfp_package=False)
def list_shards(images_uri: str, shard_size: int, work_uri: str, run_name: str) -> list[dict]:
    """Shards (`{"uri", "run_name"}`) of at most `shard_size` images for the parallel explain steps."""
    from pipelines.batch import make_shards

    return make_shards(images_uri, shard_size, work_uri, run_name)


@dsl.component(base_image=PROJECT_IMAGE, install_kfp_package=False)
def merge_reports(
    report_uris: list[str],
    pointing_games: list[float],
    reports_uri: str,
    model_uri: str,
    run_name: str,
    index: Output[HTML],
) -> NamedTuple("MergeOutputs", [("index_uri", str), ("mean_pointing_game", float)]):
    """One index over the shard reports, at <reports>/<model>/<version>/<run_name>/."""
    import json
    from collections import namedtuple

    from components.common import storage
    from components.common.model_ref import ModelRef
    from pipelines.batch import write_batch_index

    ref = ModelRef.parse(model_uri)
    name, version = ref.name, ref.version or ref.alias
    out_uri = storage.join(reports_uri, name, version or "latest", run_name)
    write_batch_index(list(report_uris), list(pointing_games), out_uri, f"Batch explanation {name} v{version}",
                      html_path=index.path)
    mean = json.loads(storage.read_text(storage.join(out_uri, "summary.json")))["mean_pointing_game"]
    return namedtuple("MergeOutputs", ["index_uri", "mean_pointing_game"])(out_uri, -1.0 if mean is None else mean)
