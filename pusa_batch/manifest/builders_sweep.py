"""`manifest sweep`: every base row over the Cartesian product of grid columns."""

from __future__ import annotations

import itertools
import json
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from pusa_batch.cells import MAX_LISTED, is_empty, printable
from pusa_batch.errors import ManifestError
from pusa_batch.manifest.builders import (
    BuildSummary,
    cap_id,
    columns_of,
    finish_build,
    iter_rows,
    safe_id,
    short_hash,
)
from pusa_batch.manifest.columns import column_problem
from pusa_batch.manifest.schema import COLUMNS
from pusa_batch.manifest.write import normalise_cell

# --------------------------------------------------------------------------- sweep

MAX_POINTS = 1_000_000  # grid points per base row: each one a row of the manifest written
_RANGE = re.compile(r"^\s*(-?\d+)\s*\.\.\s*(-?\d+)\s*$")


def _parse_values(text: str) -> list:
    try:
        return json.loads(f"[{text}]")
    except json.JSONDecodeError:
        if any(c in text for c in '[]{}"'):
            raise
        # Bare words (task=i2v,t2v): each comma-separated item is JSON if it parses, else text.
        out = []
        for item in (part.strip() for part in text.split(",")):
            try:
                out.append(json.loads(item))
            except json.JSONDecodeError:
                out.append(item)
        return out


def parse_grid(spec: str) -> tuple[str, list]:
    """A grid spec -> (column, values).

    ``steps=10,20,30``, ``seed=0..4`` (inclusive) or ``noise_multipliers=[0,0.2],[0.2,0.5]``
    (comma-separated JSON values; bare words such as ``task=i2v,t2v`` are text)."""
    column, sep, text = spec.partition("=")
    column = column.strip()
    if not sep or not column or not text.strip():
        raise ManifestError(
            f"grid {spec!r}: expected column=values, e.g. steps=10,20 or seed=0..4 or "
            "noise_multipliers='[0,0.2],[0.2,0.5]'"
        )
    if column == "id":
        raise ManifestError(f"grid {spec!r}: 'id' cannot be swept; ids are built from the grid")
    if match := _RANGE.match(text):
        low, high = int(match[1]), int(match[2])
        if high < low:
            raise ManifestError(f"grid {spec!r}: range {low}..{high} is empty; write low..high")
        if high - low + 1 > MAX_LISTED:
            raise ManifestError(
                f"grid {spec!r}: {high - low + 1:,} values; a grid column takes at most "
                f"{MAX_LISTED:,}. Sweep a smaller range (or several sweeps)."
            )
        return column, list(range(low, high + 1))
    try:
        values = _parse_values(text)
    except json.JSONDecodeError as e:
        raise ManifestError(f"grid {spec!r}: values are not valid JSON ({e.msg})") from e
    canon = [json.dumps(v, sort_keys=True) for v in values]
    if len(set(canon)) != len(canon):
        raise ManifestError(f"grid {spec!r}: repeated values would repeat ids; remove them")
    return column, values


def _same_file(a: str, b: str) -> bool:
    """Two local paths naming one file (URLs are left to the store)."""
    if "://" in a or "://" in b:
        return False
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _value_text(value: Any) -> str:
    if isinstance(value, list):
        return "_".join(_value_text(v) for v in value) or "empty"
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    return safe_id(str(value))


def _suffixes(column: str, values: list) -> list[str]:
    """Id part per value, e.g. 'steps_10'; hashed when two values would read the same."""
    texts = [_value_text(v) for v in values]
    if len(set(texts)) != len(texts):
        texts = [short_hash(json.dumps(v, sort_keys=True)) for v in values]
    return [f"{safe_id(column)}_{t}" for t in texts]


def _refuse_bad_values(names: list[str], values: list[list]) -> None:
    """A grid value its column cannot hold (seed=nan), named before anything is written."""
    bad = []
    for name, column_values in zip(names, values, strict=True):
        for value in column_values:
            try:
                normalise_cell(COLUMNS.get(name), value)
            except (TypeError, ValueError) as e:
                bad.append(f"grid {name}={printable(json.dumps(value))}: {printable(e)}")
    if bad:
        raise ManifestError("; ".join(bad) + ". Give values the column can hold.")


def sweep(
    base_manifest: str,
    out: str,
    grid: Mapping[str, Sequence],
    *,
    validate: bool = True,
    spec: Any = None,
) -> BuildSummary:
    """Every base row repeated over the Cartesian product of ``grid`` (last column fastest).

    Grid values replace the base row's own. New ids are ``{base_id}--{col}_{value}--...``
    (safe, <= 128 characters, hashed tail when longer); rows without an id stay without one.
    """
    base_manifest, out = os.fspath(base_manifest), os.fspath(out)
    if not grid:
        raise ManifestError("sweep needs at least one grid column, e.g. steps=10,20")
    if "id" in grid:
        raise ManifestError("'id' cannot be swept; ids are built from the grid")
    names = list(grid)
    refused = [
        f"grid {name}: {problem}"
        for name in names
        if name not in COLUMNS and (problem := column_problem(name))
    ]
    if refused:  # before anything is written: a near miss would sweep nothing
        raise ManifestError("; ".join(refused))
    values = [list(grid[c]) for c in names]
    if any(not v for v in values):
        empty = [c for c, v in zip(names, values, strict=True) if not v]
        raise ManifestError(f"grid column(s) {', '.join(empty)} have no values")
    points_per_row = math.prod(len(v) for v in values)
    if points_per_row > MAX_POINTS:
        sizes = " x ".join(f"{len(v):,}" for v in values)
        raise ManifestError(
            f"the grid makes {points_per_row:,} rows from each base row ({sizes}); a sweep makes "
            f"at most {MAX_POINTS:,}. Use fewer values, or split the sweep."
        )
    if _same_file(base_manifest, out):
        raise ManifestError(
            f"-o {out} is the base manifest itself: the sweep would overwrite what it reads. "
            "Write to another file."
        )
    _refuse_bad_values(names, values)
    suffixes = [_suffixes(c, v) for c, v in zip(names, values, strict=True)]
    points = list(
        zip(
            itertools.product(*values),
            ("--".join(parts) for parts in itertools.product(*suffixes)),
            strict=True,
        )
    )
    base_columns = columns_of(base_manifest)
    columns = list(dict.fromkeys(["id", *base_columns, *names]))

    def rows() -> Iterator[dict]:
        for _, row in iter_rows(base_manifest):
            base_id = row.get("id")
            for point, suffix in points:
                new = {**row, **dict(zip(names, point, strict=True))}
                new["id"] = None if is_empty(base_id) else cap_id(f"{base_id}--{suffix}")
                yield new

    return finish_build(out, rows(), columns, (), (), validate, spec)
