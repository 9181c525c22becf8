"""The same preprocess code gives the same dataset under different Beam runners.

Runners, all offline (nothing is downloaded; Prism and the Flink/Spark job-server jars would be):
- `FnApiRunner`: Beam's local engine in this process (the project's default);
- `FnApiRunner` with `--direct_running_mode=multi_processing --direct_num_workers=2`: the SDK harness in
  two worker processes over the Fn API (gRPC), bundles split between them;
- `PortableRunner --job_endpoint=embed --environment_type=LOOPBACK`: the pipeline goes through Beam's Job
  API (proto translation, artifact staging, job service) — the submission path a Flink job server takes
  on the cluster (infra/k8s/flink) — and runs in an embedded job service.

What is compared, and why not the shard files' bytes: `Reshuffle` (which spreads the decode work over the
workers) and the shard writers assign records to shards in an order no runner promises, so the same
records can land in different shards or positions. Each record itself is deterministic. So per split
the sorted list of raw record bytes (every serialized tf.train.Example, byte for byte), the shard file
names, `rejected.jsonl` (sorted by the driver) byte for byte, and the manifest minus the two fields
that describe the run (`runner`, `timing`) must be equal.

Also here (fast): the cluster side of that runner switch, infra/k8s/flink, validated against the Flink
Kubernetes Operator's CRD schema, and its README's `beam_args` parsed by Beam itself.
"""

from __future__ import annotations

import gzip
import json
import re
import shlex
import struct
from pathlib import Path

import pytest
import yaml

from components.common.errors import RetinaError
from components.preprocess.pipeline import run_preprocess

REPO = Path(__file__).resolve().parents[2]
FLINK = REPO / "infra" / "k8s" / "flink"

RUNNERS = {
    "in-process": [],
    "multi-process": ["--direct_running_mode=multi_processing", "--direct_num_workers=2"],
    "portable": ["--runner=PortableRunner", "--job_endpoint=embed", "--environment_type=LOOPBACK"],
}
RUN_FIELDS = ("runner", "timing")


def tfrecords(path: Path) -> list[bytes]:
    """The records of one gzip TFRecord file (framing: u64 length, u32 crc, data, u32 crc)."""
    data, out, pos = gzip.decompress(path.read_bytes()), [], 0
    while pos < len(data):
        (length,) = struct.unpack_from("<Q", data, pos)
        out.append(data[pos + 12 : pos + 12 + length])
        pos += 12 + length + 4
    assert pos == len(data), f"{path}: trailing bytes"
    return out


def dataset_contents(root: Path) -> dict:
    manifest = json.loads((root / "manifest.json").read_text())
    records = {split: sorted(r for rel in info["shards"] for r in tfrecords(root / rel))
               for split, info in manifest["splits"].items()}
    run = {k: manifest.pop(k) for k in RUN_FIELDS}
    return {"manifest": manifest, "records": records, "rejected": (root / "rejected.jsonl").read_bytes(),
            "files": sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()), "run": run}


@pytest.fixture(scope="module")
def outputs(fundus_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    out = {}
    for name, args in RUNNERS.items():
        root = tmp_path_factory.mktemp(f"runner-{name}")
        run_preprocess("fundus", str(fundus_raw), str(root), val_fraction=0.2, test_fraction=0.2, seed=1,
                       beam_args=args, images_per_shard=3)
        out[name] = dataset_contents(root)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("other", [n for n in RUNNERS if n != "in-process"])
def test_runners_write_the_same_records_manifest_and_dead_letters(outputs, other):
    base, got = outputs["in-process"], outputs[other]
    assert got["manifest"] == base["manifest"]
    assert got["files"] == base["files"]
    assert got["rejected"] == base["rejected"]
    for split, records in base["records"].items():
        assert got["records"][split] == records, f"{other}: {split} records differ"


@pytest.mark.slow
def test_the_comparison_sees_real_data(outputs):
    """Not vacuous: several splits, several shards, records that differ from each other."""
    base = outputs["in-process"]
    assert base["manifest"]["num_images"] == 10
    assert sum(len(r) for r in base["records"].values()) == 10
    assert len({r for records in base["records"].values() for r in records}) == 10
    assert sum(len(info["shards"]) for info in base["manifest"]["splits"].values()) >= 3
    assert outputs["portable"]["run"]["runner"] == "PortableRunner"


@pytest.mark.slow
def test_runner_chosen_shards_hold_the_same_records(outputs, fundus_raw, tmp_path):
    """`images_per_shard=0`: shards are the workers' bundles (no shuffle of the records), same contents."""
    run_preprocess("fundus", str(fundus_raw), str(tmp_path), val_fraction=0.2, test_fraction=0.2, seed=1,
                   beam_args=RUNNERS["multi-process"], images_per_shard=0)
    got, base = dataset_contents(tmp_path), outputs["in-process"]
    assert got["records"] == base["records"]
    assert got["rejected"] == base["rejected"]
    assert {k: v for k, v in got["manifest"].items() if k != "splits"} == \
        {k: v for k, v in base["manifest"].items() if k != "splits"}
    for split, info in got["manifest"]["splits"].items():
        assert info["count"] == base["manifest"]["splits"][split]["count"]
        assert 1 <= len(info["shards"]) <= 2  # one per bundle: at most one per worker here


def test_negative_images_per_shard_is_refused(fundus_raw, tmp_path):
    with pytest.raises(RetinaError, match="images_per_shard"):
        run_preprocess("fundus", str(fundus_raw), str(tmp_path / "out"), images_per_shard=-1)
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- the Flink side (fast)
def _docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((FLINK / name).read_text()) if d]


