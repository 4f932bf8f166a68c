"""A minimal reader for frozen TensorFlow GraphDef files (protobuf wire format).

Only what a frozen inference graph needs: node name, op, inputs and the attributes
`value` (tensors), `dtype`, `T`, `strides`, `ksize`, `padding`, `data_format`,
`epsilon`, `N`, `Tidx`, `keep_dims`. No TensorFlow or protobuf package is needed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np

# tensorflow/core/framework/types.proto
_DTYPES = {1: np.float32, 2: np.float64, 3: np.int32, 9: np.int64, 10: np.bool_}


class GraphDefError(ValueError):
    """The file is not a frozen GraphDef this reader understands."""


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes):
    """Yield (field_number, wire_type, value) for one message; value is int or bytes."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        num, wt = key >> 3, key & 7
        if wt == 0:
            val, pos = _varint(buf, pos)
        elif wt == 1:
            val, pos = buf[pos : pos + 8], pos + 8
        elif wt == 2:
            n, pos = _varint(buf, pos)
            val, pos = buf[pos : pos + n], pos + n
        elif wt == 5:
            val, pos = buf[pos : pos + 4], pos + 4
        else:
            raise GraphDefError(f"unsupported protobuf wire type {wt}")
        yield num, wt, val


def _packed_varints(buf: bytes) -> list[int]:
    out, pos = [], 0
    while pos < len(buf):
        v, pos = _varint(buf, pos)
        out.append(v - (1 << 64) if v >= 1 << 63 else v)
    return out


def _shape(buf: bytes) -> list[int]:
    dims = []
    for num, _, val in _fields(buf):
        if num == 2:  # Dim
            size = 0
            for n2, _, v2 in _fields(val):
                if n2 == 1:
                    size = v2 - (1 << 64) if v2 >= 1 << 63 else v2
            dims.append(size)
    return dims


def _tensor(buf: bytes) -> np.ndarray:
    dtype, shape, content = None, [], None
    floats: list[float] = []
    ints: list[int] = []
    for num, wt, val in _fields(buf):
        if num == 1:
            dtype = _DTYPES.get(val)
            if dtype is None:
                raise GraphDefError(f"unsupported tensor dtype {val}")
        elif num == 2:
            shape = _shape(val)
        elif num == 4:
            content = val
        elif num == 5:  # float_val
            floats += list(struct.unpack(f"<{len(val) // 4}f", val)) if wt == 2 else [struct.unpack("<f", val)[0]]
        elif num in (7, 10, 11):  # int_val, int64_val, bool_val
            ints += _packed_varints(val) if wt == 2 else [val]
    count = int(np.prod(shape)) if shape else 1
    if content is not None:
        arr = np.frombuffer(content, dtype=dtype).copy()
    elif floats:
        arr = np.asarray(floats, dtype=dtype)
    else:
        arr = np.asarray(ints, dtype=dtype)
    if arr.size == 1 and count > 1:  # TF stores splats as one value
        arr = np.full(count, arr.item(), dtype=dtype)
    return arr.reshape(shape)


def _attr_value(buf: bytes):
    for num, _, val in _fields(buf):
        if num == 1:  # ListValue
            items: list = []
            for n2, w2, v2 in _fields(val):
                if n2 == 2:
                    items.append(v2.decode())
                elif n2 in (3, 6):
                    items += _packed_varints(v2) if w2 == 2 else [v2]
            return items
        if num == 2:
            return val.decode()
        if num == 3:
            return val
        if num == 4:
            return struct.unpack("<f", val)[0]
        if num == 5:
            return bool(val)
        if num == 6:
            return int(val)
        if num == 7:
            return _shape(val)
        if num == 8:
            return _tensor(val)
    return None


@dataclass
class Node:
    name: str
    op: str
    inputs: list[str] = field(default_factory=list)
    attrs: dict = field(default_factory=dict)

    @property
    def data_inputs(self) -> list[str]:
        """Inputs without control dependencies (`^name`), with `:0` output suffixes removed."""
        return [i.split(":")[0] if i.endswith(":0") else i for i in self.inputs if not i.startswith("^")]


def read_graphdef(data: bytes) -> list[Node]:
    nodes = []
    try:
        for num, _, val in _fields(data):
            if num != 1:
                continue
            node = Node(name="", op="")
            for n2, _, v2 in _fields(val):
                if n2 == 1:
                    node.name = v2.decode()
                elif n2 == 2:
                    node.op = v2.decode()
                elif n2 == 3:
                    node.inputs.append(v2.decode())
                elif n2 == 5:  # map<string, AttrValue> entry
                    key, value = None, None
                    for n3, _, v3 in _fields(v2):
                        if n3 == 1:
                            key = v3.decode()
                        elif n3 == 2:
                            value = _attr_value(v3)
                    node.attrs[key] = value
            nodes.append(node)
    except (IndexError, UnicodeDecodeError, struct.error) as exc:
        raise GraphDefError(f"not a readable GraphDef: {exc}") from exc
    if not nodes:
        raise GraphDefError("no nodes found: not a frozen GraphDef")
    return nodes
