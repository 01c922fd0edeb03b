"""The registry: every bundle under ``<instance>/models``, default versions and ready state."""

from __future__ import annotations

import functools
import logging
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from inference_app.core.bundle import Bundle, check_name, load_bundle
from inference_app.core.errors import (
    BundleError,
    ModelNotFoundError,
    RefusedBundlesError,
    TrafficError,
)
from inference_app.core.traffic import Traffic, read_traffic

logger = logging.getLogger(__name__)


def version_key(version: str) -> tuple[tuple[int, str], ...]:
    """Return a sort key under which ``"10"`` follows ``"9"``, ``"1.10"`` follows ``"1.9"``
    and ``"v10"`` follows ``"v9"``: runs of ASCII digits compare as numbers."""
    return tuple(
        (int(number), "") if number else (-1, text)
        for number, text in re.findall(r"([0-9]+)|([^0-9._-]+)", version)
    )


@dataclass(frozen=True)
class Discovered:
    """One version folder found on disk: its bundle, or why it is refused."""

    name: str
    version: str
    path: Path
    bundle: Bundle | None = None
    error: str | None = None
    load_seconds: float = 0.0


@dataclass(frozen=True)
class Model:
    """All versions of one model.

    :param versions: bundles by version, lowest first.
    :param traffic: its ``traffic.json`` (canary weights, sticky header, shadow), if any.
    """

    name: str
    versions: Mapping[str, Bundle]
    traffic: Traffic | None = None

    @functools.cached_property
    def default_version(self) -> str:
        """Return the version described when a request names none: the highest, or with a
        ``traffic.json`` the one of largest weight (requests are routed by weight)."""
        if self.traffic is not None:
            return self.traffic.default_version
        return list(self.versions)[-1]

    @functools.cached_property
    def default(self) -> Bundle:
        """Return the bundle of the default version."""
        return self.versions[self.default_version]


def find_version(models_dir: str | os.PathLike[str], name: str, version: str | None = None) -> Path:
    """Return the folder of one version of a model as the server picks it, without loading
    any bundle: by default the highest version (:func:`version_key`), hidden folders left out.
    A ``traffic.json`` routes only the server's requests, not this choice.

    :raises ModelNotFoundError: no such model or version, naming those there are.
    :raises BundleError: a name or version that is not one plain path segment, or a version
        folder that resolves outside ``models_dir``.
    """
    models = Path(models_dir)
    check_name("model name", name)
    model_dir = models / name
    if not model_dir.is_dir():
        known = sorted(_folders(models)) if models.is_dir() else []
        raise ModelNotFoundError(
            f"no model {name!r} in {models}; the models there are: {', '.join(known) or 'none'}"
        )
    versions = sorted(_folders(model_dir), key=version_key)
    if version is None:
        if not versions:
            raise ModelNotFoundError(f"model {name!r} has no version folders in {model_dir}")
        version = versions[-1]
    check_name("version", version)
    if version not in versions:
        raise ModelNotFoundError(
            f"model {name!r} has no version {version!r}; it has {', '.join(versions) or 'none'}"
        )
    folder = model_dir / version
    if not folder.resolve().is_relative_to(models.resolve()):
        raise BundleError(f"{folder}: resolves outside {models}; refused")
    return folder


