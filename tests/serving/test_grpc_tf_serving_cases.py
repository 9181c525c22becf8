"""TF Serving's own error cases, case by case, over gRPC: code and message as `tensorflow_model_server` answers.

Each row of `CASES` is one case from TF Serving's C++ tests (predict_util_test.cc, classifier_test.cc,
regressor_test.cc, multi_inference_test.cc, get_model_metadata_impl_test.cc, get_model_status_impl_test.cc,
server_core_test.cc) or from the code those tests cover, with the status TF Serving's source returns for it:
the code, and a substring of the message taken from the source's own words. A real `retina serve` answers
them through the official `tensorflow_serving.apis` stubs; nothing is mocked.

Models: TF Serving's half_plus_two (TF1 and TF2) from tests/serving/tfserving_testdata, and `examples`, a TF1
SavedModel built here whose signatures give the output tensors TF Serving's fake sessions give in those
tests (classes only, scores only, int64 classes, double scores, wrong ranks and batch sizes, ...).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from serving import protos

pytestmark = pytest.mark.slow
TESTDATA = Path(__file__).parent / "tfserving_testdata"
ROOT = Path(__file__).resolve().parents[2]
HALF_PLUS_TWO = TESTDATA / "saved_model_half_plus_two_cpu"
CLASSIFY = "tensorflow/serving/classify"
REGRESS = "tensorflow/serving/regress"
PREDICT = "tensorflow/serving/predict"


# --------------------------------------------------------------------------- the `examples` model
def build_examples_model(export_dir: str) -> None:
    """A TF1 SavedModel over one serialized-Example input (feature `x`, one float per example): one
    signature per output TF Serving's classifier/regressor tests feed through a fake session."""
    import tensorflow as tf

    v1 = tf.compat.v1
    with tf.Graph().as_default():
        serialized = v1.placeholder(tf.string, [None], name="tf_example")
        other = v1.placeholder(tf.string, [None], name="other_example")
        x = v1.io.parse_example(serialized, {"x": tf.io.FixedLenFeature([1], tf.float32)})["x"]  # [n, 1]
        n = tf.shape(x)[0]
        scores = tf.concat([x, x + 1.0], axis=1)  # [n, 2]
        classes = tf.tile(tf.constant([["a", "b"]]), tf.stack([n, 1]))  # string [n, 2]
        int_classes = tf.tile(tf.constant([[1, 2]], tf.int64), tf.stack([n, 1]))
        three_scores = tf.concat([scores, x], axis=1)  # [n, 3]
        values = tf.reshape(x * 0.5 + 2.0, [-1])  # [n]
        info = v1.saved_model.utils.build_tensor_info

        def signature(method: str, outputs: dict[str, Any], inputs: dict[str, Any] | None = None) -> Any:
            return v1.saved_model.signature_def_utils.build_signature_def(
                {k: info(t) for k, t in (inputs or {"inputs": serialized}).items()},
                {k: info(t) for k, t in outputs.items()},
                method,
            )

        signatures = {
            "serving_default": signature(REGRESS, {"outputs": values}),
            "classify_both": signature(CLASSIFY, {"classes": classes, "scores": scores}),
            "classify_classes_only": signature(CLASSIFY, {"classes": classes}),
            "classify_scores_only": signature(CLASSIFY, {"scores": scores}),
            "classify_int_classes": signature(CLASSIFY, {"classes": int_classes}),
            "classify_double_scores": signature(CLASSIFY, {"scores": tf.cast(scores, tf.float64)}),
            "classify_rank1_scores": signature(CLASSIFY, {"scores": values}),
            "classify_bad_batch": signature(CLASSIFY, {"scores": tf.concat([scores, scores[:1]], 0)}),
            "classify_mismatched": signature(CLASSIFY, {"classes": classes, "scores": three_scores}),
            "classify_three_outputs": signature(CLASSIFY, {"classes": classes, "scores": scores, "x": x}),
            "classify_two_inputs": signature(
                CLASSIFY, {"scores": scores}, {"inputs": serialized, "other": other}
            ),
            "regress_two_columns": signature(REGRESS, {"outputs": scores}),
            "regress_double": signature(REGRESS, {"outputs": tf.cast(values, tf.float64)}),
            "regress_bad_batch": signature(REGRESS, {"outputs": tf.concat([values, values[:1]], 0)}),
            "regress_two_outputs": signature(REGRESS, {"outputs": values, "other": x}),
            "unsupported_method": signature("not/supported/method", {"scores": scores}),
        }
        with v1.Session() as session:
            builder = v1.saved_model.Builder(export_dir)
            builder.add_meta_graph_and_variables(session, ["serve"], signature_def_map=signatures)
            builder.save()


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> Path:
    """half_plus_two with two versions (1 and 2) and the `examples` model, version 1."""
    root = tmp_path_factory.mktemp("cases")
    for version in (1, 2):
        shutil.copytree(HALF_PLUS_TWO / "00000123", root / "two_versions" / str(version))
    done = subprocess.run(
        [sys.executable, __file__, str(root / "examples" / "1")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return root


def _start(tmp: Path, repository: Path, *flags: str):
    from components.common.processes import ManagedProcess, free_port

    config = tmp / "models.config"
    models = {
        "default": HALF_PLUS_TWO,
        "tf2": TESTDATA / "saved_model_half_plus_two_tf2_cpu",
        "examples": repository / "examples",
        "two_versions": repository / "two_versions",
    }
    config.write_text(
        "model_config_list: {\n"
        + ",\n".join(
            f'  config: {{ name: "{name}", base_path: "{path}", model_platform: "tensorflow"'
            + (" model_version_policy: { all: {} }" if name == "two_versions" else "")
            + " }"
            for name, path in models.items()
        )
        + "\n}\n"
    )
    port = free_port()
    code = "import sys; from components.cli import main; sys.exit(main(sys.argv[1:]))"
    server = ManagedProcess(
        "retina serve",
        [sys.executable, "-c", code, "serve", f"--port={port}", f"--model_config_file={config}", *flags],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        log_file=tmp / "server.log",
        cwd=ROOT,
    )
    return server, port


def _ready(address: str) -> bool:
    """Every model of the config answers GetModelStatus with a version AVAILABLE."""
    from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

    stub = model_service_pb2_grpc.ModelServiceStub(grpc.insecure_channel(address))
    for name in ("default", "tf2", "examples", "two_versions"):
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = name
        try:
            states = [v.state for v in stub.GetModelStatus(request, 2).model_version_status]
        except grpc.RpcError:
            return False
        if set(states) != {get_model_status_pb2.ModelVersionStatus.AVAILABLE} or (
            name == "two_versions" and len(states) != 2
        ):
            return False
    return True


def _serve(tmp_path_factory, repository: Path, *flags: str) -> Any:
    protos.load()
    server, port = _start(tmp_path_factory.mktemp("server"), repository, *flags)
    with server:
        server.wait_until(lambda: _ready(f"localhost:{port}"), timeout_s=240)
        yield {"address": f"localhost:{port}"}


@pytest.fixture(scope="module")
def server(tmp_path_factory, repository) -> Any:
    """`retina serve` with TF Serving's default flags."""
    yield from _serve(tmp_path_factory, repository)


@pytest.fixture(scope="module")
def checked_server(tmp_path_factory, repository) -> Any:
    """`retina serve --enable_signature_method_name_check`."""
    yield from _serve(tmp_path_factory, repository, "--enable_signature_method_name_check")


def _stubs(address: str) -> tuple[Any, Any]:
    from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

    channel = grpc.insecure_channel(address)
    return prediction_service_pb2_grpc.PredictionServiceStub(
        channel
    ), model_service_pb2_grpc.ModelServiceStub(channel)


# --------------------------------------------------------------------------- requests
def _spec(
    spec: Any, model: str | None, signature: str = "", version: int | None = None, label: str = ""
) -> None:
    if model is None:
        return
    spec.name = model
    if signature:
        spec.signature_name = signature
    if version is not None:
        spec.version.value = version
    if label:
        spec.version_label = label


def predict(
    model: str | None = "default",
    signature: str = "",
    inputs: dict | None = None,
    output_filter: tuple[str, ...] = (),
    **spec: Any,
) -> tuple[str, Any]:
    """A PredictRequest; `inputs` maps alias -> (dtype, shape or None, values)."""
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    _spec(request.model_spec, model, signature, **spec)
    for alias, (dtype, shape, values) in (
        inputs if inputs is not None else {"x": ("float", (1, 1), [2.0])}
    ).items():
        tensor = request.inputs[alias]
        tensor.dtype = {"float": 1, "string": 7, "bool": 10, "invalid": 0}[dtype]
        getattr(
            tensor,
            {"float": "float_val", "string": "string_val", "bool": "bool_val", "invalid": "float_val"}[dtype],
        ).extend(values)
        for size in shape or ():
            tensor.tensor_shape.dim.add().size = size
    request.output_filter.extend(output_filter)
    return "Predict", request


def _unknown_rank(build: tuple[str, Any]) -> tuple[str, Any]:
    """The request with every input's shape also marked unknown_rank (TensorShape(proto) ignores the mark)."""
    for tensor in build[1].inputs.values():
        tensor.tensor_shape.unknown_rank = True
    return build


def _string_content(build: tuple[str, Any]) -> tuple[str, Any]:
    """The request with its string input's bytes in tensor_content (TensorFlow's own string encoding)."""
    build[1].inputs["inputs"].tensor_content = b"\x01a"
    return build


def _example(x: float) -> bytes:
    from tensorflow.core.example import example_pb2

    example = example_pb2.Example()
    example.features.feature["x"].float_list.value.append(x)
    return example.SerializeToString()


def _input(target: Any, kind: str, xs: tuple[float, ...], context: float | None = None) -> None:
    if kind == "example_list":
        for x in xs:
            target.example_list.examples.add().features.feature["x"].float_list.value.append(x)
    elif kind == "example_list_with_context":
        with_context = target.example_list_with_context
        if context is not None:
            with_context.context.features.feature["x"].float_list.value.append(context)
        for x in xs:
            example = with_context.examples.add()
            if x is not None:
                example.features.feature["x"].float_list.value.append(x)
        if not xs:
            with_context.SetInParent()


def classify(
    model: str | None = "default",
    signature: str = "classify_x_to_y",
    kind: str = "example_list",
    xs: tuple = (2.0,),
    context: float | None = None,
    **spec: Any,
) -> tuple[str, Any]:
    from tensorflow_serving.apis import classification_pb2

    request = classification_pb2.ClassificationRequest()
    _spec(request.model_spec, model, signature, **spec)
    if kind:
        _input(request.input, kind, xs, context)
    return "Classify", request


def regress(
    model: str | None = "default",
    signature: str = "regress_x_to_y",
    kind: str = "example_list",
    xs: tuple = (2.0,),
    context: float | None = None,
    **spec: Any,
) -> tuple[str, Any]:
    from tensorflow_serving.apis import regression_pb2

    request = regression_pb2.RegressionRequest()
    _spec(request.model_spec, model, signature, **spec)
    if kind:
        _input(request.input, kind, xs, context)
    return "Regress", request


def multi(*tasks: tuple[str | None, str, str], xs: tuple = (2.0,)) -> tuple[str, Any]:
    """tasks: (model, signature, method) each."""
    from tensorflow_serving.apis import inference_pb2

    request = inference_pb2.MultiInferenceRequest()
    for model, signature, method in tasks:
        task = request.tasks.add()
        _spec(task.model_spec, model, signature)
        task.method_name = method
    if xs:
        _input(request.input, "example_list", xs)
    return "MultiInference", request


def metadata(model: str | None = "default", fields: tuple[str, ...] = ("signature_def",), **spec: Any):
    from tensorflow_serving.apis import get_model_metadata_pb2

    request = get_model_metadata_pb2.GetModelMetadataRequest()
    _spec(request.model_spec, model, **spec)
    request.metadata_field.extend(fields)
    return "GetModelMetadata", request


def status(model: str | None = "default", **spec: Any):
    from tensorflow_serving.apis import get_model_status_pb2

    request = get_model_status_pb2.GetModelStatusRequest()
    if model is not None:
        request.model_spec.name = model
        _spec(request.model_spec, model, **spec)
    return "GetModelStatus", request


def _call(server: dict, build: Callable[[], tuple[str, Any]]) -> tuple[str, str, Any]:
    """(code name, message, response or None)."""
    api, request = build()
    predict_stub, model_stub = _stubs(server["address"])
    stub = model_stub if api == "GetModelStatus" else predict_stub
    try:
        return "OK", "", getattr(stub, api)(request, 30)
    except grpc.RpcError as error:
        return error.code().name, error.details() or "", None


SIG_X = 'inputs {\n  key: "x"'  # the start of serving_default's DebugString, as TF Serving prints it
F_PREDICT = (
    "Expected prediction signature method_name to be one of {tensorflow/serving/predict, "
    "tensorflow/serving/classify, tensorflow/serving/regress}. Was: not/supported/method"
)

# (case id, request builder, expected code, expected message substring); the source named in each id.
CASES: list[tuple[str, Callable[[], tuple[str, Any]], str, str]] = [
    # predict_impl.cc / server_core.cc: the model spec and its resolution
    ("predict_impl:missing-model-spec", lambda: predict(None), "INVALID_ARGUMENT", "Missing ModelSpec"),
    (
        "server_core:empty-model-name",
        lambda: predict(""),
        "INVALID_ARGUMENT",
        "ModelSpec has no name specified.",
    ),
    (
        "basic_manager:unknown-model",
        lambda: predict("nope"),
        "NOT_FOUND",
        "Servable not found for request: Latest(nope)",
    ),
    (
        "basic_manager:unknown-version",
        lambda: predict(version=7),
        "NOT_FOUND",
        "Servable not found for request: Specific(default, 7)",
    ),
    (
        "server_core:unknown-label",
        lambda: predict(label="nope"),
        "INVALID_ARGUMENT",
        "Unrecognized servable version label: nope",
    ),
    # predict_util.cc / predict_util_test.cc
    (
        "predict_util:signature-not-found",
        lambda: predict(signature="nope"),
        "FAILED_PRECONDITION",
        'Serving signature key "nope" not found.',
    ),
    (
        "predict_util_test:EmptyInputList",
        lambda: predict(inputs={}),
        "INVALID_ARGUMENT",
        "input size does not match signature: 0!=1 len({}) != len({x}). Sent extra: {}. Missing but required: {x}.",
    ),
    (
        "predict_util_test:InputTensorsDontMatchModelSpecInputs",
        lambda: predict(
            inputs={"unknown_key1": ("string", (1,), [b"any_value"]), "unknown_key2": ("float", (1,), [1.0])}
        ),
        "INVALID_ARGUMENT",
        "Sent extra: {unknown_key1,unknown_key2}. Missing but required: {x}.",
    ),
    (
        "predict_util:extra-input",
        lambda: predict(inputs={"x": ("float", (1, 1), [2.0]), "extra": ("float", (1, 1), [2.0])}),
        "INVALID_ARGUMENT",
        "input size does not match signature: 2!=1 len({extra,x}) != len({x}). "
        "Sent extra: {extra}. Missing but required: {}.",
    ),
    (
        "saved_model/util.cc:GetInputValues-wrong-alias",
        lambda: predict(inputs={"extra": ("float", (1, 1), [2.0])}),
        "INVALID_ARGUMENT",
        "Signature input alias: x(feed name: x:0) not found in request and no default value "
        "provided. Inputs expected to be in the request {extra}, or default input alias set: ",
    ),
    (
        "saved_model/util.cc:GetInputValues-invalid-name-beside-default",
        lambda: predict("tf2", inputs={"z": ("float", (1,), [2.0])}),
        "INVALID_ARGUMENT",
        "Inputs contains invalid name. Used request inputs: , request input: z",
    ),
    (
        "predict_util_test:PredictionInvalidTensor",
        lambda: predict(inputs={"x": ("bool", None, [True])}),
        "INVALID_ARGUMENT",
        "Expects arg[0] to be float but bool is provided",
    ),
    (
        "predict_util_test:InputTensorsHaveWrongType",
        lambda: predict(inputs={"x": ("string", (1,), [b"any_value"])}, output_filter=("y",)),
        "INVALID_ARGUMENT",
        "to be float but string is provided",
    ),
    (
        "predict_util_test:OutputFilters-unknown",
        lambda: predict(output_filter=("output_filter",)),
        "INVALID_ARGUMENT",
        "output tensor alias not found in signature: output_filter Outputs expected to be in the set {y}.",
    ),
    (
        "predict_util_test:OutputFilters-duplicate",
        lambda: predict(output_filter=("y", "y")),
        "INVALID_ARGUMENT",
        "duplicate output tensor alias: y",
    ),
    (
        "predict_util:output-filter-before-session-dtype",
        lambda: predict(inputs={"x": ("string", (1,), [b"2"])}, output_filter=("nope",)),
        "INVALID_ARGUMENT",
        "output tensor alias not found in signature: nope",
    ),
    (
        "predict_util_test:PredictionSuccess-scalar",
        lambda: predict(inputs={"x": ("float", None, [2.0])}),
        "OK",
        "",
    ),
    ("predict_util_test:EmptyInputList-tf2-default", lambda: predict("tf2", inputs={}), "OK", ""),
    ("tensor.cc:FromProto-no-values-zeros", lambda: predict(inputs={"x": ("float", (3, 1), [])}), "OK", ""),
    (
        "predict_util_test:PredictionWithNamedClassificationSignature-tf2",
        lambda: predict("tf2", "classify_x2_to_y3", inputs={"inputs": ("float", (1,), [2.0])}),
        "OK",
        "",
    ),
    # tensor.cc Tensor::FromProto (through GetInputValues' 'tensor parsing error: <alias>')
    (
        "tensor.cc:FromProto-more-values-cut",
        lambda: predict(inputs={"x": ("float", (1, 1), [2.0, 5.0])}),
        "OK",
        "",
    ),
    (
        "tensor.cc:FromProto-strings-filled",
        lambda: predict("tf2", "regress_x_to_y", inputs={"inputs": ("string", (2,), [_example(4.0)])}),
        "OK",
        "",
    ),
    (
        "tensor.cc:FromProto-invalid-dtype",
        lambda: predict(inputs={"x": ("invalid", (1, 1), [2.0])}),
        "INVALID_ARGUMENT",
        "tensor parsing error: x",
    ),
    ("tensor.cc:FromProto-unknown-rank-ignored", lambda: _unknown_rank(predict()), "OK", ""),
    (
        "grpc_status_util:message-truncated-at-1024",
        lambda: predict(inputs={f"unknown_input_alias_{i:04d}": ("float", (1,), [1.0]) for i in range(80)}),
        "INVALID_ARGUMENT",
        "...TRUNCATED",
    ),
    # classifier.cc / classifier_test.cc
    (
        "classification_service:missing-model-spec",
        lambda: classify(None),
        "INVALID_ARGUMENT",
        "Missing ModelSpec",
    ),
    (
        "classifier_test:InvalidNamedSignature",
        lambda: classify(signature="nope"),
        "INVALID_ARGUMENT",
        "No signature was found with the name: nope",
    ),
    (
        "classifier_test:MissingClassificationSignature",
        lambda: classify(signature="serving_default"),
        "INVALID_ARGUMENT",
        "No classification inputs found in SignatureDef: " + SIG_X,
    ),
    (
        "classifier:no-classes-or-scores",
        lambda: classify(signature="regress_x_to_y"),
        "INVALID_ARGUMENT",
        'Expected classification signature outputs to contain at least one of "classes" or "scores". Signature was: ',
    ),
    ("classifier_test:EmptyInput", lambda: classify(kind=""), "INVALID_ARGUMENT", "Input is empty."),
    ("classifier_test:EmptyExampleList", lambda: classify(xs=()), "INVALID_ARGUMENT", "Input is empty."),
    (
        "classifier_test:EmptyExampleListWithContext",
        lambda: classify(kind="example_list_with_context", xs=(), context=2.0),
        "INVALID_ARGUMENT",
        "Input is empty.",
    ),
    (
        "classifier_test:MalformedScores",
        lambda: classify("examples", "classify_rank1_scores"),
        "INVALID_ARGUMENT",
        "Expected Tensor shape: [batch_size num_classes] but got [1]",
    ),
    (
        "classifier_test:ClassesIncorrectTensorType",
        lambda: classify("examples", "classify_int_classes"),
        "INVALID_ARGUMENT",
        "Expected classes Tensor of DT_STRING. Got: DT_INT64",
    ),
    (
        "classifier_test:ScoresIncorrectTensorType",
        lambda: classify("examples", "classify_double_scores"),
        "INVALID_ARGUMENT",
        "Expected scores Tensor of DT_FLOAT. Got: DT_DOUBLE",
    ),
    (
        "classifier_test:ScoresIncorrectTensorBatchSize",
        lambda: classify("examples", "classify_bad_batch"),
        "INVALID_ARGUMENT",
        "Expected scores output batch size of 1. Got: 2",
    ),
    (
        "classifier_test:MismatchedNumberOfTensorClasses",
        lambda: classify("examples", "classify_mismatched"),
        "INVALID_ARGUMENT",
        "Tensors class and score should match in dim_size(1). Got 2 vs. 3",
    ),
    (
        "classifier:three-outputs",
        lambda: classify("examples", "classify_three_outputs"),
        "INVALID_ARGUMENT",
        "Expected one or two output Tensors, found 3",
    ),
    (
        "classifier:two-inputs",
        lambda: classify("examples", "classify_two_inputs"),
        "INVALID_ARGUMENT",
        "Expected one input Tensor.",
    ),
    (
        "util.cc:examples-fed-to-a-float-input",
        lambda: classify("tf2", "classify_x2_to_y3"),
        "INVALID_ARGUMENT",
        "Expects arg[0] to be float but string is provided",
    ),
    (
        "tensor.cc:string-tensor_content-refused",
        lambda: _string_content(predict("tf2", "regress_x_to_y", inputs={"inputs": ("string", (1,), [])})),
        "INVALID_ARGUMENT",
        "tensor parsing error: inputs",
    ),
    (
        "classifier_test:ClassesOnly",
        lambda: classify("examples", "classify_classes_only", xs=(2.0, 3.0)),
        "OK",
        "",
    ),
    ("classifier_test:ScoresOnly", lambda: classify("examples", "classify_scores_only"), "OK", ""),
    (
        "classifier_test:ExampleList-both",
        lambda: classify("examples", "classify_both", xs=(2.0, 3.0)),
        "OK",
        "",
    ),
    (
        "classifier_test:ExampleListWithContext",
        lambda: classify(kind="example_list_with_context", xs=(None, None), context=2.0),
        "OK",
        "",
    ),
    (
        "classifier_test:ExampleListWithContext_DuplicateFeatures",
        lambda: classify(kind="example_list_with_context", xs=(4.0,), context=2.0),
        "OK",
        "",
    ),
    # regressor.cc / regressor_test.cc
    ("regression_service:missing-model-spec", lambda: regress(None), "INVALID_ARGUMENT", "Missing ModelSpec"),
    (
        "regressor_test:InvalidNamedSignature",
        lambda: regress(signature="nope"),
        "INVALID_ARGUMENT",
        "No signature was found with the name: nope",
    ),
    (
        "regressor_test:MissingRegressionSignature",
        lambda: regress(signature="serving_default"),
        "INVALID_ARGUMENT",
        "No regression inputs found in SignatureDef: " + SIG_X,
    ),
    (
        "regressor:no-outputs-output",
        lambda: regress(signature="classify_x_to_y"),
        "INVALID_ARGUMENT",
        "No regression outputs found in SignatureDef: ",
    ),
    ("regressor_test:EmptyInput", lambda: regress(kind=""), "INVALID_ARGUMENT", "Input is empty."),
    ("regressor_test:EmptyExampleList", lambda: regress(xs=()), "INVALID_ARGUMENT", "Input is empty."),
    (
        "regressor_test:EmptyExampleListWithContext",
        lambda: regress(kind="example_list_with_context", xs=(), context=2.0),
        "INVALID_ARGUMENT",
        "Input is empty.",
    ),
    (
        "regressor_test:MalformedOutputs",
        lambda: regress("examples", "regress_two_columns"),
        "INVALID_ARGUMENT",
        "Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got [1,2]",
    ),
    (
        "regressor_test:UnexpectedOutputTensorSize",
        lambda: regress("examples", "regress_bad_batch"),
        "INVALID_ARGUMENT",
        "Input batch size did not match output batch size: 1 vs. 2",
    ),
    (
        "regressor_test:UnexpectedOutputTensorType",
        lambda: regress("examples", "regress_double"),
        "INVALID_ARGUMENT",
        "Expected output Tensor of DT_FLOAT.  Got: DT_DOUBLE",
    ),
    (
        "regressor:two-outputs",
        lambda: regress("examples", "regress_two_outputs"),
        "INVALID_ARGUMENT",
        "Expected one output Tensor.",
    ),
    (
        "regressor_test:BasicExampleListWithContext",
        lambda: regress(kind="example_list_with_context", xs=(None, 4.0), context=2.0),
        "OK",
        "",
    ),
    ("regressor:default-signature", lambda: regress("examples", ""), "OK", ""),
    # multi_inference.cc / multi_inference_test.cc
    (
        "multi_inference_helper:no-tasks",
        lambda: multi(),
        "INVALID_ARGUMENT",
        "ModelSpec has no name specified.",
    ),
    (
        "multi_inference_test:MissingInputTest",
        lambda: multi(("default", "regress_x_to_y", REGRESS), xs=()),
        "INVALID_ARGUMENT",
        "Input is empty",
    ),
    (
        "multi_inference_test:UndefinedSignatureTest",
        lambda: multi(("default", "ThisSignatureDoesNotExist", REGRESS)),
        "INVALID_ARGUMENT",
        "Requested signature not found in model graph: ThisSignatureDoesNotExist",
    ),
    (
        "multi_inference_test:InconsistentModelSpecsInRequestTest",
        lambda: multi(
            ("default", "regress_x_to_y", REGRESS), ("ModelDoesNotExist", "regress_x_to_y", REGRESS)
        ),
        "INVALID_ARGUMENT",
        "All ModelSpecs in a MultiInferenceRequest must access the same model name.",
    ),
    (
        "multi_inference_test:EvaluateDuplicateSignaturesTest",
        lambda: multi(("default", "regress_x_to_y", REGRESS), ("default", "regress_x_to_y", REGRESS)),
        "INVALID_ARGUMENT",
        "Duplicate evaluation of signature: regress_x_to_y",
    ),
    (
        "multi_inference_test:UsupportedSignatureTypeTest",
        lambda: multi(("default", "serving_default", PREDICT)),
        "UNIMPLEMENTED",
        "Unsupported signature method_name: tensorflow/serving/predict",
    ),
    (
        "multi_inference:empty-model-name",
        lambda: multi(("default", "regress_x_to_y", REGRESS), ("", "regress_x_to_y2", REGRESS)),
        "INVALID_ARGUMENT",
        "Found ModelSpec with an empty model name.",
    ),
    (
        "multi_inference:unknown-model",
        lambda: multi(("nope", "regress_x_to_y", REGRESS)),
        "NOT_FOUND",
        "Servable not found for request: Latest(nope)",
    ),
    (
        "multi_inference:classify-checks-before-input",
        lambda: multi(("default", "regress_x_to_y", CLASSIFY), xs=()),
        "INVALID_ARGUMENT",
        'Expected classification signature outputs to contain at least one of "classes" or "scores"',
    ),
    (
        "multi_inference:regress-one-output",
        lambda: multi(("examples", "regress_two_outputs", REGRESS)),
        "INVALID_ARGUMENT",
        "Expected one output Tensor.",
    ),
    (
        "multi_inference_test:RegressAndClassifySignaturesTest",
        lambda: multi(("default", "regress_x_to_y", REGRESS), ("default", "classify_x_to_y", CLASSIFY)),
        "OK",
        "",
    ),
    ("multi_inference:default-signature", lambda: multi(("examples", "", REGRESS)), "OK", ""),
    # get_model_metadata_impl.cc
    (
        "get_model_metadata_impl:missing-model-spec",
        lambda: metadata(None),
        "INVALID_ARGUMENT",
        "Missing ModelSpec",
    ),
    (
        "get_model_metadata_impl:no-metadata-field",
        lambda: metadata(fields=()),
        "INVALID_ARGUMENT",
        "GetModelMetadataRequest must specify at least one metadata_field",
    ),
    (
        "get_model_metadata_impl:unknown-field",
        lambda: metadata(fields=("signature_def", "foo")),
        "INVALID_ARGUMENT",
        "Metadata field foo is not supported",
    ),
    (
        "get_model_metadata_impl:fields-checked-before-model",
        lambda: metadata("nope", fields=()),
        "INVALID_ARGUMENT",
        "GetModelMetadataRequest must specify at least one metadata_field",
    ),
    (
        "get_model_metadata_impl:unknown-model",
        lambda: metadata("nope"),
        "NOT_FOUND",
        "Servable not found for request: Latest(nope)",
    ),
    (
        "get_model_metadata_impl:unknown-version",
        lambda: metadata(version=9),
        "NOT_FOUND",
        "Servable not found for request: Specific(default, 9)",
    ),
    ("get_model_metadata_impl:signature_def", lambda: metadata(), "OK", ""),
    # get_model_status_impl.cc / get_model_status_impl_test.cc
    (
        "get_model_status_impl_test:MissingOrEmptyModelSpecFailure",
        lambda: status(None),
        "INVALID_ARGUMENT",
        "Missing ModelSpec",
    ),
    (
        "get_model_status_impl_test:InvalidModelNameFailure",
        lambda: status("nope"),
        "NOT_FOUND",
        "Could not find any versions of model nope",
    ),
    (
        "get_model_status_impl_test:InvalidModelVersionFailure",
        lambda: status(version=5),
        "NOT_FOUND",
        "Could not find version 5 of model default",
    ),
    (
        "get_model_status_impl:empty-name",
        lambda: status(""),
        "NOT_FOUND",
        "Could not find any versions of model ",
    ),
    ("get_model_status_impl_test:AllVersionsSuccess", lambda: status("two_versions"), "OK", ""),
    ("get_model_status_impl:label-ignored", lambda: status("two_versions", label="nope"), "OK", ""),
    ("get_model_status_impl_test:SingleVersionSuccess", lambda: status("two_versions", version=1), "OK", ""),
]

# Cases answered otherwise with --enable_signature_method_name_check (util.cc SetSignatureMethodNameCheckFeature).
METHOD_CHECK_CASES: dict[str, tuple[str, str]] = {
    "classifier_test:MethodNameCheck": (
        "INVALID_ARGUMENT",
        "Expected classification signature method_name to be "
        "tensorflow/serving/classify. Was: tensorflow/serving/predict",
    ),
    "regressor_test:MethodNameCheck": (
        "INVALID_ARGUMENT",
        "Expected regression signature method_name to be "
        "tensorflow/serving/regress. Was: tensorflow/serving/classify",
    ),
    "predict_util_test:MethodNameCheck": ("INTERNAL", F_PREDICT),
    "multi_inference:MethodNameCheck": (
        "INVALID_ARGUMENT",
        "Expected classification signature method_name to be "
        "tensorflow/serving/classify. Was: tensorflow/serving/regress",
    ),
}
METHOD_CHECK_REQUESTS: dict[str, Callable[[], tuple[str, Any]]] = {
    "classifier_test:MethodNameCheck": lambda: classify("tf2"),  # TF2 exports every signature as predict
    "regressor_test:MethodNameCheck": lambda: regress(signature="classify_x_to_y"),
    "predict_util_test:MethodNameCheck": lambda: predict(
        "examples", "unsupported_method", inputs={"inputs": ("string", (1,), [b""])}
    ),
    "multi_inference:MethodNameCheck": lambda: multi(("default", "regress_x_to_y", CLASSIFY)),
}
WITHOUT_CHECK: dict[str, tuple[str, str]] = {
    "classifier_test:MethodNameCheck": ("OK", ""),
    "regressor_test:MethodNameCheck": ("INVALID_ARGUMENT", "No regression outputs found in SignatureDef: "),
    "predict_util_test:MethodNameCheck": (
        "INVALID_ARGUMENT",
        "Name: <unknown>, Feature: x (data type: float) is required but could not be found.",
    ),
    "multi_inference:MethodNameCheck": (
        "INVALID_ARGUMENT",
        "Expected classification signature outputs to contain",
    ),
}


@pytest.mark.parametrize(("case", "build", "code", "message"), CASES, ids=[c[0] for c in CASES])
def test_grpc_answers_as_tf_serving(server, case, build, code, message):
    got_code, got_message, _ = _call(server, build)
    assert (got_code, message in got_message) == (code, True), (case, got_code, got_message)


@pytest.mark.parametrize("checked", [False, True], ids=["default-flags", "method-name-check"])
@pytest.mark.parametrize("case", sorted(METHOD_CHECK_REQUESTS))
def test_signature_method_name_check_as_tf_serving(request, case, checked):
    target = request.getfixturevalue("checked_server" if checked else "server")
    code, message = (METHOD_CHECK_CASES if checked else WITHOUT_CHECK)[case]
    got_code, got_message, _ = _call(target, METHOD_CHECK_REQUESTS[case])
    assert (got_code, message in got_message) == (code, True), (case, got_code, got_message)


def test_truncated_message_is_tf_serving_length(server):
    _, message, _ = _call(
        server, CASES[[c[0] for c in CASES].index("grpc_status_util:message-truncated-at-1024")][1]
    )
    assert len(message) == 1024 + len("...TRUNCATED") and message.startswith(
        "input size does not match signature"
    )


def test_successful_answers_as_tf_serving(server):
    """The OK rows' responses, as TF Serving's tests expect them."""

    def answer(case: str) -> Any:
        row = next(c for c in CASES if c[0] == case)
        got_code, got_message, response = _call(server, row[1])
        assert got_code == "OK", (case, got_message)
        return response

    scalar = answer("predict_util_test:PredictionSuccess-scalar").outputs["y"]
    assert (list(scalar.float_val), list(scalar.tensor_shape.dim)) == ([3.0], [])
    assert list(answer("predict_util_test:EmptyInputList-tf2-default").outputs["y"].float_val) == [2.0]  # x=0
    filled = answer("tensor.cc:FromProto-no-values-zeros").outputs["y"]  # zeros, as Tensor::FromProto
    assert list(filled.float_val) == [2.0, 2.0, 2.0]
    assert list(answer("tensor.cc:FromProto-more-values-cut").outputs["y"].float_val) == [3.0]
    assert list(answer("tensor.cc:FromProto-strings-filled").outputs["outputs"].float_val) == [4.0, 4.0]
    assert list(answer("tensor.cc:FromProto-unknown-rank-ignored").outputs["y"].float_val) == [3.0]
    classes = answer("classifier_test:ClassesOnly").result.classifications
    assert [[(c.label, c.score) for c in r.classes] for r in classes] == [[("a", 0), ("b", 0)]] * 2
    scores = answer("classifier_test:ScoresOnly").result.classifications
    assert [[(c.label, c.score) for c in r.classes] for r in scores] == [[("", 2.0), ("", 3.0)]]
    both = answer("classifier_test:ExampleList-both").result.classifications
    assert [[(c.label, c.score) for c in r.classes] for r in both] == [
        [("a", 2.0), ("b", 3.0)],
        [("a", 3.0), ("b", 4.0)],
    ]
    with_context = answer("classifier_test:ExampleListWithContext").result.classifications
    assert [[c.score for c in r.classes] for r in with_context] == [[3.0], [3.0]]
    duplicate = answer("classifier_test:ExampleListWithContext_DuplicateFeatures").result.classifications
    assert [[c.score for c in r.classes] for r in duplicate] == [[4.0]]  # the example's own x wins
    regression = answer("regressor_test:BasicExampleListWithContext")
    assert [r.value for r in regression.result.regressions] == [3.0, 4.0]
    assert answer("regressor:default-signature").model_spec.signature_name == "serving_default"
    results = answer("multi_inference:default-signature").results
    assert [
        (r.model_spec.name, r.model_spec.signature_name, r.model_spec.version.value) for r in results
    ] == [("examples", "serving_default", 1)]
    meta = answer("get_model_metadata_impl:signature_def")
    assert (meta.model_spec.name, meta.model_spec.version.value, meta.model_spec.signature_name) == (
        "default",
        123,
        "",
    )
    every = answer("get_model_status_impl_test:AllVersionsSuccess").model_version_status
    assert [v.version for v in every] == [2, 1]  # ServableStateMonitor::VersionMap: std::greater<Version>
    assert [v.version for v in answer("get_model_status_impl:label-ignored").model_version_status] == [2, 1]
    assert [
        v.version for v in answer("get_model_status_impl_test:SingleVersionSuccess").model_version_status
    ] == [1]


if __name__ == "__main__":
    build_examples_model(sys.argv[1])
