"""Tests of the registry: discovering bundles, default versions, lookups, readiness, reloads."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn import datasets
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.tree import DecisionTreeClassifier

from inference_app.core.bundle import JOBLIB_FILE, write_bundle
from inference_app.core.dataplane import DataPlane
from inference_app.core.errors import BundleError, ModelNotFoundError, ModelNotReadyError
from inference_app.core.registry import Registry, discover, version_key

#: Each model: its dataset loader and a factory of its unfitted estimator.
MODELS: dict[str, tuple[Callable[..., Any], Callable[[], Any]]] = {
    "iris": (datasets.load_iris, lambda: LogisticRegression(max_iter=1000)),
    "wine": (datasets.load_wine, lambda: DecisionTreeClassifier(random_state=0)),
    "diabetes": (datasets.load_diabetes, Ridge),
}


@pytest.fixture(scope="module")
def estimators() -> dict[str, tuple[Any, np.ndarray]]:
    """Each model of :data:`MODELS` fitted on its whole dataset, with its rows."""
    fitted = {}
    for name, (loader, make_estimator) in MODELS.items():
        rows, target = loader(return_X_y=True)
        fitted[name] = (make_estimator().fit(rows, target), rows)
    return fitted


@pytest.fixture
def write(
    tmp_path: Path, estimators: dict[str, tuple[Any, np.ndarray]]
) -> Callable[[str, str], Path]:
    """Return a function writing bundle ``<tmp>/models/<name>/<version>``; it returns its path."""

    def write_one(name: str, version: str) -> Path:
        estimator, rows = estimators[name]
        return write_bundle(estimator, rows, tmp_path / "models", name, version).path

    return write_one


@pytest.fixture
def models(tmp_path: Path) -> Path:
    """The models folder the ``write`` fixture writes into."""
    return tmp_path / "models"


def tamper(bundle: Path) -> None:
    """Append a byte to the bundle's estimator file, so its checksum no longer matches."""
    with (bundle / JOBLIB_FILE).open("ab") as file:
        file.write(b"\0")


@pytest.mark.parametrize(
    ("versions", "default"),
    [
        (["1", "2", "10"], "10"),
        (["1.9", "1.10"], "1.10"),
        (["10", "9"], "10"),
        (["0.9.1", "1.0", "0.10"], "1.0"),
        (["2024-01-10", "2024-01-09", "2023-12-31"], "2024-01-10"),
        (["7"], "7"),
    ],
)
def test_default_version_is_the_highest(
    write: Callable[[str, str], Path], models: Path, versions: list[str], default: str
) -> None:
    for version in versions:
        write("iris", version)
    registry = Registry(models)
    registry.load()

    model = registry.models["iris"]
    assert list(model.versions) == sorted(versions, key=version_key)
    assert model.default_version == default
    assert registry.get("iris") is model.versions[default]
    assert registry.get("iris").version == default
    for version in versions:
        assert registry.get("iris", version).version == version
        assert registry.get("iris", version).path == models / "iris" / version


def test_models_are_sorted_by_name_and_bundles_by_version(
    write: Callable[[str, str], Path], models: Path
) -> None:
    for name, version in [("wine", "2"), ("iris", "10"), ("diabetes", "1"), ("iris", "9")]:
        write(name, version)
    registry = Registry(models)
    registry.load()

    assert list(registry.models) == ["diabetes", "iris", "wine"]
    assert [(b.name, b.version) for b in registry.bundles()] == [
        ("diabetes", "1"),
        ("iris", "9"),
        ("iris", "10"),
        ("wine", "2"),
    ]


def test_unknown_model_names_the_models_served(
    write: Callable[[str, str], Path], models: Path
) -> None:
    write("iris", "1")
    write("wine", "1")
    registry = Registry(models)
    registry.load()

    with pytest.raises(ModelNotFoundError) as caught:
        registry.get("irsi")
    message = str(caught.value)
    assert "'irsi'" in message
    assert "iris, wine" in message
    with pytest.raises(ModelNotFoundError):
        registry.model("irsi")


