"""Open Inference Protocol tensors: decode request inputs to a matrix, encode outputs.

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

from inference_app.core.bundle import Feature
from inference_app.core.errors import InvalidInputError
from inference_app.core.inputs import check_finite, check_row_count

#: numpy dtypes of the protocol's datatypes ("Tensor Data Types"); BYTES are Python strings.
NUMPY_DTYPES: dict[str, Any] = {
    "BOOL": np.bool_,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "BYTES": np.object_,
}
#: JSON element types each datatype accepts; booleans are not integers.
ELEMENT_TYPES: dict[str, frozenset[type]] = {
    **{datatype: frozenset({int}) for datatype in NUMPY_DTYPES if datatype[0] in "IU"},
    "FP16": frozenset({int, float}),
    "FP32": frozenset({int, float}),
    "FP64": frozenset({int, float}),
    "BOOL": frozenset({bool}),
    "BYTES": frozenset({str}),
}
#: Which tensor datatypes a model input of each datatype takes (lossless enough: integers
#: become float64, as scikit-learn does).
COMPATIBLE: dict[str, frozenset[str]] = {
    "FP64": frozenset(set(NUMPY_DTYPES) - {"BOOL", "BYTES"}),
    "FP32": frozenset(set(NUMPY_DTYPES) - {"BOOL", "BYTES"}),
    "INT64": frozenset(d for d in NUMPY_DTYPES if d[0] in "IU"),
    "BOOL": frozenset({"BOOL"}),
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
    if datatype not in NUMPY_DTYPES:
        raise _error(name, f"datatype {datatype!r} is not one of {', '.join(NUMPY_DTYPES)}")
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


def to_matrix(
    tensors: Sequence[Mapping[str, Any]],
    inputs: Sequence[Feature],
    *,
    max_rows: int,
    allow_nan: bool = False,
) -> np.ndarray:
    """Build the float64 matrix ``(n_samples, n_features)`` from request inputs.

    Either one tensor of shape ``[N, n_features]`` in the model's feature order (named
    :data:`MATRIX_INPUT`, or any name that is not a feature), or one tensor per feature,
    named as the feature, of shape ``[N]`` or ``[N, 1]``.

    :raises InvalidInputError: a tensor that does not fit the model, naming it.
    """
    names = [feature.name for feature in inputs]
    if not tensors:
        raise InvalidInputError("`inputs` is empty: send at least one tensor")
    single = tensors[0]
    if (
        len(tensors) == 1
        and len(single["shape"]) == 2
        and (single["name"] not in names or len(names) == 1)
    ):
        array = decode_tensor(single)
        if array.shape[1] != len(inputs):
            raise _error(
                single["name"],
                f"shape {list(array.shape)} has {array.shape[1]} columns but the model takes "
                f"{len(inputs)} features: {', '.join(names[:10])}",
            )
        for feature in inputs:
            _check_compatible(single["name"], str(single["datatype"]), feature)
        columns = [array[:, index] for index in range(array.shape[1])]
    else:
        columns = _feature_columns(tensors, inputs)
    check_row_count(len(columns[0]) if columns else 0, max_rows, "inputs")
    matrix = np.column_stack([column.astype(np.float64) for column in columns])
    check_finite(matrix, inputs, allow_nan)
    return matrix


def encode_output(name: str, values: list[Any], shape: Sequence[int]) -> dict[str, Any]:
    """Return a response output ``{"name", "datatype", "shape", "data"}``, data flattened.

    :param values: JSON-native outputs, nested as ``shape`` says.
    """
    flat = values
    for _ in range(len(shape) - 1):
        flat = list(itertools.chain.from_iterable(flat))
    kinds = set(map(type, flat))
    if kinds <= {bool}:
        datatype = "BOOL"
    elif kinds <= {int}:
        datatype = "INT64"
    elif kinds <= {int, float}:
        datatype = "FP64"
    else:
        datatype, flat = "BYTES", [str(value) for value in flat]
    return {"name": name, "datatype": datatype, "shape": list(shape), "data": flat}


def _feature_columns(
    tensors: Sequence[Mapping[str, Any]], inputs: Sequence[Feature]
) -> list[np.ndarray]:
    by_name = {feature.name: feature for feature in inputs}
    unknown = [str(t["name"]) for t in tensors if t["name"] not in by_name]
    if unknown:
        names = ", ".join(repr(name[:100]) for name in unknown[:10])
        expected = ", ".join(list(by_name)[:10])
        raise InvalidInputError(
            f"unknown input {names}: send one tensor {MATRIX_INPUT!r} of shape [N, "
            f"{len(inputs)}] or one tensor per feature: {expected}"
            + (" ..." if len(inputs) > 10 else "")
        )
    decoded: dict[str, np.ndarray] = {}
    for tensor in tensors:
        name = str(tensor["name"])
        if name in decoded:
            raise _error(name, "is sent twice")
        array = decode_tensor(tensor)
        if array.ndim == 2 and array.shape[1] == 1:
            array = array[:, 0]
        if array.ndim != 1:
            raise _error(name, f"shape {list(array.shape)}: a feature tensor is [N] or [N, 1]")
        _check_compatible(name, str(tensor["datatype"]), by_name[name])
        decoded[name] = array
    missing = [name for name in by_name if name not in decoded]
    if missing:
        raise InvalidInputError(
            f"missing input {', '.join(repr(name) for name in missing[:10])}: send every feature"
        )
    lengths = {len(array) for array in decoded.values()}
    if len(lengths) > 1:
        raise InvalidInputError(f"feature tensors have different lengths: {sorted(lengths)}")
    return [decoded[feature.name] for feature in inputs]


def _check_compatible(name: str, datatype: str, feature: Feature) -> None:
    if datatype not in COMPATIBLE[feature.datatype]:
        raise _error(
            name,
            f"datatype {datatype} does not fit feature {feature.name!r} ({feature.datatype}); "
            f"send one of {', '.join(sorted(COMPATIBLE[feature.datatype]))}",
        )


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
        wrong = next(value for value in flat if type(value) not in accepted)
        raise _error(
            name,
            f"datatype {datatype} takes {' or '.join(sorted(t.__name__ for t in accepted))} "
            f"elements, got {type(wrong).__name__}",
        )
    try:
        # A float beyond FP16/FP32 becomes infinity, which check_finite then refuses.
        with np.errstate(over="ignore"):
            return np.array(flat, dtype=NUMPY_DTYPES[datatype])
    except OverflowError:
        raise _error(name, f"an element is out of {datatype}'s range") from None


def _from_bytes(name: str, datatype: str, data: bytes, count: int) -> np.ndarray:
    if datatype != "BYTES":
        dtype = np.dtype(NUMPY_DTYPES[datatype]).newbyteorder("<")
        if len(data) != count * dtype.itemsize:
            raise _error(
                name, f"binary data has {len(data)} bytes; the shape needs {count * dtype.itemsize}"
            )
        return np.frombuffer(data, dtype=dtype)
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
