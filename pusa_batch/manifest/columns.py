"""A manifest's header: our columns, near misses of ours, and the user's own (`extra`) columns.

Decisions:
- A column that is not ours but is one slip from one of ours (`sed`, `num_frame`,
  `negative_promt`; see `nearest_column`) or repeats a column (`seed.1`, pandas' name for a
  second `seed`) is an error: its values would silently be ignored and the default used.
  A name that is the start of one of ours or one of its words (`guidance`, `negative`,
  `frames`) is carried, but the summary line asks "did you mean guidance_scale?".
  Any other column is the user's own metadata: it is carried into
  each item (`Item.extra`), its marker and the index, and named once in the summary.
  `strict_columns` makes those an error too.
- Extra values keep their type where Arrow and JSON both can: text, whole numbers, numbers,
  true/false; an empty cell is null. A column of any other kind (lists, dates, a mix of texts and
  numbers) is carried as text. CSV cells are text, so a CSV's extra columns are text: use Parquet
  or JSONL to keep numbers. Typing is column-wise (Arrow), and a manifest without extra columns
  pays nothing for them.
- Extra columns never enter an item's fingerprint or its derived id: relabelling a manifest
  regenerates nothing (the done items keep the labels of the run that made them).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from pusa_batch.cells import printable
from pusa_batch.errors import RowProblem
from pusa_batch.manifest.schema import COLUMNS, DEFAULTED_COLUMNS, REQUIRED_COLUMNS

_MANGLED = re.compile(r"^(?P<name>.+)\.(?P<n>\d+)$")  # how pandas renames a repeated header


@dataclass(frozen=True)
class Header:
    """What a manifest's columns say: problems (row 0) and the user's own columns, in order."""

    problems: tuple[RowProblem, ...]
    extra: tuple[str, ...]


def check_header(
    columns: Iterable[str],
    *,
    strict: bool = False,
    required: bool = True,
    only: Iterable[str] | None = None,
) -> Header:
    """The header's problems (missing required columns with `required`, near misses, repeats,
    and with `strict` every column that is not ours) and its extra columns; with `only`, of
    those columns alone (the others were checked before)."""
    columns = [str(c) for c in columns]
    checked = columns if only is None else [str(c) for c in only]
    problems = [
        RowProblem(0, None, name, f"the manifest has no '{name}' column; add it.")
        for name in (REQUIRED_COLUMNS if required else ())
        if name not in columns
    ]
    extra = []
    for name in (c for c in checked if c not in COLUMNS):
        problem = column_problem(name, columns)
        if problem is None and strict:
            problem = strict_problem(name)
        if problem is None:
            extra.append(name)
        else:
            problems.append(RowProblem(0, None, printable(name), problem))
    return Header(tuple(problems), tuple(extra))


def column_problem(name: str, columns: Iterable[str] = ()) -> str | None:
    """The problem with a column that is not ours but looks like one of ours (or repeats a
    column of the manifest), else None: then it is the user's own."""
    mangled = _MANGLED.match(name)
    if mangled and (mangled["name"] in COLUMNS or mangled["name"] in set(columns)):
        return f"the column '{printable(mangled['name'])}' appears more than once; keep one."
    close = nearest_column(name)
    if close:
        return (
            f"unknown column '{printable(name)}': did you mean '{close}'? Rename it; as it is, "
            "its values would be ignored and the default used."
        )
    return None


def partial_columns(name: str) -> list[str]:
    """Our columns that start with `name` or have it as a word (`guidance`, `frames`), more than
    a slip away: the user may mean their own column, or ours."""
    text = name.strip().lower()
    if len(text) < 4:
        return []
    starts = [c for c in COLUMNS if c.startswith(text) and c != text]
    words = [c for c in COLUMNS if c not in starts and text in c.split("_")]
    return starts + sorted(words, key=lambda c: c not in DEFAULTED_COLUMNS)


def nearest_column(name: str) -> str | None:
    """The column of ours one slip away (a letter missing, extra, wrong or two swapped; two
    slips for names of 8 letters or more), ignoring case; a name under 5 letters must also
    start as ours does (`sed` is `seed`, `mask` is not `task`)."""
    text = name.strip().lower()
    allowed = 2 if len(text) >= 8 else 1
    best = min(COLUMNS, key=lambda column: _slips(text, column))
    if _slips(text, best) > allowed or (len(text) < 5 and text[:1] != best[:1]):
        return None
    return best


def _slips(a: str, b: str) -> int:
    """Optimal string alignment distance: insertions, deletions, substitutions, swaps."""
    previous2: list[int] = []
    previous = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        current = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = a[i - 1] != b[j - 1]
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                current[j] = min(current[j], previous2[j - 2] + 1)
        previous2, previous = previous, current
    return previous[-1]


def strict_problem(name: str) -> str:
    return (
        f"unknown column '{printable(name)}': --strict-columns allows only pusa-batch's "
        "columns; remove it, or drop --strict-columns to carry it as extra metadata."
    )


def extra_note(names: Iterable[str]) -> str:
    """The summary's one line about the user's own columns, asking about partial names."""
    return f"carried as extra metadata: {', '.join(map(_noted, names))}"


def _noted(name: str) -> str:
    close = partial_columns(name)
    ask = f" (did you mean {' or '.join(close)}?)" if close else ""
    return printable(name) + ask


# --------------------------------------------------------------------------- values


def extra_values(df: pd.DataFrame, names: Iterable[str]) -> dict[str, pa.Array]:
    """Each extra column of the chunk as one Arrow array: string, int64, float64, bool or
    null (all cells empty); anything else becomes text (see the module's decisions)."""
    return {name: _typed(df[name]) for name in names if name in df.columns}


def _typed(cells: pd.Series) -> pa.Array:
    try:
        values = pa.Array.from_pandas(cells)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return _texts(cells.to_numpy(dtype=object))
    kind = values.type
    if pa.types.is_null(kind):
        return values
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return values.cast(pa.string())
    if pa.types.is_boolean(kind):
        return values
    if pa.types.is_integer(kind):
        return values.cast(pa.int64())
    if pa.types.is_floating(kind):
        numbers = values.cast(pa.float64()).to_numpy(zero_copy_only=False)
        finite = np.isfinite(numbers)  # NaN and infinities are not JSON: empty
        return pa.array(numbers, pa.float64(), mask=~finite)
    return _texts(values.to_pylist())


def _texts(values: Iterable) -> pa.Array:
    """Text for each cell: strings as they are, others as JSON (None stays null)."""
    return pa.array([_text(v) for v in values], pa.string())


def _text(value: object) -> str | None:
    if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)):
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, np.ndarray):
        value = value.tolist()
    try:
        return json.dumps(value, default=str)
    except (TypeError, ValueError):
        return str(value)
