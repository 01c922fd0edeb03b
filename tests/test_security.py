"""Hardening in process: API keys, the concurrency cap, headers, CORS, JSON depth, safe bundles."""

from __future__ import annotations

import base64
import csv
import hashlib
import html.parser
import io
import json
import platform
import shutil
import sys
import tempfile
import threading
from importlib import metadata
from pathlib import Path
from typing import Any, NamedTuple

import joblib
import numpy as np
import pytest
import sklearn
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient
from sklearn.ensemble import RandomForestClassifier
from skops import io as skops_io
from werkzeug.test import TestResponse

from inference_app import create_app
from inference_app.cli import main
from inference_app.config import ConfigError
from inference_app.core.bundle import MANIFEST_FILE, load_bundle, write_bundle
from inference_app.core.errors import BundleError
from inference_app.core.registry import Registry, discover
from inference_app.demo import load_demo_data
from inference_app.http.api import get_registry

KEY = "k3y-for-the-first-client"
SECOND_KEY = "k3y-for-the-second-client"
SETOSA = [5.1, 3.5, 1.4, 0.2]
V2_SETOSA = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": SETOSA}]}
#: MLflow's error codes by status; any other 4xx is BAD_REQUEST.
MLFLOW_CODES = {
    401: "UNAUTHENTICATED",
    404: "RESOURCE_DOES_NOT_EXIST",
    429: "REQUEST_LIMIT_EXCEEDED",
}
#: Seconds a thread of a test may wait for another.
WAIT = 30.0
REPO = Path(__file__).resolve().parents[1]
#: Text no error body may hold: tracebacks, server paths, library and interpreter versions.
INTERNALS = [
    "Traceback",
    'File "/',
    "site-packages",
    str(REPO),
    sys.prefix,
    tempfile.gettempdir() + "/",
    f"scikit-learn {sklearn.__version__}",
    sklearn.__version__,
    np.__version__,
    metadata.version("flask"),
    metadata.version("werkzeug"),
    metadata.version("joblib"),
    metadata.version("skops"),
    platform.python_version(),
]


class Route(NamedTuple):
    """A request to one route: method, path, JSON body, and the dialect of its errors."""

    method: str
    path: str
    body: Any
    dialect: str


PREDICT_ROUTES = [
    Route("POST", "/v1/models/iris:predict", {"instances": [SETOSA]}, "native"),
    Route("POST", "/v1/models/iris/versions/1:predict", {"instances": [SETOSA]}, "native"),
    Route("POST", "/predict", {"instance": SETOSA}, "native"),
    Route("POST", "/v2/models/iris/infer", V2_SETOSA, "v2"),
    Route("POST", "/v2/models/iris/versions/1/infer", V2_SETOSA, "v2"),
    Route("POST", "/invocations", {"instances": [SETOSA]}, "mlflow"),
]
METADATA_ROUTES = [
    Route("GET", "/v1/models", None, "native"),
    Route("GET", "/v1/models/iris", None, "native"),
    Route("GET", "/v1/models/iris/versions/1", None, "native"),
    Route("GET", "/v2", None, "v2"),
    Route("GET", "/v2/models/iris", None, "v2"),
    Route("GET", "/v2/models/iris/versions/1", None, "v2"),
    Route("GET", "/v2/models/iris/ready", None, "v2"),
    Route("GET", "/version", None, "mlflow"),
]
KEYED_ROUTES = PREDICT_ROUTES + METADATA_ROUTES
#: Probes and the metrics scrape: never asked for a key, never counted by the concurrency cap.
OPEN_ROUTES = [
    "/health/live",
    "/health/ready",
    "/v2/health/live",
    "/v2/health/ready",
    "/ping",
    "/metrics",
]
DOCS_ROUTES = ["/docs", "/openapi.json", "/docs/static/swagger-ui-bundle.js"]
RIGHT_KEYS = {
    "bearer": {"Authorization": f"Bearer {KEY}"},
    "bearer-lowercase-scheme": {"Authorization": f"bearer {SECOND_KEY}"},
    "x-api-key": {"X-API-Key": SECOND_KEY},
}


def route_id(route: Route) -> str:
    """Return a test id for ``route``."""
    return f"{route.method} {route.path}"


def sha256(text: str) -> str:
    """Return the hex SHA-256 digest of ``text``."""
    return hashlib.sha256(text.encode()).hexdigest()


def send(client: FlaskClient, route: Route, headers: dict[str, str] | None = None) -> TestResponse:
    """Send ``route``'s request with ``headers``; return the answer, read and closed."""
    # Bodies are encoded by the standard library, not the app's JSON provider: clients may
    # send what the app would never write, e.g. integers beyond 64 bits.
    data = None if route.body is None else json.dumps(route.body)
    response = client.open(
        route.path,
        method=route.method,
        data=data,
        content_type=None if data is None else "application/json",
        headers=headers or {},
    )
    response.get_data()  # static files are streamed from an open file until read and closed
    response.close()
    return response


def get(client: FlaskClient, path: str, headers: dict[str, str] | None = None) -> TestResponse:
    """Send ``GET path`` with ``headers``; return the answer, read and closed."""
    return send(client, Route("GET", path, None, "native"), headers)


def assert_no_internals(text: str, *paths: Path) -> None:
    """Assert ``text`` holds no traceback, server path or version, nor any of ``paths``."""
    for marker in [*INTERNALS, *map(str, paths)]:
        assert marker not in text, f"{marker!r} leaks in {text[:1000]!r}"


def assert_error(response: TestResponse, dialect: str, status: int, *paths: Path) -> str:
    """Assert ``response`` is a ``status`` error in ``dialect``'s envelope; return its message."""
    text = response.get_data(as_text=True)
    assert response.status_code == status, text[:1000]
    assert response.mimetype == "application/json", text[:1000]
    body = response.get_json()
    if dialect == "native":
        assert {"code", "status", "message"} <= set(body) <= {"code", "status", "message", "errors"}
        assert body["code"] == status
        message = body["message"]
    elif dialect == "v2":
        assert set(body) == {"error"}, body
        message = body["error"]
    else:
        assert set(body) == {"error_code", "message"}, body
        assert body["error_code"] == MLFLOW_CODES.get(status, "BAD_REQUEST")
        message = body["message"]
    assert isinstance(message, str) and message
    assert_no_internals(text, *paths)
    return message


