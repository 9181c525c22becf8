"""`retina serve` (the local TF-Serving-compatible gRPC server) and `retina predict` (its client).

`serve` takes TF Serving's own flag spellings (`--port`, `--model_name`, `--model_base_path`,
`--model_config_file`, `--file_system_poll_wait_seconds`, `--enable_batching`, ...) as well as dashed
aliases, so a command line written for `tensorflow_model_server` works here unchanged.
TensorFlow is imported inside the command functions only.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path

from components.common.errors import RetinaError


def register(subparsers: argparse._SubParsersAction) -> None:
    serve = subparsers.add_parser(
        "serve",
        help="serve SavedModels over the TF Serving gRPC API (PredictionService, ModelService)",
        description="Load <base>/<model>/<int version>/ (local or s3://) like tensorflow_model_server, serve "
        "the latest version (or those the config's version policy names), pick up new versions by polling, "
        "and answer Predict / GetModelMetadata / Classify / GetModelStatus / HandleReloadConfigRequest.",
    )
    source = serve.add_mutually_exclusive_group(required=True)
    source.add_argument("--model_config_file", "--model-config-file", "--model-config", dest="model_config_file",
                        help="text ModelServerConfig (models.config), local or s3://")
    source.add_argument("--model_base_path", "--model-base-path", dest="model_base_path",
                        help="the model's folder holding integer versions (a repository root works too)")
    serve.add_argument("--model_name", "--model-name", dest="model_name", default="default",
                       help="model name with --model_base_path (default: default, as TF Serving)")
    serve.add_argument("--port", type=int, default=8500, help="gRPC port (default 8500; 0 picks a free one)")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to bind (default 127.0.0.1; 0.0.0.0 in a container)")
    serve.add_argument("--file_system_poll_wait_seconds", "--file-system-poll-wait-seconds", "--poll-interval",
                       dest="poll_interval", type=float, default=2.0,
                       help="seconds between checks for new versions (0 disables; default 2)")
    serve.add_argument("--model_config_file_poll_wait_seconds", "--model-config-file-poll-wait-seconds",
                       dest="config_poll_interval", type=float, default=None,
                       help="seconds between re-reads of the config file (default: the version poll interval)")
    serve.add_argument("--enable_batching", "--enable-batching", dest="enable_batching", nargs="?", const="true",
                       default="false", help="merge concurrent requests into one model call")
    serve.add_argument("--max_batch_size", "--max-batch-size", dest="max_batch_size", type=int, default=64,
                       help="largest batch one request (or one merged call) may have (default 64)")
    serve.add_argument("--rest_api_port", "--rest-api-port", dest="rest_api_port", type=int, default=0,
                       help="accepted for compatibility; this server speaks gRPC only")
    serve.set_defaults(func=_serve)

    predict = subparsers.add_parser(
        "predict",
        help="send images to a model server (TF Serving gRPC API) and print the predicted classes",
        description="Send each IMAGE (local path or s3://) as raw bytes to the model's predict_image signature "
        "and print the class and the probability of every class.",
    )
    predict.add_argument("images", nargs="+", metavar="IMAGE", help="JPEG/PNG file, local or s3://")
    predict.add_argument("--server", default="127.0.0.1:8500", help="host:port of the gRPC server")
    predict.add_argument("--model", required=True, help="model name on the server, e.g. retina-fundus")
    which = predict.add_mutually_exclusive_group()
    which.add_argument("--version", type=int, default=None, help="a specific model version")
    which.add_argument("--label", default=None, help="a version label, e.g. stable or canary")
    predict.add_argument("--timeout", type=float, default=30.0, help="seconds per request (default 30)")
    predict.add_argument("--batch-size", type=int, default=16, help="images per request (default 16)")
    predict.add_argument("--json", action="store_true", help="print one JSON document")
    predict.set_defaults(func=_predict)


def _truthy(value: str) -> bool:
    return str(value).lower() in ("1", "true", "yes", "on")


def _serve(args: argparse.Namespace) -> int:
    from serving.server import start_server

    if args.rest_api_port:
        print("retina serve: note: no REST API here; gRPC only (--rest_api_port ignored)", file=sys.stderr)
    server = start_server(
        model_config_file=args.model_config_file,
        model_base_path=args.model_base_path,
        model_name=args.model_name,
        port=args.port,
        host=args.host,
        poll_interval_s=args.poll_interval,
        config_poll_interval_s=args.config_poll_interval,
        max_batch_size=args.max_batch_size,
        enable_batching=_truthy(args.enable_batching),
    )
    stopping = threading.Event()

    def stop(signum: int, frame: object) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    models = ", ".join(e.name for e in server.manager.entries())
    print(f"retina serve: serving {models} on {args.host}:{server.port} (gRPC, TF Serving API)", flush=True)
    try:
        while not stopping.wait(0.5):
            pass
    finally:
        print("retina serve: draining requests in flight and stopping", flush=True)
        server.stop(grace=10.0)
    return 0


def _read_image(uri: str) -> bytes:
    from components.common import storage

    try:
        data = storage.read_bytes(uri)
    except RetinaError:
        raise
    except OSError as exc:
        raise RetinaError(f"cannot read image file {uri}: {exc.strerror or exc}") from exc
    if not data:
        raise RetinaError(f"empty image file: {uri}")
    if not (data.startswith(b"\xff\xd8\xff") or data.startswith(b"\x89PNG\r\n\x1a\n")):
        raise RetinaError(f"not a JPEG or PNG file: {uri}")
    return data


def predict_files(server: str, model: str, uris: list[str], version: int | None = None, label: str | None = None,
                  timeout: float = 30.0, batch_size: int = 16) -> dict[str, object]:
    """Read the files, send them in batches, return {model, version, class_names, predictions: [...]}."""
    from serving.client import ServingClient

    files = [(uri, _read_image(uri)) for uri in uris]  # every file checked before the first request
    predictions: list[dict[str, object]] = []
    class_names: list[str] = []
    served_version = None
    with ServingClient(server, timeout=timeout) as client:
        for start in range(0, len(files), max(1, batch_size)):
            chunk = files[start:start + batch_size]
            result = client.predict_images(model, [data for _, data in chunk], version=version, label=label)
            class_names = result["class_names"]
            served_version = result["version"]
            for row, (uri, _) in enumerate(chunk):
                probabilities = [float(p) for p in result["probabilities"][row]]
                class_id = int(result["class_id"][row])
                predictions.append({
                    "image": uri,
                    "class_id": class_id,
                    "class_name": class_names[class_id] if class_id < len(class_names) else str(class_id),
                    "probabilities": dict(zip(class_names, probabilities, strict=False)),
                })
    return {"model": model, "version": served_version, "class_names": class_names, "predictions": predictions}


def format_table(result: dict[str, object]) -> str:
    """image | class | one column per class probability."""
    names = list(result["class_names"])  # type: ignore[arg-type]
    rows = [["image", "class", *names]]
    for p in result["predictions"]:  # type: ignore[union-attr]
        rows.append([Path(str(p["image"])).name if not str(p["image"]).startswith("s3://") else str(p["image"]),
                     str(p["class_name"]), *[f"{p['probabilities'][n]:.3f}" for n in names]])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(r)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append(f"model {result['model']} version {result['version']}")
    return "\n".join(lines)


def _predict(args: argparse.Namespace) -> int:
    result = predict_files(args.server, args.model, args.images, version=args.version, label=args.label,
                           timeout=args.timeout, batch_size=args.batch_size)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_table(result))
    return 0
