"""The Open Inference Protocol's codec: request tensors to rows for the dataplane, outputs back.

The protocol is KServe's "Open Inference Protocol (V2)", REST: ``docs/predict-api/v2/
required_api.md``, sections "Tensor Data" and "Tensor Data Types", and Triton's binary tensor
data extension (``binary_data_size``) for inputs sent as raw bytes.
"""

from __future__ import annotations

import itertools
import math
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from inference_app.core.datatypes import DATATYPES, JSON_TYPE_NAMES, TENSOR_DATATYPES, of_values
from inference_app.core.errors import InvalidInputError

#: JSON element types each tensor datatype accepts; booleans are not integers, and ``null``
#: is a missing value (NaN) in float tensors and a missing string in ``BYTES`` tensors.
ELEMENT_TYPES: dict[str, frozenset[type]] = {
    name: DATATYPES[name].json_types
    | ({type(None)} if name == "BYTES" or name.startswith("FP") else set())
    for name in TENSOR_DATATYPES
}
#: The name of the single ``[N, n_features]`` input tensor in model metadata.
MATRIX_INPUT = "input-0"


def decode_tensor(tensor: Mapping[str, Any]) -> np.ndarray:
    """Return the array of one request input: ``{"name", "shape", "datatype", "data"}``.

    ``data`` is a flat or nested JSON array in row-major order, or ``bytes`` from the binary
    tensor data extension (little-endian; BYTES elements prefixed by a 4-byte length).

    :raises InvalidInputError: a negative shape, data whose element count or nesting
        disagrees with the shape, or elements of the wrong type or out of the datatype's range.
    """
    name, datatype = str(tensor["name"]), str(tensor["datatype"])
    shape = [int(dim) for dim in tensor["shape"]]
    if datatype not in TENSOR_DATATYPES:
        raise _error(name, f"datatype {datatype!r} is not one of {', '.join(TENSOR_DATATYPES)}")
    if any(dim < 0 for dim in shape):
        raise _error(name, f"shape {shape} has a negative dimension")
    count = math.prod(shape)
    data = tensor["data"]
    if isinstance(data, bytes):
        flat = _from_bytes(name, datatype, data, count)
    else:
        flat = _from_json(name, datatype, data, shape)
    if flat.size != count:
        raise _error(name, f"shape {shape} holds {count} elements but data has {flat.size}")
    try:
        return flat.reshape(shape)
    except ValueError:  # a zero-size shape whose other dimensions overflow numpy's index
        raise _error(name, f"shape {shape} is too large") from None


