"""Manifests: the streaming loader, the whole-file validator and resolved `Item`s.

The schema (columns, defaults, `Item`) is in `manifest.schema`, reading each format in
`manifest.formats`, the header's checks and the user's own columns in `manifest.columns`,
fingerprints in `manifest.fingerprint` (re-exported here); `manifests/README.md` is the
user-facing description of all of them.

Decisions:
- The plan's second pass reads only the rows its first pass chose (`iter_chosen_items`): other
  chunks are parsed but never checked, and reading stops after the last chosen chunk.
- The header is checked where each column first appears: a JSONL key first seen deep in the
  file is checked (and carried) as one in the first line is.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from pusa_batch.cells import printable
from pusa_batch.errors import ManifestError, RowProblem
from pusa_batch.item import Item
from pusa_batch.manifest.check import READ_PROBLEMS, CheckedChunk, ChunkChecker
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
from pusa_batch.manifest.formats import (  # noqa: F401 - re-exported: read's old face
    COLUMN_PROBLEMS,
    COMPRESSIONS,
    FORMATS,
    iter_raw_chunks,
    manifest_format,
)
from pusa_batch.manifest.schema import manifest_folder, rules_from_spec

MAX_PROBLEMS_KEPT = 1000


class ManifestWarning(UserWarning):
    """Something in the manifest is ignored (kept for callers that filter it; nothing in a
    manifest is ignored silently any more: the user's own columns are carried as `extra`)."""


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
    fold_case: bool = False,
) -> Iterator[tuple[CheckedChunk, list[RowProblem], list[str]]]:
    """(checked chunk, header problems first seen in it, the extra columns so far)."""
    checker = ChunkChecker(
        rules_from_spec(spec),
        manifest_folder(path),
        check_files=check_files,
        storage_options=storage_options,
        fold_case=fold_case,
    )
    first_row = 1
    columns = _Columns(strict_columns)
    for df in iter_raw_chunks(path, chunk_rows, storage_options=storage_options):
        df.columns = [str(c).strip() for c in df.columns]
        header_problems = columns.check(list(df.columns))
        header_problems += [
            RowProblem(0, None, printable(column), printable(message))
            for column, message in df.attrs.get(COLUMN_PROBLEMS, ())
        ]
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
    fold_case: bool = False,
) -> ValidationReport:
    """Check every row and report every problem (the first MAX_PROBLEMS_KEPT are kept).

    `spec` is a pipeline spec (duck-typed); None means Pusa-Wan rules and built-in defaults.
    `check_files` probes every input file's headers (images and videos are never decoded).
    `strict_columns` makes every column that is not ours a problem (else it is carried as
    extra metadata, listed in `extra_columns`). `fold_case` makes ids that differ only in case
    (or in how an accent is written) duplicates, for an output root that cannot tell them apart.
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
        fold_case=fold_case,
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
    if report.rows == 0 and report.ok:
        raise ManifestError(_NO_ROWS.format(path))
    return report


_NO_ROWS = (
    "{}: the manifest has no rows; add at least one row (task, prompt, ...) under the header."
)


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


def _refuse_read_problems(df: pd.DataFrame, offsets: np.ndarray, first_row: int, path: str):
    """A chosen row the reader found a problem in: the manifest changed since it was checked."""
    chosen = set(map(int, offsets))
    for offset, column, message in df.attrs.get(READ_PROBLEMS, ()):
        if offset in chosen:
            raise ManifestError(
                f"{path} changed while the run planned it: row {first_row + offset}, column "
                f"'{printable(column)}': {printable(message)} Rerun to plan it again."
            )


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
            _refuse_read_problems(df, offsets, first_row, path)
            rows = df.iloc[np.asarray(offsets, dtype=np.int64)].reset_index(drop=True)
            rows.attrs = {}
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
