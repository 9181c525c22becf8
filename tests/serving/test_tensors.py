"""The TensorProto codec's typed-field fast path writes exactly what appending the values would."""

from __future__ import annotations

import numpy as np
import pytest

from serving import protos, tensors


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1,), (3, 2), (1, 40000), (0, 4)])
def test_typed_float_fields_match_value_by_value_encoding(dtype, shape):
    protos.load()
    from tensorflow.core.framework import tensor_pb2

    rng = np.random.default_rng(0)
    values = rng.normal(0, 1e3, shape).astype(dtype)
    if values.size >= 4:
        values.flat[:4] = [np.nan, np.inf, -0.0, -np.inf]
    fast = tensors.from_array(values, as_content=False)
    slow = tensor_pb2.TensorProto(dtype=fast.dtype, tensor_shape=fast.tensor_shape)
    getattr(slow, "float_val" if dtype == np.float32 else "double_val").extend(values.ravel().tolist())
    assert fast.SerializeToString() == slow.SerializeToString()
    assert not fast.tensor_content
    back = tensors.to_array(fast, "x", 1 << 30)
    assert back.dtype == dtype and back.shape == shape
    np.testing.assert_array_equal(back, values)


@pytest.mark.parametrize(
    ("field", "dtype", "values", "shape", "expected"),
    [
        ("float_val", 1, [1.0, 2.0], (3,), [1.0, 2.0, 2.0]),  # fewer: the last value fills the rest
        ("float_val", 1, [], (2,), [0.0, 0.0]),  # none: zeros
        ("float_val", 1, [1.0, 2.0, 3.0], (2,), [1.0, 2.0]),  # more: cut to the shape
        ("string_val", 7, [b"a"], (3,), [b"a", b"a", b"a"]),
        ("string_val", 7, [], (2,), [b"", b""]),
        ("string_val", 7, [b"a", b"b", b"c"], (2,), [b"a", b"b"]),
    ],
)
def test_typed_fields_parse_as_tensorflow_from_proto(field, dtype, values, shape, expected):
    """tensor.cc FromProtoField: what TF Serving feeds for a typed field that does not match its shape."""
    protos.load()
    from tensorflow.core.framework import tensor_pb2

    proto = tensor_pb2.TensorProto(dtype=dtype)
    getattr(proto, field).extend(values)
    for size in shape:
        proto.tensor_shape.dim.add().size = size
    assert tensors.to_array(proto, "x", 1 << 30).tolist() == expected


def test_strings_filled_from_the_last_count_against_the_limit():
    protos.load()
    from tensorflow.core.framework import tensor_pb2

    proto = tensor_pb2.TensorProto(dtype=7, string_val=[b"x" * 1000])
    proto.tensor_shape.dim.add().size = 1_000_000  # one 1 kB string declared a million times: 1 GB
    with pytest.raises(tensors.ServingStatus) as err:
        tensors.check_declared_size(proto, "s", 1 << 20)
    assert err.value.code_name == "RESOURCE_EXHAUSTED"
