"""Loaders of two real demo datasets: Palmer penguins (tabular) and VADER's rated tweets (text)."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess  # nosec B404
import sys
import tarfile
import tempfile
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Final

import numpy as np
import palmerpenguins
import pandas as pd

from inference_app.core.errors import BundleError

__all__ = [
    "PENGUIN_FEATURES",
    "TWEETS_SOURCE",
    "DemoDataError",
    "load_penguins",
    "load_tweets",
]

#: The penguin features :func:`load_penguins` returns, in this order.
PENGUIN_FEATURES: Final = (
    "island",
    "bill_length_mm",
    "bill_depth_mm",
    "flipper_length_mm",
    "body_mass_g",
    "sex",
)
_PENGUIN_TEXT_COLUMNS: Final = ("island", "sex")

#: The vaderSentiment 3.3.2 source distribution on PyPI, and its sha256.
SDIST_NAME: Final = "vaderSentiment-3.3.2.tar.gz"
SDIST_SHA256: Final = "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9"
#: The archive inside the sdist that holds the ground truth, and the tweets file inside it.
_INNER_ARCHIVE: Final = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"
_TWEETS_MEMBER: Final = "hutto_ICWSM_2014/tweets_GroundTruth.txt"
#: The tweets file, as extracted and cached in ``cache_dir``, and its sha256.
TWEETS_FILE: Final = "vaderSentiment-3.3.2-tweets_GroundTruth.txt"
TWEETS_SHA256: Final = "dfbe7102e2f92579ed8b19df9a3822491880697c67adf712fb66e520cc05102f"
#: How long ``pip download`` may take, in seconds.
PIP_TIMEOUT: Final = 300.0
#: Members larger than this are refused (the inner archive is 2.4 MB, the tweets 390 kB).
_MAX_MEMBER_BYTES: Final = 16 * 1024 * 1024

_REQUIREMENT: Final = "vaderSentiment==3.3.2"
#: The command that saves the sdist into the current folder, for error messages.
_MANUAL_DOWNLOAD: Final = f"python -m pip download --no-deps --no-binary :all: {_REQUIREMENT}"

#: Where the tweets of :func:`load_tweets` come from, for the docs.
TWEETS_SOURCE: Final[Mapping[str, str]] = MappingProxyType(
    {
        "package": "vaderSentiment",
        "version": "3.3.2",
        "url": "https://pypi.org/project/vaderSentiment/3.3.2/",
        "sdist": SDIST_NAME,
        "sdist_sha256": SDIST_SHA256,
        "member": f"{_INNER_ARCHIVE}!{_TWEETS_MEMBER}",
        "member_sha256": TWEETS_SHA256,
        "licence": "MIT",
        "citation": (
            "Hutto, C.J. & Gilbert, E.E. (2014). VADER: A Parsimonious Rule-based Model for "
            "Sentiment Analysis of Social Media Text. ICWSM-14."
        ),
    }
)


class DemoDataError(BundleError):
    """A demo dataset cannot be fetched, or its files do not have the expected checksum."""


def load_penguins() -> tuple[pd.DataFrame, pd.Series]:
    """Return the Palmer penguins (CC0, from the ``palmerpenguins`` package) and their species.

    Missing values are kept as they are; rows whose species is missing would be dropped
    (there are none), and the index is ``0..n-1``.

    :returns: ``(features, species)``:

        - ``features``, a DataFrame of shape ``(344, 6)``, columns :data:`PENGUIN_FEATURES`:
          ``island`` and ``sex`` of ``object`` dtype holding Python ``str``, with
          ``float("nan")`` where missing (11 ``sex``); ``bill_length_mm``,
          ``bill_depth_mm``, ``flipper_length_mm`` and ``body_mass_g`` of ``float64``
          dtype, with NaN where missing (2 rows each);
        - ``species``, a Series of shape ``(344,)``, ``object`` dtype, Python ``str``:
          ``"Adelie"`` (152), ``"Gentoo"`` (124) and ``"Chinstrap"`` (68).
    :raises KeyError: the installed ``palmerpenguins`` lacks one of the columns.
    """
    raw = palmerpenguins.load_penguins()
    raw = raw[raw["species"].notna()].reset_index(drop=True)
    features = pd.DataFrame(
        {
            name: _as_strings(raw[name])
            if name in _PENGUIN_TEXT_COLUMNS
            else raw[name].astype(np.float64)
            for name in PENGUIN_FEATURES
        }
    )
    return features, _as_strings(raw["species"])


def load_tweets(cache_dir: str | os.PathLike[str]) -> tuple[pd.DataFrame, pd.Series]:
    """Return the human-rated tweets of VADER's ground truth (MIT) and their sentiment.

    The tweets file comes from the vaderSentiment 3.3.2 source distribution, see
    :data:`TWEETS_SOURCE`. The first call looks for ``vaderSentiment-3.3.2.tar.gz`` in
    ``cache_dir``, or else downloads it there with ``pip download`` from the package index;
    then it extracts the tweets file into ``cache_dir``. Later calls read only that file.
    Every file is checked against its sha256 before it is used.

    :param cache_dir: where the sdist and the tweets file are kept; created if missing.
    :returns: ``(rows, sentiment)``, index ``0..n-1``, neutral tweets (mean rating 0) left out:

        - ``rows``, a DataFrame of shape ``(4196, 1)``: column ``text``, ``object`` dtype,
          Python ``str``;
        - ``sentiment``, a Series of shape ``(4196,)``, ``object`` dtype, Python ``str``:
          ``"positive"`` (mean rating above 0, 2897) or ``"negative"`` (below 0, 1299).
    :raises DemoDataError: the sdist cannot be downloaded (pip fails, no access to the
        package index, timeout), or the sdist or the cached tweets file has the wrong sha256;
        the message says what to do.
    :raises OSError: ``cache_dir`` cannot be created, read or written.
    """
    cache = Path(cache_dir)
    cached = cache / TWEETS_FILE
    if cached.is_file():
        data = cached.read_bytes()
        _check_sha256(
            data,
            TWEETS_SHA256,
            f"The cached tweets file {cached}",
            "delete it and call load_tweets again",
        )
    else:
        cache.mkdir(parents=True, exist_ok=True)
        data = _read_member(_sdist_bytes(cache))
        _check_sha256(
            data,
            TWEETS_SHA256,
            f"The member {_TWEETS_MEMBER} of {cache / SDIST_NAME}",
            f"delete {cache / SDIST_NAME} and call load_tweets again",
        )
        _write_atomically(cached, data)
    return _parse_tweets(data)


def _as_strings(column: pd.Series) -> pd.Series:
    """``column`` as ``object`` dtype: Python ``str``, and ``float("nan")`` where missing."""
    values = [np.nan if pd.isna(value) else str(value) for value in column]
    return pd.Series(values, index=column.index, dtype=object, name=column.name)


def _sdist_bytes(cache: Path) -> bytes:
    """The verified sdist: the copy in ``cache``, or else one downloaded there by pip."""
    sdist = cache / SDIST_NAME
    if sdist.is_file():
        data = sdist.read_bytes()
        _check_sha256(
            data,
            SDIST_SHA256,
            str(sdist),
            f"replace it by the file `{_MANUAL_DOWNLOAD}` saves, or skip the demo",
        )
        return data
    with tempfile.TemporaryDirectory(prefix=".pip-download-", dir=cache) as dest:
        downloaded = _pip_download(Path(dest), cache)
        data = downloaded.read_bytes()
        _check_sha256(
            data,
            SDIST_SHA256,
            f"The sdist pip downloaded from the package index ({downloaded.name})",
            "check which index pip uses (pip config list), or skip the demo",
        )
        os.replace(downloaded, sdist)
    return data


def _pip_download(dest: Path, cache: Path) -> Path:
    """Download the sdist into the empty folder ``dest`` with pip, in hash-checking mode.

    :raises DemoDataError: pip cannot be started, fails or times out.
    """
    # Hash-checking mode: pip refuses a wrong file before it runs the sdist's build backend.
    requirements = dest / "requirements.txt"
    requirements.write_text(f"{_REQUIREMENT} --hash=sha256:{SDIST_SHA256}\n", encoding="utf-8")
    downloads = dest / "downloads"
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        "--require-hashes",
        "--disable-pip-version-check",
        "--no-input",
        "--dest",
        str(downloads),
        "-r",
        str(requirements),
    ]
    try:
        done = subprocess.run(  # nosec B603
            command,
            capture_output=True,
            encoding="utf-8",
            errors="replace",
            timeout=PIP_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise _download_error(cache, f"timed out after {PIP_TIMEOUT:g} s") from exc
    except OSError as exc:
        raise _download_error(cache, f"could not start ({exc})") from exc
    if done.returncode != 0:
        raise _download_error(cache, f"failed ({_pip_reason(done.stderr, done.returncode)})")
    files = sorted(downloads.glob("*.tar.gz")) if downloads.is_dir() else []
    if len(files) != 1:
        raise _download_error(cache, f"saved {len(files)} .tar.gz files instead of 1")
    return files[0]


def _pip_reason(stderr: str, returncode: int) -> str:
    """pip's first ``ERROR:`` line, or else its last line, or else its exit status."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR:")]
    if errors:
        return errors[0]
    return lines[-1] if lines else f"exit status {returncode}"


