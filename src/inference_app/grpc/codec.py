"""The codec of the Open Inference Protocol's gRPC messages: inputs to dataplane rows, outputs
to tensors.

Specification: KServe ``docs/predict-api/v2/required_api.md``, section "GRPC": "Tensor Data"
(the typed ``InferTensorContents`` field of each datatype, and ``raw_input_contents`` /
``raw_output_contents``: the elements flattened in row-major order, little-endian, a ``BYTES``
element as a 4-byte little-endian length then its bytes). Both forms decode through the V2
REST codec (:mod:`inference_app.core.tensors`): typed contents as its JSON arrays, raw
contents as its binary tensor data, so every check and message is the REST one.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np

from inference_app.core import tensors
from inference_app.core.dataplane import InferenceResult
from inference_app.core.datatypes import DATATYPES, TENSOR_DATATYPES
from inference_app.core.errors import InvalidInputError
from inference_app.grpc import grpc_predict_v2_pb2 as pb

#: The ``InferTensorContents`` field holding a typed tensor's elements, by datatype
#: ("Tensor Data" of the gRPC section). ``FP16`` has none: it travels as raw contents only.
CONTENTS_FIELDS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
#: The output parameter labelling the columns of ``predict_proba`` and ``decision_function``:
#: a JSON array in a string, as the REST outputs' ``parameters.classes``.
CLASSES_PARAMETER = "classes"


def input_tensors(request: pb.ModelInferRequest) -> list[dict[str, Any]]:
    """Return the request's inputs as V2 REST tensors ``{"name", "shape", "datatype",
    "data"}``: ``data`` is the raw bytes of the input, or the list of its typed contents
    (``BYTES`` elements decoded as UTF-8 text).

    :raises InvalidInputError: ``raw_input_contents`` with another count than ``inputs``, an
        input with both typed and raw contents, typed contents in another field than its
        datatype's, or a ``BYTES`` element that is not UTF-8.
    """
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidInputError(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs: "
            "send one per input, in the order of inputs"
        )
    found = []
    for index, tensor in enumerate(request.inputs):
        data: Any
        if raw:
            if tensor.HasField("contents") and tensor.contents.ListFields():
                raise _error(
                    tensor.name,
                    "has contents while raw_input_contents carries the request's tensors: "
                    "send every input one way",
                )
            data = raw[index]
        else:
            data = _typed(tensor)
        found.append(
            {
                "name": tensor.name,
                "shape": list(tensor.shape),
                "datatype": tensor.datatype,
                "data": data,
            }
        )
    return found


def decode_inputs(request: pb.ModelInferRequest) -> dict[str, Any]:
    """Return the rows of a request as :class:`~inference_app.core.dataplane.
    InferenceRequest` fields: ``{"matrix": array}`` or ``{"columns": {name: array}}``, as
    :func:`inference_app.core.tensors.decode_inputs` does for V2 REST.

    :raises InvalidInputError: as :func:`input_tensors` and the REST codec.
    """
    return tensors.decode_inputs(input_tensors(request))


def encode_result(result: InferenceResult, request_id: str) -> pb.ModelInferResponse:
    """Return the response of an answered request: one output per method, its elements in
    ``raw_output_contents`` (as Triton answers), datatypes and shapes as V2 REST's
    (:func:`inference_app.core.tensors.encode_output`), and the class labels of
    ``predict_proba`` and ``decision_function`` in the output parameter ``classes``.

    :param request_id: the request's ``id``, echoed.
    """
    response = pb.ModelInferResponse(
        model_name=result.model_name, model_version=result.model_version, id=request_id
    )
    for output in result.outputs:
        encoded = tensors.encode_output(output.method, output.values, output.shape)
        tensor = response.outputs.add(
            name=output.method, datatype=encoded["datatype"], shape=encoded["shape"]
        )
        if output.classes is not None:
            tensor.parameters[CLASSES_PARAMETER].string_param = json.dumps(output.classes)
        response.raw_output_contents.append(raw_bytes(encoded["datatype"], encoded["data"]))
    return response


def raw_bytes(datatype: str, values: list[Any]) -> bytes:
    """Return flat JSON-native ``values`` of a tensor datatype as raw tensor contents:
    little-endian elements of the datatype's dtype, or length-prefixed UTF-8 for ``BYTES``."""
    if datatype == "BYTES":
        encoded = [str(value).encode() for value in values]
        return b"".join(struct.pack("<I", len(item)) + item for item in encoded)
    dtype = np.dtype(DATATYPES[datatype].dtype).newbyteorder("<")
    return np.asarray(values, dtype=dtype).tobytes()


def _typed(tensor: pb.ModelInferRequest.InferInputTensor) -> list[Any]:
    """Return an input's typed contents as a list, checking they are in its datatype's field."""
    datatype = tensor.datatype
    given = [field.name for field, _ in tensor.contents.ListFields()]
    if datatype not in TENSOR_DATATYPES:
        return []  # the REST codec names the datatypes there are
    wanted = CONTENTS_FIELDS.get(datatype)
    if wanted is None:
        if given:
            raise _error(tensor.name, f"datatype {datatype} travels in raw_input_contents only")
        return []
    wrong = [name for name in given if name != wanted]
    if wrong:
        raise _error(
            tensor.name,
            f"datatype {datatype} takes its elements in contents.{wanted}; got "
            f"contents.{', contents.'.join(wrong)}",
        )
    values = list(getattr(tensor.contents, wanted))
    if datatype != "BYTES":
        return values
    try:
        return [value.decode() for value in values]
    except UnicodeDecodeError:
        raise _error(tensor.name, "a BYTES element is not UTF-8") from None


def _error(name: str, problem: str) -> InvalidInputError:
    return InvalidInputError(f"input {str(name)[:100]!r}: {problem}")
