"""The ``inference-app`` command: Flask's CLI plus init-demo, package and models."""

from __future__ import annotations

import csv
from pathlib import Path

import click
import joblib
import numpy as np
from flask import Flask
from flask.cli import FlaskGroup

from inference_app import __version__, config, create_app
from inference_app.core.bundle import write_bundle
from inference_app.core.errors import BundleError
from inference_app.core.registry import discover
from inference_app.demo import write_demo_bundles

instance_option = click.option(
    "--instance-path",
    envvar=config.INSTANCE_PATH_ENV,
    default="instance",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help=f"The instance folder (environment variable {config.INSTANCE_PATH_ENV}).",
)


def _app() -> Flask:
    return create_app()


@click.group(cls=FlaskGroup, create_app=_app, add_version_option=False)
@click.version_option(__version__, package_name="inference-app")
def main() -> None:
    """Serve scikit-learn models over HTTP; `inference-app run` starts a development server."""


def _configured(instance_path: Path) -> Flask:
    """Return a bare app holding the instance's configuration (no models loaded)."""
    app = Flask(
        "inference_app",
        instance_path=str(config.resolve_instance_path(instance_path)),
        instance_relative_config=True,
    )
    config.init_app(app)
    return app


def _models_dir(instance_path: Path) -> Path:
    """Return the models folder of an instance folder, honouring MODELS_DIR from the env."""
    return config.models_dir(_configured(instance_path))


@main.command("init-demo", with_appcontext=False)
@instance_option
@click.option("--force", is_flag=True, help="Rewrite demo bundles that exist already.")
@click.option("--onnx", is_flag=True, help="Also store ONNX conversions (the onnx extra).")
def init_demo(instance_path: Path, force: bool, onnx: bool) -> None:
    """Write the iris, breast_cancer and diabetes demo bundles, version 1."""
    models_dir = _models_dir(instance_path)
    for name, bundle in write_demo_bundles(models_dir, overwrite=force, onnx=onnx):
        if bundle is None:
            click.echo(f"kept    {name}: a bundle exists (use --force to rewrite it)")
        else:
            click.echo(f"wrote   {name} version {bundle.version} to {bundle.path}")


@main.command("package", with_appcontext=False)
@click.argument("estimator_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", required=True, help="The model name, one path segment.")
@click.option("--version", "version", required=True, help="The version, e.g. 2.")
@click.option(
    "--sample",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A CSV of training rows with a header row of feature names.",
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
    "--onnx",
    is_flag=True,
    help="Also store an ONNX conversion, checked on the sample (needs the onnx extra).",
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
    """Write a bundle from a fitted estimator file (joblib) and a CSV sample of its data.

    The estimator file is unpickled: package only files you trust.
    """
    names, rows = read_sample(sample)
    try:
        estimator = joblib.load(estimator_file)
    except Exception as error:  # unpickling can fail in any way; say how, without a traceback
        raise click.ClickException(
            f"{estimator_file}: cannot load: {type(error).__name__}: {error}"
        ) from None
    try:
        bundle = write_bundle(
            estimator,
            rows,
            _models_dir(instance_path),
            name,
            version,
            feature_names=names,
            overwrite=force,
            format=bundle_format,
            onnx=onnx,
        )
    except BundleError as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"wrote {bundle.name} version {bundle.version} to {bundle.path}")
    if bundle.onnx is not None:
        click.echo(f"with an ONNX model ({bundle.onnx.input_dtype} input), checked on the sample")
    for warning in bundle.warnings:
        click.echo(f"warning: {warning}")
    if bundle.manifest.trusted_types:
        click.echo("the server will load these types beyond skops' defaults; review them:")
        for trusted in bundle.manifest.trusted_types:
            click.echo(f"  {trusted}")


@main.command("models", with_appcontext=False)
@instance_option
def models(instance_path: Path) -> None:
    """List the bundles that would be served, and why any is refused."""
    app = _configured(instance_path)
    models_dir = config.models_dir(app)
    found = discover(models_dir, strict_sklearn_version=app.config["STRICT_SKLEARN_VERSION"])
    if not found:
        click.echo(f"no bundles under {models_dir}")
        return
    # discover sorts each model's versions lowest first: the last one is the default.
    highest = {item.name: item.version for item in found}
    for item in found:
        if item.bundle is None:
            click.echo(f"REFUSED {item.name} {item.version}: {item.error}")
            continue
        manifest = item.bundle.manifest
        default = " (default)" if highest[item.name] == item.version else ""
        click.echo(
            f"serve   {item.name} {item.version}{default}: {manifest.estimator}, "
            f"{manifest.task}, {len(manifest.inputs)} features"
        )
        for warning in item.bundle.warnings:
            click.echo(f"        warning: {warning}")
    if any(item.bundle is None for item in found):
        raise click.ClickException("some bundles are refused; the server will not start")


def read_sample(path: Path) -> tuple[list[str], np.ndarray]:
    """Read a CSV with a header row into feature names and rows ``(n_samples, n_features)``.

    :raises click.ClickException: no header, ragged or non-numeric rows.
    """
    # utf-8-sig: spreadsheet programs start "CSV UTF-8" files with a byte-order mark.
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        names = next(reader, None)
        if not names:
            raise click.ClickException(f"{path}: empty; expected a header row of feature names")
        rows = []
        for line, row in enumerate(reader, start=2):
            if len(row) != len(names):
                raise click.ClickException(
                    f"{path}:{line}: {len(row)} values for {len(names)} columns"
                )
            try:
                rows.append([float(value) for value in row])
            except ValueError as error:
                raise click.ClickException(f"{path}:{line}: {error}") from None
    return names, np.array(rows, dtype=np.float64)