def _download_error(cache: Path, what: str) -> DemoDataError:
    """The error saying the sdist could not be downloaded, ``what`` happened, and what to do."""
    return DemoDataError(
        "The sentiment demo needs the vaderSentiment 3.3.2 source distribution from PyPI, "
        f"but `pip download` {what}: allow access to the package index, or download it "
        f"elsewhere with `{_MANUAL_DOWNLOAD}` and place it at {cache / SDIST_NAME}, "
        "or skip the demo."
    )


def _check_sha256(data: bytes, expected: str, what: str, todo: str) -> None:
    """:raises DemoDataError: ``data`` does not have the sha256 ``expected``."""
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise DemoDataError(
            f"{what} has sha256 {actual}, not the expected {expected} of vaderSentiment "
            f"3.3.2: {todo}."
        )


def _read_member(sdist: bytes) -> bytes:
    """The tweets file's bytes, read from the inner archive of the (verified) sdist.

    Nothing is extracted to disk: only the two regular-file members are read, by exact name.

    :raises DemoDataError: a member is missing, not a regular file, or too large.
    """
    inner = _member_bytes(sdist, _INNER_ARCHIVE)
    return _member_bytes(inner, _TWEETS_MEMBER)


def _member_bytes(archive: bytes, name: str) -> bytes:
    """The bytes of the regular file ``name`` in the gzipped tar ``archive``."""
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        for member in tar:
            if member.name != name:
                continue
            if not member.isreg() or member.size > _MAX_MEMBER_BYTES:
                break
            stream = tar.extractfile(member)
            if stream is None:
                break
            with stream:
                return stream.read(_MAX_MEMBER_BYTES + 1)
    raise DemoDataError(
        f"The archive has no regular file {name} of at most {_MAX_MEMBER_BYTES} bytes: "
        "delete the files of the cache folder and call load_tweets again, or skip the demo."
    )


def _write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, then rename it to ``path``."""
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _parse_tweets(data: bytes) -> tuple[pd.DataFrame, pd.Series]:
    """The rows and labels of the tab-separated ``id, mean rating, text`` lines of ``data``."""
    texts: list[str] = []
    labels: list[str] = []
    for line in data.decode("utf-8").replace("\r\n", "\n").split("\n"):
        if not line:
            continue
        _, rating, text = line.split("\t", 2)
        mean = float(rating)
        if mean != 0:
            texts.append(text)
            labels.append("positive" if mean > 0 else "negative")
    rows = pd.DataFrame({"text": pd.Series(texts, dtype=object)})
    return rows, pd.Series(labels, dtype=object, name="sentiment")