def test_unknown_version_names_the_versions_there_are(
    write: Callable[[str, str], Path], models: Path
) -> None:
    for version in ["1", "2", "10"]:
        write("iris", version)
    registry = Registry(models)
    registry.load()

    with pytest.raises(ModelNotFoundError) as caught:
        registry.get("iris", "3")
    message = str(caught.value)
    assert "'iris'" in message
    assert "'3'" in message
    assert "1, 2, 10" in message


def test_unknown_model_with_no_models_says_none(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "models")
    registry.load()
    with pytest.raises(ModelNotFoundError, match="none"):
        registry.get("iris")


@pytest.mark.parametrize(
    "make_folder",
    [
        pytest.param(lambda models: None, id="missing"),
        pytest.param(lambda models: models.mkdir(), id="empty"),
        pytest.param(lambda models: models.parent.joinpath("models").touch(), id="a-file"),
    ],
)
def test_no_models_folder_means_no_models_and_not_ready(
    tmp_path: Path, make_folder: Callable[[Path], None]
) -> None:
    models = tmp_path / "models"
    make_folder(models)
    assert discover(models) == []
    registry = Registry(models)
    registry.load()

    assert dict(registry.models) == {}
    assert registry.bundles() == []
    ready, reason = registry.readiness()
    assert ready is False
    assert "no models" in reason


def test_models_are_ready_only_after_warm_up(
    write: Callable[[str, str], Path],
    models: Path,
    estimators: dict[str, tuple[Any, np.ndarray]],
) -> None:
    write("iris", "1")
    write("iris", "2")
    write("diabetes", "1")
    registry = Registry(models)
    registry.load()
    dataplane = DataPlane(registry)
    rows = estimators["diabetes"][1][:3]

    ready, reason = registry.readiness()
    assert ready is False
    assert "diabetes" in reason
    assert "iris" in reason
    assert not any(registry.is_ready(bundle) for bundle in registry.bundles())
    assert not registry.model_ready("iris")
    with pytest.raises(ModelNotReadyError, match="diabetes"):
        dataplane.predict("diabetes", rows.tolist())

    dataplane.warm_up()

    assert registry.readiness()[0] is True
    assert all(registry.is_ready(bundle) for bundle in registry.bundles())
    assert registry.model_ready("iris")
    prediction = dataplane.predict("diabetes", rows.tolist())
    np.testing.assert_allclose(
        prediction.outputs[0].values, estimators["diabetes"][0].predict(rows)
    )


def test_reload_needs_a_new_warm_up(write: Callable[[str, str], Path], models: Path) -> None:
    write("iris", "1")
    registry = Registry(models)
    registry.load()
    DataPlane(registry).warm_up()
    write("iris", "2")

    registry.load()

    assert list(registry.models["iris"].versions) == ["1", "2"]
    assert registry.readiness()[0] is False
    DataPlane(registry).warm_up()
    assert registry.readiness()[0] is True


def test_first_load_with_a_tampered_bundle_loads_nothing(
    write: Callable[[str, str], Path], models: Path
) -> None:
    write("iris", "1")
    tamper(write("wine", "1"))
    registry = Registry(models)

    with pytest.raises(BundleError, match="sha256 mismatch"):
        registry.load()
    assert dict(registry.models) == {}


