"""Metrics merged across processes: folding dead workers never disturbs a concurrent scrape."""

from __future__ import annotations

import threading
from pathlib import Path

from prometheus_client import generate_latest
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.parser import text_string_to_metric_families

from inference_app import metrics

WORKERS = 300


def write_worker_file(folder: Path, pid: int, rows: float) -> None:
    """Write what a dead worker leaves behind: its rows counter, as prometheus-client does."""
    key = mmap_key(
        "inference_app_rows_predicted",
        "inference_app_rows_predicted_total",
        ["protocol", "model", "version"],
        ["v1", "iris", "1"],
        "Rows predicted.",
    )
    values = MmapedDict(str(folder / f"counter_{pid}.db"))
    try:
        values.write_value(key, rows, 0.0)
    finally:
        values.close()


def scraped_rows(folder: Path) -> float:
    """Return the rows counter merged from ``folder`` as ``/metrics`` would expose it."""
    text = generate_latest(metrics.multiprocess_registry(str(folder))).decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "inference_app_rows_predicted"
        for sample in family.samples
        if sample.name.endswith("_total")
    )


def test_scrapes_stay_exact_while_the_master_folds_dead_workers(tmp_path: Path) -> None:
    # Worker pid p predicted p rows; folding all of them must never change the scraped total.
    for pid in range(1, WORKERS + 1):
        write_worker_file(tmp_path, pid, float(pid))
    expected = WORKERS * (WORKERS + 1) / 2
    totals: list[float] = []
    errors: list[BaseException] = []
    folding = threading.Event()

    def scrape() -> None:
        while not folding.is_set():
            try:
                totals.append(scraped_rows(tmp_path))
            except Exception as error:  # noqa: BLE001 - any failure is what the test reports
                errors.append(error)
                return

    scraper = threading.Thread(target=scrape)
    scraper.start()
    try:
        for pid in range(1, WORKERS + 1):
            metrics.archive_dead_process(pid, tmp_path)
    finally:
        folding.set()
        scraper.join()

    assert errors == []
    assert len(totals) > 1
    assert set(totals) == {expected}
    assert sorted(path.name for path in tmp_path.glob("*.db")) == ["counter_archive.db"]
    assert scraped_rows(tmp_path) == expected
