"""Manifests: the streaming loader, the whole-file validator and resolved `Item`s.

The schema (columns, defaults, `Item`) is in `manifest.schema`, the header's checks and the
user's own columns in `manifest.columns`, fingerprints in `manifest.fingerprint` (re-exported
here); `manifests/README.md` is the user-facing description of all of them.

Decisions:
- The plan's second pass reads only the rows its first pass chose (`iter_chosen_items`): other
  chunks are parsed but never checked, and reading stops after the last chosen chunk.
- The header is checked where each column first appears: a JSONL key first seen deep in the
  file is checked (and carried) as one in the first line is.
"""

from __future__ import annotations

import json
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pusa_batch.errors import ManifestError, RowProblem
from pusa_batch.item import Item
from pusa_batch.manifest.check import CheckedChunk, ChunkChecker
from pusa_batch.manifest.columns import check_header, extra_note
from pusa_batch.manifest.fingerprint import (  # noqa: F401 - re-exported: read's old face
    ROW_FIELDS,
    SAMPLER_VERSION,
    TEMPLATE_COLUMNS,
    FingerprintTemplate,
    chunk_fingerprints,
    content_hash,
    fingerprint_payload,
    fingerprint_text,
    item_fingerprint,
    plain_t2v_template,
    resolved_conditioning,
)
from pusa_batch.manifest.schema import COLUMNS, manifest_folder, rules_from_spec

MAX_PROBLEMS_KEPT = 1000
FORMATS = {".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".pq": "parquet"}
FORMATS |= {".jsonl": "jsonl", ".ndjson": "jsonl"}
COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst")


class ManifestWarning(UserWarning):
    """Something in the manifest is ignored (kept for callers that filter it; nothing in a
    manifest is ignored silently any more: the user's own columns are carried as `extra`)."""


# --------------------------------------------------------------------------- loading


def manifest_format(path: str) -> str:
    name = path.lower().split("?", 1)[0]
    for comp in COMPRESSIONS:
        name = name.removesuffix(comp)
    for ext, kind in FORMATS.items():
        if name.endswith(ext):
            return kind
    raise ManifestError(
        f"{path}: unknown manifest format. Use a .csv, .tsv, .parquet or .jsonl file "
        "(optionally .gz-compressed for CSV and JSONL)."
    )


def iter_raw_chunks(
    path: str, chunk_rows: int = 65536, *, storage_options: dict | None = None
) -> Iterator[pd.DataFrame]:
    """Yield the manifest as DataFrames of at most `chunk_rows` rows, cells as stored.

    CSV cells come as text (empty cell = NaN); Parquet and JSONL keep their types (lists stay
    lists). Local paths and fsspec URLs both work; the file is never read whole.
    """
    kind = manifest_format(path)
    opts = storage_options or {}
    try:
        with fsspec.open(path, "rb", compression="infer", **opts) as f:
            if kind == "parquet":
                yield from _parquet_chunks(f, chunk_rows)
            elif kind == "jsonl":
                yield from _jsonl_chunks(f, chunk_rows, path)
            else:
                yield from _csv_chunks(f, chunk_rows, "\t" if kind == "tsv" else ",")
    except FileNotFoundError as e:
        raise ManifestError(f"{path}: manifest not found.") from e
    except pd.errors.EmptyDataError:
        raise ManifestError(
            f"{path}: the manifest is empty; it needs a header row (id,task,prompt,...) and rows"
        ) from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, pa.ArrowException) as e:
        if isinstance(e, ManifestError):
            raise
        raise ManifestError(
            f"{path}: cannot read the manifest as {kind} ({e}); is it a whole {kind} file?"
        ) from None


def _csv_chunks(f: Any, chunk_rows: int, sep: str) -> Iterator[pd.DataFrame]:
    reader = pd.read_csv(  # raises EmptyDataError for a file with no header at all
        f,
        sep=sep,
        dtype=str,
        keep_default_na=False,
        na_values=[""],
        index_col=False,
        chunksize=chunk_rows,
    )
    while True:
        with warnings.catch_warnings():  # pandas only warns when a row has too many cells
            warnings.simplefilter("error", pd.errors.ParserWarning)
            try:
                chunk = next(reader)
            except StopIteration:
                return
            except pd.errors.ParserWarning as e:
                raise pd.errors.ParserError(
                    "a row has more cells than the header; quote cells that contain commas"
                ) from e
        yield chunk


def _parquet_chunks(f: Any, chunk_rows: int) -> Iterator[pd.DataFrame]:
    parquet = pq.ParquetFile(f)
    empty = True
    for batch in parquet.iter_batches(batch_size=chunk_rows):
        empty = False
        df = batch.to_pandas()
        for name in _user_columns(batch.schema.names):  # pandas reads ints with nulls as floats
            column = batch.column(name)
            if pa.types.is_integer(column.type) and column.null_count:
                df[name] = pd.Series(column.to_pylist(), index=df.index, dtype=object)
        yield df
    if empty:
        yield parquet.schema_arrow.empty_table().to_pandas()


