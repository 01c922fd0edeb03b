"""Spark: the pandas UDF, mapInPandas and score_file on a local[2] session, on real data."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from sklearn.linear_model import LogisticRegression

from inference_app import datasets
from inference_app import spark as batch
from inference_app.cli import main
from inference_app.core.bundle import load_bundle, write_bundle
from inference_app.core.errors import BundleError, ModelNotFoundError
from inference_app.core.scoring import Scorer, ScoringError
from inference_app.datasets import load_penguins
from inference_app.demo import load_demo_data, write_demo_bundles

try:
    from pyspark.errors import PythonException
    from pyspark.serializers import CloudPickleSerializer
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql import functions as F
    from pyspark.sql import types as T
except ImportError as error:  # the test extra installs it: `make test` does
    raise ImportError(
        f"{error}: the Spark tests need pyspark; install the test extra: pip install -e '.[test]'"
    ) from None

pytestmark = [
    # pyspark 4 warns on every pandas conversion that it does not fully support pandas 3
    # yet; the tests check the answers themselves.
    pytest.mark.filterwarnings(
        "ignore:PySpark does not yet fully support pandas >= 3.0.0:FutureWarning"
    ),
    # pyspark's toPandas passes astype(copy=False), deprecated under pandas 3's copy-on-write.
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated:DeprecationWarning"),
]

NUMERIC = ["iris", "breast_cancer", "diabetes"]
PENGUIN_FEATURES = list(datasets.PENGUIN_FEATURES)  # a list, to index DataFrames with


@pytest.fixture(scope="module")
def instance(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An instance folder with four demo bundles and iris with integer labels."""
    folder = tmp_path_factory.mktemp("spark-instance")
    write_demo_bundles(folder / "models", names=[*NUMERIC, "penguins"])
    rows, target, names = load_demo_data("iris")
    codes = np.unique(target, return_inverse=True)[1]
    model = LogisticRegression(max_iter=1000).fit(rows, codes)
    write_bundle(model, rows, folder / "models", "iris_codes", "1", feature_names=names)
    return folder


@pytest.fixture(scope="module")
def spark(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SparkSession]:
    """One local[2] session, bound to 127.0.0.1, quiet, stopped at the end."""
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        pytest.fail(
            "the Spark tests need Java 17 or later and found no `java` on PATH nor JAVA_HOME: "
            "install Debian's openjdk-17-jre-headless (.ci/run does)",
            pytrace=False,
        )
    log_config = tmp_path_factory.mktemp("log4j2") / "log4j2.properties"
    log_config.write_text(batch._LOG4J2, encoding="utf-8")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("PYSPARK_PYTHON", sys.executable)  # the workers import this venv's packages
        env.setenv("SPARK_LOCAL_IP", "127.0.0.1")
        session = (
            SparkSession.builder.master("local[2]")
            .appName("inference-app tests")
            .config("spark.driver.host", "127.0.0.1")
            .config("spark.driver.bindAddress", "127.0.0.1")
            .config("spark.ui.enabled", "false")
            .config("spark.ui.showConsoleProgress", "false")
            .config("spark.sql.shuffle.partitions", "2")
            .config("spark.sql.execution.arrow.pyspark.enabled", "true")
            .config(
                "spark.driver.extraJavaOptions", f"-Dlog4j2.configurationFile=file:{log_config}"
            )
            .getOrCreate()
        )
        session.sparkContext.setLogLevel("ERROR")
        try:
            yield session
        finally:
            session.stop()


def dataset(name: str) -> pd.DataFrame:
    """A demo dataset, whole, with its feature names and an ``id`` column."""
    if name == "penguins":
        frame = load_penguins()[0]
    else:
        rows, _, names = load_demo_data(name)
        frame = pd.DataFrame(rows, columns=names)
    return frame.assign(id=np.arange(len(frame)))


