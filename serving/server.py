"""A local, TF-Serving-compatible gRPC model server.

Real TF Serving cannot be installed on the development machine, so this server gives users and tests the
same gRPC contract: `tensorflow.serving.PredictionService` (Predict, GetModelMetadata, Classify) and
`tensorflow.serving.ModelService` (GetModelStatus, HandleReloadConfigRequest), implemented with the
official `tensorflow_serving.apis` servicers. A client written against it talks unchanged to the
`tensorflow/serving` image on a cluster.

It behaves like TF Serving where a client can tell:

- Models come from `--model_config_file` (text `ModelServerConfig`) or `--model_base_path` +
  `--model_name`; each model folder holds integer versions with a `saved_model.pb` (local disk or
  `s3://`, downloaded to a local cache). Version policy `latest` (default 1) / `all` / `specific`;
  labels (`stable`, `canary`) from the config.
- A poll thread looks for new versions every `poll_interval_s` and loads them *before* they replace the
  old ones; the table of served versions is swapped in one assignment, and a request keeps the version
  object it resolved, so a swap never fails a request in flight. The config file is re-read on the same
  poll (TF Serving's `--model_config_file_poll_wait_seconds`).
- Status codes: unknown model / version / label -> NOT_FOUND; missing, extra, wrongly typed or shaped
  inputs, a batch above `max_batch_size`, undecodable image bytes -> INVALID_ARGUMENT; an unknown
  signature -> FAILED_PRECONDITION; Classify on a non-classification signature -> INVALID_ARGUMENT.
- Optional server-side batching merges concurrent requests into one model call.
- `stop()` stops accepting calls and lets calls in flight finish within a grace period.

One deliberate difference: an unknown version *label* is NOT_FOUND here (TF Serving says
INVALID_ARGUMENT), so clients treat "no such model/version/label" alike.
"""

from __future__ import annotations

import logging
import queue
import shutil
import tempfile
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from components.common import storage
from components.common.errors import RetinaError
from serving import model_repository as repo

log = logging.getLogger(__name__)

DEFAULT_SIGNATURE = "serving_default"
PREDICT_METHOD_NAME = "tensorflow/serving/predict"
CLASSIFY_METHOD_NAME = "tensorflow/serving/classify"
DEFAULT_MAX_BATCH_SIZE = 64
MAX_MESSAGE_BYTES = 256 * 1024 * 1024
MAX_LOAD_ATTEMPTS = 3


class ServingStatus(Exception):
    """A gRPC status to answer with; raised anywhere below a servicer method."""

    def __init__(self, code_name: str, message: str):
        super().__init__(message)
        self.code_name = code_name
        self.message = message


def not_found(message: str) -> ServingStatus:
    return ServingStatus("NOT_FOUND", message)


def invalid_argument(message: str) -> ServingStatus:
    return ServingStatus("INVALID_ARGUMENT", message)


