"""The OpenAPI document, its per-model operations, and Swagger UI served from local files."""

from __future__ import annotations

import re
from typing import Any

import pytest
from flask.testing import FlaskClient

from inference_app.demo import load_demo_data


@pytest.fixture
def spec(client: FlaskClient) -> dict[str, Any]:
    """The OpenAPI document the app serves."""
    response = client.get("/openapi.json")
    assert response.status_code == 200
    document: dict[str, Any] = response.get_json()
    return document


def test_every_route_is_documented(spec: dict[str, Any]) -> None:
    assert spec["openapi"].startswith("3.")
    assert {
        "/health/live",
        "/health/ready",
        "/v1/models",
        "/v1/models/{name}",
        "/v1/models/{name}/versions/{version}",
        "/v1/models/{name}:predict",
        "/v1/models/{name}/versions/{version}:predict",
        "/predict",
        "/v2",
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/{name}",
        "/v2/models/{name}/versions/{version}",
        "/v2/models/{name}/ready",
        "/v2/models/{name}/versions/{version}/ready",
        "/v2/models/{name}/infer",
        "/v2/models/{name}/versions/{version}/infer",
        "/ping",
        "/version",
        "/invocations",
    } <= set(spec["paths"])


def test_every_json_request_body_has_a_schema_and_an_example(spec: dict[str, Any]) -> None:
    schemas = spec["components"]["schemas"]
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if "requestBody" not in operation:
                continue
            content = operation["requestBody"]["content"]["application/json"]
            schema = content["schema"]
            if "$ref" in schema:
                schema = schemas[schema["$ref"].rsplit("/", 1)[-1]]
            examples = [content.get("example")] + [
                prop.get("example") for prop in schema.get("properties", {}).values()
            ]
            assert any(example is not None for example in examples), (method, path)


@pytest.mark.parametrize("name", ["iris", "breast_cancer", "diabetes"])
def test_each_model_has_its_request_schema_and_example(
    client: FlaskClient, spec: dict[str, Any], name: str
) -> None:
    operation = spec["paths"][f"/v1/models/{name}:predict"]["post"]
    content = operation["requestBody"]["content"]["application/json"]
    record = spec["components"]["schemas"][f"{name}.Record"]
    _, _, feature_names = load_demo_data(name)
    assert list(record["properties"]) == feature_names
    assert record["required"] == feature_names
    instances = content["schema"]["properties"]["instances"]
    assert instances["minItems"] == 1 and instances["maxItems"] == 10_000
    record_ref, values = instances["items"]["oneOf"]
    assert record_ref == {"$ref": f"#/components/schemas/{name}.Record"}
    assert values["minItems"] == values["maxItems"] == len(feature_names)
    example = content["example"]
    assert set(example["instances"][0]) == set(feature_names)
    response = client.post(f"/v1/models/{name}:predict", json=example)
    assert response.status_code == 200
    assert len(response.get_json()["predictions"]) == len(example["instances"])


def test_error_responses_use_the_envelope_schema(spec: dict[str, Any]) -> None:
    responses = spec["paths"]["/v1/models/{name}:predict"]["post"]["responses"]
    assert {"200", "404", "415", "422", "503"} <= set(responses)
    error = spec["components"]["schemas"]["Error"]["properties"]
    assert {"code", "status", "message", "errors"} <= set(error)


def test_swagger_ui_loads_only_local_assets(client: FlaskClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert assets, html
    for asset in assets:
        assert not re.match(r"^(https?:)?//", asset), asset
        # The page lives at /docs, so relative URLs resolve from the site root.
        with client.get("/" + asset) as served:
            assert served.status_code == 200, asset
            assert len(served.data) > 1000
    assert '"/openapi.json"' in html
