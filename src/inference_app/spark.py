"""Batch scoring on Spark (a pandas UDF, ``mapInPandas``, whole files) and Dask with a bundle.

Every route runs :class:`inference_app.core.scoring.Scorer`: the API's checks and engines,
outputs as columns. The driver reads only the bundle's manifest; each executor process
(Spark's Python worker, a Dask worker) loads and verifies the bundle once
(:func:`cached_scorer`) and keeps it for every later batch and task. What travels to the
executors is a :class:`BundleRef`: paths, a digest and options, never the estimator.

pyspark is imported when a Spark function is called (the ``spark`` extra); :func:`locate`
and :func:`cached_scorer` need only the core, for Dask or any other engine.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import pandas as pd  # type: ignore[import-untyped, unused-ignore]

from inference_app.core.bundle import MANIFEST_FILE, Bundle, Manifest, load_bundle, read_manifest
from inference_app.core.errors import BundleError
from inference_app.core.registry import find_version
from inference_app.core.scoring import ERROR, ROW, Scorer, ScoringError, output_columns

if TYPE_CHECKING:
    from flask import Flask
    from pyspark.accumulators import Accumulator, AccumulatorParam
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql._typing import UserDefinedFunctionLike
    from pyspark.sql.types import DataType, StructField, StructType

__all__ = [
    "BundleRef",
    "cached_scorer",
    "locate",
    "map_in_pandas",
    "predict_udf",
    "result_type",
    "score_file",
]

#: The input formats of :func:`score_file`, by file (or folder) extension, lower case.
FORMATS = {
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".json": "json",
    ".jsonl": "json",
    ".ndjson": "json",
}
#: Where a Spark error names the inference-app error raised in a Python worker.
_WORKER_ERROR = re.compile(
    r"inference_app\.core\.(?:scoring\.(?P<scoring>ScoringError)|errors\.(?P<bundle>BundleError))"
    r": (?P<message>[^\n]*)"
)
#: A CSV cell's error names its line (the header is line 1), :mod:`inference_app.core.inputs`.
_CSV_LINE = re.compile(r"\bCSV line (\d+)")


@dataclass(frozen=True)
class BundleRef:
    """Where an executor finds one bundle version, and what it must find there.

    Small and picklable: this, not the estimator, is what Spark ships in a UDF's closure.

    :param models_dir: the models folder, absolute, as the driver saw it; an executor that
        lacks it looks for a folder of the same name shipped with
        ``SparkContext.addFile(models_dir, recursive=True)`` (:class:`pyspark.SparkFiles`).
    :param name: the model name.
    :param version: the version, resolved on the driver (the highest when none was asked).
    :param manifest_sha256: the SHA-256 of ``model.json`` as the driver read it, ``None``
        for a bare ``model.joblib``; an executor refuses a bundle whose manifest differs.
    :param strict_sklearn_version: the instance's ``STRICT_SKLEARN_VERSION``.
    :param max_text_length: the instance's ``MAX_TEXT_LENGTH``, in characters.
    """

    models_dir: str
    name: str
    version: str
    manifest_sha256: str | None
    strict_sklearn_version: bool = False
    max_text_length: int = 10_000

    @property
    def path(self) -> Path:
        """Return the version folder under :attr:`models_dir`."""
        return Path(self.models_dir) / self.name / self.version


def locate(
    instance_path: str | os.PathLike[str], name: str, version: str | None = None
) -> BundleRef:
    """Find a bundle as the server would: the instance's ``MODELS_DIR`` and settings, and
    by default the highest version (:func:`inference_app.core.registry.version_key`).

    Only the manifest is read here; the estimator is loaded where it runs (but for a bare
    ``model.joblib`` without a manifest, loaded here to infer its inputs).

    :param instance_path: the instance folder (``config.py``, ``models/``).
    :raises ModelNotFoundError: no such model or version, naming those there are.
    :raises BundleError: a name or version that is not one path segment, a version folder
        that resolves outside the models folder, or an unreadable manifest.
    :raises inference_app.config.ConfigError: a setting of the instance has a bad value.
    """
    return _locate(instance_path, name, version)[0]


def _locate(
    instance_path: str | os.PathLike[str], name: str, version: str | None
) -> tuple[BundleRef, Manifest]:
    """Return the bundle's :class:`BundleRef` and its manifest (see :func:`locate`)."""
    settings = _settings(instance_path)
    models = (Path(settings.instance_path) / str(settings.config["MODELS_DIR"])).resolve()
    folder = find_version(models, name, version)
    version = folder.name
    strict = bool(settings.config["STRICT_SKLEARN_VERSION"])
    manifest_file = folder / MANIFEST_FILE
    digest: str | None = None
    if manifest_file.is_file():
        data = _read(manifest_file)
        digest = hashlib.sha256(data).hexdigest()
        manifest = read_manifest(manifest_file, name, version, data)
    else:  # a bare model.joblib: its inputs are inferred from the estimator, loaded here
        manifest = load_bundle(folder, strict_sklearn_version=strict).manifest
    ref = BundleRef(
        str(models),
        name,
        version,
        digest,
        strict_sklearn_version=strict,
        max_text_length=int(settings.config["MAX_TEXT_LENGTH"]),
    )
    return ref, manifest


