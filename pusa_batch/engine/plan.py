"""The one resume plan: every manifest item against the output root's state, streamed.

`run` and `status` both plan through here, against one read of the root's state
(`Store.state()`). The counting pass reads the manifest `PLAN_CHUNK_ROWS` rows at a time and
classifies each chunk at once; `run`'s dispatch pass then reads only the rows the counting pass
chose, and yields them as its workers drain the queue.

Decisions:
- One parse per row: the counting pass checks every chunk once and looks its ids up in the
  state column-wise (`RootState.recorded`, 8-byte keys); only done rows need a fingerprint, and
  plain t2v rows get theirs column-wise (`chunk_fingerprints`). No `Item` is built for them.
- The counting pass keeps, per chunk holding rows to do, their offsets (2 bytes a row) or a
  bitmap (1 bit a row), whichever is smaller (`ChunkRows`); nothing else grows with the manifest
  but the first `MAX_CHANGED_IDS` changed ids. The dispatch pass checks only those rows, and
  stops reading after the last of them.
- `run`'s counting pass also keeps its first `KEEP_TODO_ITEMS` items to do, whole: the first
  dispatch waits for no second read, however deep in the manifest the rows to do lie.
- The dispatch pass classifies its rows again: an item whose inputs changed between the passes is
  left alone unless `regenerate_changed`.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from pusa_batch.engine.contract import Pending
from pusa_batch.errors import ChangedItemsError, ManyChangedItemsError
from pusa_batch.item import Item
from pusa_batch.manifest.check import CheckedChunk
from pusa_batch.manifest.read import (
    FingerprintTemplate,
    chunk_fingerprints,
    chunk_items,
    item_fingerprint,
    iter_checked_chunks,
    iter_chosen_items,
    plain_t2v_template,
)
from pusa_batch.pipelines.spec import PipelineSpec
from pusa_batch.store.index import RootState
from pusa_batch.store.keys import text_keys

PLAN_CHUNK_ROWS = 8192  # manifest rows read at a time while planning (at most 65,536)
MAX_CHANGED_IDS = 1000  # changed ids kept for the error message (all are counted)
FINGERPRINT_BATCH_ROWS = 4096  # done rows fingerprinted at a time (bounds the texts alive)
KEEP_TODO_ITEMS = 1024  # items to do that `make_plan` keeps for the first dispatch (~1 MB)


class ItemKind(str, enum.Enum):
    DONE = "done"
    CHANGED = "changed"  # done, with another fingerprint
    DAMAGED = "damaged"  # recorded done, but its video or marker is missing or truncated
    FAILED = "failed"  # failed in an earlier run
    PENDING = "pending"


KINDS = tuple(ItemKind)  # a kind's code in the counting pass is its index here
_CODE = {kind: np.uint8(code) for code, kind in enumerate(KINDS)}


@dataclass(frozen=True)
class Rules:
    """Which kinds of item a run generates besides the pending ones."""

    retry_failed: bool = False
    regenerate_changed: bool = False

    def is_todo(self, kind: ItemKind) -> bool:
        return (
            kind in (ItemKind.PENDING, ItemKind.DAMAGED)
            or (kind is ItemKind.FAILED and self.retry_failed)
            or (kind is ItemKind.CHANGED and self.regenerate_changed)
        )

    def todo_codes(self) -> np.ndarray:
        return np.array([_CODE[k] for k in KINDS if self.is_todo(k)], dtype=np.uint8)


@dataclass(frozen=True)
class ChunkRows:
    """The rows to do of one manifest chunk: offsets (2 bytes each) or a bitmap (1 bit a row)."""

    chunk: int  # the chunk's number, from 0, in chunks of PLAN_CHUNK_ROWS rows
    rows: int  # rows in the chunk
    packed: np.ndarray  # uint16 offsets, or uint8 bitmap bytes
    bitmap: bool

    @staticmethod
    def of(chunk: int, todo: np.ndarray) -> ChunkRows:
        offsets = np.flatnonzero(todo)
        if 2 * len(offsets) <= (len(todo) + 7) // 8:
            return ChunkRows(chunk, len(todo), offsets.astype(np.uint16), bitmap=False)
        return ChunkRows(chunk, len(todo), np.packbits(todo), bitmap=True)

    def offsets(self) -> np.ndarray:
        if self.bitmap:
            return np.flatnonzero(np.unpackbits(self.packed, count=self.rows))
        return self.packed.astype(np.int64)


@dataclass(frozen=True)
class PlanCounts:
    """What the counting pass keeps: counts per kind, the first changed ids, the rows to do."""

    total: int
    done: int
    changed: int
    failed: int
    pending: int
    damaged: int  # regenerated: their files no longer match the record
    todo: int  # items to dispatch under the rules
    failed_before: int  # failed in an earlier run and skipped (0 with retry_failed)
    changed_ids: tuple[str, ...]
    todo_ids: tuple[str, ...] = ()  # the first items to dispatch, when asked for


@dataclass(frozen=True)
class Plan:
    """The counting pass's result under `rules`: its counts, the first items to do (with their
    fingerprints), and the rows to do after those, per chunk."""

    counts: PlanCounts
    first: tuple[tuple[Item, str], ...] = field(repr=False)
    todo_rows: tuple[ChunkRows, ...] = field(repr=False)
    rules: Rules


def classify(state: RootState, item_id: str, fingerprint: str | None) -> ItemKind:
    """The item's kind; with no fingerprint (no pipeline to compute it) a done item is done."""
    id_keys = text_keys(np.array([item_id], dtype=object))
    fingerprints = None if fingerprint is None else [fingerprint]
    return KINDS[int(kinds_of(state, id_keys, lambda rows: fingerprints)[0])]


