"""numpy <-> `tensorflow.TensorProto`, without TensorFlow, with the declared size checked first.

Client and server share this codec. It follows TensorFlow's own rules (`Tensor::FromProto`,
`Tensor::AsProtoField`): numeric data either packed in `tensor_content` or in the typed `*_val` field,
strings in `string_val`; a typed field (strings included) with fewer values than the shape holds is
filled with its last value (so `[1e9]` floats can be declared with one value), one with none with zeros
or empty strings, and one with more is cut to the shape (tensor.cc FromProtoField).

Why check before building: a request is small on the wire but may *declare* a huge tensor (shape
`[1000000000]` with one value, or a broadcast fill). The element count and byte size are computed from
the declared shape and compared with `max_bytes` before any array is allocated: a hostile request costs
the server nothing but an INVALID_ARGUMENT / RESOURCE_EXHAUSTED answer.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from serving.status import ServingStatus, invalid_argument


class _DType(NamedTuple):
    name: str  # TensorFlow's short name, as its error messages print it
    numpy: Any
    field: str  # the TensorProto's typed value field


# DataType enum values (tensorflow/core/framework/types.proto).
_DTYPES: dict[int, _DType] = {
    1: _DType("float", np.float32, "float_val"),
    2: _DType("double", np.float64, "double_val"),
    3: _DType("int32", np.int32, "int_val"),
    4: _DType("uint8", np.uint8, "int_val"),
    5: _DType("int16", np.int16, "int_val"),
    6: _DType("int8", np.int8, "int_val"),
    7: _DType("string", object, "string_val"),
    8: _DType("complex64", np.complex64, "scomplex_val"),
    9: _DType("int64", np.int64, "int64_val"),
    10: _DType("bool", np.bool_, "bool_val"),
    17: _DType("uint16", np.uint16, "int_val"),
    18: _DType("complex128", np.complex128, "dcomplex_val"),
    19: _DType("half", np.float16, "half_val"),
    22: _DType("uint32", np.uint32, "uint32_val"),
    23: _DType("uint64", np.uint64, "uint64_val"),
}
_BY_NUMPY = {np.dtype(d.numpy): code for code, d in _DTYPES.items() if d.numpy is not object}
DT_STRING = 7
DT_FLOAT = 1

DTYPE_NAMES = {code: d.name for code, d in _DTYPES.items()} | {14: "bfloat16"}  # bfloat16: named, not decoded


def dtype_name(code: int) -> str:
    """TensorFlow's short name (`float`, `string`), as its error messages print it."""
    return DTYPE_NAMES.get(int(code), f"type{int(code)}")


def numpy_dtype(code: int) -> Any:
    if int(code) not in _DTYPES:
        raise invalid_argument(f"tensor dtype {dtype_name(code)} is not supported")
    return _DTYPES[int(code)].numpy


def numeric_dtype(code: int) -> np.dtype | None:
    """The numpy dtype of a numeric DataType (packable in `tensor_content`); None for strings and others."""
    entry = _DTYPES.get(int(code))
    return None if entry is None or entry.numpy is object else np.dtype(entry.numpy)


def declared_shape(proto: Any, name: str) -> tuple[int, ...]:
    """The shape a TensorProto declares; `unknown_rank` is ignored, as `TensorShape(proto)` ignores it."""
    shape = proto.tensor_shape
    dims = tuple(int(d.size) for d in shape.dim)
    if any(d < 0 for d in dims):
        raise invalid_argument(f"tensor parsing error: {name} (negative dimension in {list(dims)})")
    return dims


def declared_bytes(proto: Any, dims: tuple[int, ...]) -> int:
    """The bytes a TensorProto of shape `dims` fills once parsed: its element count times the item size, or
    for strings their lengths, the missing ones copies of the last one sent, each at least 1 byte."""
    count = math.prod(dims)
    dtype = numpy_dtype(proto.dtype)
    if dtype is not object:
        return count * np.dtype(dtype).itemsize
    strings = proto.string_val
    filled = max(0, count - len(strings)) * (len(strings[-1]) if strings else 0)
    return max(count, sum(len(v) for v in strings[:count]) + filled)


