"""Model bundles on disk: write, verify and load ``<name>/<version>/{model.joblib, model.json}``."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import io
import json
import logging
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import sklearn
from sklearn.base import is_classifier
from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import check_is_fitted

from inference_app.core import compiled
from inference_app.core.compiled import Conversion
from inference_app.core.errors import BundleError
from inference_app.core.features import (
    HISTOGRAM_BINS,
    LAYOUTS,
    REFERENCE_ROWS,
    Description,
    Feature,
    allows_nan,
    describe,
)

__all__ = ["HISTOGRAM_BINS", "REFERENCE_ROWS", "Bundle", "Feature", "Manifest"]

logger = logging.getLogger(__name__)

MANIFEST_FILE = "model.json"
JOBLIB_FILE = "model.joblib"
SKOPS_FILE = "model.skops"
ONNX_FILE = "model.onnx"
#: The estimator file of each bundle format. skops files load only reviewed types.
FORMAT_FILES = {"joblib": JOBLIB_FILE, "skops": SKOPS_FILE}
#: The prediction methods the server exposes, in the order it lists them.
METHODS = ("predict", "predict_proba", "decision_function")
#: Names and versions are single path segments: no separators, no leading dot.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


@dataclass(frozen=True)
class Manifest:
    """What ``model.json`` says of a bundle (README, "Serve your own model")."""

    name: str
    version: str
    task: str
    inputs: tuple[Feature, ...]
    methods: tuple[str, ...]
    estimator: str
    format: str = "joblib"
    file: str = JOBLIB_FILE
    sha256: str | None = None
    classes: tuple[Any, ...] | None = None
    sklearn_version: str | None = None
    created: str | None = None
    allow_nan: bool = False
    reference: Mapping[str, Any] = field(default_factory=dict)
    trusted_types: tuple[str, ...] = ()
    #: The checked ONNX conversion, if any: ``file``, ``sha256``, ``input_dtype``, ``outputs``,
    #: and for typed layouts ``inputs`` (ONNX input name to numpy dtype) and ``layout``.
    onnx: Mapping[str, Any] | None = None
    #: How the estimator takes rows: ``matrix`` (float64 array), ``frame`` (a pandas
    #: DataFrame with the training dtypes) or ``column`` (a 1-D array of one feature).
    layout: str = "matrix"

    @property
    def feature_names(self) -> list[str]:
        """Return the input names in the estimator's column order."""
        return [feature.name for feature in self.inputs]

    @property
    def reference_rows(self) -> list[list[Any]]:
        """Return a few training rows, shape ``(n_rows, n_features)``, for warm-up and examples."""
        return list(self.reference.get("rows", []))

    def to_dict(self) -> dict[str, Any]:
        """Return the manifest as JSON-native values."""
        data = dataclasses.asdict(self)
        data["inputs"] = [
            {
                **dataclasses.asdict(feature),
                "categories": None if feature.categories is None else list(feature.categories),
            }
            for feature in self.inputs
        ]
        data["methods"] = list(self.methods)
        data["classes"] = None if self.classes is None else list(self.classes)
        data["reference"] = dict(self.reference)
        data["trusted_types"] = list(self.trusted_types)
        data["onnx"] = None if self.onnx is None else dict(self.onnx)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Manifest:
        """Build a manifest from parsed ``model.json``.

        :raises BundleError: a field is missing or has the wrong type.
        """
        try:
            allow_nan = bool(data.get("allow_nan", False))
            inputs = tuple(
                Feature(
                    **{
                        "nullable": allow_nan,  # bundles written before per-feature types
                        **feature,
                        "categories": None
                        if feature.get("categories") is None
                        else tuple(feature["categories"]),
                    }
                )
                for feature in data["inputs"]
            )
            classes = data.get("classes")
            manifest = cls(
                name=str(data["name"]),
                version=str(data["version"]),
                task=str(data["task"]),
                inputs=inputs,
                methods=tuple(data["methods"]),
                estimator=str(data["estimator"]),
                format=str(data.get("format", "joblib")),
                file=str(data.get("file", JOBLIB_FILE)),
                sha256=data.get("sha256"),
                classes=None if classes is None else tuple(classes),
                sklearn_version=data.get("sklearn_version"),
                created=data.get("created"),
                allow_nan=allow_nan,
                reference=dict(data.get("reference") or {}),
                trusted_types=tuple(map(str, data.get("trusted_types") or ())),
                onnx=data.get("onnx"),
                layout=str(data.get("layout", "matrix")),
            )
        except (KeyError, TypeError) as error:
            raise BundleError(f"{MANIFEST_FILE} lacks or mistypes a field: {error}") from None
        except BundleError as error:
            raise BundleError(f"{MANIFEST_FILE}: {error}") from None
        if manifest.layout not in LAYOUTS:
            raise BundleError(
                f"{MANIFEST_FILE}: layout {manifest.layout!r} is not one of {LAYOUTS}"
            )
        unknown = set(manifest.methods) - set(METHODS)
        if unknown:
            raise BundleError(f"{MANIFEST_FILE}: unknown methods {sorted(unknown)}")
        return manifest


