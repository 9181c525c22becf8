"""`retina serve`'s REST API, case by case against TF Serving's own tests and sources.

Each row comes from `http_rest_api_handler_test.cc` or `json_tensor_test.cc` (the request and the answer
they assert), or from the code they test (`http_rest_api_handler.cc`, `http_rest_api_util.cc`,
`json_tensor.cc`, `http_server.cc`) where a test does not pin the answer down. A real server answers a
real HTTP client; the models are TF Serving's half_plus_two (named `default`, with the label
`Version_Label` on version 123 as in the handler test) and `echo`, a SavedModel whose signatures return
their inputs, so one request shows the tensor that TF Serving's JSON parser would have built.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
TESTDATA = Path(__file__).parent / "tfserving_testdata"
ROOT = Path(__file__).resolve().parents[2]

# The echo model: every signature returns its inputs (json_tensor_test.cc's tensorinfo maps, by dtype).
ECHO_EXPORT = r"""
import sys
import tensorflow as tf

def spec(dtype, name):
    return tf.TensorSpec(None, dtype, name=name)

def echo(*specs, outputs=None):
    names = [s.name for s in specs]
    body = outputs or (lambda **kw: {n: tf.identity(kw[n]) for n in names})
    return tf.function(lambda *args: body(**dict(zip(names, args))), input_signature=list(specs)
                       ).get_concrete_function()

signatures = {name: echo(spec(dtype, "default")) for name, dtype in [
    ("int32", tf.int32), ("int64", tf.int64), ("float", tf.float32), ("double", tf.float64),
    ("bool", tf.bool), ("string", tf.string), ("uint8", tf.uint8)]}
signatures["serving_default"] = signatures["float"]
signatures["half_in"] = echo(spec(tf.float16, "default"))
signatures["multi"] = echo(spec(tf.int32, "int_tensor"), spec(tf.string, "str_tensor"),
                           spec(tf.float32, "float_tensor"), spec(tf.float64, "dbl_tensor"))
signatures["columnar"] = echo(spec(tf.int32, "int_tensor"), spec(tf.string, "str_tensor"),
                              spec(tf.string, "bin_tensor"))
signatures["bytes"] = echo(spec(tf.string, "default"), outputs=lambda default: {
    "str_tensor": tf.identity(default), "str_tensor_bytes": tf.identity(default)})
signatures["scalar"] = echo(spec(tf.float32, "x"), outputs=lambda x: {"y": tf.reduce_sum(x)})
signatures["batch_mismatch"] = echo(spec(tf.float32, "x"), outputs=lambda x: {
    "a": tf.identity(x), "b": tf.concat([x, x], 0)})
