"""A local, TF-Serving-compatible model server: the process that ties the parts together.

Real TF Serving cannot be installed on the development machine, so `retina serve` gives users and tests
the same contract: `tensorflow_model_server`'s flags (`serving.options`), its gRPC services
(`serving.servicers`: PredictionService, ModelService, grpc.health.v1), its REST API (`serving.rest`),
its batching (`serving.batching`), warmup and model lifecycle (`serving.manager`, `serving.servable`)
and its Prometheus metrics (`serving.metrics`). A client or a curl command written against one works
unchanged against the other.

This module only starts and stops: it reads the config, starts the manager (which loads every model's
initial versions, as TF Serving does before it reports ready; a version still failing after its retries
stops the start-up, as in TF Serving), binds gRPC on `host:port` and, if asked,
on a Unix socket, starts the REST server, and runs the poller that picks up new versions and config
changes. The poller survives any error and logs it.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.common import quiet, storage
from components.common.errors import RetinaError
from serving import model_repository as repo
from serving.manager import ModelManager, NewModelsUnavailable
from serving.metrics import Metrics
from serving.options import (
    BatchingParameters,
    ServerOptions,
    check_session_flags,
    grpc_server_options,
    read_batching_parameters,
    read_prometheus_path,
)
from serving.servicers import Handlers, Health, add_services
from serving.status import ServingStatus, failed_precondition

log = logging.getLogger(__name__)

# TF Serving sets no receive limit of its own (gRPC's INT_MAX); a declared-size check guards tensors.
MAX_MESSAGE_BYTES = 2**31 - 1


class ServerNotStarted(RetinaError):
    """TF Serving's main.cc refusal, "Failed to start server. Error: <status>": the first config was refused
    (a version label TF Serving's `ReloadConfig` refuses, before any model loads) or its models failed."""


class ModelsNotAvailable(ServerNotStarted):
    """The server did not start: an initial version of a model ended in an error after its load retries."""


def _start_error(exc: ServingStatus) -> str:
    return f"Failed to start server. Error: {exc.code_name}: {exc.message}"


@dataclass
class RunningServer:
    """A started server: `.address` is `host:port` (gRPC), `.rest_port` the REST port (0: none)."""

    port: int
    address: str
    manager: ModelManager
    handlers: Handlers
    options: ServerOptions
    rest_port: int = 0
    _grpc: Any = None
    _rest: Any = None
    _health: Health | None = None
    _stop_event: threading.Event = field(default_factory=threading.Event)
    _poller: threading.Thread | None = None
    _cache_dir: Path | None = None
    _stopped: bool = False

    def stop(self, grace: float = 5.0) -> None:
        """Stop accepting calls, let calls in flight finish within `grace`, unload everything."""
        if self._stopped:
            return
        self._stopped = True
        if self._health is not None:
            self._health.serving = False
        self._stop_event.set()
        if self._rest is not None:
            self._rest.stop()
        self._grpc.stop(grace).wait()
        if self._poller is not None:
            self._poller.join(timeout=grace + 30)
        self.manager.close()
        if self._cache_dir is not None:
            shutil.rmtree(self._cache_dir, ignore_errors=True)

    def wait(self) -> None:
        self._grpc.wait_for_termination()

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def resolve_model_folder(model_base_path: str, model_name: str) -> str:
    """TF Serving's `--model_base_path` is the model's own folder (`<repository>/<model>`). The repository
    root is accepted too: when the path has no numeric versions but `<path>/<model_name>` exists, use that."""
    base = str(model_base_path).rstrip("/")
    if storage.basename(base) == model_name:
        return base
    names = storage.list_dirs(base)
    if any(n.isdigit() for n in names):
        return base
    if model_name in names:
        return storage.join(base, model_name)
    return base


def config_entries(options: ServerOptions) -> tuple[list[repo.ModelEntry], str | None]:
    """The models to serve and the config file's text they came from (None without a config file)."""
    if options.model_config_file:
        text = storage.read_text(options.model_config_file)
        return repo.parse_models_config(text, source=str(options.model_config_file)), text
    if not options.model_base_path:
        raise RetinaError("give either a model config file or a model base path (with a model name)")
    name = options.model_name or "default"
    return [repo.ModelEntry(name=name, base_path=resolve_model_folder(options.model_base_path, name))], None


def _legacy_options(kwargs: dict[str, Any]) -> ServerOptions:
    """The keyword spelling older callers use (`poll_interval_s`, `max_batch_size`, ...)."""
    options = ServerOptions(port=0, enable_model_warmup=True)
    names = {"poll_interval_s": "file_system_poll_wait_seconds",
             "config_poll_interval_s": "model_config_file_poll_wait_seconds"}
    for key, value in kwargs.items():
        if value is None or key in ("max_batch_size", "max_workers"):
            continue
        setattr(options, names.get(key, key), value)
    if kwargs.get("config_poll_interval_s") is None:
        options.model_config_file_poll_wait_seconds = options.file_system_poll_wait_seconds
    return options


def _batching(options: ServerOptions, max_batch_size: int | None) -> BatchingParameters | None:
    if not options.enable_batching:
        return None
    if options.batching_parameters_file:
        return read_batching_parameters(options.batching_parameters_file)
    return BatchingParameters(max_batch_size=max_batch_size) if max_batch_size else BatchingParameters()


def start_server(options: ServerOptions | None = None, **kwargs: Any) -> RunningServer:
    """Load the models, start gRPC (+ Unix socket), REST and the poller; returns once the initial versions
    are loaded. Raises RetinaError (a clear message) for a bad config, flag file or port, and, as TF Serving
    refuses to start, when a model's initial version still fails after its load retries (no port is opened
    and the download cache is removed)."""
    max_batch_size = kwargs.get("max_batch_size")
    options = options or _legacy_options(kwargs)
    for name, value in sorted(options.ignored.items()):
        log.warning("flag --%s=%s has no effect in retina serve (accepted for compatibility)", name, value)
    check_session_flags(options)
    entries, _ = config_entries(options)  # every file is checked before TensorFlow starts
    batching = _batching(options, max_batch_size)
    prometheus_path = read_prometheus_path(options.monitoring_config_file) if options.monitoring_config_file else None
    channel_options = grpc_server_options(options.grpc_channel_arguments)
    quiet.import_tensorflow()
    metrics = Metrics()
    cache_dir = Path(tempfile.mkdtemp(prefix="retina-serving-cache-"))

    def on_event(model: str, event: str, value: int, _detail: str) -> None:
        if event == "batch":
            metrics.observe(":tensorflow:serving:batching_session:processed_batch_size", value,
                            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024), model_name=model)
        elif event in ("loaded", "load_failed"):
            metrics.count(":tensorflow:cc:saved_model:load_attempt_count", model_name=model,
                          status="success" if event == "loaded" else "error")

    try:
        manager = ModelManager(entries, cache_dir, options, batching, on_event)
    except ServingStatus as exc:  # the first config's labels, checked before anything loads
        shutil.rmtree(cache_dir, ignore_errors=True)
        raise ServerNotStarted(_start_error(exc)) from exc
    except RetinaError:
        shutil.rmtree(cache_dir, ignore_errors=True)
        raise
    try:
        manager.await_initial_versions()
    except BaseException as exc:
        manager.close()
        shutil.rmtree(cache_dir, ignore_errors=True)
        if isinstance(exc, ServingStatus):  # TF Serving's main.cc: "Failed to start server. Error: <status>"
            raise ModelsNotAvailable(_start_error(exc)) from exc
        raise
    handlers = Handlers(manager, options, metrics, batching is not None)
    try:
        return _start_endpoints(options, manager, handlers, prometheus_path, channel_options, cache_dir)
    except BaseException:
        manager.close()
        shutil.rmtree(cache_dir, ignore_errors=True)
        raise


