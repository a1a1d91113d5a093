"""Reading a manifest's cells as stored: CSV, Parquet or JSONL, local or any fsspec URL, in
chunks, never the whole file at once.

Decisions:
- A local manifest must be a regular file: a FIFO or a device would block or never end.
- What the reader finds wrong in a cell or a column that pandas would hide travels with the
  chunk in `df.attrs` for the checker: `READ_PROBLEMS` [(row offset, column, message)] (a JSONL
  NaN or a key given twice, a Parquet NaN in a number column) and `COLUMN_PROBLEMS`
  [(column, message)] (a Parquet number column of another type, emptied), with the first chunk.
- Repeated Parquet columns are named as pandas names them in a CSV (`prompt.1`), and an empty
  CSV header cell by its place ("column 4 (empty header)").
"""

from __future__ import annotations

import json
import os
import re
import stat
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pusa_batch.errors import ManifestError
from pusa_batch.manifest.check import READ_PROBLEMS
from pusa_batch.manifest.schema import COLUMNS
from pusa_batch.redaction import redact_text, redact_url, secrets_of, storage_fix

FORMATS = {".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".pq": "parquet"}
FORMATS |= {".jsonl": "jsonl", ".ndjson": "jsonl"}
COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst")
COLUMN_PROBLEMS = "pusa_batch.column_problems"  # df.attrs key: [(column, message)]
NUMBER_KINDS = ("int", "float")
_EMPTY_HEADER = re.compile(r"^Unnamed: (\d+)$")  # pandas' name for an empty header cell


def manifest_format(path: str) -> str:
    name = path.lower()
    if "://" in name:  # a URL's query is not part of its name; a local file's `?` is
        name = name.split("?", 1)[0]
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
    opts = storage_options or {}
    secrets = secrets_of(path, opts)
    shown = redact_url(path)
    _refuse_special_file(path, opts)  # first: a folder is "not a regular file", whatever its name
    kind = manifest_format(path)
    try:
        with fsspec.open(path, "rb", compression="infer", **opts) as f:
            if kind == "parquet":
                yield from _parquet_chunks(f, chunk_rows)
            elif kind == "jsonl":
                yield from _jsonl_chunks(f, chunk_rows, path)
            else:
                yield from _csv_chunks(f, chunk_rows, "\t" if kind == "tsv" else ",")
    except ManifestError:
        raise
    except FileNotFoundError as e:
        raise ManifestError(f"{shown}: manifest not found.") from e
    except pd.errors.EmptyDataError:
        raise ManifestError(
            f"{shown}: the manifest is empty; it needs a header row (id,task,prompt,...) and rows"
        ) from None
    except EOFError as e:  # gzip, bz2, xz: the compressed stream ends early
        raise ManifestError(
            f"{shown}: the compressed file ends early ({redact_text(str(e), secrets)}); it was "
            "cut while written or copied: write or copy it again."
        ) from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, pa.ArrowException) as e:
        raise ManifestError(
            f"{shown}: cannot read the manifest as {kind} ({redact_text(str(e), secrets)}); is "
            f"it a whole {kind} file?"
        ) from None
    except Exception as e:  # a storage client's own errors (botocore's, s3fs's): named, no trace
        problem = storage_fix(e, secrets)
        raise ManifestError(f"{shown}: cannot open the manifest: {problem}") from None


def _refuse_special_file(path: str, opts: dict) -> None:
    """A local manifest must be a regular file: a FIFO or a device (/dev/zero) would block or
    never end, a folder cannot be read."""
    try:
        fs, fs_path = fsspec.core.url_to_fs(path, **opts)
    except (ValueError, ImportError):
        return  # fsspec.open says what is wrong with the URL
    except Exception as e:  # noqa: BLE001 - a chained URL's outer layer (zip://...::) is read now
        problem = storage_fix(e, secrets_of(path, opts))
        raise ManifestError(f"{redact_url(path)}: cannot open the manifest: {problem}") from None
    if not getattr(fs, "local_file", False):
        return
    try:
        mode = os.stat(fs_path).st_mode
    except FileNotFoundError:
        raise ManifestError(f"{path}: manifest not found.") from None
    except OSError as e:
        raise ManifestError(f"{path}: cannot read the manifest ({e}).") from None
    if not stat.S_ISREG(mode):
        raise ManifestError(
            f"{path}: not a regular file (a folder, FIFO or device); give a .csv, .parquet "
            "or .jsonl file."
        )


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
        chunk.columns = [_header_name(name, k) for k, name in enumerate(chunk.columns)]
        yield chunk