def decode_inputs(tensors: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Return the rows of a request's inputs, as :class:`~inference_app.core.dataplane.
    InferenceRequest` fields: ``{"matrix": array}`` or ``{"columns": {name: array}}``.

    Either one tensor :data:`MATRIX_INPUT` of shape ``[N, n_features]`` in the model's
    feature order, or one tensor per feature, named as the feature, of shape ``[N]`` or
    ``[N, 1]`` (MLServer's and KServe's ``pd`` content type; ``BYTES`` for strings, decoded
    as UTF-8 text, which is the ``str`` content type). Names are checked against the model's
    features by the dataplane.

    :raises InvalidInputError: no tensor, a tensor sent twice, or a shape that is neither.
    """
    if not tensors:
        raise InvalidInputError("`inputs` is empty: send at least one tensor")
    if len(tensors) == 1 and tensors[0]["name"] == MATRIX_INPUT:
        array = decode_tensor(tensors[0])
        if array.ndim == 1:
            array = array.reshape(-1, 1)
        if array.ndim != 2:
            raise _error(MATRIX_INPUT, f"shape {list(array.shape)}: send [N, n_features]")
        return {"matrix": array}
    columns: dict[str, Any] = {}
    for tensor in tensors:
        name = str(tensor["name"])
        if name in columns:
            raise _error(name, "is sent twice")
        array = decode_tensor(tensor)
        if array.ndim == 2 and array.shape[1] == 1:
            array = array[:, 0]
        if array.ndim != 1:
            raise _error(
                name,
                f"shape {list(array.shape)}: a feature tensor is [N] or [N, 1]; send the "
                f"whole matrix as one tensor named {MATRIX_INPUT!r}",
            )
        columns[name] = array
    return {"columns": columns}


def encode_output(name: str, values: list[Any], shape: Sequence[int]) -> dict[str, Any]:
    """Return a response output ``{"name", "datatype", "shape", "data"}``, data flattened.

    :param values: JSON-native outputs, nested as ``shape`` says.
    """
    flat = values
    for _ in range(len(shape) - 1):
        flat = list(itertools.chain.from_iterable(flat))
    datatype = of_values(set(map(type, flat)))
    if datatype == "BYTES":
        flat = [str(value) for value in flat]
    return {"name": name, "datatype": datatype, "shape": list(shape), "data": flat}


def _from_json(name: str, datatype: str, data: Any, shape: Sequence[int]) -> np.ndarray:
    if type(data) is not list:
        raise _error(name, "`data` must be an array")
    flat: list[Any] = data
    for depth in range(1, len(shape)):
        if not flat or type(flat[0]) is not list:
            break
        if not all(type(item) is list for item in flat):
            raise _error(name, "`data` mixes arrays and values at one level")
        if any(len(item) != shape[depth] for item in flat):
            raise _error(name, f"nested `data` disagrees with shape {list(shape)}")
        flat = list(itertools.chain.from_iterable(flat))
    kinds = set(map(type, flat))
    accepted = ELEMENT_TYPES[datatype]
    if not kinds <= accepted:
        index, wrong = next((i, v) for i, v in enumerate(flat) if type(v) not in accepted)
        row = index // (math.prod(shape[1:]) or 1) if shape else 0
        raise _error(
            name,
            f"row {row}: expected {DATATYPES[datatype].expected} (datatype {datatype}), got "
            f"{JSON_TYPE_NAMES.get(type(wrong), type(wrong).__name__)}",
        )
    dtype = np.dtype(DATATYPES[datatype].dtype)
    try:
        with np.errstate(over="ignore"):
            array = np.array(flat, dtype=dtype)
    except OverflowError:
        raise _error(name, f"an element is out of {datatype}'s range") from None
    if dtype.kind == "f" and dtype.itemsize < 8:
        with np.errstate(invalid="ignore"):
            beyond = np.isinf(array) & np.isfinite(np.array(flat, dtype=np.float64))
        if beyond.any():
            limit = float(np.finfo(dtype).max)
            raise _error(name, f"an element is beyond {datatype}'s range (about ±{limit:.2g})")
    return array


def _from_bytes(name: str, datatype: str, data: bytes, count: int) -> np.ndarray:
    if datatype != "BYTES":
        dtype = np.dtype(DATATYPES[datatype].dtype).newbyteorder("<")
        if len(data) != count * dtype.itemsize:
            raise _error(
                name, f"binary data has {len(data)} bytes; the shape needs {count * dtype.itemsize}"
            )
        return np.frombuffer(data, dtype=dtype)
    if count * 4 > len(data):  # each element takes a 4-byte length at least
        raise _error(name, f"binary data has {len(data)} bytes: too few for {count} elements")
    items, offset = [], 0
    while offset < len(data):
        if offset + 4 > len(data):
            raise _error(name, "binary BYTES data ends inside a length prefix")
        (size,) = struct.unpack_from("<I", data, offset)
        offset += 4
        if offset + size > len(data):
            raise _error(name, "binary BYTES data ends inside an element")
        try:
            items.append(data[offset : offset + size].decode())
        except UnicodeDecodeError:
            raise _error(name, "a BYTES element is not UTF-8") from None
        offset += size
    return np.array(items, dtype=np.object_)


def _error(name: str, problem: str) -> InvalidInputError:
    return InvalidInputError(f"input {str(name)[:100]!r}: {problem}")