def kinds_of(state: RootState, id_keys: np.ndarray, fingerprints_of) -> np.ndarray:
    """Each id's kind code. `fingerprints_of(rows)` gives the fingerprints of the done rows
    (offsets into `id_keys`), or None where there is no pipeline to compute them."""
    done, recorded = state.recorded(id_keys)
    kinds = np.full(len(id_keys), _CODE[ItemKind.PENDING], dtype=np.uint8)
    kinds[~done & state.has_failed(id_keys)] = _CODE[ItemKind.FAILED]
    kinds[~done & state.is_damaged(id_keys)] = _CODE[ItemKind.DAMAGED]
    rows = np.flatnonzero(done)
    kinds[rows] = _CODE[ItemKind.DONE]
    for start in range(0, len(rows), FINGERPRINT_BATCH_ROWS):
        batch = rows[start : start + FINGERPRINT_BATCH_ROWS]
        fingerprints = fingerprints_of(batch)
        if fingerprints is None:
            continue
        same = text_keys(np.array(fingerprints, dtype=object)) == recorded[batch]
        kinds[batch[~same]] = _CODE[ItemKind.CHANGED]
    return kinds


class _Fingerprinter:
    """The fingerprints of a chunk's rows, as the spec makes them (None without a spec)."""

    def __init__(self, spec: PipelineSpec | None):
        self.spec = spec
        self.identity = spec.identity() if spec is not None else None
        self.template: FingerprintTemplate | None = (
            plain_t2v_template(self.identity) if spec is not None else None
        )

    def of(self, chunk: CheckedChunk, rows: np.ndarray) -> list[str] | None:
        if self.spec is None:
            return None
        return chunk_fingerprints(
            chunk,
            rows,
            self.identity,
            temporal_factor=self.spec.temporal_factor,
            template=self.template,
        )


def iter_chunk_kinds(
    manifest: str,
    spec: PipelineSpec | None,
    state: RootState,
    *,
    storage_options: dict | None = None,
) -> Iterator[tuple[CheckedChunk, np.ndarray]]:
    """(checked chunk, kind code of each of its rows), in manifest order."""
    fingerprinter = _Fingerprinter(spec)
    chunks = iter_checked_chunks(
        manifest, spec, chunk_rows=PLAN_CHUNK_ROWS, storage_options=storage_options
    )
    for chunk in chunks:
        kinds = kinds_of(state, text_keys(chunk.ids), partial(fingerprinter.of, chunk))
        yield chunk, kinds


def count_plan(
    manifest: str,
    spec: PipelineSpec | None,
    state: RootState,
    rules: Rules = Rules(),
    *,
    keep_todo_ids: int = 0,
    **read,
) -> PlanCounts:
    """The counting pass's counts (and the first `keep_todo_ids` ids to dispatch)."""
    plan = make_plan(
        manifest, spec, state, rules, keep_todo_ids=keep_todo_ids, keep_todo_items=0, **read
    )
    return plan.counts