def _start_endpoints(options: ServerOptions, manager: ModelManager, handlers: Handlers,
                     prometheus_path: str | None, channel_options: list, cache_dir: Path) -> RunningServer:
    import grpc

    grpc_options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES), ("grpc.so_reuseport", 0)]
    grpc_options = [o for o in grpc_options if o[0] not in dict(channel_options)] + channel_options
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=options.grpc_max_threads,
                                                    thread_name_prefix="retina-grpc"), options=grpc_options)
    health = add_services(server, handlers)
    bound = server.add_insecure_port(f"{_grpc_host(options.host)}:{options.port}")
    if bound == 0:
        raise RetinaError(f"cannot bind the gRPC server to {options.host}:{options.port} (port in use?)")
    if options.grpc_socket_path:
        if server.add_insecure_port(f"unix:{options.grpc_socket_path}") == 0:
            raise RetinaError(f"cannot listen on the Unix socket {options.grpc_socket_path}")
    running = RunningServer(port=bound, address=f"{_client_host(options.host)}:{bound}", manager=manager,
                            handlers=handlers, options=options, _grpc=server, _health=health, _cache_dir=cache_dir)
    if options.rest_api_port:
        from serving.rest import RestApi, RestServer, build_app

        app = build_app(RestApi(handlers, prometheus_path), options.rest_api_num_threads,
                        options.rest_api_timeout_in_ms, options.max_request_tensor_bytes,
                        cors=options.rest_api_enable_cors_support)
        running._rest = RestServer(app, options.host, options.rest_api_port)  # noqa: SLF001
        running.rest_port = running._rest.port  # noqa: SLF001
    if running._rest is not None:  # REST first: a client that sees gRPC answer finds REST up too
        running._rest.start()  # noqa: SLF001
    server.start()
    running._poller = threading.Thread(target=_poll,  # noqa: SLF001
                                       args=(options, manager, running._stop_event),  # noqa: SLF001
                                       daemon=True, name="retina-version-poller")
    running._poller.start()  # noqa: SLF001
    log.info("serving %s on %s:%d (gRPC)%s", ", ".join(e.name for e in manager.entries()), options.host, bound,
             f" and :{running.rest_port} (REST)" if running.rest_port else "")
    return running


