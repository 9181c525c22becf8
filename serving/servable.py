"""One loaded model version: a SavedModel in a TensorFlow session, run by tensor name — as TF Serving runs it.

TF Serving loads every SavedModel (TF1 graphs and TF2 `tf.function` exports alike) into a session and
runs a signature by feeding and fetching the tensor names its SignatureDef lists. Doing the same here is
what makes TF Serving's own example models behave identically: the TF1 `half_plus_three` loads, a
request `x` of shape `[1]` is accepted for a signature `[?,1]` (a session does not check a fed tensor's
shape against the placeholder's), and Classify/Regress can run a TF2 export's signature whatever its
`method_name`. Callables are built once per (signature, inputs, outputs) with `CallableOptions`, which
skips the Python-side feed checks and runs with the GIL released, so concurrent requests use every core.

Lifecycle: requests hold the version through `use()`; `close()` refuses new requests (UNAVAILABLE),
waits for those in flight, stops the batch threads and closes the session, so nothing of an unloaded
version stays behind and no request racing the unload hangs.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from components.common import quiet
from serving.batching import Batcher
from serving.model_repository import SAVED_MODEL_FILE
from serving.options import BatchingParameters
from serving.status import ServingStatus, failed_precondition, from_tf_error

log = logging.getLogger(__name__)

SAVED_MODEL_TAGS = ["serve"]
WARMUP_FILE = "tf_serving_warmup_requests"
MAX_WARMUP_RECORDS = 1000  # TF Serving's WarmupConsts::kMaxNumRecords


class RunClock(threading.local):
    """Microseconds this thread has spent in `LoadedVersion.run` since `reset()`. TF Serving's
    runtime_latency times the session Run alone (predict_util.cc, util.cc PerformOneShotTensorComputation),
    not the request's parsing and answer building, so the handlers read this rather than their own timer."""

    micros = 0.0

    def reset(self) -> None:
        self.micros = 0.0


RUN_CLOCK = RunClock()


