"""Canary and shadow versions: traffic.json's rules, weighted and sticky routing, shadow
comparisons counted exactly, reloads on HUP, in process and against real Gunicorn."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families
from sklearn.linear_model import LogisticRegression
from sklearn.tree import DecisionTreeClassifier

from inference_app import create_app
from inference_app.cli import main
from inference_app.core.bundle import load_bundle, write_bundle
from inference_app.core.errors import BundleError, TrafficError
from inference_app.core.registry import Registry
from inference_app.core.traffic import agrees, decisions, parse_traffic, stable_point
from inference_app.demo import load_demo_data, write_demo_bundles
from inference_app.http.api import EXTENSION
from inference_app.process import reload
from servers import (
    REPO,
    REQUEST_TIMEOUT,
    START_TIMEOUT,
    Server,
    log_lines,
    start_gunicorn,
    stop,
    wait_until,
)

ROWS, TARGET, NAMES = load_demo_data("iris")
VERSIONS = ("1", "2", "3")


@pytest.fixture(scope="module")
def iris_versions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder with three real iris versions: 1, the demo's logistic regression; 2, a
    more strongly regularised one; 3, a depth-1 tree that never predicts one of the three
    classes, so it disagrees with 1 and 2 on about a third of the rows."""
    models = tmp_path_factory.mktemp("template") / "models"
    write_demo_bundles(models, names=["iris"])
    strong = LogisticRegression(C=0.02, max_iter=1000).fit(ROWS, TARGET)
    write_bundle(strong, ROWS, models, "iris", "2", feature_names=NAMES)
    stump = DecisionTreeClassifier(max_depth=1, random_state=0).fit(ROWS, TARGET)
    write_bundle(stump, ROWS, models, "iris", "3", feature_names=NAMES)
    return models


@pytest.fixture(scope="module")
def predictions(iris_versions: Path) -> dict[str, np.ndarray]:
    """Each version's predictions for every iris row, computed in this process."""
    return {
        version: load_bundle(iris_versions / "iris" / version).estimator.predict(ROWS)
        for version in VERSIONS
    }


def instance_with(root: Path, template: Path, traffic: Any | None) -> Path:
    """Copy the three versions into a new instance folder, with ``traffic`` as iris's
    traffic.json (a dict or list is written as JSON, a string as it is)."""
    instance = root / "instance"
    shutil.copytree(template, instance / "models")
    if traffic is not None:
        write_traffic(instance, traffic)
    return instance


def write_traffic(instance: Path, traffic: Any) -> None:
    text = traffic if isinstance(traffic, str) else json.dumps(traffic)
    (instance / "models" / "iris" / "traffic.json").write_text(text)


def app_with(root: Path, template: Path, traffic: Any | None) -> Flask:
    return create_app({"TESTING": True}, instance_path=instance_with(root, template, traffic))


def shadow_counts(text: str) -> dict[tuple[str, ...], float]:
    """Return ``inference_app_shadow_requests_total`` by (version, served_version, outcome)."""
    found: dict[tuple[str, ...], float] = {}
    for family in text_string_to_metric_families(text):
        if family.name in ("inference_app_shadow_requests", "inference_app_shadow_rows"):
            for sample in family.samples:
                if sample.name.endswith("_total") and sample.labels["model"] == "iris":
                    key = (
                        family.name.rsplit("_", 1)[-1],
                        sample.labels["version"],
                        sample.labels["served_version"],
                        sample.labels["outcome"],
                    )
                    found[key] = found.get(key, 0.0) + sample.value
    return found


# The file's rules.


