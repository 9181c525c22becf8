"""`retina serve` (the local TF-Serving-compatible server) and `retina predict` (its client).

`serve` takes every `tensorflow_model_server` flag with its name and default (`serving.options`) as well
as dashed aliases, so a command line written for the real binary works here unchanged. `predict` never
imports TensorFlow (`serving.client`), so a call returns in a fraction of a second.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
from pathlib import Path

from components.common.errors import RetinaError


def register(subparsers: argparse._SubParsersAction) -> None:
    from serving.options import add_server_flags

    serve = subparsers.add_parser(
        "serve",
        help="a TF-Serving-compatible model server (gRPC + REST, tensorflow_model_server's flags)",
        description="Load <base>/<model>/<version>/ (local or s3://) like tensorflow_model_server and serve it "
        "over TF Serving's gRPC API (Predict, Classify, Regress, MultiInference, GetModelMetadata, "
        "GetModelStatus, HandleReloadConfigRequest, grpc.health.v1) and, with --rest_api_port, its REST API. "
        "Every tensorflow_model_server flag is accepted; those without meaning here are logged as ignored.",
    )
    add_server_flags(serve)
    serve.set_defaults(func=_serve)

    predict = subparsers.add_parser(
        "predict",
        help="send images to a model server (TF Serving gRPC API) and print the predicted classes",
        description="Send each IMAGE (local path or s3://) as raw bytes to the model's predict_image signature "
        "and print the class and the probability of every class.",
    )
    predict.add_argument("images", nargs="+", metavar="IMAGE", help="JPEG/PNG file, local or s3://")
    predict.add_argument("--server", default=None,
                         help="host:port of the server (default 127.0.0.1:8500, with --rest 127.0.0.1:8501)")
    predict.add_argument("--model", required=True, help="model name on the server, e.g. retina-fundus")
    which = predict.add_mutually_exclusive_group()
    which.add_argument("--version", type=int, default=None, help="a specific model version")
    which.add_argument("--label", default=None, help="a version label, e.g. stable or canary")
    predict.add_argument("--timeout", type=float, default=30.0, help="seconds per request (default 30)")
    predict.add_argument("--batch-size", type=int, default=16, help="images per request (default 16)")
    predict.add_argument("--json", action="store_true", help="print one JSON document")
    predict.add_argument("--rest", action="store_true",
                         help="use TF Serving's REST API instead of gRPC (--server names the REST port)")
    predict.set_defaults(func=_predict)


def _serve(args: argparse.Namespace) -> int:
    from serving.options import options_from_args
    from serving.server import start_server

    if args.show_version:
        print("retina serve (TF Serving API compatible)")
        return 0
    options = options_from_args(args)
    server = start_server(options)
    stopping = threading.Event()

    def stop(signum: int, frame: object) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    models = ", ".join(e.name for e in server.manager.entries())
    rest = f", REST on {options.host}:{server.rest_port}" if server.rest_port else ""
    print(f"retina serve: serving {models}: gRPC on {options.host}:{server.port}{rest}", flush=True)
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
                  timeout: float = 30.0, batch_size: int = 16, rest: bool = False) -> dict[str, object]:
    """Read the files, send them in batches, return {model, version, class_names, predictions: [...]}."""
    from serving.client import RestClient, ServingClient

    files = [(uri, _read_image(uri)) for uri in uris]  # every file checked before the first request
    predictions: list[dict[str, object]] = []
    class_names: list[str] = []
    served_version = None
    with (RestClient if rest else ServingClient)(server, timeout=timeout) as client:
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
    server = args.server or ("127.0.0.1:8501" if args.rest else "127.0.0.1:8500")
    result = predict_files(server, args.model, args.images, version=args.version, label=args.label,
                           timeout=args.timeout, batch_size=args.batch_size, rest=args.rest)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_table(result))
    return 0
