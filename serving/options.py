"""`tensorflow_model_server`'s flags, with its names and defaults, and the text-proto files they name.

The flag table mirrors `tensorflow_serving/model_servers/main.cc` and `server.h` (`Server::Options`), so a
command line written for the real binary starts `retina serve` unchanged. Flags that only make sense for
the C++ server (GPU memory, TF Lite, TPU, XLA, profiler, ALTS/SSL, thread-pool factories) are accepted
and logged as ignored: they are never fatal. One addition: `--host` (bind address). TF Serving binds every
interface; locally the default is loopback so a laptop's model server is not on the network
(`--host 0.0.0.0` in a container gives TF Serving's behaviour).

`--batching_parameters_file` (TF Serving's `BatchingParameters`) and `--monitoring_config_file`
(`MonitoringConfig`) are text protos. The pip package `tensorflow-serving-api` does not ship those two
messages, so they are declared here from their `.proto` field numbers and parsed with protobuf's own
`text_format` — a file the real server accepts is accepted here, and a misspelt field is an error.
"""

from __future__ import annotations

import argparse
import logging
import os
import typing
from dataclasses import dataclass, field
from typing import Any

from components.common.errors import RetinaError

log = logging.getLogger(__name__)

CPUS = os.cpu_count() or 1

# Flags that change how the C++ server uses hardware or other runtimes; accepted, logged, ignored.
IGNORED_FLAGS: dict[str, Any] = {
    "enable_per_model_batching_parameters": False,
    "num_load_threads": 0, "num_unload_threads": 0, "flush_filesystem_caches": True,
    "use_alts_credentials": False, "ssl_config_file": "", "platform_config_file": "",
    "per_process_gpu_memory_fraction": 0.0,
    "remove_unused_fields_from_bundle_metagraph": True, "prefer_tflite_model": False,
    "num_tflite_pools": CPUS, "num_tflite_interpreters_per_pool": 1, "enable_profiler": True,
    "thread_pool_factory_config_file": "", "mixed_precision": "", "skip_initialize_tpu": False,
    "xla_cpu_compilation_enabled": False, "xla_gpu_compilation_enabled": False,
}


@dataclass
class ServerOptions:
    """Everything `start_server` needs; defaults are TF Serving's (`Server::Options`)."""

    port: int = 8500
    host: str = "127.0.0.1"
    grpc_socket_path: str = ""
    grpc_channel_arguments: str = ""
    rest_api_port: int = 0
    rest_api_num_threads: int = 4 * CPUS
    rest_api_timeout_in_ms: int = 30000
    model_config_file: str = ""
    model_config_file_poll_wait_seconds: float = 0
    model_name: str = "default"
    model_base_path: str = ""
    file_system_poll_wait_seconds: float = 1
    enable_batching: bool = False
    batching_parameters_file: str = ""
    allow_version_labels_for_unavailable_models: bool = False
    force_allow_any_version_labels_for_unavailable_models: bool = False
    max_num_load_retries: int = 5
    load_retry_interval_micros: int = 60 * 1000 * 1000
    enable_model_warmup: bool = True
    num_request_iterations_for_warmup: int = 0
    monitoring_config_file: str = ""
    enable_signature_method_name_check: bool = False
    enable_grpc_healthcheck_service: bool = False
    grpc_max_threads: int = 4 * CPUS
    rest_api_enable_cors_support: bool = False
    saved_model_tags: str = ""
    tensorflow_session_parallelism: int = 0
    tensorflow_intra_op_parallelism: int = 0
    tensorflow_inter_op_parallelism: int = 0
    tensorflow_session_config_file: str = ""
    enable_serialization_as_tensor_content: bool = False
    # Not TF Serving flags: a request's declared tensor bytes are capped (see serving.tensors), and the
    # largest gRPC message follows TF Serving's INT_MAX receive limit unless channel arguments say less.
    max_request_tensor_bytes: int = 1 << 30
    ignored: dict[str, str] = field(default_factory=dict)


def _bool(value: str) -> bool:
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on", "t"):
        return True
    if text in ("0", "false", "no", "off", "f"):
        return False
    raise argparse.ArgumentTypeError(f"not a boolean: {value!r} (use true or false)")