def _refuse_constant(name: str) -> None:
    """JSON's NaN / Infinity would pass for an empty cell and silently take the default."""
    raise ValueError(
        f"{name} is not a value a manifest can hold; leave the key out for the default."
    )


def _jsonl_chunks(f: Any, chunk_rows: int, path: str) -> Iterator[pd.DataFrame]:
    records: list[dict] = []
    columns: dict[str, None] = {}
    for line_no, raw in enumerate(f, start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw, parse_constant=_refuse_constant)
        except json.JSONDecodeError as e:
            raise ManifestError(f"{path}, line {line_no}: not valid JSON ({e.msg}).") from e
        except ValueError as e:
            raise ManifestError(f"{path}, line {line_no}: {e}") from None
        if not isinstance(record, dict):
            raise ManifestError(f"{path}, line {line_no}: each line must be a JSON object.")
        columns.update(dict.fromkeys(record))
        records.append(record)
        if len(records) == chunk_rows:
            yield _jsonl_frame(records, list(columns))
            records = []
    if records or not columns:
        yield _jsonl_frame(records, list(columns))


def _jsonl_frame(records: list[dict], columns: list[str]) -> pd.DataFrame:
    df = pd.DataFrame.from_records(records, columns=columns)
    for name in _user_columns(columns):  # pandas makes [1, missing] floats: keep JSON's types
        if df[name].dtype.kind == "f" and df[name].isna().any():
            df[name] = pd.Series([r.get(name) for r in records], index=df.index, dtype=object)
    return df


def _user_columns(names: Iterable[str]) -> list[str]:
    return [name for name in names if str(name).strip() not in COLUMNS]


# --------------------------------------------------------------------------- validation


@dataclass
class ValidationReport:
    rows: int
    problems: list[RowProblem]  # the first MAX_PROBLEMS_KEPT, in row order
    task_counts: dict[str, int]
    problem_count: int = 0  # all problems found, kept or not
    bad_rows: int = 0
    extra_columns: list[str] = field(default_factory=list)  # the user's own, carried as `extra`

    @property
    def ok(self) -> bool:
        return self.problem_count == 0

    @property
    def unknown_columns(self) -> list[str]:
        """The name before 0.3 (they were ignored then)."""
        return self.extra_columns

    def extra_note(self) -> str | None:
        """ "carried as extra metadata: ...", or None without extra columns."""
        return extra_note(self.extra_columns) if self.extra_columns else None

    def summary(self, path: str, shown: int = 20) -> str:
        lines = [f"{path}: {self.problem_count} problem(s) in {self.bad_rows} of {self.rows} rows."]
        lines += [f"  {p}" for p in self.problems[:shown]]
        if self.problem_count > shown:
            lines.append(
                f"  ... and {self.problem_count - shown} more (`pusa-batch validate` lists all)."
            )
        return "\n".join(lines)

    def raise_for_problems(self, path: str) -> None:
        if not self.ok:
            raise ManifestError(self.summary(path), self.problems)


@dataclass
class _Columns:
    """The columns seen so far while streaming a manifest, and the user's own among them."""

    strict: bool
    seen: set[str] = field(default_factory=set)
    extra: list[str] = field(default_factory=list)

    def check(self, columns: list[str]) -> list[RowProblem]:
        """Problems of the columns not seen before (the required ones on the first chunk)."""
        new = [c for c in columns if c not in self.seen]
        if not new:
            return []
        header = check_header(columns, strict=self.strict, required=not self.seen, only=new)
        self.seen.update(new)
        self.extra += header.extra
        return list(header.problems)


def _checked_chunks(
    path: str,
    spec: Any | None,
    *,
    check_files: bool,
    chunk_rows: int,
    storage_options: dict | None,
    strict_columns: bool = False,
) -> Iterator[tuple[CheckedChunk, list[RowProblem], list[str]]]:
    """(checked chunk, header problems first seen in it, the extra columns so far)."""
    checker = ChunkChecker(
        rules_from_spec(spec),
        manifest_folder(path),
        check_files=check_files,
        storage_options=storage_options,
    )
    first_row = 1
    columns = _Columns(strict_columns)
    for df in iter_raw_chunks(path, chunk_rows, storage_options=storage_options):
        df.columns = [str(c).strip() for c in df.columns]
        header_problems = columns.check(list(df.columns))
        chunk = checker.check(df, first_row, extra=columns.extra)
        first_row += len(df)
        yield chunk, header_problems, columns.extra


