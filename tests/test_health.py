"""Health probes: liveness always, readiness only once every model is warmed up."""

from __future__ import annotations

from pathlib import Path

from inference_app import create_app, process


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
