"""Canary and shadow versions: a model's ``traffic.json``, the version each request goes to,
and how a shadow version's answer is compared with the served one.

``<models>/<name>/traffic.json`` (read with the bundles, at start and on every reload)::

    {"weights": {"1": 90, "2": 10}, "sticky": "X-User-ID", "shadow": "3", "shadow_sample": 0.25}

- ``weights``: percentages of the requests that name no version, by version; non-negative
  numbers summing to 100. Without it, every such request goes to the highest version that is
  not the shadow.
- ``sticky``: a request header; a request carrying it is routed by a stable hash of its value
  (BLAKE2b, RFC 7693), so one value always reaches one version, in every worker and across
  restarts. Without the header, or without ``sticky``, a request is routed at random by weight.
- ``shadow``: a version that also answers a sampled share of the routed requests; its answer
  is compared with the served one and counted, never returned.
- ``shadow_sample``: that share, 0 to 1 (default 1: every routed request).
- ``shadow_tolerance``: how far apart two numeric predictions (a regressor's) may be and still
  agree, relative to the larger of 1 and their magnitude (default 1e-6).

A request that names a version is answered by that version alone: no routing, no shadow.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import random
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from inference_app.core.errors import TrafficError

#: The file, in a model's folder next to its version folders, that routes its traffic.
FILE_NAME = "traffic.json"
#: The keys a traffic file may hold.
KEYS = ("weights", "sticky", "shadow", "shadow_sample", "shadow_tolerance")
#: A header field name: an RFC 9110 token (section 5.6.2), at most 64 characters here.
HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,64}")
#: The outcomes of a shadow comparison, the values of the metrics' ``outcome`` label.
OUTCOMES = ("agree", "disagree", "error")
#: The most bytes a traffic file may have.
MAX_BYTES = 64 * 1024


def stable_point(key: str) -> float:
    """Return where ``key`` falls in ``[0, 1)``: the first 8 bytes of its BLAKE2b digest
    (RFC 7693) as a big-endian integer over 2**64. The same key gives the same point in every
    process and release (unlike :func:`hash`, which is salted per process)."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


@dataclass(frozen=True)
class Traffic:
    """How one model's requests that name no version are routed, and its shadow.

    :param model: the model's name.
    :param weights: percent of requests by version, in version order (zeros kept).
    :param sticky: the request header whose value routes a request, or ``None``.
    :param shadow: the version that also answers sampled requests, or ``None``.
    :param shadow_sample: the share of routed requests the shadow answers too, 0 to 1.
    :param shadow_tolerance: see :func:`agrees`.
    """

    model: str
    weights: Mapping[str, float]
    sticky: str | None = None
    shadow: str | None = None
    shadow_sample: float = 1.0
    shadow_tolerance: float = 1e-6
    #: The versions with a positive weight, in version order, and the upper bound of each
    #: one's share of ``[0, 1)``: a newer version takes the top of the range, so raising its
    #: weight moves sticky keys only towards it.
    versions: tuple[str, ...] = field(init=False, repr=False, compare=False)
    bounds: tuple[float, ...] = field(init=False, repr=False, compare=False)
    #: The WSGI environ key of the sticky header (``HTTP_X_USER_ID``), or ``None``.
    environ_key: str | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        served = [(version, w) for version, w in self.weights.items() if w > 0]
        total = sum(w for _, w in served)
        bounds, running = [], 0.0
        for _, weight in served:
            running += weight
            bounds.append(running / total)
        bounds[-1] = 1.0  # no point of [0, 1) may fall past the last version
        object.__setattr__(self, "versions", tuple(version for version, _ in served))
        object.__setattr__(self, "bounds", tuple(bounds))
        environ_key = None
        if self.sticky is not None:
            environ_key = "HTTP_" + self.sticky.upper().replace("-", "_")
        object.__setattr__(self, "environ_key", environ_key)

    @property
    def default_version(self) -> str:
        """Return the version with the largest weight (of equal ones, the highest): the one
        a model's metadata describes when no version is named."""
        return max(reversed(list(self.weights)), key=self.weights.__getitem__)

    def pick(self, key: str | None = None) -> str:
        """Return the version that answers a request naming none.

        :param key: the sticky header's value, if the request has one: the version is then
            the one whose share holds :func:`stable_point` of it. Otherwise the point is
            drawn at random (the ``random`` module, reseeded in each forked worker).
        """
        if len(self.versions) == 1:
            return self.versions[0]
        if key is not None and self.sticky is not None:
            point = stable_point(key)
        else:
            point = random.random()  # nosec B311 - traffic shares, not secrets
        return self.versions[bisect.bisect_right(self.bounds, point)]

    def shadow_due(self) -> bool:
        """Return whether the shadow answers this request too (drawn at ``shadow_sample``)."""
        if self.shadow is None or self.shadow_sample <= 0:
            return False
        return self.shadow_sample >= 1 or random.random() < self.shadow_sample  # nosec B311

    def describe(self) -> dict[str, Any]:
        """Return the settings in force, in the file's own shape."""
        described: dict[str, Any] = {"weights": dict(self.weights)}
        if self.sticky is not None:
            described["sticky"] = self.sticky
        if self.shadow is not None:
            described["shadow"] = self.shadow
            described["shadow_sample"] = self.shadow_sample
            described["shadow_tolerance"] = self.shadow_tolerance
        return described