def _header_name(name: object, position: int) -> object:
    """An empty header cell by its place ("column 4 (empty header)"), not pandas' `Unnamed: 3`."""
    match = _EMPTY_HEADER.match(str(name))
    if match and int(match[1]) == position:
        return f"column {position + 1} (empty header)"
    return name


def _parquet_chunks(f: Any, chunk_rows: int) -> Iterator[pd.DataFrame]:
    parquet = pq.ParquetFile(f)
    schema = parquet.schema_arrow
    names = _unique_names(schema.names)
    wrong = _wrong_number_columns(schema)
    first = True
    for batch in parquet.iter_batches(batch_size=chunk_rows):
        yield _parquet_frame(batch.rename_columns(names), wrong, first)
        first = False
    if first:
        yield _parquet_frame(schema.empty_table().rename_columns(names), wrong, first)


def _parquet_frame(batch: Any, wrong: dict[str, str], first: bool) -> pd.DataFrame:
    """One batch as a DataFrame: a wrong-typed column of ours emptied (its problem is named
    once, with the first batch), a NaN in a number column of ours a problem of its row."""
    df = batch.to_pandas()
    for name in _user_columns(batch.schema.names):  # pandas reads ints with nulls as floats
        column = batch.column(name)
        if pa.types.is_integer(column.type) and column.null_count:
            df[name] = pd.Series(column.to_pylist(), index=df.index, dtype=object)
    problems = []
    for name in batch.schema.names:
        if name in wrong:
            df[name] = pd.Series([None] * len(df), index=df.index, dtype=object)
        elif COLUMNS.get(name) in NUMBER_KINDS and pa.types.is_floating(batch.column(name).type):
            nan = pc.fill_null(pc.is_nan(batch.column(name)), False).to_numpy(zero_copy_only=False)
            problems += [(int(i), name, _NAN_CELL.format(name)) for i in np.flatnonzero(nan)]
    df.attrs[READ_PROBLEMS] = problems
    df.attrs[COLUMN_PROBLEMS] = list(wrong.items()) if first else []
    return df


_NAN_CELL = "{} is NaN, not a number; leave the cell empty (null) for the default, or give one."


def _unique_names(names: list[str]) -> list[str]:
    """Repeated column names as pandas names them in a CSV (`prompt`, `prompt.1`), so the
    header check says the column appears more than once."""
    seen: Counter[str] = Counter()
    out = []
    for name in names:
        out.append(name if not seen[name] else f"{name}.{seen[name]}")
        seen[name] += 1
    return out


def _wrong_number_columns(schema: pa.Schema) -> dict[str, str]:
    """{column: problem} for our number columns whose Parquet type holds no numbers
    (timestamps, text, lists...): each cell would be misread or refused one by one."""
    wrong = {}
    for field_ in schema:
        kind = COLUMNS.get(field_.name)
        if kind not in NUMBER_KINDS:
            continue
        value_type = field_.type
        if pa.types.is_dictionary(value_type):
            value_type = value_type.value_type
        if not any(
            check(value_type)
            for check in (pa.types.is_integer, pa.types.is_floating, pa.types.is_decimal)
        ) and not (pa.types.is_null(value_type) or pa.types.is_boolean(value_type)):
            what = "whole numbers (an integer column)" if kind == "int" else "numbers"
            wrong[field_.name] = (
                f"the column holds {value_type} values, but {field_.name} takes {what}; "
                f"write it as an {'int64' if kind == 'int' else 'float64'} column."
            )
    return wrong


@dataclass(frozen=True)
class _Constant:
    """JSON's NaN / Infinity as read: it would pass for an empty cell and take the default."""

    name: str


