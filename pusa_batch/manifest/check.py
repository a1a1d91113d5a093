"""Column-wise checks of one manifest chunk; only rows with conditioning meet the task planner.

`ChunkChecker` runs the stages in order; each lives beside it: the cells parsed into columns
(`check_cells.py`), the value checks (`check_values.py`), the input files resolved and probed
(`check_inputs.py`). The ids, the framing (fit) and the conditioning plan are checked here.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from pusa_batch import tasks as task_rules
from pusa_batch import video as media
from pusa_batch.cells import is_empty, printable
from pusa_batch.errors import RowProblem, TaskError
from pusa_batch.item import Item
from pusa_batch.manifest.check_cells import (
    COLUMN_ORDER,
    ID_TEXTS,
    Problems,
    canonical,
    cell,
    parse_columns,
    present,
    shown_id,
    take,
)
from pusa_batch.manifest.check_inputs import UNPROBED_VIDEO_FRAMES, InputProbes
from pusa_batch.manifest.check_values import check_values
from pusa_batch.manifest.columns import extra_values
from pusa_batch.manifest.schema import (
    ID_PATTERN,
    ID_PATTERN_TEXT,
    PATH_COLUMNS,
    IdSet,
    Rules,
    derived_ids,
    hash_ids,
)

__all__ = [
    "ID_TEXTS",
    "PLAN_COLUMNS",
    "READ_PROBLEMS",
    "UNPROBED_VIDEO_FRAMES",
    "CheckedChunk",
    "ChunkChecker",
]

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


class ChunkChecker:
    """Checks chunks column-wise; only rows with conditioning go through the task planner.

    Keeps state across chunks: the ids seen so far and a cache of input-file probes.
    """

    def __init__(
        self,
        rules: Rules,
        base: str,
        *,
        check_files: bool,
        storage_options: dict | None = None,
        fold_case: bool = False,
    ) -> None:
        self.rules = rules
        self.fold_case = fold_case  # the output root's file system tells `Cat` from `cat` not
        self.base = base
        self.check_files = check_files
        self.storage_options = storage_options or {}
        self.seen = IdSet()
        self.inputs = InputProbes(
            base, check_files=check_files, storage_options=self.storage_options
        )

    def check(self, df: pd.DataFrame, first_row: int, *, extra: Iterable[str] = ()) -> CheckedChunk:
        """The chunk checked; `extra` names the user's own columns, carried into the items."""
        n, found = len(df), Problems()
        for offset, column, message in df.attrs.get(READ_PROBLEMS, ()):
            found.add(offset, column, message)  # what the reader found (a JSONL NaN, a repeat)
        cols = parse_columns(df, found)
        check_values(cols, found, self.rules)
        images, paths = self.inputs.resolve_paths(cols, found, n)
        ids = self._ids(cols, found, n, first_row)
        self._plan_rows(cols, images, paths, found, n)
        fits, sizes = self._fits(cols, images, paths, found, n)
        found.found.sort(key=lambda p: (p[0], COLUMN_ORDER.get(p[1], 99)))
        problems = [
            RowProblem(first_row + i, shown_id(ids[i]), printable(c), printable(m))
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

    # -- framing
    def _fits(
        self, cols: dict[str, Any], images: list, paths: dict, found: Problems, n: int
    ) -> tuple[list[str | None], dict[int, tuple[int, int]]]:
        """Each row's fit (its cell, else the spec's default for its kind of input; None with no
        input media) and, for fit native, its size: the first input's, rounded down."""
        fits: list[str | None] = [None] * n
        sizes: dict[int, tuple[int, int]] = {}
        if not any(c in cols for c in ("image", "images", "video")):
            return fits, sizes  # no input media in this chunk (t2v): nothing to frame
        for i in range(n):
            kind = "image" if images[i] else "video" if paths["video"][i] else None
            if kind is None or found.touches(i, frozenset({"fit"})):
                continue
            fits[i] = cell(cols, "fit", i) or str(self.rules.defaults[f"{kind}_fit"])
            if fits[i] == "native":
                size = self._native_size(i, cols, kind, images[i][:1] or [paths["video"][i]], found)
                if size is not None:
                    sizes[i] = size
        return fits, sizes

    def _native_size(
        self, i: int, cols: dict[str, Any], kind: str, first: list[str], found: Problems
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
        info, error = self.inputs.probe(column, first[0])
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
    def _ids(self, cols: dict[str, Any], found: Problems, n: int, first_row: int) -> np.ndarray:
        given = cols.get("id")
        ids = np.full(n, None, dtype=object) if given is None else given.copy()
        if given is not None:
            usable = cols[ID_TEXTS].str.fullmatch(ID_PATTERN.pattern)  # Arrow regex when it can
            unsafe = present(given) & ~usable.fillna(False).to_numpy(dtype=bool)
            found.add_where(
                unsafe,
                "id",
                lambda v: f"id {v!r} cannot name a file; use {ID_PATTERN_TEXT}.",
                given,
            )
        need = np.flatnonzero(~present(ids))
        if len(need):
            ids[need] = derived_ids(
                [str(t) for t in take(cols.get("task"), need)], canonical(cols, need)
            )
        self._find_duplicates(ids, given, found, first_row)
        return ids

    def _find_duplicates(
        self, ids: np.ndarray, given: np.ndarray | None, found: Problems, first_row: int
    ) -> None:
        hashes = hash_ids(folded_ids(ids) if self.fold_case else ids)
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
            if self.fold_case and not derived:
                hint = (
                    "the output root's file system does not tell ids apart by case, so both "
                    "would be one file; rename one."
                )
            found.add(int(i), "id", f"duplicate id {ids[i]!r}, also on row {earlier[i]}: {hint}")
        fresh = earlier == 0
        self.seen.add(hashes[fresh], rows[fresh])

    # -- conditioning
    def _plan_rows(
        self, cols: dict[str, Any], images: list, paths: dict, found: Problems, n: int
    ) -> None:
        if "task" not in cols:
            return
        tasks = cols["task"]
        needs = present(tasks) & (tasks != "t2v")
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
                    cond_frames=cell(cols, "cond_frames", i),
                    noise_multipliers=cell(cols, "noise_multipliers", i),
                    n_images=len(images[i]),
                    video_frames=self.inputs.video_frames(paths["video"][i]),
                    video_b_frames=self.inputs.video_frames(paths["video_b"][i]),
                )
            except TaskError as e:
                found.add(int(i), e.column, e.message)


def folded_ids(ids: np.ndarray) -> np.ndarray:
    """Ids as a case-insensitive file system compares names (NFC, then case-folded)."""
    return np.array(
        [None if i is None else unicodedata.normalize("NFC", str(i)).casefold() for i in ids],
        dtype=object,
    )
