"""marshmallow schemas of the native API's request and response envelopes."""

from __future__ import annotations

from typing import Any

from marshmallow import (
    INCLUDE,
    Schema,
    ValidationError,
    fields,
    post_load,
    validate,
    validates_schema,
)

from inference_app.core.bundle import METHODS

#: The JSON schema of one row of an unnamed model: an array of values or an object.
ROW_SCHEMA = {"oneOf": [{"type": "array", "items": {"type": "number"}}, {"type": "object"}]}


class Array(fields.Raw):
    """A JSON array passed through untouched; its rows are checked by the core in one pass."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs["metadata"] = {"type": "array", "items": {}, **kwargs.get("metadata", {})}
        super().__init__(**kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if type(value) is not list:
            raise ValidationError("Expected an array.")
        return value


class Rows(Array):
    """A JSON array of rows, at least one."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs["metadata"] = {"items": ROW_SCHEMA, "minItems": 1, **kwargs.get("metadata", {})}
        super().__init__(**kwargs)


class Row(fields.Raw):
    """One row: an array in the model's feature order or an object keyed by feature name."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs["metadata"] = {**ROW_SCHEMA, **kwargs.get("metadata", {})}
        super().__init__(**kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if type(value) not in (list, dict):
            raise ValidationError("Expected an array of values or an object of named values.")
        return value


def _method(**kwargs: Any) -> fields.String:
    return fields.String(
        load_default="predict",
        validate=validate.OneOf(METHODS),
        metadata={
            "description": "The estimator method: predict (labels or values), predict_proba "
            "(one probability per class) or decision_function (scores).",
            **kwargs,
        },
    )


class PredictRequestSchema(Schema):
    """Rows to predict, all arrays (feature order) or all objects (feature names).

    ``inputs`` is KServe V1's synonym of ``instances``; the loaded data always says
    ``instances``.
    """

    instances = Rows(
        metadata={
            "description": "Rows, shape (n_samples, n_features): arrays in the model's feature "
            "order, or objects keyed by feature name. Required, unless `inputs` is sent.",
            "example": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]],
        },
    )
    inputs = Rows(metadata={"description": "KServe V1's name for `instances`."})
    method = _method()

    @validates_schema
    def _rows_once(self, data: dict[str, Any], **kwargs: Any) -> None:
        if "instances" in data and "inputs" in data:
            raise ValidationError("Send `instances` or `inputs`, not both.", "instances")
        if "instances" not in data and "inputs" not in data:
            raise ValidationError("Missing data for required field.", "instances")

    @post_load
    def _as_instances(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        if "inputs" in data:
            data["instances"] = data.pop("inputs")
        return data


class PredictResponseSchema(Schema):
    """Predictions, one per row, in the order of the rows."""

    model_name = fields.String(required=True)
    model_version = fields.String(required=True)
    method = fields.String(required=True)
    predictions = Array(
        required=True,
        metadata={
            "description": "Shape (n_samples,) for predict; (n_samples, n_classes) for "
            "predict_proba and multiclass decision_function, columns in the order of `classes`."
        },
    )
    classes = Array(
        metadata={
            "description": "Class labels of the prediction columns (predict_proba, "
            "decision_function)."
        },
    )


class SinglePredictRequestSchema(Schema):
    """One row for the default model: ``instance``, ``input``, or the row's features as the
    body itself (kept as they are: the model's features are checked by the dataplane)."""

    class Meta:
        unknown = INCLUDE

    instance = Row(
        metadata={
            "description": "One row: an array in the model's feature order or an object "
            "keyed by feature name.",
            "example": [5.1, 3.5, 1.4, 0.2],
        },
    )
    input = fields.List(
        fields.Raw(allow_none=True),
        metadata={"description": "One row's values in the model's feature order."},
    )
    method = _method()


class SinglePredictResponseSchema(Schema):
    """The prediction for one row."""

    model_name = fields.String(required=True)
    model_version = fields.String(required=True)
    method = fields.String(required=True)
    prediction = fields.Raw(
        required=True, metadata={"description": "A label, a value, or one number per class."}
    )
    classes = Array()
    confidence = fields.Float(
        metadata={"description": "Classifiers: the probability of the predicted class."}
    )


class FeatureSchema(Schema):
    """One input of a model."""

    name = fields.String(required=True)
    datatype = fields.String(
        required=True,
        metadata={
            "description": "Open Inference Protocol datatype (FP64, FP32, INT64, BOOL, BYTES), "
            "or DATETIME (ISO 8601 strings, sent as BYTES in V2)."
        },
    )
    kind = fields.String(
        required=True, metadata={"description": "numeric, categorical, text or datetime"}
    )
    nullable = fields.Boolean(
        required=True, metadata={"description": "Whether a value may be missing (null)."}
    )
    min = fields.Raw(
        allow_none=True,
        metadata={"description": "Smallest value in training (ISO 8601 for a datetime)."},
    )
    max = fields.Raw(
        allow_none=True,
        metadata={"description": "Largest value in training (ISO 8601 for a datetime)."},
    )
    categories = fields.List(
        fields.Raw(), metadata={"description": "A categorical feature's known categories."}
    )
    unknown_categories = fields.String(
        metadata={
            "description": "error: other categories are refused; ignore: they are served "
            "(the encoder ignores them) and counted."
        }
    )
    lengths = fields.Dict(
        metadata={"description": "A text feature's lengths in training, in characters."}
    )


class ModelSummarySchema(Schema):
    """A model, as listed."""

    name = fields.String(required=True)
    versions = fields.List(fields.String(), required=True)
    default_version = fields.String(required=True)
    ready = fields.Boolean(required=True)
    task = fields.String(required=True, metadata={"description": "classification or regression"})
    traffic = fields.Dict(
        metadata={
            "description": "The model's traffic.json in force, if it has one: `weights` (percent "
            "of the requests naming no version, by version), `sticky` (the header whose value "
            "routes), `shadow`, `shadow_sample` and `shadow_tolerance`."
        }
    )


class ModelListResponseSchema(Schema):
    """Every model served."""

    models = fields.List(fields.Nested(ModelSummarySchema), required=True)


class ModelResponseSchema(ModelSummarySchema):
    """A model version's metadata, with an example request."""

    version = fields.String(required=True)
    estimator = fields.String(required=True)
    format = fields.String(required=True)
    runtime = fields.String(
        metadata={"description": "What answers in this worker: onnx or sklearn."}
    )
    layout = fields.String(
        metadata={
            "description": "What the estimator takes: matrix (float64 rows), frame (a pandas "
            "DataFrame with the training dtypes) or column (one text column)."
        }
    )
    inputs = fields.List(fields.Nested(FeatureSchema), required=True)
    classes = Array(allow_none=True)
    methods = fields.List(fields.String(), required=True)
    sklearn_version = fields.String(allow_none=True)
    created = fields.String(allow_none=True)
    sha256 = fields.String(allow_none=True)
    warnings = fields.List(fields.String())
    load_errors = fields.List(
        fields.String(),
        metadata={"description": "Why the last reload refused this model's new bundles."},
    )
    example_request = fields.Dict(required=True)


class HealthResponseSchema(Schema):
    """A probe's answer."""

    status = fields.String(required=True)
    message = fields.String()
    models = fields.Dict(keys=fields.String(), values=fields.Boolean())


class DriftBinSchema(Schema):
    """One bin of a feature's training reference, with the rows served into it."""

    label = fields.String(
        required=True,
        data_key="bin",
        metadata={
            "description": "The `bin` label of its metrics: a histogram bin's index, "
            "underflow, overflow, a category (or its index), other, unseen or missing."
        },
    )
    lower = fields.Float(
        allow_none=True,
        metadata={"description": "Inclusive lower bound, in the feature's unit; null: none."},
    )
    upper = fields.Float(
        allow_none=True,
        metadata={
            "description": "Exclusive upper bound (inclusive for the last histogram bin); "
            "null: none."
        },
    )
    category = fields.Raw(
        allow_none=True, metadata={"description": "A categorical feature's category."}
    )
    rows = fields.Integer(required=True, metadata={"description": "Rows served into it."})
    observed = fields.Float(
        allow_none=True,
        metadata={"description": "Their proportion of the rows counted; null before any."},
    )
    reference = fields.Float(
        required=True, metadata={"description": "The training sample's proportion."}
    )


class DriftFeatureSchema(Schema):
    """One feature's drift since the server started."""

    name = fields.String(required=True)
    kind = fields.String(
        required=True, metadata={"description": "numeric, categorical, text or datetime"}
    )
    unit = fields.String(
        allow_none=True,
        metadata={
            "description": "The bounds' unit: null (the feature's own), `seconds since "
            "1970-01-01` (datetimes) or `characters` (texts, binned by length)."
        },
    )
    rows = fields.Integer(required=True, metadata={"description": "Rows counted."})
    psi = fields.Float(
        allow_none=True,
        metadata={
            "description": "Population stability index against the training reference; "
            "null before any row."
        },
    )
    passed = fields.Boolean(
        allow_none=True,
        metadata={"description": "psi is at most the threshold; null before any row."},
    )
    bins = fields.List(fields.Nested(DriftBinSchema), required=True)


class UnmonitoredFeatureSchema(Schema):
    """A feature whose reference cannot be compared with, and why."""

    name = fields.String(required=True)
    reason = fields.String(required=True)


class DriftResponseSchema(Schema):
    """A model version's drift from its training reference, over every worker's rows."""

    model_name = fields.String(required=True)
    model_version = fields.String(required=True)
    threshold = fields.Float(
        required=True, metadata={"description": "DRIFT_PSI_THRESHOLD: the highest PSI that passes."}
    )
    epsilon = fields.Float(
        required=True,
        metadata={"description": "The proportion an empty bin counts as in the PSI."},
    )
    rows = fields.Integer(
        required=True, metadata={"description": "Rows counted since the server started."}
    )
    passed = fields.Boolean(required=True, metadata={"description": "No feature failed."})
    drifted = fields.List(
        fields.String(), required=True, metadata={"description": "The features that failed."}
    )
    features = fields.List(fields.Nested(DriftFeatureSchema), required=True)
    unmonitored = fields.List(fields.Nested(UnmonitoredFeatureSchema), required=True)
