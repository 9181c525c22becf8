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
