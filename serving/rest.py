"""TF Serving's REST API on `--rest_api_port` (uvicorn + Starlette; HTTP parsing is theirs).

Routes, formats and errors follow `http_rest_api_util.cc`, `http_rest_api_handler.cc`, `json_tensor.cc`:

- `GET /v1/models/{m}[/versions/{v} | /labels/{l}]` -> model status; `.../metadata` -> signature defs;
- `POST /v1/models/{m}[/versions/{v} | /labels/{l}]:predict` with the row format
  `{"signature_name": .., "instances": [...]}` (answer `{"predictions": [...]}`) or the columnar format
  `{"inputs": ...}` (answer `{"outputs": ...}`); string values as text or `{"b64": "..."}`, and outputs
  whose name ends in `_bytes` come back as `{"b64": ...}`;
- `:classify` / `:regress` with `{"examples": [...], "context": {...}}` -> `{"results": ...}`;
- every error is `{"error": "<message>"}` with TF Serving's HTTP code for the status (404 NOT_FOUND,
  400 INVALID_ARGUMENT / FAILED_PRECONDITION, 503 UNAVAILABLE, 429 RESOURCE_EXHAUSTED, 504 deadline),
  except where TF Serving writes no body (a version beyond int64, an OPTIONS preflight);
- the Prometheus page at the path the monitoring config names.

JSON is read by rapidjson, as in TF Serving (NaN/Inf tokens, numbers, parse errors and their offsets, bytes
after the document ignored, the first of duplicate members; refused here, read there: nesting deeper than
Python's recursion limit and strings that are not UTF-8), every value checked against the
signature's dtype as `AddValueToTensor` checks it, and errors quote the JSON as TF Serving quotes it.
Floats are written as `WriteDecimal` writes them (six digits when they read back, else 9 / 17).
`tests/serving/test_rest_tf_serving_cases.py` holds the cases, one per TF Serving test case.

A request runs on a worker thread; at most `--rest_api_num_threads` run at once, and one that takes
longer than `--rest_api_timeout_in_ms` is answered 504 (the model call finishes in the background).
JSON is converted to the same request protos the gRPC API takes and goes through the same handlers.
"""

from __future__ import annotations

import base64
import decimal
import json
import math
import re
import socket
import threading
from typing import Any
from urllib.parse import unquote

import numpy as np
import rapidjson

from serving import tensors
from serving.servicers import Handlers
from serving.status import ServingStatus, invalid_argument

PREDICT_PATH = re.compile(r"(?i)/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:"
                          r"(classify|regress|predict)")
STATUS_PATH = re.compile(r"(?i)/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?"
                         r"(?:/(metadata))?")
API_PATH = re.compile(r"(?i)/v1/.*")


# --------------------------------------------------------------------------- JSON values (json_tensor.cc)
_MAX_DEBUG_BYTES = 256  # kMaxJsonDebugStringBytes
_INT_RANGES = {  # dtype -> the rapidjson test json_tensor.cc applies (IsInt, IsInt64, IsUint, IsUint64)
    3: (-(2**31), 2**31 - 1), 4: (-(2**31), 2**31 - 1), 5: (-(2**31), 2**31 - 1), 6: (-(2**31), 2**31 - 1),
    9: (-(2**63), 2**63 - 1), 22: (0, 2**32 - 1), 23: (0, 2**64 - 1),
}
_CONVERTED = {1, 2, 7, 10, *_INT_RANGES}  # AddValueToTensor's cases; any other dtype is UNIMPLEMENTED


def _is_integer(value: Any) -> bool:
    """A JSON integer as rapidjson keeps it (int64 or uint64; the parser reads longer ones as doubles)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _json_type(value: Any) -> str:
    """rapidjson's type names (JsonTypeString)."""
    if value is None or isinstance(value, bool):
        return {None: "Null", False: "False", True: "True"}[value]
    if isinstance(value, dict):
        return "Object"
    return "Array" if isinstance(value, list) else "String" if isinstance(value, str) else "Number"


