"""Column-wise checks of one manifest chunk; only rows with conditioning meet the task planner."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa

from pusa_batch import tasks as task_rules
from pusa_batch import video as media
from pusa_batch.cells import is_empty, printable
from pusa_batch.errors import InputMediaError, RowProblem, TaskError
from pusa_batch.item import FITS, Item
from pusa_batch.manifest.columns import extra_values
from pusa_batch.manifest.schema import (
    COLUMNS,
    ID_PATTERN,
    ID_PATTERN_TEXT,
    PATH_COLUMNS,
    REQUIRED_COLUMNS,
    IdSet,
    Rules,
    canonical_value,
    derived_ids,
    hash_ids,
    number_column,
    parse_path_list,
    resolve_path,
    text_column,
)
from pusa_batch.manifest.value_rules import limit_rules, range_rules, written_text

# --------------------------------------------------------------------------- row checks

# Without check_files a video's length is unknown: plan as if it were long enough.
UNPROBED_VIDEO_FRAMES = 10**9
ID_TEXTS = "id (as text)"  # key in the parsed columns: the id column as a string Series
READ_PROBLEMS = "pusa_batch.read_problems"  # df.attrs key: [(row offset, column, message)]
PLAN_COLUMNS = frozenset({"task", "num_frames", "cond_frames", "noise_multipliers", *PATH_COLUMNS})


@dataclass
class CheckedChunk:
    """One chunk's normalised cells, ids, resolved paths and problems."""

    first_row: int
    n: int
    rules: Rules
    cols: dict[str, Any]
    ids: np.ndarray
    images: list[tuple[str, ...]]
    paths: dict[str, list[str | None]]
    problems: list[RowProblem]
    bad: np.ndarray
    fits: list[str | None] = field(default_factory=list)  # per row; None: no input media
    sizes: dict[int, tuple[int, int]] = field(default_factory=dict)  # fit native: (h, w)
    extra: dict[str, pa.Array] = field(default_factory=dict)  # the user's own columns, typed
    _extra_cells: list[tuple[str, list]] | None = field(default=None, repr=False)

    def task_counts(self) -> dict[str, int]:
        tasks = self.cols.get("task")
        if tasks is None:
            return {}
        known = pd.Series(tasks, dtype=object).dropna()
        return {
            str(k): int(v) for k, v in known[known.isin(task_rules.TASKS)].value_counts().items()
        }

    def items(self) -> Iterator[Item]:
        for i in range(self.n):
            yield self._item(i)

    def _item(self, i: int) -> Item:
        def value(name: str, cast: Callable) -> Any:
            col = self.cols.get(name)
            cell = None if col is None else col[i]
            if is_empty(cell):
                return cast(self.rules.defaults[name])
            return cast(cell)

        sizes = {
            k: value(k, int) for k in ("num_frames", "height", "width", "fps", "seed", "steps")
        }
        if i in self.sizes:  # fit native: the size is the first input's, decided at the check
            sizes["height"], sizes["width"] = self.sizes[i]
        return Item(
            id=str(self.ids[i]),
            row=self.first_row + i,
            task=str(self.cols["task"][i]),
            prompt=str(self.cols["prompt"][i]),
            negative_prompt=value("negative_prompt", str),
            images=self.images[i],
            video=self.paths["video"][i],
            video_b=self.paths["video_b"][i],
            cond_frames=self._list("cond_frames", i),
            noise_multipliers=self._list("noise_multipliers", i),
            **sizes,
            guidance_scale=value("guidance_scale", float),
            shift=value("shift", float),
            fit=self.fits[i] if self.fits else None,
            extra=self._extra(i),
        )

    def _extra(self, i: int) -> tuple[tuple[str, Any], ...]:
        if not self.extra:
            return ()
        if self._extra_cells is None:  # once per chunk: Python values of each column
            self._extra_cells = [(name, cells.to_pylist()) for name, cells in self.extra.items()]
        return tuple((name, cells[i]) for name, cells in self._extra_cells)

    def _list(self, name: str, i: int) -> tuple | None:
        col = self.cols.get(name)
        return None if col is None or col[i] is None else tuple(col[i])


class _Problems:
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