# --------------------------------------------------------------------------- loaded versions
class Batcher:
    """Merges concurrent calls of one signature into one model call (TF Serving's `--enable_batching`).

    Requests queue up; a worker takes the first, waits at most `timeout_s` for more whose non-batch shapes
    match, concatenates them up to `max_batch_size` rows, runs once and splits the outputs by rows.
    """

    def __init__(self, run: Any, max_batch_size: int, timeout_s: float, num_threads: int = 2):
        self._run = run
        self._max = max_batch_size
        self._timeout = timeout_s
        self._queue: queue.Queue = queue.Queue()
        self._closed = False
        self._lock = threading.Lock()  # a request is queued before the stop markers, or not at all
        self._threads = [threading.Thread(target=self._work, daemon=True, name="retina-batcher") for _ in
                         range(num_threads)]
        for t in self._threads:
            t.start()

    def submit(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        done: futures.Future = futures.Future()
        with self._lock:
            closed = self._closed
            if not closed:
                self._queue.put((inputs, done))
        if closed:  # a request that resolved this version just before it was unloaded: run it unbatched
            return self._run(inputs)
        return done.result()

    def close(self) -> None:
        """Stop the workers once every request queued so far has run (a swap never fails one in flight)."""
        with self._lock:
            self._closed = True
            for _ in self._threads:
                self._queue.put(None)

    @staticmethod
    def _key(inputs: dict[str, np.ndarray]) -> tuple:
        return tuple(sorted((k, v.dtype.str, v.shape[1:]) for k, v in inputs.items()))

    def _work(self) -> None:
        pending: list = []
        while True:
            item = pending.pop(0) if pending else self._queue.get()
            if item is None:
                for held in pending:  # taken off the queue before the stop marker: still answered
                    self._run_batch([held])
                return
            batch = [item]
            rows = _rows(item[0])
            deadline = time.monotonic() + self._timeout
            while rows < self._max:
                try:
                    nxt = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)
                    break
                if self._key(nxt[0]) != self._key(item[0]) or rows + _rows(nxt[0]) > self._max:
                    pending.append(nxt)
                    break
                batch.append(nxt)
                rows += _rows(nxt[0])
            self._run_batch(batch)

    def _run_batch(self, batch: list) -> None:
        try:
            if len(batch) == 1:
                batch[0][1].set_result(self._run(batch[0][0]))
                return
            merged = {k: np.concatenate([inputs[k] for inputs, _ in batch]) for k in batch[0][0]}
            outputs = self._run(merged)
        except Exception:  # noqa: BLE001 - one bad request must not fail the others: run them one by one
            for inputs, done in batch:
                try:
                    done.set_result(self._run(inputs))
                except Exception as exc:  # noqa: BLE001
                    done.set_exception(exc)
            return
        start = 0
        for inputs, done in batch:
            n = _rows(inputs)
            done.set_result({k: v[start:start + n] for k, v in outputs.items()})
            start += n


def _rows(inputs: dict[str, np.ndarray]) -> int:
    return int(next(iter(inputs.values())).shape[0]) if inputs else 0