class _WriterRefused(Exception):
    """A value rapidjson's Writer does not write (NaN, Infinity): Accept() stops at it."""


def _number_text(value: Any) -> str:
    """A number as rapidjson's Writer prints it: integers as they are, doubles shortest with `.0`/`e`."""
    if _is_integer(value):
        return str(value)
    number = float(value)
    if number != number or number in (math.inf, -math.inf):
        raise _WriterRefused  # rapidjson's Writer refuses non-finite doubles: the quote stops there
    if number == 0:
        return "-0.0" if math.copysign(1.0, number) < 0 else "0.0"
    sign, digits, exponent = decimal.Decimal(repr(number)).normalize().as_tuple()
    text, k = "".join(map(str, digits)), int(exponent)
    kk = len(text) + k
    if 0 <= k and kk <= 21:
        body = text + "0" * k + ".0"
    elif 0 < kk <= 21:
        body = text[:kk] + "." + text[kk:]
    elif -6 < kk <= 0:
        body = "0." + "0" * -kk + text
    else:
        body = (text if len(text) == 1 else text[0] + "." + text[1:]) + f"e{kk - 1}"
    return ("-" if sign else "") + body


def _debug_tokens(value: Any, depth: int, prefix: str) -> Any:
    """Pieces of rapidjson's PrettyWriter output (kFormatSingleLineArray, 4-space indent), one per writer call."""
    if isinstance(value, dict):
        yield prefix + "{"
        for i, (key, item) in enumerate(value.items()):
            yield ("," if i else "") + "\n" + "    " * (depth + 1) + _string_text(key)
            yield from _debug_tokens(item, depth + 1, ": ")
        yield ("\n" + "    " * depth if value else "") + "}"
    elif isinstance(value, list):
        yield prefix + "["
        for i, item in enumerate(value):
            yield from _debug_tokens(item, depth + 1, ", " if i else "")
        yield "]"
    elif isinstance(value, str):
        yield prefix + _string_text(value)
    elif value is None or isinstance(value, bool):
        yield prefix + {None: "null", False: "false", True: "true"}[value]
    else:
        try:
            text = _number_text(value)
        except _WriterRefused:
            yield prefix  # PrettyWriter wrote the separator before the refused value
            raise
        yield prefix + text


def _string_text(value: str) -> str:
    return re.sub(r"\\u00([0-9a-f]{2})", lambda m: "\\u00" + m.group(1).upper(), json.dumps(value, ensure_ascii=False))


def debug_string(value: Any) -> str:
    """JsonValueToDebugString: the value as TF Serving quotes it in errors, cut once 256 bytes are written."""
    out, size = [], 0
    try:
        for piece in _debug_tokens(value, 0, ""):
            if size >= _MAX_DEBUG_BYTES:  # JsonWriterWithLimit: no writer call once the buffer is full
                break
            out.append(piece)
            size += len(piece.encode("utf-8"))
    except _WriterRefused:
        pass
    return "".join(out)


def _format_error(doc: Any, *message: str) -> ServingStatus:
    return invalid_argument(f"JSON Value: {debug_string(doc)} " + "".join(message))


def _type_error(value: Any, dtype_code: int) -> ServingStatus:
    return invalid_argument(f"JSON Value: {debug_string(value)} Type: {_json_type(value)} is not of expected "
                            f"type: {tensors.dtype_name(dtype_code)}")


def _is_b64(value: Any) -> bool:
    """IsValBase64Object: an object whose only key is `b64`, holding a string."""
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


_BASE64_DATA = re.compile(r"[A-Za-z0-9+/]*")


def _decode_b64(value: Any) -> bytes:
    if not _is_b64(value):
        raise invalid_argument(f"JSON Value: {debug_string(value)} not formatted correctly for base64 data")
    # absl::Base64Unescape: ASCII whitespace anywhere is skipped; the padding ('=' or '.') is all there or absent
    compact = re.sub(r"[ \t\n\v\f\r]", "", value["b64"])
    data = compact.rstrip("=.")
    missing = -len(data) % 4
    if not _BASE64_DATA.fullmatch(data) or len(data) % 4 == 1 or len(compact) - len(data) not in (0, missing):
        raise invalid_argument("Unable to base64 decode")
    return base64.b64decode(data + "=" * missing)