class ChunkChecker:
    """Checks chunks column-wise; only rows with conditioning go through the task planner.

    Keeps state across chunks: the ids seen so far and a cache of input-file probes.
    """

    def __init__(
        self, rules: Rules, base: str, *, check_files: bool, storage_options: dict | None = None
    ) -> None:
        self.rules = rules
        self.base = base
        self.check_files = check_files
        self.storage_options = storage_options or {}
        self.seen = IdSet()
        self._probes: dict[tuple[str, str], tuple[Any, str | None]] = {}

    def check(self, df: pd.DataFrame, first_row: int, *, extra: Iterable[str] = ()) -> CheckedChunk:
        """The chunk checked; `extra` names the user's own columns, carried into the items."""
        n, found = len(df), _Problems()
        for offset, column, message in df.attrs.get(READ_PROBLEMS, ()):
            found.add(offset, column, message)  # what the reader found (a JSONL NaN, a repeat)
        cols = self._parse_columns(df, found)
        self._check_values(cols, found, n)
        images, paths = self._resolve_paths(cols, found, n)
        ids = self._ids(cols, found, n, first_row)
        self._plan_rows(cols, images, paths, found, n)
        fits, sizes = self._fits(cols, images, paths, found, n)
        found.found.sort(key=lambda p: (p[0], COLUMN_ORDER.get(p[1], 99)))
        problems = [
            RowProblem(first_row + i, _shown_id(ids[i]), printable(c), printable(m))
            for i, c, m in found.found
        ]
        bad = np.zeros(n, dtype=bool)
        bad[[i for i, _, _ in found.found]] = True
        return CheckedChunk(
            first_row,
            n,
            self.rules,
            cols,
            ids,
            images,
            paths,
            problems,
            bad,
            fits,
            sizes,
            extra_values(df, extra) if extra else {},
        )

    # -- cells
    def _parse_columns(self, df: pd.DataFrame, found: _Problems) -> dict[str, Any]:
        cols: dict[str, Any] = {}
        for name, kind in COLUMNS.items():
            if name not in df.columns:
                continue
            s = df[name]
            if kind in ("text", "path"):
                col = text_column(s, lower=name in ("task", "fit"), allow_numbers=name == "id")
                found.add_where(col.bad, name, _expected("text"), s.to_numpy(object))
                cols[name] = col.values
                if name == "id":
                    cols[ID_TEXTS] = col.series
            elif kind in ("int", "float"):
                num = number_column(s, integer=kind == "int")
                what = _expected("a whole number" if kind == "int" else "a number")
                found.add_where(num.bad, name, what, s.to_numpy(object))
                cols[name] = num.values
                cols[_as_written(name)] = s
            else:
                cols[name] = self._parse_lists(name, kind, s, found)
        return cols

    def _parse_lists(self, name: str, kind: str, s: pd.Series, found: _Problems) -> list:
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
                found.add(int(i), name, f"cannot read {raw[i]!r}: {getattr(e, 'message', e)}")
        return out

    def _check_values(self, cols: dict[str, Any], found: _Problems, n: int) -> None:
        for name in REQUIRED_COLUMNS:
            if name in cols:
                found.add_where(~_present(cols[name]), name, _missing_message(name), cols[name])
        if "task" in cols:
            tasks = pd.Series(cols["task"], dtype=object)
            unknown = tasks.notna().to_numpy() & ~tasks.isin(task_rules.TASKS).to_numpy()
            valid = ", ".join(task_rules.TASKS)
            found.add_where(
                unknown, "task", lambda v: f"unknown task {v!r}; use one of: {valid}.", tasks
            )
        r, m = self.rules.temporal_factor, self.rules.spatial_multiple
        for name, is_bad, message in range_rules(r, m) + limit_rules(self.rules.limits):
            if name in cols:
                values, written = cols[name], cols[_as_written(name)]
                with np.errstate(invalid="ignore"):
                    mask = ~np.isnan(values) & is_bad(values)
                for i in np.flatnonzero(mask):
                    v = values[i]
                    found.add(int(i), name, message(v, written_text(written.iloc[i], v)))
        self._check_pixels(cols, found)
        if "fit" in cols:
            fits = pd.Series(cols["fit"], dtype=object)
            unknown = fits.notna().to_numpy() & ~fits.isin(FITS).to_numpy()
            choices = ", ".join(FITS)
            found.add_where(
                unknown, "fit", lambda v: f"unknown fit {v!r}; use one of: {choices}.", fits
            )
        if "images" in cols and "image" in cols:
            both = _present(cols["image"]) & np.array([v is not None for v in cols["images"]])
            found.add_where(
                both,
                "images",
                lambda _: "give either 'image' or 'images', not both.",
                cols["images"],
            )

    # -- paths and files
    def _check_pixels(self, cols: dict[str, Any], found: _Problems) -> None:
        """height x width against the spec's max_pixels (a missing cell takes the default)."""
        if "height" not in cols and "width" not in cols:
            return
        limit = self.rules.limits.max_pixels

        def column(name: str) -> np.ndarray:
            values = cols.get(name)
            default = float(self.rules.defaults[name])
            if values is None:
                return np.full(len(cols.get("height", cols.get("width"))), default)
            return np.where(np.isnan(values), default, values)

        height, width = column("height"), column("width")
        with np.errstate(invalid="ignore", over="ignore"):
            mask = height * width > limit
        sizes = np.array([f"{h:.0f}x{w:.0f}" for h, w in zip(height, width)], dtype=object)
        found.add_where(
            mask,
            "width",
            lambda v: (
                f"{v} is {_pixels(v):,} pixels, over this pipeline's limit of {limit:,} "
                "(max_pixels); make it smaller, or raise limits.max_pixels in the pipeline TOML."
            ),
            sizes,
        )

    def _resolve_paths(self, cols: dict[str, Any], found: _Problems, n: int) -> tuple[list, dict]:
        paths: dict[str, list[str | None]] = {}
        for name in ("image", "video", "video_b"):
            raw = cols.get(name)
            paths[name] = [None] * n
            if raw is None:
                continue
            for i in np.flatnonzero(_present(raw)):
                paths[name][i] = resolve_path(self.base, raw[i])
                self._check_file(int(i), name, paths[name][i], found)
        images: list[tuple[str, ...]] = [()] * n
        lists = cols.get("images") or [None] * n
        for i in range(n) if ("images" in cols or "image" in cols) else ():
            if lists[i] is not None:
                images[i] = tuple(resolve_path(self.base, p) for p in lists[i])
                for p in images[i]:
                    self._check_file(i, "images", p, found)
            elif paths["image"][i] is not None:
                images[i] = (paths["image"][i],)
        return images, paths

    def _probe(self, column: str, path: str) -> tuple[Any, str | None]:
        key = ("video" if column.startswith("video") else "image", path)
        if key not in self._probes:
            if len(self._probes) > 100_000:
                self._probes.clear()
            self._probes[key] = self._probe_uncached(key[0], path)
        return self._probes[key]

    def _probe_uncached(self, kind: str, path: str) -> tuple[Any, str | None]:
        try:
            fs, fs_path = fsspec.core.url_to_fs(path, **self.storage_options)
            problem = _file_problem(fs, fs_path, path)
            if problem:
                return None, problem
            probe = media.probe_video if kind == "video" else media.probe_image
            return probe(path, storage_options=self.storage_options or None), None
        except InputMediaError as e:
            return None, f"cannot read the {kind}: {e}"
        except (OSError, ValueError) as e:
            return None, f"cannot open {path}: {e}"
        except Exception as e:  # a storage client's own errors (botocore's), never a traceback
            if "credential" in f"{type(e).__name__} {e}".lower():
                return None, (
                    f"cannot open {path}: no credentials for this storage; set them (for S3: "
                    "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE), or use a "
                    "local file."
                )
            return None, f"cannot open {path}: {type(e).__name__}: {e}"

    def _check_file(self, i: int, column: str, path: str, found: _Problems) -> None:
        if self.check_files:
            _, error = self._probe(column, path)
            if error:
                found.add(i, column, error)

    def _video_frames(self, path: str | None) -> int | None:
        """The video's frame count from its header; None for no video."""
        if path is None:
            return None
        if not self.check_files:
            return UNPROBED_VIDEO_FRAMES
        info, _ = self._probe("video", path)
        return UNPROBED_VIDEO_FRAMES if info is None else int(info.frames)

    # -- framing
    def _fits(
        self, cols: dict[str, Any], images: list, paths: dict, found: _Problems, n: int
    ) -> tuple[list[str | None], dict[int, tuple[int, int]]]:
        """Each row's fit (its cell, else the spec's default for its kind of input; None with no
        input media) and, for fit native, its size: the first input's, rounded down."""
        given = cols.get("fit")
        fits: list[str | None] = [None] * n
        sizes: dict[int, tuple[int, int]] = {}
        if not any(c in cols for c in ("image", "images", "video")):
            return fits, sizes  # no input media in this chunk (t2v): nothing to frame
        for i in range(n):
            kind = "image" if images[i] else "video" if paths["video"][i] else None
            if kind is None or found.touches(i, frozenset({"fit"})):
                continue
            cell = None if given is None else given[i]
            fits[i] = cell or str(self.rules.defaults[f"{kind}_fit"])
            if fits[i] == "native":
                size = self._native_size(i, cols, kind, images[i][:1] or [paths["video"][i]], found)
                if size is not None:
                    sizes[i] = size
        return fits, sizes

    def _native_size(
        self, i: int, cols: dict[str, Any], kind: str, first: list[str], found: _Problems
    ) -> tuple[int, int] | None:
        """(height, width) for fit native, or None after adding the row's problem."""
        explicit = [c for c in ("height", "width") if c in cols and not np.isnan(cols[c][i])]
        if explicit:
            found.add(
                i,
                "fit",
                f"fit native takes the size from the first {kind}; leave "
                f"{' and '.join(explicit)} empty, or give fit = cover, contain or stretch.",
            )
            return None
        column = "video" if kind == "video" else "images"
        if found.touches(i, frozenset({column, "image"})):
            return None  # the file's own problem is already reported
        info, error = self._probe(column, first[0])
        if error:
            found.add(i, column, error)
            return None
        m, limits = self.rules.spatial_multiple, self.rules.limits
        width, height = media.native_size(int(info.width), int(info.height), m)
        size = f"{info.width}x{info.height}"
        if min(width, height) < m:
            found.add(i, "fit", f"fit native: the {kind} is {size}, smaller than {m}x{m}.")
            return None
        over = []
        if max(width, height) > limits.max_side:
            over.append(f"limits.max_side = {limits.max_side}")
        if width * height > limits.max_pixels:
            over.append(f"limits.max_pixels = {limits.max_pixels:,}")
        if over:
            found.add(
                i,
                "fit",
                f"fit native: the {kind} is {size}, so the video would be {width}x{height}, "
                f"over this pipeline's {' and '.join(over)}; use a smaller {kind}, or give "
                "fit = cover, contain or stretch with a height and width.",
            )
            return None
        return height, width

    # -- ids
    def _ids(self, cols: dict[str, Any], found: _Problems, n: int, first_row: int) -> np.ndarray:
        given = cols.get("id")
        ids = np.full(n, None, dtype=object) if given is None else given.copy()
        if given is not None:
            usable = cols[ID_TEXTS].str.fullmatch(ID_PATTERN.pattern)  # Arrow regex when it can
            unsafe = _present(given) & ~usable.fillna(False).to_numpy(dtype=bool)
            found.add_where(
                unsafe,
                "id",
                lambda v: f"id {v!r} cannot name a file; use {ID_PATTERN_TEXT}.",
                given,
            )
        need = np.flatnonzero(~_present(ids))
        if len(need):
            ids[need] = derived_ids(
                [str(t) for t in _take(cols.get("task"), need)], _canonical(cols, need)
            )
        self._find_duplicates(ids, given, found, first_row)
        return ids

    def _find_duplicates(
        self, ids: np.ndarray, given: np.ndarray | None, found: _Problems, first_row: int
    ) -> None:
        hashes = hash_ids(ids)
        rows = np.arange(first_row, first_row + len(ids), dtype=np.int64)
        earlier = self.seen.rows_of(hashes)
        in_chunk = pd.Series(hashes).duplicated().to_numpy()
        if in_chunk.any():
            first_of = dict(zip(hashes[::-1], rows[::-1], strict=True))
            dup_rows = np.array([first_of[h] for h in hashes[in_chunk]])
            earlier[in_chunk] = np.where(earlier[in_chunk] == 0, dup_rows, earlier[in_chunk])
        for i in np.flatnonzero(earlier):
            derived = given is None or given[i] is None
            hint = (
                "the rows ask for the same video (the user's own columns do not count); "
                "give them ids or different seeds."
                if derived
                else "ids must be unique; rename one."
            )
            found.add(int(i), "id", f"duplicate id {ids[i]!r}, also on row {earlier[i]}: {hint}")
        fresh = earlier == 0
        self.seen.add(hashes[fresh], rows[fresh])

    # -- conditioning
    def _plan_rows(
        self, cols: dict[str, Any], images: list, paths: dict, found: _Problems, n: int
    ) -> None:
        if "task" not in cols:
            return
        tasks = cols["task"]
        needs = _present(tasks) & (tasks != "t2v")
        for name in ("cond_frames", "noise_multipliers", "images", "image", "video", "video_b"):
            if name in cols:
                needs |= np.array([v is not None for v in cols[name]], dtype=bool)
        num_frames = cols.get("num_frames")
        for i in np.flatnonzero(needs):
            if found.touches(int(i), PLAN_COLUMNS):
                continue
            nf = self.rules.defaults["num_frames"] if num_frames is None else num_frames[i]
            try:
                task_rules.plan_conditioning(
                    str(tasks[i]),
                    num_frames=int(self.rules.defaults["num_frames"] if np.isnan(nf) else nf),
                    temporal_factor=self.rules.temporal_factor,
                    cond_frames=_cell(cols, "cond_frames", i),
                    noise_multipliers=_cell(cols, "noise_multipliers", i),
                    n_images=len(images[i]),
                    video_frames=self._video_frames(paths["video"][i]),
                    video_b_frames=self._video_frames(paths["video_b"][i]),
                )
            except TaskError as e:
                found.add(int(i), e.column, e.message)


