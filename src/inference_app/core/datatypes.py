"""The one datatype table: each datatype's numpy dtype, JSON types, OpenAPI schema and V2 name.

The names are the Open Inference Protocol's ("Tensor Data Types", KServe
``docs/predict-api/v2/required_api.md``), plus ``DATETIME``: the protocol has no datetime type,
so a datetime feature travels as ``BYTES`` holding ISO 8601 strings (as MLServer's ``datetime``
content type does). Everything that maps a datatype to something else reads this table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

#: The kinds of feature a model takes.
KINDS = ("numeric", "categorical", "text", "datetime")


@dataclass(frozen=True)
class Datatype:
    """One row of :data:`DATATYPES`.

    :param name: the protocol's name (``FP64``, ``BYTES``, ...).
    :param dtype: the numpy dtype of its values (``object`` for strings).
    :param json_types: the JSON-native Python types its values may be sent as: only casts
        that lose nothing (integers for floats); booleans are not numbers and numeric strings
        are not numbers.
    :param expected: what to send, in words, for error messages.
    :param openapi: the OpenAPI 3.0 schema of one value ("Data Types").
    :param wire: the V2 tensor datatype a feature of this datatype travels as.
    :param feature: whether a model input may have this datatype.
    """

    name: str
    dtype: Any
    json_types: frozenset[type]
    expected: str
    openapi: dict[str, str]
    wire: str
    feature: bool = False

    @property
    def numeric(self) -> bool:
        """Return whether values are numbers (booleans are not)."""
        return np.dtype(self.dtype).kind in "iuf"


def _integer(name: str, dtype: Any) -> Datatype:
    return Datatype(name, dtype, frozenset({int}), "an integer", {"type": "integer"}, name)


#: Every datatype, by name.
DATATYPES: dict[str, Datatype] = {
    row.name: row
    for row in (
        Datatype(
            "BOOL",
            np.bool_,
            frozenset({bool}),
            "true or false",
            {"type": "boolean"},
            "BOOL",
            feature=True,
        ),
        _integer("INT8", np.int8),
        _integer("INT16", np.int16),
        _integer("INT32", np.int32),
        Datatype(
            "INT64",
            np.int64,
            frozenset({int}),
            "an integer",
            {"type": "integer", "format": "int64"},
            "INT64",
            feature=True,
        ),
        _integer("UINT8", np.uint8),
        _integer("UINT16", np.uint16),
        _integer("UINT32", np.uint32),
        _integer("UINT64", np.uint64),
        Datatype(
            "FP16", np.float16, frozenset({int, float}), "a number", {"type": "number"}, "FP16"
        ),
        Datatype(
            "FP32",
            np.float32,
            frozenset({int, float}),
            "a number",
            {"type": "number", "format": "float"},
            "FP32",
            feature=True,
        ),
        Datatype(
            "FP64",
            np.float64,
            frozenset({int, float}),
            "a number",
            {"type": "number", "format": "double"},
            "FP64",
            feature=True,
        ),
        Datatype(
            "BYTES",
            np.object_,
            frozenset({str}),
            "a string",
            {"type": "string"},
            "BYTES",
            feature=True,
        ),
        Datatype(
            "DATETIME",
            "datetime64[ns]",
            frozenset({str}),
            "an ISO 8601 date-time string",
            {"type": "string", "format": "date-time"},
            "BYTES",
            feature=True,
        ),
    )
}
#: The datatypes of the protocol's tensors (every row but ``DATETIME``).
TENSOR_DATATYPES = tuple(name for name, row in DATATYPES.items() if row.wire == name)
#: The datatypes a model input may have.
FEATURE_DATATYPES = tuple(name for name, row in DATATYPES.items() if row.feature)
#: Names of JSON-native types, for error messages.
JSON_TYPE_NAMES = {
    str: "a string",
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    list: "an array",
    dict: "an object",
    type(None): "null",
}


def accepted_tensors(feature_datatype: str) -> frozenset[str]:
    """Return the tensor datatypes a feature of ``feature_datatype`` takes.

    Integers of any width become float64 for float features, as scikit-learn does; a boolean
    takes only ``BOOL``; strings and datetimes take ``BYTES``.
    """
    row = DATATYPES[feature_datatype]
    if row.wire == "BYTES":
        return frozenset({"BYTES"})
    if not row.numeric:
        return frozenset({row.wire})
    kinds = "iuf" if np.dtype(row.dtype).kind == "f" else "iu"
    return frozenset(
        name
        for name in TENSOR_DATATYPES
        if name != "BYTES" and np.dtype(DATATYPES[name].dtype).kind in kinds
    )


def of_dtype(dtype: Any) -> str | None:
    """Return the feature datatype of a numpy or pandas dtype, or ``None`` if none fits.

    Strings (``object``, pandas' ``str`` and ``string``) and ``category`` are ``BYTES``
    unless a category's values are numbers; nullable pandas integers (``Int64``) are
    ``INT64``, ``boolean`` is ``BOOL``.
    """
    name = str(dtype)
    if name == "category":
        categories = dtype.categories
        return of_dtype(categories.dtype) if len(categories) else "BYTES"
    if name.startswith("datetime64"):
        return "DATETIME"
    if name in ("object", "str", "string") or name.startswith("string"):
        return "BYTES"
    if name == "boolean":
        return "BOOL"
    try:
        numpy_dtype = np.dtype(name.lower()) if name[:1] in "IUF" else np.dtype(dtype)
    except TypeError:
        return None
    if numpy_dtype.kind == "b":
        return "BOOL"
    if numpy_dtype.kind in "iu":
        return "INT64"
    if numpy_dtype.kind == "f":
        return "FP32" if numpy_dtype.itemsize <= 4 else "FP64"
    if numpy_dtype.kind == "U":
        return "BYTES"
    return None


def tensor_datatype(dtype: Any) -> str:
    """Return the tensor datatype of a numpy dtype (``object``: ``BYTES``).

    :raises KeyError: no tensor datatype has that dtype.
    """
    wanted = np.dtype(dtype)
    return next(name for name in TENSOR_DATATYPES if np.dtype(DATATYPES[name].dtype) == wanted)


def of_values(kinds: set[type]) -> str:
    """Return the tensor datatype that carries JSON-native values of the types ``kinds``:
    ``BOOL``, ``INT64``, ``FP64`` for numbers, else ``BYTES`` (as strings)."""
    if kinds <= {bool}:
        return "BOOL"
    if kinds <= {int}:
        return "INT64"
    if kinds <= {int, float}:
        return "FP64"
    return "BYTES"