def make_plan(
    manifest: str,
    spec: PipelineSpec | None,
    state: RootState,
    rules: Rules = Rules(),
    *,
    keep_todo_ids: int = 0,
    keep_todo_items: int = KEEP_TODO_ITEMS,
    **read,
) -> Plan:
    """The counting pass: counts, the first `keep_todo_ids` ids to dispatch, the first
    `keep_todo_items` items to do (with a spec) and the rows to do after them, for `iter_todo`
    (see the module's decisions)."""
    counts = np.zeros(len(KINDS), dtype=np.int64)
    todo_codes = rules.todo_codes()
    changed_ids: list[str] = []
    todo_ids: list[str] = []
    todo_rows: list[ChunkRows] = []
    first: list[tuple[Item, str]] = []
    fingerprinter = _Fingerprinter(spec)
    keep_items = keep_todo_items if spec is not None else 0
    for number, (chunk, kinds) in enumerate(iter_chunk_kinds(manifest, spec, state, **read)):
        counts += np.bincount(kinds, minlength=len(KINDS))
        is_todo = np.isin(kinds, todo_codes)
        rest = is_todo  # the rows the dispatch pass reads again
        if is_todo.any() and len(first) < keep_items:
            kept = np.flatnonzero(is_todo)[: keep_items - len(first)]
            first += zip(chunk_items(chunk, kept), fingerprinter.of(chunk, kept), strict=True)
            rest = is_todo.copy()
            rest[kept] = False
        if rest.any():
            todo_rows.append(ChunkRows.of(number, rest))
        if len(todo_ids) < keep_todo_ids:
            todo_ids += [str(i) for i in chunk.ids[is_todo][: keep_todo_ids - len(todo_ids)]]
        if len(changed_ids) < MAX_CHANGED_IDS:
            changed = chunk.ids[kinds == _CODE[ItemKind.CHANGED]]
            changed_ids += [str(i) for i in changed[: MAX_CHANGED_IDS - len(changed_ids)]]
    count = {kind: int(counts[_CODE[kind]]) for kind in KINDS}
    plan_counts = PlanCounts(
        total=int(counts.sum()),
        done=count[ItemKind.DONE],
        changed=count[ItemKind.CHANGED],
        failed=count[ItemKind.FAILED],
        pending=count[ItemKind.PENDING],
        damaged=count[ItemKind.DAMAGED],
        todo=sum(count[k] for k in KINDS if rules.is_todo(k)),
        failed_before=0 if rules.retry_failed else count[ItemKind.FAILED],
        changed_ids=tuple(changed_ids),
        todo_ids=tuple(todo_ids),
    )
    return Plan(plan_counts, tuple(first), tuple(todo_rows), rules)


def iter_todo(
    manifest: str,
    spec: PipelineSpec,
    state: RootState,
    rules: Rules = Rules(),
    *,
    plan: Plan | None = None,
    **read,
) -> Iterator[Pending]:
    """The dispatch pass, consumed as workers drain the driver's queue: the items to generate.

    With the counting pass's `plan` (`make_plan`, same rules), its first items come at once and
    only the rows it chose after them are read and checked; without, every row is classified
    again.
    """
    if plan is None or plan.rules != rules:
        yield from _iter_todo_all(manifest, spec, state, rules, **read)
        return
    for item, fingerprint in plan.first:
        yield Pending(item, fingerprint, cost=item.cost())
    chosen = {rows.chunk: rows.offsets() for rows in plan.todo_rows}
    identity = spec.identity()
    items = iter_chosen_items(manifest, spec, chosen, chunk_rows=PLAN_CHUNK_ROWS, **read)
    for item in items:
        fingerprint = item_fingerprint(item, identity, temporal_factor=spec.temporal_factor)
        if rules.is_todo(classify(state, item.id, fingerprint)):
            yield Pending(item, fingerprint, cost=item.cost())


def _iter_todo_all(
    manifest: str, spec: PipelineSpec, state: RootState, rules: Rules, **read
) -> Iterator[Pending]:
    fingerprinter = _Fingerprinter(spec)
    todo_codes = rules.todo_codes()
    for chunk, kinds in iter_chunk_kinds(manifest, spec, state, **read):
        rows = np.flatnonzero(np.isin(kinds, todo_codes))
        for start in range(0, len(rows), FINGERPRINT_BATCH_ROWS):
            batch = rows[start : start + FINGERPRINT_BATCH_ROWS]
            items = chunk_items(chunk, batch)
            for item, fingerprint in zip(items, fingerprinter.of(chunk, batch), strict=True):
                yield Pending(item, fingerprint, cost=item.cost())


def changed_error(plan: PlanCounts) -> ChangedItemsError:
    if plan.changed <= len(plan.changed_ids):
        return ChangedItemsError(sorted(plan.changed_ids))
    return ManyChangedItemsError(list(plan.changed_ids), plan.changed)