def _file_problem(fs: Any, fs_path: str, path: str) -> str | None:
    """Why an input file cannot be probed (missing, not a regular file, empty), else None: a
    FIFO or a device would block or never end, and an empty file has nothing to read. One
    stat (local) or one info call (remote) per file."""
    try:
        if getattr(fs, "local_file", False):
            found = os.stat(fs_path)
            regular, size = stat.S_ISREG(found.st_mode), found.st_size
        else:
            info = fs.info(fs_path)
            regular, size = info.get("type", "file") == "file", info.get("size")
    except FileNotFoundError:
        return f"input file not found: {path}"
    if not regular:
        return (
            f"{path} is not a regular file (a folder, FIFO or device); give an image or video file."
        )
    if size == 0:
        return f"{path} is an empty file (0 bytes); give a whole image or video."
    return None


def _shown_id(value: Any) -> str | None:
    return None if value is None else printable(value)


def _as_written(name: str) -> str:
    """Key in the parsed columns: a number column's cells as the manifest wrote them."""
    return f"{name} (as written)"


def _present(values: np.ndarray) -> np.ndarray:
    """Elementwise `is not None` over an object array."""
    return np.not_equal(values, None)


def _expected(what: str) -> Callable[[Any], str]:
    return lambda v: f"expected {what}, got {v!r}."