def _leaf(value: Any, dtype_code: int) -> Any:
    """AddValueToTensor: one JSON value as the dtype takes it, or the error TF Serving gives."""
    if isinstance(value, dict):
        if dtype_code == tensors.DT_STRING:
            return _decode_b64(value)
        raise _type_error(value, dtype_code)
    if dtype_code not in _CONVERTED:
        raise ServingStatus("UNIMPLEMENTED", f"Conversion of JSON Value: {debug_string(value)} to type: "
                                             f"{tensors.dtype_name(dtype_code)}")
    if dtype_code in (1, 2):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif dtype_code == tensors.DT_STRING:
        ok = isinstance(value, str)
    elif dtype_code == 10:
        ok = isinstance(value, bool)
    else:
        low, high = _INT_RANGES[dtype_code]
        ok = _is_integer(value) and low <= value <= high
    if not ok:
        raise _type_error(value, dtype_code)
    return value.encode("utf-8") if dtype_code == tensors.DT_STRING else value


def _dense_shape(value: Any) -> list[int]:
    """GetDenseTensorShape: the shape read along the first element of each level."""
    dims = []
    while isinstance(value, list):
        dims.append(len(value))
        if not value:
            break
        value = value[0]
    return dims


def _fill(value: Any, level: int, dims: list[int], dtype_code: int, out: list) -> None:
    """FillTensorProto: every leaf at the level the shape says, every list the size the shape says."""
    if not isinstance(value, list):
        if level != len(dims):
            raise invalid_argument(f"JSON Value: {debug_string(value)} found at incorrect level: {level + 1} in "
                                   f"the JSON DOM. Expected at level: {len(dims)}")
        out.append(_leaf(value, dtype_code))
        return
    if level >= len(dims):
        raise invalid_argument(f"Encountered list at unexpected level: {level} expected < {len(dims)}")
    if len(value) != dims[level]:
        raise invalid_argument(f"Encountered list at unexpected size: {len(value)} at level: {level} expected "
                               f"size: {dims[level]}")
    if level + 1 == len(dims) and _plain_leaves(value, dtype_code):
        out.extend(value)
        return
    for item in value:
        _fill(item, level + 1, dims, dtype_code, out)


def _plain_leaves(values: list, dtype_code: int) -> bool:
    """Whether every value of an innermost list passes AddValueToTensor as it is (checked in one pass:
    the common case of a numeric tensor skips the per-value calls)."""
    if dtype_code in (1, 2):
        return all(type(v) is float or type(v) is int for v in values)
    if dtype_code == 10:
        return all(type(v) is bool for v in values)
    if dtype_code in _INT_RANGES:
        low, high = _INT_RANGES[dtype_code]
        return all(type(v) is int for v in values) and (not values or low <= min(values) and max(values) <= high)
    return False


def _array(values: list, dims: list[int], dtype_code: int) -> np.ndarray:
    """The values as the signature's dtype; narrower integers wrap as TensorFlow's proto parsing casts them."""
    dtype = tensors.numpy_dtype(dtype_code)
    if dtype is object:
        array = np.empty(len(values), dtype=object)
        array[:] = values
    elif dtype_code in (1, 2):
        doubles = np.asarray(values, dtype=np.float64)
        with np.errstate(over="ignore"):  # a double beyond float's range is +-inf, as GetFloat() gives
            array = doubles.astype(dtype)
    elif dtype_code == 23:
        array = np.asarray(values, dtype=np.uint64)
    else:
        array = np.asarray(values, dtype=np.int64).astype(dtype)
    return array.reshape(dims)


def json_to_array(value: Any, dtype_code: int) -> np.ndarray:
    """One tensor from its JSON value (a scalar, a list of lists, b64 objects for strings)."""
    dims, values = _dense_shape(value), []
    _fill(value, 0, dims, dtype_code, values)
    return _array(values, dims, dtype_code)