def predicted(route: Route, body: dict[str, Any]) -> list[Any]:
    """Return the labels a 200 answer of ``route`` predicts, one per row."""
    if route.dialect == "v2":
        return list(body["outputs"][0]["data"])
    if "prediction" in body:
        return [body["prediction"]]
    return list(body["predictions"])


def copy_models(instance: Path, demo_instance: Path, *names: str) -> Path:
    """Copy demo bundles into ``instance/models`` and return that folder."""
    models = instance / "models"
    for name in names:
        shutil.copytree(demo_instance / "models" / name, models / name)
    return models


def edit_manifest(folder: Path, **changes: Any) -> None:
    """Change fields of the manifest in a bundle folder, and nothing else."""
    path = folder / MANIFEST_FILE
    manifest = json.loads(path.read_text(encoding="utf-8"))
    manifest.update(changes)
    path.write_text(json.dumps(manifest, indent=2), encoding="utf-8")


def policy(header: str) -> dict[str, list[str]]:
    """Parse a Content-Security-Policy into its directives' source lists."""
    directives = [part.split() for part in header.split(";") if part.strip()]
    return {words[0]: words[1:] for words in directives}


class PageScripts(html.parser.HTMLParser):
    """Collect a page's inline script texts and the URLs of the files it loads."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=False)
        self.inline: list[str] = []
        self.files: list[str] = []
        self._script: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        if tag == "script" and named.get("src"):
            self.files.append(str(named["src"]))
        elif tag == "script":
            self._script = []
        elif tag == "link" and named.get("href"):
            self.files.append(str(named["href"]))

    def handle_data(self, data: str) -> None:
        if self._script is not None:
            self._script.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "script" and self._script is not None:
            self.inline.append("".join(self._script))
            self._script = None


class HeldBody(io.BytesIO):
    """A request body whose reads wait until released: a client still uploading its body.

    The app reads the body in its view, after the concurrency guard took a slot, so the
    request holds that slot until :attr:`release` is set.
    """

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.reading = threading.Event()
        self.release = threading.Event()

    def _wait(self) -> None:
        self.reading.set()
        if not self.release.wait(WAIT):
            raise TimeoutError("the held body was never released")

    def read(self, size: int | None = -1) -> bytes:
        self._wait()
        return super().read(size)

    def readinto(self, buffer: Any) -> int:
        self._wait()
        return super().readinto(buffer)


class Touch:
    """A pickle payload: unpickling it creates ``marker``, as a malicious bundle would run code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[Path]]:
        return (Path.touch, (self.marker,))


@pytest.fixture(scope="module")
def setosa(demo_instance: Path) -> list[Any]:
    """What the demo iris estimator predicts for ``SETOSA``, computed in process."""
    estimator = load_bundle(demo_instance / "models" / "iris" / "1").estimator
    labels: list[Any] = estimator.predict(np.array([SETOSA])).tolist()
    return labels


@pytest.fixture(scope="module")
def keyed_app(demo_instance: Path) -> Flask:
    """An app over the demo bundles that asks for ``KEY`` or ``SECOND_KEY``."""
    return create_app({"TESTING": True, "API_KEYS": [KEY, SECOND_KEY]}, instance_path=demo_instance)


@pytest.fixture(scope="module")
def keyed(keyed_app: Flask) -> FlaskClient:
    """A client of the app that asks for a key."""
    return keyed_app.test_client()


@pytest.fixture(scope="module")
def open_client(demo_instance: Path) -> FlaskClient:
    """A client of an app over the demo bundles with no keys configured."""
    return create_app({"TESTING": True}, instance_path=demo_instance).test_client()


@pytest.fixture(scope="module")
def cancer() -> tuple[np.ndarray, RandomForestClassifier, list[str]]:
    """The breast_cancer rows, a RandomForest fitted on them, and the feature names."""
    rows, target, names = load_demo_data("breast_cancer")
    forest = RandomForestClassifier(n_estimators=25, random_state=0).fit(rows, target)
    return rows, forest, names


@pytest.fixture
def skops_models(
    tmp_path: Path, demo_instance: Path, cancer: tuple[np.ndarray, Any, list[str]]
) -> Path:
    """A models folder with a skops RandomForest bundle ``cancer`` and the demo iris bundle."""
    rows, forest, names = cancer
    models = copy_models(tmp_path / "instance", demo_instance, "iris")
    write_bundle(forest, rows, models, "cancer", "1", feature_names=names, format="skops")
    return models


# Authentication


@pytest.mark.parametrize("route", KEYED_ROUTES, ids=route_id)
def test_without_a_key_every_route_answers_401_in_its_dialect(
    keyed: FlaskClient, route: Route
) -> None:
    response = send(keyed, route)

    message = assert_error(response, route.dialect, 401)
    assert response.headers["WWW-Authenticate"].startswith("Bearer realm=")
    assert "Authorization: Bearer" in message and "X-API-Key" in message


@pytest.mark.parametrize("header", ["Authorization", "X-API-Key"])
@pytest.mark.parametrize("route", KEYED_ROUTES, ids=route_id)
def test_with_a_wrong_key_every_route_answers_401_in_its_dialect(
    keyed: FlaskClient, route: Route, header: str
) -> None:
    value = "Bearer not-the-key" if header == "Authorization" else "not-the-key"

    response = send(keyed, route, {header: value})

    message = assert_error(response, route.dialect, 401)
    assert response.headers["WWW-Authenticate"].startswith("Bearer realm=")
    assert "not-the-key" not in message  # credentials are never echoed


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": f"Bearer {KEY[:-1]}"},
        {"Authorization": f"Bearer {KEY}x"},
        {"Authorization": f"Bearer {KEY.upper()}"},
        {"Authorization": "Bearer "},
        {"Authorization": f"Basic {KEY}"},
        {"Authorization": KEY},
        {"X-API-Key": sha256(KEY)},
        {"X-API-Key": ""},
        {"X-API-Key": f"{KEY},{SECOND_KEY}"},
    ],
    ids=lambda headers: repr(headers)[:60],
)
def test_near_misses_of_a_key_are_refused(keyed: FlaskClient, headers: dict[str, str]) -> None:
    for route in (PREDICT_ROUTES[0], PREDICT_ROUTES[5]):
        assert_error(send(keyed, route, headers), route.dialect, 401)