def _settings(instance_path: str | os.PathLike[str]) -> Flask:
    """Return a bare app holding the instance's configuration (no models loaded)."""
    from inference_app import config  # on the driver only: executors need no Flask

    return config.settings(instance_path)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise BundleError(f"{path}: cannot read: {error.strerror or error}") from None


_LOCK = threading.Lock()
#: This process's bundles, by (version folder, manifest digest, strict), and scorers by
#: that and their options: an executor loads a bundle once, however many tasks it runs.
_BUNDLES: dict[tuple[str, str | None, bool], Bundle] = {}
_SCORERS: dict[tuple[Any, ...], Scorer] = {}


def cached_scorer(
    ref: BundleRef, *, method: str = "predict", on_error: str = "fail", engine: str = "auto"
) -> Scorer:
    """Return this process's :class:`Scorer` for a bundle, loading the bundle the first time.

    Call it where the rows are scored (a Spark task, a Dask partition function), not on the
    driver: the bundle is read from :attr:`BundleRef.path` or, when that folder is absent,
    from the models folder shipped with ``SparkContext.addFile``; its manifest must be the
    one the driver read, and :func:`inference_app.core.bundle.load_bundle` checks the
    estimator file's SHA-256 before unpickling it, as the server does.

    :param method: ``predict``, ``predict_proba`` or ``decision_function``.
    :param on_error: ``fail``, ``skip`` or ``mark`` (:class:`Scorer`).
    :param engine: ``auto``, ``sklearn`` or ``onnx``.
    :raises BundleError: the folder is missing, its manifest changed since the driver read
        it, its estimator file fails its checksum, or it does not load.
    :raises ValueError: a method the model lacks, or an unknown ``on_error``.
    """
    key = (ref, method, on_error, engine)
    scorer = _SCORERS.get(key)
    if scorer is not None:
        return scorer
    with _LOCK:
        scorer = _SCORERS.get(key)
        if scorer is None:
            scorer = Scorer(
                _cached_bundle(ref),
                method=method,
                on_error=on_error,
                engine=engine,
                max_text_length=ref.max_text_length,
            )
            _SCORERS[key] = scorer
    return scorer