def _shape_text(dims: list[int]) -> str:
    return "[" + ",".join(map(str, dims)) + "]"


def _is_element_object(value: Any) -> bool:
    return isinstance(value, dict) and not _is_b64(value)


def _instances(instances: list, infos: dict[str, Any]) -> dict[str, np.ndarray]:
    """FillTensorMapFromInstancesList: each element one row, all rows of a tensor the same shape."""
    if not isinstance(instances[0], dict) and len(infos) > 1:
        raise invalid_argument("instances is a plain list, but expecting list of objects as multiple input tensors "
                               "required as per tensorinfo_map")
    objects = _is_element_object(instances[0])
    shapes: dict[str, list[int]] = {}
    values: dict[str, list] = {}

    def add(item: Any, name: str) -> None:  # AddInstanceItem
        if name not in infos:
            raise invalid_argument(f"JSON object: does not have named input: {name}")
        dims, row = _dense_shape(item), []
        _fill(item, 0, dims, infos[name].dtype, row)
        if name not in shapes:
            shapes[name], values[name] = dims, []
        elif math.prod(shapes[name]) != len(row):
            raise invalid_argument(f"Expecting tensor size: {math.prod(shapes[name])} but got: {len(row)}")
        elif shapes[name] != dims:
            raise invalid_argument(f"Expecting shape {_shape_text(shapes[name])} but got: {_shape_text(dims)}")
        values[name].extend(row)

    for i, element in enumerate(instances):
        if objects:
            if not _is_element_object(element):
                raise invalid_argument(f"Expecting object but got list at item {i} of input list")
            for name, item in element.items():
                try:
                    add(item, name)
                except ServingStatus as exc:
                    raise invalid_argument(f"Failed to process element: {i} key: {name} of 'instances' list. "
                                           f"Error: {exc.code_name}: {exc.message}") from exc
            if set(element) != set(infos):
                raise invalid_argument(f"Failed to process element: {i} of 'instances' list. JSON object: "
                                       f"{debug_string(element)} keys must be equal to: {','.join(sorted(infos))}")
        else:
            if _is_element_object(element):
                raise invalid_argument(f"Expecting value/list but got object at item {i} of input list")
            try:
                add(element, min(infos))
            except ServingStatus as exc:
                raise invalid_argument(f"Failed to process element: {i} of 'instances' list. "
                                       f"Error: {exc.code_name}: {exc.message}") from exc
    count = len(instances)
    return {name: _array(values[name], [count, *shapes[name]], infos[name].dtype) for name in shapes}


def _inputs(value: Any, infos: dict[str, Any]) -> dict[str, np.ndarray]:
    """FillTensorMapFromInputsMap: one value for a single input, else an object naming every input."""
    if not isinstance(value, dict) or _is_b64(value):
        if len(infos) > 1:
            raise invalid_argument("inputs is a plain value/list, but expecting an object as multiple input tensors "
                                   "required as per tensorinfo_map")
        name = min(infos)
        return {name: json_to_array(value, infos[name].dtype)}
    arrays = {}
    for name in sorted(infos):
        if name not in value:
            raise invalid_argument(f"Missing named input: {name} in 'inputs' object.")
        arrays[name] = json_to_array(value[name], infos[name].dtype)
    return arrays


class _Decoder(rapidjson.Decoder):
    """Objects as rapidjson's FindMember sees them: the first member of a name counts. (python-rapidjson
    collects an object's members as (key, value) pairs when `start_object` returns a list.)"""

    def start_object(self) -> list:
        return []

    def end_object(self, members: list[tuple[str, Any]]) -> dict:
        first: dict = {}
        for key, value in members:
            first.setdefault(key, value)
        return first


# TF Serving's own parser (rapidjson, through python-rapidjson), with its flags: NaN/Inf tokens, numbers
# read as rapidjson reads them (int64, uint64 or double; "Number too big to be stored in double.")
_DECODER = _Decoder(number_mode=rapidjson.NM_NAN | rapidjson.NM_NATIVE)
_PARSE_ERROR = re.compile(r"Parse error at offset (\d+): (.*)", re.DOTALL)
_ROOT_FOLLOWED = "The document root must not be followed by other values."