def test_the_versions_really_differ(predictions: dict[str, np.ndarray]) -> None:
    assert 0 < np.sum(predictions["1"] != predictions["2"]) < 30
    assert 30 < np.sum(predictions["1"] != predictions["3"]) < 100
    assert len(set(predictions["3"])) == 2


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('{"weights": {"1": 90, "2": 10}', "is not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        (
            {"weights": {"1": 90, "4": 10}},
            "weights: model 'iris' has no version '4'; it has 1, 2, 3",
        ),
        ({"weights": {"1": 90, "2": 5}}, "weights sum to 95; they must sum to 100"),
        ({"weights": {"1": 110, "2": -10}}, "version '2': a weight must not be negative"),
        ({"weights": {"1": "90", "2": 10}}, "version '1': expected a number; got '90'"),
        ({"weights": {"1": True}}, "version '1': expected a number; got True"),
        ({"weights": {}}, '"weights" must be an object of percentages'),
        ({"weights": {"1": 100}, "shadow": "1"}, "shadow version '1' also has weight 100"),
        ({"weights": {"1": 100}, "shadow": "9"}, "shadow: model 'iris' has no version '9'"),
        ({"weights": {"1": 100}, "shadow": 3}, '"shadow" must be a version in quotes, such as "3"'),
        ({"weights": {"1": 100}, "canary": "2"}, "unknown key 'canary'; the keys are weights,"),
        ({"shadow": "3", "shadow_sample": 1.5}, '"shadow_sample" must lie between 0 and 1'),
        ({"shadow_sample": 0.5}, '"shadow_sample" needs a "shadow" version'),
        ({"shadow": "3", "shadow_tolerance": -1}, '"shadow_tolerance" must not be negative'),
        ({"sticky": "X User"}, '"sticky" must be a request header name such as "X-User-ID"'),
        ({"sticky": ""}, '"sticky" must be a request header name'),
    ],
)
def test_a_bad_traffic_file_refuses_the_start_naming_the_file_and_why(
    tmp_path: Path, iris_versions: Path, text: Any, reason: str
) -> None:
    with pytest.raises(TrafficError) as raised:
        app_with(tmp_path, iris_versions, text)

    message = str(raised.value)
    assert isinstance(raised.value, BundleError)  # so the server refuses it as it does a bundle
    assert message.startswith("refused traffic.json:\n  ")
    assert str(tmp_path / "instance" / "models" / "iris" / "traffic.json") in message
    assert reason in message, message
    [why] = raised.value.by_model["iris"]
    assert why.startswith("traffic.json: ") and reason in why
    assert str(tmp_path) not in why  # shown by the API: no host paths


def test_weights_default_to_the_highest_version_that_is_not_the_shadow() -> None:
    traffic = parse_traffic("iris", {"shadow": "3"}, VERSIONS)
    assert dict(traffic.weights) == {"2": 100.0}
    assert traffic.shadow_sample == 1.0 and traffic.default_version == "2"
    assert {traffic.pick() for _ in range(50)} == {"2"}


def test_the_default_version_has_the_largest_weight_the_higher_on_a_tie() -> None:
    assert parse_traffic("iris", {"weights": {"1": 90, "2": 10}}, VERSIONS).default_version == "1"
    assert parse_traffic("iris", {"weights": {"1": 50, "2": 50}}, VERSIONS).default_version == "2"


# Routing.


def test_weighted_choice_follows_the_weights() -> None:
    traffic = parse_traffic("iris", {"weights": {"1": 70, "2": 0, "3": 30}}, VERSIONS)
    picked = Counter(traffic.pick() for _ in range(20_000))
    assert set(picked) == {"1", "3"}  # a weight of 0 is never picked
    assert abs(picked["1"] / 20_000 - 0.70) < 0.015


def test_sticky_keys_keep_their_version_and_split_near_the_weights() -> None:
    traffic = parse_traffic(
        "iris", {"weights": {"1": 90, "2": 10}, "sticky": "X-User-ID"}, VERSIONS
    )
    keys = [f"user-{i}" for i in range(5_000)]
    first = {key: traffic.pick(key) for key in keys}
    assert all(traffic.pick(key) == first[key] for key in keys)
    share = Counter(first.values())["2"] / len(keys)
    assert abs(share - 0.10) < 0.015, share
    # No key: by weight at random.
    assert len({traffic.pick(None) for _ in range(200)}) == 2