def _cached_bundle(ref: BundleRef) -> Bundle:
    """Return the bundle of ``ref``, loaded and verified once per process (under _LOCK)."""
    folder = _bundle_folder(ref)
    key = (str(folder.resolve()), ref.manifest_sha256, ref.strict_sklearn_version)
    bundle = _BUNDLES.get(key)
    if bundle is None:
        if ref.manifest_sha256 is not None:
            digest = hashlib.sha256(_read(folder / MANIFEST_FILE)).hexdigest()
            if digest != ref.manifest_sha256:
                raise BundleError(
                    f"{folder / MANIFEST_FILE}: sha256 {digest} differs from the "
                    f"{ref.manifest_sha256} the driver read; the bundle changed, so it is refused"
                )
        bundle = load_bundle(folder, strict_sklearn_version=ref.strict_sklearn_version)
        _BUNDLES[key] = bundle
    return bundle


def _bundle_folder(ref: BundleRef) -> Path:
    """Return the version folder of ``ref`` on this machine.

    :raises BundleError: neither the driver's path nor a shipped copy exists here.
    """
    if ref.path.is_dir():
        return ref.path
    relative = Path(Path(ref.models_dir).name, ref.name, ref.version)
    try:
        from pyspark import SparkFiles

        shipped = Path(SparkFiles.getRootDirectory()) / relative
    except Exception:  # no pyspark, or not in a Spark task: nothing was shipped
        shipped = None
    if shipped is not None and shipped.is_dir():
        return shipped
    raise BundleError(
        f"{ref.path}: no such folder on this executor, nor a {relative} shipped with "
        "SparkContext.addFile(models_dir, recursive=True); give every executor the instance "
        "folder at the same path, or ship the models folder"
    )


# -- Spark types ----------------------------------------------------------------------------


def result_type(
    instance_path: str | os.PathLike[str],
    name: str,
    version: str | None = None,
    *,
    method: str = "predict",
    on_error: str = "fail",
) -> DataType:
    """Return the Spark type of :func:`predict_udf`'s column.

    ``predict``: the label type, ``StringType`` for string classes, ``LongType`` for integer
    ones, ``BooleanType`` or ``DoubleType``, and ``DoubleType`` for a regressor;
    ``predict_proba`` and a multiclass ``decision_function``: a ``StructType`` of
    ``DoubleType`` fields named by class (``str(label)``); a binary ``decision_function``
    a ``DoubleType``. With ``on_error="mark"`` the outputs are fields of a struct with a
    ``StringType`` ``error`` field (null where scored).

    :raises ValueError: a method the model lacks.
    """
    _, manifest = _locate(instance_path, name, version)
    return _result_type(manifest, name, method, on_error)


def _result_type(manifest: Manifest, name: str, method: str, on_error: str) -> DataType:
    from pyspark.sql.types import StringType, StructField, StructType

    fields = _output_fields(manifest, name, method)
    if on_error == "mark":
        return StructType([*fields, StructField(ERROR, StringType(), True)])
    if len(fields) == 1:
        return fields[0].dataType
    return StructType(fields)


def _output_fields(manifest: Manifest, name: str, method: str) -> list[StructField]:
    """Return one Spark field per output column of ``method``, nullable."""
    from pyspark.sql.types import DoubleType, StructField

    if method not in manifest.methods:
        raise ValueError(
            f"model {name!r} has no method {method!r}; it has {', '.join(manifest.methods)}"
        )
    bundle = Bundle(manifest=manifest, estimator=None, path=Path())
    columns = output_columns(bundle, method)
    if method == "predict":
        return [StructField(columns[0], _label_type(manifest.classes), True)]
    return [StructField(column, DoubleType(), True) for column in columns]


def _label_type(classes: Sequence[Any] | None) -> DataType:
    """Return the Spark type of a model's labels: a regressor's predictions are doubles."""
    from pyspark.sql.types import BooleanType, DoubleType, LongType, StringType

    if classes is None:
        return DoubleType()
    if all(isinstance(label, bool) for label in classes):
        return BooleanType()
    if all(isinstance(label, int) and not isinstance(label, bool) for label in classes):
        return LongType()
    if all(isinstance(label, int | float) and not isinstance(label, bool) for label in classes):
        return DoubleType()
    return StringType()


