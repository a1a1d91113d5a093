"""Manifest cell parsers: frame lists ('0,20', '[0, 20]', '0..12') and number lists.

`tasks` re-exports `parse_int_list` and `parse_float_list`, which the manifest code reads there.
`is_empty` is the one rule for an empty cell, in every manifest format; `printable` is how an id,
a cell or a column name from a manifest is shown in a message.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from pusa_batch.errors import TaskError, printable  # noqa: F401 - printable: re-exported

_RANGE = re.compile(r"^\s*([+-]?\d+)\s*\.\.\s*([+-]?\d+)\s*$")
_INT = re.compile(r"^\s*[+-]?\d+\s*$")
MAX_LISTED = 100_000  # frames one cell may list: far above any clip; a bound on memory
_SHOWN = 60  # characters of a cell quoted in a message


def shown(cell: Any) -> str:
    """A cell as quoted in a message: its repr, cut to a readable length."""
    text = repr(cell)
    return text if len(text) <= _SHOWN else f"{text[: _SHOWN - 5]}...{text[-4:]}"


def is_empty(value: Any) -> bool:
    """The one empty-cell rule: None, NaN, pandas' NA / NaT, blank text, or an empty list."""
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, float):
        return math.isnan(value)
    if type(value).__name__ in ("NAType", "NaTType"):
        return True
    if hasattr(value, "__len__") and getattr(value, "ndim", 1) != 0:
        return len(value) == 0
    if getattr(value, "ndim", None) == 0:  # a numpy scalar
        return is_empty(value.item())
    return False


def _cell_items(value: Any, column: str, example: str) -> list[Any]:
    """Split a cell (text, JSON array, list, tuple, numpy array or scalar) into its entries."""
    if is_empty(value):
        return []
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                parsed = json.loads(text)
            except json.JSONDecodeError:
                raise TaskError(
                    column, f"cannot read {shown(value)}: write e.g. {example}"
                ) from None
            return parsed if isinstance(parsed, list) else [parsed]
        return [t for t in text.split(",") if t.strip()]
    if hasattr(value, "tolist"):  # numpy arrays and scalars, without importing numpy
        value = value.tolist()
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _scalar(item: Any) -> Any:
    return item.item() if hasattr(item, "item") and not isinstance(item, str) else item


def parse_int_list(value: Any, column: str = "cond_frames") -> tuple[int, ...]:
    """'0,20', '[0, 20]', '0..12', '-4..-1' (inclusive), lists, tuples, arrays -> ints."""
    out: list[int] = []
    items = _cell_items(value, column, "0,20 or [0, 20] or 0..12")
    if len(items) > MAX_LISTED:
        raise _too_many(column, len(items))
    for item in items:
        item = _scalar(item)
        if isinstance(item, str):
            out.extend(_int_token(item, value, column, MAX_LISTED - len(out)))
        elif isinstance(item, bool) or not isinstance(item, (int, float)):
            raise TaskError(column, f"{item!r} in {shown(value)} is not a frame number")
        elif isinstance(item, float) and not item.is_integer():
            raise TaskError(column, f"{item!r} in {shown(value)} is not a whole frame number")
        else:
            out.append(int(item))
    return tuple(out)


def _too_many(column: str, count: int) -> TaskError:
    return TaskError(
        column, f"lists {count:,} frames; a cell lists at most {MAX_LISTED:,} (a clip has fewer)"
    )


def _int_token(token: str, cell: Any, column: str, room: int = MAX_LISTED) -> list[int]:
    if _INT.match(token):
        return [int(token)]
    match = _RANGE.match(token)
    if not match:
        raise TaskError(
            column, f"cannot read {token.strip()!r} in {shown(cell)}: use e.g. 0,20 or 0..12"
        )
    lo, hi = int(match[1]), int(match[2])
    if (lo < 0) != (hi < 0) or lo > hi:
        raise TaskError(
            column,
            f"range {token.strip()!r} in {shown(cell)} must run upwards with both ends counted the "
            "same way, e.g. 0..12 or -4..-1",
        )
    if hi - lo + 1 > room:
        raise _too_many(column, hi - lo + 1)
    return list(range(lo, hi + 1))


def parse_float_list(value: Any, column: str = "noise_multipliers") -> tuple[float, ...]:
    """'0.2,0.5', '[0.2, 0.5]', a number, lists, tuples, arrays -> floats."""
    out: list[float] = []
    for item in _cell_items(value, column, "0.2,0.5 or [0.2, 0.5]"):
        item = _scalar(item)
        if isinstance(item, bool) or not isinstance(item, (int, float, str)):
            raise TaskError(column, f"{item!r} in {shown(value)} is not a number")
        try:
            number = float(item)
        except ValueError:
            raise TaskError(column, f"{item!r} in {shown(value)} is not a number") from None
        if math.isnan(number):
            raise TaskError(column, f"{shown(value)} holds NaN; give numbers between 0 and 1")
        out.append(number)
    return tuple(out)
