"""`retina demo`: the whole system on this machine, from a fresh clone, in a few minutes.

stack up (or reuse) -> synthetic fundus + OCT sets and the two real scikit-image images into s3://raw
-> training pipeline for each modality on the kfp local runner (tiny sizes) -> the champion served by the
local TF-Serving-compatible gRPC server, started detached -> a gRPC prediction on the real retina.jpg
-> the batch explanation pipeline -> a summary table. The stack and the model server stay up, so
`retina predict` and the MLflow UI work afterwards; `retina stack down` stops everything
(it calls `stop_model_server`).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.common.config import REGISTERED_MODEL, retina_home
from components.common.errors import RetinaError

RAW_PREFIX = "s3://raw/demo"
REPORTS_URI = "s3://reports"


@dataclass(frozen=True)
class DemoSettings:
    """Sizes that train models that really learn the synthetic sets, yet keep the whole demo within
    ~10 minutes on 2 CPU cores (see `retina demo --help` for the knobs).

    128 px, not 64: at 64 px a microaneurysm is under a pixel and the CAM layer 4x4, so the heatmaps
    could not sit on the lesions; at 128 px the DeepSense CAM layer is 16x16 and `layercam-fused`
    reads the 128/64/32 px stages (README, "Explanations that find the disease").
    """

    image_size: int = 128
    epochs: int = 16
    images_per_set: int = 320
    raw_image_size: int = 160
    batch_size: int = 16
    learning_rate: float = 2e-3
    modalities: tuple[str, ...] = ("fundus", "oct")
    # Small architectures keep training to seconds on 2 CPU cores.
    model_names: dict[str, str] = field(default_factory=lambda: {"fundus": "deepsense", "oct": "oct_cnn"})
    model_width: float = 0.25
    explain_images: int = 8
    explain_methods: str = "layercam-fused,gradcam,layercam"
    shard_size: int = 1  # the two real images -> two shards, so the ParallelFor fan-out shows


# --------------------------------------------------------------------------- the demo
# Lines of a step's output worth showing live: the train step's one line per epoch (and its data summary).
LIVE_LINE = re.compile(r"\b(epoch \d+/\d+|data \{|regression thresholds tuned|resumed from checkpoint)")


@contextlib.contextmanager
def _output_to(log_path: Path, live: re.Pattern[str] | None = None) -> Iterator[None]:
    """Send everything the kfp local runner and its step subprocesses print to a log file, and echo the
    lines `live` matches to the terminal as they come (the training step's epochs and metrics).

    The runner echoes each step's executor input/output JSON and TensorFlow's start-up lines; the demo
    shows one line per stage plus the live lines, and names the log, whose tail it prints if a stage fails.
    The step subprocesses write into a pipe (file descriptors 1 and 2, which they inherit); a thread
    copies every line to the log and the matching ones to the saved terminal.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    read_end, write_end = os.pipe()
    terminal = os.fdopen(os.dup(saved[0]), "w", buffering=1)
    pump = threading.Thread(target=_pump, args=(read_end, log_path, terminal, live), daemon=True)
    pump.start()
    os.dup2(write_end, 1)
    os.dup2(write_end, 2)
    os.close(write_end)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)  # closes the last write end we hold: the pump sees EOF once steps are gone
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])
        pump.join(timeout=10)
        terminal.close()


def _pump(read_end: int, log_path: Path, terminal: Any, live: re.Pattern[str] | None) -> None:
    with os.fdopen(read_end, "rb") as source, open(log_path, "ab") as log:
        for raw in source:
            log.write(raw)
            log.flush()
            line = raw.decode(errors="replace").strip()
            match = live.search(line) if live else None
            if match:
                terminal.write(f"      {line[match.start():]}\n")


def _run_quietly(name: str, arguments: dict[str, Any], home: Path, log_path: Path) -> dict[str, Any]:
    from pipelines.local import run_local

    try:
        with _output_to(log_path, LIVE_LINE):
            return run_local(name, arguments, home / "pipeline-root")
    except RetinaError as exc:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-25:])
        raise RetinaError(f"{exc}\n--- last lines of {log_path} ---\n{tail}") from exc