# -- the pandas UDF -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Job:
    """What a Spark task needs to score its batches: no estimator, only where to find it."""

    ref: BundleRef
    method: str
    on_error: str
    engine: str
    #: The model's inputs in order, the names of positional UDF arguments.
    features: tuple[str, ...]
    #: The UDF returns a struct (a DataFrame per batch), not one column.
    struct: bool = False
    #: ``mapInPandas``: input columns kept beside the outputs, and whether cells are CSV text.
    keep: tuple[str, ...] = ()
    cells: bool = False


def predict_udf(
    instance_path: str | os.PathLike[str],
    name: str,
    version: str | None = None,
    *,
    method: str = "predict",
    on_error: str = "fail",
    engine: str = "auto",
) -> UserDefinedFunctionLike:
    """Return a pandas UDF (iterator of batches) that scores rows with a bundle.

    Like ``mlflow.pyfunc.spark_udf``: ``df.withColumn("prediction", udf(*columns))`` takes
    the model's features as positional columns, in the model's order (their names come
    from the manifest: see ``Manifest.feature_names``), and ``udf(struct(*columns))`` takes
    one struct column whose field names are the feature names (other fields are ignored).
    Each batch is checked and scored by :func:`cached_scorer` in the executor.

    :param instance_path: the instance folder, at the same path on every executor or with
        its models folder shipped by ``SparkContext.addFile`` (:func:`locate`).
    :param version: default the highest, resolved now, on the driver.
    :param method: ``predict``, ``predict_proba`` or ``decision_function``.
    :param on_error: ``fail``: the task raises at the first refused row, with a message
        naming its Spark partition, its row (counted from 0 within that partition) and its
        feature; ``mark``: the result is a struct of the outputs (null for a refused row)
        and an ``error`` string (null where scored). ``skip`` would drop rows, which a
        column cannot: use :func:`map_in_pandas`.
    :param engine: ``auto``, ``sklearn`` or ``onnx``.
    :returns: the UDF; its type is :func:`result_type`'s: the label type for ``predict``,
        a struct of doubles named by class for ``predict_proba`` and a multiclass
        ``decision_function``.
    :raises ValueError: ``on_error="skip"``, an unknown ``on_error``, or a method the model
        lacks.
    :raises ModelNotFoundError: no such model or version.
    :raises BundleError: an unreadable manifest.
    """
    from pyspark.sql.pandas.functions import pandas_udf

    if on_error == "skip":
        raise ValueError(
            "on_error='skip' drops rows, and a UDF returns one value per row: use "
            "inference_app.spark.map_in_pandas(...) with DataFrame.mapInPandas instead"
        )
    _check_on_error(on_error)
    ref, manifest = _locate(instance_path, name, version)
    returns = _result_type(manifest, name, method, on_error)
    job = _Job(
        ref,
        method,
        on_error,
        engine,
        tuple(manifest.feature_names),
        struct=returns.typeName() == "struct",
    )

    # The type hints tell Spark this is a scalar iterator UDF; the body is a module-level
    # function, pickled by reference, so the executor's cache is the module's own.
    def score_batches(batches: Iterator[tuple[pd.Series, ...]]) -> Iterator[pd.Series]:
        return _udf_batches(job, batches)

    score_batches.__name__ = score_batches.__qualname__ = f"{name}_{method}"
    # pyspark's overloads type neither a DataType variable nor the iterator-of-tuples form.
    udf = pandas_udf(score_batches, returns)  # type: ignore[call-overload, unused-ignore]
    return cast("UserDefinedFunctionLike", udf)


def _check_on_error(on_error: str) -> None:
    from inference_app.core.scoring import ON_ERROR

    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {', '.join(ON_ERROR)}; got {on_error!r}")