signatures["complex"] = echo(spec(tf.float32, "x"), outputs=lambda x: {"c": tf.complex(x, x)})
signatures["noinputs"] = tf.function(lambda: {"y": tf.constant([1.0])}, input_signature=[]).get_concrete_function()
signatures["half"] = echo(spec(tf.float32, "x"), outputs=lambda x: {"h": tf.cast(x, tf.float16)})
tf.saved_model.save(tf.Module(), sys.argv[1], signatures=signatures)
"""


@pytest.fixture(scope="module")
def rest(tmp_path_factory) -> str:
    from components.common.processes import ManagedProcess, free_port

    tmp = tmp_path_factory.mktemp("rest-cases")
    subprocess.run([sys.executable, "-c", ECHO_EXPORT, str(tmp / "echo" / "1")], check=True, capture_output=True,
                   timeout=300)
    config = tmp / "models.config"
    config.write_text(
        "model_config_list: {\n"
        f'  config: {{ name: "default", base_path: "{TESTDATA / "saved_model_half_plus_two_cpu"}", '
        'model_platform: "tensorflow", version_labels { key: "Version_Label" value: 123 } },\n'
        f'  config: {{ name: "echo", base_path: "{tmp / "echo"}", model_platform: "tensorflow" }}\n}}\n')
    port = free_port()
    rest_port = free_port(taken=[port])
    code = "import sys; from components.cli import main; sys.exit(main(sys.argv[1:]))"
    argv = [sys.executable, "-c", code, "serve", f"--port={port}", f"--rest_api_port={rest_port}",
            f"--model_config_file={config}", "--allow_version_labels_for_unavailable_models",
            f"--monitoring_config_file={TESTDATA / 'monitoring_config.txt'}"]
    base = f"http://127.0.0.1:{rest_port}"
    server = ManagedProcess("retina serve", argv, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            log_file=tmp / "server.log", cwd=ROOT)
    with server:
        server.wait_until(lambda: _call("GET", base + "/v1/models/echo")[0] == 200 and
                          _call("GET", base + "/v1/models/default")[0] == 200, timeout_s=180)
        yield base


def _call(method: str, url: str, body: str | bytes | None = None, headers: dict | None = None) -> tuple[int, str]:
    data = body.encode() if isinstance(body, str) else body
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def _json(text: str):
    return json.loads(text)  # Python's json reads NaN / Infinity / -Infinity as TF Serving writes them


P = "/v1/models/echo:predict"
D = "/v1/models/default"
# json_tensor_test.cc DeeplyNested*: TF Serving's rapidjson parses iteratively and reads these; python-rapidjson
# builds Python objects recursively, so this server refuses them (400, named) and keeps serving: a deliberate
# difference (README). Nesting as clients write it is read (`NESTED`).
DEEP = "[" * 500000 + "]" * 500000
NESTED = "[" * 200 + "]" * 200
NAMED_4 = ('{"int_tensor": [[1,2],[3,4],[5,6]], "str_tensor": ["foo", "bar"], "float_tensor": [1.0], '
           '"dbl_tensor": [1.0]}')


def sig(name: str, rest: str) -> str:
    return '{"signature_name": "' + name + '", ' + rest + "}"


# (id, method, path, body, HTTP status, expected): expected is a JSON value the answer must equal, or
# ("error", substring of the error message), ("text", the exact body) or ("empty",) for no body at all.
CASES = [
    # ---- http_rest_api_handler_test.cc UnsupportedApiCalls
    ("get-v1-foo", "GET", "/v1/foo", None, 400, ("error", "Malformed request")),
    ("post-v1-foo", "POST", "/v1/foo", None, 400, ("error", "Malformed request")),
    ("get-models-no-name", "GET", "/v1/models", None, 400, ("error", "Missing model name")),
    ("get-debug-path", "GET", "/v1/models/debug/model_name", None, 400, ("error", "Malformed request")),
    ("post-models", "POST", "/v1/models", None, 400, ("error", "Malformed request")),
    ("get-predict", "GET", "/v1/models/foo:predict", None, 400, ("error", "Malformed request")),
    ("get-version-singular", "GET", "/v1/models/foo/version/50:predict", None, 400, ("error", "Malformed request")),
    ("post-version-singular", "POST", "/v1/models/foo/version/50:regress", None, 400, ("error", "Malformed")),
    ("post-version-hello", "POST", "/v1/models/foo/versions/HELLO:regress", None, 400, ("error", "Malformed")),
    # ParseModelInfo fails before the handler writes a JSON body: TF Serving answers 400 with no body
    ("post-version-uint64-max", "POST", "/v1/models/foo/versions/18446744073709551615:regress", None, 400,
     ("empty",)),
    ("get-version-uint64-max", "GET", "/v1/models/foo/versions/18446744073709551615", None, 400, ("empty",)),
    ("post-metadata", "POST", "/v1/models/foo/metadata", None, 400, ("error", "Malformed request")),
    ("post-label-singular", "POST", "/v1/models/foo/label/some_label:regress", None, 400, ("error", "Malformed")),
    ("post-version-and-label", "POST", "/v1/models/foo/versions/50/labels/some_label:regress", None, 400,
     ("error", "Malformed request")),
    ("post-versions-label", "POST", "/v1/models/foo/versions/some_label:regress", None, 400,
     ("error", "Malformed request")),
    # the route is case-insensitive, the verb and the subresource are compared as written
    ("post-verb-upper-case", "POST", "/v1/models/echo:PREDICT", sig("float", '"instances": [1]'), 400,
     ("error", "Malformed request: POST /v1/models/echo:PREDICT")),
    ("get-metadata-upper-case-is-status", "GET", "/v1/models/default/METADATA", None, 200,
     {"model_version_status": [{"version": "123", "state": "AVAILABLE",
                                "status": {"error_code": "OK", "error_message": ""}}]}),
    ("put", "PUT", D, "{}", 400, ("error", "Malformed request: PUT /v1/models/default")),
    ("delete", "DELETE", D, None, 400, ("error", "Malformed request: DELETE /v1/models/default")),
    # model name and label are percent-decoded once, after the route matched the path as sent
    ("name-encoded-slash", "POST", "/v1/models/a%2Fb:predict", '{"instances": [1]}', 404,
     ("error", "Servable not found for request: Latest(a/b)")),
    ("label-encoded", "POST", D + "/labels/Version%5FLabel:predict", '{"instances": [[1.0]]}', 200,
     {"predictions": [[2.5]]}),
    ("label-decoded-once", "POST", D + "/labels/Version%255FLabel:predict", '{"instances": [[1.0]]}', 400,
     ("error", "Unrecognized servable version label: Version%5FLabel")),
    ("query-string-ignored", "GET", D + "?verbose=1", None, 200,
     {"model_version_status": [{"version": "123", "state": "AVAILABLE",
                                "status": {"error_code": "OK", "error_message": ""}}]}),
    ("route-upper-case", "POST", "/V1/MODELS/default/VERSIONS/00123:predict", '{"instances": [[1.0]]}', 200,
     {"predictions": [[2.5]]}),
    ("trailing-slash", "GET", D + "/", None, 400, ("error", "Malformed request: GET /v1/models/default/")),
    ("patch", "PATCH", D, "{}", 400, ("error", "Malformed request: PATCH /v1/models/default")),
    # ---- PredictModelNameVersionErrors
    ("unknown-model", "POST", "/v1/models/foo:predict", '{ "instances": [1] }', 404, ("error", "Latest(foo)")),
    ("unknown-model-version", "POST", "/v1/models/foo/versions/50:predict", '{ "instances": [1] }', 404,
     ("error", "Specific(foo, 50)")),
    ("unknown-version", "POST", D + "/versions/99:predict", '{ "instances": [1] }', 404,
     ("error", "Specific(default, 99)")),
    # ---- PredictRequestErrors
    ("empty-body", "POST", D + ":predict", "", 400, ("error", "JSON Parse error: The document is empty")),
    ("not-json", "POST", D + ":predict", "instances = [1, 2]", 400,
     ("text", '{\n    "error": "JSON Parse error: Invalid value. at offset: 0"\n}')),
    ("string-for-float", "POST", D + ":predict", '{ "instances": ["x", "y"] }', 400,
     ("error", 'Failed to process element: 0 of \'instances\' list. Error: INVALID_ARGUMENT: JSON Value: "x" '
               "Type: String is not of expected type: float")),
    ("unknown-label", "POST", D + "/labels/Version_Nonexistent:predict", '{ "instances": ["x", "y"] }', 400,
     ("error", "Unrecognized servable version label")),
    ("signature-name-number", "POST", D + ":predict", '{ "signature_name": 100 }', 400,
     ("error", "JSON Value: {\n    \"signature_name\": 100\n} not formatted correctly. 'signature_name' key "
               "must be a string value.")),
    # ---- Predict, Regress, Classify, GetStatus, GetModelMetadata (half_plus_two takes x as [-1, 1])
    ("predict-latest", "POST", D + ":predict", '{"instances": [[1.0], [3.0]]}', 200,
     {"predictions": [[2.5], [3.5]]}),
    ("predict-version", "POST", D + "/versions/123:predict", '{"instances": [[1.0], [2.0]]}', 200,
     {"predictions": [[2.5], [3.0]]}),
    ("predict-label", "POST", D + "/labels/Version_Label:predict", '{"instances": [[1.0], [2.0]]}', 200,
     {"predictions": [[2.5], [3.0]]}),
    ("predict-signature", "POST", D + "/versions/123:predict",
     '{"signature_name": "serving_default", "instances": [[3.0], [4.0]]}', 200, {"predictions": [[3.5], [4.0]]}),
    ("predict-columnar", "POST", D + "/versions/123:predict",
     '{"signature_name": "serving_default", "inputs": [[3.0], [4.0]]}', 200, {"outputs": [[3.5], [4.0]]}),
    ("regress", "POST", D + ":regress", '{"signature_name": "regress_x_to_y", "examples": [ { "x": 80.0 } ] }',
     200, ("text", '{"results": [42.0]}')),
    ("regress-label", "POST", D + "/labels/Version_Label:regress",
     '{"signature_name": "regress_x_to_y", "examples": [ { "x": 80.0 } ] }', 200, {"results": [42.0]}),
    ("classify", "POST", D + ":classify", '{"signature_name": "classify_x_to_y", "examples": [ { "x": 20.0 } ] }',
     200, {"results": [[["", 12.0]]]}),
    ("classify-label", "POST", D + "/labels/Version_Label:classify",
     '{"signature_name": "classify_x_to_y", "examples": [ { "x": 10.0 } ] }', 200, {"results": [[["", 7.0]]]}),
    ("regress-context", "POST", D + ":regress",
     '{"signature_name": "regress_x_to_y", "context": {"x": 80.0}, "examples": [{}, {}]}', 200,
     {"results": [42.0, 42.0]}),
    ("status-label", "GET", D + "/labels/Version_Label", None, 200,
     {"model_version_status": [{"version": "123", "state": "AVAILABLE",
                                "status": {"error_code": "OK", "error_message": ""}}]}),
    # ---- json_tensor_test.cc, request side
    ("single-unnamed-int", "POST", P, sig("int32", '"instances": [[1,2],[3,4],[5,6]]'), 200,
     {"predictions": [[1, 2], [3, 4], [5, 6]]}),
    ("non-null-terminated", "POST", P, sig("int32", '"instances": [[1,2],[3,4],[5,6]]') + "X", 200,
     {"predictions": [[1, 2], [3, 4], [5, 6]]}),
    ("nested-well-formed", "POST", P, sig("int32", '"instances": [1], "nested": ' + NESTED), 200,
     {"predictions": [1]}),
    ("deeply-nested-refused", "POST", P, sig("int32", '"instances": [1], "nested": ' + DEEP), 400,
     ("error", "JSON Parse error: Maximum parse recursion depth exceeded! at offset: ")),
    ("nested-malformed", "POST", P, '{"signature_name": ' + NESTED + "}", 400,
     ("error", "key must be a string value")),
    ("deeply-nested-malformed-refused", "POST", P, '{"signature_name": ' + DEEP + "}", 400,
     ("error", "JSON Parse error: Maximum parse recursion depth exceeded! at offset: ")),
    ("nan-inf-tokens", "POST", P, sig("float", '"inputs": [NaN, Infinity, -Infinity, Inf, -Inf, -NaN]'), 200,
     ("text", '{"outputs": [NaN, Infinity, -Infinity, Infinity, -Infinity, NaN]}')),
    ("mixed-input-float", "POST", P, sig("float", '"instances": [1, 2.0, 3, 4, 5.003, 0.007, 0.0]'), 200,
     ("text", '{"predictions": [1.0, 2.0, 3.0, 4.0, 5.003, 0.007, 0.0]}')),
    ("mixed-input-double", "POST", P, sig("double", '"instances": [1.0, 2, 3, 4, 0.662, 0, 0.0]'), 200,
     {"predictions": [1.0, 2.0, 3.0, 4.0, 0.662, 0.0, 0.0]}),
    ("float-precision-loss", "POST", P, sig("float", '"instances": [1435774380, 1435774380.0]'), 200,
     ("text", '{"predictions": [1.43577434e+09, 1.43577434e+09]}')),
    ("float-beyond-max-is-inf", "POST", P,
     sig("float", '"instances": [1.7976931348623157e308, -1.7976931348623157e308]'), 200,
     ("text", '{"predictions": [Infinity, -Infinity]}')),
    ("float-below-min-is-zero", "POST", P,
     sig("float", '"instances": [2.2250738585072014e-308, -2.2250738585072014e-308]'), 200,
     ("text", '{"predictions": [0.0, -0.0]}')),
    ("b64-scalars", "POST", P, sig("string", '"instances": [ { "b64" : "aGVsbG8=" }, { "b64": "d29ybGQ=" } ]'),
     200, {"predictions": ["hello", "world"]}),
    ("b64-lists", "POST", P, sig("string", '"instances": [ [{ "b64" : "aGVsbG8=" }], [{ "b64": "d29ybGQ=" }] ]'),
     200, {"predictions": [["hello"], ["world"]]}),
    ("b64-named", "POST", P,
     sig("string", '"instances": [{"default": [ [{ "b64" : "aGVsbG8=" }], [{ "b64": "d29ybGQ=" }] ]}]'),
     200, {"predictions": [[["hello"], ["world"]]]}),
    ("multiple-named", "POST", P, sig("multi", '"instances": [{"int_tensor": [[1,2],[3,4],[5,6]], '
                                      '"str_tensor": ["foo", "bar"], "float_tensor": [1.0, NaN], "dbl_tensor": [NaN]},'
                                      ' {"int_tensor": [[7,8],[9,0],[1,2]], "str_tensor": ["baz", "bat"], '
                                      '"float_tensor": [2.0, Infinity], "dbl_tensor": [2.0]}]'), 200,
     ("text", '{"predictions": [{"dbl_tensor": [NaN], "float_tensor": [1.0, NaN], "int_tensor": [[1, 2], [3, 4], '
              '[5, 6]], "str_tensor": ["foo", "bar"]}, {"dbl_tensor": [2.0], "float_tensor": [2.0, Infinity], '
              '"int_tensor": [[7, 8], [9, 0], [1, 2]], "str_tensor": ["baz", "bat"]}]}')),
    ("columnar-named", "POST", P, sig("int32", '"inputs": {"default": [[[1,2],[3,4],[5,6]]]}'), 200,
     {"outputs": [[[1, 2], [3, 4], [5, 6]]]}),
    ("columnar-unnamed", "POST", P, sig("int32", '"inputs": [[[1,2],[3,4],[5,6]]]'), 200,
     {"outputs": [[[1, 2], [3, 4], [5, 6]]]}),
    ("columnar-multiple-named", "POST", P, sig("columnar", '"inputs": {"int_tensor": [[[1,2],[3,4],[5,6]]], '
                                               '"str_tensor": ["foo", "bar"], "bin_tensor": { "b64" : "aGVsbG8=" }}'),
     200, {"outputs": {"bin_tensor": "hello", "int_tensor": [[[1, 2], [3, 4], [5, 6]]], "str_tensor": ["foo", "bar"]}}),
    # SingleUnnamedTensorErrors
    ("signature-name-5", "POST", P, '{"signature_name": 5, "instances": [[1,2],[3,4],[5,6,7]]}', 400,
     ("error", "must be a string value")),
    ("instances-and-inputs", "POST", P, sig("int32", '"instances": [[1,2]], "inputs": [[1,2]]'), 400,
     ("error", "} Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist ")),
    ("ragged-size", "POST", P, sig("int32", '"instances": [[1,2],[3,4],[5,6,7]]'), 400,
     ("error", "Failed to process element: 2 of 'instances' list. Error: INVALID_ARGUMENT: Expecting tensor "
               "size: 2 but got: 3")),
    ("ragged-shape", "POST", P, sig("int32", '"instances": [[1,2],[3,4],[[5,6]]]'), 400,
     ("error", "Expecting shape [2] but got: [1,2]")),
    ("scalar-then-list", "POST", P, sig("int32", '"instances": [1, [1]]'), 400,
     ("error", "Expecting shape [] but got: [1]")),
    ("string-in-int", "POST", P, sig("int32", '"instances": [[1,2],["a", "b"]]'), 400,
     ("error", 'JSON Value: "a" Type: String is not of expected type: int32')),
    ("nested-ragged-level", "POST", P, sig("int32", '"inputs": [[1, 2], 3]'), 400,
     ("error", "JSON Value: 3 found at incorrect level: 2 in the JSON DOM. Expected at level: 2")),
    ("nested-ragged-size", "POST", P, sig("int32", '"inputs": [[1, 2], [3]]'), 400,
     ("error", "Encountered list at unexpected size: 1 at level: 1 expected size: 2")),
    ("nested-too-deep", "POST", P, sig("int32", '"inputs": [1, [2]]'), 400,
     ("error", "Encountered list at unexpected level: 1 expected < 1")),
    # MultipleNamedTensorErrors
    ("named-shape", "POST", P, sig("multi", '"instances": [' + NAMED_4 + ', {"int_tensor": [[[7,8],[9,0],[1,2]]], '
                                   '"str_tensor": ["baz", "bat"], "float_tensor": [1.0], "dbl_tensor": [1.0]}]'),
     400, ("error", "Failed to process element: 1 key: int_tensor of 'instances' list. Error: INVALID_ARGUMENT: "
                    "Expecting shape [3,2] but got: [1,3,2]")),
    ("named-size", "POST", P, sig("multi", '"instances": [' + NAMED_4 + ', {"int_tensor": [[7,8],[9,0]], '
                                  '"str_tensor": ["baz", "bat"], "float_tensor": [1.0], "dbl_tensor": [1.0]}]'),
     400, ("error", "Expecting tensor size: 6 but got: 4")),
    ("object-then-list", "POST", P, sig("multi", '"instances": [' + NAMED_4 + ', [1, 20, 30]]'), 400,
     ("error", "Expecting object but got list at item 1 of input list")),
    ("list-then-object", "POST", P, sig("string", '"instances": [["baz", "bar"], {"default": ["baz", "bat"]}]'),
     400, ("error", "Expecting value/list but got object at item 1 of input list")),
    ("named-unknown-key", "POST", P, sig("multi", '"instances": [{"int_tensor": 1, "str_tensor": "a", '
                                         '"float_tensor": 1, "dbl_tensor": 1, "extra": 1}]'), 400,
     ("error", "Failed to process element: 0 key: extra of 'instances' list. Error: INVALID_ARGUMENT: JSON object: "
               "does not have named input: extra")),
    ("named-missing-key", "POST", P, sig("multi", '"instances": [{"int_tensor": 1, "str_tensor": "a", '
                                         '"float_tensor": 1}]'), 400,
     ("error", "keys must be equal to: dbl_tensor,float_tensor,int_tensor,str_tensor")),
    # AddValueToTensor's type rules
    ("float-for-int32", "POST", P, sig("int32", '"instances": [1.5]'), 400,
     ("error", "JSON Value: 1.5 Type: Number is not of expected type: int32")),
    ("whole-float-for-int32", "POST", P, sig("int32", '"instances": [1.0]'), 400,
     ("error", "JSON Value: 1.0 Type: Number is not of expected type: int32")),
    ("bool-for-int32", "POST", P, sig("int32", '"instances": [true]'), 400,
     ("error", "JSON Value: true Type: True is not of expected type: int32")),
    ("int32-overflow", "POST", P, sig("int32", '"instances": [3000000000]'), 400,
     ("error", "JSON Value: 3000000000 Type: Number is not of expected type: int32")),
    ("quote-stops-at-nan", "POST", P, '{"instances": [NaN, 1], "inputs": [1]}', 400,
     ("error", 'JSON Value: {\n    "instances": [ Not formatted correctly expecting only one of')),
    ("unconvertible-dtype-columnar", "POST", P, sig("half_in", '"inputs": [1.0]'), 501,
     ("error", "Conversion of JSON Value: 1.0 to type: half")),
    ("unconvertible-dtype-row", "POST", P, sig("half_in", '"instances": [1.0]'), 400,
     ("error", "Failed to process element: 0 of 'instances' list. Error: UNIMPLEMENTED: Conversion of JSON Value: "
               "1.0 to type: half")),
    ("int64-limits", "POST", P, sig("int64", '"instances": [9223372036854775807, -9223372036854775808]'), 200,
     {"predictions": [9223372036854775807, -9223372036854775808]}),
    ("int64-overflow", "POST", P, sig("int64", '"instances": [9223372036854775808]'), 400,
     ("error", "Type: Number is not of expected type: int64")),
    ("uint8-casts-as-int-val", "POST", P, sig("uint8", '"instances": [300, -1]'), 200, {"predictions": [44, 255]}),
    ("number-for-bool", "POST", P, sig("bool", '"instances": [1, 0]'), 400,
     ("error", "JSON Value: 1 Type: Number is not of expected type: bool")),
    ("bool", "POST", P, sig("bool", '"instances": [true, false]'), 200, {"predictions": [True, False]}),
    ("bool-for-float", "POST", P, sig("float", '"instances": [false]'), 400,
     ("error", "JSON Value: false Type: False is not of expected type: float")),
    ("null-for-float", "POST", P, sig("float", '"instances": [null]'), 400,
     ("error", "JSON Value: null Type: Null is not of expected type: float")),
    ("string-for-float-column", "POST", P, sig("float", '"inputs": ["1.5"]'), 400,
     ("text", '{\n    "error": "JSON Value: \\"1.5\\" Type: String is not of expected type: float"\n}')),
    ("number-for-string", "POST", P, sig("string", '"inputs": [1]'), 400,
     ("error", "JSON Value: 1 Type: Number is not of expected type: string")),
    ("object-for-string", "POST", P, sig("string", '"inputs": [{"b64": 5}]'), 400,
     ("error", 'JSON Value: {\n    "b64": 5\n} not formatted correctly for base64 data')),
    ("bad-base64", "POST", P, sig("string", '"inputs": [{"b64": "!!!"}]'), 400, ("error", "Unable to base64 decode")),
    ("base64-as-absl-reads-it", "POST", P,
     sig("string", '"inputs": [{"b64": "aGVsbG8"}, {"b64": "aGVs\\nbG8="}, {"b64": "aGVsbG8."}, {"b64": "dGY"}]'),
     200, {"outputs": ["hello", "hello", "hello", "tf"]}),
    ("base64-too-much-padding", "POST", P, sig("string", '"inputs": [{"b64": "aGVsbG8=="}]'), 400,
     ("error", "Unable to base64 decode")),
    ("b64-for-float", "POST", P, sig("float", '"inputs": {"b64": "aGVsbG8="}'), 400,
     ("error", 'JSON Value: {\n    "b64": "aGVsbG8="\n} Type: Object is not of expected type: float')),
    ("unicode-string", "POST", P, sig("string", '"inputs": ["caf\\u00e9", "\\ud83d\\ude00"]'), 200,
     {"outputs": ["café", "\U0001f600"]}),
    ("empty-list", "POST", P, sig("float", '"instances": [[]]'), 200, {"predictions": [[]]}),
    # request-level checks
    ("instances-not-list", "POST", P, sig("float", '"instances": {"a": 1}'), 400,
     ("error", "} Expecting 'instances' to be an list/array")),
    ("instances-empty", "POST", P, sig("float", '"instances": []'), 400, ("error", "} No values in 'instances' array")),
    ("unknown-signature", "POST", P, sig("nope", '"instances": [1]'), 400,
     ("error", 'Serving signature name: "nope" not found in signature def')),
    ("signature-without-inputs", "POST", P, sig("noinputs", '"instances": [1]'), 400,
     ("error", "Failed to get input map for signature: noinputs")),
    ("duplicate-key-first-wins", "POST", P, '{"signature_name": "float", "inputs": [1.5], "inputs": ["x"], '
     '"signature_name": "nope"}', 200, {"outputs": [1.5]}),
    ("empty-signature-name-is-default", "POST", P, '{"signature_name": "", "instances": [1.5]}', 200,
     {"predictions": [1.5]}),
    ("inputs-extra-keys-ignored", "POST", P, sig("float", '"inputs": {"default": [1.5], "extra": "x"}'), 200,
     {"outputs": [1.5]}),
    ("whitespace-body", "POST", P, "  \n ", 400, ("error", "JSON Parse error: The document is empty. at offset: 4")),
    ("no-instances-no-inputs", "POST", P, sig("float", '"x": 1'), 400, ("error", "Missing 'inputs' or 'instances' key")),
    ("top-level-array", "POST", P, "[1,2]", 400, ("text", '{\n    "error": "JSON Value: [1, 2] Is not object"\n}')),
    ("plain-instances-many-inputs", "POST", P, sig("multi", '"instances": [1]'), 400,
     ("error", "instances is a plain list, but expecting list of objects as multiple input tensors")),
    ("plain-inputs-many-inputs", "POST", P, sig("multi", '"inputs": [1]'), 400,
     ("error", "inputs is a plain value/list, but expecting an object as multiple input tensors")),
    ("inputs-missing-name", "POST", P, sig("multi", '"inputs": {"int_tensor": 1}'), 400,
     ("error", "Missing named input: dbl_tensor in 'inputs' object.")),
    ("parse-missing-bracket", "POST", P, sig("float", '"instances": [1, 2'), 400,
     ("error", "JSON Parse error: Missing a comma or ']' after an array element.")),
    ("parse-missing-comma", "POST", P, '{"signature_name": "float" "instances": [1]}', 400,
     ("error", "JSON Parse error: Missing a comma or '}' after an object member. at offset: 27")),
    ("parse-fraction-without-digits", "POST", P, sig("float", '"inputs": [1.]'), 400,
     ("error", "JSON Parse error: Miss fraction part in number. at offset: 41")),
    ("parse-exponent-without-digits", "POST", P, sig("float", '"inputs": [1e+]'), 400,
     ("error", "JSON Parse error: Miss exponent in number. at offset: 42")),
    ("parse-integer-too-big", "POST", P, sig("float", '"inputs": [1' + "0" * 400 + "]"), 400,
     ("error", "JSON Parse error: Number too big to be stored in double.")),
    ("parse-exponent-too-big", "POST", P, sig("float", '"inputs": [1e400]'), 400,
     ("error", "JSON Parse error: Number too big to be stored in double. at offset: 39")),
    ("feature-integer-too-big", "POST", D + ":regress", '{"examples": [{"x": 1' + "0" * 400 + "}]}", 400,
     ("error", "JSON Parse error: Number too big to be stored in double.")),
    # ---- json_tensor_test.cc, response side
    ("bytes-outputs-b64", "POST", P, sig("bytes", '"instances": [["hello", "world"], ["tf", "serving"]]'), 200,
     {"predictions": [{"str_tensor": ["hello", "world"], "str_tensor_bytes": [{"b64": "aGVsbG8="}, {"b64": "d29ybGQ="}]},
                      {"str_tensor": ["tf", "serving"], "str_tensor_bytes": [{"b64": "dGY="}, {"b64": "c2VydmluZw=="}]}]}),
    ("bytes-outputs-columnar", "POST", P, sig("bytes", '"inputs": ["hello"]'), 200,
     {"outputs": {"str_tensor": ["hello"], "str_tensor_bytes": [{"b64": "aGVsbG8="}]}}),
    ("six-digit-precision", "POST", P,
     sig("float", '"instances": [[9000000, 999999, 0.5], [0.0003, 0.00003, 555557.5]]'), 200,
     ("text", '{"predictions": [[9e+06, 999999.0, 0.5], [0.0003, 3e-05, 555557.5]]}')),
    ("float-full-precision", "POST", P, sig("float", '"inputs": [0.1, 0.333333333]'), 200,
     ("text", '{"outputs": [0.1, 0.333333343]}')),
    ("double-precision", "POST", P, sig("double", '"inputs": [0.1, 0.333333333333333333]'), 200,
     ("text", '{"outputs": [0.1, 0.33333333333333331]}')),
    ("non-finite", "POST", P, sig("float", '"instances": [[NaN, Infinity], [3, -Infinity]]'), 200,
     ("text", '{"predictions": [[NaN, Infinity], [3.0, -Infinity]]}')),
    ("no-shape-information", "POST", P, sig("scalar", '"instances": [1.0, 2.0]'), 400,
     ("error", "Tensor name: y has no shape information")),
    ("scalar-columnar", "POST", P, sig("scalar", '"inputs": [1.0, 2.0]'), 200, ("text", '{"outputs": 3.0}')),
    ("inconsistent-batch-size", "POST", P, sig("batch_mismatch", '"instances": [1.0, 2.0]'), 400,
     ("error", "Tensor name: b has inconsistent batch size: 4 expecting: 2")),
    ("inconsistent-batch-columnar", "POST", P, sig("batch_mismatch", '"inputs": [1.0, 2.0]'), 200,
     {"outputs": {"a": [1.0, 2.0], "b": [1.0, 2.0, 1.0, 2.0]}}),
    ("complex-output", "POST", P, sig("complex", '"inputs": [1.0]'), 400,
     ("error", "Failed to write JSON value for tensor type: complex64")),
    ("half-output", "POST", P, sig("half", '"inputs": [1.0]'), 400,
     ("error", "Failed to write JSON value for tensor type: half")),
    # ---- json_tensor_test.cc ClassifyRegressRequestTest JsonErrors
    ("examples-signature-list", "POST", D + ":regress",
     '{"signature_name": [ "hello" ], "examples": [ { "names": [ "foo", "bar" ] } ]}', 400,
     ("error", "'signature_name' key must be a string")),
    ("context-not-object", "POST", D + ":regress", '{"context": [ { "names": [ "foo", "bar" ] } ]}', 400,
     ("error", "Example must be JSON object but got JSON Array")),
    ("examples-not-list", "POST", D + ":classify", '{"examples": { "names": [ "foo", "bar" ] }}', 400,
     ("error", "list/array")),
    ("example-not-object", "POST", D + ":regress", '{"examples": [ [ { "names": [ "foo", "bar" ] } ] ]}', 400,
     ("error", "Example must be JSON object but got JSON Array")),
    ("feature-null", "POST", D + ":regress", '{"examples": [ { "names": [ 10, null ] } ]}', 400,
     ("error", "names has element with unexpected JSON type: Null")),
    ("feature-int-then-float", "POST", D + ":regress", '{"examples": [ { "names": [ 10, 10.0 ] } ]}', 400,
     ("error", "feature: names expecting type: int64")),
    ("feature-object", "POST", D + ":regress", '{"examples": [ { "names": [ 10, { "test": 10 } ] } ]}', 400,
     ("error", "names has element with unexpected JSON type: Object")),
    ("feature-array", "POST", D + ":regress", '{"examples": [ { "names": [ [10], 20 ] } ]}', 400,
     ("error", "names has element with unexpected JSON type: Array")),
    ("feature-uint64", "POST", D + ":regress", '{"examples": [ { "names": [ 20, 18446744073709551603 ] } ]}', 400,
     ("error", "Only int64_t is supported")),
    ("regress-no-examples", "POST", D + ":regress", '{"signature_name": "regress_x_to_y"}', 400,
     ("error", "When method is classify, key 'examples' is expected and was not found")),
    ("regress-empty-examples", "POST", D + ":regress", '{"examples": []}', 400,
     ("error", "'examples' value is an empty array")),
    # ---- http_server.cc: a CORS preflight is answered without a body
    ("options-no-origin", "OPTIONS", D, None, 400, ("empty",)),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "expected"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_rest_answers_as_tf_serving(rest, method, path, body, status, expected):
    got_status, text = _call(method, rest + path, body)
    assert got_status == status, text
    if isinstance(expected, tuple) and expected[0] == "error":
        answer = _json(text)
        assert set(answer) == {"error"} and expected[1] in answer["error"], answer
    elif isinstance(expected, tuple) and expected[0] == "text":
        assert text == expected[1]
    elif isinstance(expected, tuple):
        assert text == ""
    else:
        assert _json(text) == expected


def test_cors_preflight_with_origin_is_ok(rest):
    assert _call("OPTIONS", rest + D, headers={"Origin": "http://example.com"}) == (200, "")


def test_non_utf8_json_is_refused_and_string_outputs_come_back_byte_for_byte(rest):
    """JSON text is UTF-8 (RFC 8259): a string that is not is refused with rapidjson's encoding error (TF
    Serving, which does not validate, would feed its bytes: a deliberate difference, README); binary values
    travel as `{"b64": ...}`, and a string output (not `*_bytes`) is written back byte for byte, non-ASCII
    unescaped."""
    bad = b'{"signature_name": "bytes", "instances": ["\xff\xfe"]}'
    status, text = _call("POST", rest + P, bad)
    assert status == 400 and _json(text) == {"error": "JSON Parse error: Invalid encoding in string. at offset: 43"}
    body = b'{"signature_name": "bytes", "instances": [{"b64": "//4="}, "' + "café".encode() + b'"]}'
    request = urllib.request.Request(rest + P, data=body, method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        raw = response.read()
    assert b'"str_tensor": "\xff\xfe"' in raw and '"str_tensor": "café"'.encode() in raw
    assert b'"str_tensor_bytes": {"b64": "//4="}' in raw


def _request_counts(rest: str) -> dict[str, float]:
    page = _call("GET", rest + "/monitoring/prometheus/metrics")[1]
    prefix = ":tensorflow:serving:request_count"
    return {line[len(prefix):].rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in page.splitlines() if line.startswith(prefix + "{")}


def test_every_rest_request_is_counted_by_its_status(rest):
    """http_server.cc RecordModelRequestCount: every REST request, by the model name of its URL ("" when
    the route does not match) and the status it was answered with, also when it fails before the model and
    when the model ran but its answer cannot be written as JSON (a scalar output in the row format)."""
    before = _request_counts(rest)
    for method, path, body in [("POST", D + ":predict", "instances = [1, 2]"),
                               ("POST", D + ":predict", '{"instances": ["x"]}'),
                               ("GET", "/v1/models/default/versions/18446744073709551615", None),
                               ("GET", "/v1/foo", None), ("OPTIONS", D, None),
                               ("POST", D + ":predict", '{"instances": [[1.0]]}'),
                               ("POST", P, sig("scalar", '"instances": [1.0, 2.0]'))]:
        _call(method, rest + path, body)
    after = _request_counts(rest)
    grown = {key: after[key] - before.get(key, 0) for key in after if after[key] != before.get(key, 0)}
    assert grown == {'{model_name="default",status="INVALID_ARGUMENT"}': 3,
                     '{model_name="",status="INVALID_ARGUMENT"}': 1,
                     '{model_name="",status="FAILED_PRECONDITION"}': 1,
                     '{model_name="default",status="OK"}': 1,
                     '{model_name="echo",status="INVALID_ARGUMENT"}': 1}