class LoadedVersion:
    """A loaded SavedModel version; `signature_defs` is the MetaGraph's map, as GetModelMetadata shows it."""

    def __init__(self, name: str, version: int, path: Path, session: Any, meta_graph: Any,
                 batching: BatchingParameters | None = None,
                 on_batch: Callable[[str, int], None] | None = None):
        self.name = name
        self.version = version
        self.path = path
        self.meta_graph = meta_graph
        self.signature_defs = dict(meta_graph.signature_def)
        self._session = session
        self._batching = batching
        self._on_batch = on_batch
        self._callables: dict[tuple, Any] = {}
        self.plans: dict[str, Any] = {}  # per signature, what serving.inference derives from it once
        self._batchers: dict[tuple, Batcher] = {}
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._in_flight = 0
        self._closing = False

    # ------------------------------------------------------------ requests
    def use(self) -> LoadedVersion:
        """Hold this version for one request (`with lv.use():`); refused with UNAVAILABLE once it is being
        unloaded. The version is its own context manager: no generator is built per request."""
        return self

    def __enter__(self) -> LoadedVersion:
        with self._lock:
            if self._closing:
                raise ServingStatus("UNAVAILABLE", f"Servable {self.name} version {self.version} is being unloaded")
            self._in_flight += 1
        return self

    def __exit__(self, *exc: Any) -> None:
        with self._lock:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.notify_all()

    def signature(self, name: str) -> Any:
        signature = self.signature_defs.get(name)
        if signature is None:
            raise failed_precondition(f'Serving signature key "{name}" not found.')
        return signature

    def run(self, signature_name: str, inputs: dict[str, np.ndarray], output_aliases: list[str],
            batchable: bool = True) -> dict[str, np.ndarray]:
        """Feed `inputs` (alias -> array), fetch `output_aliases`; through the batcher when batching."""
        signature = self.signature(signature_name)
        feeds = sorted(inputs)
        key = (signature_name, tuple(feeds), tuple(output_aliases))
        start = time.perf_counter()
        try:  # a batched call's time includes its wait for the batch, as TF's BatchingSession::Run does
            if self._batching is not None and batchable:
                return self._batcher(key, signature).submit(inputs)
            return self._call(key, signature, inputs)
        finally:
            RUN_CLOCK.micros += (time.perf_counter() - start) * 1e6

    def _callable(self, key: tuple, signature: Any) -> Any:
        fn = self._callables.get(key)
        if fn is not None:
            return fn
        from tensorflow.core.protobuf import config_pb2

        _, feeds, fetches = key
        options = config_pb2.CallableOptions()
        options.feed.extend(signature.inputs[k].name for k in feeds)
        options.fetch.extend(signature.outputs[k].name for k in fetches)
        with self._lock:
            fn = self._callables.get(key)
            if fn is None:
                fn = self._session._make_callable_from_options(options)  # noqa: SLF001 - TF's run-by-name API
                self._callables[key] = fn
        return fn

    def _call(self, key: tuple, signature: Any, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        _, feeds, fetches = key
        try:
            values = self._callable(key, signature)(*[inputs[k] for k in feeds])
        except Exception as exc:
            if isinstance(exc, quiet.import_tensorflow().errors.OpError):
                raise from_tf_error(exc) from exc
            raise
        return dict(zip(fetches, values, strict=True))

    def _batcher(self, key: tuple, signature: Any) -> Batcher:
        with self._lock:
            batcher = self._batchers.get(key)
            if batcher is None:
                if self._closing:
                    raise ServingStatus("UNAVAILABLE", f"Servable {self.name} version {self.version} is being "
                                                       "unloaded")

                def on_batch(rows: int, model: str = self.name) -> None:
                    if self._on_batch is not None:
                        self._on_batch(model, rows)

                batcher = Batcher(lambda x: self._call(key, signature, x), self._batching,
                                  name=f"batch-{self.name}-{self.version}", on_batch=on_batch)
                self._batchers[key] = batcher
            return batcher

    def batch_sizes(self) -> dict[int, int]:
        """Sizes of the merged batches run so far, over every signature."""
        total: dict[int, int] = {}
        for batcher in list(self._batchers.values()):
            for size, n in batcher.batch_sizes.items():
                total[size] = total.get(size, 0) + n
        return total

    # ------------------------------------------------------------ unload
    def close(self, timeout_s: float = 30.0) -> None:
        """Refuse new requests, let those in flight finish (up to `timeout_s`), free threads and session."""
        with self._lock:
            self._closing = True
            batchers = list(self._batchers.values())
            self._batchers.clear()
        for batcher in batchers:
            batcher.close(timeout_s)
        with self._lock:
            if not self._idle.wait_for(lambda: self._in_flight == 0, timeout=timeout_s):
                log.warning("%s version %d: %d requests still running at unload", self.name, self.version,
                            self._in_flight)
            self._callables.clear()
        try:
            self._session.close()
        except Exception:  # noqa: BLE001 - the version is gone either way
            log.exception("closing the session of %s version %d", self.name, self.version)

    @property
    def closed(self) -> bool:
        return self._closing


def load_session(path: Path, config: Any = None, tags: list[str] | None = None) -> tuple[Any, Any]:
    """(session, MetaGraphDef) of the SavedModel at `path` with `tags` (default `serve`), its init ops run;
    `config` is the session's ConfigProto (`serving.options.read_session_config`)."""
    tf = quiet.import_tensorflow()
    graph = tf.Graph()
    with quiet.captured_stderr():
        session = tf.compat.v1.Session(graph=graph, config=config)
        try:
            with graph.as_default():
                meta_graph = tf.compat.v1.saved_model.loader.load(session, tags or SAVED_MODEL_TAGS, str(path))
        except OSError as exc:
            session.close()
            if str(exc).startswith("Cannot parse file"):  # TF Serving's C++ reader (env.cc ReadBinaryProto)
                raise ServingStatus("DATA_LOSS", f"Can't parse {path / SAVED_MODEL_FILE} as binary proto") from exc
            raise
        except Exception:
            session.close()
            raise
    return session, meta_graph


def load_error(exc: BaseException) -> tuple[str, str]:
    """(code name, message) of a failed load, as GetModelStatus and a reload report it: a ServingStatus or a
    TensorFlow error keeps its canonical code (TF Serving passes the loader's status on), anything else is
    UNKNOWN with the exception's type."""
    if isinstance(exc, ServingStatus):
        return exc.code_name, exc.message
    if isinstance(exc, quiet.import_tensorflow().errors.OpError):
        status = from_tf_error(exc)
        return status.code_name, status.message
    return "UNKNOWN", f"{type(exc).__name__}: {exc}"


def read_warmup_records(path: Path) -> list[Any]:
    """PredictionLog records of `assets.extra/tf_serving_warmup_requests` (none if the file is absent)."""
    from tensorflow_serving.apis import prediction_log_pb2

    file = path / "assets.extra" / WARMUP_FILE
    if not file.exists():
        return []
    tf = quiet.import_tensorflow()
    records = []
    for raw in tf.compat.v1.io.tf_record_iterator(str(file)):
        if len(records) >= MAX_WARMUP_RECORDS:
            raise ServingStatus("INVALID_ARGUMENT", f"Number of warmup records exceeds the maximum "
                                                    f"({MAX_WARMUP_RECORDS}) at {file}")
        record = prediction_log_pb2.PredictionLog()
        try:
            record.ParseFromString(raw)
        except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError
            raise ServingStatus("INVALID_ARGUMENT", f"Failed to parse warmup record at {file}: {exc}") from exc
        records.append(record)
    return records