def test_a_key_in_the_query_string_is_refused(keyed: FlaskClient) -> None:
    response = keyed.post(
        "/v1/models/iris:predict", json={"instances": [SETOSA]}, query_string={"api_key": KEY}
    )

    assert_error(response, "native", 401)


@pytest.mark.parametrize("credentials", list(RIGHT_KEYS))
@pytest.mark.parametrize("route", KEYED_ROUTES, ids=route_id)
def test_with_a_right_key_every_route_answers(
    keyed: FlaskClient, route: Route, credentials: str, setosa: list[Any]
) -> None:
    response = send(keyed, route, RIGHT_KEYS[credentials])

    assert response.status_code == 200, response.get_data(as_text=True)[:1000]
    if route in PREDICT_ROUTES:
        assert predicted(route, response.get_json()) == setosa


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer not-the-key"}])
@pytest.mark.parametrize("path", OPEN_ROUTES)
def test_probes_and_metrics_answer_without_a_key(
    keyed: FlaskClient, path: str, headers: dict[str, str]
) -> None:
    response = keyed.get(path, headers=headers)

    assert response.status_code == 200, response.get_data(as_text=True)[:1000]
    assert "WWW-Authenticate" not in response.headers


@pytest.mark.parametrize("path", DOCS_ROUTES)
def test_docs_are_open_by_default_even_with_keys(keyed: FlaskClient, path: str) -> None:
    assert get(keyed, path).status_code == 200


@pytest.mark.parametrize("path", DOCS_ROUTES)
def test_docs_ask_for_a_key_with_auth_docs(demo_instance: Path, path: str) -> None:
    settings = {"TESTING": True, "API_KEYS": [KEY], "AUTH_DOCS": True}
    client = create_app(settings, instance_path=demo_instance).test_client()

    assert_error(get(client, path), "native", 401)
    assert get(client, path, {"X-API-Key": KEY}).status_code == 200
    assert client.get("/health/ready").status_code == 200


def test_keys_from_a_comma_separated_environment_variable(
    monkeypatch: pytest.MonkeyPatch, demo_instance: Path
) -> None:
    monkeypatch.setenv("INFERENCE_APP_API_KEYS", "alpha, beta")
    client = create_app({"TESTING": True}, instance_path=demo_instance).test_client()
    route = PREDICT_ROUTES[0]

    for key in ("alpha", "beta"):
        assert send(client, route, {"X-API-Key": key}).status_code == 200
    for key in ("alpha, beta", "alpha,beta", "alph", "alphabeta"):
        assert_error(send(client, route, {"X-API-Key": key}), "native", 401)


def test_keys_from_a_json_list_environment_variable(
    monkeypatch: pytest.MonkeyPatch, demo_instance: Path
) -> None:
    monkeypatch.setenv("INFERENCE_APP_API_KEYS", '["alpha", "be,ta"]')
    client = create_app({"TESTING": True}, instance_path=demo_instance).test_client()
    route = PREDICT_ROUTES[3]

    for key in ("alpha", "be,ta"):
        assert send(client, route, {"Authorization": f"Bearer {key}"}).status_code == 200
    for key in ("be", "ta", '["alpha", "be,ta"]', '"alpha"'):
        assert_error(send(client, route, {"Authorization": f"Bearer {key}"}), "v2", 401)


def keys_file_app(tmp_path: Path, demo_instance: Path, lines: list[str]) -> Flask:
    """Create an app whose keys are the digests in ``<instance>/keys.txt``, holding ``lines``."""
    instance = tmp_path / "instance"
    instance.mkdir(exist_ok=True)
    (instance / "keys.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    settings = {
        "TESTING": True,
        "API_KEYS_FILE": "keys.txt",
        "DEFAULT_MODEL": "iris",
        "MODELS_DIR": str(demo_instance / "models"),
    }
    return create_app(settings, instance_path=instance)


def test_keys_file_of_digests_with_comments_and_blank_lines(
    tmp_path: Path, demo_instance: Path, setosa: list[Any]
) -> None:
    lines = [
        "# SHA-256 digests of the API keys",
        "",
        sha256(KEY),
        f"   {sha256(SECOND_KEY).upper()}   # the second client",
        "",
    ]
    client = keys_file_app(tmp_path, demo_instance, lines).test_client()
    route = PREDICT_ROUTES[5]

    for key in (KEY, SECOND_KEY):
        response = send(client, route, {"X-API-Key": key})
        assert response.status_code == 200
        assert predicted(route, response.get_json()) == setosa
    for key in (sha256(KEY), "# SHA-256 digests of the API keys", "the second client"):
        assert_error(send(client, route, {"X-API-Key": key}), "mlflow", 401)


@pytest.mark.parametrize(
    "bad",
    ["not-a-digest", sha256(KEY)[:-1], sha256(KEY) + "0", f"sha256:{sha256(KEY)}", KEY],
)
def test_keys_file_with_a_bad_line_is_refused_naming_file_and_line(
    tmp_path: Path, demo_instance: Path, bad: str
) -> None:
    lines = ["# digests", "", sha256(SECOND_KEY), bad, sha256(KEY)]

    with pytest.raises(ConfigError) as refused:
        keys_file_app(tmp_path, demo_instance, lines)

    message = str(refused.value)
    assert "API_KEYS_FILE" in message
    assert f"{tmp_path / 'instance' / 'keys.txt'}:4" in message
    assert bad not in message  # a key written there by mistake is not printed


