"""`tf.train.Example` and TFRecord encoding in plain Python, so Beam workers never import TensorFlow.

Importing TensorFlow costs ~12 s per worker process and a few hundred MB; the Example proto is a tiny,
stable wire format (three nested length-delimited messages), so it is written here directly. The output
is byte-compatible with `tf.train.Example.SerializeToString()`; `tf.data.TFRecordDataset` +
`tf.io.parse_single_example` read it (checked in the slow tests). The reader below is for tests and tools
that inspect shards without TensorFlow.
"""

from __future__ import annotations

import gzip
import struct
from collections.abc import Iterator, Mapping

FeatureValue = bytes | str | int | list[int] | list[bytes]


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64 -> two's complement, as protobuf does
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint((number << 3) | 2) + _varint(len(payload)) + payload


def _feature(value: FeatureValue) -> bytes:
    if isinstance(value, str):
        value = value.encode("utf-8")
    if isinstance(value, bytes):
        return _field(1, _field(1, value))  # bytes_list
    if isinstance(value, bool | int):
        value = [int(value)]
    if isinstance(value, list) and all(isinstance(v, bytes) for v in value) and value:
        return _field(1, b"".join(_field(1, v) for v in value))
    if isinstance(value, list):
        packed = b"".join(_varint(int(v)) for v in value)
        return _field(3, _field(1, packed))  # int64_list, packed
    raise TypeError(f"unsupported feature value type {type(value).__name__}")


def encode_example(features: Mapping[str, FeatureValue]) -> bytes:
    """Serialize a tf.train.Example: str/bytes -> bytes_list, int/list[int] -> int64_list."""
    entries = b"".join(
        _field(1, _field(1, key.encode("utf-8")) + _field(2, _feature(value)))
        for key, value in sorted(features.items())
    )
    return _field(1, entries)


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes) -> Iterator[tuple[int, int, bytes | int]]:
    pos = 0
    while pos < len(buf):
        tag, pos = _read_varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 2:
            length, pos = _read_varint(buf, pos)
            yield number, wire, buf[pos : pos + length]
            pos += length
        elif wire == 0:
            value, pos = _read_varint(buf, pos)
            yield number, wire, value
        elif wire == 5:
            yield number, wire, buf[pos : pos + 4]
            pos += 4
        elif wire == 1:
            yield number, wire, buf[pos : pos + 8]
            pos += 8
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")


def parse_example(data: bytes) -> dict[str, list[bytes] | list[int] | list[float]]:
    """A serialized tf.train.Example -> {name: list of values} (bytes, int64 or float32)."""
    out: dict[str, list] = {}
    for number, _, features in _fields(data):
        if number != 1:
            continue
        for _, _, entry in _fields(features):  # map entries
            key, feature = b"", b""
            for n, _, v in _fields(entry):
                if n == 1:
                    key = v
                elif n == 2:
                    feature = v
            values: list = []
            for kind, _, payload in _fields(feature):
                for _, wire, v in _fields(payload):
                    if kind == 1:
                        values.append(v)
                    elif kind == 3:
                        if wire == 0:
                            values.append(v - (1 << 64) if v >= 1 << 63 else v)
                        else:  # packed
                            pos = 0
                            while pos < len(v):
                                x, pos = _read_varint(v, pos)
                                values.append(x - (1 << 64) if x >= 1 << 63 else x)
                    elif kind == 2:
                        values.extend(struct.unpack(f"<{len(v) // 4}f", v) if wire == 2 else struct.unpack("<f", v))
            out[key.decode("utf-8")] = values
    return out


def iter_tfrecords(data: bytes) -> Iterator[bytes]:
    """Records of one TFRecord file's contents (gzip detected from the magic bytes); CRCs are not checked."""
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    pos = 0
    while pos < len(data):
        if pos + 12 > len(data):
            raise ValueError("truncated TFRecord (incomplete length header)")
        (length,) = struct.unpack("<Q", data[pos : pos + 8])
        start = pos + 12
        if start + length + 4 > len(data):
            raise ValueError("truncated TFRecord (incomplete record)")
        yield data[start : start + length]
        pos = start + length + 4


def read_examples(uri: str) -> list[dict]:
    """Every Example of one shard (local path or s3://), parsed; single values unwrapped."""
    from components.common import storage

    rows = []
    for record in iter_tfrecords(storage.read_bytes(uri)):
        parsed = parse_example(record)
        rows.append({k: (v[0] if len(v) == 1 else v) for k, v in parsed.items()})
    return rows
