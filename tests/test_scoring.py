"""The batch scoring core: ``Scorer`` on the demo datasets, refused rows, Arrow input, CSV cells."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from inference_app.core.bundle import Bundle, load_bundle
from inference_app.core.scoring import ERROR, PREDICTION, Scorer, ScoringError, frame_columns
from inference_app.datasets import load_penguins
from inference_app.demo import DEMO_VERSION, DEMOS, load_demo_data, write_demo_bundles

ISLANDS = "'Biscoe', 'Dream', 'Torgersen'"


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Bundle]:
    """The numeric demos and penguins, written and loaded from their bundles."""
    models = tmp_path_factory.mktemp("scoring") / "models"
    write_demo_bundles(models, names=[*DEMOS, "penguins"])
    return {name: load_bundle(models / name / DEMO_VERSION) for name in [*DEMOS, "penguins"]}


def dataset(name: str) -> pd.DataFrame:
    """Return a demo's full dataset as a DataFrame with a column per feature."""
    if name == "penguins":
        frame, _ = load_penguins()
        return frame.reset_index(drop=True)
    rows, _, names = load_demo_data(name)
    return pd.DataFrame(rows, columns=names)


@pytest.mark.parametrize("name", [*DEMOS, "penguins"])
def test_predictions_equal_the_estimators_on_the_full_dataset(
    bundles: dict[str, Bundle], name: str
) -> None:
    bundle, frame = bundles[name], dataset(name)

    scored = Scorer(bundle).score(frame)

    # The API's float64 matrix is C-ordered; BLAS sums in another order in another layout.
    data = frame if name == "penguins" else np.ascontiguousarray(frame.to_numpy())
    expected = bundle.estimator.predict(data)
    assert list(scored.outputs.columns) == [PREDICTION]
    assert list(scored.outputs.index) == list(range(len(frame)))
    assert scored.outputs[PREDICTION].tolist() == expected.tolist()
    assert scored.refused == {}


@pytest.mark.parametrize(
    ("name", "method"),
    [
        ("iris", "predict_proba"),
        ("breast_cancer", "predict_proba"),
        ("penguins", "predict_proba"),
        ("iris", "decision_function"),
    ],
)
def test_class_scores_are_one_column_per_class(
    bundles: dict[str, Bundle], name: str, method: str
) -> None:
    bundle, frame = bundles[name], dataset(name)

    scored = Scorer(bundle, method=method).score(frame)

    data = frame if name == "penguins" else np.ascontiguousarray(frame.to_numpy())
    expected = getattr(bundle.estimator, method)(data)
    assert list(scored.outputs.columns) == [str(c) for c in bundle.estimator.classes_]
    assert scored.outputs.to_numpy().tolist() == expected.tolist()


def test_a_method_the_model_lacks_is_refused_naming_those_it_has(
    bundles: dict[str, Bundle],
) -> None:
    with pytest.raises(ValueError, match="has no method 'predict_proba'; it has predict"):
        Scorer(bundles["diabetes"], method="predict_proba")
    with pytest.raises(ValueError, match="on_error must be one of fail, skip, mark"):
        Scorer(bundles["iris"], on_error="ignore")


def bad_penguins() -> pd.DataFrame:
    """Twelve penguins, three of them refused: a string where a number goes (row 3), an
    island the model does not know (row 5), a missing island (row 8)."""
    frame = dataset("penguins").iloc[:12].astype(object).reset_index(drop=True)
    frame = frame.where(frame.notna(), None)
    frame.loc[3, "bill_length_mm"] = "39.5"
    frame.loc[5, "island"] = "Atlantis"
    frame.loc[8, "island"] = None
    return frame


def test_fail_names_the_row_over_the_whole_input_and_the_feature(
    bundles: dict[str, Bundle],
) -> None:
    scorer = Scorer(bundles["penguins"], on_error="fail")
    frame = bad_penguins()

    with pytest.raises(ScoringError) as refused:
        scorer.score(frame.iloc[4:8], offset=1000)

    assert refused.value.message.startswith("row 1001, feature 'island': 'Atlantis' is not a")
    with pytest.raises(ScoringError, match=r"^row 3, feature 'bill_length_mm': expected a number"):
        scorer.score(frame.iloc[:5])