def read_traffic(model_dir: Path, versions: Collection[str]) -> Traffic | None:
    """Read ``<model_dir>/traffic.json`` against the versions loaded, or return ``None``
    when there is none.

    :param versions: the model's versions, lowest first (the registry's order).
    :raises TrafficError: the file cannot be read, is not JSON, holds an unknown key, names
        a version that is not loaded, has weights that are negative or do not sum to 100, a
        shadow that also has weight, or a sample outside 0 to 1; the message says which.
    """
    path = model_dir / FILE_NAME
    name = model_dir.name
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as error:
        raise _refused(path, name, f"cannot be read: {error.strerror or error}") from None
    if len(raw) > MAX_BYTES:
        raise _refused(path, name, f"is larger than {MAX_BYTES} bytes")
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise _refused(path, name, f"is not valid JSON: {error}") from None
    try:
        return parse_traffic(name, data, versions)
    except ValueError as error:
        raise _refused(path, name, str(error)) from None


def _refused(path: Path, model: str, why: str) -> TrafficError:
    return TrafficError(f"{path}: {why}", {model: [f"{FILE_NAME}: {why}"]})


def parse_traffic(model: str, data: Any, versions: Collection[str]) -> Traffic:
    """Check a parsed ``traffic.json`` of ``model`` against its loaded ``versions`` (lowest
    first).

    :raises ValueError: one sentence naming the key at fault and what to write instead.
    """
    if not isinstance(data, dict):
        raise ValueError('must be a JSON object such as {"weights": {"1": 90, "2": 10}}')
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r}; the keys are {', '.join(KEYS)}")
    known = ", ".join(versions) or "none"
    shadow = data.get("shadow")
    if shadow is not None:
        if not isinstance(shadow, str):
            raise ValueError(f'"shadow" must be a version in quotes, such as "{shadow}"')
        if shadow not in versions:
            raise ValueError(f"shadow: model {model!r} has no version {shadow!r}; it has {known}")
    for key in ("shadow_sample", "shadow_tolerance"):
        if key in data and shadow is None:
            raise ValueError(f'"{key}" needs a "shadow" version')
    sample = _number(data, "shadow_sample", 1.0)
    if not 0 <= sample <= 1:
        raise ValueError(f'"shadow_sample" must lie between 0 and 1; got {sample}')
    tolerance = _number(data, "shadow_tolerance", 1e-6)
    if tolerance < 0:
        raise ValueError(f'"shadow_tolerance" must not be negative; got {tolerance}')
    weights = _weights(model, data, versions, shadow)
    sticky = data.get("sticky")
    if sticky is not None and not (isinstance(sticky, str) and HEADER_NAME.fullmatch(sticky)):
        raise ValueError(
            f'"sticky" must be a request header name such as "X-User-ID"; got {sticky!r}'
        )
    return Traffic(
        model=model,
        weights=weights,
        sticky=sticky,
        shadow=shadow,
        shadow_sample=sample,
        shadow_tolerance=tolerance,
    )


