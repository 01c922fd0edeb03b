"""Score a file with a model bundle: chunked readers and writers, a worker pool, progress."""

from __future__ import annotations

import contextlib
import csv
import gc
import io
import json
import multiprocessing
import os
import re
import secrets
import sys
import time
import warnings
from collections import Counter, deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa  # type: ignore[import-untyped, unused-ignore]
import pyarrow.csv as pacsv  # type: ignore[import-untyped, unused-ignore]
import pyarrow.parquet as pq  # type: ignore[import-untyped, unused-ignore]
from tqdm import tqdm  # type: ignore[import-untyped, unused-ignore]

from inference_app.core.bundle import Bundle, load_bundle
from inference_app.core.datatypes import DATATYPES
from inference_app.core.errors import BundleError, InferenceAppError
from inference_app.core.features import Feature
from inference_app.core.scoring import ERROR, ON_ERROR, Scored, Scorer, ScoringError
from inference_app.core.scoring import output_columns as scorer_output_columns
from inference_app.process import available_cpus, cap_threads

#: The file formats, by file extension (lower case).
FORMATS = {
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}
FORMAT_NAMES = {"csv": "CSV", "parquet": "Parquet", "jsonl": "JSON lines"}
#: Cells (rows x features) per chunk, by default: a chunk is read, scored and written at
#: once. Sized in cells, not rows, so that a chunk's memory does not grow with the features,
#: and so that a model of few features is not called once per few rows: each call to a
#: scikit-learn pipeline costs a fixed 10-15 ms (penguins' 6 features, 1,000,000 rows from
#: Parquet: 0.79 s in 50,000-row chunks, 0.59 s in 250,000; the 30-feature forest gains
#: nothing past 50,000 rows).
CHUNK_CELLS = 1_500_000
#: The fewest and the most rows of a default chunk (:func:`default_chunk_rows`).
CHUNK_ROWS_RANGE = (1_000, 250_000)
#: Bytes read at a time when CSV lines are split into chunks for the worker processes.
BLOCK_BYTES = 1 << 23
#: How many chunks may be read ahead of the one being written, per worker process.
CHUNKS_PER_WORKER = 2
#: ``workers="auto"``: the input rows each worker process must get for it to pay for its
#: start-up (forking, handing chunks over, the parent's extra work). Measured on 2 CPUs with
#: ``bench/batch.py``'s models (bench/RESULTS.md, whole commands of one and two workers timed
#: in alternating pairs): two took 1.0-1.2x one's time on 200,000 rows, 0.83-1.10x on
#: 1,000,000 (even for the forest, faster for the pipeline), 0.76-0.87x from 1,500,000.
AUTO_ROWS_PER_WORKER = 500_000
#: Bytes of a CSV or JSON lines file read to estimate its rows from its size.
SAMPLE_BYTES = 1 << 20
#: How CSV outputs are written (by Arrow): text quoted, numbers not, no header per chunk.
CSV_WRITE = pacsv.WriteOptions(include_header=False, quoting_style="needed")
#: The output column holding each row's number in the input, from 0.
ROW = "row"
#: What the summary says became of refused rows.
REFUSED_FATE = {"skip": "left out", "mark": "marked", "fail": "stopped the job"}


class BatchError(InferenceAppError):
    """The job cannot run, or stopped: a missing or malformed file, an unknown model or
    version, an unknown format. The message is one line naming the file."""


@dataclass(frozen=True)
class Options:
    """How to score, the same in every worker process.

    :param method: ``predict``, ``predict_proba`` or ``decision_function``.
    :param on_error: ``fail``, ``skip`` or ``mark`` (:class:`~inference_app.core.scoring.Scorer`).
    :param engine: ``auto``, ``sklearn`` or ``onnx`` (the ``RUNTIME`` setting).
    :param max_text_length: the longest string value, in characters.
    :param strict_sklearn_version: refuse a bundle saved with another scikit-learn version.
    """

    method: str = "predict"
    on_error: str = "fail"
    engine: str = "auto"
    max_text_length: int = 10_000
    strict_sklearn_version: bool = False


@dataclass(frozen=True)
class Chunk:
    """Consecutive rows of the input.

    :param offset: the position of the first row in the whole input, from 0.
    :param table: a ``pandas.DataFrame`` or ``pyarrow.RecordBatch``, ``(n_rows, n_columns)``,
        or lines to parse (:class:`CsvText`, :class:`JsonText`).
    :param csv: the table was read from CSV by :class:`CsvReader` (numbers parsed by pandas,
        other columns text): its values are typed as the API types CSV cells.
    """

    offset: int
    table: Any
    csv: bool = False


@dataclass
class Summary:
    """What a job did.

    :param rows: the input rows read.
    :param scored: the rows scored (written with their outputs).
    :param refused: how many rows were refused, by reason.
    :param unseen: per categorical feature, how many values were categories the model never
        saw and tolerates (served).
    :param seconds: wall-clock time of the whole job, loading the model included.
    :param engine: the engine that scored (``sklearn`` or ``onnx``), ``None`` if no rows.
    :param auto: why ``workers="auto"`` chose :attr:`workers` (:class:`Workers`), ``None``
        for a count given.
    """

    model: str
    version: str
    method: str
    on_error: str
    workers: int
    input: Path
    output: Path
    rows: int = 0
    scored: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    unseen: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    engine: str | None = None
    auto: str | None = None

    @property
    def rows_per_second(self) -> float:
        """Return the input rows read per second of the job (0 for an instant job)."""
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def lines(self) -> list[str]:
        """Return the summary printed at the end of ``inference-app score``, one line each."""
        engine = f", runtime {self.engine}" if self.engine else ""
        workers = f"{self.workers} worker{'s' if self.workers > 1 else ''}"
        if self.auto is not None:
            workers += f" (auto: {self.auto})"
        refused = sum(self.refused.values())
        rows = f"{self.rows:,} read, {self.scored:,} scored, {refused:,} refused"
        if refused:
            rows += f" ({REFUSED_FATE[self.on_error]})"
        lines = [
            f"model    {self.model} version {self.version}, {self.method}{engine}, {workers}",
            f"input    {self.input} ({FORMAT_NAMES[format_of(self.input)]})",
            f"rows     {rows}",
        ]
        for position, (why, count) in enumerate(self.refused.most_common()):
            lines.append(f"{'refused' if position == 0 else '':<8} {count:>8,}  {why}")
        for position, (feature, count) in enumerate(sorted(self.unseen.items())):
            lines.append(
                f"{'unseen' if position == 0 else '':<8} {count:>8,}  {feature}: categories "
                "the model never saw (served)"
            )
        lines.append(f"output   {self.output} ({FORMAT_NAMES[format_of(self.output)]})")
        lines.append(f"time     {self.seconds:.2f} s, {self.rows_per_second:,.0f} rows/s")
        return lines