def to_spark(spark: SparkSession, frame: pd.DataFrame) -> DataFrame:
    """A Spark DataFrame of ``frame``: NaN in text columns is null, ``id`` orders rows."""
    texts = [c for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c])]
    frame = frame.astype({c: object for c in texts})
    for column in texts:
        frame[column] = frame[column].where(frame[column].notna(), None)
    return spark.createDataFrame(frame).repartition(2)


def features_of(instance: Path, name: str) -> list[str]:
    return load_bundle(instance / "models" / name / "1").manifest.feature_names


@pytest.mark.parametrize("name", [*NUMERIC, "penguins"])
def test_udf_predictions_equal_the_estimators(
    spark: SparkSession, instance: Path, name: str
) -> None:
    bundle = load_bundle(instance / "models" / name / "1")
    features, estimator = bundle.manifest.feature_names, bundle.estimator
    frame = dataset(name)
    predict = batch.predict_udf(instance, name)
    columns = [F.col(f"`{feature}`") for feature in features]
    outputs = [
        predict(*columns).alias("positional"),
        predict(F.struct(*columns)).alias("struct"),
    ]
    probabilities = bundle.manifest.classes is not None
    if probabilities:
        proba = batch.predict_udf(instance, name, method="predict_proba")
        outputs.append(proba(F.struct(*columns)).alias("proba"))
    scored = to_spark(spark, frame).select("id", *outputs)
    got = scored.toPandas().sort_values("id").reset_index(drop=True)
    inputs = frame[features] if bundle.manifest.layout == "frame" else frame[features].to_numpy()
    expected = estimator.predict(inputs)
    assert len(got) == len(frame)
    if probabilities:
        assert got["positional"].tolist() == expected.tolist()
        assert got["struct"].tolist() == expected.tolist()
        classes = [str(label) for label in bundle.manifest.classes]
        rows = np.array([[row[c] for c in classes] for row in got["proba"]])
        np.testing.assert_allclose(rows, estimator.predict_proba(inputs), rtol=0, atol=1e-12)
    else:
        np.testing.assert_allclose(got["positional"], expected, rtol=1e-12)
        np.testing.assert_allclose(got["struct"], expected, rtol=1e-12)


def test_result_types_follow_the_labels_and_methods(instance: Path) -> None:
    assert isinstance(batch.result_type(instance, "iris"), T.StringType)
    assert isinstance(batch.result_type(instance, "iris_codes"), T.LongType)
    assert isinstance(batch.result_type(instance, "diabetes"), T.DoubleType)
    proba = batch.result_type(instance, "iris", method="predict_proba")
    assert proba == T.StructType(
        [T.StructField(c, T.DoubleType()) for c in ["setosa", "versicolor", "virginica"]]
    )
    assert batch.result_type(instance, "iris_codes", method="decision_function") == (
        T.StructType([T.StructField(c, T.DoubleType()) for c in ["0", "1", "2"]])
    )
    marked = batch.result_type(instance, "diabetes", on_error="mark")
    assert marked == T.StructType(
        [T.StructField("prediction", T.DoubleType()), T.StructField("error", T.StringType())]
    )
    with pytest.raises(ValueError, match="has no method 'predict_proba'"):
        batch.result_type(instance, "diabetes", method="predict_proba")


def test_integer_labels_come_back_as_longs(spark: SparkSession, instance: Path) -> None:
    features = features_of(instance, "iris_codes")
    predict = batch.predict_udf(instance, "iris_codes")
    frame = dataset("iris")
    got = (
        to_spark(spark, frame)
        .select("id", predict(*[F.col(f"`{f}`") for f in features]).alias("p"))
        .toPandas()
        .sort_values("id")
    )
    estimator = load_bundle(instance / "models" / "iris_codes" / "1").estimator
    assert got["p"].tolist() == estimator.predict(frame[features].to_numpy()).tolist()