def _grpc_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _client_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "[::]", "") else _grpc_host(host)


def _poll(options: ServerOptions, manager: ModelManager, stop: threading.Event) -> None:
    """Every `file_system_poll_wait_seconds`: new versions and due retries; every
    `model_config_file_poll_wait_seconds`: the config file (`_apply_config_file`). 0 polls versions once
    (TF Serving's rule); any error is logged and the loop goes on."""
    version_every = options.file_system_poll_wait_seconds
    config_every = options.model_config_file_poll_wait_seconds if options.model_config_file else 0
    if version_every <= 0 and config_every <= 0:
        return
    state = {"config_at": time.monotonic()}
    tick = min(x for x in (version_every, config_every) if x > 0)
    while not stop.wait(tick):
        try:
            if config_every > 0 and time.monotonic() - state["config_at"] >= config_every:
                state["config_at"] = time.monotonic()
                _apply_config_file(options, manager, stop)
            if version_every > 0:
                manager.refresh()
        except Exception:  # noqa: BLE001 - keep polling; what is loaded keeps serving
            log.exception("model poll failed; will try again")


def _read_config(options: ServerOptions) -> str | None:
    if not options.model_config_file:
        return None
    try:
        return storage.read_text(options.model_config_file)
    except RetinaError as exc:
        log.error("cannot read model config %s: %s", options.model_config_file, exc)
        return None


def _apply_config_file(options: ServerOptions, manager: ModelManager, stop: threading.Event) -> None:
    """TF Serving's `PollFilesystemAndReloadConfig`: at every poll the file's config is reloaded, so the
    file wins over a HandleReloadConfigRequest made meanwhile (which the next poll reverts, as in TF
    Serving); the same config as the one served changes nothing and is skipped. It is applied as a reload
    is, waiting for the models it adds (this thread keeps polling versions meanwhile); a model that did
    not become available leaves the config applied and is logged. A refused file (a label TF Serving's
    `ReloadConfig` refuses: nothing of it is loaded) is logged at every poll, as TF Serving logs
    "PollFilesystemAndReloadConfig failed to ReloadConfig: ...", and the config in force keeps serving. So
    is a file that sets no config at all (empty: TF Serving only moves from one ModelConfigList to another)."""
    text = _read_config(options)
    if text is None:
        return
    try:
        entries = repo.parse_models_config(text, options.model_config_file)
        if {e.name: e for e in entries} == {e.name: e for e in manager.entries()}:
            return
        if not entries and not repo.sets_model_config_list(text):  # ReloadConfig's accept_transition
            raise failed_precondition("Cannot transition to requested config. It is only legal to transition "
                                      "from one ModelConfigList to another.")
        manager.apply_config(entries, wait=True, cancelled=stop.is_set)
        log.info("applied model config %s", options.model_config_file)
    except NewModelsUnavailable as exc:
        log.error("model config %s applied, but: %s", options.model_config_file, exc.message)
    except (RetinaError, ServingStatus) as exc:  # retried at the next poll, logged each time as TF Serving
        log.error("model config %s not applied: %s", options.model_config_file, exc)