def _initial_models_config(serving_base: str, modalities: tuple[str, ...]) -> Path:
    """A models.config naming the models to serve (no versions yet), so the server can start before training."""
    from serving.model_repository import model_entry, read_models_config, write_models_config

    config = Path(serving_base) / "models.config"
    existing = {e.name for e in read_models_config(str(config))} if config.is_file() else set()
    missing = [REGISTERED_MODEL[m] for m in modalities if REGISTERED_MODEL[m] not in existing]
    if missing:
        entries = read_models_config(str(config)) if config.is_file() else []
        entries += [model_entry(serving_base, name) for name in missing]
        for name in missing:
            (Path(serving_base) / name).mkdir(parents=True, exist_ok=True)
        write_models_config(str(config), entries)
    return config


class _Steps:
    """Numbered progress lines with the time each step took."""

    def __init__(self, total: int) -> None:
        self.total, self.n, self.t0 = total, 0, time.monotonic()

    def start(self, text: str) -> float:
        self.n += 1
        print(f"[{self.n}/{self.total}] {text} ...", flush=True)
        return time.monotonic()

    def done(self, t: float, text: str = "") -> None:
        print(f"      done in {time.monotonic() - t:.0f}s{'  ' + text if text else ''}", flush=True)


def _write_data(settings: DemoSettings) -> dict[str, str]:
    from infra.local import synthetic
    from infra.local.samples import write_samples

    uris = {}
    writers = {"fundus": synthetic.write_fundus_dataset, "oct": synthetic.write_oct_dataset}
    for modality in settings.modalities:
        uri = f"{RAW_PREFIX}/{modality}"
        writers[modality](uri, n=settings.images_per_set, seed=0, size=settings.raw_image_size, balance=True)
        uris[modality] = uri
    uris["samples"] = f"{RAW_PREFIX}/samples"
    write_samples(uris["samples"])
    return uris


def _training_arguments(
    settings: DemoSettings, modality: str, raw_uri: str, serving_base: str, server_address: str
) -> dict[str, Any]:
    return {
        "modality": modality,
        "raw_data_uri": raw_uri,
        "image_size": settings.image_size,
        "model_name": settings.model_names[modality],
        "model_width": settings.model_width,
        "epochs": settings.epochs,
        "batch_size": settings.batch_size,
        "learning_rate": settings.learning_rate,
        "gpu_count": 0,
        "serving_base_uri": serving_base,
        "server_base_path": "",
        # The model server runs before training, so deploy's canary check (status AVAILABLE + one Predict)
        # decides whether `stable` moves, exactly as against TF Serving on the cluster.
        "server_address": server_address,
        "reports_uri": REPORTS_URI,
        "explain_images": settings.explain_images,
        "explain_methods": settings.explain_methods,
    }


def _predict_retina(address: str, samples_uri: str) -> tuple[str, float]:
    from components.common import storage
    from components.common.config import CLASS_NAMES
    from serving.client import ServingClient

    image = storage.read_bytes(storage.join(samples_uri, "retina.jpg"))
    client = ServingClient(address)
    deadline = time.monotonic() + 120
    while True:  # the server loads the first versions in the background after opening its port
        try:
            result = client.predict_images(REGISTERED_MODEL["fundus"], [image])
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)
    probs = _probabilities(result)
    best = max(range(len(probs)), key=probs.__getitem__)
    return CLASS_NAMES["fundus"][best], float(probs[best])


def _probabilities(result: Any) -> list[float]:
    """First row of `probabilities` from whatever shape the client returns (dict of arrays or an object)."""
    import numpy as np

    probs = result["probabilities"] if isinstance(result, dict) else result.probabilities
    return [float(p) for p in np.asarray(probs).reshape(-1, np.asarray(probs).shape[-1])[0]]


def _local_copy(report_uri: str, home: Path) -> Path:
    from components.common import storage

    bucket_path = report_uri.split("://", 1)[-1]
    dest = home / bucket_path  # s3://reports/<model>/<version>/<run> -> .retina/reports/<model>/<version>/<run>
    storage.download_dir(report_uri, dest)
    return dest


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(out)