def _add(parser: argparse.ArgumentParser, name: str, kind: Any, default: Any, help_text: str) -> None:
    dashed = "--" + name.replace("_", "-")
    spellings = ["--" + name] + ([dashed] if dashed != "--" + name else [])
    if kind is bool:
        parser.add_argument(*spellings, dest=name, type=_bool, nargs="?", const=True, default=default,
                            help=help_text)
    else:
        parser.add_argument(*spellings, dest=name, type=kind, default=default, help=help_text)


# What each TF Serving flag does, in `--help` order; its type and default are ServerOptions' field's.
_FLAG_HELP: dict[str, str] = {
    "port": "gRPC port (0 picks a free one)",
    "host": "bind address (not a TF Serving flag; it binds all: use 0.0.0.0 in a container)",
    "grpc_socket_path": "also serve gRPC on this Unix socket",
    "grpc_channel_arguments": "key=value,... gRPC server arguments",
    "rest_api_port": "REST API port (0: no REST API, as TF Serving)",
    "rest_api_num_threads": "REST requests run at once",
    "rest_api_timeout_in_ms": "REST request deadline",
    "model_config_file": "text ModelServerConfig (local or s3://)",
    "model_config_file_poll_wait_seconds": "seconds between re-reads of the config file (0: never)",
    "model_name": "model name with --model_base_path",
    "model_base_path": "the model's folder of integer versions",
    "file_system_poll_wait_seconds": "seconds between polls for new versions (0: poll once)",
    "enable_batching": "merge concurrent requests into one model call",
    "batching_parameters_file": "text BatchingParameters",
    "allow_version_labels_for_unavailable_models": "a new label, or one keeping its version, may name a version "
                                                   "not AVAILABLE yet (moving a label still needs it AVAILABLE)",
    "force_allow_any_version_labels_for_unavailable_models": "any label may name a version not AVAILABLE",
    "max_num_load_retries": "retries of a failed version load",
    "load_retry_interval_micros": "wait between load retries",
    "enable_model_warmup": "replay assets.extra/tf_serving_warmup_requests before a version is AVAILABLE",
    "num_request_iterations_for_warmup": "times each warmup record is replayed (0: once)",
    "monitoring_config_file": "text MonitoringConfig (Prometheus)",
    "enable_signature_method_name_check": "Classify/Regress require the signature's method_name",
    "enable_grpc_healthcheck_service": "serve grpc.health.v1 (always served here)",
    "grpc_max_threads": "gRPC calls handled at once",
    "rest_api_enable_cors_support": "answer CORS preflights and allow any origin on the REST API",
    "saved_model_tags": "comma-separated tags of the MetaGraph to load (default: serve)",
    "tensorflow_session_parallelism": "threads of each TF session's intra- and inter-op pools (0: auto)",
    "tensorflow_intra_op_parallelism": "threads for one op (0: auto; not with --tensorflow_session_parallelism)",
    "tensorflow_inter_op_parallelism": "ops run at once (0: auto; not with --tensorflow_session_parallelism)",
    "tensorflow_session_config_file": "text ConfigProto for every session (the parallelism flags apply on top)",
    "enable_serialization_as_tensor_content": "Predict outputs in tensor_content instead of the typed *_val field",
}


def add_server_flags(parser: argparse.ArgumentParser) -> None:
    """TF Serving's flags (`--name=value`, `--name value`; booleans also bare) plus dashed aliases."""
    kinds = typing.get_type_hints(ServerOptions)
    defaults = ServerOptions()
    for name, help_text in _FLAG_HELP.items():
        _add(parser, name, kinds[name], getattr(defaults, name), help_text)
    for name, default in IGNORED_FLAGS.items():
        kind = bool if isinstance(default, bool) else type(default)
        _add(parser, name, kind, None, argparse.SUPPRESS)
    parser.add_argument("--version", dest="show_version", action="store_true", help="print the version and exit")
    # The project's earlier spellings of the same flags.
    parser.add_argument("--model-config", dest="model_config_file", help=argparse.SUPPRESS)
    parser.add_argument("--poll-interval", dest="file_system_poll_wait_seconds", type=float, help=argparse.SUPPRESS)


