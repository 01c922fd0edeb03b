"""Drift reports: each feature's population stability index against the training reference."""

from __future__ import annotations

from flask import current_app
from flask.views import MethodView

from inference_app import monitoring
from inference_app.http.api import Blueprint, get_registry
from inference_app.http.schemas import DriftResponseSchema

blp = Blueprint(
    "drift",
    __name__,
    description="Drift of the served rows from each model version's training reference.",
)


def _report(name: str, version: str | None) -> monitoring.Report:
    bundle = get_registry().get(name, version)
    monitor: monitoring.Monitor = current_app.extensions[monitoring.EXTENSION]
    return monitoring.report(monitor, bundle, float(current_app.config["DRIFT_PSI_THRESHOLD"]))


@blp.route("/v1/models/<segment:name>/drift")
class ModelDrift(MethodView):
    """Drift of a model's default version."""

    @blp.response(200, DriftResponseSchema)
    @blp.error(404)
    def get(self, name: str) -> monitoring.Report:
        """Report a model's drift from its training data

        Per feature, the population stability index (PSI) of the rows served since the
        server started, over every worker, against the training sample's histogram, and
        whether it is at most `DRIFT_PSI_THRESHOLD`. PSI = sum over bins of
        (p - q) ln(p / q), p the served and q the training proportions, each at least
        `epsilon` (Siddiqi, Credit Risk Scorecards, 2006; Yurdakul, 2018). For the model's
        default (highest) version.
        """
        return _report(name, None)


@blp.route("/v1/models/<segment:name>/versions/<segment:version>/drift")
class ModelVersionDrift(MethodView):
    """Drift of one model version."""

    @blp.response(200, DriftResponseSchema)
    @blp.error(404)
    def get(self, name: str, version: str) -> monitoring.Report:
        """Report one model version's drift from its training data"""
        return _report(name, version)
