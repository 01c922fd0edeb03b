"""Dask: the Scorer in map_partitions on a LocalCluster of two worker processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from inference_app import spark as batch
from inference_app.core.bundle import load_bundle
from inference_app.core.scoring import Scorer
from inference_app.datasets import load_penguins
from inference_app.demo import write_demo_bundles
from inference_app.spark import cached_scorer, locate

try:
    import dask.dataframe as dd
    from distributed import Client, LocalCluster
except ImportError as error:  # the test extra installs them: `make test` does
    raise ImportError(
        f"{error}: the Dask test needs dask[dataframe] and distributed; install the test "
        "extra: pip install -e '.[test]'"
    ) from None


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    """Two single-threaded worker processes on 127.0.0.1; the dashboard on a free port (None
    still takes 8787, which another process may hold)."""
    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address="127.0.0.1:0",
            host="127.0.0.1",
        ) as cluster,
        Client(cluster) as connected,
    ):
        yield connected


def test_map_partitions_gives_the_scorers_answers(client: Client, tmp_path: Path) -> None:
    write_demo_bundles(tmp_path / "models", names=["penguins"])
    ref = locate(tmp_path, "penguins")  # resolved once, here; the workers load the bundle
    frame, _ = load_penguins()  # 344 rows: strings, and missing values in five columns
    bundle = load_bundle(ref.path)
    columns = Scorer(bundle, method="predict_proba").columns

    def score(part: pd.DataFrame) -> pd.DataFrame:
        outputs = cached_scorer(ref, method="predict_proba").score(part).outputs
        outputs.index = part.index[outputs.index]  # the partition's own index
        return outputs

    table = dd.from_pandas(frame, npartitions=4)
    assert table.npartitions == 4
    meta = pd.DataFrame({column: pd.Series(dtype="float64") for column in columns})
    got = table.map_partitions(score, meta=meta).compute()
    assert got.index.tolist() == frame.index.tolist()
    expected = bundle.estimator.predict_proba(frame)
    np.testing.assert_allclose(got[columns].to_numpy(), expected, rtol=0, atol=1e-12)
    # Each worker process loaded the bundle at most once, for all its partitions.
    loaded = client.run(lambda: len(batch._BUNDLES))
    assert sorted(loaded.values()) in ([1, 1], [0, 1])