def run_demo(settings: DemoSettings | None = None) -> int:
    from infra.local.stack import start_model_server, start_stack

    settings = settings or DemoSettings()
    steps = _Steps(total=3 + len(settings.modalities) + 2)
    home = retina_home()

    t = steps.start("local stack: SeaweedFS (S3) + MLflow on 127.0.0.1")
    stack = start_stack()
    os.environ.update(stack.env)
    steps.done(t, f"{'reused' if stack.reused else 'started'}; S3 {stack.s3_endpoint}, MLflow {stack.mlflow_uri}")

    t = steps.start(f"data: {settings.images_per_set} synthetic images per modality + 2 real skimage images")
    uris = _write_data(settings)
    steps.done(t, ", ".join(uris.values()))

    serving_base = str(home / "serving")
    logs = home / "logs"
    t = steps.start("model server (gRPC, TF Serving API) on the serving repository")
    server = start_model_server(_initial_models_config(serving_base, settings.modalities), home)
    steps.done(t, f"{'reused' if server['reused'] else 'started'} at {server['address']} (pid {server['pid']})")

    results: dict[str, dict[str, Any]] = {}
    for modality in settings.modalities:
        log_path = logs / f"training-{modality}.log"
        t = steps.start(f"training pipeline, {modality} (kfp local runner; log {log_path})")
        args = _training_arguments(settings, modality, uris[modality], serving_base, server["address"])
        results[modality] = _run_quietly("training", args, home, log_path)
        r = results[modality]
        steps.done(t, f"{r['model_name']} v{r['version']}, accuracy {r['accuracy']:.3f}, qwk {r['qwk']:.3f}, "
                      f"promoted {r['promoted']}")

    prediction = ""
    if "fundus" in settings.modalities:
        t = steps.start("gRPC prediction on the real retina.jpg")
        with _output_to(logs / "predict.log"):  # TensorFlow's start-up lines (the client builds tensor protos)
            label, prob = _predict_retina(server["address"], uris["samples"])
        prediction = f"{label} (p={prob:.2f})"
        steps.done(t, prediction)
    else:
        steps.total -= 1

    log_path = logs / "explain.log"
    t = steps.start(f"batch explanation pipeline on the real images (champion, sharded; log {log_path})")
    batch_modality = "fundus" if "fundus" in settings.modalities else settings.modalities[0]
    batch = _run_quietly(
        "explain",
        {"modality": batch_modality, "images_uri": uris["samples"], "reports_uri": REPORTS_URI,
         "work_uri": "s3://pipeline-root/shards", "shard_size": settings.shard_size,
         "methods": settings.explain_methods},
        home,
        log_path,
    )
    batch_uri = batch.get("Output", "")  # the pipeline returns the index URI as its single output
    steps.done(t, batch_uri)

    _print_summary(results, batch_modality, batch_uri, prediction, server["address"], stack.mlflow_uri, home)
    print(f"total {time.monotonic() - steps.t0:.0f}s")
    return 0


def _print_summary(results: dict[str, dict[str, Any]], batch_modality: str, batch_uri: str, prediction: str,
                   server_address: str, mlflow_uri: str, home: Path) -> None:
    """The table of models, scores and reports (with local copies), and where the stack lives."""
    rows = []
    for modality, r in results.items():
        report_uri = r["report_uri"]
        rows.append([modality, f"{r['model_name']} v{r['version']}", f"{r['accuracy']:.3f}", f"{r['qwk']:.3f}",
                     "yes" if r["promoted"] else "no", server_address, report_uri,
                     str(_local_copy(report_uri, home))])
    if batch_uri:
        rows.append([f"{batch_modality} batch", "champion", "", "", "", server_address, batch_uri,
                     str(_local_copy(batch_uri, home))])
    print()
    print(_table(rows, ["modality", "model", "accuracy", "qwk", "promoted", "serving (gRPC)", "report (S3)",
                        "local copy"]))
    if prediction:
        print(f"\nretina.jpg -> {prediction}")
    print(f"\nMLflow UI: {mlflow_uri}   model server: {server_address}")
    print("Both stay up: try `retina predict ...`; `retina stack down` stops the stack and the model server.")