def options_from_args(args: argparse.Namespace) -> ServerOptions:
    """Namespace -> ServerOptions; ignored flags that were given are recorded (and logged by the server)."""
    values = {k: getattr(args, k) for k in ServerOptions.__dataclass_fields__ if k != "ignored" and hasattr(args, k)}
    options = ServerOptions(**{k: v for k, v in values.items() if v is not None})
    for name in IGNORED_FLAGS:
        value = getattr(args, name, None)
        if value is not None:
            options.ignored[name] = str(value)
    if not options.model_config_file and not options.model_base_path:
        raise RetinaError("give --model_config_file, or --model_base_path (with --model_name)")
    if options.model_config_file and options.model_base_path:
        raise RetinaError("give --model_config_file or --model_base_path, not both")
    check_session_flags(options)
    return options


def check_session_flags(options: ServerOptions) -> None:
    """TF Serving's rule: session parallelism, or intra/inter separately, not all three."""
    if min(options.tensorflow_session_parallelism, options.tensorflow_intra_op_parallelism,
           options.tensorflow_inter_op_parallelism) > 0:
        raise RetinaError("Either configure server_options.tensorflow_session_parallelism or "
                          "(server_options.tensorflow_intra_op_parallelism, "
                          "server_options.tensorflow_inter_op_parallelism) separately. You cannot configure all.")
    if options.grpc_max_threads < 1:
        raise RetinaError(f"--grpc_max_threads must be at least 1, got {options.grpc_max_threads}")


def saved_model_tags(options: ServerOptions) -> list[str]:
    """`--saved_model_tags` split at commas; none given means `serve`, as TF Serving loads."""
    return [t.strip() for t in options.saved_model_tags.split(",") if t.strip()] or ["serve"]


def grpc_server_options(text: str) -> list[tuple[str, Any]]:
    """`--grpc_channel_arguments` (`key=value,key=value`) as gRPC options; numbers become ints, as TF
    Serving does. A malformed pair is an error naming it."""
    options: list[tuple[str, Any]] = []
    for pair in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise RetinaError(f"--grpc_channel_arguments: expected key=value, got {pair!r}")
        value = value.strip()
        try:
            options.append((key.strip(), int(value)))
        except ValueError:
            options.append((key.strip(), value))
    return options


# --------------------------------------------------------------------------- text protos
_MESSAGES: dict[str, Any] = {}


def _message_classes() -> dict[str, Any]:
    """BatchingParameters (session_bundle_config.proto) and MonitoringConfig (monitoring_config.proto),
    declared from their field numbers."""
    if _MESSAGES:
        return _MESSAGES
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2

    pool = descriptor_pool.DescriptorPool()
    wrappers = descriptor_pb2.FileDescriptorProto()
    wrappers_pb2.DESCRIPTOR.CopyToProto(wrappers)
    pool.Add(wrappers)
    f = descriptor_pb2.FileDescriptorProto(name="retina_serving_configs.proto", package="tensorflow.serving",
                                           syntax="proto3", dependency=["google/protobuf/wrappers.proto"])
    t = descriptor_pb2.FieldDescriptorProto
    batching = f.message_type.add(name="BatchingParameters")
    for name, number, wrapper in [("max_batch_size", 1, "Int64Value"), ("batch_timeout_micros", 2, "Int64Value"),
                                  ("max_enqueued_batches", 3, "Int64Value"), ("num_batch_threads", 4, "Int64Value"),
                                  ("thread_pool_name", 5, "StringValue"),
                                  ("enable_large_batch_splitting", 8, "BoolValue"),
                                  ("max_execution_batch_size", 9, "Int64Value")]:
        batching.field.add(name=name, number=number, type=t.TYPE_MESSAGE, label=t.LABEL_OPTIONAL,
                           type_name=f".google.protobuf.{wrapper}")
    batching.field.add(name="allowed_batch_sizes", number=6, type=t.TYPE_INT64, label=t.LABEL_REPEATED)
    batching.field.add(name="pad_variable_length_inputs", number=7, type=t.TYPE_BOOL, label=t.LABEL_OPTIONAL)
    prometheus = f.message_type.add(name="PrometheusConfig")
    prometheus.field.add(name="enable", number=1, type=t.TYPE_BOOL, label=t.LABEL_OPTIONAL)
    prometheus.field.add(name="path", number=2, type=t.TYPE_STRING, label=t.LABEL_OPTIONAL)
    monitoring = f.message_type.add(name="MonitoringConfig")
    monitoring.field.add(name="prometheus_config", number=1, type=t.TYPE_MESSAGE, label=t.LABEL_OPTIONAL,
                         type_name=".tensorflow.serving.PrometheusConfig")
    pool.Add(f)
    for name in ("BatchingParameters", "MonitoringConfig"):
        _MESSAGES[name] = message_factory.GetMessageClass(pool.FindMessageTypeByName(f"tensorflow.serving.{name}"))
    return _MESSAGES


