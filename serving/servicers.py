"""The gRPC services: PredictionService, ModelService (official `tensorflow_serving.apis` bases), health.

`Handlers` is the one entry for every API call, from gRPC and REST alike: it resolves the model spec,
holds the version for the call, runs `serving.inference`, and records TF Serving's request metrics.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from serving import inference
from serving import model_repository as repo
from serving.manager import ModelManager
from serving.metrics import Metrics
from serving.options import ServerOptions
from serving.servable import RUN_CLOCK
from serving.status import CODES, ServingStatus, grpc_message, invalid_argument

log = logging.getLogger(__name__)


class Handlers:
    """API calls on the manager's models; raises ServingStatus with TF Serving's codes."""

    def __init__(self, manager: ModelManager, options: ServerOptions, metrics: Metrics, batching: bool):
        self.manager = manager
        self.options = options
        self.metrics = metrics
        self.batching = batching

    def call(self, api: str, request: Any, entrypoint: str = "GRPC",
             cancelled: Callable[[], bool] | None = None, answer: Callable[[Any], Any] | None = None) -> Any:
        """One API call with its request metrics (`_metric_api`); `cancelled` (whether the caller has
        gone) is passed to the one call that may wait long, HandleReloadConfigRequest. `answer` turns the
        response into what is sent (REST's JSON) inside the metered call: TF Serving's HTTP server counts a
        request by the status of its whole handler, so a response that cannot be written is counted by
        that error, not as OK."""
        start = time.perf_counter()
        handler = getattr(self, "_" + api)
        label = _metric_api(api, entrypoint)
        try:
            response = handler(request, cancelled) if cancelled is not None else handler(request)
            if answer is not None:
                response = answer(response)
        except ServingStatus as exc:
            if label is not None:
                self.metrics.request(_model_name(api, request), label, entrypoint, exc.code_name, 0.0)
            raise
        except Exception:
            if label is not None:
                self.metrics.request(_model_name(api, request), label, entrypoint, "INTERNAL", 0.0)
            raise
        if label is not None:
            self.metrics.request(_model_name(api, request), label, entrypoint, "OK",
                                 (time.perf_counter() - start) * 1e6)
        return response

    def _on_version(self, spec: Any, fn: Callable[[Any], Any], runtime_api: str | None = None) -> Any:
        """Run `fn` on the resolved version, held for the call. Predict, Classify and Regress name their
        `runtime_api`: TF Serving records runtime_latency for those three only (predict_util.cc,
        classifier.cc, regressor.cc), with the session run's time, once it succeeded."""
        lv = self.manager.resolve(spec)
        with lv.use():
            RUN_CLOCK.reset()
            result = fn(lv)
        if runtime_api is not None:
            self.metrics.runtime(lv.name, runtime_api, RUN_CLOCK.micros)
        return result

    def _Predict(self, request: Any) -> Any:  # noqa: N802 - API names
        _require_model_spec(request)
        return self._on_version(request.model_spec, lambda lv: inference.predict(
            lv, request, self.options.max_request_tensor_bytes, self.batching,
            as_content=self.options.enable_serialization_as_tensor_content,
            method_check=self.options.enable_signature_method_name_check), "Predict")

    def _Classify(self, request: Any) -> Any:  # noqa: N802
        _require_model_spec(request)
        check = self.options.enable_signature_method_name_check
        return self._on_version(request.model_spec, lambda lv: inference.classify(lv, request, check), "Classify")

    def _Regress(self, request: Any) -> Any:  # noqa: N802
        _require_model_spec(request)
        check = self.options.enable_signature_method_name_check
        return self._on_version(request.model_spec, lambda lv: inference.regress(lv, request, check), "Regress")

    def _MultiInference(self, request: Any) -> Any:  # noqa: N802
        """multi_inference_helper.cc: the first task's model spec, or an empty one (whose missing name is the
        answer) when there is none."""
        from tensorflow_serving.apis import model_pb2

        first = request.tasks[0] if request.tasks else None
        spec = first.model_spec if first is not None and first.HasField("model_spec") else model_pb2.ModelSpec()
        check = self.options.enable_signature_method_name_check
        return self._on_version(spec, lambda lv: inference.multi_inference(lv, request, check))

    def _GetModelMetadata(self, request: Any) -> Any:  # noqa: N802
        _require_model_spec(request)
        inference.check_metadata_request(request)
        return self._on_version(request.model_spec, lambda lv: inference.metadata(lv, request))

    def _GetModelStatus(self, request: Any) -> Any:  # noqa: N802
        from tensorflow_serving.apis import get_model_status_pb2

        _require_model_spec(request)
        response = get_model_status_pb2.GetModelStatusResponse()
        # newest first: ServableStateMonitor::VersionMap is ordered by std::greater<Version>
        for version, state in sorted(self.manager.status(request.model_spec), key=lambda vs: -vs[0]):
            status = response.model_version_status.add()
            status.version = version
            status.state = get_model_status_pb2.ModelVersionStatus.State.Value(state.state)
            status.status.error_code = CODES.get(state.error_code, 2)
            status.status.error_message = state.error_message
        return response

    def _HandleReloadConfigRequest(self, request: Any, cancelled: Callable[[], bool] = lambda: False) -> Any:  # noqa: N802
        """TF Serving's `ModelServiceImpl::HandleReloadConfigRequest` + `ServerCore::ReloadConfig`: only a
        model_config_list, validated first (INVALID_ARGUMENT, nothing changes); then applied, waiting for
        the models it adds (`ModelManager.apply_config`). A refused config or a model that did not become
        available is the call's gRPC status, as in TF Serving (whose response then carries no message)."""
        from google.protobuf import text_format
        from tensorflow_serving.apis import model_management_pb2

        if request.config.WhichOneof("config") != "model_config_list":
            raise invalid_argument("ServerModelConfig type not supported by HandleReloadConfigRequest. Only "
                                   "ModelConfigList is currently supported")
        try:
            repo.check_model_config_list(request.config.model_config_list)
            entries = repo.parse_models_config(text_format.MessageToString(request.config), "ReloadConfigRequest")
        except repo.ModelConfigError as exc:
            raise invalid_argument(str(exc)) from exc
        before = {name: self.metrics.counter_total(name) for name in request.metric_names}
        self.manager.apply_config(entries, wait=True, cancelled=cancelled)
        response = model_management_pb2.ReloadConfigResponse()
        response.status.error_code = 0
        for name, value in before.items():  # how much each named counter grew during the reload
            response.metric.add(name=name, int64_value_increase=self.metrics.counter_total(name) - value)
        return response


def _require_model_spec(request: Any) -> None:
    """predict_impl.cc, classification_service.cc, regression_service.cc, get_model_metadata_impl.cc,
    get_model_status_impl.cc: a request without a model spec is refused before anything is looked up."""
    if not request.HasField("model_spec"):
        raise invalid_argument("Missing ModelSpec")


_GRPC_METERED = ("Predict", "Classify", "Regress")


def _metric_api(api: str, entrypoint: str) -> str | None:
    """The request_count / request_latency `API` label TF Serving gives a call, None for an unmetered one.

    gRPC (prediction_service_impl.cc) meters Predict, Classify and Regress only, labelled so; REST
    (http_server.cc) meters every request, labelled with the URL's verb (`predict`, `classify`,
    `regress`) and "" for the GET routes (status, metadata)."""
    if entrypoint == "REST":
        return api.lower() if api in _GRPC_METERED else ""
    return api if api in _GRPC_METERED else None


def _model_name(api: str, request: Any) -> str:
    spec = getattr(request, "model_spec", None)
    if spec is not None:
        return spec.name
    return request.tasks[0].model_spec.name if api == "MultiInference" and request.tasks else ""


def _guarded(handlers: Handlers, api: str) -> Callable[[Any, Any, Any], Any]:
    def method(self: Any, request: Any, context: Any) -> Any:
        try:
            if api == "HandleReloadConfigRequest":
                return handlers.call(api, request, "GRPC", cancelled=lambda: not context.is_active())
            return handlers.call(api, request, "GRPC")
        except ServingStatus as exc:
            import grpc

            context.abort(getattr(grpc.StatusCode, exc.code_name), grpc_message(exc.message))
        except Exception as exc:  # noqa: BLE001 - never a raw traceback to the client
            import grpc

            log.exception("%s failed", api)
            context.abort(grpc.StatusCode.INTERNAL, grpc_message(f"{type(exc).__name__}: {exc}"))

    method.__name__ = api
    return method


def add_services(server: Any, handlers: Handlers) -> Health:
    """Register PredictionService, ModelService and grpc.health.v1.Health on `server`; returns the health
    service (SERVING once models are loaded, NOT_SERVING while stopping)."""
    from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

    prediction = type("PredictionService", (prediction_service_pb2_grpc.PredictionServiceServicer,), {
        api: _guarded(handlers, api)
        for api in ("Predict", "Classify", "Regress", "MultiInference", "GetModelMetadata")})
    models = type("ModelService", (model_service_pb2_grpc.ModelServiceServicer,), {
        api: _guarded(handlers, api) for api in ("GetModelStatus", "HandleReloadConfigRequest")})
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(prediction(), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(models(), server)
    health = Health()
    server.add_generic_rpc_handlers((health.handler(),))
    return health


_HEALTH: dict[str, Any] = {}


def health_messages() -> dict[str, Any]:
    """grpc.health.v1 HealthCheckRequest/Response, declared from health.proto's field numbers (the
    grpcio-health-checking package is not a dependency; the wire format is two tiny messages)."""
    if _HEALTH:
        return _HEALTH
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    f = descriptor_pb2.FileDescriptorProto(name="retina_grpc_health.proto", package="grpc.health.v1",
                                           syntax="proto3")
    t = descriptor_pb2.FieldDescriptorProto
    request = f.message_type.add(name="HealthCheckRequest")
    request.field.add(name="service", number=1, type=t.TYPE_STRING, label=t.LABEL_OPTIONAL)
    response = f.message_type.add(name="HealthCheckResponse")
    enum = response.enum_type.add(name="ServingStatus")
    for name, number in (("UNKNOWN", 0), ("SERVING", 1), ("NOT_SERVING", 2), ("SERVICE_UNKNOWN", 3)):
        enum.value.add(name=name, number=number)
    response.field.add(name="status", number=1, type=t.TYPE_ENUM, label=t.LABEL_OPTIONAL,
                       type_name=".grpc.health.v1.HealthCheckResponse.ServingStatus")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    for name in ("HealthCheckRequest", "HealthCheckResponse"):
        _HEALTH[name] = message_factory.GetMessageClass(pool.FindMessageTypeByName(f"grpc.health.v1.{name}"))
    return _HEALTH


class Health:
    """`grpc.health.v1.Health/Check` for the whole server ("") and each service name."""

    SERVICES = ("", "tensorflow.serving.PredictionService", "tensorflow.serving.ModelService")

    def __init__(self) -> None:
        self.serving = True

    def handler(self) -> Any:
        import grpc

        messages = health_messages()
        return grpc.method_handlers_generic_handler("grpc.health.v1.Health", {
            "Check": grpc.unary_unary_rpc_method_handler(
                self._check, request_deserializer=messages["HealthCheckRequest"].FromString,
                response_serializer=messages["HealthCheckResponse"].SerializeToString)})

    def _check(self, request: Any, context: Any) -> Any:
        import grpc

        if request.service not in self.SERVICES:
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service}")
        response = health_messages()["HealthCheckResponse"]()
        response.status = 1 if self.serving else 2
        return response
