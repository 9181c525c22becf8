"""gRPC client for the TF Serving API: the local `retina serve` server and the real `tensorflow/serving` alike.

Uses only the official `tensorflow_serving.apis` stubs and numpy: tensors are built by `serving.tensors`
and the protos imported through `serving.protos`, so TensorFlow's runtime is never started (a call
returns in well under a second, with no TensorFlow log lines). `RestClient` does the same over TF
Serving's REST API. gRPC failures become `ServingError` (a RetinaError)
with one line a user can act on: the server is unreachable, the model/version/label does not exist, or
the request was rejected and why.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from components.common.errors import RetinaError

DEFAULT_TIMEOUT_S = 30.0


class ServingError(RetinaError):
    """A failed call to the model server; `code` is the gRPC status name (NOT_FOUND, UNAVAILABLE, ...)."""

    def __init__(self, message: str, code: str = "UNKNOWN"):
        super().__init__(message)
        self.code = code


class ServingClient:
    """`ServingClient("host:8500").predict_images("retina-fundus", [jpeg_bytes])`."""

    def __init__(self, address: str, timeout: float = DEFAULT_TIMEOUT_S):
        import grpc

        from serving import protos

        protos.load()
        from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

        self.address = address
        self.timeout = timeout
        self._channel = grpc.insecure_channel(
            address, options=[("grpc.max_send_message_length", 256 * 1024 * 1024),
                              ("grpc.max_receive_message_length", 256 * 1024 * 1024)])
        self.prediction = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self.models = model_service_pb2_grpc.ModelServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> ServingClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------ requests
    @staticmethod
    def model_spec(spec: Any, model: str, version: int | None = None, label: str | None = None,
                   signature: str | None = None) -> None:
        """Fill a ModelSpec; a version and a label together are refused (TF Serving takes one)."""
        if version is not None and label:
            raise ServingError("give a version or a label, not both", "INVALID_ARGUMENT")
        spec.name = model
        if version is not None:
            spec.version.value = int(version)
        elif label:
            spec.version_label = label
        if signature:
            spec.signature_name = signature

    def _call(self, method: Any, request: Any, what: str) -> Any:
        import grpc

        try:
            return method(request, timeout=self.timeout)
        except grpc.RpcError as exc:
            code = exc.code().name if exc.code() else "UNKNOWN"
            details = exc.details() or ""
            if code in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
                raise ServingError(f"cannot reach the model server at {self.address} ({code.lower()})",
                                   code) from exc
            if code == "NOT_FOUND":
                raise ServingError(f"{what}: not found on {self.address}: {details}", code) from exc
            raise ServingError(f"{what} failed ({code}): {details}", code) from exc

    def predict(self, model: str, inputs: dict[str, Any], signature: str | None = None,
                version: int | None = None, label: str | None = None,
                output_filter: list[str] | None = None) -> dict[str, np.ndarray]:
        """Low level: numpy/TensorProto inputs -> numpy outputs of any signature."""
        from tensorflow.core.framework import tensor_pb2
        from tensorflow_serving.apis import predict_pb2

        from serving import tensors

        request = predict_pb2.PredictRequest()
        self.model_spec(request.model_spec, model, version, label, signature)
        for key, value in inputs.items():
            if isinstance(value, tensor_pb2.TensorProto):
                request.inputs[key].CopyFrom(value)
            else:
                tensors.from_array(value if isinstance(value, np.ndarray) else np.asarray(value),
                                   request.inputs[key])
        request.output_filter.extend(output_filter or [])
        response = self._call(self.prediction.Predict, request, f"model {_describe(model, version, label)}")
        outputs = {k: tensors.to_array(v, k, 1 << 62) for k, v in response.outputs.items()}
        outputs["_version"] = np.asarray(response.model_spec.version.value)
        return outputs

    def predict_images(self, model: str, images: list[bytes], version: int | None = None,
                       label: str | None = None) -> dict[str, Any]:
        """Encoded JPEG/PNG files, as they are -> `predict_image`: probabilities, class ids and names."""
        if not images:
            raise ServingError("no images to send", "INVALID_ARGUMENT")
        outputs = self.predict(model, {"image_bytes": np.asarray(list(images), dtype=object)},
                               signature="predict_image", version=version, label=label)
        return _result(outputs)

    def predict_tensor(self, model: str, array: np.ndarray, version: int | None = None,
                       label: str | None = None) -> dict[str, Any]:
        """Preprocessed float32 `[N, S, S, 3]` in [0, 1] -> `serving_default`."""
        outputs = self.predict(model, {"images": np.asarray(array, dtype=np.float32)},
                               signature="serving_default", version=version, label=label)
        return _result(outputs)

    def model_status(self, model: str, version: int | None = None, label: str | None = None) -> list[dict[str, Any]]:
        """[{version, state (AVAILABLE, LOADING, END, ...), error_code, error_message}] per version."""
        from tensorflow_serving.apis import get_model_status_pb2

        from serving.status import NAMES

        request = get_model_status_pb2.GetModelStatusRequest()
        self.model_spec(request.model_spec, model, version, label)
        response = self._call(self.models.GetModelStatus, request, f"model {_describe(model, version, label)}")
        return [
            {
                "version": int(s.version),
                "state": get_model_status_pb2.ModelVersionStatus.State.Name(s.state),
                "error_code": NAMES.get(int(s.status.error_code), str(s.status.error_code)),
                "error_message": s.status.error_message,
            }
            for s in response.model_version_status
        ]

    def metadata(self, model: str, version: int | None = None, label: str | None = None) -> dict[str, Any]:
        """{version, signatures: {name: {method_name, inputs: {key: {dtype, shape}}, outputs: {...}}}}."""
        from tensorflow.core.framework import types_pb2
        from tensorflow_serving.apis import get_model_metadata_pb2

        request = get_model_metadata_pb2.GetModelMetadataRequest()
        self.model_spec(request.model_spec, model, version, label)
        request.metadata_field.append("signature_def")
        response = self._call(self.prediction.GetModelMetadata, request, f"model {_describe(model, version, label)}")
        sig_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(sig_map)

        def tensors(infos: Any) -> dict[str, Any]:
            return {k: {"dtype": types_pb2.DataType.Name(v.dtype),
                        "shape": None if v.tensor_shape.unknown_rank else [d.size for d in v.tensor_shape.dim]}
                    for k, v in infos.items()}

        return {
            "version": int(response.model_spec.version.value),
            "signatures": {name: {"method_name": sig.method_name, "inputs": tensors(sig.inputs),
                                  "outputs": tensors(sig.outputs)}
                           for name, sig in sig_map.signature_def.items()},
        }

    def reload_config(self, entries: list[Any]) -> None:
        """ModelService.HandleReloadConfigRequest with `models.config` entries (ModelEntry or dicts).

        As TF Serving, the call returns once every model *new to the config* is AVAILABLE; one whose load
        ended in an error raises ServingError (code UNKNOWN, the server's "N model(s) did not become
        available: ..."), the config staying applied. A new model without versions yet keeps the call
        waiting until this client's timeout (DEADLINE_EXCEEDED)."""
        from google.protobuf import text_format
        from tensorflow_serving.apis import model_management_pb2

        from serving.model_repository import format_models_config

        request = model_management_pb2.ReloadConfigRequest()
        text_format.Parse(format_models_config(entries), request.config)
        response = self._call(self.models.HandleReloadConfigRequest, request, "reload config")
        if response.status.error_code:
            raise ServingError(f"reload config failed: {response.status.error_message}", "UNKNOWN")


def _describe(model: str, version: int | None, label: str | None) -> str:
    if version is not None:
        return f"{model} version {version}"
    if label:
        return f"{model}@{label}"
    return model


def _result(outputs: dict[str, np.ndarray]) -> dict[str, Any]:
    names = outputs.get("class_names")
    class_names = [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names[0]] if (
        names is not None and len(names)) else []
    result: dict[str, Any] = {
        "probabilities": np.asarray(outputs["probabilities"], np.float32),
        "class_id": np.asarray(outputs["class_id"], np.int64),
        "class_names": class_names,
        "version": int(outputs["_version"]),
    }
    if "grade" in outputs:
        result["grade"] = np.asarray(outputs["grade"], np.float32)
    return result


class RestClient:
    """`predict_images` over TF Serving's REST API (`POST /v1/models/{m}[...]:predict`), stdlib HTTP only."""

    def __init__(self, address: str, timeout: float = DEFAULT_TIMEOUT_S):
        self.address = address if address.startswith("http") else f"http://{address}"
        self.timeout = timeout

    def close(self) -> None:
        """Nothing to release: one HTTP connection per call."""

    def __enter__(self) -> RestClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def url(self, model: str, version: int | None = None, label: str | None = None, verb: str = "") -> str:
        from urllib.parse import quote

        if version is not None and label:
            raise ServingError("give a version or a label, not both", "INVALID_ARGUMENT")
        path = f"{self.address}/v1/models/{quote(model, safe='')}"
        if version is not None:
            path += f"/versions/{int(version)}"
        elif label:
            path += f"/labels/{quote(label, safe='')}"
        return path + verb

    def call(self, url: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """One request; TF Serving's `{"error": ...}` bodies become ServingError with the HTTP status."""
        import json
        import urllib.error
        import urllib.request

        data = json.dumps(body).encode("utf-8") if body is not None else None
        request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310 - our own URL
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read()).get("error", "")
            except ValueError:
                message = exc.reason
            code = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED", 503: "UNAVAILABLE",
                    504: "DEADLINE_EXCEEDED"}.get(exc.code, "UNKNOWN")
            raise ServingError(f"{url} failed ({exc.code} {code}): {message}", code) from exc
        except (urllib.error.URLError, OSError) as exc:
            raise ServingError(f"cannot reach the model server at {self.address} ({exc})", "UNAVAILABLE") from exc

    def predict_images(self, model: str, images: list[bytes], version: int | None = None,
                       label: str | None = None) -> dict[str, Any]:
        """Encoded files -> `predict_image` over REST (row format, `{"b64": ...}` values)."""
        import base64

        if not images:
            raise ServingError("no images to send", "INVALID_ARGUMENT")
        body = {"signature_name": "predict_image",
                "instances": [{"b64": base64.b64encode(data).decode("ascii")} for data in images]}
        rows = self.call(self.url(model, version, label, ":predict"), body)["predictions"]
        # The predict answer carries no version; the metadata of the same model spec does.
        served = int(self.call(self.url(model, version, label, "/metadata"))["model_spec"]["version"])
        outputs = {key: np.asarray([row[key] for row in rows], dtype=object if key == "class_names" else None)
                   for key in rows[0]}
        outputs["class_names"] = np.asarray([[str(n).encode("utf-8") for n in row["class_names"]] for row in rows],
                                            dtype=object)
        outputs["_version"] = np.asarray(served)
        return _result(outputs)