def test_failed_reload_keeps_the_loaded_models_serving(
    write: Callable[[str, str], Path],
    models: Path,
    estimators: dict[str, tuple[Any, np.ndarray]],
) -> None:
    write("iris", "1")
    iris_2 = write("iris", "2")
    wine_1 = write("wine", "1")
    registry = Registry(models)
    registry.load()
    dataplane = DataPlane(registry)
    dataplane.warm_up()
    before = registry.models
    bundles = registry.bundles()

    tamper(iris_2)
    tamper(wine_1)
    write("diabetes", "1")
    with pytest.raises(BundleError) as caught:
        registry.load()

    listed = caught.value.args[0].splitlines()[1:]
    assert [line.strip().split(": ", 1)[0] for line in listed] == [str(iris_2), str(wine_1)]
    assert all("sha256 mismatch" in line for line in listed)
    assert registry.models is before
    assert registry.bundles() == bundles
    assert registry.readiness()[0] is True
    estimator, rows = estimators["iris"]
    prediction = dataplane.predict("iris", rows.tolist())
    assert prediction.model_version == "2"
    assert prediction.outputs[0].values == estimator.predict(rows).tolist()


def test_discover_reports_each_folder_with_its_bundle_or_error(
    write: Callable[[str, str], Path], models: Path
) -> None:
    write("wine", "1")
    tamper(write("iris", "10"))
    write("iris", "9")

    found = discover(models)

    assert [(item.name, item.version) for item in found] == [
        ("iris", "9"),
        ("iris", "10"),
        ("wine", "1"),
    ]
    good = [item for item in found if item.error is None]
    assert [item.path for item in good] == [models / "iris" / "9", models / "wine" / "1"]
    assert all(item.bundle is not None and item.load_seconds > 0 for item in good)
    (bad,) = [item for item in found if item.error is not None]
    assert bad.path == models / "iris" / "10"
    assert bad.bundle is None
    assert "sha256 mismatch" in (bad.error or "")


def test_hidden_folders_and_stray_files_are_ignored(
    write: Callable[[str, str], Path], models: Path
) -> None:
    write("iris", "1")
    # Hidden copies that would load (or fail) if they were read.
    write("wine", "1").parent.rename(models / ".wine")
    write("iris", "2").rename(models / "iris" / ".2")
    tamper(models / "iris" / ".2")
    (models / ".cache" / "1").mkdir(parents=True)
    (models / "README.md").write_text("models live here\n")
    (models / "iris" / "notes.txt").write_text("version 1 is the baseline\n")
    (models / "iris" / JOBLIB_FILE).write_bytes(b"stray")

    registry = Registry(models)
    registry.load()

    assert list(registry.models) == ["iris"]
    assert list(registry.models["iris"].versions) == ["1"]


def test_unsafe_folder_name_is_refused(write: Callable[[str, str], Path], models: Path) -> None:
    write("iris", "1").rename(models / "iris" / "1 final")
    registry = Registry(models)
    with pytest.raises(BundleError, match="not allowed"):
        registry.load()


def test_folder_with_a_non_ascii_digit_is_refused_not_crashing(
    write: Callable[[str, str], Path], models: Path
) -> None:
    write("iris", "1")
    (models / "iris" / "²").mkdir()

    found = discover(models)

    assert {item.version: item.error is None for item in found} == {"1": True, "²": False}
    with pytest.raises(BundleError, match="not allowed"):
        Registry(models).load()


@pytest.mark.parametrize(
    "ordered",
    [
        ["1", "2", "9", "10", "11", "100"],
        ["1.9", "1.10"],
        ["0.1", "0.9", "0.10", "1", "1.0", "1.2", "1.10", "2"],
        ["1.0.9", "1.0.10", "1.1.0"],
        ["2023-12-31", "2024-01-02", "2024-01-10", "2024-02-01"],
        ["1_2", "1_9", "1_10"],
        ["alpha", "beta", "rc"],
        ["v1", "v2", "v9", "v10"],
    ],
    ids=lambda ordered: "<".join(ordered),
)
def test_version_key_orders_numbers_naturally(ordered: list[str]) -> None:
    shuffled = random.Random(0).sample(ordered, len(ordered))
    assert sorted(shuffled, key=version_key) == ordered
    assert sorted(reversed(ordered), key=version_key) == ordered
    assert max(ordered, key=version_key) == ordered[-1]