def validate_manifest(
    path: str,
    spec: Any | None = None,
    *,
    check_files: bool = True,
    chunk_rows: int = 65536,
    storage_options: dict | None = None,
    strict_columns: bool = False,
) -> ValidationReport:
    """Check every row and report every problem (the first MAX_PROBLEMS_KEPT are kept).

    `spec` is a pipeline spec (duck-typed); None means Pusa-Wan rules and built-in defaults.
    `check_files` probes every input file's headers (images and videos are never decoded).
    `strict_columns` makes every column that is not ours a problem (else it is carried as
    extra metadata, listed in `extra_columns`).
    """
    report = ValidationReport(rows=0, problems=[], task_counts={})
    counts: Counter[str] = Counter()
    for chunk, header_problems, extra in _checked_chunks(
        path,
        spec,
        check_files=check_files,
        chunk_rows=chunk_rows,
        storage_options=storage_options,
        strict_columns=strict_columns,
    ):
        report.extra_columns = list(extra)
        for problem in header_problems + chunk.problems:
            report.problem_count += 1
            if len(report.problems) < MAX_PROBLEMS_KEPT:
                report.problems.append(problem)
        report.rows += chunk.n
        report.bad_rows += int(chunk.bad.sum())
        counts.update(chunk.task_counts())
    report.task_counts = dict(sorted(counts.items()))
    return report


def iter_items(
    path: str,
    spec: Any | None = None,
    *,
    check_files: bool = False,
    chunk_rows: int = 65536,
    storage_options: dict | None = None,
    strict_columns: bool = False,
) -> Iterator[Item]:
    """Resolved, frozen `Item`s in manifest order, defaults filled in from `spec`; the user's
    own columns are in each item's `extra`.

    Raises `ManifestError` at the first chunk holding a bad row, before yielding any item of that
    chunk. Call `validate_manifest` first to see every problem at once and to probe input files.
    """
    for chunk in iter_checked_chunks(
        path,
        spec,
        check_files=check_files,
        chunk_rows=chunk_rows,
        storage_options=storage_options,
        strict_columns=strict_columns,
    ):
        yield from chunk.items()


def iter_checked_chunks(
    path: str,
    spec: Any | None = None,
    *,
    check_files: bool = False,
    chunk_rows: int = 65536,
    storage_options: dict | None = None,
    strict_columns: bool = False,
) -> Iterator[CheckedChunk]:
    """The manifest's checked chunks of `chunk_rows` rows (columns parsed, ids resolved), in
    order; `ManifestError` at the first chunk holding a bad row, as `iter_items`."""
    for chunk, header_problems, _ in _checked_chunks(
        path,
        spec,
        check_files=check_files,
        chunk_rows=chunk_rows,
        storage_options=storage_options,
        strict_columns=strict_columns,
    ):
        if header_problems or chunk.problems:
            report = ValidationReport(
                rows=chunk.first_row + chunk.n - 1,
                problems=(header_problems + chunk.problems)[:MAX_PROBLEMS_KEPT],
                task_counts={},
                problem_count=len(header_problems) + len(chunk.problems),
                bad_rows=int(chunk.bad.sum()),
            )
            report.raise_for_problems(path)
        yield chunk


def chunk_items(chunk: CheckedChunk, rows: Iterable[int]) -> Iterator[Item]:
    """The chunk's items at these row offsets."""
    for row in rows:
        yield chunk._item(int(row))


def iter_chosen_items(
    path: str,
    spec: Any | None,
    chosen: Mapping[int, np.ndarray],
    *,
    chunk_rows: int,
    storage_options: dict | None = None,
) -> Iterator[Item]:
    """The items at `chosen[k]` (row offsets in chunk k of `chunk_rows` rows, counted from 0),
    in manifest order. Only those rows are checked; reading stops after the last chosen chunk.

    The manifest was checked whole before: a problem now means it changed since, and is an error.
    """
    if not chosen:
        return
    last = max(chosen)
    checker = ChunkChecker(
        rules_from_spec(spec),
        manifest_folder(path),
        check_files=False,
        storage_options=storage_options,
    )
    first_row = 1
    for index, df in enumerate(iter_raw_chunks(path, chunk_rows, storage_options=storage_options)):
        offsets = chosen.get(index)
        if offsets is not None and len(offsets):
            df.columns = [str(c).strip() for c in df.columns]
            rows = df.iloc[np.asarray(offsets, dtype=np.int64)].reset_index(drop=True)
            chunk = checker.check(rows, first_row, extra=check_header(df.columns).extra)
            if chunk.problems:
                problem = chunk.problems[0]
                where = first_row + int(offsets[problem.row - first_row])
                raise ManifestError(
                    f"{path} changed while the run planned it: row {where}, column "
                    f"'{problem.column}': {problem.message} Rerun to plan it again."
                )
            for offset, item in zip(offsets, chunk.items(), strict=True):
                yield replace(item, row=first_row + int(offset))
        first_row += len(df)
        if index >= last:
            return
