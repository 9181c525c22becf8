"""TF Serving's REST API on `--rest_api_port` (uvicorn + Starlette; HTTP parsing is theirs).

Routes, formats and errors follow `http_rest_api_util.cc`, `http_rest_api_handler.cc`, `json_tensor.cc`:

- `GET /v1/models/{m}[/versions/{v} | /labels/{l}]` -> model status; `.../metadata` -> signature defs;
- `POST /v1/models/{m}[/versions/{v} | /labels/{l}]:predict` with the row format
  `{"signature_name": .., "instances": [...]}` (answer `{"predictions": [...]}`) or the columnar format
  `{"inputs": ...}` (answer `{"outputs": ...}`); string values as text or `{"b64": "..."}`, and outputs
  whose name ends in `_bytes` come back as `{"b64": ...}`;
- `:classify` / `:regress` with `{"examples": [...], "context": {...}}` -> `{"results": ...}`;
- every error is `{"error": "<message>"}` with TF Serving's HTTP code for the status (404 NOT_FOUND,
  400 INVALID_ARGUMENT / FAILED_PRECONDITION, 503 UNAVAILABLE, 429 RESOURCE_EXHAUSTED, 504 deadline);
- the Prometheus page at the path the monitoring config names.

A request runs on a worker thread; at most `--rest_api_num_threads` run at once, and one that takes
longer than `--rest_api_timeout_in_ms` is answered 504 (the model call finishes in the background).
JSON is converted to the same request protos the gRPC API takes and goes through the same handlers.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import threading
from typing import Any
from urllib.parse import unquote

import numpy as np

from serving import tensors
from serving.servicers import Handlers
from serving.status import ServingStatus, invalid_argument

PREDICT_PATH = re.compile(r"(?i)/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:"
                          r"(classify|regress|predict)")
STATUS_PATH = re.compile(r"(?i)/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?"
                         r"(?:/(metadata))?")
API_PATH = re.compile(r"(?i)/v1/.*")


# --------------------------------------------------------------------------- JSON -> tensors
def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and "b64" in value


def _decode_b64(value: dict) -> bytes:
    try:
        return base64.b64decode(value["b64"], validate=True)
    except Exception as exc:  # noqa: BLE001 - binascii.Error, TypeError
        raise invalid_argument("Unable to base64 decode") from exc


def _strings(value: Any) -> Any:
    if isinstance(value, list):
        return [_strings(v) for v in value]
    if _is_b64(value):
        return _decode_b64(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    raise invalid_argument(f"JSON Value: {json.dumps(value)} not formatted correctly for base64 data")


def json_to_array(value: Any, dtype_code: int, name: str) -> np.ndarray:
    """One input's JSON value as an array of the signature's dtype; ragged lists are INVALID_ARGUMENT."""
    dtype = tensors.numpy_dtype(dtype_code)
    try:
        if dtype is object:
            nested = _strings(value)
            shape = np.asarray(nested, dtype=object).shape if not isinstance(nested, bytes) else ()
            array = np.empty(shape, dtype=object)
            array[...] = nested if shape else nested
            return array
        if isinstance(value, dict):
            raise invalid_argument(f"JSON Value: {json.dumps(value)[:200]} Type: Object is not of expected type: "
                                   f"{tensors.dtype_name(dtype_code)}")
        return np.asarray(value, dtype=dtype)
    except (ValueError, TypeError) as exc:
        raise invalid_argument(f"Failed to process input {name}: {exc}") from exc


def _instances(instances: list, infos: dict[str, Any]) -> dict[str, np.ndarray]:
    objects = isinstance(instances[0], dict) and not _is_b64(instances[0])
    if not objects and len(infos) > 1:
        raise invalid_argument("instances is a plain list, but expecting list of objects as multiple input tensors "
                               "required as per tensorinfo_map")
    columns: dict[str, list] = {name: [] for name in infos}
    for i, item in enumerate(instances):
        is_object = isinstance(item, dict) and not _is_b64(item)
        if objects != is_object:
            raise invalid_argument(f"Expecting {'object but got list' if objects else 'value/list but got object'} "
                                   f"at item {i} of input list")
        if objects:
            if set(item) != set(infos):
                raise invalid_argument(f"Failed to process element: {i} of 'instances' list. JSON object: "
                                       f"{json.dumps(item)[:200]} keys must be equal to: {','.join(sorted(infos))}")
            for name in infos:
                columns[name].append(item[name])
        else:
            columns[next(iter(infos))].append(item)
    return {name: json_to_array(values, infos[name].dtype, name) for name, values in columns.items()}


def _inputs(value: Any, infos: dict[str, Any]) -> dict[str, np.ndarray]:
    if not isinstance(value, dict) or _is_b64(value):
        if len(infos) > 1:
            raise invalid_argument("inputs is a plain value/list, but expecting an object as multiple input tensors "
                                   "required as per tensorinfo_map")
        name = next(iter(infos))
        return {name: json_to_array(value, infos[name].dtype, name)}
    arrays = {}
    for name, info in infos.items():
        if name not in value:
            raise invalid_argument(f"Missing named input: {name} in 'inputs' object.")
        arrays[name] = json_to_array(value[name], info.dtype, name)
    return arrays


def parse_body(body: bytes) -> dict:
    if not body.strip():
        raise invalid_argument("JSON Parse error: The document is empty")
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise invalid_argument(f"JSON Parse error: {exc}") from exc
    if not isinstance(doc, dict):
        raise invalid_argument(f"JSON Value: {body[:200].decode('utf-8', 'replace')} Is not object")
    if "signature_name" in doc and not isinstance(doc["signature_name"], str):
        raise invalid_argument("'signature_name' key must be a string value.")
    return doc


def predict_request(doc: dict, spec_fill: Any, handlers: Handlers) -> tuple[Any, str]:
    """JSON predict body -> (PredictRequest, 'row' | 'columnar')."""
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    spec_fill(request.model_spec)
    request.model_spec.signature_name = doc.get("signature_name", "")
    lv = handlers.manager.resolve(request.model_spec)
    name = request.model_spec.signature_name or "serving_default"
    signature = lv.signature_defs.get(name)
    if signature is None:
        raise invalid_argument(f'Serving signature name: "{name}" not found in signature def')
    infos = dict(signature.inputs)
    if not infos:
        raise invalid_argument(f"Failed to get input map for signature: {name or 'DEFAULT'}")
    if "instances" in doc and "inputs" in doc:
        raise invalid_argument("Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist")
    if "instances" in doc:
        if not isinstance(doc["instances"], list):
            raise invalid_argument("Expecting 'instances' to be an list/array")
        if not doc["instances"]:
            raise invalid_argument("No values in 'instances' array")
        arrays, fmt = _instances(doc["instances"], infos), "row"
    elif "inputs" in doc:
        arrays, fmt = _inputs(doc["inputs"], infos), "columnar"
    else:
        raise invalid_argument("Missing 'inputs' or 'instances' key")
    for alias, array in arrays.items():
        tensors.from_array(array, request.inputs[alias])
        request.inputs[alias].dtype = infos[alias].dtype
    return request, fmt


# --------------------------------------------------------------------------- tensors -> JSON
def _json_values(name: str, array: np.ndarray) -> Any:
    if array.dtype == object:
        as_b64 = name.endswith("_bytes")
        flat = [({"b64": base64.b64encode(v).decode("ascii")} if as_b64 else v.decode("utf-8", "replace"))
                if isinstance(v, bytes) else v for v in array.ravel().tolist()]
        return np.asarray(flat, dtype=object).reshape(array.shape).tolist() if array.shape else flat[0]
    if array.dtype == np.float32:  # shortest repr of the float32 (0.1, not 0.100000001), as TF Serving prints
        flat = [float(v) for v in array.ravel().astype(str).tolist()]
        return np.asarray(flat, dtype=object).reshape(array.shape).tolist() if array.shape else flat[0]
    return array.tolist()


def predict_json(response: Any, fmt: str) -> dict:
    outputs = {k: tensors.to_array(v, k, 1 << 62) for k, v in sorted(response.outputs.items())}
    if fmt == "columnar":
        values = {k: _json_values(k, v) for k, v in outputs.items()}
        return {"outputs": next(iter(values.values())) if len(values) == 1 else values}
    batch = {v.shape[0] if v.ndim else None for v in outputs.values()}
    if None in batch or len(batch) != 1:
        raise invalid_argument("Tensor name: outputs have inconsistent batch size or no shape information")
    rows = [{k: _json_values(k, v[i]) for k, v in outputs.items()} for i in range(batch.pop())]
    if len(outputs) == 1:
        return {"predictions": [next(iter(r.values())) for r in rows]}
    return {"predictions": rows}


# --------------------------------------------------------------------------- Classify / Regress
def _feature(value: Any, name: str, feature: Any) -> None:
    items = value if isinstance(value, list) else [value]
    for item in items:
        if isinstance(item, bool) or (isinstance(item, int)):
            kind, values = "int64_list", int(item)
        elif isinstance(item, float):
            kind, values = "float_list", item
        elif isinstance(item, str):
            kind, values = "bytes_list", item.encode("utf-8")
        elif _is_b64(item):
            kind, values = "bytes_list", _decode_b64(item)
        else:
            raise invalid_argument(f"Feature: {name} has element with unexpected JSON type: {type(item).__name__}")
        current = feature.WhichOneof("kind")
        if current not in (None, kind):
            raise invalid_argument(f"Unexpected element type in feature: {name} expecting type: "
                                   f"{current.split('_')[0]}")
        getattr(feature, kind).value.append(values)


def _example(value: Any, example: Any) -> None:
    if not isinstance(value, dict):
        raise invalid_argument(f"Example must be JSON object but got JSON {type(value).__name__}")
    for name, content in value.items():
        _feature(content, name, example.features.feature[name])


def example_request(doc: dict, request: Any, method: str) -> None:
    request.model_spec.signature_name = doc.get("signature_name", "")
    has_context = "context" in doc
    if has_context:
        _example(doc["context"], request.input.example_list_with_context.context)
    examples = doc.get("examples")
    if examples is None:
        raise invalid_argument(f"When method is {method}, key 'examples' is expected and was not found")
    if not isinstance(examples, list):
        raise invalid_argument("Expecting 'examples' value to be an list/array")
    if not examples:
        raise invalid_argument("'examples' value is an empty array")
    target = request.input.example_list_with_context if has_context else request.input.example_list
    for value in examples:
        _example(value, target.examples.add())


# --------------------------------------------------------------------------- dispatch
class RestApi:
    """Maps one HTTP request (method, path, body) to (status code, JSON text) through the handlers."""

    def __init__(self, handlers: Handlers, prometheus_path: str | None = None):
        self.handlers = handlers
        self.prometheus_path = prometheus_path

    def handle(self, method: str, path: str, body: bytes) -> tuple[int, str]:
        try:
            return 200, json.dumps(self._dispatch(method, path, body))
        except ServingStatus as exc:
            return exc.http_status, json.dumps({"error": exc.message}, indent=4)
        except Exception as exc:  # noqa: BLE001
            return 500, json.dumps({"error": f"{type(exc).__name__}: {exc}"})

    def _dispatch(self, method: str, path: str, body: bytes) -> Any:
        match = PREDICT_PATH.fullmatch(path) if method == "POST" else (
            STATUS_PATH.fullmatch(path) if method == "GET" else None)
        if match is None:
            raise invalid_argument(f"Malformed request: {method} {path}")
        name, version, label, verb = match.groups()
        name = unquote(name) if name else ""
        label = unquote(label) if label else None

        def spec_fill(spec: Any) -> None:
            spec.name = name
            if version is not None:
                try:
                    spec.version.value = int(version)
                except ValueError as exc:
                    raise invalid_argument(f"Failed to convert version: {version} to numeric.") from exc
            elif label is not None:
                spec.version_label = label

        if method == "GET":
            if not name:
                raise invalid_argument("Missing model name in request.")
            return self._metadata(spec_fill) if verb else self._status(spec_fill)
        doc = parse_body(body)
        if verb.lower() == "predict":
            request, fmt = predict_request(doc, spec_fill, self.handlers)
            return predict_json(self.handlers.call("Predict", request, "REST"), fmt)
        return self._examples(verb.lower(), doc, spec_fill)

    def _examples(self, verb: str, doc: dict, spec_fill: Any) -> dict:
        from tensorflow_serving.apis import classification_pb2, regression_pb2

        if verb == "classify":
            request = classification_pb2.ClassificationRequest()
            spec_fill(request.model_spec)
            example_request(doc, request, "classify")
            result = self.handlers.call("Classify", request, "REST").result
            return {"results": [[[c.label, float(str(np.float32(c.score)))] for c in row.classes]
                                for row in result.classifications]}
        request = regression_pb2.RegressionRequest()
        spec_fill(request.model_spec)
        example_request(doc, request, "regress")
        result = self.handlers.call("Regress", request, "REST").result
        return {"results": [float(str(np.float32(r.value))) for r in result.regressions]}

    def _status(self, spec_fill: Any) -> dict:
        from google.protobuf import json_format
        from tensorflow_serving.apis import get_model_status_pb2

        request = get_model_status_pb2.GetModelStatusRequest()
        spec_fill(request.model_spec)
        response = self.handlers.call("GetModelStatus", request, "REST")
        return json_format.MessageToDict(response, always_print_fields_with_no_presence=True)

    def _metadata(self, spec_fill: Any) -> dict:
        from google.protobuf import json_format
        from tensorflow_serving.apis import get_model_metadata_pb2

        request = get_model_metadata_pb2.GetModelMetadataRequest()
        spec_fill(request.model_spec)
        request.metadata_field.append("signature_def")
        response = self.handlers.call("GetModelMetadata", request, "REST")
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_map)
        options = {"preserving_proto_field_name": True, "always_print_fields_with_no_presence": True}
        return {"model_spec": json_format.MessageToDict(response.model_spec, **options),
                "metadata": {"signature_def": json_format.MessageToDict(signature_map, **options)}}


# --------------------------------------------------------------------------- the HTTP server
def build_app(api: RestApi, num_threads: int, timeout_ms: int, max_body_bytes: int, cors: bool = False) -> Any:
    """A Starlette app: one catch-all route, TF Serving's path rules applied by RestApi; with `cors`
    (`--rest_api_enable_cors_support`) Starlette's CORS middleware answers preflights and allows any origin."""
    import anyio
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    limiter = anyio.CapacityLimiter(max(1, num_threads))

    async def endpoint(request: Request) -> Response:
        path = request.url.path
        if api.prometheus_path and path == api.prometheus_path:
            text = api.handlers.metrics.render()
            return Response(text, media_type="text/plain; version=0.0.4")
        if not API_PATH.fullmatch(path):
            return Response("Not Found", status_code=404, media_type="text/plain")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_body_bytes:
                return _json(429, {"error": f"request body above the limit of {max_body_bytes} bytes"})
        try:
            with anyio.fail_after(timeout_ms / 1000.0):
                status, text = await anyio.to_thread.run_sync(
                    api.handle, request.method, path, bytes(body), limiter=limiter, abandon_on_cancel=True)
        except TimeoutError:
            return _json(504, {"error": f"Request timed out after {timeout_ms} ms (--rest_api_timeout_in_ms)"})
        return Response(text, status_code=status, media_type="application/json")

    def _json(status: int, doc: dict) -> Response:
        return Response(json.dumps(doc), status_code=status, media_type="application/json")

    methods = ["GET", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "HEAD"]
    middleware = []
    if cors:
        from starlette.middleware import Middleware
        from starlette.middleware.cors import CORSMiddleware

        middleware.append(Middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["GET", "POST"],
                                     allow_headers=["*"]))
    return Starlette(routes=[Route("/{path:path}", endpoint, methods=methods)], middleware=middleware)


class RestServer:
    """uvicorn serving the app on its own thread; `port` is the bound port (0 picks a free one)."""

    def __init__(self, app: Any, host: str, port: int):
        import uvicorn

        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        self.port = self._socket.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False,
                                timeout_graceful_shutdown=5)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]},
                                        daemon=True, name="retina-rest")

    def start(self, timeout_s: float = 30.0) -> None:
        self._thread.start()
        for _ in range(int(timeout_s / 0.02)):
            if self._server.started or not self._thread.is_alive():
                break
            threading.Event().wait(0.02)
        if not self._server.started:
            raise RuntimeError("the REST server did not start")

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._socket.close()