def parse_json(body: bytes) -> Any:
    """json_tensor.cc ParseJson: the request read by rapidjson, its error texts and offsets (`JSON Parse
    error: <reason> at offset: <n>`); reading stops after the first value (kParseStopWhenDoneFlag: what
    follows it is ignored); the top level must be an object.

    Two documents TF Serving reads and this server refuses (400, INVALID_ARGUMENT), both outside JSON as
    clients write it: nesting deeper than Python's recursion limit (python-rapidjson builds Python objects
    recursively, TF Serving's rapidjson parses iteratively) and strings that are not UTF-8 (JSON text is
    UTF-8, RFC 8259; binary values travel as `{"b64": ...}`)."""
    try:
        doc = _DECODER(body)
    except (rapidjson.JSONDecodeError, RecursionError) as exc:  # RecursionError: nested too deep to build
        match = _PARSE_ERROR.match(str(exc))
        if match is None:
            raise invalid_argument(f"JSON Parse error: {exc}") from exc
        offset, reason = int(match[1]), match[2]
        if reason == _ROOT_FOLLOWED:  # the first value ends before `offset`: read it alone
            return parse_json(body[:offset])
        raise invalid_argument(f"JSON Parse error: {reason} at offset: {offset}") from exc
    except UnicodeDecodeError as exc:
        raise invalid_argument(f"JSON Parse error: Invalid encoding in string. at offset: {exc.start}") from exc
    return _object(doc)


def _object(doc: Any) -> dict:
    if not isinstance(doc, dict):
        raise _format_error(doc, "Is not object")
    return doc


def parse_body(body: bytes) -> dict:
    """The request object with its (optional) string `signature_name` (FillSignature)."""
    doc = parse_json(body)
    if "signature_name" in doc and not isinstance(doc["signature_name"], str):
        raise _format_error(doc, "not formatted correctly. 'signature_name' key must be a string value.")
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
        raise invalid_argument(f"Failed to get input map for signature: {request.model_spec.signature_name or 'DEFAULT'}")
    if "instances" in doc:
        if "inputs" in doc:
            raise _format_error(doc, "Not formatted correctly expecting only one of 'inputs' or 'instances' keys "
                                     "to exist ")
        if not isinstance(doc["instances"], list):
            raise _format_error(doc, "Expecting 'instances' to be an list/array")
        if not doc["instances"]:
            raise _format_error(doc, "No values in 'instances' array")
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
_WRITTEN = {1, 2, 3, 4, 5, 6, 7, 9, 10, 22, 23}  # AddSingleValueAndAdvance's cases; others fail


def decimal_text(value: float, float32: bool = True) -> str:
    """WriteDecimal: six significant digits when they read back as the same value, else full precision
    (9 for float, 17 for double); `.0` on whole numbers; NaN, Infinity, -Infinity as tokens."""
    return _decimal_texts(np.asarray([value], dtype=np.float32 if float32 else np.float64))[0]


def _decimal_texts(values: np.ndarray) -> list[str]:
    """decimal_text for every value of a float or double array, the read-back test done on the whole array."""
    flat = values.ravel()
    numbers = flat.tolist()
    texts = [f"{v:.6g}" for v in numbers]
    finite = np.isfinite(flat)
    with np.errstate(over="ignore", invalid="ignore"):
        same = np.asarray(texts, dtype=np.float64).astype(flat.dtype) == flat
    digits = 9 if flat.dtype == np.float32 else 17
    for i in np.flatnonzero(finite & ~same).tolist():
        texts[i] = f"{numbers[i]:.{digits}g}"
    texts = [t if "." in t or "e" in t else t + ".0" for t in texts]
    for i in np.flatnonzero(~finite).tolist():
        v = numbers[i]
        texts[i] = "NaN" if v != v else ("Infinity" if v > 0 else "-Infinity")
    return texts


