"""Writing manifests: rows streamed to Parquet, CSV or JSONL, each cell in its manifest type.

`write_manifest` is the public entry; the builders use `write_rows`, which also counts tasks.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pusa_batch.cells import is_empty, printable
from pusa_batch.errors import ManifestError, RowProblem
from pusa_batch.manifest.schema import COLUMNS

FORMATS = {".parquet": "parquet", ".csv": "csv", ".jsonl": "jsonl"}
CHUNK_ROWS = 20_000
_ARROW = {
    "text": pa.string(),
    "path": pa.string(),
    "int": pa.int64(),
    "float": pa.float64(),
    "ints": pa.list_(pa.int64()),
    "floats": pa.list_(pa.float64()),
    "paths": pa.list_(pa.string()),
}


def _write_format(path: str) -> str:
    suffix = os.path.splitext(str(path))[1].lower()
    if suffix not in FORMATS:
        raise ManifestError(f"{path}: cannot write this format; name it .parquet, .csv or .jsonl")
    return FORMATS[suffix]


def plain_value(value: Any) -> Any:
    """numpy scalars and arrays to Python values; NaN to None."""
    if isinstance(value, np.ndarray):
        return [plain_value(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, (list, tuple)):
        return [plain_value(v) for v in value]
    return None if isinstance(value, float) and math.isnan(value) else value


def _as_list(value: Any) -> list:
    if isinstance(value, str):
        text = value.strip()
        return json.loads(text) if text.startswith("[") else [v.strip() for v in text.split(",")]
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def as_int(value: Any) -> int:
    if isinstance(value, bool):
        raise TypeError(f"expected an integer, got {value!r}")
    number = float(value)
    if not number.is_integer():
        raise ValueError(f"expected an integer, got {value!r}")
    return int(number)


def normalise_cell(kind: str | None, value: Any) -> Any:
    """A cell in its manifest type (CSV text '10' -> 10, '[0.2,0.5]' -> list); raises ValueError."""
    value = plain_value(value)
    if kind is None:
        return value
    if is_empty(value) or (isinstance(value, list) and not value):
        return None
    if kind in ("text", "path"):
        return str(value)
    if kind == "int":
        return as_int(value)
    if kind == "float":
        return float(value)
    cast = {"ints": as_int, "floats": float, "paths": str}[kind]
    try:
        return [cast(v) for v in _as_list(value)]
    except json.JSONDecodeError as e:
        raise ValueError(f"not a valid JSON array ({e.msg}): {value!r}") from e


_FAST = {"text": str, "path": str, "int": int, "float": float}


def _normalise_column(
    column: str, values: list, rows: list[dict], first_row: int, problems: list
) -> list:
    kind = COLUMNS.get(column)
    fast = _FAST.get(kind)
    if kind is None or (fast and all(type(v) is fast or v is None for v in values)):
        return values if kind else [plain_value(v) for v in values]
    out = []
    for offset, value in enumerate(values):
        try:
            out.append(normalise_cell(kind, value))
        except (TypeError, ValueError) as e:
            problems.append(_problem(first_row + offset, rows[offset].get("id"), column, str(e)))
            out.append(None)
    return out


def _problem(row: int, given_id: Any, column: str, message: str) -> RowProblem:
    """A problem of a row being written, its id, column and message printable."""
    shown = None if is_empty(given_id) else printable(given_id)
    return RowProblem(row, shown, printable(column), printable(message))


def _normalise_chunk(rows: list[dict], columns: list[str], first_row: int) -> dict[str, list]:
    """Rows to typed columns; every bad cell of the chunk is reported at once."""
    problems: list[RowProblem] = []
    extra = set().union(*map(dict.keys, rows)) - set(columns)
    for offset, row in enumerate(rows):
        for name in sorted(extra.intersection(row)):
            message = "column not among the manifest's columns (those of the first rows)"
            problems.append(_problem(first_row + offset, row.get("id"), name, message))
    table = {
        c: _normalise_column(c, [r.get(c) for r in rows], rows, first_row, problems)
        for c in columns
    }
    if problems:
        shown = "".join(f"\n  {p}" for p in problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise ManifestError(
            f"{len(problems)} bad cell(s) while writing the manifest:{shown}{more}", problems
        )
    return table


def _arrow_schema(table: dict[str, list]) -> pa.Schema:
    fields = []
    for column, values in table.items():
        if column in COLUMNS:
            kind = _ARROW[COLUMNS[column]]
        else:
            kind = pa.array(values).type
            kind = pa.string() if pa.types.is_null(kind) else kind
        fields.append(pa.field(column, kind))
    return pa.schema(fields)


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, dict, bool)):
        return json.dumps(value, ensure_ascii=False)
    return repr(value) if isinstance(value, float) else str(value)


class _Sink:
    """Writes typed column chunks in one of the three formats to an open binary file."""

    def __init__(self, fmt: str, f, first: dict[str, list]):
        self.fmt, self.columns = fmt, list(first)
        if fmt == "parquet":
            self.schema = _arrow_schema(first)
            self.writer = pq.ParquetWriter(f, self.schema)
        else:
            self.text = io.TextIOWrapper(f, encoding="utf-8", newline="")
            if fmt == "csv":
                self.csv = csv.writer(self.text)
                self.csv.writerow(self.columns)

    def write(self, table: dict[str, list], first_row: int) -> None:
        if self.fmt == "parquet":
            try:
                self.writer.write_table(pa.Table.from_pydict(table, schema=self.schema))
            except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
                raise ManifestError(
                    f"rows from {first_row}: a column changes type ({e}); make each column "
                    "hold one kind of value"
                ) from e
        elif self.fmt == "csv":
            cells = [
                v if _FAST.get(COLUMNS.get(c)) is str else map(_csv_cell, v)
                for c, v in table.items()
            ]
            self.csv.writerows(zip(*cells, strict=True))
        else:
            dumps, names = json.dumps, self.columns
            self.text.writelines(
                dumps(dict(zip(names, row, strict=True)), ensure_ascii=False) + "\n"
                for row in zip(*table.values(), strict=True)
            )

    def close(self) -> None:
        if self.fmt == "parquet":
            self.writer.close()
        else:
            self.text.flush()
            self.text.detach()


def _chunks(rows: Iterable[dict], size: int) -> Iterator[list[dict]]:
    iterator = iter(rows)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def write_manifest(
    rows: Iterable[dict],
    out_path: str,
    *,
    columns: Sequence[str] | None = None,
    chunk_rows: int | None = None,
    storage_options: dict | None = None,
) -> int:
    """Stream rows to Parquet / CSV / JSONL (by suffix); returns the number of rows written.

    Columns are ``columns`` or those of the first chunk. Known manifest columns get their typed
    form (lists are Parquet list columns, JSON arrays in CSV). A local file is written to a
    temporary name and renamed, so a failed build never leaves a half manifest behind.
    """
    count, _ = write_rows(rows, os.fspath(out_path), columns, chunk_rows, storage_options)
    return count


def write_rows(rows, out, columns, chunk_rows=None, storage_options=None):
    """write_manifest's body; also returns the task counts."""
    chunk_rows = chunk_rows or CHUNK_ROWS
    fmt = _write_format(out)
    local = "://" not in out or out.startswith("file://")
    target = out.removeprefix("file://") + f".tmp-{os.getpid()}" if local else out
    if local:
        os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
    count, sink, tasks = 0, None, Counter()
    try:
        with fsspec.open(target, "wb", **(storage_options or {})) as f:
            for chunk in _chunks(rows, chunk_rows):
                names = columns or (
                    sink.columns if sink else dict.fromkeys(itertools.chain(*chunk))
                )
                table = _normalise_chunk(chunk, list(names), count + 1)
                sink = sink or _Sink(fmt, f, table)
                sink.write(table, count + 1)
                tasks.update(map(str, table.get("task", ())))
                count += len(chunk)
            if sink is None:
                sink = _Sink(fmt, f, {c: [] for c in columns or ("id", "task", "prompt")})
            sink.close()
        if local:
            os.replace(target, out.removeprefix("file://"))
    finally:
        if local and os.path.exists(target):
            os.remove(target)
    return count, tasks