def test_raising_a_canary_only_moves_keys_towards_it() -> None:
    before = parse_traffic("iris", {"weights": {"1": 90, "2": 10}, "sticky": "X-User"}, VERSIONS)
    after = parse_traffic("iris", {"weights": {"1": 70, "2": 30}, "sticky": "X-User"}, VERSIONS)
    keys = [f"user-{i}" for i in range(2_000)]
    assert all(after.pick(key) == "2" for key in keys if before.pick(key) == "2")
    moved = sum(before.pick(key) != after.pick(key) for key in keys)
    assert abs(moved / len(keys) - 0.20) < 0.03


def test_the_sticky_hash_is_the_same_in_every_process() -> None:
    keys = [f"user-{i}" for i in range(100)] + ["", "ünïcode", "a" * 1000]
    script = (
        "import json, sys\n"
        "from inference_app.core.traffic import stable_point\n"
        "print(json.dumps([stable_point(k) for k in json.load(sys.stdin)]))\n"
    )
    points = []
    for seed in ("1", "2"):  # Python's own hash() would differ between these two
        result = subprocess.run(
            [sys.executable, "-c", script],
            input=json.dumps(keys),
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        )
        points.append(json.loads(result.stdout))
    assert points[0] == points[1] == [stable_point(key) for key in keys]
    assert all(0 <= point < 1 for point in points[0])


def test_routing_is_thread_safe(tmp_path: Path, iris_versions: Path) -> None:
    registry = Registry(
        instance_with(tmp_path, iris_versions, {"weights": {"1": 50, "2": 50}, "sticky": "K"})
        / "models"
    )
    registry.load()
    expected = {f"k{i}": registry.route("iris", f"k{i}").version for i in range(400)}

    def route_all(_: int) -> dict[str, str]:
        return {key: registry.route("iris", key).version for key in expected}

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert all(found == expected for found in pool.map(route_all, range(16)))


def test_decisions_of_each_method() -> None:
    classes = ["a", "b", "c"]
    assert decisions("predict", ["a", "c"], None) == ["a", "c"]
    assert decisions("predict_proba", [[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]], classes) == ["b", "a"]
    assert decisions("decision_function", [-0.3, 2.0], ["no", "yes"]) == ["no", "yes"]
    assert agrees(100.0, 100.00001, 1e-6) and not agrees(100.0, 100.001, 1e-6)
    assert agrees(0.0, 1e-7, 1e-6) and not agrees(0.0, 1e-5, 1e-6)
    assert agrees("setosa", "setosa", 0.5) and not agrees("setosa", "virginica", 0.5)


# In process, through the app.


def test_requests_naming_a_version_are_never_rerouted(tmp_path: Path, iris_versions: Path) -> None:
    traffic = {"weights": {"1": 0, "2": 100}, "shadow": "3"}
    client = app_with(tmp_path, iris_versions, traffic).test_client()
    row = [list(ROWS[0])]
    before = shadow_counts(client.get("/metrics").get_data(as_text=True))

    for path in ("/v1/models/iris/versions/1:predict", "/v2/models/iris/versions/1/infer"):
        for _ in range(20):
            body = (
                {"instances": row}
                if path.startswith("/v1")
                else {
                    "inputs": [
                        {"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": row[0]}
                    ]
                }
            )
            response = client.post(path, json=body)
            assert response.status_code == 200 and response.get_json()["model_version"] == "1"
    assert shadow_counts(client.get("/metrics").get_data(as_text=True)) == before  # no shadow

    routed = client.post("/v1/models/iris:predict", json={"instances": row})
    assert routed.get_json()["model_version"] == "2"


