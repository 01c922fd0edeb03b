"""Domain errors of the serving core; they carry no HTTP status (the HTTP layer maps them)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class InferenceAppError(Exception):
    """Base class of every error the serving core raises on purpose."""


class BundleError(InferenceAppError):
    """A model bundle cannot be written, read, verified or loaded."""


class RefusedBundlesError(BundleError):
    """Some bundles of a models folder were refused.

    :param message: every refused folder and why.
    :param by_model: why, by model name: ``{"iris": ["version 3: ... sha256 ..."]}``.
    """

    def __init__(self, message: str, by_model: Mapping[str, list[str]]) -> None:
        super().__init__(message)
        self.by_model = by_model


class TrafficError(RefusedBundlesError):
    """A model's ``traffic.json`` is refused: unreadable, not JSON, or its rules do not fit
    the versions loaded (see :mod:`inference_app.core.traffic`).

    :param message: every refused file and why.
    :param by_model: why, by model name: ``{"iris": ["traffic.json: weights sum to 95..."]}``.
    """


class ModelNotFoundError(InferenceAppError):
    """No model, or no version of a model, has the requested name."""


class NoDefaultModelError(ModelNotFoundError):
    """A route that takes no model name was called while several models, none of them the
    default, are served."""


class ModelNotReadyError(InferenceAppError):
    """The model is loaded but not warmed up in this process yet."""


class InvalidInputError(InferenceAppError):
    """The caller's rows cannot be given to the model.

    :param message: one sentence saying what is wrong and what to send instead.
    :param errors: where it is wrong, nested like marshmallow's messages, for example
        ``{"instances": {"3": {"petal width (cm)": ["Not a number."]}}}``.
    """

    def __init__(self, message: str, errors: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.errors = dict(errors or {})


class MethodNotAvailableError(InvalidInputError):
    """The caller asked for a prediction method the estimator does not have."""


class InvalidOutputError(InvalidInputError):
    """The estimator returned a value that strict JSON cannot carry (NaN or infinity)."""