def _missing_message(name: str) -> Callable[[Any], str]:
    return lambda _: f"{name} is empty; every row needs one."


def _cell(cols: dict[str, Any], name: str, i: int) -> Any:
    col = cols.get(name)
    return None if col is None else col[i]


def _take(col: Any, idx: np.ndarray) -> list:
    return [None] * len(idx) if col is None else [col[i] for i in idx]


def _canonical(cols: dict[str, Any], idx: np.ndarray) -> list[str]:
    """`name=value\x1f` for every non-empty cell but the id, in schema order."""
    out = np.full(len(idx), "", dtype=object)
    for name, kind in COLUMNS.items():
        if name == "id" or name not in cols:
            continue
        cells = cols[name]
        if kind in ("int", "float"):
            values = cells[idx]
            present = ~np.isnan(values)
            kept = values[present]
            text = (kept.astype(np.int64) if kind == "int" else kept).astype(str).astype(object)
        elif kind in ("text", "path"):
            values = cells[idx]
            present = _present(values)
            text = values[present]
        else:
            values = np.empty(len(idx), dtype=object)
            values[:] = [cells[i] for i in idx]
            present = _present(values)
            text = np.array([canonical_value(kind, v) for v in values[present]], dtype=object)
        if present.any():
            out[present] = out[present] + (name + "=") + text + "\x1f"
    return list(out)


def _pixels(size: str) -> int:
    h, _, w = size.partition("x")
    return int(h) * int(w)


COLUMN_ORDER = {name: k for k, name in enumerate(COLUMNS)}