def _udf_batches(job: _Job, batches: Iterator[Any]) -> Iterator[Any]:
    """Score a task's batches: tuples of Series (positional columns), a DataFrame (a
    struct column) or one Series (a one-feature model); yield a Series or a DataFrame."""
    scorer = cached_scorer(job.ref, method=job.method, on_error=job.on_error, engine=job.engine)
    offset = 0
    for batch in batches:
        frame = _udf_frame(batch, job.features)
        try:
            scored = scorer.score(frame, offset=offset)
        except ScoringError as error:
            raise _in_partition(error, False, None, offset) from None
        offset += len(frame)
        outputs = scored.outputs.reset_index(drop=True)
        yield outputs if job.struct else outputs[outputs.columns[0]]


def _udf_frame(batch: Any, features: Sequence[str]) -> pd.DataFrame:
    """Return a UDF batch as a table with a column per feature."""
    if isinstance(batch, pd.DataFrame):
        return batch
    columns = list(batch) if isinstance(batch, tuple) else [batch]
    nested = any(isinstance(column, pd.DataFrame) for column in columns)
    if nested or len(columns) != len(features):
        raise ScoringError(
            f"the UDF takes the model's {len(features)} features as columns in this order: "
            f"{', '.join(map(repr, features))}, or one struct column of them; got "
            f"{len(columns)} columns"
        )
    return pd.DataFrame(
        {
            name: column.reset_index(drop=True)
            for name, column in zip(features, columns, strict=True)
        }
    )


def _in_partition(
    error: ScoringError, cells: bool, ids: pd.DataFrame | None, offset: int
) -> ScoringError:
    """Return ``error`` naming the Spark partition, its row within it, and the row's kept
    columns (an id) when there are.

    :param ids: the batch's kept columns; its first row is the partition's row ``offset``.
    """
    message = error.message
    if cells:  # lines of the chunk, not of the file: name the row
        message = _CSV_LINE.sub(lambda m: f"row {int(m.group(1)) - 2}", message, count=1)
    found = ROW.match(message)
    if found and ids is not None and len(ids.columns):
        position = int(found.group(2)) - offset
        if 0 <= position < len(ids):
            values = ", ".join(
                f"{column}={_shown(ids[column].iloc[position], cells)}"
                for column in ids.columns[:3]
            )
            message = f"{message[: found.end()]} ({values}){message[found.end() :]}"
    where = f"Spark partition {_partition()}"
    message = f"{where}, {message}" if found else f"{where}: {message}"
    if found:
        message += " (rows are counted from 0 within each partition)"
    return ScoringError(message, error.errors)


def _shown(value: Any, cells: bool) -> str:
    """Return a kept value for a message: a CSV cell as its text, others as Python shows
    them, cut at 40 characters."""
    value = value.item() if hasattr(value, "item") else value
    text = value if cells and isinstance(value, str) else repr(value)
    return text if len(text) <= 40 else f"{text[:37]}..."


def _partition() -> int | str:
    from pyspark import TaskContext

    context = TaskContext.get()
    return "?" if context is None else context.partitionId()


# -- mapInPandas ----------------------------------------------------------------------------


class _Counts:
    """A Spark accumulator of dictionaries of counts, added key by key (nested once)."""

    def zero(self, value: dict[str, Any]) -> dict[str, Any]:
        """Return an empty count."""
        return {}

    def addInPlace(self, value1: dict[str, Any], value2: dict[str, Any]) -> dict[str, Any]:  # noqa: N802 (Spark's name)
        """Add ``value2``'s counts to ``value1``'s."""
        for key, count in value2.items():
            if isinstance(count, Mapping):
                merged = Counter(value1.get(key, {}))
                merged.update(count)
                value1[key] = dict(merged)
            else:
                value1[key] = value1.get(key, 0) + count
        return value1