def test_missing_keys_file_is_refused_naming_it(tmp_path: Path, demo_instance: Path) -> None:
    settings = {"API_KEYS_FILE": "absent.txt", "MODELS_DIR": str(demo_instance / "models")}

    with pytest.raises(ConfigError, match=r"API_KEYS_FILE.*absent\.txt"):
        create_app(settings, instance_path=tmp_path)


def test_openapi_declares_the_key_schemes_only_when_keys_exist(
    open_client: FlaskClient, keyed: FlaskClient
) -> None:
    plain = open_client.get("/openapi.json").get_json()
    secured = keyed.get("/openapi.json").get_json()

    assert "securitySchemes" not in plain.get("components", {})
    assert "security" not in plain
    schemes = secured["components"]["securitySchemes"]
    by_kind = {
        (scheme["type"], scheme.get("scheme") or scheme.get("name")): name
        for name, scheme in schemes.items()
    }
    assert set(by_kind) == {("http", "bearer"), ("apiKey", "X-API-Key")}
    api_key = schemes[by_kind[("apiKey", "X-API-Key")]]
    assert api_key["in"] == "header"
    # Either scheme suffices: one requirement object per scheme.
    assert sorted(secured["security"], key=str) == sorted([{name: []} for name in schemes], key=str)


def test_openapi_says_probes_and_metrics_need_no_key(keyed: FlaskClient) -> None:
    spec = keyed.get("/openapi.json").get_json()

    for path in OPEN_ROUTES:
        assert spec["paths"][path]["get"].get("security") == [], path


def test_get_on_a_predict_route_is_405(open_client: FlaskClient) -> None:
    response = get(open_client, "/v1/models/iris:predict")

    assert_error(response, "native", 405)
    assert set(response.headers["Allow"].replace(" ", "").split(",")) <= {"POST", "OPTIONS"}


# The concurrency cap


def test_concurrency_cap_answers_429_while_a_request_is_held_and_spares_probes(
    demo_instance: Path, setosa: list[Any]
) -> None:
    app = create_app({"TESTING": True, "MAX_CONCURRENT_REQUESTS": 1}, instance_path=demo_instance)
    body = json.dumps({"instances": [SETOSA]}).encode()
    held = HeldBody(body)
    answers: list[TestResponse] = []

    def slow_client() -> None:
        answers.append(
            app.test_client().post(
                "/v1/models/iris:predict",
                input_stream=held,
                content_length=len(body),
                content_type="application/json",
            )
        )

    thread = threading.Thread(target=slow_client)
    thread.start()
    try:
        assert held.reading.wait(WAIT), "the held request never reached its view"
        client = app.test_client()
        for route in (*PREDICT_ROUTES, METADATA_ROUTES[0]):
            response = send(client, route)
            assert_error(response, route.dialect, 429)
            assert int(response.headers["Retry-After"]) >= 1
        for path in OPEN_ROUTES:
            assert client.get(path).status_code == 200, path
    finally:
        held.release.set()
        thread.join(WAIT)

    assert not thread.is_alive()
    assert answers[0].status_code == 200, answers[0].get_data(as_text=True)
    assert answers[0].get_json()["predictions"] == setosa
    assert send(app.test_client(), PREDICT_ROUTES[0]).status_code == 200


def test_concurrency_cap_frees_its_slot_after_every_kind_of_answer(demo_instance: Path) -> None:
    settings = {"TESTING": True, "MAX_CONCURRENT_REQUESTS": 1, "API_KEYS": [KEY]}
    app = create_app(settings, instance_path=demo_instance)
    client = app.test_client()
    key = {"X-API-Key": KEY}
    failures = [
        (lambda: client.post("/v1/models/iris:predict", json={"instances": [[1.0]]}), 401),
        (lambda: client.post("/v1/models/iris:predict", json={}, headers=key), 422),
        (lambda: client.post("/v1/models/nope:predict", json={"instances": []}, headers=key), 404),
        (lambda: client.delete("/v1/models/iris:predict", headers=key), 405),
        (
            lambda: client.post("/predict", data="{", content_type="application/json", headers=key),
            400,
        ),
        (lambda: client.post("/predict", data="1", content_type="text/plain", headers=key), 415),
        (lambda: client.post("/v2/models/iris/infer", json={"inputs": 1}, headers=key), 400),
        (
            lambda: client.post("/invocations", data=b"\xff", content_type="text/csv", headers=key),
            400,
        ),
    ]
    semaphore = app.extensions["inference_app.security"].semaphore

    for request, status in failures:
        assert request().status_code == status
        assert semaphore.acquire(blocking=False), f"a {status} answer kept its slot"
        semaphore.release()
        assert send(client, PREDICT_ROUTES[0], key).status_code == 200


def test_a_busy_worker_answers_429_from_its_guard(demo_instance: Path) -> None:
    app = create_app({"TESTING": True, "MAX_CONCURRENT_REQUESTS": 2}, instance_path=demo_instance)
    semaphore = app.extensions["inference_app.security"].semaphore
    client = app.test_client()

    for _ in range(2):  # two requests in flight elsewhere in this worker
        assert semaphore.acquire(blocking=False)
    try:
        assert_error(send(client, PREDICT_ROUTES[3]), "v2", 429)
        assert client.get("/v2/health/ready").status_code == 200
    finally:
        semaphore.release()
    assert send(client, PREDICT_ROUTES[3]).status_code == 200
    semaphore.release()


# Security headers


HEADER_REQUESTS = [
    Route("POST", "/v1/models/iris:predict", {"instances": [SETOSA]}, "native"),
    Route("POST", "/v1/models/iris:predict", {"instances": [[1.0]]}, "native"),
    Route("POST", "/v2/models/iris/infer", {"inputs": []}, "v2"),
    Route("POST", "/invocations", {"instances": [SETOSA]}, "mlflow"),
    Route("GET", "/v1/models", None, "native"),
    Route("GET", "/no/such/route", None, "native"),
    Route("GET", "/v1/models/iris:predict", None, "native"),
    Route("GET", "/version", None, "mlflow"),
    Route("GET", "/openapi.json", None, "native"),
    Route("GET", "/docs", None, "native"),
    Route("GET", "/docs/static/swagger-ui.css", None, "native"),
    Route("GET", "/metrics", None, "native"),
    Route("GET", "/ping", None, "mlflow"),
    Route("GET", "/health/live", None, "native"),
]