def _value_texts(name: str, array: np.ndarray, dtype_code: int) -> list[str]:
    """Each value of the tensor as TF Serving writes it; strings named `*_bytes` as {"b64": ...}."""
    if dtype_code not in _WRITTEN and array.size:
        raise invalid_argument(f"Failed to write JSON value for tensor type: {tensors.dtype_name(dtype_code)}")
    if dtype_code in (1, 2):
        return _decimal_texts(array)
    flat = array.ravel().tolist()
    if dtype_code == tensors.DT_STRING:
        if name.endswith("_bytes"):
            return ['{"b64": "' + base64.b64encode(v).decode("ascii") + '"}' for v in flat]
        # rapidjson writes the bytes as they are (no UTF-8 check, no \u escapes): surrogateescape keeps them
        return [json.dumps(v.decode("utf-8", "surrogateescape"), ensure_ascii=False) for v in flat]
    if dtype_code == 10:
        return ["true" if v else "false" for v in flat]
    return [str(int(v)) for v in flat]


def _nested(texts: Any) -> str:
    """AddTensorValues: the value texts nested as the tensor's shape."""
    if not isinstance(texts, np.ndarray):
        return texts
    if texts.ndim == 0:
        return texts.item()
    if texts.ndim == 1:
        return "[" + ", ".join(texts.tolist()) + "]"
    return "[" + ", ".join(_nested(t) for t in texts) + "]"


def _text_array(name: str, proto: Any) -> np.ndarray:
    array = tensors.to_array(proto, name, 1 << 62)
    texts = np.empty(array.size, dtype=object)
    texts[:] = _value_texts(name, array, int(proto.dtype))
    return texts.reshape(array.shape)


def predict_json(response: Any, fmt: str) -> str:
    """MakeJsonFromTensors, as JSON text (numbers written exactly as TF Serving writes them)."""
    names = sorted(response.outputs)
    if not names:
        raise invalid_argument("Cannot convert empty tensor map to JSON")
    if fmt == "columnar":
        texts = {name: _nested(_text_array(name, response.outputs[name])) for name in names}
        if len(names) == 1:
            return '{"outputs": ' + texts[names[0]] + "}"
        return '{"outputs": {' + ", ".join(f"{json.dumps(n)}: {t}" for n, t in texts.items()) + "}}"
    batch = None
    for name in names:
        dims = response.outputs[name].tensor_shape.dim
        if not dims:
            raise invalid_argument(f"Tensor name: {name} has no shape information ")
        if batch is not None and dims[0].size != batch:
            raise invalid_argument(f"Tensor name: {name} has inconsistent batch size: {dims[0].size} expecting: "
                                   f"{batch}")
        batch = dims[0].size
    arrays = {name: _text_array(name, response.outputs[name]) for name in names}
    if len(names) == 1:
        rows = [_nested(row) for row in arrays[names[0]]]
    else:
        rows = ["{" + ", ".join(f"{json.dumps(n)}: {_nested(a[i])}" for n, a in arrays.items()) + "}"
                for i in range(batch)]
    return '{"predictions": [' + ", ".join(rows) + "]}"


# --------------------------------------------------------------------------- Classify / Regress
_KINDS = {"bytes_list": "bytes", "float_list": "float", "int64_list": "int64", None: "UNKNOWN"}


def _feature_value(item: Any, name: str) -> tuple[str, Any]:
    """AddValueToFeature: the Feature kind a JSON value takes and the value."""
    if isinstance(item, bool):
        return "int64_list", int(item)
    if _is_integer(item):
        if item >= 2**63:
            raise invalid_argument(f"Feature: {name} has uint64_t element. Only int64_t is supported.")
        return "int64_list", item
    if isinstance(item, (int, float)):
        return "float_list", float(item)
    if isinstance(item, str):
        return "bytes_list", item.encode("utf-8")
    if _is_b64(item):
        return "bytes_list", _decode_b64(item)
    raise invalid_argument(f"Feature: {name} has element with unexpected JSON type: {_json_type(item)}")