def test_every_protocol_routes_by_the_sticky_header_and_says_which_version(
    tmp_path: Path, iris_versions: Path
) -> None:
    client = app_with(
        tmp_path, iris_versions, {"weights": {"1": 50, "2": 50}, "sticky": "X-User-ID"}
    ).test_client()
    traffic = parse_traffic("iris", {"weights": {"1": 50, "2": 50}, "sticky": "X"}, VERSIONS)
    row = [float(v) for v in ROWS[60]]
    seen = set()
    for i in range(30):
        user = f"user-{i}"
        expected = traffic.pick(user)
        seen.add(expected)
        headers = {"X-User-ID": user, "X-Model-Name": "iris"}
        native = client.post("/v1/models/iris:predict", json={"instances": [row]}, headers=headers)
        v2 = client.post(
            "/v2/models/iris/infer",
            json={
                "inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": row}]
            },
            headers=headers,
        )
        one = client.post("/predict", json={"instance": row}, headers=headers)
        mlflow = client.post("/invocations", json={"instances": [row]}, headers=headers)
        assert native.get_json()["model_version"] == expected
        assert v2.get_json()["model_version"] == expected
        assert one.get_json()["model_version"] == expected
        assert mlflow.headers["X-Model-Version"] == expected, mlflow.headers
        assert mlflow.headers["X-Model-Name"] == "iris"
    assert seen == {"1", "2"}


def request_counts(client: FlaskClient) -> Counter[tuple[str, str]]:
    """Return ``inference_app_requests_total`` of iris's 2xx answers by (route, version)."""
    found: Counter[tuple[str, str]] = Counter()
    text = client.get("/metrics").get_data(as_text=True)
    for family in text_string_to_metric_families(text):
        if family.name == "inference_app_requests":
            for sample in family.samples:
                labels = sample.labels
                if labels["model"] == "iris" and labels["status_class"] == "2xx":
                    found[labels["route"], labels["version"]] += int(sample.value)
    return found