def test_skip_leaves_refused_rows_out_and_counts_them_by_reason(
    bundles: dict[str, Bundle],
) -> None:
    bundle, frame = bundles["penguins"], bad_penguins()

    scored = Scorer(bundle, on_error="skip").score(frame, offset=100)

    good = [i for i in range(12) if i not in (3, 5, 8)]
    assert list(scored.outputs.index) == [100 + i for i in good]
    expected = bundle.estimator.predict(dataset("penguins").iloc[good])
    assert scored.outputs[PREDICTION].tolist() == expected.tolist()
    assert scored.refused == {
        "bill_length_mm: Expected a number, got a string.": 1,
        f"island: Must be one of: {ISLANDS}.": 1,
        "island: Missing values are not accepted: send a string.": 1,
    }


def test_mark_keeps_refused_rows_with_the_reason(bundles: dict[str, Bundle]) -> None:
    scored = Scorer(bundles["penguins"], on_error="mark").score(bad_penguins())

    outputs = scored.outputs
    assert list(outputs.columns) == [PREDICTION, ERROR]
    assert list(outputs.index) == list(range(12))
    assert outputs[ERROR][3] == "bill_length_mm: Expected a number, got a string."
    assert outputs[ERROR][5] == f"island: Must be one of: {ISLANDS}."
    assert outputs[PREDICTION][[3, 5, 8]].isna().all()
    assert outputs[ERROR].drop([3, 5, 8]).isna().all()
    assert sum(scored.refused.values()) == 3


@pytest.mark.parametrize("max_text_length", [10_000, 5])
def test_string_columns_are_checked_whole_as_their_values_one_by_one(
    bundles: dict[str, Bundle], max_text_length: int
) -> None:
    objects = bad_penguins()
    strings = objects.astype({"island": "str", "sex": "str"})  # as Parquet or Arrow gives them
    assert isinstance(
        frame_columns(strings, bundles["penguins"].manifest.inputs)["island"], pd.Series
    )

    scorer = Scorer(bundles["penguins"], on_error="mark", max_text_length=max_text_length)
    whole, one_by_one = scorer.score(strings), scorer.score(objects)

    pd.testing.assert_frame_equal(whole.outputs, one_by_one.outputs)
    assert whole.refused == one_by_one.refused
    if max_text_length == 5:  # every island but "Dream" is too long
        assert whole.outputs[ERROR][0] == ("island: Longer than 5 characters (MAX_TEXT_LENGTH).")


def test_unseen_categories_are_served_and_counted(bundles: dict[str, Bundle]) -> None:
    frame = dataset("penguins").iloc[:10].copy()
    frame.loc[[1, 4], "sex"] = "unknown"

    scored = Scorer(bundles["penguins"]).score(frame)

    assert len(scored.outputs) == 10
    assert scored.unseen == {"sex": 2}


def test_arrow_strings_keep_unseen_and_missing_values_as_they_are(
    bundles: dict[str, Bundle],
) -> None:
    # Arrow-backed strings are looked up in the categories whole; an unseen value must reach
    # the model as itself (its one-hot columns all 0), not as missing (imputed to "male").
    objects = dataset("penguins").copy()
    objects.loc[[1, 4], "sex"] = "unknown"
    objects.loc[[2, 5], "sex"] = math.nan
    strings = objects.astype({"island": "str", "sex": "str"})
    scorer = Scorer(bundles["penguins"], method="predict_proba")

    scored = scorer.score(strings)

    expected = bundles["penguins"].estimator.predict_proba(objects)
    np.testing.assert_array_equal(scored.outputs.to_numpy(), expected)
    assert scored.unseen == {"sex": 2}
    imputed = objects.copy()
    imputed.loc[[1, 4], "sex"] = math.nan
    assert not np.array_equal(expected, bundles["penguins"].estimator.predict_proba(imputed))