def map_in_pandas(
    instance_path: str | os.PathLike[str],
    name: str,
    version: str | None = None,
    *,
    method: str = "predict",
    on_error: str = "fail",
    engine: str = "auto",
    keep: Iterable[str | StructField] = (),
    input_schema: StructType | None = None,
) -> tuple[Any, StructType]:
    """Return ``(function, schema)`` for ``df.mapInPandas(function, schema)``.

    The output has the kept input columns first, then the outputs: ``prediction`` (the
    label type, :func:`result_type`) or one ``DoubleType`` column per class; with
    ``mark``, an ``error`` string column. With ``skip``, refused rows are left out.

    :param keep: input columns to carry over, e.g. an id: ``StructField`` s
        (``df.schema["id"]``), or names typed by ``input_schema``.
    :param input_schema: the input's schema (``df.schema``), to type the names in ``keep``.
    :param on_error: ``fail`` (the task raises, naming its partition, the row within it
        and the row's kept values), ``skip`` or ``mark``.
    :returns: the function, ``Iterator[pandas.DataFrame] -> Iterator[pandas.DataFrame]``,
        holding no estimator, and the output schema.
    :raises ValueError: a kept name without ``input_schema`` or absent from it, a kept
        column named like an output column, an unknown ``on_error``, or a method the
        model lacks.
    :raises ModelNotFoundError: no such model or version.
    """
    _check_on_error(on_error)
    ref, manifest = _locate(instance_path, name, version)
    return _map_in_pandas(
        ref,
        manifest,
        method=method,
        on_error=on_error,
        engine=engine,
        keep=keep,
        input_schema=input_schema,
        cells=False,
        counts=None,
    )


def _map_in_pandas(
    ref: BundleRef,
    manifest: Manifest,
    *,
    method: str,
    on_error: str,
    engine: str,
    keep: Iterable[str | StructField],
    input_schema: StructType | None,
    cells: bool,
    counts: Accumulator[dict[str, Any]] | None,
) -> tuple[Any, StructType]:
    """Return :func:`map_in_pandas`'s function and schema for a located bundle.

    :param cells: the input holds CSV text cells, typed by the model's features.
    :param counts: where tasks add their rows, scored rows, refusals and unseen categories.
    """
    from pyspark.sql.types import StringType, StructField, StructType

    kept: list[StructField] = []
    for item in keep:
        if isinstance(item, StructField):
            kept.append(item)
        elif input_schema is None or item not in input_schema.fieldNames():
            raise ValueError(
                f"keep={item!r}: give the input's schema (input_schema=df.schema) holding it, "
                "or a StructField such as df.schema['id']"
            )
        else:
            kept.append(input_schema[item])
    fields = _output_fields(manifest, ref.name, method)
    if on_error == "mark":
        fields.append(StructField(ERROR, StringType(), True))
    clashes = sorted({f.name for f in kept} & {f.name for f in fields})
    if clashes:
        raise ValueError(
            f"kept columns {', '.join(map(repr, clashes))} are named like output columns; "
            "rename them first"
        )
    job = _Job(
        ref,
        method,
        on_error,
        engine,
        tuple(manifest.feature_names),
        keep=tuple(f.name for f in kept),
        cells=cells,
    )
    function = functools.partial(_map_batches, job, counts)
    return function, StructType([*kept, *fields])


def _map_batches(
    job: _Job, counts: Accumulator[dict[str, Any]] | None, frames: Iterator[pd.DataFrame]
) -> Iterator[pd.DataFrame]:
    """Score a task's DataFrames; yield the kept columns and the outputs of each."""
    scorer = cached_scorer(job.ref, method=job.method, on_error=job.on_error, engine=job.engine)
    offset = 0
    for frame in frames:
        cells = frame
        if job.cells:  # Spark's text columns hold NaN (pandas 3) or None where a cell is empty
            cells = frame.astype(object).where(frame.notna(), None)
        try:
            scored = scorer.score(cells, offset=offset, cells=job.cells)
        except ScoringError as error:
            ids = frame[list(job.keep)].reset_index(drop=True) if job.keep else None
            raise _in_partition(error, job.cells, ids, offset) from None
        positions = scored.outputs.index.to_numpy() - offset
        offset += len(frame)
        outputs = scored.outputs.reset_index(drop=True)
        kept = frame[list(job.keep)].iloc[positions].reset_index(drop=True)
        if counts is not None:
            refused = dict(scored.refused)
            counts.add(
                {
                    "rows": len(frame),
                    "scored": len(frame) - sum(refused.values()),
                    "refused": refused,
                    "unseen": dict(scored.unseen),
                }
            )
        yield pd.concat([kept, outputs], axis=1)


