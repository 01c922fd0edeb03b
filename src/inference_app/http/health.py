"""Health probes: liveness never touches models; readiness waits for every model's warm-up."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView

from inference_app.http.api import Blueprint, get_registry
from inference_app.http.schemas import HealthResponseSchema

# No url_prefix: KServe's liveness probe is the root, ``GET /``, beside ``/health/...``.
blp = Blueprint(
    "health",
    __name__,
    description="Probes for load balancers and Kubernetes.",
)


@blp.route("/")
class Root(MethodView):
    """Liveness at the root, as KServe's model server answers it."""

    @blp.response(200, HealthResponseSchema)
    @blp.doc(security=[])
    def get(self) -> dict[str, Any]:
        """Say the process is up, as KServe's model server does

        KServe's Python SDK checks liveness with `GET /`. Like `/health/live`, it never
        touches the models.
        """
        return {"status": "alive"}


@blp.route("/health/live")
class Live(MethodView):
    """Liveness."""

    @blp.response(200, HealthResponseSchema)
    @blp.doc(security=[])
    def get(self) -> dict[str, Any]:
        """Say the process is up

        Never touches the models: use it as the liveness probe.
        """
        return {"status": "alive"}


@blp.route("/health/ready")
class Ready(MethodView):
    """Readiness."""

    @blp.response(200, HealthResponseSchema)
    @blp.alt_response(503, schema=HealthResponseSchema, description="Not ready, with the reason")
    @blp.doc(security=[])
    def get(self) -> tuple[dict[str, Any], int]:
        """Say whether every model is loaded and warmed up

        503 with the reason while any model is warming up, and when no model is loaded.
        """
        registry = get_registry()
        ready, message = registry.readiness()
        models = {name: registry.model_ready(name) for name in registry.models}
        body = {"status": "ready" if ready else "not ready", "message": message, "models": models}
        return body, 200 if ready else 503