def _example(value: Any, example: Any) -> None:
    """MakeExampleFromJsonObject."""
    if not isinstance(value, dict):
        raise invalid_argument(f"Example must be JSON object but got JSON {_json_type(value)}")
    for name, content in value.items():
        feature = example.features.feature[name]
        feature.Clear()
        for item in content if isinstance(content, list) else [content]:
            kind, converted = _feature_value(item, name)
            current = feature.WhichOneof("kind")
            if current not in (None, kind):
                raise invalid_argument(f"Unexpected element type in feature: {name} expecting type: "
                                       f"{_KINDS[current]}")
            getattr(feature, kind).value.append(converted)


def example_request(doc: dict, request: Any) -> None:
    """FillClassifyRegressRequestFromJson (its messages say 'classify' for both methods)."""
    request.model_spec.signature_name = doc.get("signature_name", "")
    has_context = "context" in doc
    if has_context:
        _example(doc["context"], request.input.example_list_with_context.context)
    examples = doc.get("examples")
    if "examples" not in doc:
        raise _format_error(doc, "When method is classify, key 'examples' is expected and was not found")
    if not isinstance(examples, list):
        raise _format_error(doc, "Expecting 'examples' value to be an list/array")
    if not examples:
        raise _format_error(doc, "'examples' value is an empty array")
    target = request.input.example_list_with_context if has_context else request.input.example_list
    for value in examples:
        _example(value, target.examples.add())


# --------------------------------------------------------------------------- dispatch
def classification_json(response: Any) -> str:
    """MakeJsonFromClassificationResult."""
    result = response.result
    if not result.classifications:
        raise invalid_argument("Cannot convert empty ClassificationResults to JSON")
    rows = ("[" + ", ".join(f"[{json.dumps(c.label)}, {decimal_text(c.score)}]" for c in row.classes) + "]"
            for row in result.classifications)
    return '{"results": [' + ", ".join(rows) + "]}"


def regression_json(response: Any) -> str:
    """MakeJsonFromRegressionResult."""
    result = response.result
    if not result.regressions:
        raise invalid_argument("Cannot convert empty RegressionResults to JSON")
    return '{"results": [' + ", ".join(decimal_text(r.value) for r in result.regressions) + "]}"


class _ModelInfoError(ServingStatus):
    """An error of the URL's model part (a version beyond int64), answered with an empty body as TF Serving does."""


def _url_model_name(method: str, path: str) -> str:
    """The model name ParseModelInfo captures ("" when the route does not match), for the request count."""
    match = PREDICT_PATH.fullmatch(path) if method == "POST" else (
        STATUS_PATH.fullmatch(path) if method == "GET" else None)
    return unquote(match.group(1)) if match and match.group(1) else ""