# -- whole files ----------------------------------------------------------------------------


def score_file(
    instance_path: str | os.PathLike[str],
    name: str,
    input_path: str,
    output_path: str,
    *,
    version: str | None = None,
    method: str = "predict",
    on_error: str = "fail",
    engine: str = "auto",
    master: str | None = None,
) -> dict[str, Any]:
    """Score a file with Spark, for ``inference-app score ... --engine spark``.

    The input's format comes from its extension (a file or a folder of part files):
    ``.csv`` (a header row; every cell read as text and typed by the model's features, as
    the API types CSV: an empty cell is missing), ``.parquet``/``.pq``, or JSON lines
    (``.json``, ``.jsonl``, ``.ndjson``). The output, a folder of part files in the format
    of its own extension, holds the input's columns that are not features (ids, targets)
    and the outputs (:func:`map_in_pandas`); Spark keeps no row order across partitions,
    so carry an id column to join on.

    :param input_path: a path or URL Spark reads (``hdfs://``, ``s3a://`` need their
        connectors).
    :param output_path: where to write; it must not exist.
    :param master: the Spark master URL; default ``local[*]``. A session that is running
        already is used as it is. A local session binds to 127.0.0.1, without its web UI,
        and its Python workers run this interpreter unless ``PYSPARK_PYTHON`` says otherwise.
    :returns: ``{"model", "version", "method", "rows", "scored", "refused", "unseen",
        "seconds", "output"}``: input rows, rows with outputs, refused rows by reason
        (``skip`` and ``mark``), unseen categories the model tolerated by feature, and the
        wall time including the session's start. The counts come from the tasks (Spark
        accumulators): a stage Spark re-runs may count its rows twice.
    :raises ValueError: an unknown input or output extension, an output column named like
        an input column, or options :func:`map_in_pandas` refuses.
    :raises FileExistsError: ``output_path`` is a local path that exists.
    :raises FileNotFoundError: ``input_path`` does not exist.
    :raises ScoringError: ``on_error="fail"`` and a row is refused (naming its partition,
        its row within it and its first non-feature values), or the input lacks features.
    :raises BundleError: the bundle fails its checks, on the driver or an executor.
    :raises ModelNotFoundError: no such model or version.
    """
    from pyspark.errors import PySparkException

    started = time.perf_counter()
    source, target = _format(input_path, "input"), _format(output_path, "output")
    if "://" not in output_path and Path(output_path).exists():
        raise FileExistsError(f"{output_path}: exists already; choose a new output path")
    _check_on_error(on_error)
    ref, manifest = _locate(instance_path, name, version)  # fail fast, before Spark starts
    _output_fields(manifest, name, method)  # a method the model lacks
    spark, created = _session(master)
    try:
        try:
            frame = _read_table(spark, input_path, source)
        except PySparkException as error:
            if "PATH_NOT_FOUND" in str(error):
                raise FileNotFoundError(f"{input_path}: no such file or folder") from None
            raise
        features = manifest.feature_names
        missing = [feature for feature in features if feature not in frame.columns]
        if missing:
            raise ScoringError(
                f"{input_path}: missing columns {', '.join(map(repr, missing))}; the model "
                f"takes {', '.join(map(repr, features))}"
            )
        counts = spark.sparkContext.accumulator({}, cast("AccumulatorParam[Any]", _Counts()))
        function, schema = _map_in_pandas(
            ref,
            manifest,
            method=method,
            on_error=on_error,
            engine=engine,
            keep=[column for column in frame.columns if column not in features],
            input_schema=frame.schema,
            cells=source == "csv",
            counts=counts,
        )
        writer = frame.mapInPandas(function, schema).write.mode("errorifexists")
        try:
            if target == "csv":
                writer.option("header", True).csv(output_path)
            else:
                getattr(writer, target)(output_path)
        except PySparkException as error:
            if "://" not in output_path:  # an aborted job leaves its output folder, empty
                with contextlib.suppress(OSError):
                    os.rmdir(output_path)
            raise _from_worker(error) from None
        totals: dict[str, Any] = counts.value
    finally:
        if created:
            spark.stop()
    return {
        "model": ref.name,
        "version": ref.version,
        "method": method,
        "rows": int(totals.get("rows", 0)),
        "scored": int(totals.get("scored", 0)),
        "refused": dict(sorted(totals.get("refused", {}).items(), key=lambda kv: -kv[1])),
        "unseen": dict(totals.get("unseen", {})),
        "seconds": round(time.perf_counter() - started, 3),
        "output": output_path,
    }