@pytest.mark.parametrize("route", HEADER_REQUESTS, ids=route_id)
def test_every_answer_forbids_mime_sniffing(
    open_client: FlaskClient, keyed: FlaskClient, route: Route
) -> None:
    for client in (open_client, keyed):
        response = send(client, route)
        assert response.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize("route", PREDICT_ROUTES, ids=route_id)
def test_predictions_and_their_errors_are_never_cached(
    open_client: FlaskClient, route: Route
) -> None:
    answered = send(open_client, route)
    refused = open_client.open(route.path, method="POST", json={"nonsense": True})

    assert answered.status_code == 200
    assert refused.status_code in (400, 422)
    for response in (answered, refused):
        assert "no-store" in response.headers["Cache-Control"]


@pytest.mark.parametrize(
    "route", [r for r in HEADER_REQUESTS if not r.path.startswith("/docs")], ids=route_id
)
def test_json_and_text_answers_allow_no_content_at_all(
    open_client: FlaskClient, route: Route
) -> None:
    response = send(open_client, route)

    directives = policy(response.headers["Content-Security-Policy"])
    assert directives["default-src"] == ["'none'"]
    assert directives["frame-ancestors"] == ["'none'"]


@pytest.mark.parametrize(
    "ui_config",
    [None, {"tryItOutEnabled": False, "docExpansion": "none"}],
    ids=["default", "other"],
)
def test_docs_policy_allows_exactly_the_pages_own_inline_scripts(
    demo_instance: Path, ui_config: dict[str, Any] | None
) -> None:
    settings: dict[str, Any] = {"TESTING": True}
    if ui_config is not None:
        settings["OPENAPI_SWAGGER_UI_CONFIG"] = ui_config
    client = create_app(settings, instance_path=demo_instance).test_client()

    response = client.get("/docs")

    page = PageScripts()
    page.feed(response.get_data(as_text=True))
    assert page.inline, "Swagger UI's page starts itself with an inline script"
    if ui_config is not None:
        assert all(json.dumps(key) in "".join(page.inline) for key in ui_config)
    directives = policy(response.headers["Content-Security-Policy"])
    expected = {
        "'sha256-" + base64.b64encode(hashlib.sha256(script.encode()).digest()).decode() + "'"
        for script in page.inline
    }
    assert expected <= set(directives["script-src"])
    assert "'unsafe-inline'" not in directives["script-src"]
    assert "'unsafe-eval'" not in directives["script-src"]
    assert "'self'" in directives["script-src"]
    assert directives["default-src"] == ["'self'"]
    assert directives["frame-ancestors"] == ["'none'"]
    assert page.files
    for url in page.files:  # same-origin files, which 'self' allows
        assert "//" not in url
        assert get(client, "/" + url.lstrip("/")).status_code == 200, url


# CORS


def test_cors_is_off_by_default(open_client: FlaskClient) -> None:
    origin = {"Origin": "https://app.example"}
    preflight = {**origin, "Access-Control-Request-Method": "POST"}

    answers = [
        send(open_client, PREDICT_ROUTES[0], origin),
        open_client.get("/v1/models", headers=origin),
        open_client.options("/v1/models/iris:predict", headers=preflight),
    ]

    for response in answers:
        assert not any(name.startswith("Access-Control-") for name in response.headers.keys())


@pytest.mark.parametrize(
    "origins", [["https://app.example"], "https://other.example, https://app.example"]
)
def test_cors_answers_only_the_configured_origins(
    demo_instance: Path, origins: list[str] | str
) -> None:
    settings = {"TESTING": True, "CORS_ORIGINS": origins, "API_KEYS": [KEY]}
    client = create_app(settings, instance_path=demo_instance).test_client()
    allowed = {"Origin": "https://app.example"}
    denied = {"Origin": "https://evil.example"}
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }

    answer = send(client, PREDICT_ROUTES[0], {**allowed, "X-API-Key": KEY})
    checked = client.options("/v1/models/iris:predict", headers={**allowed, **preflight})
    foreign = send(client, PREDICT_ROUTES[0], {**denied, "X-API-Key": KEY})
    foreign_check = client.options("/v1/models/iris:predict", headers={**denied, **preflight})

    assert answer.status_code == 200
    assert answer.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "X-Request-ID" in answer.headers["Access-Control-Expose-Headers"]
    assert checked.status_code == 200  # a preflight carries no key
    assert checked.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "authorization" in checked.headers["Access-Control-Allow-Headers"].lower()
    assert foreign.status_code == 200
    for response in (foreign, foreign_check):
        assert "Access-Control-Allow-Origin" not in response.headers


# JSON nesting depth


def nested(depth: int, leaf: Any = 1.0) -> Any:
    """Return ``leaf`` inside ``depth`` arrays."""
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


def deep_bodies(depth: int) -> list[tuple[Route, int]]:
    """Return a body of each dialect nested exactly ``depth`` levels, and its status at that
    depth when within the limit (the rows do not fit the model)."""
    tensor = {"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": nested(depth - 3)}
    record = {"a": 1.0}
    for _ in range(depth - 3):
        record = {"a": record}
    return [
        (Route("POST", "/v1/models/iris:predict", {"instances": nested(depth - 1)}, "native"), 422),
        (Route("POST", "/v1/models/iris:predict", {"instances": [record]}, "native"), 422),
        (Route("POST", "/predict", {"instance": nested(depth - 1)}, "native"), 422),
        (Route("POST", "/v2/models/iris/infer", {"inputs": [tensor]}, "v2"), 400),
        (Route("POST", "/invocations", {"instances": nested(depth - 1)}, "mlflow"), 400),
    ]