def test_numbers_in_a_frame_are_checked_like_the_apis(bundles: dict[str, Bundle]) -> None:
    frame = dataset("iris").iloc[:6].copy()
    frame.loc[2, "sepal length (cm)"] = math.nan  # iris's logistic regression takes no NaN
    frame.loc[4, "petal width (cm)"] = math.inf

    scored = Scorer(bundles["iris"], on_error="mark").score(frame)

    assert scored.outputs[ERROR][2] == (
        "sepal length (cm): Expected a finite number; this feature does not accept missing "
        "values (NaN)."
    )
    assert scored.outputs[ERROR][4].startswith("petal width (cm): Expected a finite number; inf")
    assert scored.outputs[ERROR][[0, 1, 3, 5]].isna().all()


@pytest.mark.parametrize("name", ["breast_cancer", "penguins"])
def test_arrow_record_batches_score_as_their_frames(bundles: dict[str, Bundle], name: str) -> None:
    frame = dataset(name)
    batch = pa.RecordBatch.from_pandas(frame, preserve_index=False)
    scorer = Scorer(bundles[name], method="predict_proba")

    from_arrow = scorer.score(batch, offset=7).outputs
    from_frame = scorer.score(frame, offset=7).outputs

    pd.testing.assert_frame_equal(from_arrow, from_frame)
    assert from_arrow.index[0] == 7


def test_extra_columns_are_ignored_and_order_does_not_matter(bundles: dict[str, Bundle]) -> None:
    frame = dataset("iris")
    shuffled = frame[list(reversed(frame.columns))].assign(id=np.arange(len(frame)), label="x")

    scored = Scorer(bundles["iris"]).score(shuffled)

    expected = bundles["iris"].estimator.predict(frame.to_numpy())
    assert scored.outputs[PREDICTION].tolist() == expected.tolist()


def test_a_missing_feature_column_is_refused(bundles: dict[str, Bundle]) -> None:
    frame = dataset("iris").drop(columns=["petal width (cm)"])

    with pytest.raises(ScoringError, match="missing column 'petal width \\(cm\\)'"):
        Scorer(bundles["iris"]).score(frame)


@pytest.mark.parametrize(("method", "on_error"), [("predict", "mark"), ("predict_proba", "fail")])
def test_an_empty_table_gives_empty_outputs(
    bundles: dict[str, Bundle], method: str, on_error: str
) -> None:
    frame = dataset("iris").iloc[:0]

    scored = Scorer(bundles["iris"], method=method, on_error=on_error).score(frame, offset=5)

    expected = [PREDICTION, ERROR] if on_error == "mark" else ["setosa", "versicolor", "virginica"]
    assert list(scored.outputs.columns) == expected
    assert len(scored.outputs) == 0


def cells(frame: pd.DataFrame) -> pd.DataFrame:
    """Return ``frame`` as CSV text cells: numbers as their shortest text, missing empty."""
    text = frame.astype(object).map(lambda v: "" if v is None or v != v else str(v))
    return text.astype(object)


def test_csv_cells_are_typed_by_the_features(bundles: dict[str, Bundle]) -> None:
    bundle, frame = bundles["penguins"], dataset("penguins")

    scored = Scorer(bundle).score(cells(frame), cells=True)

    assert scored.outputs[PREDICTION].tolist() == bundle.estimator.predict(frame).tolist()


def test_csv_cells_that_do_not_fit_name_the_csv_line_over_the_whole_input(
    bundles: dict[str, Bundle],
) -> None:
    text = cells(dataset("penguins").iloc[:10])
    text.loc[4, "body_mass_g"] = "heavy"
    text.loc[6, "island"] = ""

    with pytest.raises(ScoringError, match=r"CSV line 206, column 'body_mass_g': 'heavy' is not"):
        Scorer(bundles["penguins"]).score(text, offset=200, cells=True)
    marked = Scorer(bundles["penguins"], on_error="mark").score(text, offset=200, cells=True)
    assert marked.outputs[ERROR][204] == "body_mass_g: Expected a number."
    assert marked.outputs[ERROR][206] == "island: Missing values are not accepted: send a string."


def test_model_input_from_the_bundle_folder(bundles: dict[str, Bundle]) -> None:
    # The scorer works from a bundle as load_bundle returns it, so a worker process can
    # load its own copy from the folder.
    path: Path = bundles["iris"].path
    rows: Any = dataset("iris").iloc[:3]

    scored = Scorer(load_bundle(path)).score(rows)

    assert scored.outputs[PREDICTION].tolist() == ["setosa"] * 3