def test_flink_deployment_is_valid_against_the_operator_crd_schema(strict_crd_validator):
    schema = json.loads((FLINK / "crd" / "flinkdeployment-v1beta1.schema.json").read_text())
    # the API server always accepts these at the root of a custom resource; this CRD does not list them
    schema["properties"].update({"apiVersion": {"type": "string"}, "kind": {"type": "string"},
                                 "metadata": {"type": "object"}})
    validator = strict_crd_validator(schema)
    (deployment,) = _docs("flinkdeployment.yaml")
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(deployment)]
    assert errors == []
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["taskManager"]["replica"] = 2  # a typo the API server would silently prune
    assert list(validator.iter_errors(broken))


def test_flink_session_cluster_job_server_and_worker_pool_fit_together():
    (deployment,) = _docs("flinkdeployment.yaml")
    server, service = _docs("beam-job-server.yaml")
    from apache_beam.version import __version__ as beam_version

    assert "job" not in deployment["spec"]  # a session cluster: the job server submits the jobs
    flink = deployment["spec"]["flinkVersion"].removeprefix("v").replace("_", ".")
    image = server["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == f"apache/beam_flink{flink}_job_server:{beam_version}"  # same Beam release as the SDK
    args = server["spec"]["template"]["spec"]["containers"][0]["args"]
    assert f"--flink-master={deployment['metadata']['name']}-rest:8081" in args  # the operator's REST service
    sidecar = [c for c in deployment["spec"]["taskManager"]["podTemplate"]["spec"]["containers"]
               if c["name"] == "beam-worker-pool"][0]
    from components.common.images import PROJECT_IMAGE

    assert sidecar["image"] == PROJECT_IMAGE
    assert "--service_port=50000" in sidecar["args"]
    assert {ref.get("secretRef", {}).get("name") for ref in sidecar["envFrom"]} >= {"retina-s3"}
    assert not any("value" in e and "SECRET" in e["name"] for e in sidecar.get("env", []))
    assert {p["port"] for p in service["spec"]["ports"]} == {8099, 8098, 8097}


def test_readme_beam_args_are_what_beam_parses_into_a_portable_external_job():
    from apache_beam.options.pipeline_options import FlinkRunnerOptions, PipelineOptions, PortableOptions

    from components.preprocess.pipeline import local_runner_args

    text = (FLINK / "README.md").read_text()
    block = re.search(r"## The exact `beam_args`.*?```\n(.*?)```", text, re.S).group(1)
    args = shlex.split(block)
    assert local_runner_args(args) == args  # the preprocess step passes them to Beam untouched
    options = PipelineOptions(args)
    portable = options.view_as(PortableOptions)
    assert options.get_all_options()["runner"] == "PortableRunner"
    (server,) = [d for d in _docs("beam-job-server.yaml") if d["kind"] == "Service"]
    host = f"{server['metadata']['name']}.kubeflow.svc.cluster.local"
    assert portable.job_endpoint == f"{host}:8099" and portable.artifact_endpoint == f"{host}:8098"
    assert (portable.environment_type, portable.environment_config) == ("EXTERNAL", "localhost:50000")
    assert options.view_as(FlinkRunnerOptions).parallelism == 16
    assert f'beam_args="{" ".join(args)}"' in text  # the one-line form shows the same arguments