def _format(path: str, role: str) -> str:
    suffix = Path(path.rstrip("/")).suffix.lower()
    kind = FORMATS.get(suffix)
    if kind is None:
        raise ValueError(
            f"{path}: unknown {role} format {suffix or '(no extension)'!r}; expected "
            f"{', '.join(FORMATS)}"
        )
    return kind


def _read_table(spark: SparkSession, path: str, kind: str) -> DataFrame:
    """Read a table: CSV cells as text (typed later by the model), or Parquet or JSON lines."""
    if kind == "csv":
        frame = spark.read.csv(
            path,
            header=True,
            inferSchema=False,
            mode="FAILFAST",  # a short or long line is an error, not a row of nulls
            encoding="UTF-8",
        )
        first = frame.columns[0] if frame.columns else ""
        if first.startswith("\ufeff"):  # spreadsheet programs' byte-order mark
            frame = frame.withColumnRenamed(first, first[1:])
        return frame
    if kind == "parquet":
        return spark.read.parquet(path)
    return spark.read.json(path)


def _from_worker(error: Exception) -> Exception:
    """Return the inference-app error a Python worker raised, without Spark's wrapping."""
    found = _WORKER_ERROR.search(str(error))
    if found is None:
        return error
    if found.group("scoring"):
        return ScoringError(found.group("message"))
    return BundleError(found.group("message"))


_LOG4J2 = """\
rootLogger.level = error
rootLogger.appenderRef.stderr.ref = console
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{yy/MM/dd HH:mm:ss} %p %c{1}: %m%n
"""


def _session(master: str | None) -> tuple[SparkSession, bool]:
    """Return the running Spark session, or a new one on ``master`` (default ``local[*]``),
    and whether it is new. A new local session binds to 127.0.0.1, logs only errors and
    has no web UI."""
    from pyspark.sql import SparkSession

    running = SparkSession.getActiveSession()
    if running is not None:
        return running, False
    url = master or "local[*]"
    builder = SparkSession.builder.master(url).appName("inference-app score")
    builder = builder.config("spark.ui.showConsoleProgress", "false")
    local = url.startswith("local")
    if local:
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        builder = (
            builder.config("spark.driver.host", "127.0.0.1")
            .config("spark.driver.bindAddress", "127.0.0.1")
            .config("spark.ui.enabled", "false")
        )
    handle, log_config = tempfile.mkstemp(prefix="inference-app-log4j2-", suffix=".properties")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(_LOG4J2)
        spark = builder.config(
            "spark.driver.extraJavaOptions", f"-Dlog4j2.configurationFile=file:{log_config}"
        ).getOrCreate()
    finally:
        os.unlink(log_config)  # read once, as the JVM starts
    spark.sparkContext.setLogLevel("ERROR")
    return spark, True