def _parse_text(message_name: str, text: str, source: str) -> Any:
    from google.protobuf import text_format

    message = _message_classes()[message_name]()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        raise RetinaError(f"Error parsing text-format tensorflow.serving.{message_name} in {source}: {exc}") from exc
    return message


def read_session_config(options: ServerOptions) -> Any:
    """The ConfigProto every TF session gets: `--tensorflow_session_config_file` (text), then the parallelism
    flags as TF Serving applies them: intra/inter when either is set, else session parallelism (0: auto)."""
    from google.protobuf import text_format
    from tensorflow.core.protobuf import config_pb2

    from components.common import storage

    config = config_pb2.ConfigProto()
    path = options.tensorflow_session_config_file
    if path:
        try:
            text_format.Parse(storage.read_text(path), config)
        except text_format.ParseError as exc:
            raise RetinaError(f"Error parsing text-format tensorflow.ConfigProto in {path}: {exc}") from exc
    if options.tensorflow_intra_op_parallelism > 0 or options.tensorflow_inter_op_parallelism > 0:
        config.intra_op_parallelism_threads = options.tensorflow_intra_op_parallelism
        config.inter_op_parallelism_threads = options.tensorflow_inter_op_parallelism
    elif options.tensorflow_session_parallelism > 0:
        config.intra_op_parallelism_threads = options.tensorflow_session_parallelism
        config.inter_op_parallelism_threads = options.tensorflow_session_parallelism
    return config


@dataclass(frozen=True)
class BatchingParameters:
    """TF Serving's batching knobs; unset fields take its defaults (BasicBatchScheduler::Options)."""

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = CPUS
    allowed_batch_sizes: tuple[int, ...] = ()
    pad_variable_length_inputs: bool = False
    max_execution_batch_size: int = 0
    enable_large_batch_splitting: bool = False

    def __post_init__(self) -> None:
        if self.max_batch_size <= 0 or self.num_batch_threads <= 0 or self.max_enqueued_batches <= 0:
            raise RetinaError("batching parameters: max_batch_size, num_batch_threads and max_enqueued_batches "
                              "must be positive")
        sizes = list(self.allowed_batch_sizes)
        if sizes and (sizes != sorted(set(sizes)) or sizes[-1] != self.max_batch_size):
            # TF Serving's rule (batching_session.cc): increasing, and the last equals max_batch_size.
            raise RetinaError("batching parameters: allowed_batch_sizes must increase and end with "
                              f"max_batch_size ({self.max_batch_size}); got {sizes}")


def read_batching_parameters(path: str) -> BatchingParameters:
    from components.common import storage

    message = _parse_text("BatchingParameters", storage.read_text(path), path)
    values: dict[str, Any] = {}
    for name in ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads",
                 "max_execution_batch_size", "enable_large_batch_splitting"):
        if message.HasField(name):
            values[name] = getattr(message, name).value
    values["allowed_batch_sizes"] = tuple(int(v) for v in message.allowed_batch_sizes)
    values["pad_variable_length_inputs"] = bool(message.pad_variable_length_inputs)
    return BatchingParameters(**values)


def read_prometheus_path(path: str) -> str | None:
    """The Prometheus page path from a MonitoringConfig file, or None when it is not enabled."""
    from components.common import storage

    message = _parse_text("MonitoringConfig", storage.read_text(path), path)
    if not message.prometheus_config.enable:
        return None
    return message.prometheus_config.path or "/monitoring/prometheus/metrics"