def _number(data: Mapping[str, Any], key: str, default: float) -> float:
    value = data.get(key, default)
    if type(value) not in (int, float) or not math.isfinite(value):
        raise ValueError(f'"{key}" must be a number; got {json.dumps(value)}')
    return float(value)


def _weights(
    model: str, data: Mapping[str, Any], versions: Collection[str], shadow: str | None
) -> Mapping[str, float]:
    known = ", ".join(versions) or "none"
    given = data.get("weights")
    if given is None:
        served = [version for version in versions if version != shadow]
        if not served:
            raise ValueError(f"model {model!r} has no version to serve besides the shadow")
        return MappingProxyType({served[-1]: 100.0})
    if not isinstance(given, dict) or not given:
        raise ValueError('"weights" must be an object of percentages such as {"1": 90, "2": 10}')
    for version in given:
        if version not in versions:
            raise ValueError(f"weights: model {model!r} has no version {version!r}; it has {known}")
    weights: dict[str, float] = {}
    for version in (version for version in versions if version in given):
        weight = given[version]
        if type(weight) not in (int, float) or not math.isfinite(weight):
            raise ValueError(f"weights: version {version!r}: expected a number; got {weight!r}")
        if weight < 0:
            raise ValueError(f"weights: version {version!r}: a weight must not be negative")
        if version == shadow and weight > 0:
            raise ValueError(
                f"shadow version {version!r} also has weight {weight}: a shadow answers no "
                "request; give it weight 0 or shadow another version"
            )
        weights[version] = float(weight)
    total = sum(weights.values())
    if abs(total - 100) > 1e-6:
        raise ValueError(f"weights sum to {total:g}; they must sum to 100 (percent)")
    return MappingProxyType(weights)


def decisions(method: str, values: Sequence[Any], classes: Sequence[Any] | None) -> list[Any]:
    """Return, per row, what a caller acts on in ``method``'s outputs: ``predict``'s value;
    the most likely class (the arg max) of ``predict_proba`` and of a multiclass
    ``decision_function``; for a binary ``decision_function`` (one score per row), the
    second class if the score is positive, else the first (scikit-learn's rule).

    :param values: ``(n_samples,)`` or ``(n_samples, n_classes)``, JSON-native.
    :param classes: the column labels; ``None``: column indices are returned.
    """
    if method == "predict":
        return list(values)
    labels = list(classes) if classes is not None else None
    found = []
    for row in values:
        if isinstance(row, list):
            index = max(range(len(row)), key=row.__getitem__)
        else:
            index = int(row > 0)
        found.append(labels[index] if labels is not None and index < len(labels) else index)
    return found


def agrees(served: Any, shadow: Any, tolerance: float) -> bool:
    """Return whether two rows' decisions agree: equal labels, or numbers (a regressor's
    predictions) within ``tolerance`` times the larger of 1 and their magnitudes."""
    numbers = (int, float)
    if (
        type(served) in numbers
        and type(shadow) in numbers
        and not isinstance(served, bool)
        and not isinstance(shadow, bool)
    ):
        scale = max(1.0, abs(served), abs(shadow))
        return bool(abs(served - shadow) <= tolerance * scale)
    return bool(served == shadow)


@dataclass(frozen=True)
class ShadowOutcome:
    """What the shadow version made of one request.

    :param version: the shadow version.
    :param served_version: the version whose answer was returned.
    :param outcome: ``agree`` (every row's decision equal), ``disagree`` or ``error`` (the
        shadow failed; the answer was served all the same).
    :param rows: the request's rows.
    :param disagreeing: the rows whose decisions differ (0 on error).
    :param seconds: the shadow's time, decoding included.
    """

    model: str
    version: str
    served_version: str
    outcome: str
    rows: int
    disagreeing: int
    seconds: float