def check_declared_size(proto: Any, name: str, max_bytes: int) -> tuple[int, ...]:
    """The declared shape, once what it declares fits `max_bytes` (RESOURCE_EXHAUSTED otherwise) and the
    proto parses as `Tensor::FromProto` parses it (INVALID_ARGUMENT otherwise). Nothing is allocated."""
    code = int(proto.dtype)
    if code == 0:  # DT_INVALID: Tensor::FromProto fails
        raise invalid_argument(f"tensor parsing error: {name} (no dtype)")
    dims = declared_shape(proto, name)
    size = declared_bytes(proto, dims)
    if size > max_bytes:
        raise ServingStatus(
            "RESOURCE_EXHAUSTED",
            f"tensor {name} declares shape {list(dims)} ({size} bytes), above the limit of "
            f"{max_bytes} bytes")
    if numpy_dtype(code) is object and proto.tensor_content:  # TensorFlow's own string encoding: not read here
        raise invalid_argument(f"tensor parsing error: {name} (strings in tensor_content are not supported; "
                               "send them in string_val)")
    if numpy_dtype(code) is not object and proto.tensor_content and len(proto.tensor_content) != size:
        raise invalid_argument(
            f"tensor parsing error: {name} (tensor_content has {len(proto.tensor_content)} bytes, "
            f"shape {list(dims)} of {dtype_name(code)} needs {size})")
    return dims


def to_array(proto: Any, name: str, max_bytes: int) -> np.ndarray:
    """A TensorProto as a numpy array, refused before allocation when it declares too much."""
    dims = check_declared_size(proto, name, max_bytes)
    code = int(proto.dtype)
    _, dtype, field = _DTYPES[code]
    count = math.prod(dims)
    if dtype is object:
        strings = list(proto.string_val[:count])
        array = np.empty(count, dtype=object)
        array[:len(strings)] = strings
        array[len(strings):] = strings[-1] if strings else b""
        return array.reshape(dims)
    if proto.tensor_content:
        return np.frombuffer(proto.tensor_content, dtype=dtype).reshape(dims).copy()
    values = getattr(proto, field)
    if field == "half_val":
        flat = np.asarray(values, dtype=np.uint16).view(np.float16)
    elif field in ("scomplex_val", "dcomplex_val"):
        pairs = np.asarray(values, dtype=np.float32 if dtype == np.complex64 else np.float64)
        flat = pairs.view(dtype)
    else:
        flat = np.asarray(values, dtype=dtype)
    if flat.size >= count:
        return flat[:count].reshape(dims)
    full = np.zeros(count, dtype=dtype)  # TensorFlow's rule: the last value fills the rest
    full[:flat.size] = flat
    if flat.size:
        full[flat.size:] = flat[-1]
    return full.reshape(dims)


def dtype_of(array: np.ndarray) -> int:
    if array.dtype == object or array.dtype.kind in ("S", "U"):
        return DT_STRING
    if array.dtype not in _BY_NUMPY:
        raise invalid_argument(f"numpy dtype {array.dtype} has no TensorFlow equivalent here")
    return _BY_NUMPY[array.dtype]


def from_array(value: Any, proto: Any = None, as_content: bool = True) -> Any:
    """numpy (or nested lists, bytes, str) -> TensorProto. `as_content=False` fills the typed `*_val`
    field, as TF Serving's responses do by default (`Tensor::AsProtoField`)."""
    array = value if isinstance(value, np.ndarray) else np.asarray(value)
    if proto is None:
        from serving import protos

        protos.load()
        from tensorflow.core.framework import tensor_pb2

        proto = tensor_pb2.TensorProto()
    code = dtype_of(array)
    proto.dtype = code
    for size in array.shape:
        proto.tensor_shape.dim.add().size = int(size)
    if code == DT_STRING:
        proto.string_val.extend(_as_bytes(v) for v in array.ravel().tolist())
        return proto
    flat = np.ascontiguousarray(array)
    if as_content:
        proto.tensor_content = flat.tobytes()
        return proto
    field = _DTYPES[code].field
    packed = _PACKED_FIXED.get(field)
    if packed is not None and flat.size:
        # float_val / double_val are packed fixed-width fields: their wire bytes are the little-endian values,
        # so the field is merged from those bytes instead of appending Python floats one by one.
        data = flat.astype(packed[1], copy=False).tobytes()
        proto.MergeFromString(b"".join((packed[0], _varint(len(data)), data)))
    elif field == "half_val":
        getattr(proto, field).extend(flat.ravel().view(np.uint16).tolist())
    elif field in ("scomplex_val", "dcomplex_val"):
        getattr(proto, field).extend(flat.ravel().view(flat.real.dtype).tolist())
    else:
        getattr(proto, field).extend(flat.ravel().tolist())
    return proto


# Typed fields whose packed encoding is the raw little-endian values: field -> (wire tag, numpy dtype).
_PACKED_FIXED = {"float_val": (bytes([5 << 3 | 2]), np.dtype("<f4")),  # TensorProto.float_val = 5
                 "double_val": (bytes([6 << 3 | 2]), np.dtype("<f8"))}  # TensorProto.double_val = 6


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    return str(value).encode("utf-8")
