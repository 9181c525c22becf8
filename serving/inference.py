"""Predict, Classify, Regress, MultiInference and GetModelMetadata on one loaded version.

Each function takes the version the request resolved to and the request proto, and returns the response
proto, raising `ServingStatus` with TF Serving's code and wording (predict_util.cc, classifier.cc,
regressor.cc, multi_inference.cc, get_model_metadata_impl.cc). The gRPC servicers, the REST handlers and
warmup replay all call these, so the three paths cannot drift apart.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from serving import tensors
from serving.servable import LoadedVersion
from serving.status import ServingStatus, invalid_argument

DEFAULT_SIGNATURE = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
PREDICT_SIGNATURE_METHODS = (PREDICT_METHOD, CLASSIFY_METHOD, REGRESS_METHOD)


def _set_spec(spec: Any, lv: LoadedVersion, signature_name: str | None) -> None:
    spec.name = lv.name
    spec.version.value = lv.version
    if signature_name is not None:
        spec.signature_name = signature_name


# --------------------------------------------------------------------------- Predict
def predict_inputs(signature: Any, request_inputs: Any, max_bytes: int, output_filter: Any = (),
                   batching: bool = False) -> dict[str, np.ndarray]:
    """Request tensors (and the signature's defaults for inputs not sent) as arrays, checked as TF Serving
    checks them and in its order: the input count (predict_util.cc VerifyRequestInputsSize), each signature
    input found or defaulted and parsed (saved_model/util.cc GetInputValues), the `output_filter`
    (PreProcessPrediction), what the batching session refuses when `batching`, then the dtypes the session
    run refuses (`Expects arg[i]`, i the feed's position). Sizes are checked before any array is built."""
    expected, sent = set(signature.inputs), set(request_inputs.keys())
    if len(sent) > len(expected) or (len(sent) < len(expected) and not signature.defaults):
        raise invalid_argument(
            f"input size does not match signature: {len(sent)}!={len(expected)} len({{{','.join(sorted(sent))}}}) "
            f"!= len({{{','.join(sorted(expected))}}}). Sent extra: {{{','.join(sorted(sent - expected))}}}. "
            f"Missing but required: {{{','.join(sorted(expected - sent))}}}.")
    feeds: list[tuple[str, Any, tuple[int, ...]]] = []
    total = 0
    for alias in sorted(expected):
        if alias in request_inputs:
            proto = request_inputs[alias]
        elif alias in signature.defaults:
            proto = signature.defaults[alias]
        else:
            raise invalid_argument(
                f"Signature input alias: {alias}(feed name: {signature.inputs[alias].name}) not found in request "
                f"and no default value provided. Inputs expected to be in the request {{{','.join(sorted(sent))}}}, "
                f"or default input alias set: {','.join(sorted(signature.defaults))}")
        dims = tensors.check_declared_size(proto, alias, max_bytes - total)
        feeds.append((alias, proto, dims))
        total += tensors.declared_bytes(proto, dims)
    used = sent & expected
    if sent and used != sent:
        raise invalid_argument(f"Inputs contains invalid name. Used request inputs: {','.join(sorted(used))}, "
                               f"request input: {','.join(sorted(sent))}")
    if output_filter:
        output_aliases(signature, output_filter)
    if batching and (error := batching_error([dims for _, _, dims in feeds])):
        raise invalid_argument(error)
    for index, (alias, proto, _) in enumerate(feeds):
        info = signature.inputs[alias]
        if proto.dtype != info.dtype:
            raise invalid_argument(f"Expects arg[{index}] to be {tensors.dtype_name(info.dtype)} but "
                                   f"{tensors.dtype_name(proto.dtype)} is provided")
    for alias, _, dims in feeds:
        check_shape(alias, dims, signature.inputs[alias].tensor_shape)
    return {alias: tensors.to_array(proto, alias, max_bytes) for alias, proto, _ in feeds}


def check_shape(alias: str, dims: tuple[int, ...], expected: Any) -> None:
    """Refuse a shape the signature cannot take (INVALID_ARGUMENT) before TensorFlow sees it.

    TF Serving feeds tensors unchecked; a graph specialised for its declared shapes can then abort the
    whole process on a wrong rank (seen here with a conv model fed a rank-3 image), so shapes are checked.
    TF Serving's leniencies its own tests rely on are kept: extra or missing trailing dimensions of size
    1 (`x` of shape `[1]` for a signature `[?,1]`, `[n,1]` for `[?]`) are fed as sent, and so is a scalar
    for a signature whose dimensions are all `?` or 1 (predict_util_test.cc PredictionSuccess sends `x` with
    no shape to half_plus_two's `[?,1]`)."""
    if expected.unknown_rank:
        return
    want = [int(d.size) for d in expected.dim]
    got = list(dims)
    if not got and all(w in (-1, 1) for w in want):
        return
    while len(got) > len(want) and got[-1] == 1:
        got.pop()
    while len(want) > len(got) and want[-1] == 1:
        want.pop()
    if len(got) != len(want) or any(w >= 0 and w != g for w, g in zip(want, got, strict=True)):
        shown = "[" + ",".join("?" if d.size < 0 else str(d.size) for d in expected.dim) + "]"
        raise invalid_argument(f"input {alias} has shape {list(dims)} but the signature expects {shown}")


def output_aliases(signature: Any, output_filter: Any) -> list[str]:
    aliases: list[str] = []
    for alias in output_filter:
        if alias not in signature.outputs:
            raise invalid_argument(f"output tensor alias not found in signature: {alias} Outputs expected to be in "
                                   f"the set {{{','.join(sorted(signature.outputs))}}}.")
        if alias in aliases:
            raise invalid_argument(f"duplicate output tensor alias: {alias}")
        aliases.append(alias)
    return aliases or sorted(signature.outputs)


def batching_error(shapes: list[tuple[int, ...]]) -> str | None:
    """What TF Serving's batching session refuses before it runs (batching_util.h ComputeTensorBatchSize):
    merging needs at least one input, each of rank 1 or more, all of one 0th-dimension size."""
    if not shapes:
        return "Batching Run() must have at least one input tensor"
    size = None
    for shape in shapes:
        if not shape:
            return "Batching Run() input tensors must have at least one dimension"
        if size is None:
            size = shape[0]
        elif shape[0] != size:
            return "Batching Run() input tensors must have equal 0th-dimension size"
    return None


class PredictPlan:
    """What Predict derives from one signature, once per loaded version (`LoadedVersion.plans`).

    `arrays` takes a request's inputs on the common path without the general checks: every input sent,
    packed in `tensor_content`, of the signature's dtype, with exactly the shape the signature declares
    (`-1` matching any size), within the byte limit. Whatever it does not recognise it leaves to
    `predict_inputs` (returns None), which gives TF Serving's answer: the two paths accept the same
    requests and build the same arrays, only the common one skips the work of finding what is wrong."""

    __slots__ = ("signature", "inputs", "outputs", "packed")

    def __init__(self, signature: Any):
        self.signature = signature
        self.outputs = sorted(signature.outputs)
        self.inputs: list[tuple[str, int, np.dtype, tuple[int, ...] | None]] = []
        self.packed = not signature.defaults
        for alias in sorted(signature.inputs):
            info = signature.inputs[alias]
            dtype = tensors.numeric_dtype(info.dtype)
            if dtype is None:
                self.packed = False
                break
            shape = info.tensor_shape
            want = None if shape.unknown_rank else tuple(int(d.size) for d in shape.dim)
            self.inputs.append((alias, int(info.dtype), dtype, want))

    def arrays(self, request_inputs: Any, max_bytes: int) -> dict[str, np.ndarray] | None:
        if not self.packed or len(request_inputs) != len(self.inputs):
            return None
        arrays = {}
        total = 0
        for alias, code, dtype, want in self.inputs:
            if alias not in request_inputs:
                return None
            proto = request_inputs[alias]
            content = proto.tensor_content
            if proto.dtype != code or not content:
                return None
            shape = proto.tensor_shape
            dims = [d.size for d in shape.dim]
            if want is not None and (len(dims) != len(want) or any(
                    w != d for w, d in zip(want, dims, strict=True) if w >= 0)):
                return None
            total += len(content)
            if (shape.unknown_rank or (dims and min(dims) < 0) or math.prod(dims) * dtype.itemsize != len(content)
                    or total > max_bytes):
                return None
            arrays[alias] = np.frombuffer(content, dtype).reshape(dims).copy()
        return arrays


def predict_plan(lv: LoadedVersion, signature_name: str) -> PredictPlan:
    plan = lv.plans.get(signature_name)
    if plan is None:
        plan = lv.plans[signature_name] = PredictPlan(lv.signature(signature_name))
    return plan


def predict(lv: LoadedVersion, request: Any, max_bytes: int, batching: bool, as_content: bool = False,
            method_check: bool = False) -> Any:
    """TF Serving's Predict; outputs in the typed `*_val` field (TF Serving's default) or, with
    `--enable_serialization_as_tensor_content`, as `tensor_content` bytes. `method_check`
    (`--enable_signature_method_name_check`) refuses a signature of another method, INTERNAL as in
    predict_util.cc VerifySignature."""
    from tensorflow_serving.apis import predict_pb2

    signature_name = request.model_spec.signature_name or DEFAULT_SIGNATURE
    plan = predict_plan(lv, signature_name)
    if method_check and plan.signature.method_name not in PREDICT_SIGNATURE_METHODS:
        raise ServingStatus("INTERNAL", "Expected prediction signature method_name to be one of {"
                            f"{', '.join(PREDICT_SIGNATURE_METHODS)}}}. Was: {plan.signature.method_name}")
    inputs = plan.arrays(request.inputs, max_bytes)
    if inputs is None:
        inputs = predict_inputs(plan.signature, request.inputs, max_bytes, request.output_filter, batching)
    aliases = output_aliases(plan.signature, request.output_filter) if request.output_filter else plan.outputs
    if batching and (error := batching_error([inputs[alias].shape for alias in sorted(inputs)])):
        raise invalid_argument(error)
    outputs = lv.run(signature_name, inputs, aliases)
    response = predict_pb2.PredictResponse()
    _set_spec(response.model_spec, lv, signature_name)
    for alias in aliases:
        tensors.from_array(outputs[alias], response.outputs[alias], as_content=as_content)
    return response


# --------------------------------------------------------------------------- Classify / Regress
def serialized_examples(input_proto: Any) -> list[bytes]:
    """The examples as TF Serving feeds them (util.cc InputToSerializedExampleTensor): each example's bytes,
    after the context's bytes for `example_list_with_context` (so an example's own feature wins)."""
    kind = input_proto.WhichOneof("kind")
    if kind == "example_list":
        examples = [e.SerializeToString() for e in input_proto.example_list.examples]
    elif kind == "example_list_with_context":
        context = input_proto.example_list_with_context.context.SerializeToString()
        examples = [context + e.SerializeToString() for e in input_proto.example_list_with_context.examples]
    else:
        examples = []
    if not examples:
        raise invalid_argument("Input is empty.")
    return examples


def _find_signature(lv: LoadedVersion, signature_name: str, method: str, method_check: bool) -> list[str]:
    """classifier.cc GetClassificationSignatureDef / regressor.cc GetRegressionSignatureDef; returns the
    output aliases to fetch."""
    signature = lv.signature_defs.get(signature_name)
    if signature is None:
        raise invalid_argument(f"No signature was found with the name: {signature_name}")
    return check_example_signature(signature, method, method_check)


def check_example_signature(signature: Any, method: str, method_check: bool) -> list[str]:
    """classifier.cc PreProcessClassification / regressor.cc PreProcessRegression, in their order; returns
    the output aliases to fetch."""
    kind = "classification" if method == CLASSIFY_METHOD else "regression"
    if method_check and signature.method_name != method:
        raise invalid_argument(f"Expected {kind} signature method_name to be {method}. Was: {signature.method_name}")
    if len(signature.inputs) != 1:
        raise invalid_argument("Expected one input Tensor.")
    if method == CLASSIFY_METHOD and len(signature.outputs) not in (1, 2):
        raise invalid_argument(f"Expected one or two output Tensors, found {len(signature.outputs)}")
    if method == REGRESS_METHOD and len(signature.outputs) != 1:
        raise invalid_argument("Expected one output Tensor.")
    if "inputs" not in signature.inputs:
        raise invalid_argument(f"No {kind} inputs found in SignatureDef: {signature}")
    if method == REGRESS_METHOD:
        if "outputs" not in signature.outputs:
            raise invalid_argument(f"No regression outputs found in SignatureDef: {signature}")
        return ["outputs"]
    names = [k for k in ("classes", "scores") if k in signature.outputs]
    if not names:
        raise invalid_argument('Expected classification signature outputs to contain at least one of "classes" '
                               f'or "scores". Signature was: {signature}')
    return names


def _shape(array: np.ndarray) -> str:
    """TensorShape::DebugString: `[2,3]`."""
    return "[" + ",".join(str(d) for d in array.shape) + "]"


def _datatype(array: np.ndarray) -> str:
    """DataType_Name: `DT_FLOAT`, `DT_STRING`."""
    return "DT_" + tensors.dtype_name(tensors.dtype_of(array)).upper()


def fill_classifications(result: Any, outputs: dict[str, np.ndarray], n: int) -> None:
    """classifier.cc PostProcessClassificationResult."""
    classes, scores = outputs.get("classes"), outputs.get("scores")
    for name, array, want in (("classes", classes, "DT_STRING"), ("scores", scores, "DT_FLOAT")):
        if array is None:
            continue
        if array.ndim != 2:
            raise invalid_argument(f"Expected Tensor shape: [batch_size num_classes] but got {_shape(array)}")
        if _datatype(array) != want:
            raise invalid_argument(f"Expected {name} Tensor of {want}. Got: {_datatype(array)}")
        if array.shape[0] != n:
            raise invalid_argument(f"Expected {name} output batch size of {n}. Got: {array.shape[0]}")
    if classes is not None and scores is not None and classes.shape[1] != scores.shape[1]:
        raise invalid_argument(f"Tensors class and score should match in dim_size(1). Got {classes.shape[1]} vs. "
                               f"{scores.shape[1]}")
    width = (classes if classes is not None else scores).shape[1]
    for row in range(n):
        classifications = result.classifications.add()
        for col in range(width):
            item = classifications.classes.add()
            if classes is not None:
                value = classes[row, col]
                item.label = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
            if scores is not None:
                item.score = float(scores[row, col])


def fill_regressions(result: Any, values: np.ndarray, n: int) -> None:
    """regressor.cc PostProcessRegressionResult."""
    if not (values.ndim == 1 or (values.ndim == 2 and values.shape[1] == 1)):
        raise invalid_argument("Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got "
                               f"{_shape(values)}")
    if values.shape[0] != n:
        raise invalid_argument(f"Input batch size did not match output batch size: {n} vs. {values.shape[0]}")
    if _datatype(values) != "DT_FLOAT":
        raise invalid_argument(f"Expected output Tensor of DT_FLOAT.  Got: {_datatype(values)}")
    for value in values.reshape(n):
        result.regressions.add().value = float(value)


def _run_examples(lv: LoadedVersion, signature_name: str, examples: list[bytes], aliases: list[str],
                  feed_index: int = 0) -> dict:
    """Feed the serialized examples to the signature's `inputs` tensor. A tensor of another dtype is refused
    in the words of TF Serving's session run (`feed_index`: the tensor's place among the run's feeds)."""
    info = lv.signature_defs[signature_name].inputs["inputs"]
    if info.dtype != tensors.DT_STRING:
        raise invalid_argument(f"Expects arg[{feed_index}] to be {tensors.dtype_name(info.dtype)} but string is "
                               "provided")
    array = np.empty(len(examples), dtype=object)
    array[:] = examples
    return lv.run(signature_name, {"inputs": array}, aliases)


def classify(lv: LoadedVersion, request: Any, method_check: bool = False) -> Any:
    from tensorflow_serving.apis import classification_pb2

    name = request.model_spec.signature_name or DEFAULT_SIGNATURE
    aliases = _find_signature(lv, name, CLASSIFY_METHOD, method_check)
    examples = serialized_examples(request.input)
    outputs = _run_examples(lv, name, examples, aliases)
    response = classification_pb2.ClassificationResponse()
    _set_spec(response.model_spec, lv, name)
    fill_classifications(response.result, outputs, len(examples))
    return response


def regress(lv: LoadedVersion, request: Any, method_check: bool = False) -> Any:
    from tensorflow_serving.apis import regression_pb2

    name = request.model_spec.signature_name or DEFAULT_SIGNATURE
    _find_signature(lv, name, REGRESS_METHOD, method_check)
    examples = serialized_examples(request.input)
    outputs = _run_examples(lv, name, examples, ["outputs"])
    response = regression_pb2.RegressionResponse()
    _set_spec(response.model_spec, lv, name)
    fill_regressions(response.result, outputs["outputs"], len(examples))
    return response


def multi_inference(lv: LoadedVersion, request: Any, method_check: bool = False) -> Any:
    """Several classify/regress signatures of one model over the same examples (each signature's input
    tensor is fed the same serialized examples, as TF Serving's one-shot computation does). Every task is
    checked (multi_inference.cc Infer) before the examples are read."""
    from tensorflow_serving.apis import inference_pb2

    if not request.tasks:
        raise invalid_argument("ModelSpec has no name specified.")  # multi_inference_helper.cc: no task, no spec
    seen: set[str] = set()
    plans = []
    for task in request.tasks:
        if not task.model_spec.name:
            raise invalid_argument("Found ModelSpec with an empty model name.")
        if task.model_spec.name != request.tasks[0].model_spec.name:
            raise invalid_argument("All ModelSpecs in a MultiInferenceRequest must access the same model name.")
        name = task.model_spec.signature_name or DEFAULT_SIGNATURE
        if name in seen:
            raise invalid_argument(f"Duplicate evaluation of signature: {name}")
        seen.add(name)
        if name not in lv.signature_defs:
            raise invalid_argument(f"Requested signature not found in model graph: {name}")
        if task.method_name not in (CLASSIFY_METHOD, REGRESS_METHOD):
            raise ServingStatus("UNIMPLEMENTED", f"Unsupported signature method_name: {task.method_name}")
        aliases = check_example_signature(lv.signature_defs[name], task.method_name, method_check)
        plans.append((task, name, aliases))
    examples = serialized_examples(request.input)
    # one session run feeds every task's input tensor, in the order of their names (a std::set)
    feeds = sorted({lv.signature_defs[name].inputs["inputs"].name for _, name, _ in plans})
    response = inference_pb2.MultiInferenceResponse()
    for task, name, aliases in plans:
        index = feeds.index(lv.signature_defs[name].inputs["inputs"].name)
        outputs = _run_examples(lv, name, examples, aliases, index)
        result = response.results.add()
        if task.method_name == CLASSIFY_METHOD:
            fill_classifications(result.classification_result, outputs, len(examples))
        else:
            fill_regressions(result.regression_result, outputs["outputs"], len(examples))
        _set_spec(result.model_spec, lv, name)
    return response


# --------------------------------------------------------------------------- metadata
def check_metadata_request(request: Any) -> None:
    """get_model_metadata_impl.cc ValidateGetModelMetadataRequest: before the model is looked up."""
    if not request.metadata_field:
        raise invalid_argument("GetModelMetadataRequest must specify at least one metadata_field")
    for name in request.metadata_field:
        if name != "signature_def":
            raise invalid_argument(f"Metadata field {name} is not supported")


def metadata(lv: LoadedVersion, request: Any) -> Any:
    from tensorflow_serving.apis import get_model_metadata_pb2

    check_metadata_request(request)
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    _set_spec(response.model_spec, lv, None)
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    for name, signature in lv.signature_defs.items():
        signature_map.signature_def[name].CopyFrom(signature)
    response.metadata["signature_def"].Pack(signature_map)
    return response


# --------------------------------------------------------------------------- warmup
def replay_warmup(lv: LoadedVersion, records: list[Any], iterations: int, max_bytes: int,
                  method_check: bool = False) -> int:
    """Run every PredictionLog record against this version (before it is AVAILABLE); returns calls made.
    A failing record fails the load, as in TF Serving, whose warmup runs the same Predict/Classify/Regress/
    MultiInference code, `--enable_signature_method_name_check` (`method_check`) included."""
    calls = 0
    for record in records:
        kind = record.WhichOneof("log_type")
        for _ in range(max(1, iterations)):
            if kind == "predict_log":
                predict(lv, record.predict_log.request, max_bytes, batching=False, method_check=method_check)
            elif kind == "classify_log":
                classify(lv, record.classify_log.request, method_check)
            elif kind == "regress_log":
                regress(lv, record.regress_log.request, method_check)
            elif kind == "multi_inference_log":
                multi_inference(lv, record.multi_inference_log.request, method_check)
            else:
                raise ServingStatus("UNIMPLEMENTED", f"Unsupported log_type for warmup: {kind}")
            calls += 1
    return calls