def test_metrics_and_access_lines_carry_the_routed_version(
    tmp_path: Path, iris_versions: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = app_with(tmp_path, iris_versions, {"weights": {"1": 50, "2": 50}, "sticky": "X-User-ID"})
    client = app.test_client()
    traffic = app.extensions[EXTENSION].registry.traffic("iris")
    assert traffic is not None
    users = [f"label-{i}" for i in range(40)]
    routes = {  # the fast path, and three Flask routes
        "/v1/models/<name>:predict": ("/v1/models/iris:predict", {"instances": [list(ROWS[0])]}),
        "/predict": ("/predict", {"instance": list(ROWS[0])}),
        "/invocations": ("/invocations", {"instances": [list(ROWS[0])]}),
        "/v2/models/<name>/infer": (
            "/v2/models/iris/infer",
            {
                "inputs": [
                    {"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": list(ROWS[0])}
                ]
            },
        ),
    }
    before = request_counts(client)
    with caplog.at_level("INFO", logger="inference_app.access"):
        for route, (path, body) in routes.items():
            for user in users:
                headers = {"X-User-ID": user, "X-Request-ID": f"{route}-{user}"}
                answer = client.post(path, json=body, headers={**headers, "X-Model-Name": "iris"})
                assert answer.status_code == 200
    after = request_counts(client)
    by_id = {
        record.request_id: record for record in caplog.records if hasattr(record, "request_id")
    }
    expected = {user: traffic.pick(user) for user in users}
    on_2 = sum(version == "2" for version in expected.values())
    assert 0 < on_2 < len(users)
    for route in routes:
        assert {user: by_id[f"{route}-{user}"].version for user in users} == expected, route
        assert after[route, "2"] - before[route, "2"] == on_2, route
        assert after[route, "1"] - before[route, "1"] == len(users) - on_2, route


def test_shadow_disagreements_are_counted_exactly_and_never_change_the_answer(
    tmp_path: Path, iris_versions: Path, predictions: dict[str, np.ndarray]
) -> None:
    plain = app_with(tmp_path / "plain", iris_versions, {"weights": {"1": 100}}).test_client()
    shadowed = app_with(
        tmp_path / "shadowed", iris_versions, {"weights": {"1": 100}, "shadow": "3"}
    ).test_client()
    before = shadow_counts(shadowed.get("/metrics").get_data(as_text=True))
    batches = [list(range(start, start + 10)) for start in range(0, 150, 10)]
    for method in ("predict", "predict_proba"):
        for batch in batches:
            body = {"instances": ROWS[batch].tolist(), "method": method}
            answer = shadowed.post("/v1/models/iris:predict", json=body)
            assert answer.get_json() == plain.post("/v1/models/iris:predict", json=body).get_json()
    after = shadow_counts(shadowed.get("/metrics").get_data(as_text=True))

    def added(*key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    differs = predictions["1"] != predictions["3"]
    disagreeing_batches = sum(bool(differs[batch].any()) for batch in batches)
    # predict_proba's arg max is predict's class for both models: the same counts twice.
    assert added("requests", "3", "1", "disagree") == 2 * disagreeing_batches
    assert added("requests", "3", "1", "agree") == 2 * (len(batches) - disagreeing_batches)
    assert added("rows", "3", "1", "disagree") == 2 * int(differs.sum())
    assert added("rows", "3", "1", "agree") == 2 * int((~differs).sum())
    assert added("requests", "3", "1", "error") == 0


def test_a_sampled_shadow_answers_its_share(tmp_path: Path, iris_versions: Path) -> None:
    client = app_with(
        tmp_path, iris_versions, {"weights": {"1": 100}, "shadow": "3", "shadow_sample": 0.25}
    ).test_client()

    def shadowed() -> float:
        counts = shadow_counts(client.get("/metrics").get_data(as_text=True))
        return sum(value for key, value in counts.items() if key[0] == "requests")

    before = shadowed()
    sent = 800
    for i in range(sent):
        client.post("/v1/models/iris:predict", json={"instances": [ROWS[i % 150].tolist()]})
    share = (shadowed() - before) / sent
    assert abs(share - 0.25) < 0.06, share


def test_a_failing_shadow_is_counted_as_an_error_and_the_answer_is_served(
    tmp_path: Path, iris_versions: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Version 4 takes two other features: the rows sent to version 1 do not fit it.
    instance = instance_with(tmp_path, iris_versions, {"weights": {"1": 100}, "shadow": "4"})
    narrow = LogisticRegression(max_iter=1000).fit(ROWS[:, :2], TARGET)
    write_bundle(narrow, ROWS[:, :2], instance / "models", "iris", "4", feature_names=["a", "b"])
    client = create_app({"TESTING": True}, instance_path=instance).test_client()
    before = shadow_counts(client.get("/metrics").get_data(as_text=True))

    with caplog.at_level("DEBUG", logger="inference_app.core.dataplane"):
        answers = [
            client.post("/v1/models/iris:predict", json={"instances": [ROWS[i].tolist()]})
            for i in (0, 50, 100)
        ]
    after = shadow_counts(client.get("/metrics").get_data(as_text=True))

    assert [a.get_json()["predictions"] for a in answers] == [
        ["setosa"],
        ["versicolor"],
        ["virginica"],
    ]
    assert [a.get_json()["model_version"] for a in answers] == ["1", "1", "1"]
    key = ("requests", "4", "1", "error")
    assert after.get(key, 0) - before.get(key, 0) == 3
    warnings = [r for r in caplog.records if r.levelname == "WARNING" and "shadow" in r.message]
    assert len(warnings) == 1  # once per process, then at debug level
    assert "shadow version 4 of model iris failed" in warnings[0].message


def test_the_model_list_shows_the_traffic_in_force(tmp_path: Path, iris_versions: Path) -> None:
    traffic = {"weights": {"1": 90, "2": 10}, "sticky": "X-User-ID", "shadow": "3"}
    client = app_with(tmp_path, iris_versions, traffic).test_client()
    [iris] = client.get("/v1/models").get_json()["models"]
    assert iris["default_version"] == "1"  # the heaviest, not the highest (the shadow)
    assert iris["traffic"] == {
        "weights": {"1": 90.0, "2": 10.0},
        "sticky": "X-User-ID",
        "shadow": "3",
        "shadow_sample": 1.0,
        "shadow_tolerance": 1e-6,
    }
    assert client.get("/v1/models/iris").get_json()["version"] == "1"


def test_the_models_command_shows_the_traffic_and_refuses_a_bad_file(
    tmp_path: Path, iris_versions: Path, runner: CliRunner
) -> None:
    instance = instance_with(
        tmp_path, iris_versions, {"weights": {"1": 90, "2": 10}, "shadow": "3"}
    )
    listed = runner.invoke(main, ["models", "--instance-path", str(instance)])

    assert listed.exit_code == 0, listed.output
    lines = listed.output.splitlines()
    assert [line.split(":")[0] for line in lines if line.startswith("serve")] == [
        "serve   iris 1 (default)",
        "serve   iris 2",
        "serve   iris 3",
    ]
    assert 'traffic iris: {"weights": {"1": 90.0, "2": 10.0}, "shadow": "3",' in listed.output

    write_traffic(instance, {"weights": {"1": 90, "2": 10}, "shadow": "2"})
    refused = runner.invoke(main, ["models", "--instance-path", str(instance)])
    assert refused.exit_code == 1
    assert "REFUSED iris traffic.json: shadow version '2' also has weight 10" in refused.output
    assert "a traffic.json is refused; the server will not start" in refused.output


def operations_section() -> str:
    text = (REPO / "docs" / "operations.md").read_text()
    return text.split("## Canary and shadow versions\n", 1)[1].split("\n## ", 1)[0]


def test_the_documented_queries_parse_and_name_real_metrics(
    tmp_path: Path, iris_versions: Path
) -> None:
    [block] = re.findall(r"```promql\n(.*?)```", operations_section(), re.S)
    queries = [line for line in block.splitlines() if line.strip()]
    assert len(queries) >= 5
    rules = {
        "groups": [
            {
                "name": "canary",
                "rules": [{"record": f"docs:query_{i}", "expr": q} for i, q in enumerate(queries)],
            }
        ]
    }
    path = tmp_path / "rules.yml"
    path.write_text(json.dumps(rules))  # JSON is YAML
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: .ci/run installs Debian's prometheus package"
    checked = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr

    client = app_with(tmp_path, iris_versions, {"weights": {"1": 100}, "shadow": "3"}).test_client()
    client.post("/v1/models/iris:predict", json={"instances": [ROWS[0].tolist()]})
    exposed = {
        sample.name
        for family in text_string_to_metric_families(client.get("/metrics").get_data(as_text=True))
        for sample in family.samples
    }
    named = set(re.findall(r"inference_app_[a-z_]+", block))
    assert named <= exposed, named - exposed


def test_the_documented_example_file_is_accepted(tmp_path: Path, iris_versions: Path) -> None:
    [example] = re.findall(r"traffic\.json +(\{.*\})", operations_section())
    app = app_with(tmp_path, iris_versions, example)
    described = app.test_client().get("/v1/models").get_json()["models"][0]["traffic"]
    assert described["weights"] == {"1": 90.0, "2": 10.0} and described["shadow"] == "3"


class Holder:
    """What Gunicorn's ``server.app`` is to ``reload``: the preloaded app, replaceable."""

    def __init__(self, app: Flask) -> None:
        self.callable = app

    def wsgi(self) -> Flask:
        return self.callable


def test_a_bad_traffic_file_on_reload_keeps_the_previous_routing(
    tmp_path: Path, iris_versions: Path
) -> None:
    instance = instance_with(tmp_path, iris_versions, {"weights": {"1": 100}})
    holder = Holder(create_app({"TESTING": True}, instance_path=instance))
    old = holder.callable
    write_traffic(instance, {"weights": {"1": 50, "2": 45}})

    reloaded, message = reload(holder)

    assert not reloaded
    assert message.startswith("reload failed, the previous models keep serving: refused traffic")
    assert "weights sum to 95; they must sum to 100" in message
    assert holder.callable is old
    client: FlaskClient = old.test_client()
    versions = {
        client.post("/v1/models/iris:predict", json={"instances": [ROWS[0].tolist()]}).get_json()[
            "model_version"
        ]
        for _ in range(30)
    }
    assert versions == {"1"}
    [error] = client.get("/v1/models/iris").get_json()["load_errors"]
    assert error.startswith("traffic.json: weights sum to 95")

    write_traffic(instance, {"weights": {"2": 100}})
    reloaded, message = reload(holder)
    assert reloaded, message
    client = holder.callable.test_client()
    answer = client.post("/v1/models/iris:predict", json={"instances": [ROWS[0].tolist()]})
    assert answer.get_json()["model_version"] == "2"


# Against real Gunicorn, 2 workers.


def post_rows(
    server: Server, indices: list[int], headers: dict[str, str] | None = None
) -> list[tuple[int, str, str]]:
    """POST one iris row per request from 4 threads; return (row, version, prediction)."""

    def one(index: int) -> tuple[int, str, str]:
        response = requests.post(
            f"{server.url}/v1/models/iris:predict",
            json={"instances": [ROWS[index].tolist()]},
            headers=headers,
            timeout=REQUEST_TIMEOUT,
        )
        assert response.status_code == 200, response.text
        body = response.json()
        return index, body["model_version"], body["predictions"][0]

    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(one, indices))


@pytest.mark.e2e
def test_gunicorn_splits_by_weight_sticks_users_and_counts_true_shadow_disagreements(
    launch: Any, tmp_path: Path, iris_versions: Path, predictions: dict[str, np.ndarray]
) -> None:
    traffic = {"weights": {"1": 90, "2": 10}, "sticky": "X-User-ID", "shadow": "3"}
    server = launch(instance_with(tmp_path, iris_versions, traffic))

    # 2,000 requests naming no version and carrying no user: by weight.
    answers = post_rows(server, [i % 150 for i in range(2_000)])
    shares = Counter(version for _, version, _ in answers)
    assert set(shares) == {"1", "2"}
    assert abs(shares["2"] / 2_000 - 0.10) <= 0.03, shares
    for index, version, predicted in answers:  # each answer is its version's own
        assert predicted == predictions[version][index], (index, version)

    # 600 distinct users, each twice, spread over both workers: one version per user.
    sticky: dict[str, set[str]] = {}

    def as_user(i: int) -> tuple[str, tuple[int, str, str]]:
        user = f"user-{i % 600}"
        [answer] = post_rows(server, [i % 150], {"X-User-ID": user})
        return user, answer

    with ThreadPoolExecutor(max_workers=4) as pool:
        for user, answer in pool.map(as_user, range(1_200)):
            sticky.setdefault(user, set()).add(answer[1])
            answers.append(answer)
    assert all(len(versions) == 1 for versions in sticky.values())
    users_on_2 = sum(versions == {"2"} for versions in sticky.values()) / len(sticky)
    assert abs(users_on_2 - 0.10) <= 0.03, users_on_2
    pids = {line["pid"] for line in log_lines(server.log()) if "Booting worker" in line["message"]}
    assert len(pids) == 2

    # The shadow answered every routed request: its counts are the true disagreements.
    expected: Counter[tuple[str, str]] = Counter()
    for index, version, predicted in answers:
        expected[version, "disagree" if predicted != predictions["3"][index] else "agree"] += 1
    assert expected["1", "disagree"] > 500 and expected["2", "disagree"] > 50
    counts = shadow_counts(requests.get(f"{server.url}/metrics", timeout=REQUEST_TIMEOUT).text)
    found = {
        (served, outcome): value
        for (kind, shadow, served, outcome), value in counts.items()
        if kind == "requests" and shadow == "3" and value
    }
    assert found == dict(expected)
    rows = {k[2:]: v for k, v in counts.items() if k[0] == "rows" and v}
    assert rows == dict(expected)  # one row per request


@pytest.mark.e2e
def test_gunicorn_hup_shifts_traffic_without_a_failed_request_and_keeps_it_on_a_bad_file(
    launch: Any, tmp_path: Path, iris_versions: Path
) -> None:
    instance = instance_with(tmp_path, iris_versions, {"weights": {"1": 100, "2": 0}})
    server = launch(instance)
    results: list[str] = []
    failures: list[str] = []
    stopping = threading.Event()
    deadline = time.monotonic() + 60

    def load() -> None:
        with requests.Session() as session:
            for _ in range(20_000):
                if stopping.is_set() or time.monotonic() > deadline:
                    return
                try:
                    response = session.post(
                        f"{server.url}/v1/models/iris:predict",
                        json={"instances": [ROWS[0].tolist()]},
                        timeout=REQUEST_TIMEOUT,
                    )
                except requests.RequestException as error:
                    failures.append(repr(error))
                    continue
                if response.status_code != 200:
                    failures.append(f"{response.status_code} {response.text[:200]}")
                else:
                    results.append(response.json()["model_version"])

    def only(version: str) -> bool:
        answers = post_rows(server, [0] * 8)
        return {v for _, v, _ in answers} == {version}

    threads = [threading.Thread(target=load) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        assert wait_until(lambda: len(results) > 30, 10)
        write_traffic(instance, {"weights": {"1": 0, "2": 100}})
        os.kill(server.process.pid, signal.SIGHUP)
        assert wait_until(lambda: only("2"), START_TIMEOUT), server.log()
        settled = len(results)
        assert wait_until(lambda: len(results) > settled + 30, 10)

        write_traffic(instance, {"weights": {"1": 60, "2": 30}})  # sums to 90: refused
        os.kill(server.process.pid, signal.SIGHUP)
        assert wait_until(lambda: "reload failed" in server.log(), START_TIMEOUT), server.log()
        count = len(results)
        assert wait_until(lambda: len(results) > count + 60, 10)
    finally:
        stopping.set()
        for thread in threads:
            thread.join()

    assert failures == [], failures[:5]
    assert results[0] == "1" and results[-1] == "2"
    # Each load thread had at most one request in flight on an old worker.
    assert set(results[settled + len(threads) :]) == {"2"}
    assert only("2")  # the refused file changed nothing
    [refusal] = [line for line in log_lines(server.log()) if "reload failed" in line["message"]]
    assert refusal["level"] == "ERROR"
    assert "traffic.json: weights sum to 90; they must sum to 100" in refusal["message"]
    metadata = requests.get(f"{server.url}/v1/models/iris", timeout=REQUEST_TIMEOUT).json()
    assert metadata["load_errors"] == [
        "traffic.json: weights sum to 90; they must sum to 100 (percent)"
    ]
    assert metadata["traffic"]["weights"] == {"1": 0.0, "2": 100.0}


@pytest.mark.e2e
def test_gunicorn_refuses_to_start_on_a_bad_traffic_file_in_one_line(
    tmp_path: Path, iris_versions: Path
) -> None:
    instance = instance_with(tmp_path, iris_versions, {"weights": {"1": 90, "7": 10}})
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    server = start_gunicorn(instance, tmp_path / "gunicorn.log", TMPDIR=str(tmp))
    try:
        exited = wait_until(lambda: server.process.poll() is not None, START_TIMEOUT)
    finally:
        stop(server)
    log = server.log()
    assert exited and server.process.returncode == 4, log  # Gunicorn's APP_LOAD_ERROR
    assert "Traceback" not in log and "Booting worker" not in log, log
    [line] = log_lines(log)
    assert line["level"] == "ERROR"
    assert line["message"].startswith("inference-app cannot start: refused traffic.json: ")
    assert "iris/traffic.json: weights: model 'iris' has no version '7'" in line["message"]
