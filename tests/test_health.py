"""Health probes: liveness always, readiness only once every model is warmed up."""

from __future__ import annotations

from pathlib import Path

import pytest

from inference_app import create_app, process
from inference_app.http import health


def test_live_never_touches_models(tmp_path: Path) -> None:
    app = create_app(instance_path=tmp_path)
    response = app.test_client().get("/health/live")
    assert response.status_code == 200 and response.get_json() == {"status": "alive"}


def test_ready_with_warmed_models(demo_instance: Path) -> None:
    response = create_app(instance_path=demo_instance).test_client().get("/health/ready")
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "ready"
    assert body["models"] == {"breast_cancer": True, "diabetes": True, "iris": True}


def test_not_ready_with_zero_models(tmp_path: Path) -> None:
    response = create_app(instance_path=tmp_path).test_client().get("/health/ready")
    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "not ready" and "no models are loaded" in body["message"]


def test_not_ready_until_warmed_after_fork(demo_instance: Path) -> None:
    app = create_app({"WARM_UP": "post_fork"}, instance_path=demo_instance)
    client = app.test_client()
    waiting = client.get("/health/ready")
    assert waiting.status_code == 503
    assert "breast_cancer, diabetes, iris" in waiting.get_json()["message"]
    refused = client.post("/v1/models/iris:predict", json={"instances": [[5.1, 3.5, 1.4, 0.2]]})
    assert refused.status_code == 503 and "warming up" in refused.get_json()["message"]
    process.warm_up(app)
    assert client.get("/health/ready").status_code == 200
    assert client.get("/v1/models/iris").get_json()["ready"] is True


def test_root_answers_as_kserve_liveness(tmp_path: Path) -> None:
    response = create_app(instance_path=tmp_path).test_client().get("/")

    assert response.status_code == 200
    assert response.get_json() == {"status": "alive"}
    assert response.headers["Content-Type"] == "application/json"


def test_root_never_touches_models(demo_instance: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app = create_app({"WARM_UP": "post_fork"}, instance_path=demo_instance)
    client = app.test_client()
    assert client.get("/health/ready").status_code == 503  # models loaded, none warm

    def no_registry() -> None:
        raise AssertionError("a liveness probe looked at the models")

    monkeypatch.setattr(health, "get_registry", no_registry)
    response = client.get("/")

    assert response.status_code == 200 and response.get_json() == {"status": "alive"}


def test_root_is_documented_like_the_other_probes(tmp_path: Path) -> None:
    spec = create_app(instance_path=tmp_path).test_client().get("/openapi.json").get_json()

    operation = spec["paths"]["/"]["get"]
    live = spec["paths"]["/health/live"]["get"]
    assert operation["security"] == []
    assert operation["responses"]["200"] == live["responses"]["200"]
    schema = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert schema["$ref"].endswith("/HealthResponse")
    assert "KServe" in operation["summary"] + operation.get("description", "")
    assert "health" in operation["tags"]
    # The probes keep their paths without the blueprint's former url_prefix.
    assert {"/health/live", "/health/ready"} <= set(spec["paths"])
    assert "/health/" not in spec["paths"]


def test_root_needs_no_api_key(tmp_path: Path) -> None:
    client = create_app({"API_KEYS": ["s3cret"]}, instance_path=tmp_path).test_client()
    assert client.get("/v1/models").status_code == 401  # the API itself is guarded

    response = client.get("/")

    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json() == {"status": "alive"}