class _LineReader:
    """One JSONL line -> (record, its problems): a NaN / Infinity or a key given twice is a
    problem of that row (the key emptied, or its first value kept), not of the file."""

    def __init__(self) -> None:
        self.constants = False
        self.repeated: list[str] = []

    def _constant(self, name: str) -> _Constant:
        self.constants = True
        return _Constant(name)

    def _pairs(self, pairs: list[tuple[str, Any]]) -> dict:
        record: dict = {}
        repeated = []
        for key, value in pairs:
            if key in record:
                repeated.append(key)
            else:
                record[key] = value
        self.repeated = repeated  # the outermost object's hook runs last: the line's own
        return record

    def read(self, raw: bytes) -> tuple[Any, list[tuple[str, str]]]:
        self.constants, self.repeated = False, []
        record = json.loads(raw, parse_constant=self._constant, object_pairs_hook=self._pairs)
        if not isinstance(record, dict):
            return record, []
        problems = [
            (key, f"the key '{key}' appears more than once on this line; keep one.")
            for key in dict.fromkeys(self.repeated)
        ]
        if _ESCAPED_SURROGATE.search(raw):
            problems += _lone_surrogates(record)
        for key, value in record.items() if self.constants else ():
            constant = _constant_in(value)
            if constant:
                record[key] = None
                problems.append(
                    (
                        key,
                        f"{constant} is not a number a manifest can hold (JSON has no NaN or "
                        "Infinity); give a number, or leave the key out for the default.",
                    )
                )
        return record, problems


_ESCAPED_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")


def _has_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        return any("\ud800" <= c <= "\udfff" for c in value)
    if isinstance(value, list):
        return any(map(_has_surrogate, value))
    if isinstance(value, dict):
        return any(map(_has_surrogate, value)) or any(map(_has_surrogate, value.values()))
    return False


def _escaped(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _lone_surrogates(record: dict) -> list[tuple[str, str]]:
    """A JSON `\\ud800` with no partner decodes to no character: not text any file can hold.
    A value holding one is emptied and is a problem of its row; a key holding one is the line's."""
    problems = []
    for key, value in list(record.items()):
        if _has_surrogate(key):
            raise ValueError(
                f"a key holds a lone UTF-16 surrogate ({ascii(key)}), which is not text; "
                "fix the key's \\u escapes"
            )
        if _has_surrogate(value):
            # escaped as text (`a\\ud800b`), so no other check of the row trips on it
            record[key] = _escaped(value) if isinstance(value, str) else None
            problems.append(
                (
                    key,
                    f"holds a lone UTF-16 surrogate ({ascii(value)[:60]}), which is not text; "
                    "fix the \\u escapes (a pair such as \\ud83d\\ude00 is one character).",
                )
            )
    return problems


def _constant_in(value: Any) -> str | None:
    if isinstance(value, _Constant):
        return value.name
    if isinstance(value, list):
        return next(filter(None, map(_constant_in, value)), None)
    if isinstance(value, dict):
        return next(filter(None, map(_constant_in, value.values())), None)
    return None


def _jsonl_chunks(f: Any, chunk_rows: int, path: str) -> Iterator[pd.DataFrame]:
    records: list[dict] = []
    problems: list[tuple[int, str, str]] = []
    columns: dict[str, None] = {}
    reader = _LineReader()
    for line_no, raw in enumerate(f, start=1):
        if not raw.strip():
            continue
        try:
            record, found = reader.read(raw)
        except json.JSONDecodeError as e:
            raise ManifestError(f"{path}, line {line_no}: not valid JSON ({e.msg}).") from e
        except RecursionError:
            raise ManifestError(
                f"{path}, line {line_no}: a value is nested too deeply to read; a cell holds "
                "text, a number or a flat list."
            ) from None
        except ValueError as e:
            if "integer string conversion" in str(e):
                raise ManifestError(
                    f"{path}, line {line_no}: a number has more than 4,300 digits; no column "
                    "takes one that long (a seed is at most 20 digits)"
                ) from None
            raise ManifestError(f"{path}, line {line_no}: {e}") from None
        if not isinstance(record, dict):
            raise ManifestError(f"{path}, line {line_no}: each line must be a JSON object.")
        problems += [(len(records), key, message) for key, message in found]
        columns.update(dict.fromkeys(record))
        records.append(record)
        if len(records) == chunk_rows:
            yield _jsonl_frame(records, list(columns), problems)
            records, problems = [], []
    if records or not columns:
        yield _jsonl_frame(records, list(columns), problems)


def _jsonl_frame(
    records: list[dict], columns: list[str], problems: list[tuple[int, str, str]]
) -> pd.DataFrame:
    df = pd.DataFrame.from_records(records, columns=columns)
    for name in _user_columns(columns):  # pandas makes [1, missing] floats: keep JSON's types
        if df[name].dtype.kind == "f" and df[name].isna().any():
            df[name] = pd.Series([r.get(name) for r in records], index=df.index, dtype=object)
    df.attrs[READ_PROBLEMS] = problems
    return df


def _user_columns(names: Iterable[str]) -> list[str]:
    return [name for name in names if str(name).strip() not in COLUMNS]