def format_of(path: Path) -> str:
    """Return the format of a file from its extension: ``csv``, ``parquet`` or ``jsonl``.

    :raises BatchError: an unknown extension.
    """
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise BatchError(
            f"{path}: unknown format {path.suffix or '(no extension)'!r}; expected "
            f"{', '.join(FORMATS)}"
        )
    return kind


def check_options(bundle: Bundle, options: Options) -> None:
    """Refuse options the bundle cannot be scored with, before any worker starts.

    :raises BatchError: the model has no such method, or ``on_error`` is unknown.
    :raises BundleError: ``engine="onnx"`` and the bundle has no ONNX model.
    """
    if options.method not in bundle.manifest.methods:
        raise BatchError(
            f"model {bundle.name!r} has no method {options.method!r}; it has "
            f"{', '.join(bundle.manifest.methods)}"
        )
    if options.on_error not in ON_ERROR:
        raise BatchError(f"--on-error must be one of {', '.join(ON_ERROR)}")
    if options.engine == "onnx" and bundle.onnx is None:
        raise BundleError(
            f"model {bundle.name!r} version {bundle.version!r} has no ONNX model "
            "(--runtime onnx): package it again without --no-onnx"
        )


def default_chunk_rows(features: int) -> int:
    """Return the rows per chunk of a model with ``features`` inputs: :data:`CHUNK_CELLS`
    divided by the features, within :data:`CHUNK_ROWS_RANGE` (50,000 rows for 30 features,
    250,000 for 6 or fewer)."""
    low, high = CHUNK_ROWS_RANGE
    return min(high, max(low, CHUNK_CELLS // max(1, features)))


def output_columns(bundle: Bundle, options: Options) -> list[str]:
    """Return the output file's columns: ``row``, the method's outputs (``prediction``, or
    one per class), and ``error`` with ``on_error="mark"``."""
    columns = [ROW, *scorer_output_columns(bundle, options.method)]
    return [*columns, ERROR] if options.on_error == "mark" else columns


def score_chunk(scorer: Scorer, chunk: Chunk) -> Scored:
    """Score one chunk as the scorer would, faster where rows are refused or cells typed.

    A CSV chunk whose number columns pandas parsed is scored as it is (no text cell is
    converted in Python): pandas reads a number exactly as the API's CSV does, and only
    what reads as a number. A refused row, or a chunk with a column pandas did not parse (a
    value that is not a number, an empty cell in an integer column), is scored as the text
    cells it was read from (``Scorer.score(..., cells=True)``), which refuses, names and
    counts rows as the API does.

    :param chunk: rows ``(n_rows, n_columns)``.
    :returns: outputs indexed by row position in the whole input; refused rows by reason;
        unseen categories by feature.
    :raises ScoringError: ``on_error="fail"`` and a row is refused, naming it (counted over
        the whole input) and the feature.
    """
    features = scorer.bundle.manifest.inputs
    table, cells = chunk.table, False
    if chunk.csv and not _parsed(table, features):
        table, cells = _cells(table, features), True
    as_cells = chunk.csv and not cells
    try:
        scored = scorer.score(table, offset=chunk.offset, cells=cells)
        if not (as_cells and scored.refused):
            return scored
    except ScoringError:
        if not as_cells:
            raise
    # pandas' numbers were refused: the text cells say why, in the API's words
    return scorer.score(_cells(table, features), offset=chunk.offset, cells=True)


def _parsed(frame: pd.DataFrame, features: Sequence[Feature]) -> bool:
    """Return whether every number feature's column holds numbers pandas parsed (integers
    for an integer feature) and no feature is boolean (its cells are text)."""
    for feature in features:
        if feature.datatype == "BOOL":
            return False
        datatype = DATATYPES[feature.datatype]
        if not datatype.numeric or feature.name not in frame.columns:
            continue
        dtype = frame[feature.name].dtype
        kinds = "iuf" if np.dtype(datatype.dtype).kind == "f" else "i"
        if not isinstance(dtype, np.dtype) or dtype.kind not in kinds:
            return False
    return True


def _cells(frame: pd.DataFrame, features: Sequence[Feature]) -> pd.DataFrame:
    """Return a CSV chunk's feature columns as the text cells they were read from: numbers
    pandas parsed become text that reads as the same number, missing cells ``""``."""
    names = {feature.name for feature in features}
    cells: dict[str, list[str]] = {}
    for name in frame.columns:
        if name not in names:
            continue
        column = frame[name]
        dtype = column.dtype
        if isinstance(dtype, np.dtype) and dtype.kind == "f":
            cells[name] = ["" if value != value else repr(value) for value in column.tolist()]
        elif isinstance(dtype, np.dtype) and dtype.kind in "iub":
            cells[name] = [str(value) for value in column.tolist()]
        else:
            cells[name] = [_cell(value) for value in column.astype(object).tolist()]
    return pd.DataFrame(cells, dtype=object, index=frame.index)


def _cell(value: Any) -> str:
    """Return a text column's value as its cell: missing (``None``, NaN) is ``""``."""
    if type(value) is str:
        return value
    return "" if value is None or value != value else str(value)


@dataclass(frozen=True)
class CsvText:
    """Whole rows of a CSV file as its bytes, split off by :class:`CsvReader` and parsed by
    pandas where they are scored (in a worker process).

    :param data: the rows' lines, each ending with a line feed: UTF-8, no quote, no blank
        line, so that each line is one row.
    :param rows: how many lines, ``n_rows``.
    :param line: the file's line number of the first, from 1.
    :param path: the file, for errors.
    :param names: the header's column names.
    :param columns: the feature columns kept.
    :param text: the columns read as text, by name (pandas parses the others).
    """

    data: bytes
    rows: int
    line: int
    path: Path
    names: tuple[str, ...]
    columns: tuple[str, ...]
    text: Mapping[str, str]

    def parse(self) -> pd.DataFrame:
        """Return the rows as CsvReader reads them, ``(n_rows, n_columns)``.

        :raises BatchError: a malformed line, text that is not UTF-8, naming the line.
        """
        with _opened(self.path, "CSV"), _csv_errors(self.path, self.line, len(self.names)):
            frame = pd.read_csv(
                io.BytesIO(self.data),
                header=None,
                names=list(self.names),
                encoding="utf-8",
                **_csv_options(self.text),
            )
        if len(frame) != self.rows:  # each line is a row: no quote, no blank line
            raise BatchError(
                f"{self.path}:{self.line}: pandas read {len(frame)} rows from {self.rows} lines"
            )
        return frame[list(self.columns)]


class CsvReader:
    """Read a CSV file with a header row in chunks of ``chunk_rows`` rows.

    The model's feature columns are kept. Number features are parsed by pandas (an empty
    cell is missing); the other features are text. A row with more cells than the header is
    refused; one with fewer has its last cells empty (pandas' reading). Encoding: UTF-8,
    with or without a byte-order mark.

    :param split: for worker processes: chunks of lines without quotes or blank lines are
        yielded as their bytes (:class:`CsvText`), parsed where they are scored; from the
        first quote, line break other than a line feed or blank line on, pandas reads here.
    :raises BatchError: (on opening) no header, a repeated column name, a feature missing.
    """

    format = "csv"

    def __init__(
        self, path: Path, features: Sequence[Feature], chunk_rows: int, *, split: bool = False
    ) -> None:
        self.path = path
        self.chunk_rows = chunk_rows
        self.split = split
        self.names = self._header()
        missing = [feature.name for feature in features if feature.name not in self.names]
        if missing:
            raise BatchError(
                f"{path}: no column {', '.join(map(repr, missing[:10]))}; the header names "
                f"{', '.join(map(repr, self.names[:10]))}{' ...' if len(self.names) > 10 else ''}"
            )
        self.columns = [feature.name for feature in features]
        self.text = {
            feature.name: "str" for feature in features if not DATATYPES[feature.datatype].numeric
        }

    def _header(self) -> list[str]:
        with _opened(self.path):
            with self.path.open(newline="", encoding="utf-8-sig") as handle:
                reader = csv.reader(handle)
                try:
                    names = next((row for row in reader if row), None)
                except csv.Error as error:
                    raise BatchError(f"{self.path}:{reader.line_num}: {error}") from None
                self.header_line = reader.line_num
        if names is None:
            raise BatchError(f"{self.path}: empty; expected a header row of column names")
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise BatchError(
                f"{self.path}: the header names a column twice: {', '.join(map(repr, repeated))}"
            )
        return names

    def count_rows(self) -> int:
        """Return the number of lines after the header: the rows, unless cells hold line
        breaks or lines are blank (a fast binary scan, for the progress bar)."""
        return max(0, _count_lines(self.path) - 1)

    def estimate_rows(self) -> tuple[int, bool]:
        """Return :meth:`count_rows` estimated from the file's size and its first
        :data:`SAMPLE_BYTES`, and whether it is exact (a file no larger)."""
        lines, exact = _estimated_lines(self.path)
        return max(0, lines - 1), exact

    def __iter__(self) -> Iterator[Chunk]:
        """Yield the chunks in order.

        :raises BatchError: a malformed line (more cells than the header, an unclosed
            quote), text that is not UTF-8.
        """
        start = self._data_start() if self.split else None
        if start is None:
            yield from self._parsed(None, 0, 1)
        else:
            yield from self._split(*start)

    def _data_start(self) -> tuple[int, int] | None:
        """Return the byte offset and line number of the line after the header, or
        ``None`` when the header is quoted or ends in a carriage return."""
        with _opened(self.path), self.path.open("rb") as handle:
            head = handle.read(1 << 20)
        position = 3 if head.startswith(b"\xef\xbb\xbf") else 0
        line = 1
        while True:  # pandas and csv skip blank lines before the header
            end = head.find(b"\n", position)
            if end < 0:
                return None
            if head[position:end].strip():
                break
            position, line = end + 1, line + 1
        if b'"' in head[position:end] or b"\r" in head[position:end]:
            return None
        return end + 1, line + 1

    def _split(self, start: int, line: int) -> Iterator[Chunk]:
        """Yield chunks of whole lines as bytes from ``start`` (the byte after the header),
        whose line number is ``line``; from the first block that is not plain lines on,
        let pandas read."""
        offset, count = 0, 0
        pending: list[bytes] = []
        with _opened(self.path), self.path.open("rb") as handle:
            handle.seek(start)
            position, carry = start, b""
            while True:
                block = handle.read(BLOCK_BYTES)
                data = carry + block if carry else block
                cut = data.rfind(b"\n") + 1 if block else len(data)
                lines, carry = data[:cut], data[cut:]
                ends = _line_ends(lines) if lines else np.empty(0, dtype=np.int64)
                if ends is None:
                    if count:
                        yield self._text(offset, b"".join(pending), count, line)
                        offset, line = offset + count, line + count
                    yield from self._parsed(position, offset, line)
                    return
                base, used = 0, 0
                while len(ends) - used >= self.chunk_rows - count:
                    stop = int(ends[used + self.chunk_rows - count - 1]) + 1
                    pending.append(lines[base:stop])
                    yield self._text(offset, b"".join(pending), self.chunk_rows, line)
                    used += self.chunk_rows - count
                    offset, line, base = offset + self.chunk_rows, line + self.chunk_rows, stop
                    pending, count = [], 0
                if base < len(lines):
                    pending.append(lines[base:])
                    count += len(ends) - used
                position += len(lines)
                if not block:
                    break
        if count:
            yield self._text(offset, b"".join(pending), count, line)

    def _text(self, offset: int, data: bytes, rows: int, line: int) -> Chunk:
        text = CsvText(
            data if data.endswith(b"\n") else data + b"\n",
            rows,
            line,
            self.path,
            tuple(self.names),
            tuple(self.columns),
            self.text,
        )
        return Chunk(offset, text, csv=True)

    def _parsed(self, position: int | None, offset: int, line: int) -> Iterator[Chunk]:
        """Yield chunks read by pandas: the whole file (``position`` ``None``), or its lines
        from byte ``position`` on, the first being row ``offset`` and line ``line``."""
        with _opened(self.path, "CSV"), contextlib.ExitStack() as stack:
            if position is None:
                source: Any = self.path
                options: dict[str, Any] = {"encoding": "utf-8-sig"}
            else:
                source = stack.enter_context(self.path.open("rb"))
                source.seek(position)
                options = {"header": None, "names": self.names, "encoding": "utf-8"}
            reader = stack.enter_context(
                pd.read_csv(source, chunksize=self.chunk_rows, **options, **_csv_options(self.text))
            )
            chunks = iter(reader)
            while True:
                # Lines in pandas' errors count from the header (the whole file), or from
                # the first line read.
                whole = position is None
                first, start = (1, self.header_line + 1) if whole else (line, line)
                with _csv_errors(self.path, first, len(self.names), start):
                    frame = next(chunks, None)
                if frame is None:
                    return
                # Not usecols: with it, pandas drops the cells of a row longer than the
                # header instead of refusing the row.
                yield Chunk(offset, frame[self.columns], csv=True)
                offset += len(frame)


def _csv_options(text: Mapping[str, str]) -> dict[str, Any]:
    """Return the options of ``pandas.read_csv`` for CSV rows: ``text`` columns as strings,
    the others parsed (numbers where they all are), an empty cell missing, no index."""
    return {
        "dtype": dict(text),
        "keep_default_na": False,
        "na_values": [""],
        "low_memory": False,  # one dtype per column and chunk
        "index_col": False,  # a row with a cell more than the header is no index
    }


#: pandas' words for a row with more cells than the header.
FIELDS = re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)")


@contextlib.contextmanager
def _csv_errors(path: Path, first: int, columns: int, start: int | None = None) -> Iterator[None]:
    """Turn pandas' errors about rows longer than the header into :class:`BatchError`,
    naming the line: pandas' line ``n`` is the file's ``first + n - 1``; its first row is
    on line ``start`` (default ``first``)."""
    with warnings.catch_warnings():
        # pandas warns, and drops cells, when the first row has more than the header.
        warnings.simplefilter("error", pd.errors.ParserWarning)
        try:
            yield
        except pd.errors.ParserWarning:
            raise BatchError(
                f"{path}:{first if start is None else start}: more cells than the header's "
                f"{columns} columns"
            ) from None
        except pd.errors.ParserError as error:
            found = FIELDS.search(str(error))
            if found is None:
                raise
            expected, line, saw = (int(group) for group in found.groups())
            raise BatchError(
                f"{path}:{first + line - 1}: {saw} cells for {expected} columns"
            ) from None


def _line_ends(lines: bytes) -> np.ndarray | None:
    """Return the positions of the line feeds ending each line of ``lines`` (whole lines),
    or ``None`` if a line may not be one row for pandas: a quote (a cell may hold a line
    break), a carriage return, a blank line (pandas skips those), or a line starting with
    a space or a tab (it may be blank)."""
    if b'"' in lines or b"\r" in lines:
        return None
    array = np.frombuffer(lines, dtype=np.uint8)
    ends = np.flatnonzero(array == 10)
    starts = np.concatenate(([0], ends[:-1] + 1))
    if (starts == ends).any():
        return None
    first = array[starts]
    if ((first == 32) | (first == 9)).any():
        return None
    return ends


@dataclass(frozen=True)
class ParquetGroup:
    """One row group of a Parquet file, named by :class:`ParquetReader` and read where it is
    scored (in a worker process), in record batches of ``chunk_rows`` rows.

    :param path: the file.
    :param group: the row group's index.
    :param columns: the feature columns read.
    :param chunk_rows: rows per batch.
    """

    path: Path
    group: int
    columns: tuple[str, ...]
    chunk_rows: int

    def batches(self) -> Iterator[pa.RecordBatch]:
        """Yield the row group's rows in order.

        :raises BatchError: a corrupt row group.
        """
        with _opened(self.path, "Parquet"):
            file = pq.ParquetFile(self.path)
            yield from file.iter_batches(
                batch_size=self.chunk_rows, row_groups=[self.group], columns=list(self.columns)
            )


class ParquetReader:
    """Read a Parquet file in record batches of ``chunk_rows`` rows, the feature columns
    only; with ``split``, name its row groups instead (:class:`ParquetGroup`), for worker
    processes to read, when it has more than one.

    :raises BatchError: (on opening) not a Parquet file, a feature column missing.
    """

    format = "parquet"

    def __init__(
        self, path: Path, features: Sequence[Feature], chunk_rows: int, *, split: bool = False
    ) -> None:
        self.path = path
        self.chunk_rows = chunk_rows
        self.split = split
        with _opened(path, "Parquet"):
            self.file = pq.ParquetFile(path)
        names = self.file.schema_arrow.names
        missing = [feature.name for feature in features if feature.name not in names]
        if missing:
            raise BatchError(
                f"{path}: no column {', '.join(map(repr, missing[:10]))}; it has "
                f"{', '.join(map(repr, names[:10]))}{' ...' if len(names) > 10 else ''}"
            )
        self.columns = [feature.name for feature in features]

    def count_rows(self) -> int:
        """Return the number of rows, from the file's metadata."""
        return int(self.file.metadata.num_rows)

    @property
    def row_groups(self) -> int:
        """Return the number of row groups, from the file's metadata."""
        return int(self.file.metadata.num_row_groups)

    def __iter__(self) -> Iterator[Chunk]:
        """Yield the chunks in order.

        :raises BatchError: a corrupt row group.
        """
        offset = 0
        metadata = self.file.metadata
        if self.split and metadata.num_row_groups > 1:
            for group in range(metadata.num_row_groups):
                table = ParquetGroup(self.path, group, tuple(self.columns), self.chunk_rows)
                yield Chunk(offset, table)
                offset += metadata.row_group(group).num_rows
            return
        with _opened(self.path, "Parquet"):
            for batch in self.file.iter_batches(batch_size=self.chunk_rows, columns=self.columns):
                yield Chunk(offset, batch)
                offset += batch.num_rows


@dataclass(frozen=True)
class JsonText:
    """JSON lines of a file, one row each, split off by :class:`JsonLinesReader` and parsed
    where they are scored (in a worker process).

    :param lines: the rows' lines, ``n_rows`` (no blank line).
    :param numbers: the file's line number of each, from 1.
    :param path: the file, for errors.
    :param features: the model's features: the columns kept.
    """

    lines: list[bytes]
    numbers: list[int]
    path: Path
    features: tuple[Feature, ...]

    def parse(self) -> pd.DataFrame:
        """Return the rows' feature columns, ``(n_rows, n_features)``: float features get
        pandas' dtype inference (float64 where every value is a number or missing), the
        others stay objects. A feature a row lacks is a missing value there.

        :raises BatchError: a line that is not JSON or not an object, naming it.
        """
        pairs = zip(self.lines, self.numbers, strict=True)
        records = [self._record(line, number) for line, number in pairs]
        columns: dict[str, Any] = {}
        for feature in self.features:
            values = [record.get(feature.name) for record in records]
            floating = feature.datatype in ("FP64", "FP32")
            columns[feature.name] = pd.Series(values, dtype=None if floating else object)
        return pd.DataFrame(columns, index=pd.RangeIndex(len(records)))

    def _record(self, line: bytes, number: int) -> dict[str, Any]:
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            try:  # NaN, Infinity and 1e999, which the row checks refuse, as the API does
                record = json.loads(line.decode("utf-8"))
            except (ValueError, RecursionError) as error:
                raise BatchError(f"{self.path}:{number}: not JSON: {error}") from None
        if type(record) is not dict:
            raise BatchError(
                f"{self.path}:{number}: not a JSON object; each line holds one row, an object "
                "keyed by column name"
            )
        return record


class JsonLinesReader:
    """Read JSON lines, one object per row keyed by column name, in chunks of
    ``chunk_rows`` rows (:class:`JsonText`, parsed where they are scored); blank lines are
    skipped.

    Parsed as the API parses JSON: orjson, then the standard library for ``NaN``,
    ``Infinity`` and numbers beyond float64, which the row checks refuse.
    """

    format = "jsonl"

    def __init__(self, path: Path, features: Sequence[Feature], chunk_rows: int) -> None:
        self.path = path
        self.features = tuple(features)
        self.chunk_rows = chunk_rows
        with _opened(path):
            path.open("rb").close()

    def count_rows(self) -> int:
        """Return the number of lines (blank ones included), by a fast binary scan."""
        return _count_lines(self.path)

    def estimate_rows(self) -> tuple[int, bool]:
        """Return :meth:`count_rows` estimated from the file's size and its first
        :data:`SAMPLE_BYTES`, and whether it is exact (a file no larger)."""
        return _estimated_lines(self.path)

    def __iter__(self) -> Iterator[Chunk]:
        """Yield the chunks in order.

        :raises BatchError: the file cannot be read.
        """
        offset = 0
        lines: list[bytes] = []
        numbers: list[int] = []
        with _opened(self.path), self.path.open("rb") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                lines.append(line)
                numbers.append(number)
                if len(lines) == self.chunk_rows:
                    yield Chunk(offset, JsonText(lines, numbers, self.path, self.features))
                    offset += len(lines)
                    lines, numbers = [], []
        if lines:
            yield Chunk(offset, JsonText(lines, numbers, self.path, self.features))


Reader = CsvReader | ParquetReader | JsonLinesReader
READERS: dict[str, type[Reader]] = {
    "csv": CsvReader,
    "parquet": ParquetReader,
    "jsonl": JsonLinesReader,
}


@dataclass(frozen=True)
class Encoder:
    """Turn outputs into what a writer appends: CSV or JSON lines bytes, or an Arrow table
    for Parquet. It runs where the chunk is scored, in the worker processes.

    :param format: ``csv``, ``parquet`` or ``jsonl``.
    :param columns: the output columns, in order (:func:`output_columns`).
    :param schema: their Arrow types (:func:`output_schema`).
    """

    format: str
    columns: tuple[str, ...]
    schema: pa.Schema

    def encode(self, frame: pd.DataFrame) -> bytes | pa.Table:
        """Return rows ``(n_rows, n_columns)`` as the writer of :attr:`format` appends them:
        CSV (text quoted, an empty cell where missing), JSON lines (``null`` where missing),
        floats in their shortest exact form in both, or a table of :attr:`schema`."""
        if self.format == "parquet":
            return pa.Table.from_pandas(frame, schema=self.schema, preserve_index=False)
        if self.format == "csv":
            sink = pa.BufferOutputStream()
            table = pa.Table.from_pandas(frame, schema=self.schema, preserve_index=False)
            pacsv.write_csv(table, sink, write_options=CSV_WRITE)
            data: bytes = sink.getvalue().to_pybytes()
            return data
        values = [frame[name].tolist() for name in self.columns]
        dumps, names = orjson.dumps, self.columns
        option = orjson.OPT_APPEND_NEWLINE | orjson.OPT_SERIALIZE_NUMPY
        return b"".join(
            dumps(dict(zip(names, row, strict=True)), option=option)
            for row in zip(*values, strict=True)
        )


class Writer:
    """Append encoded chunks (:class:`Encoder`) to the output file, in order.

    :param handle: the file, open for writing bytes.
    :param encoder: what the chunks are encoded as; a CSV file starts with a header row, a
        Parquet file gets one row group per chunk and a footer.
    """

    def __init__(self, handle: IO[bytes], encoder: Encoder) -> None:
        self.handle = handle
        self.parquet = (
            pq.ParquetWriter(handle, encoder.schema) if encoder.format == "parquet" else None
        )
        if encoder.format == "csv":
            header = io.StringIO()
            csv.writer(header, lineterminator="\n").writerow(encoder.columns)
            handle.write(header.getvalue().encode())

    def append(self, payload: bytes | pa.Table) -> None:
        """Append one encoded chunk."""
        if self.parquet is not None:
            self.parquet.write_table(payload)
        else:
            self.handle.write(payload)

    def close(self) -> None:
        """Finish the file: Parquet's footer."""
        if self.parquet is not None:
            self.parquet.close()

    def abort(self) -> None:
        """Stop writing (the file is removed); release a Parquet writer without raising."""
        try:
            self.close()
        except Exception:  # the file is removed; a failing footer does not matter
            pass


@dataclass(frozen=True)
class Done:
    """One chunk scored and encoded.

    :param payload: the outputs, encoded for the output file.
    :param rows: the input rows of the chunk.
    :param scored: the rows scored.
    :param refused: refused rows by reason.
    :param unseen: tolerated unseen categories by feature.
    :param engine: the engine's name.
    """

    payload: bytes | pa.Table
    rows: int
    scored: int
    refused: Mapping[str, int]
    unseen: Mapping[str, int]
    engine: str


def finish_chunk(scorer: Scorer, encoder: Encoder, chunk: Chunk) -> Done:
    """Score a chunk (:func:`score_chunk`), add the ``row`` column and encode the outputs.

    :raises ScoringError: ``on_error="fail"`` and a row is refused.
    """
    if isinstance(chunk.table, CsvText | JsonText):
        chunk = Chunk(chunk.offset, chunk.table.parse(), csv=chunk.csv)
    scored = score_chunk(scorer, chunk)
    frame = scored.outputs
    frame.insert(0, ROW, frame.index.to_numpy(dtype=np.int64))
    refused = sum(scored.refused.values())
    marked = ERROR in frame.columns
    return Done(
        encoder.encode(frame),
        rows=len(frame) + (0 if marked else refused),
        scored=len(frame) - (refused if marked else 0),
        refused=scored.refused,
        unseen=scored.unseen,
        engine=scorer.engine.name,
    )


def output_schema(columns: Sequence[str], bundle: Bundle) -> pa.Schema:
    """Return the Arrow schema of the output columns, fixed by the model: ``row`` int64,
    probabilities and scores float64, predictions of the classes' type (float64 for a
    regressor), ``error`` string."""
    classes = bundle.manifest.classes
    prediction = pa.array(list(classes)).type if classes else pa.float64()
    fields = []
    for name in columns:
        if name == ROW:
            fields.append(pa.field(name, pa.int64(), nullable=False))
        elif name == ERROR:
            fields.append(pa.field(name, pa.string()))
        elif name == "prediction":
            fields.append(pa.field(name, prediction))
        else:
            fields.append(pa.field(name, pa.float64()))
    return pa.schema(fields)


@dataclass(frozen=True)
class Workers:
    """How many worker processes score a job, and why.

    :param count: processes scoring chunks, at least 1 (1 scores in the job's own process).
    :param reason: for ``workers="auto"``, why this many, one short phrase (``2 CPUs``,
        ``1 row group``, ``344 rows; 2 need 1,000,000``); ``None`` for a count given.
    """

    count: int
    reason: str | None = None


def auto_workers(
    rows: int, parts: int, cpus: int, *, exact: bool = True, part: str = "chunk"
) -> Workers:
    """Return as many worker processes as pay for themselves on an input (``workers="auto"``).

    ``n`` workers need at least ``n`` times :data:`AUTO_ROWS_PER_WORKER` rows (each one's
    share of the rows must outweigh its start-up), at least ``n`` parts to score apart, and
    at most ``cpus``.

    :param rows: the input's rows, counted (``exact``) or estimated.
    :param parts: what the workers can score apart: a Parquet file's row groups (a file of
        one is read by the job's own process), a CSV or JSON lines file's chunks.
    :param cpus: the usable CPUs (:func:`~inference_app.process.available_cpus`).
    :param part: the name of a part, for the reason.
    :returns: the count, at least 1, and the limit that set it.
    """
    per_worker = AUTO_ROWS_PER_WORKER
    by_rows = max(1, rows // per_worker)
    count = max(1, min(cpus, by_rows, parts))
    if count == cpus:
        reason = f"{cpus} CPU{'s' if cpus > 1 else ''}"
    elif count == by_rows:
        # an estimate to 3 significant digits, rounded down: never shown as the next count's rows
        unit = 10 ** max(0, len(str(rows)) - 3)
        shown = f"{rows:,}" if exact else f"about {rows // unit * unit:,}"
        reason = f"{shown} rows; {count + 1} need {(count + 1) * per_worker:,}"
    else:
        reason = f"{parts} {part}{'s' if parts != 1 else ''}"
    return Workers(count, reason)


def choose_workers(reader: Reader, counted: int | None, cpus: int) -> Workers:
    """Return :func:`auto_workers` for a reader's input, known before it is read: a Parquet
    file's rows and row groups from its metadata; a CSV or JSON lines file's rows
    ``counted`` (for the progress bar) or estimated from its size, in chunks of
    ``reader.chunk_rows``."""
    if isinstance(reader, ParquetReader):
        return auto_workers(reader.count_rows(), reader.row_groups, cpus, part="row group")
    rows, exact = reader.estimate_rows() if counted is None else (counted, True)
    chunks = -(-rows // reader.chunk_rows)
    return auto_workers(rows, chunks, cpus, exact=exact)


def score_file(
    bundle_path: Path,
    input_path: Path,
    output_path: Path,
    options: Options,
    *,
    chunk_rows: int | None = None,
    workers: int | None = None,
    progress: bool | None = None,
) -> Summary:
    """Score every row of a file with one bundle and write the outputs to another file.

    Formats follow the extensions (:data:`FORMATS`). The input is read ``chunk_rows`` rows
    at a time and each chunk is scored, then written, in order, so memory stays flat
    whatever the file's size; with ``workers > 1`` a pool of that many processes scores up
    to :data:`CHUNKS_PER_WORKER` chunks each ahead of the writer (a Parquet file's row groups,
    when it has several, each read by the process that scores it), each process forked with
    the loaded bundle and making its engine itself. The output is written to a hidden temporary file
    beside ``output_path`` and renamed to it at the end: a job that stops leaves no file.

    :param bundle_path: the bundle's version folder (:func:`find_bundle`).
    :param chunk_rows: rows per chunk, at least 1; default: :func:`default_chunk_rows`.
    :param workers: processes scoring chunks, 1 scoring in this process; default (``None``):
        as many as pay for their start-up (:func:`choose_workers`), at most
        :func:`~inference_app.process.available_cpus`; the summary says why.
    :param progress: show a progress bar on stderr (rows, rows/s, time left); default: when
        stderr is a terminal.
    :returns: what was read, scored and refused, and how long it took (seconds).
    :raises BatchError: an unknown format, a missing, unreadable or malformed input file, an
        output that cannot be written, the input given as output.
    :raises BundleError: the bundle cannot be loaded, or has no ONNX model for ``onnx``.
    :raises ScoringError: ``on_error="fail"`` and a row is refused (naming it over the whole
        input, and the feature).
    """
    started = time.perf_counter()
    source, target = format_of(input_path), format_of(output_path)
    if output_path.exists() and output_path.resolve() == input_path.resolve():
        raise BatchError(f"{output_path}: is the input file; write the outputs to another file")
    bundle = load_bundle(bundle_path, strict_sklearn_version=options.strict_sklearn_version)
    check_options(bundle, options)
    features = bundle.manifest.inputs
    if chunk_rows is None:
        chunk_rows = default_chunk_rows(len(features))
    reader = READERS[source](input_path, features, max(1, chunk_rows))
    show = sys.stderr.isatty() if progress is None else progress
    total = reader.count_rows() if show else None
    chosen = (
        choose_workers(reader, total, available_cpus())
        if workers is None
        else Workers(max(1, workers))
    )
    workers = chosen.count
    # With workers, CSV lines and Parquet row groups are read where they are scored.
    if isinstance(reader, CsvReader | ParquetReader):
        reader.split = workers > 1
    summary = Summary(
        bundle.name,
        bundle.version,
        options.method,
        options.on_error,
        workers,
        input_path,
        output_path,
        auto=chosen.reason,
    )
    columns = output_columns(bundle, options)
    encoder = Encoder(target, tuple(columns), output_schema(columns, bundle))
    # The pool forks first: before this process opens the output or starts a thread.
    with _pool(bundle, options, encoder, workers) as pool, _Output(output_path) as handle:
        writer = Writer(handle, encoder)
        bar = tqdm(
            total=total,
            unit=" rows",
            unit_scale=True,
            disable=not show,
            file=sys.stderr,
            dynamic_ncols=True,
        )
        try:
            for done in _scored(reader, bundle, options, encoder, pool, workers):
                writer.append(done.payload)
                summary.rows += done.rows
                summary.scored += done.scored
                summary.refused.update(done.refused)
                summary.unseen.update(done.unseen)
                summary.engine = done.engine
                bar.update(done.rows)
            writer.close()
        except BaseException:
            writer.abort()
            raise
        finally:
            if bar.total is not None and bar.n < bar.total:
                bar.total = bar.n  # blank lines, or line breaks in cells, were counted
            bar.close()
    summary.seconds = time.perf_counter() - started
    return summary


@contextlib.contextmanager
def _pool(
    bundle: Bundle, options: Options, encoder: Encoder, workers: int
) -> Iterator[Executor | None]:
    """Yield a pool of ``workers`` processes, each with its scorer, or ``None`` for one
    worker; stop the processes at the end, at once if the job failed."""
    if workers == 1:
        yield None
        return
    # fork: the processes start from this one's imports and its loaded, verified bundle
    # (shared pages, not loaded again); each makes its engine (an onnxruntime session must
    # not cross a fork).
    pool = ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("fork"),
        initializer=_start_worker,
        initargs=(bundle, options, encoder, workers),
    )
    try:
        # The processes fork at the first task. This process's objects are frozen then, so
        # that the workers' garbage collector does not copy the pages it shares with them.
        gc.freeze()
        try:
            pool.submit(int).result()
        finally:
            gc.unfreeze()
        yield pool
    except BaseException as error:
        pool.shutdown(wait=False, cancel_futures=True)
        # The pool would finish the chunks under way first; the job is over.
        processes: dict[int, Any] = getattr(pool, "_processes", None) or {}  # no public way
        for process in list(processes.values()):
            process.terminate()
        if isinstance(error, BrokenProcessPool):
            raise BatchError(
                f"a worker process stopped ({error}); out of memory? try fewer --workers or "
                "--chunk-rows"
            ) from None
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _scored(
    reader: Reader,
    bundle: Bundle,
    options: Options,
    encoder: Encoder,
    pool: Executor | None,
    workers: int,
) -> Iterator[Done]:
    """Yield each chunk scored and encoded, in input order; in ``pool``, with at most
    :data:`CHUNKS_PER_WORKER` chunks per worker read and not yet written."""
    if pool is None:
        scorer = _scorer(bundle, options)
        for chunk in reader:
            yield finish_chunk(scorer, encoder, chunk)
        return
    pending: deque[Future[Done]] = deque()
    for chunk in reader:
        pending.append(pool.submit(_score_in_worker, chunk))
        while len(pending) >= CHUNKS_PER_WORKER * workers:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _scorer(bundle: Bundle, options: Options) -> Scorer:
    return Scorer(
        bundle,
        method=options.method,
        on_error=options.on_error,
        engine=options.engine,
        max_text_length=options.max_text_length,
    )


#: The worker process's scorer and encoder, or why they could not be made.
_WORKER: dict[str, Any] = {}


def _start_worker(bundle: Bundle, options: Options, encoder: Encoder, workers: int) -> None:
    """Initialise a pool process: cap its native threads to its share of the CPUs, make the
    scorer of the bundle the parent loaded. An error is kept and raised by the first chunk, so
    that the parent reports it (an initializer that raises breaks the pool without saying
    why)."""
    cap_threads(max(1, available_cpus() // workers))
    try:
        _WORKER["scorer"] = _scorer(bundle, options)
        _WORKER["encoder"] = encoder
    except Exception as error:  # raised again, in the parent, by the first chunk
        _WORKER["error"] = error


def _score_in_worker(chunk: Chunk) -> Done:
    if "error" in _WORKER:
        raise _WORKER["error"]
    scorer, encoder = _WORKER["scorer"], _WORKER["encoder"]
    if not isinstance(chunk.table, ParquetGroup):
        return finish_chunk(scorer, encoder, chunk)
    # A row group, read here in batches: one Done for all of them, written as one.
    done: list[Done] = []
    offset = chunk.offset
    for batch in chunk.table.batches():
        done.append(finish_chunk(scorer, encoder, Chunk(offset, batch)))
        offset += batch.num_rows
    return _merged(done, encoder, scorer.engine.name)


def _merged(done: Sequence[Done], encoder: Encoder, engine: str) -> Done:
    """Return consecutive chunks' outputs as one :class:`Done`, their payloads joined."""
    refused: Counter[str] = Counter()
    unseen: Counter[str] = Counter()
    for part in done:
        refused.update(part.refused)
        unseen.update(part.unseen)
    payload: bytes | pa.Table
    if encoder.format == "parquet":
        tables = [part.payload for part in done if isinstance(part.payload, pa.Table)]
        payload = pa.concat_tables(tables) if tables else encoder.schema.empty_table()
    else:
        payload = b"".join(part.payload for part in done if isinstance(part.payload, bytes))
    return Done(
        payload,
        rows=sum(part.rows for part in done),
        scored=sum(part.scored for part in done),
        refused=dict(refused),
        unseen=dict(unseen),
        engine=engine,
    )


class _Output:
    """A hidden temporary file beside ``path``, renamed to ``path`` when the block ends
    without an error and removed otherwise; made with the usual permissions (umask)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        self.handle: IO[bytes] | None = None

    def __enter__(self) -> IO[bytes]:
        try:
            descriptor = os.open(self.temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except OSError as error:
            raise BatchError(f"{self.path}: cannot write: {error.strerror or error}") from None
        self.handle = os.fdopen(descriptor, "wb", buffering=1 << 20)
        return self.handle

    def __exit__(self, kind: type[BaseException] | None, *_: Any) -> None:
        assert self.handle is not None
        try:
            self.handle.close()
            if kind is None:
                os.replace(self.temporary, self.path)
        except OSError as error:
            raise BatchError(f"{self.path}: cannot write: {error.strerror or error}") from None
        finally:
            if self.temporary.exists():
                self.temporary.unlink()


class _opened:
    """Turn the errors of reading a file into :class:`BatchError`, naming the file."""

    def __init__(self, path: Path, kind: str | None = None) -> None:
        self.path = path
        self.kind = kind

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, _: Any
    ) -> None:
        if error is None or isinstance(error, (InferenceAppError, GeneratorExit)):
            return
        if isinstance(error, OSError) and not isinstance(error, pa.ArrowException):
            raise BatchError(f"{self.path}: cannot read: {error.strerror or error}") from None
        if isinstance(error, UnicodeDecodeError):
            raise BatchError(f"{self.path}: not UTF-8 text: {error}") from None
        if isinstance(error, Exception) and self.kind is not None:
            message = " ".join(str(error).split())
            raise BatchError(f"{self.path}: not a valid {self.kind} file: {message}") from None


def _count_lines(path: Path) -> int:
    """Return the number of lines of a file, a last one without a line break included."""
    count, last = 0, b"\n"
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            count += block.count(b"\n")
            last = block[-1:]
    return count + (last != b"\n")


def _estimated_lines(path: Path) -> tuple[int, bool]:
    """Return the number of lines of a file (:func:`_count_lines`), and whether it is exact:
    counted in a file of at most :data:`SAMPLE_BYTES`, else estimated from its size (bytes)
    and the mean length of the whole lines after the first (a CSV header) in its first
    :data:`SAMPLE_BYTES`."""
    with _opened(path), path.open("rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        head = handle.read(SAMPLE_BYTES)
    if len(head) >= size:
        return head.count(b"\n") + (head[-1:] not in (b"", b"\n")), True
    first, last = head.find(b"\n") + 1, head.rfind(b"\n") + 1
    lines = head.count(b"\n", first, last)
    if not lines:  # lines longer than half the sample: few of them
        return max(1, size // len(head)), False
    return 1 + round((size - first) * lines / (last - first)), False