def bad_penguins() -> pd.DataFrame:
    """The penguins, with an island the model refuses in row 3 and 200."""
    frame = dataset("penguins")
    frame.loc[[3, 200], "island"] = "Atlantis"
    return frame


@pytest.mark.parametrize("method", ["predict", "predict_proba"])
def test_mark_gives_the_reason_for_each_refused_row(
    spark: SparkSession, instance: Path, method: str
) -> None:
    frame = bad_penguins()
    predict = batch.predict_udf(instance, "penguins", method=method, on_error="mark")
    got = (
        to_spark(spark, frame)
        .select("id", predict(F.struct(*PENGUIN_FEATURES)).alias("out"))
        .select("id", "out.*")
        .toPandas()
        .sort_values("id")
        .set_index("id")
    )
    refused = got["error"].notna()
    assert got.index[refused].tolist() == [3, 200]
    assert got.loc[3, "error"].startswith("island: Must be one of: 'Biscoe', 'Dream'")
    good = frame.drop(index=[3, 200])
    estimator = load_bundle(instance / "models" / "penguins" / "1").estimator
    if method == "predict":
        assert got["prediction"][refused].isna().all()
        assert got["prediction"][~refused].tolist() == estimator.predict(good).tolist()
    else:
        classes = ["Adelie", "Chinstrap", "Gentoo"]
        assert got.loc[refused, classes].isna().all(axis=None)
        np.testing.assert_allclose(
            got.loc[~refused, classes], estimator.predict_proba(good[PENGUIN_FEATURES]), atol=1e-12
        )


def test_skip_drops_refused_rows_with_map_in_pandas(spark: SparkSession, instance: Path) -> None:
    frame = bad_penguins()
    table = to_spark(spark, frame)
    function, schema = batch.map_in_pandas(
        instance, "penguins", on_error="skip", keep=["id"], input_schema=table.schema
    )
    assert schema.fieldNames() == ["id", "prediction"]
    got = table.mapInPandas(function, schema).toPandas().sort_values("id")
    good = frame.drop(index=[3, 200])
    estimator = load_bundle(instance / "models" / "penguins" / "1").estimator
    assert got["id"].tolist() == good["id"].tolist()
    assert got["prediction"].tolist() == estimator.predict(good[PENGUIN_FEATURES]).tolist()


def test_skip_is_refused_by_the_udf(instance: Path) -> None:
    with pytest.raises(ValueError, match="map_in_pandas"):
        batch.predict_udf(instance, "penguins", on_error="skip")


def test_fail_names_the_partition_row_and_feature(spark: SparkSession, instance: Path) -> None:
    frame = bad_penguins().iloc[:10]
    predict = batch.predict_udf(instance, "penguins")
    table = to_spark(spark, frame).orderBy("id").coalesce(1)
    with pytest.raises(PythonException) as raised:
        table.select(predict(*PENGUIN_FEATURES)).collect()
    message = str(raised.value)
    assert (
        "ScoringError: Spark partition 0, row 3, feature 'island': 'Atlantis' is not a "
        "category the model knows; send one of 'Biscoe', 'Dream', 'Torgersen'"
    ) in message


