"""The manifest schema: columns, built-in defaults, cell parsing, paths, derived ids and `Item`.

Pure data and small functions; the streaming loader and the validator live in `manifest`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from pusa_batch.cells import is_empty
from pusa_batch.pipelines.spec import TEMPORAL_FACTORS, Defaults, Limits

# Column name -> kind. Order matters: it is the order of the derived-id hash.
COLUMNS: dict[str, str] = {
    "id": "text",
    "task": "text",
    "prompt": "text",
    "negative_prompt": "text",
    "image": "path",
    "images": "paths",
    "video": "path",
    "video_b": "path",
    "cond_frames": "ints",
    "noise_multipliers": "floats",
    "num_frames": "int",
    "height": "int",
    "width": "int",
    "fps": "int",
    "seed": "int",
    "steps": "int",
    "guidance_scale": "float",
    "shift": "float",
    "fit": "text",  # one of FITS; empty: the spec's defaults.image_fit / video_fit
}
REQUIRED_COLUMNS = ("task", "prompt")
PATH_COLUMNS = ("image", "images", "video", "video_b")
DEFAULTED_COLUMNS = (
    "negative_prompt",
    "num_frames",
    "height",
    "width",
    "fps",
    "seed",
    "steps",
    "guidance_scale",
    "shift",
)
ID_PATTERN = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")  # no leading "."
ID_PATTERN_TEXT = "1-128 characters from A-Z a-z 0-9 . _ -, the first not a '.'"
SEED_MAX = 2**32 - 1
FIT_DEFAULTS = ("image_fit", "video_fit")  # the spec's defaults for a row's empty `fit`

# Used when no pipeline spec is given (`validate` without `--pipeline`): the spec's own defaults,
# Pusa-Wan at 720p.
_BUILT_IN: dict[str, Any] = asdict(Defaults())
WAN_DEFAULTS: dict[str, Any] = {k: v for k, v in _BUILT_IN.items() if k not in FIT_DEFAULTS}
WAN_TEMPORAL_FACTOR = TEMPORAL_FACTORS["wan2.1"]
WAN_SPATIAL_MULTIPLE = 16


@dataclass(frozen=True)
class Rules:
    """What the validator and the resolver need from a pipeline spec (or Wan's built-ins)."""

    defaults: Mapping[str, Any]
    temporal_factor: int
    spatial_multiple: int
    limits: Limits = Limits()


def rules_from_spec(spec: Any | None) -> Rules:
    """Duck-typed: any object with `.defaults`, `.temporal_factor`, `.spatial_multiple` works."""
    if spec is None:
        return Rules(dict(_BUILT_IN), WAN_TEMPORAL_FACTOR, WAN_SPATIAL_MULTIPLE)
    given = spec.defaults
    defaults = {}
    for name in DEFAULTED_COLUMNS:
        value = given.get(name) if isinstance(given, Mapping) else getattr(given, name, None)
        defaults[name] = WAN_DEFAULTS[name] if value is None else value
    for name in FIT_DEFAULTS:
        value = given.get(name) if isinstance(given, Mapping) else getattr(given, name, None)
        defaults[name] = _BUILT_IN[name] if value is None else value
    limits = getattr(spec, "limits", None) or Limits()
    return Rules(defaults, int(spec.temporal_factor), int(spec.spatial_multiple), limits)


# --------------------------------------------------------------------------- cells


def parse_path_list(value: Any) -> tuple[str, ...]:
    """`images` cell: a Parquet/JSON list, a JSON array string, or comma-separated paths."""
    if isinstance(value, (list, tuple, np.ndarray)):
        items = list(value)
    elif isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                items = json.loads(text)
            except json.JSONDecodeError as e:
                raise ValueError(f"not a valid JSON array ({e.msg}): {text!r}") from e
            if not isinstance(items, list):
                raise ValueError(f"expected a list of paths, got {text!r}")
        else:
            items = text.split(",")
    else:
        raise TypeError(f"expected a list of paths, got {value!r}")
    if not all(isinstance(p, str) and p.strip() for p in items):
        raise ValueError(f"every entry must be a non-empty path, got {value!r}")
    return tuple(p.strip() for p in items)


def resolve_path(base: str, path: str) -> str:
    """Relative paths resolve against the manifest's folder; URLs and absolute paths stay."""
    if "://" in path or os.path.isabs(path):
        return path
    if "://" in base:
        return base.rstrip("/") + "/" + path
    return os.path.normpath(os.path.join(base, path))


def manifest_folder(path: str) -> str:
    if "://" in path:
        return path.rsplit("/", 1)[0]
    return os.path.dirname(os.path.abspath(path))


# --------------------------------------------------------------------------- derived ids


def canonical_value(kind: str, value: Any) -> str:
    """The text a normalised cell contributes to the derived-id hash (format-independent)."""
    if kind in ("int",):
        return str(int(value))
    if kind == "float":
        return repr(float(value))
    if kind in ("ints", "floats", "paths"):
        return json.dumps(list(value), separators=(",", ":"))
    return str(value)


def derived_ids(tasks: list[str], canon: list[str]) -> list[str]:
    """`{task}-{sha1(canonical row)[:12]}`; `canon` holds each row's `col=value\\x1f` text."""
    return [
        f"{t}-{hashlib.sha1(c.encode('utf-8')).hexdigest()[:12]}"
        for t, c in zip(tasks, canon, strict=True)
    ]


# --------------------------------------------------------------------------- vectorised columns


@dataclass(frozen=True)
class TextColumn:
    values: np.ndarray  # object: str, or None for an empty cell
    bad: np.ndarray  # bool: a cell that is not text
    series: pd.Series  # the stripped cells as a string Series (for vectorised regexes)


@dataclass(frozen=True)
class NumberColumn:
    values: np.ndarray  # float64; NaN where empty or bad
    empty: np.ndarray
    bad: np.ndarray  # not a number, or not whole for an integer column


def text_column(s: pd.Series, *, lower: bool = False, allow_numbers: bool = False) -> TextColumn:
    n = len(s)
    if pd.api.types.is_numeric_dtype(s.dtype) and not pd.api.types.is_bool_dtype(s.dtype):
        empty = s.isna().to_numpy()
        if not allow_numbers:
            none = np.full(n, None, dtype=object)
            return TextColumn(none, ~empty, pd.Series(none, dtype="string"))
        s = (
            s.astype(object)
            .where(~empty, None)
            .map(lambda v: str(int(v)) if isinstance(v, float) and v.is_integer() else str(v))
        )
    if pd.api.types.is_string_dtype(s.dtype) and not pd.api.types.is_object_dtype(s.dtype):
        bad = np.zeros(n, dtype=bool)  # a string column: vectorised strip (Arrow-backed)
    else:
        values = s.to_numpy(dtype=object, na_value=None)
        bad = np.fromiter((v is not None and not isinstance(v, str) for v in values), bool, n)
        s = pd.Series(np.where(bad, None, values), dtype=object)
    s = s.str.strip()
    if lower:
        s = s.str.lower()
    out = s.to_numpy(dtype=object, na_value=None, copy=True)
    out[out == ""] = None
    return TextColumn(out, bad, s)


def number_column(s: pd.Series, *, integer: bool) -> NumberColumn:
    if pd.api.types.is_bool_dtype(s.dtype):
        empty = s.isna().to_numpy()
        return NumberColumn(np.full(len(s), np.nan), empty, ~empty)
    if pd.api.types.is_numeric_dtype(s.dtype):
        values = s.to_numpy(dtype="float64", na_value=np.nan)
        empty = np.isnan(values)
        bad = np.zeros(len(s), dtype=bool)
    else:
        texts, empty = _stripped_cells(s)
        try:
            values = pd.to_numeric(texts, errors="coerce").to_numpy(
                dtype="float64", na_value=np.nan
            )
        except (TypeError, ValueError):  # lists or dicts among the cells
            values = np.array([_to_float(v) for v in texts], dtype="float64")
        bad = ~empty & np.isnan(values)
    if integer:
        with np.errstate(invalid="ignore"):
            whole = np.isfinite(values) & (np.floor(values) == values)
        bad |= ~empty & ~whole
    values = np.where(bad, np.nan, values)
    return NumberColumn(values, empty, bad)


def _stripped_cells(s: pd.Series) -> tuple[pd.Series, np.ndarray]:
    """The cells with text stripped and empty ones None, and which were empty (`is_empty`).
    A column of text only (a CSV's) is done with pandas' string methods, not cell by cell."""
    if pd.api.types.infer_dtype(s, skipna=True) in ("string", "empty"):
        stripped = s.astype(object).str.strip()
        empty = (stripped.isna() | (stripped == "")).to_numpy(dtype=bool)
        return stripped.where(~empty, None), empty
    obj = s.astype(object)
    empty = obj.map(is_empty).to_numpy(dtype=bool)
    return obj.where(~empty, None).map(lambda v: v.strip() if isinstance(v, str) else v), empty


def _to_float(value: Any) -> float:
    if value is None or isinstance(value, bool):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


# --------------------------------------------------------------------------- duplicate ids


class IdSet:
    """8-byte id hashes with the row that first held them, in sorted runs merged like a binary
    counter: about 16 bytes per row and O(log n) runs to search."""

    def __init__(self) -> None:
        self._runs: list[tuple[np.ndarray, np.ndarray]] = []

    def rows_of(self, hashes: np.ndarray) -> np.ndarray:
        """The earlier row holding each hash, 0 where unseen."""
        order = np.argsort(hashes)
        queries = hashes[order]  # sorted queries make searchsorted cache-friendly (5x faster)
        found = np.zeros(len(hashes), dtype=np.int64)
        for keys, rows in self._runs:
            pos = np.minimum(np.searchsorted(keys, queries), len(keys) - 1)
            hit = keys[pos] == queries
            found = np.where(hit & (found == 0), rows[pos], found)
        out = np.empty_like(found)
        out[order] = found
        return out

    def add(self, hashes: np.ndarray, rows: np.ndarray) -> None:
        if len(hashes) == 0:
            return
        order = np.argsort(hashes, kind="stable")
        self._runs.append((hashes[order], rows[order]))
        while len(self._runs) > 1 and len(self._runs[-2][0]) <= len(self._runs[-1][0]):
            k2, r2 = self._runs.pop()
            k1, r1 = self._runs.pop()
            keys, rows_ = np.concatenate([k1, k2]), np.concatenate([r1, r2])
            order = np.argsort(keys, kind="stable")
            self._runs.append((keys[order], rows_[order]))


def hash_ids(ids: np.ndarray) -> np.ndarray:
    return pd.util.hash_array(ids.astype(object), categorize=False)
