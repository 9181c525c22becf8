"""Predict's common path (`PredictPlan.arrays`) builds exactly what the general checks build, and leaves
every request it does not recognise to them, so TF Serving's answers (and its leniencies) stay theirs."""

from __future__ import annotations

import numpy as np
import pytest

from serving import inference, protos, tensors
from serving.status import ServingStatus


def _signature(inputs: dict[str, tuple[int, list[int] | None]]):
    protos.load()
    from tensorflow.core.protobuf import meta_graph_pb2

    signature = meta_graph_pb2.SignatureDef()
    for alias, (dtype, dims) in inputs.items():
        info = signature.inputs[alias]
        info.name, info.dtype = f"{alias}:0", dtype
        if dims is None:
            info.tensor_shape.unknown_rank = True
        for size in dims or []:
            info.tensor_shape.dim.add().size = size
    signature.outputs["y"].name = "y:0"
    return signature


def _request(**arrays):
    protos.load()
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    for alias, (value, as_content) in arrays.items():
        tensors.from_array(value, request.inputs[alias], as_content=as_content)
    return request


def _general(signature, request, max_bytes):
    try:
        return inference.predict_inputs(signature, request.inputs, max_bytes)
    except ServingStatus as exc:
        return exc.code_name


F32, I64, STRING = 1, 9, 7
MATRIX = np.arange(8, dtype=np.float32).reshape(2, 4)


@pytest.mark.parametrize(("inputs", "arrays", "fast"), [
    ({"x": (F32, [-1, 4])}, {"x": (MATRIX, True)}, True),
    ({"x": (F32, None)}, {"x": (MATRIX, True)}, True),
    ({"a": (F32, [-1, 4]), "b": (I64, [-1])}, {"a": (MATRIX, True), "b": (np.arange(2), True)}, True),
    ({"x": (F32, [-1, 4])}, {"x": (MATRIX, False)}, False),  # typed float_val: the general path
    ({"x": (F32, [-1, 1])}, {"x": (np.ones(3, np.float32), True)}, False),  # TF Serving's [n] for [?,1]
    ({"x": (F32, [-1, 4])}, {"x": (MATRIX.astype(np.float64), True)}, False),  # wrong dtype
    ({"x": (F32, [-1, 5])}, {"x": (MATRIX, True)}, False),  # wrong shape
    ({"x": (F32, [-1, 4])}, {"x": (MATRIX, True), "z": (MATRIX, True)}, False),  # extra input
    ({"a": (F32, [-1, 4]), "b": (F32, [-1, 4])}, {"a": (MATRIX, True)}, False),  # missing input
    ({"x": (F32, [-1, 4])}, {"x": (np.zeros((0, 4), np.float32), True)}, False),  # empty
    ({"s": (STRING, [-1])}, {"s": (np.array([b"a"], object), True)}, False),  # strings
])
def test_common_path_matches_the_general_checks(inputs, arrays, fast):
    signature = _signature(inputs)
    request = _request(**arrays)
    plan = inference.PredictPlan(signature)
    got = plan.arrays(request.inputs, 1 << 30)
    want = _general(signature, request, 1 << 30)
    assert (got is not None) == fast
    if got is not None:
        assert sorted(got) == sorted(want)
        for alias, array in got.items():
            assert array.dtype == want[alias].dtype and array.shape == want[alias].shape
            np.testing.assert_array_equal(array, want[alias])


def test_common_path_leaves_oversized_and_inconsistent_tensors_to_the_general_checks():
    signature = _signature({"x": (F32, [-1, 4])})
    plan = inference.PredictPlan(signature)
    request = _request(x=(MATRIX, True))
    assert plan.arrays(request.inputs, MATRIX.nbytes - 1) is None
    assert _general(signature, request, MATRIX.nbytes - 1) == "RESOURCE_EXHAUSTED"
    request.inputs["x"].tensor_shape.dim[0].size = 3  # declares 12 values, sends 8
    assert plan.arrays(request.inputs, 1 << 30) is None
    assert _general(signature, request, 1 << 30) == "INVALID_ARGUMENT"
    request.inputs["x"].tensor_shape.dim[0].size = -2
    assert plan.arrays(request.inputs, 1 << 30) is None
    assert _general(signature, request, 1 << 30) == "INVALID_ARGUMENT"