def test_a_tampered_bundle_is_refused_in_the_executor(
    spark: SparkSession, instance: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "instance"
    shutil.copytree(instance / "models" / "iris", copy / "models" / "iris")
    estimator_file = copy / "models" / "iris" / "1" / "model.joblib"
    estimator_file.write_bytes(estimator_file.read_bytes() + b"\0")
    predict = batch.predict_udf(copy, "iris")  # the driver reads only the manifest
    table = to_spark(spark, dataset("iris").iloc[:5])
    with pytest.raises(PythonException) as raised:
        table.select(predict(*[F.col(f"`{f}`") for f in features_of(instance, "iris")])).collect()
    assert "sha256 mismatch" in str(raised.value)
    assert "the file changed after it was packaged, so it is refused" in str(raised.value)


def test_the_udf_ships_paths_not_the_estimator(instance: Path) -> None:
    predict = batch.predict_udf(instance, "breast_cancer", method="predict_proba")
    pickled = CloudPickleSerializer().dumps(predict.func)
    assert len(pickled) < 20_000, len(pickled)
    assert b"RandomForest" not in pickled and b"sklearn.ensemble" not in pickled


def test_a_shipped_models_folder_is_found_with_spark_files(
    spark: SparkSession, instance: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "driver"
    shutil.copytree(instance / "models" / "iris", copy / "models" / "iris")
    predict = batch.predict_udf(copy, "iris")
    spark.sparkContext.addFile(str(copy / "models"), recursive=True)
    spark.sparkContext.parallelize([0], 1).count()  # a task fetches the shipped files
    shutil.rmtree(copy)  # the executor now has only the shipped copy
    frame = dataset("iris")
    features = features_of(instance, "iris")
    got = (
        to_spark(spark, frame)
        .select("id", predict(*[F.col(f"`{f}`") for f in features]).alias("p"))
        .toPandas()
        .sort_values("id")
    )
    estimator = load_bundle(instance / "models" / "iris" / "1").estimator
    assert got["p"].tolist() == estimator.predict(frame[features].to_numpy()).tolist()


@pytest.mark.parametrize(
    ("kind", "method", "on_error"),
    [("csv", "predict", "mark"), ("parquet", "predict_proba", "skip")],
)
def test_score_file_gives_the_scorers_answers(
    spark: SparkSession, instance: Path, tmp_path: Path, kind: str, method: str, on_error: str
) -> None:
    frame = bad_penguins()
    source = tmp_path / f"penguins.{kind}"
    if kind == "csv":
        frame.to_csv(source, index=False)  # missing values are empty cells
    else:
        frame.to_parquet(source, index=False)
    output = tmp_path / "scored.parquet"
    summary = batch.score_file(
        instance, "penguins", str(source), str(output), method=method, on_error=on_error
    )
    bundle = load_bundle(instance / "models" / "penguins" / "1")
    scored = Scorer(bundle, method=method, on_error=on_error).score(frame)
    expected = scored.outputs.assign(id=frame["id"]).set_index("id")
    got = pd.read_parquet(output).astype({"id": int})  # a CSV's other columns are text
    got = got.sort_values("id").set_index("id")
    assert list(got.columns) == list(expected.columns)
    assert got.index.tolist() == expected.index.tolist()
    if method == "predict":
        assert got["prediction"].fillna("").tolist() == expected["prediction"].fillna("").tolist()
        assert got["error"].fillna("").tolist() == expected["error"].fillna("").tolist()
        assert got.loc[3, "error"].startswith("island: Must be one of")
    else:
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    (reason,) = scored.refused
    assert summary["rows"] == len(frame) and summary["scored"] == len(frame) - 2
    assert summary["refused"] == {reason: 2}
    assert (summary["model"], summary["version"], summary["method"]) == ("penguins", "1", method)
    assert summary["seconds"] > 0


def test_score_file_writes_csv_and_keeps_the_other_columns(
    spark: SparkSession, instance: Path, tmp_path: Path
) -> None:
    frame = dataset("breast_cancer").assign(batch="b1")
    source, output = tmp_path / "cancer.parquet", tmp_path / "out.csv"
    frame.to_parquet(source, index=False)
    summary = batch.score_file(instance, "breast_cancer", str(source), str(output))
    got = pd.concat(pd.read_csv(part) for part in sorted(output.glob("part-*.csv")))
    got = got.sort_values("id").reset_index(drop=True)
    assert list(got.columns) == ["id", "batch", "prediction"]
    bundle = load_bundle(instance / "models" / "breast_cancer" / "1")
    expected = Scorer(bundle).score(frame).outputs["prediction"]
    assert got["prediction"].tolist() == expected.tolist()
    assert (got["batch"] == "b1").all()
    assert summary["rows"] == summary["scored"] == len(frame) and summary["refused"] == {}
    with pytest.raises(FileExistsError, match="exists already"):
        batch.score_file(instance, "breast_cancer", str(source), str(output))


def test_score_file_fail_raises_the_workers_error(
    spark: SparkSession, instance: Path, tmp_path: Path
) -> None:
    source = tmp_path / "penguins.csv"
    frame = bad_penguins().iloc[:10]
    frame.to_csv(source, index=False)
    with pytest.raises(ScoringError) as raised:
        batch.score_file(instance, "penguins", str(source), str(tmp_path / "out.parquet"))
    assert not (tmp_path / "out.parquet").exists()  # a new try may write there
    assert raised.value.message.startswith(
        "Spark partition 0, row 3 (id=3), feature 'island': 'Atlantis' is not a category"
    )
    with pytest.raises(ScoringError, match="missing columns 'sex'"):
        frame.drop(columns="sex").to_csv(source, index=False)
        batch.score_file(instance, "penguins", str(source), str(tmp_path / "out2.parquet"))
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        batch.score_file(instance, "penguins", str(tmp_path / "no.csv"), str(tmp_path / "o.pq"))
    with pytest.raises(ValueError, match="unknown input format '.txt'"):
        batch.score_file(instance, "penguins", "rows.txt", str(tmp_path / "out3.parquet"))


def test_locate_picks_the_highest_version_as_the_server_does(
    instance: Path, tmp_path: Path
) -> None:
    for version in ["1", "9", "10"]:
        shutil.copytree(instance / "models" / "iris" / "1", tmp_path / "models" / "iris" / version)
        manifest = tmp_path / "models" / "iris" / version / "model.json"
        manifest.write_text(
            manifest.read_text().replace('"version": "1"', f'"version": "{version}"')
        )
    (tmp_path / "models" / "iris" / ".partial").mkdir()
    assert batch.locate(tmp_path, "iris").version == "10"
    assert batch.locate(tmp_path, "iris", "9").version == "9"
    with pytest.raises(ModelNotFoundError, match="has no version '2'; it has 1, 9, 10"):
        batch.locate(tmp_path, "iris", "2")
    with pytest.raises(ModelNotFoundError, match="the models there are: iris"):
        batch.locate(tmp_path, "irises")
    with pytest.raises(BundleError, match="not allowed"):
        batch.locate(tmp_path, "../iris")


def test_the_scorer_is_made_once_per_process(instance: Path) -> None:
    ref = batch.locate(instance, "diabetes")
    first = batch.cached_scorer(ref, method="predict", on_error="mark")
    assert batch.cached_scorer(ref, method="predict", on_error="mark") is first
    assert batch.cached_scorer(ref).bundle is first.bundle
    other: Any = batch.cached_scorer(ref, on_error="skip")
    assert other is not first and other.on_error == "skip"


def test_the_score_command_runs_on_spark(
    spark: SparkSession, instance: Path, tmp_path: Path
) -> None:
    frame = dataset("breast_cancer")
    source, output = tmp_path / "cancer.parquet", tmp_path / "scored.parquet"
    frame.to_parquet(source, index=False)
    arguments = ["score", "breast_cancer", str(source), str(output)]
    options = ["--instance-path", str(instance), "--engine", "spark", "--master", "local[2]"]

    result = CliRunner().invoke(main, arguments + options)

    assert result.exit_code == 0, result.output
    assert f"{len(frame)} read, {len(frame)} scored, 0 refused" in result.output
    got = pd.read_parquet(output).sort_values("id")
    bundle = load_bundle(instance / "models" / "breast_cancer" / "1")
    rows = frame[bundle.manifest.feature_names].to_numpy()
    assert got["prediction"].tolist() == bundle.estimator.predict(rows).tolist()
    again = CliRunner().invoke(main, arguments + options)
    assert again.exit_code == 1 and again.output.count("\n") == 1 and "Error:" in again.output
