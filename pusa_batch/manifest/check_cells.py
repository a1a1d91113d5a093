"""One manifest chunk's cells as parsed columns, the problems found in them, and cell helpers.

`parse_columns` turns each schema column into its typed form (text, numbers, lists), adding a
problem for every cell it cannot read; the other checks read the parsed columns only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from pusa_batch import tasks as task_rules
from pusa_batch.cells import is_empty, printable, shown
from pusa_batch.errors import TaskError
from pusa_batch.manifest.schema import (
    COLUMNS,
    canonical_value,
    number_column,
    parse_path_list,
    text_column,
)

ID_TEXTS = "id (as text)"  # key in the parsed columns: the id column as a string Series
COLUMN_ORDER = {name: k for k, name in enumerate(COLUMNS)}


class Problems:
    """The (row offset, column, message) problems found in one chunk, and the cells they touch."""

    def __init__(self) -> None:
        self.found: list[tuple[int, str, str]] = []
        self.cells: set[tuple[int, str]] = set()

    def add(self, i: int, column: str, message: str) -> None:
        self.found.append((i, column, message))
        self.cells.add((i, column))

    def add_where(
        self, mask: np.ndarray, column: str, message: Callable[[Any], str], cells: Any
    ) -> None:
        """Add `message(cells[i])` for every row i where `mask` is set."""
        for i in np.flatnonzero(mask):
            self.add(int(i), column, message(cells[i]))

    def touches(self, i: int, columns: frozenset[str]) -> bool:
        return any((i, c) in self.cells for c in columns)


def parse_columns(df: pd.DataFrame, found: Problems) -> dict[str, Any]:
    cols: dict[str, Any] = {}
    for name, kind in COLUMNS.items():
        if name not in df.columns:
            continue
        s = df[name]
        if kind in ("text", "path"):
            col = text_column(s, lower=name in ("task", "fit"), allow_numbers=name == "id")
            found.add_where(col.bad, name, expected("text"), s.to_numpy(object))
            cols[name] = col.values
            if name == "id":
                cols[ID_TEXTS] = col.series
        elif kind in ("int", "float"):
            num = number_column(s, integer=kind == "int")
            what = expected("a whole number" if kind == "int" else "a number")
            found.add_where(num.bad, name, what, s.to_numpy(object))
            cols[name] = num.values
            cols[as_written(name)] = s
        else:
            cols[name] = _parse_lists(name, kind, s, found)
    return cols


def _parse_lists(name: str, kind: str, s: pd.Series, found: Problems) -> list:
    parse = {
        "ints": task_rules.parse_int_list,
        "floats": task_rules.parse_float_list,
        "paths": parse_path_list,
    }
    out: list = [None] * len(s)
    raw = s.to_numpy(dtype=object)
    for i in np.flatnonzero(~s.map(is_empty).to_numpy(dtype=bool)):
        try:
            out[i] = tuple(parse[kind](raw[i]))
        except (ValueError, TypeError, TaskError) as e:
            found.add(int(i), name, f"cannot read {shown(raw[i])}: {getattr(e, 'message', e)}")
    return out


def shown_id(value: Any) -> str | None:
    return None if value is None else printable(value)


def as_written(name: str) -> str:
    """Key in the parsed columns: a number column's cells as the manifest wrote them."""
    return f"{name} (as written)"


def present(values: np.ndarray) -> np.ndarray:
    """Elementwise `is not None` over an object array."""
    return np.not_equal(values, None)


def expected(what: str) -> Callable[[Any], str]:
    return lambda v: f"expected {what}, got {v!r}."


def missing_message(name: str) -> Callable[[Any], str]:
    return lambda _: f"{name} is empty; every row needs one."


def cell(cols: dict[str, Any], name: str, i: int) -> Any:
    col = cols.get(name)
    return None if col is None else col[i]


def take(col: Any, idx: np.ndarray) -> list:
    return [None] * len(idx) if col is None else [col[i] for i in idx]


def canonical(cols: dict[str, Any], idx: np.ndarray) -> list[str]:
    """`name=value\x1f` for every non-empty cell but the id, in schema order."""
    out = np.full(len(idx), "", dtype=object)
    for name, kind in COLUMNS.items():
        if name == "id" or name not in cols:
            continue
        cells = cols[name]
        if kind in ("int", "float"):
            values = cells[idx]
            filled = ~np.isnan(values)
            kept = values[filled]
            if kind == "int":
                huge = np.abs(kept) >= 2.0**63  # no int64 (nor one float) holds it: as written
                text = np.where(huge, 0, kept).astype(np.int64).astype(str).astype(object)
                written = cols.get(as_written(name))
                if huge.any() and written is not None:
                    text[huge] = np.asarray(written, dtype=object)[idx][filled][huge]
            else:
                text = kept.astype(str).astype(object)
        elif kind in ("text", "path"):
            values = cells[idx]
            filled = present(values)
            text = values[filled]
        else:
            values = np.empty(len(idx), dtype=object)
            values[:] = [cells[i] for i in idx]
            filled = present(values)
            text = np.array([canonical_value(kind, v) for v in values[filled]], dtype=object)
        if filled.any():
            out[filled] = out[filled] + (name + "=") + text + "\x1f"
    return list(out)


def pixels(size: str) -> int:
    h, _, w = size.partition("x")
    return int(h) * int(w)