@dataclass(frozen=True)
class Bundle:
    """A loaded, verified model: its manifest, the fitted estimator and where it came from.

    :param onnx: the checked ONNX conversion, when the bundle has one (sessions are made
        per process by the runtime).
    """

    manifest: Manifest
    estimator: Any
    path: Path
    warnings: tuple[str, ...] = ()
    onnx: Conversion | None = None

    @property
    def name(self) -> str:
        """Return the model name."""
        return self.manifest.name

    @property
    def version(self) -> str:
        """Return the version (the directory name)."""
        return self.manifest.version


def check_name(kind: str, value: str) -> str:
    """Return ``value`` if it is a safe model name or version (one path segment).

    :raises BundleError: ``value`` could escape the models folder or is not a plain name.
    """
    if not NAME_PATTERN.fullmatch(value):
        raise BundleError(
            f"{kind} {value!r} is not allowed: use 1 to 128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return value


def sha256_of(data: bytes) -> str:
    """Return the hex SHA-256 digest of ``data``."""
    return hashlib.sha256(data).hexdigest()


def write_bundle(
    estimator: Any,
    sample: Any,
    models_dir: str | os.PathLike[str],
    name: str,
    version: str,
    *,
    feature_names: Sequence[str] | None = None,
    overwrite: bool = False,
    format: str = "joblib",
    onnx: bool = False,
) -> Bundle:
    """Write a bundle from a fitted estimator and a sample of its training data.

    The manifest records the file's SHA-256, the task, each input's name, datatype and
    observed range, the classes, the scikit-learn version, the creation time (UTC,
    ISO 8601), a few reference rows and a histogram of each feature over the sample
    (``numpy.histogram`` with :data:`HISTOGRAM_BINS` bins) for drift monitoring.

    :param estimator: a fitted scikit-learn estimator or pipeline.
    :param sample: training rows, shape ``(n_samples, n_features)``: a pandas DataFrame
        (column names and dtypes are kept) or an array.
    :param models_dir: the folder holding every model, usually ``<instance>/models``.
    :param name: the model name, one path segment.
    :param version: the version, one path segment; the highest version is served by default.
    :param feature_names: the column names when ``sample`` is an array; default the
        estimator's ``feature_names_in_``, else ``x0``, ``x1``, ...
    :param overwrite: replace an existing bundle of the same name and version (its
        ``model.onnx`` is removed when the new one has none).
    :param format: ``"joblib"`` (a pickle: loading it runs code) or ``"skops"`` (loads only
        the types skops trusts plus those recorded here as reviewed, the output of
        ``skops.io.get_untrusted_types`` at packaging time, in ``trusted_types``).
    :param onnx: also store a conversion to ONNX (``model.onnx``), kept only if its outputs
        on the sample match scikit-learn's (:mod:`inference_app.core.compiled`); when it
        cannot be made or differs, whatever the reason, the bundle is still written, without
        it, and its warnings say why in one line. ``inference-app package`` and ``init-demo``
        pass ``True`` unless told ``--no-onnx``.
    :returns: the bundle as the server will load it.
    :raises BundleError: a bad name or version, an estimator without ``predict`` or not
        fitted, a sample that does not fit it, a non-numeric feature, or an existing bundle
        without ``overwrite``.
    """
    check_name("model name", name)
    check_name("version", version)
    if format not in FORMAT_FILES:
        raise BundleError(f"format {format!r} is not one of {', '.join(FORMAT_FILES)}")
    if not hasattr(estimator, "predict"):
        raise BundleError(f"a {type(estimator).__name__} has no predict method to serve")
    try:
        check_is_fitted(estimator)
    except NotFittedError as error:
        raise BundleError(f"the estimator is not fitted: {error}") from None
    target = Path(models_dir) / name / version
    if (target / MANIFEST_FILE).exists() and not overwrite:
        raise BundleError(f"{target} already holds a bundle; pass overwrite to replace it")
    description = describe(estimator, sample, feature_names)
    trusted: tuple[str, ...] = ()
    if format == "skops":
        from skops import io as skops_io  # imports most of scikit-learn: only when used

        data = skops_io.dumps(estimator)
        trusted = tuple(skops_io.get_untrusted_types(data=data))
    else:
        payload = io.BytesIO()
        joblib.dump(estimator, payload)
        data = payload.getvalue()
    conversion: Conversion | None = None
    notes: tuple[str, ...] = ()
    if onnx:
        conversion, notes = _convert(estimator, description, name, version)
    manifest = Manifest(
        name=name,
        version=version,
        inputs=description.inputs,
        layout=description.layout,
        onnx=None
        if conversion is None
        else {
            "file": ONNX_FILE,
            "sha256": sha256_of(conversion.model),
            "input_dtype": conversion.input_dtype,
            "outputs": conversion.outputs,
            "inputs": conversion.inputs,
            "layout": conversion.layout,
        },
        format=format,
        file=FORMAT_FILES[format],
        sha256=sha256_of(data),
        trusted_types=trusted,
        sklearn_version=sklearn.__version__,
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        reference=description.reference,
        **_describe_estimator(estimator),
    )
    target.mkdir(parents=True, exist_ok=True)
    _write_atomically(target / manifest.file, data)
    if conversion is not None:
        _write_atomically(target / ONNX_FILE, conversion.model)
    text = json.dumps(manifest.to_dict(), indent=2, allow_nan=False) + "\n"
    _write_atomically(target / MANIFEST_FILE, text.encode())
    if conversion is None:  # a replaced bundle's conversion, which the new manifest disowns
        (target / ONNX_FILE).unlink(missing_ok=True)
    return Bundle(
        manifest=manifest, estimator=estimator, path=target, warnings=notes, onnx=conversion
    )


def _convert(
    estimator: Any, description: Description, name: str, version: str
) -> tuple[Conversion | None, tuple[str, ...]]:
    """Return the checked ONNX conversion of ``estimator``, or ``None`` and one line saying
    why there is none.

    Whatever goes wrong (skl2onnx refuses the estimator, onnxruntime refuses the model or
    fails on the sample, the outputs differ), the bundle is still written: scikit-learn
    serves it.
    """
    try:
        conversion = compiled.convert(
            estimator,
            description.data,
            _describe_estimator(estimator)["methods"],
            layout=description.layout,
        )
    except BundleError as error:
        reason = str(error)
    except Exception as error:  # skl2onnx and onnxruntime fail in many ways; none stops packaging
        reason = f"the conversion failed: {type(error).__name__}: {error}"
    else:
        return conversion, ()
    note = f"no ONNX model for {name} {version}, scikit-learn serves it: {_one_line(reason)}"
    logger.info(note)  # the caller shows the bundle's warnings (``package`` prints them)
    return None, (note,)


def _one_line(message: str) -> str:
    """Return ``message``'s lines, stripped, joined with ``"; "`` (skl2onnx's errors span
    several)."""
    return "; ".join(line.strip() for line in message.splitlines() if line.strip())


def load_bundle(path: str | os.PathLike[str], *, strict_sklearn_version: bool = False) -> Bundle:
    """Load the bundle in a version folder ``<models>/<name>/<version>``.

    With a manifest, the estimator file's SHA-256 is checked against it before it is read,
    and the estimator is checked against the manifest (``n_features_in_``, ``classes_``). A
    skops file loads only the types skops trusts and those the manifest lists as reviewed.
    A bare ``model.joblib`` (or ``model.skops``) is loaded with a warning, its inputs
    inferred from ``feature_names_in_`` or ``n_features_in_``.

    :param strict_sklearn_version: refuse a bundle saved with another scikit-learn version
        (by default it is served, with a warning in its metadata and the log).
    :raises BundleError: no estimator file, a bad manifest, a checksum mismatch (naming
        the file), a type outside the reviewed list, a loading failure, an estimator that
        contradicts its manifest, or (strict) another scikit-learn version.
    """
    folder = Path(path)
    name = check_name("model name", folder.parent.name)
    version = check_name("version", folder.name)
    manifest_path = folder / MANIFEST_FILE
    if manifest_path.is_file():
        manifest = read_manifest(manifest_path, name, version)
        data = _read_checked(folder, manifest)
        label = f"{name}/{version}/{manifest.file}"
        estimator, notes = _deserialise(label, data, manifest.format, manifest.trusted_types)
        _check_consistent(manifest, estimator, folder)
        notes += _check_sklearn_version(label, manifest.sklearn_version, strict_sklearn_version)
        return Bundle(
            manifest=manifest,
            estimator=estimator,
            path=folder,
            warnings=notes,
            onnx=_read_onnx(folder, manifest),
        )
    bare = next(
        (folder / file for file in FORMAT_FILES.values() if (folder / file).is_file()), None
    )
    if bare is None:
        raise BundleError(f"{folder}: no {MANIFEST_FILE}, no {JOBLIB_FILE} and no {SKOPS_FILE}")
    label = f"{name}/{version}/{bare.name}"
    bare_format = "skops" if bare.name == SKOPS_FILE else "joblib"
    estimator, notes = _deserialise(label, bare.read_bytes(), bare_format, ())
    manifest = _infer_manifest(estimator, name, version)
    manifest = dataclasses.replace(manifest, format=bare_format, file=bare.name)
    note = (
        f"{label}: no {MANIFEST_FILE}, so its checksum is not verified and its inputs are "
        "inferred; write a bundle with `inference-app package`"
    )
    logger.warning(note)
    return Bundle(manifest=manifest, estimator=estimator, path=folder, warnings=(note, *notes))


def _read_onnx(folder: Path, manifest: Manifest) -> Conversion | None:
    """Read and verify the bundle's ONNX model, if its manifest lists one."""
    if manifest.onnx is None:
        return None
    try:
        file, digest = str(manifest.onnx["file"]), str(manifest.onnx["sha256"])
        input_dtype, outputs = str(manifest.onnx["input_dtype"]), dict(manifest.onnx["outputs"])
        inputs = {str(k): str(v) for k, v in dict(manifest.onnx.get("inputs") or {}).items()}
        layout = str(manifest.onnx.get("layout", "matrix"))
    except (KeyError, TypeError, ValueError, AttributeError):
        raise BundleError(f"{folder}: {MANIFEST_FILE}'s `onnx` lacks a field") from None
    if file != Path(file).name or file.startswith("."):
        raise BundleError(f"{folder}: onnx file {file!r} must be a file name in the bundle")
    data = _read_checked(folder, dataclasses.replace(manifest, file=file, sha256=digest))
    return Conversion(
        model=data, input_dtype=input_dtype, outputs=outputs, inputs=inputs, layout=layout
    )


def _check_sklearn_version(label: str, saved: str | None, strict: bool) -> tuple[str, ...]:
    if saved is None or saved == sklearn.__version__:
        return ()
    note = (
        f"{label}: saved with scikit-learn {saved}, served with {sklearn.__version__}; "
        "predictions may differ: re-package it with this version"
    )
    if strict:
        raise BundleError(f"{note} (STRICT_SKLEARN_VERSION refuses it)")
    logger.warning(note)
    return (note,)


def read_manifest(path: Path, name: str, version: str, data: bytes | None = None) -> Manifest:
    """Read and check the ``model.json`` of the version folder ``<name>/<version>``.

    :param data: the file's bytes, when the caller has read them already (to hash them).
    :raises BundleError: the file cannot be read or parsed, names another model or version,
        or names a format or file the server does not load.
    """
    try:
        parsed = json.loads(path.read_bytes() if data is None else data)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BundleError(f"{path}: cannot read: {error}") from None
    if not isinstance(parsed, dict):
        raise BundleError(f"{path}: expected a JSON object")
    try:
        manifest = Manifest.from_dict(parsed)
    except BundleError as error:
        raise BundleError(f"{path.parent}: {error}") from None
    if (manifest.name, manifest.version) != (name, version):
        raise BundleError(
            f"{path}: names model {manifest.name!r} version {manifest.version!r} but lives in "
            f"{name}/{version}"
        )
    if manifest.format not in FORMAT_FILES:
        formats = " or ".join(FORMAT_FILES)
        raise BundleError(f"{path}: format {manifest.format!r} is not supported; use {formats}")
    if manifest.file != Path(manifest.file).name or manifest.file.startswith("."):
        raise BundleError(f"{path}: file {manifest.file!r} must be a file name in the bundle")
    return manifest


def _read_checked(folder: Path, manifest: Manifest) -> bytes:
    file = folder / manifest.file
    try:
        data = file.read_bytes()
    except OSError as error:
        raise BundleError(f"{file}: cannot read: {error.strerror}") from None
    digest = sha256_of(data)
    if manifest.sha256 != digest:
        raise BundleError(
            f"{file}: sha256 mismatch (manifest {manifest.sha256}, file {digest}); the file "
            "changed after it was packaged, so it is refused"
        )
    return data


def _deserialise(
    file: str, data: bytes, format: str, trusted: Sequence[str]
) -> tuple[Any, tuple[str, ...]]:
    """Load an estimator; ``file`` names it relative to the models folder in messages."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if format == "skops":
                from skops import io as skops_io

                untrusted = sorted(set(skops_io.get_untrusted_types(data=data)) - set(trusted))
                if untrusted:
                    raise BundleError(
                        f"{file}: holds types nobody reviewed when it was packaged: "
                        f"{', '.join(untrusted[:10])}; refused"
                    )
                estimator = skops_io.loads(data, trusted=list(trusted))
            else:
                estimator = joblib.load(io.BytesIO(data))
        except BundleError:
            raise
        except Exception as error:  # loading runs the file's instructions: any failure refuses
            raise BundleError(f"{file}: cannot load: {type(error).__name__}: {error}") from None
    notes = tuple(f"{file}: {warning.message}" for warning in caught)
    for note in notes:
        logger.warning(note)
    if not hasattr(estimator, "predict"):
        raise BundleError(f"{file}: holds a {type(estimator).__name__}, which has no predict")
    return estimator, notes


def _check_consistent(manifest: Manifest, estimator: Any, folder: Path) -> None:
    n_features = getattr(estimator, "n_features_in_", None)
    if n_features is not None and n_features != len(manifest.inputs):
        raise BundleError(
            f"{folder}: the estimator takes {n_features} features but {MANIFEST_FILE} lists "
            f"{len(manifest.inputs)}"
        )
    if manifest.classes is not None:
        classes = np.asarray(getattr(estimator, "classes_", [])).tolist()
        if list(manifest.classes) != classes:
            raise BundleError(
                f"{folder}: the estimator's classes {classes} differ from {MANIFEST_FILE}'s "
                f"{list(manifest.classes)}"
            )


def _infer_manifest(estimator: Any, name: str, version: str) -> Manifest:
    names = getattr(estimator, "feature_names_in_", None)
    if names is None:
        n_features = getattr(estimator, "n_features_in_", None)
        if n_features is None:
            raise BundleError(
                f"{name}/{version}: the estimator has neither feature_names_in_ nor "
                f"n_features_in_; package it with a sample to describe its inputs"
            )
        names = [f"x{index}" for index in range(n_features)]
    inputs = tuple(Feature(name=str(feature)) for feature in names)
    return Manifest(
        name=name,
        version=version,
        inputs=inputs,
        reference={"rows": [[0.0] * len(inputs)]},
        **_describe_estimator(estimator),
    )


def _describe_estimator(estimator: Any) -> dict[str, Any]:
    """Return the manifest fields read off a fitted estimator."""
    classes = tuple(np.asarray(estimator.classes_).tolist()) if is_classifier(estimator) else None
    return {
        "task": "classification" if classes is not None else "regression",
        "methods": tuple(method for method in METHODS if hasattr(estimator, method)),
        "estimator": f"{type(estimator).__module__}.{type(estimator).__qualname__}",
        "classes": classes,
        "allow_nan": allows_nan(estimator),
    }


def _write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)