@pytest.mark.parametrize("index", range(5))
def test_json_nested_beyond_the_limit_is_400_in_each_dialect(
    open_client: FlaskClient, index: int
) -> None:
    limit = open_client.application.config["MAX_JSON_DEPTH"]
    at_limit, status = deep_bodies(limit)[index]
    beyond, _ = deep_bodies(limit + 1)[index]

    within = assert_error(send(open_client, at_limit), at_limit.dialect, status)
    refused = assert_error(send(open_client, beyond), beyond.dialect, 400)

    assert "MAX_JSON_DEPTH" not in within
    assert "MAX_JSON_DEPTH" in refused and str(limit) in refused


def test_v2_nested_tensors_work_within_the_limit(demo_instance: Path) -> None:
    rows, _, _ = load_demo_data("iris")
    estimator = load_bundle(demo_instance / "models" / "iris" / "1").estimator
    expected = estimator.predict(rows[:3]).tolist()
    flat = {
        "name": "input-0",
        "shape": [3, 4],
        "datatype": "FP64",
        "data": rows[:3].ravel().tolist(),
    }
    nested_rows = {**flat, "data": rows[:3].tolist()}

    def infer(limit: int, tensor: dict[str, Any]) -> TestResponse:
        settings = {"TESTING": True, "MAX_JSON_DEPTH": limit}
        client = create_app(settings, instance_path=demo_instance).test_client()
        return client.post("/v2/models/iris/infer", json={"inputs": [tensor]})

    for response in (infer(4, flat), infer(5, nested_rows), infer(32, nested_rows)):
        assert response.status_code == 200, response.get_data(as_text=True)
        assert response.get_json()["outputs"][0]["data"] == expected
    assert "MAX_JSON_DEPTH" in assert_error(infer(4, nested_rows), "v2", 400)


# Safe model files


def test_skops_bundle_serves_the_estimators_predictions(
    skops_models: Path, cancer: tuple[np.ndarray, Any, list[str]]
) -> None:
    rows, forest, _ = cancer
    client = create_app({"TESTING": True}, instance_path=skops_models.parent).test_client()

    labels = client.post("/v1/models/cancer:predict", json={"instances": rows.tolist()})
    probabilities = client.post(
        "/v1/models/cancer:predict", json={"instances": rows.tolist(), "method": "predict_proba"}
    )
    described = client.get("/v1/models/cancer").get_json()

    assert labels.status_code == 200
    assert labels.get_json()["predictions"] == forest.predict(rows).tolist()
    np.testing.assert_allclose(
        probabilities.get_json()["predictions"], forest.predict_proba(rows), rtol=1e-12
    )
    assert described["format"] == "skops"
    assert described["warnings"] == []
    assert (skops_models / "cancer" / "1" / "model.skops").is_file()
    assert not (skops_models / "cancer" / "1" / "model.joblib").exists()


def test_skops_manifest_lists_the_types_reviewed_at_packaging(skops_models: Path) -> None:
    folder = skops_models / "cancer" / "1"
    manifest = json.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8"))

    untrusted = skops_io.get_untrusted_types(file=folder / "model.skops")

    assert manifest["format"] == "skops"
    assert "sklearn.tree._tree.Tree" in manifest["trusted_types"]
    assert sorted(manifest["trusted_types"]) == sorted(untrusted)


def test_skops_bundle_with_an_unreviewed_type_is_refused_and_others_serve(
    skops_models: Path, setosa: list[Any]
) -> None:
    folder = skops_models / "cancer" / "1"
    manifest = json.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8"))
    kept = [name for name in manifest["trusted_types"] if name != "sklearn.tree._tree.Tree"]
    edit_manifest(folder, trusted_types=kept)  # the estimator file and its sha256 unchanged

    with pytest.raises(BundleError) as at_start:
        create_app({"TESTING": True}, instance_path=skops_models.parent)
    registry = Registry(skops_models)
    with pytest.raises(BundleError) as at_load:
        registry.load()
    found = {item.name: item for item in discover(skops_models)}

    for message in (str(at_start.value), str(at_load.value)):
        assert "sklearn.tree._tree.Tree" in message
        assert "cancer" in message
        assert "sha256" not in message
    refused = found["cancer"]
    assert refused.bundle is None and refused.error is not None
    assert "sklearn.tree._tree.Tree" in refused.error
    assert found["iris"].bundle is not None and found["iris"].error is None
    assert found["iris"].bundle.estimator.predict(np.array([SETOSA])).tolist() == setosa