def _folders(path: Path) -> list[str]:
    """Return the names of the folders in ``path`` that are not hidden."""
    return [p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")]


def discover(
    models_dir: str | os.PathLike[str], *, strict_sklearn_version: bool = False
) -> list[Discovered]:
    """Load every ``<models_dir>/<name>/<version>`` folder, sorted by name then version.

    A folder that fails to load is returned with its error instead of raising; hidden
    entries and files are skipped, and a folder that resolves outside ``models_dir`` (a
    symbolic link) is refused. A missing ``models_dir`` holds no models.
    """
    root = Path(models_dir)
    if not root.is_dir():
        return []
    real_root = root.resolve()
    found = []
    for model_dir in sorted(root.iterdir()):
        if not model_dir.is_dir() or model_dir.name.startswith("."):
            continue
        versions = [p for p in model_dir.iterdir() if p.is_dir() and not p.name.startswith(".")]
        for version_dir in sorted(versions, key=lambda p: version_key(p.name)):
            started = time.perf_counter()
            try:
                if not version_dir.resolve().is_relative_to(real_root):
                    raise BundleError(f"{version_dir}: resolves outside {root}; refused")
                bundle = load_bundle(version_dir, strict_sklearn_version=strict_sklearn_version)
            except BundleError as error:
                found.append(
                    Discovered(model_dir.name, version_dir.name, version_dir, error=str(error))
                )
                continue
            seconds = time.perf_counter() - started
            found.append(
                Discovered(model_dir.name, version_dir.name, version_dir, bundle, None, seconds)
            )
    return found


class Registry:
    """The models this server answers for, and which of them are ready in this process.

    The set of models is replaced whole (:meth:`load`), never edited in place, so a reader
    sees either the old set or the new one.

    :param models_dir: the folder of model folders, usually ``<instance>/models``.
    :param strict_sklearn_version: refuse bundles saved with another scikit-learn version.
    """

    def __init__(
        self, models_dir: str | os.PathLike[str], *, strict_sklearn_version: bool = False
    ) -> None:
        self.models_dir = Path(models_dir)
        self.strict_sklearn_version = strict_sklearn_version
        self._models: Mapping[str, Model] = MappingProxyType({})
        self._ready: frozenset[tuple[str, str]] = frozenset()
        #: Seconds each ``(name, version)`` took to load, read and verify included.
        self.load_seconds: Mapping[tuple[str, str], float] = MappingProxyType({})
        #: Why the last failed load refused each model's bundles, by model name.
        self.load_errors: Mapping[str, list[str]] = MappingProxyType({})

    def load(self) -> None:
        """Load every bundle and each model's ``traffic.json``; on any failure keep the
        current models and raise.

        A failure is also kept in :attr:`load_errors`, by model, until the next good load.

        :raises RefusedBundlesError: listing every refused folder and why.
        :raises TrafficError: listing every refused ``traffic.json`` and why.
        """
        found = discover(self.models_dir, strict_sklearn_version=self.strict_sklearn_version)
        refused = [item for item in found if item.error]
        if refused:
            errors: dict[str, list[str]] = {}
            for item in refused:
                # Shown by the API: name files relative to the models folder, not the host's.
                reason = str(item.error).replace(f"{self.models_dir}{os.sep}", "")
                errors.setdefault(item.name, []).append(f"version {item.version}: {reason}")
            self.load_errors = MappingProxyType(errors)
            lines = [f"{item.path}: {item.error}" for item in refused]
            raise RefusedBundlesError("refused model bundles:\n  " + "\n  ".join(lines), errors)
        grouped: dict[str, dict[str, Bundle]] = {}
        for item in found:
            if item.bundle is None:  # refused items raised above
                continue
            grouped.setdefault(item.name, {})[item.version] = item.bundle
        traffic: dict[str, Traffic] = {}
        refusals: list[TrafficError] = []
        for name, versions in grouped.items():
            try:
                found_traffic = read_traffic(self.models_dir / name, list(versions))
            except TrafficError as error:
                refusals.append(error)
                continue
            if found_traffic is not None:
                traffic[name] = found_traffic
        if refusals:
            by_model = {name: why for error in refusals for name, why in error.by_model.items()}
            self.load_errors = MappingProxyType(by_model)
            raise TrafficError(
                "refused traffic.json:\n  " + "\n  ".join(map(str, refusals)), by_model
            )
        for item in found:
            logger.info(
                "loaded model %s version %s from %s in %.3f s",
                item.name,
                item.version,
                item.path,
                item.load_seconds,
            )
        for name, routing in traffic.items():
            logger.info("model %s routes unversioned requests by %s", name, routing.describe())
        self._models = MappingProxyType(
            {
                name: Model(name, MappingProxyType(versions), traffic.get(name))
                for name, versions in grouped.items()
            }
        )
        self._ready = frozenset()
        self.load_seconds = MappingProxyType(
            {(item.name, item.version): item.load_seconds for item in found}
        )
        self.load_errors = MappingProxyType({})

    @property
    def models(self) -> Mapping[str, Model]:
        """Return the models by name, sorted by name."""
        return self._models

    def bundles(self) -> list[Bundle]:
        """Return every loaded bundle, by name then version."""
        return [bundle for model in self._models.values() for bundle in model.versions.values()]

    def model(self, name: str) -> Model:
        """Return the model called ``name``.

        :raises ModelNotFoundError: no such model, naming the ones there are.
        """
        try:
            return self._models[name]
        except KeyError:
            known = ", ".join(self._models) or "none"
            raise ModelNotFoundError(
                f"no model {name[:100]!r}; the models served are: {known}"
            ) from None

    def get(self, name: str, version: str | None = None) -> Bundle:
        """Return one version of a model, by default :attr:`Model.default_version`.

        :raises ModelNotFoundError: no such model or version, naming the ones there are.
        """
        model = self.model(name)
        if version is None:
            return model.default
        try:
            return model.versions[version]
        except KeyError:
            raise ModelNotFoundError(
                f"model {name!r} has no version {version[:100]!r}; it has "
                f"{', '.join(model.versions)}"
            ) from None

    def route(self, name: str, key: str | None = None) -> Bundle:
        """Return the version that answers a request for ``name`` naming no version: by the
        model's ``traffic.json`` (:meth:`Traffic.pick`), else its default.

        :param key: the value of the traffic's sticky header, if the request carries it.
        :raises ModelNotFoundError: no such model, naming the ones there are.
        """
        model = self._models.get(name) or self.model(name)  # the latter raises, naming them
        if model.traffic is None:
            return model.default
        return model.versions[model.traffic.pick(key)]

    def traffic(self, name: str) -> Traffic | None:
        """Return the ``traffic.json`` in force for model ``name``, if it has one."""
        model = self._models.get(name)
        return None if model is None else model.traffic

    def mark_ready(self, bundle: Bundle) -> None:
        """Record that ``bundle`` has been warmed up in this process."""
        self._ready = self._ready | {(bundle.name, bundle.version)}

    def is_ready(self, bundle: Bundle) -> bool:
        """Return whether ``bundle`` has been warmed up in this process."""
        return (bundle.name, bundle.version) in self._ready

    def model_ready(self, name: str) -> bool:
        """Return whether every version of model ``name`` is warmed up."""
        return all(self.is_ready(bundle) for bundle in self.model(name).versions.values())

    def readiness(self) -> tuple[bool, str]:
        """Return whether every model is ready, and a sentence saying why not."""
        if not self._models:
            return False, "no models are loaded: write bundles with `inference-app package`"
        waiting = [name for name in self._models if not self.model_ready(name)]
        if waiting:
            return False, f"models not warmed up yet: {', '.join(waiting)}"
        return True, f"{len(self._models)} models ready"