@dataclass
class LoadedVersion:
    """One loaded SavedModel version. Requests hold a reference to it, so unloading never cuts them off."""

    name: str
    version: int
    path: Path
    loaded: Any
    signature_defs: Any  # dict-like: signature name -> SignatureDef proto
    max_batch_size: int
    batching: bool = False
    batch_timeout_s: float = 0.002
    _batchers: dict[str, Batcher] = field(default_factory=dict)
    _batch_lock: threading.Lock = field(default_factory=threading.Lock)

    def signature(self, name: str) -> Any:
        if name not in self.signature_defs or name not in self.loaded.signatures:
            raise ServingStatus("FAILED_PRECONDITION", f'Serving signature key "{name}" not found.')
        return self.signature_defs[name]

    def run(self, signature_name: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self.batching:
            return self._call(signature_name, inputs)
        with self._batch_lock:
            batcher = self._batchers.get(signature_name)
            if batcher is None:
                batcher = Batcher(lambda x, s=signature_name: self._call(s, x), self.max_batch_size,
                                  self.batch_timeout_s)
                self._batchers[signature_name] = batcher
        return batcher.submit(inputs)

    def _call(self, signature_name: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import tensorflow as tf

        fn = self.loaded.signatures[signature_name]
        try:
            outputs = fn(**{k: tf.constant(v) for k, v in inputs.items()})
        except tf.errors.OpError as exc:
            raise _status_from_tf(exc) from exc
        return {k: v.numpy() for k, v in outputs.items()}

    def close(self) -> None:
        with self._batch_lock:
            for batcher in self._batchers.values():
                batcher.close()
            self._batchers.clear()


def _status_from_tf(exc: Any) -> ServingStatus:
    """TF op errors carry gRPC-compatible codes; input faults (bad image bytes) stay INVALID_ARGUMENT."""
    import grpc

    by_value = {code.value[0]: code.name for code in grpc.StatusCode}
    code = by_value.get(int(exc.error_code), "INTERNAL")
    message = str(exc.message).strip().splitlines()[0] if exc.message else type(exc).__name__
    return ServingStatus(code, message)


def load_version(name: str, version: int, path: Path, max_batch_size: int, batching: bool) -> LoadedVersion:
    """Load a SavedModel and warm each signature's graph once so the first request is not the slow one."""
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString((path / repo.SAVED_MODEL_FILE).read_bytes())
    signature_defs = dict(saved.meta_graphs[0].signature_def) if saved.meta_graphs else {}
    loaded = tf.saved_model.load(str(path))
    signature_defs = {k: v for k, v in signature_defs.items() if k in loaded.signatures}
    return LoadedVersion(name=name, version=version, path=path, loaded=loaded, signature_defs=signature_defs,
                         max_batch_size=max_batch_size, batching=batching)


# --------------------------------------------------------------------------- the manager
@dataclass
class VersionState:
    state: str  # START, LOADING, AVAILABLE, UNLOADING, END (get_model_status_pb2.ModelVersionStatus.State)
    error_code: str = "OK"
    error_message: str = ""
    attempts: int = 0


@dataclass
class ServedModel:
    entry: repo.ModelEntry
    versions: dict[int, LoadedVersion] = field(default_factory=dict)  # replaced whole, never mutated
    states: dict[int, VersionState] = field(default_factory=dict)


class ModelManager:
    """Keeps the served versions of every model in line with the repository and the config."""

    def __init__(self, entries: list[repo.ModelEntry], cache_dir: Path, max_batch_size: int,
                 enable_batching: bool = False):
        self._cache_dir = cache_dir
        self._max_batch_size = max_batch_size
        self._batching = enable_batching
        self._models: dict[str, ServedModel] = {}
        self._refresh_lock = threading.Lock()
        self.apply_config(entries, check_labels=True)

    # ------------------------------------------------------------ config and polling
    def apply_config(self, entries: list[repo.ModelEntry], check_labels: bool = True) -> None:
        """Serve exactly these models: load new ones (and new versions) first, then swap, then unload.

        Labels must point at versions that are available after loading, as TF Serving requires; otherwise
        nothing changes and FAILED_PRECONDITION is raised.
        """
        with self._refresh_lock:
            new_models: dict[str, ServedModel] = {}
            for entry in entries:
                old = self._models.get(entry.name)
                if old is not None and old.entry.base_path == entry.base_path:
                    new_models[entry.name] = ServedModel(entry=entry, versions=old.versions, states=old.states)
                else:
                    new_models[entry.name] = ServedModel(entry=entry)
            plans = {name: self._load_new_versions(served) for name, served in new_models.items()}
            if check_labels:
                for name, served in new_models.items():
                    loaded, wanted = plans[name]
                    for label, version in served.entry.labels.items():
                        if version not in loaded or version not in wanted:
                            for plan_name, (plan_loaded, _) in plans.items():
                                for v, lv in plan_loaded.items():
                                    if v not in new_models[plan_name].versions:
                                        lv.close()
                            raise ServingStatus(
                                "FAILED_PRECONDITION",
                                f"Request to assign label to version {version} of model {name}, "
                                f"which is not currently available for inference ({label})",
                            )
            for name, served in new_models.items():
                self._swap_in(served, *plans[name])
            removed = [m for name, m in self._models.items() if name not in new_models]
            self._models = new_models
            for served in removed:
                for lv in served.versions.values():
                    lv.close()
                log.info("model %s removed from the config", served.entry.name)

    def refresh(self) -> None:
        """One poll: pick up new versions, drop those the policy no longer wants."""
        with self._refresh_lock:
            for served in list(self._models.values()):
                self._swap_in(served, *self._load_new_versions(served))

    def _wanted(self, entry: repo.ModelEntry, present: list[int]) -> set[int]:
        if entry.version_policy == "all":
            chosen = present
        elif entry.version_policy == "specific":
            chosen = [v for v in present if v in set(entry.versions)]
        else:
            chosen = present[-max(1, entry.num_versions):]
        # A labelled version stays loaded even when the policy alone would drop it (e.g. `stable` while a
        # newer `canary` is checked), so a label never points at nothing.
        return set(chosen) | {v for v in entry.labels.values() if v in present}

    def _load_new_versions(self, served: ServedModel) -> tuple[dict[int, LoadedVersion], set[int]]:
        """Phase 1: load every wanted version not loaded yet. Returns (loaded incl. old, wanted)."""
        entry = served.entry
        versions = dict(served.versions)
        try:
            present = repo.list_model_versions(entry.base_path)
        except Exception as exc:  # noqa: BLE001 - a flaky listing must not stop serving what is loaded
            log.warning("cannot list versions of %s at %s: %s", entry.name, entry.base_path, exc)
            return versions, set(versions)
        wanted = self._wanted(entry, present)
        for version in sorted(wanted - set(versions)):
            state = served.states.setdefault(version, VersionState("START"))
            if state.state == "END" and state.attempts >= MAX_LOAD_ATTEMPTS:
                continue
            state.state, state.attempts = "LOADING", state.attempts + 1
            try:
                local = repo.download_version(storage.join(entry.base_path, str(version)), self._cache_dir)
                versions[version] = load_version(entry.name, version, local, self._max_batch_size, self._batching)
            except Exception as exc:  # noqa: BLE001 - reported through GetModelStatus, as TF Serving does
                log.error("failed to load %s version %d: %s", entry.name, version, exc)
                served.states[version] = VersionState("END", "UNKNOWN", f"{type(exc).__name__}: {exc}",
                                                      state.attempts)
                continue
            served.states[version] = VersionState("AVAILABLE")
            log.info("loaded %s version %d", entry.name, version)
        return versions, wanted

    def _swap_in(self, served: ServedModel, versions: dict[int, LoadedVersion], wanted: set[int]) -> None:
        """Phase 2: one assignment publishes the new table; requests holding an old version finish on it."""
        unwanted = [v for v in versions if v not in wanted]
        for version in unwanted:
            served.states[version] = VersionState("UNLOADING")
        served.versions = {v: lv for v, lv in versions.items() if v in wanted}
        for version in unwanted:
            versions[version].close()
            served.states[version] = VersionState("END")
            log.info("unloaded %s version %d", served.entry.name, version)

    # ------------------------------------------------------------ lookups
    def entries(self) -> list[repo.ModelEntry]:
        return [m.entry for m in self._models.values()]

    def model(self, name: str) -> ServedModel:
        served = self._models.get(name)
        if served is None:
            raise not_found(f"Servable not found for request: Latest({name})")
        return served

    def resolve(self, model_spec: Any) -> LoadedVersion:
        """ModelSpec (name + version or label) -> the loaded version, or NOT_FOUND like TF Serving."""
        name = model_spec.name
        if not name:
            raise invalid_argument("Missing ModelSpec name")
        served = self._models.get(name)
        choice = model_spec.WhichOneof("version_choice")
        if choice == "version":
            request = f"Specific({name}, {model_spec.version.value})"
        elif choice == "version_label":
            request = f"Specific({name}, {model_spec.version_label})"
        else:
            request = f"Latest({name})"
        if served is None:
            raise not_found(f"Servable not found for request: {request}")
        versions = served.versions  # one read: the snapshot this request keeps
        if choice == "version":
            lv = versions.get(int(model_spec.version.value))
        elif choice == "version_label":
            label = model_spec.version_label
            if label not in served.entry.labels:
                raise not_found(f"Unrecognized servable version label: {label}")
            lv = versions.get(served.entry.labels[label])
        else:
            lv = versions[max(versions)] if versions else None
        if lv is None:
            raise not_found(f"Servable not found for request: {request}")
        return lv

    def close(self) -> None:
        with self._refresh_lock:
            for served in self._models.values():
                for lv in served.versions.values():
                    lv.close()
            self._models = {}


# --------------------------------------------------------------------------- request handling
def _tensor_to_array(name: str, proto: Any) -> np.ndarray:
    import tensorflow as tf

    try:
        return tf.make_ndarray(proto)
    except Exception as exc:  # noqa: BLE001 - malformed TensorProto from the client
        raise invalid_argument(f"tensor parsing error: {name} ({exc})") from exc


def _dtype_name(enum_value: int) -> str:
    from tensorflow.core.framework import types_pb2

    return types_pb2.DataType.Name(enum_value)


def check_inputs(signature_def: Any, request_inputs: Any, max_batch_size: int) -> dict[str, np.ndarray]:
    """Validate request tensors against the signature; every mismatch is INVALID_ARGUMENT naming the input."""
    from tensorflow.core.framework import tensor_shape_pb2  # noqa: F401 - proto types below

    expected = dict(signature_def.inputs)
    sent = set(request_inputs.keys())
    if sent != set(expected):
        extra = sorted(sent - set(expected))
        missing = sorted(set(expected) - sent)
        raise invalid_argument(
            f"input size does not match signature: {len(sent)}!={len(expected)} "
            f"len({{{', '.join(sorted(sent))}}}) != len({{{', '.join(sorted(expected))}}}). "
            f"Sent extra: {{{', '.join(extra)}}}. Missing but required: {{{', '.join(missing)}}}."
        )
    arrays: dict[str, np.ndarray] = {}
    batch_sizes = set()
    for key in sorted(expected):
        info, proto = expected[key], request_inputs[key]
        if proto.dtype != info.dtype:
            raise invalid_argument(
                f"Expects arg[{key}] to be {_dtype_name(info.dtype)} but {_dtype_name(proto.dtype)} is provided"
            )
        array = _tensor_to_array(key, proto)
        if not info.tensor_shape.unknown_rank:
            dims = [d.size for d in info.tensor_shape.dim]
            if array.ndim != len(dims) or any(d >= 0 and d != s for d, s in zip(dims, array.shape, strict=False)):
                shown = "[" + ",".join("?" if d < 0 else str(d) for d in dims) + "]"
                raise invalid_argument(
                    f"input {key!r} has shape {list(array.shape)} but the signature expects {shown}"
                )
        if array.ndim == 0:
            raise invalid_argument(f"input {key!r} must have a batch dimension")
        batch_sizes.add(int(array.shape[0]))
        arrays[key] = array
    if len(batch_sizes) > 1:
        raise invalid_argument(f"inputs have different batch sizes: {sorted(batch_sizes)}")
    batch = batch_sizes.pop() if batch_sizes else 0
    if batch == 0:
        raise invalid_argument("Input is empty: the batch dimension is 0")
    if batch > max_batch_size:
        raise invalid_argument(f"Task size {batch} is larger than maximum input batch size {max_batch_size}")
    return arrays


def _set_model_spec(spec: Any, lv: LoadedVersion, signature_name: str) -> None:
    spec.name = lv.name
    spec.version.value = lv.version
    spec.signature_name = signature_name


class _Servicers:
    """Builds the two servicer classes on the official generated bases (imported lazily: they pull in TF)."""

    def __init__(self, manager: ModelManager, max_batch_size: int):
        self.manager = manager
        self.max_batch_size = max_batch_size

    def prediction_service(self) -> Any:
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        outer = self

        class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
            def Predict(self, request: Any, context: Any) -> Any:  # noqa: N802 - gRPC method name
                return _guard(context, outer.predict, request)

            def GetModelMetadata(self, request: Any, context: Any) -> Any:  # noqa: N802
                return _guard(context, outer.metadata, request)

            def Classify(self, request: Any, context: Any) -> Any:  # noqa: N802
                return _guard(context, outer.classify, request)

        return PredictionService()

    def model_service(self) -> Any:
        from tensorflow_serving.apis import model_service_pb2_grpc

        outer = self

        class ModelService(model_service_pb2_grpc.ModelServiceServicer):
            def GetModelStatus(self, request: Any, context: Any) -> Any:  # noqa: N802
                return _guard(context, outer.model_status, request)

            def HandleReloadConfigRequest(self, request: Any, context: Any) -> Any:  # noqa: N802
                return _guard(context, outer.reload_config, request)

        return ModelService()

    # ------------------------------------------------------------ PredictionService
    def predict(self, request: Any) -> Any:
        from tensorflow_serving.apis import predict_pb2

        lv = self.manager.resolve(request.model_spec)
        signature_name = request.model_spec.signature_name or DEFAULT_SIGNATURE
        signature_def = lv.signature(signature_name)
        outputs_wanted = list(request.output_filter) or sorted(signature_def.outputs)
        for alias in outputs_wanted:
            if alias not in signature_def.outputs:
                raise invalid_argument(
                    f"output tensor alias not found in signature: {alias} Outputs expected to be in the set "
                    f"{{{','.join(sorted(signature_def.outputs))}}}."
                )
        inputs = check_inputs(signature_def, request.inputs, min(self.max_batch_size, lv.max_batch_size))
        outputs = lv.run(signature_name, inputs)
        response = predict_pb2.PredictResponse()
        _set_model_spec(response.model_spec, lv, signature_name)
        _fill_tensors(response.outputs, {k: outputs[k] for k in outputs_wanted})
        return response

    def metadata(self, request: Any) -> Any:
        from tensorflow_serving.apis import get_model_metadata_pb2

        fields = list(request.metadata_field)
        for name in fields:
            if name != "signature_def":
                raise invalid_argument(f"Metadata field {name} is not supported")
        if not fields:
            raise invalid_argument("GetModelMetadataRequest must specify at least one metadata_field")
        lv = self.manager.resolve(request.model_spec)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        _set_model_spec(response.model_spec, lv, "")
        response.model_spec.ClearField("signature_name")
        sig_map = get_model_metadata_pb2.SignatureDefMap()
        for name, sig in lv.signature_defs.items():
            sig_map.signature_def[name].CopyFrom(sig)
        response.metadata["signature_def"].Pack(sig_map)
        return response

    def classify(self, request: Any) -> Any:
        from tensorflow_serving.apis import classification_pb2

        lv = self.manager.resolve(request.model_spec)
        signature_name = request.model_spec.signature_name or DEFAULT_SIGNATURE
        signature_def = lv.signature(signature_name)
        if signature_def.method_name != CLASSIFY_METHOD_NAME:
            raise invalid_argument(
                f"Expected classification signature method_name to be {CLASSIFY_METHOD_NAME}. "
                f"Was: {signature_def.method_name} (signature {signature_name!r}; this model classifies "
                f"through the 'classify' signature)"
            )
        serialized = _serialize_examples(request.input)
        if len(serialized) > min(self.max_batch_size, lv.max_batch_size):
            raise invalid_argument(
                f"Task size {len(serialized)} is larger than maximum input batch size {self.max_batch_size}"
            )
        input_key = next(iter(signature_def.inputs))
        outputs = lv.run(signature_name, {input_key: np.asarray(serialized, dtype=object)})
        response = classification_pb2.ClassificationResponse()
        _set_model_spec(response.model_spec, lv, signature_name)
        classes, scores = outputs.get("classes"), outputs.get("scores")
        for row in range(len(serialized)):
            classification = response.result.classifications.add()
            n = (scores if scores is not None else classes).shape[1]
            for col in range(n):
                item = classification.classes.add()
                if classes is not None:
                    item.label = _text(classes[row, col])
                if scores is not None:
                    item.score = float(scores[row, col])
        return response

    # ------------------------------------------------------------ ModelService
    def model_status(self, request: Any) -> Any:
        from tensorflow_serving.apis import get_model_status_pb2

        spec = request.model_spec
        served = self.manager.model(spec.name)
        choice = spec.WhichOneof("version_choice")
        states = dict(served.states)
        if choice == "version_label":
            if spec.version_label not in served.entry.labels:
                raise not_found(f"Unrecognized servable version label: {spec.version_label}")
            wanted = [served.entry.labels[spec.version_label]]
        elif choice == "version":
            wanted = [int(spec.version.value)]
        else:
            wanted = sorted(states)
        if not wanted:
            raise not_found(f"Could not find any versions of model {spec.name}")
        response = get_model_status_pb2.GetModelStatusResponse()
        for version in wanted:
            state = states.get(version)
            if state is None:
                raise not_found(f"Could not find version {version} of model {spec.name}")
            status = response.model_version_status.add()
            status.version = version
            status.state = get_model_status_pb2.ModelVersionStatus.State.Value(state.state)
            status.status.error_code = _error_code(state.error_code)
            status.status.error_message = state.error_message
        return response

    def reload_config(self, request: Any) -> Any:
        from google.protobuf import text_format
        from tensorflow_serving.apis import model_management_pb2

        try:
            entries = repo.parse_models_config(text_format.MessageToString(request.config), "ReloadConfigRequest")
        except repo.ModelConfigError as exc:
            raise invalid_argument(str(exc)) from exc
        self.manager.apply_config(entries, check_labels=True)
        response = model_management_pb2.ReloadConfigResponse()
        response.status.error_code = 0
        return response


def _error_code(name: str) -> int:
    from tensorflow.core.protobuf import error_codes_pb2

    return error_codes_pb2.Code.Value(name)


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _serialize_examples(input_proto: Any) -> list[bytes]:
    kind = input_proto.WhichOneof("kind")
    if kind == "example_list":
        examples = list(input_proto.example_list.examples)
    elif kind == "example_list_with_context":
        context = input_proto.example_list_with_context.context
        examples = []
        for example in input_proto.example_list_with_context.examples:
            merged = type(example)()
            merged.CopyFrom(context)
            merged.MergeFrom(example)
            examples.append(merged)
    else:
        raise invalid_argument("Input is empty")
    if not examples:
        raise invalid_argument("Input is empty")
    return [e.SerializeToString() for e in examples]


def _fill_tensors(target: Any, arrays: dict[str, np.ndarray]) -> None:
    import tensorflow as tf

    for key, value in arrays.items():
        target[key].CopyFrom(tf.make_tensor_proto(value))


def _guard(context: Any, method: Any, request: Any) -> Any:
    """Turn ServingStatus into the gRPC status; anything unexpected becomes INTERNAL with its type."""
    import grpc

    try:
        return method(request)
    except ServingStatus as exc:
        context.abort(getattr(grpc.StatusCode, exc.code_name), exc.message)
    except Exception as exc:  # noqa: BLE001
        log.exception("unexpected error")
        context.abort(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")


# --------------------------------------------------------------------------- the server
@dataclass
class RunningServer:
    """A started server: `.address` is `host:port`; `stop()` drains calls in flight, then shuts down."""

    port: int
    address: str
    manager: ModelManager
    _server: Any
    _stop_event: threading.Event
    _poller: threading.Thread
    _cache_dir: Path
    _stopped: bool = False

    def stop(self, grace: float = 5.0) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._stop_event.set()
        self._server.stop(grace).wait()
        self._poller.join(timeout=grace + 30)
        self.manager.close()
        shutil.rmtree(self._cache_dir, ignore_errors=True)

    def wait(self) -> None:
        """Block until the server stops (Ctrl-C in `retina serve`)."""
        self._server.wait_for_termination()

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def resolve_model_folder(model_base_path: str, model_name: str) -> str:
    """TF Serving's `--model_base_path` is the model's own folder (`<repository>/<model>`). The repository
    root is accepted too: when the path has no integer versions but `<path>/<model_name>` exists, use that."""
    base = str(model_base_path).rstrip("/")
    if storage.basename(base) == model_name:
        return base
    names = storage.list_dirs(base)
    if any(n.isdigit() for n in names):
        return base
    if model_name in names:
        return storage.join(base, model_name)
    return base


def _config_entries(model_config_file: str | None, model_base_path: str | None,
                    model_name: str | None) -> list[repo.ModelEntry]:
    if model_config_file:
        return repo.read_models_config(model_config_file)
    if not model_base_path:
        raise RetinaError("give either a model config file or a model base path (with a model name)")
    name = model_name or "default"
    return [repo.ModelEntry(name=name, base_path=resolve_model_folder(model_base_path, name))]


def start_server(model_config_file: str | None = None, model_base_path: str | None = None,
                 model_name: str | None = None, port: int = 0, poll_interval_s: float = 2.0,
                 max_batch_size: int = DEFAULT_MAX_BATCH_SIZE, enable_batching: bool = False,
                 host: str = "127.0.0.1", max_workers: int = 16,
                 config_poll_interval_s: float | None = None) -> RunningServer:
    """Load the models, start the gRPC server and the version poller; returns once every model's initial
    versions are loaded (as TF Serving does before it reports ready).

    `port=0` picks a free port. `poll_interval_s <= 0` disables polling for new versions.
    `config_poll_interval_s` (default: the same as `poll_interval_s`) re-reads `model_config_file`.
    """
    import grpc
    from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

    entries = _config_entries(model_config_file, model_base_path, model_name)
    cache_dir = Path(tempfile.mkdtemp(prefix="retina-serving-cache-"))
    try:
        manager = ModelManager(entries, cache_dir, max_batch_size, enable_batching)
    except ServingStatus as exc:
        shutil.rmtree(cache_dir, ignore_errors=True)
        raise RetinaError(f"model config rejected: {exc.message}") from exc
    servicers = _Servicers(manager, max_batch_size)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="retina-grpc"),
        options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                 ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                 ("grpc.so_reuseport", 0)],
    )
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(servicers.prediction_service(), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(servicers.model_service(), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        manager.close()
        shutil.rmtree(cache_dir, ignore_errors=True)
        raise RetinaError(f"cannot bind the model server to {host}:{port} (port in use?)")
    server.start()
    stop_event = threading.Event()
    config_every = poll_interval_s if config_poll_interval_s is None else config_poll_interval_s

    def poll() -> None:
        last_config_text = storage.read_text(model_config_file) if model_config_file else None
        last_config_check = time.monotonic()
        rejected_text = None
        while not stop_event.wait(poll_interval_s if poll_interval_s > 0 else 3600):
            if poll_interval_s <= 0:
                continue
            if model_config_file and config_every > 0 and time.monotonic() - last_config_check >= config_every:
                last_config_check = time.monotonic()
                try:
                    text = storage.read_text(model_config_file)
                except RetinaError as exc:
                    log.error("cannot read model config %s: %s", model_config_file, exc)
                    text = last_config_text
                if text != last_config_text:
                    try:  # a rejected config is retried on the next poll (its version may appear), logged once
                        manager.apply_config(repo.parse_models_config(text, model_config_file))
                        log.info("applied changed model config %s", model_config_file)
                        last_config_text = text
                    except (RetinaError, ServingStatus) as exc:
                        if text != rejected_text:
                            log.error("model config %s not applied: %s", model_config_file, exc)
                        rejected_text = text
            try:
                manager.refresh()
            except Exception:  # noqa: BLE001 - keep polling; what is loaded keeps serving
                log.exception("version poll failed")

    poller = threading.Thread(target=poll, daemon=True, name="retina-version-poller")
    poller.start()
    address_host = "127.0.0.1" if host in ("0.0.0.0", "::", "[::]") else host
    log.info("serving %s on %s:%d", ", ".join(e.name for e in entries), host, bound)
    return RunningServer(port=bound, address=f"{address_host}:{bound}", manager=manager, _server=server,
                         _stop_event=stop_event, _poller=poller, _cache_dir=cache_dir)