def test_package_with_skops_prints_the_types_to_review(
    tmp_path: Path, runner: CliRunner, cancer: tuple[np.ndarray, Any, list[str]]
) -> None:
    rows, forest, names = cancer
    joblib.dump(forest, tmp_path / "forest.joblib")
    with (tmp_path / "sample.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(names)
        writer.writerows(rows.tolist())
    instance = tmp_path / "instance"
    common = ["--sample", str(tmp_path / "sample.csv"), "--instance-path", str(instance)]

    skops_run = runner.invoke(
        main,
        ["package", str(tmp_path / "forest.joblib"), "--name", "cancer", "--version", "1"]
        + common
        + ["--format", "skops"],
    )
    joblib_run = runner.invoke(
        main,
        ["package", str(tmp_path / "forest.joblib"), "--name", "cancer", "--version", "2"] + common,
    )

    assert skops_run.exit_code == 0, skops_run.output
    assert "review" in skops_run.output
    printed = [line.strip() for line in skops_run.output.splitlines() if line.startswith("  ")]
    bundle = load_bundle(instance / "models" / "cancer" / "1")
    assert printed == list(bundle.manifest.trusted_types)
    assert "sklearn.tree._tree.Tree" in printed
    assert bundle.manifest.format == "skops"
    assert bundle.estimator.predict(rows).tolist() == forest.predict(rows).tolist()
    assert joblib_run.exit_code == 0, joblib_run.output
    assert "review" not in joblib_run.output


def test_tampered_joblib_bundle_is_refused_unread_and_others_serve(
    tmp_path: Path, demo_instance: Path
) -> None:
    models = copy_models(tmp_path / "instance", demo_instance, "iris", "diabetes")
    marker = tmp_path / "payload-ran"
    estimator_file = models / "diabetes" / "1" / "model.joblib"
    joblib.dump(Touch(marker), estimator_file)  # the manifest's sha256 is the real model's

    found = {item.name: item for item in discover(models)}
    with pytest.raises(BundleError) as at_start:
        create_app({"TESTING": True}, instance_path=models.parent)

    assert not marker.exists(), "the tampered pickle was unpickled"
    assert found["diabetes"].bundle is None
    assert "sha256 mismatch" in str(found["diabetes"].error)
    assert "diabetes" in str(at_start.value) and "sha256" in str(at_start.value)
    assert found["iris"].bundle is not None
    joblib.load(estimator_file)  # the payload is live: unpickled, it runs
    assert marker.exists()


def test_model_folder_linked_from_outside_the_models_folder_is_refused(
    tmp_path: Path, demo_instance: Path
) -> None:
    models = copy_models(tmp_path / "instance", demo_instance, "iris")
    outside = tmp_path / "elsewhere"
    shutil.copytree(demo_instance / "models" / "iris" / "1", outside / "evil" / "1")
    edit_manifest(outside / "evil" / "1", name="evil")
    shutil.copytree(demo_instance / "models" / "iris" / "1", outside / "iris-2")
    edit_manifest(outside / "iris-2", version="2")
    assert load_bundle(outside / "evil" / "1").name == "evil"  # a good bundle, but outside
    (models / "evil").symlink_to(outside / "evil", target_is_directory=True)
    (models / "iris" / "2").symlink_to(outside / "iris-2", target_is_directory=True)

    found = {(item.name, item.version): item for item in discover(models)}

    assert set(found) == {("evil", "1"), ("iris", "1"), ("iris", "2")}
    for refused in (found["evil", "1"], found["iris", "2"]):
        assert refused.bundle is None
        assert "outside" in str(refused.error)
    assert found["iris", "1"].bundle is not None
    with pytest.raises(BundleError, match="outside"):
        create_app({"TESTING": True}, instance_path=models.parent)


@pytest.mark.parametrize(
    "unsafe", ["..", "../escape", "a/../../escape", "ABSOLUTE", ".hidden", "a\\..\\b", ""]
)
def test_names_and_versions_that_could_leave_the_models_folder_are_refused(
    tmp_path: Path, cancer: tuple[np.ndarray, Any, list[str]], unsafe: str
) -> None:
    rows, forest, names = cancer
    models = tmp_path / "deep" / "models"
    if unsafe == "ABSOLUTE":
        unsafe = str(tmp_path / "escape")

    with pytest.raises(BundleError, match="not allowed"):
        write_bundle(forest, rows, models, unsafe, "1", feature_names=names)
    with pytest.raises(BundleError, match="not allowed"):
        write_bundle(forest, rows, models, "cancer", unsafe, feature_names=names)

    assert sorted(path.name for path in tmp_path.iterdir()) == []


def test_load_bundle_refuses_dot_dot_segments(tmp_path: Path, demo_instance: Path) -> None:
    models = copy_models(tmp_path / "instance", demo_instance, "iris")

    for folder in (models / "iris" / "..", models / ".." / "1", models / "iris" / "1" / ".."):
        with pytest.raises(BundleError, match="not allowed"):
            load_bundle(folder)


@pytest.mark.parametrize(
    "route",
    [
        Route("POST", "/v1/models/..%2F..%2Fetc%2Fpasswd:predict", {"instances": []}, "native"),
        Route("POST", "/v1/models/%2E%2E/versions/%2E%2E:predict", {"instances": []}, "native"),
        Route("GET", "/v1/models/..", None, "native"),
        Route("POST", "/v2/models/%2E%2E/infer", V2_SETOSA, "v2"),
        Route("GET", "/v2/models/iris/versions/..", None, "v2"),
    ],
    ids=route_id,
)
def test_dot_dot_in_request_paths_finds_no_model(open_client: FlaskClient, route: Route) -> None:
    assert_error(send(open_client, route), route.dialect, 404)


def test_dot_dot_in_the_model_header_finds_no_model(open_client: FlaskClient) -> None:
    response = open_client.post(
        "/invocations", json={"instances": [SETOSA]}, headers={"X-Model-Name": "../iris"}
    )

    assert_error(response, "mlflow", 404)


@pytest.fixture
def old_sklearn_models(tmp_path: Path, demo_instance: Path) -> Path:
    """The demo iris and diabetes bundles, iris's manifest claiming scikit-learn 0.0.1."""
    models = copy_models(tmp_path / "instance", demo_instance, "iris", "diabetes")
    edit_manifest(models / "iris" / "1", sklearn_version="0.0.1")
    return models


def test_other_sklearn_version_is_served_with_a_warning(
    old_sklearn_models: Path, setosa: list[Any]
) -> None:
    client = create_app({"TESTING": True}, instance_path=old_sklearn_models.parent).test_client()

    iris = client.get("/v1/models/iris").get_json()
    diabetes = client.get("/v1/models/diabetes").get_json()
    response = send(client, PREDICT_ROUTES[0])

    assert iris["sklearn_version"] == "0.0.1"
    assert any("0.0.1" in warning and "scikit-learn" in warning for warning in iris["warnings"])
    assert all(str(old_sklearn_models) not in warning for warning in iris["warnings"])
    assert diabetes["warnings"] == []
    assert response.status_code == 200
    assert response.get_json()["predictions"] == setosa


@pytest.mark.parametrize("how", ["setting", "environment"])
def test_strict_sklearn_version_refuses_the_bundle(
    old_sklearn_models: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    settings: dict[str, Any] = {"TESTING": True}
    if how == "setting":
        settings["STRICT_SKLEARN_VERSION"] = True
    else:
        monkeypatch.setenv("INFERENCE_APP_STRICT_SKLEARN_VERSION", "true")

    with pytest.raises(BundleError) as refused:
        create_app(settings, instance_path=old_sklearn_models.parent)
    found = {i.name: i for i in discover(old_sklearn_models, strict_sklearn_version=True)}

    assert "0.0.1" in str(refused.value) and "STRICT_SKLEARN_VERSION" in str(refused.value)
    assert found["iris"].bundle is None
    assert found["diabetes"].bundle is not None


# What error bodies reveal


ERROR_REQUESTS = [
    (Route("GET", "/no/such/route", None, "native"), 404),
    (Route("GET", "/v2/no/such/route", None, "v2"), 404),
    (Route("DELETE", "/v1/models/iris:predict", None, "native"), 405),
    (Route("POST", "/v1/models/iris:predict", {"instances": [[1.0]]}, "native"), 422),
    (
        Route("POST", "/v1/models/iris:predict", {"instances": [["1", None, True, {}]]}, "native"),
        422,
    ),
    (
        Route(
            "POST", "/v1/models/iris:predict", {"instances": [SETOSA], "method": "fit"}, "native"
        ),
        422,
    ),
    (Route("POST", "/v1/models/iris:predict", {"instances": [[10**400, 1, 1, 1]]}, "native"), 422),
    (Route("POST", "/v1/models/iris/versions/9:predict", {"instances": [SETOSA]}, "native"), 404),
    (Route("POST", "/v1/models/nope:predict", {"instances": [SETOSA]}, "native"), 404),
    (Route("POST", "/predict", {"instance": {"petal": 1}}, "native"), 422),
    (Route("POST", "/predict", {"instance": SETOSA, "extra": 1}, "native"), 422),
    (Route("POST", "/v2/models/iris/infer", {"inputs": [{"name": "x"}]}, "v2"), 400),
    (
        Route(
            "POST",
            "/v2/models/iris/infer",
            {"inputs": [{**V2_SETOSA["inputs"][0], "datatype": "BYTES"}]},
            "v2",
        ),
        400,
    ),
    (
        Route("POST", "/v2/models/iris/infer", {**V2_SETOSA, "outputs": [{"name": "fit"}]}, "v2"),
        400,
    ),
    (Route("POST", "/v2/models/nope/infer", V2_SETOSA, "v2"), 404),
    (Route("GET", "/v2/models/nope", None, "v2"), 404),
    (Route("POST", "/invocations", {"instances": [[1.0]]}, "mlflow"), 400),
    (Route("POST", "/invocations", {"columns": ["a"], "data": [[1]]}, "mlflow"), 400),
    (Route("POST", "/invocations", {"inputs": {"a": [1], "b": 2}}, "mlflow"), 400),
]


@pytest.mark.parametrize(
    ("route", "status"),
    ERROR_REQUESTS,
    ids=[f"{route.method} {route.path} {status}" for route, status in ERROR_REQUESTS],
)
def test_error_bodies_reveal_no_traceback_path_or_version(
    demo_instance: Path, route: Route, status: int
) -> None:
    client = create_app({}, instance_path=demo_instance).test_client()  # production settings

    assert_error(send(client, route), route.dialect, status, demo_instance)


@pytest.mark.parametrize(
    ("path", "body", "content_type", "dialect", "status"),
    [
        ("/v1/models/iris:predict", b'{"instances": [[1, 2, 3', "application/json", "native", 400),
        (
            "/v1/models/iris:predict",
            b'{"instances": [["\xff"]]}',
            "application/json",
            "native",
            400,
        ),
        (
            "/v1/models/iris:predict",
            b"instances=1",
            "application/x-www-form-urlencoded",
            "native",
            415,
        ),
        ("/predict", b"", "application/json", "native", 400),
        ("/v2/models/iris/infer", b"\x00\x01\x02", "application/octet-stream", "v2", 400),
        ("/invocations", b"a,b\n\xff,1\n", "text/csv", "mlflow", 400),
        ("/invocations", b"a,b\nx,1\n", "text/csv", "mlflow", 400),
        ("/invocations", b"<xml/>", "application/xml", "mlflow", 415),
    ],
)
def test_malformed_bodies_reveal_no_internals(
    demo_instance: Path, path: str, body: bytes, content_type: str, dialect: str, status: int
) -> None:
    client = create_app({}, instance_path=demo_instance).test_client()

    response = client.post(path, data=body, content_type=content_type)

    assert_error(response, dialect, status, demo_instance)


def test_oversized_bodies_reveal_no_internals(demo_instance: Path) -> None:
    client = create_app({"MAX_CONTENT_LENGTH": 1000}, instance_path=demo_instance).test_client()
    body = {"instances": [SETOSA] * 100}

    for route, dialect in (("/v1/models/iris:predict", "native"), ("/invocations", "mlflow")):
        message = assert_error(client.post(route, json=body), dialect, 413, demo_instance)
        assert "1000" in message


@pytest.mark.parametrize("path", ["/v1/models/iris:predict", "/predict"])
def test_feature_names_with_lone_surrogates_get_a_clean_422(demo_instance: Path, path: str) -> None:
    client = create_app({}, instance_path=demo_instance).test_client()  # production settings
    names = load_demo_data("iris")[2]
    record = ", ".join(f'"{name}": {value}' for name, value in zip(names, SETOSA, strict=True))
    row = '{"\\ud800 petal": 1.0, ' + record + "}"
    body = '{"instance": ' + row + "}" if path == "/predict" else '{"instances": [' + row + "]}"

    response = client.post(path, data=body, content_type="application/json")

    message = assert_error(response, "native", 422, demo_instance)
    assert "\\ud800 petal" in message


def test_refusals_shown_over_http_name_no_server_path(tmp_path: Path, demo_instance: Path) -> None:
    models = copy_models(tmp_path / "instance", demo_instance, "iris")
    app = create_app({"TESTING": True}, instance_path=models.parent)
    shutil.copytree(models / "iris" / "1", models / "iris" / "2")
    edit_manifest(models / "iris" / "2", version="2")
    with (models / "iris" / "2" / "model.joblib").open("ab") as estimator_file:
        estimator_file.write(b"tampered")
    with app.app_context(), pytest.raises(BundleError):
        get_registry().load()  # what a SIGHUP reload does with a refused bundle

    described = app.test_client().get("/v1/models/iris").get_json()

    assert described["version"] == "1"
    errors = " ".join(described["load_errors"])
    assert "version 2" in errors and "sha256" in errors
    assert_no_internals(errors, models.parent)