class RestApi:
    """Maps one HTTP request (method, path, body) to (status code, JSON text) through the handlers."""

    def __init__(self, handlers: Handlers, prometheus_path: str | None = None):
        self.handlers = handlers
        self.prometheus_path = prometheus_path
        self._metered = threading.local()  # whether this thread's request reached Handlers.call (which counts it)

    def handle(self, method: str, path: str, body: bytes, origin: str = "") -> tuple[int, str]:
        """`path` as sent (percent-encoded): the model name and label are decoded after the route matched.
        OPTIONS is a CORS preflight (http_server.cc): OK with an http(s) `origin`, else FAILED_PRECONDITION,
        no body either way."""
        if method == "OPTIONS":
            ok = re.search("https?://", origin) is not None
            self.handlers.metrics.request("", "", "REST", "OK" if ok else "FAILED_PRECONDITION", 0.0)
            return (200 if ok else 400), ""
        self._metered.done = False
        try:
            answer = self._dispatch(method, path, body)
            return 200, answer if isinstance(answer, str) else json.dumps(answer)
        except ServingStatus as exc:
            if not self._metered.done:  # http_server.cc counts every request by its status
                self.handlers.metrics.request(_url_model_name(method, path), "", "REST", exc.code_name, 0.0)
            if isinstance(exc, _ModelInfoError):  # ParseModelInfo's errors return before any JSON is written
                return exc.http_status, ""
            return exc.http_status, json.dumps({"error": exc.message}, indent=4)
        except Exception as exc:  # noqa: BLE001
            if not self._metered.done:
                self.handlers.metrics.request(_url_model_name(method, path), "", "REST", "INTERNAL", 0.0)
            return 500, json.dumps({"error": f"{type(exc).__name__}: {exc}"})

    def _dispatch(self, method: str, path: str, body: bytes) -> Any:
        match = PREDICT_PATH.fullmatch(path) if method == "POST" else (
            STATUS_PATH.fullmatch(path) if method == "GET" else None)
        name, version, label, verb = match.groups() if match else (None, None, None, None)
        name = unquote(name) if name else ""
        label = unquote(label) if label else None
        if version is not None and int(version) >= 2**63:
            raise _ModelInfoError("INVALID_ARGUMENT", f"Failed to convert version: {version} to numeric.")
        # The route is matched case-insensitively, the verb is not (http_rest_api_handler.cc ProcessRequest).
        if match is None or (method == "POST" and verb not in ("classify", "regress", "predict")):
            raise invalid_argument(f"Malformed request: {method} {path}")

        def spec_fill(spec: Any) -> None:
            spec.name = name
            if version is not None:
                spec.version.value = int(version)
            elif label is not None:
                spec.version_label = label

        if method == "GET":
            if not name:
                raise invalid_argument("Missing model name in request.")
            return self._metadata(spec_fill) if verb == "metadata" else self._status(spec_fill)
        doc = parse_body(body)
        if verb == "predict":
            request, fmt = predict_request(doc, spec_fill, self.handlers)
            return self._call("Predict", request, lambda response: predict_json(response, fmt))
        return self._examples(verb, doc, spec_fill)

    def _call(self, api: str, request: Any, answer: Any = None) -> Any:
        """The handler call, `answer` (the JSON writer) included, which counts the request itself by its
        final status (so `handle` does not count it again)."""
        self._metered.done = True
        return self.handlers.call(api, request, "REST", answer=answer)

    def _examples(self, verb: str, doc: dict, spec_fill: Any) -> str:
        """MakeJsonFromClassificationResult / MakeJsonFromRegressionResult."""
        from tensorflow_serving.apis import classification_pb2, regression_pb2

        if verb == "classify":
            request = classification_pb2.ClassificationRequest()
            spec_fill(request.model_spec)
            example_request(doc, request)
            return self._call("Classify", request, classification_json)
        request = regression_pb2.RegressionRequest()
        spec_fill(request.model_spec)
        example_request(doc, request)
        return self._call("Regress", request, regression_json)

    def _status(self, spec_fill: Any) -> dict:
        from google.protobuf import json_format
        from tensorflow_serving.apis import get_model_status_pb2

        request = get_model_status_pb2.GetModelStatusRequest()
        spec_fill(request.model_spec)
        response = self._call("GetModelStatus", request)
        return json_format.MessageToDict(response, always_print_fields_with_no_presence=True)

    def _metadata(self, spec_fill: Any) -> dict:
        from google.protobuf import json_format
        from tensorflow_serving.apis import get_model_metadata_pb2

        request = get_model_metadata_pb2.GetModelMetadataRequest()
        spec_fill(request.model_spec)
        request.metadata_field.append("signature_def")
        response = self._call("GetModelMetadata", request)
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
        # The path as sent: TF Serving matches its routes before percent-decoding the model name and label.
        raw_path = request.scope.get("raw_path")
        path = raw_path.decode("utf-8", "replace") if raw_path else request.url.path
        if api.prometheus_path and path == api.prometheus_path:
            text = api.handlers.metrics.render()
            return Response(text, media_type="text/plain; version=0.0.4")
        if not API_PATH.fullmatch(path):
            return Response("Not Found", status_code=404, media_type="text/plain")
        if request.method == "OPTIONS":
            status, _ = api.handle("OPTIONS", path, b"", origin=request.headers.get("origin", ""))
            return Response(b"", status_code=status)
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
        return Response(text.encode("utf-8", "surrogateescape"), status_code=status, media_type="application/json")

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
