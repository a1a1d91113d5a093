"""The one resume plan: every manifest item against the output root's state, streamed.

`run` and `status` both plan through here. The manifest is read `PLAN_CHUNK_ROWS` rows at a time
against one read of the root's state (`Store.state()`); a counting pass keeps only counts and the
first `MAX_CHANGED_IDS` changed ids, so memory does not grow with the manifest, and `run`'s second
pass yields the items to dispatch as its workers drain the queue.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

from pusa_batch.engine.contract import Pending
from pusa_batch.errors import ChangedItemsError, ManyChangedItemsError
from pusa_batch.item import Item
from pusa_batch.manifest.read import item_fingerprint, iter_items
from pusa_batch.pipelines.spec import PipelineSpec
from pusa_batch.store.index import RootState

PLAN_CHUNK_ROWS = 8192  # manifest rows read at a time while planning
MAX_CHANGED_IDS = 1000  # changed ids kept for the error message (all are counted)


class ItemKind(str, enum.Enum):
    DONE = "done"
    CHANGED = "changed"  # done, with another fingerprint
    DAMAGED = "damaged"  # recorded done, but its video or marker is missing or truncated
    FAILED = "failed"  # failed in an earlier run
    PENDING = "pending"


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


@dataclass(frozen=True)
class PlanCounts:
    """What the counting pass keeps: counts per kind, and the first changed ids."""

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


def classify(state: RootState, item_id: str, fingerprint: str | None) -> ItemKind:
    """The item's kind; with no fingerprint (no pipeline to compute it) a done item is done."""
    is_done, recorded = state.done_fingerprint(item_id)
    if is_done:
        return ItemKind.DONE if fingerprint in (None, recorded) else ItemKind.CHANGED
    if item_id in state.damaged:
        return ItemKind.DAMAGED
    return ItemKind.FAILED if item_id in state.failures else ItemKind.PENDING


def iter_classified(
    manifest: str,
    spec: PipelineSpec | None,
    state: RootState,
    *,
    storage_options: dict | None = None,
) -> Iterator[tuple[Item, str | None, ItemKind]]:
    """(item, fingerprint, kind) in manifest order; no fingerprints without a spec."""
    identity = spec.identity() if spec is not None else None
    items = iter_items(manifest, spec, chunk_rows=PLAN_CHUNK_ROWS, storage_options=storage_options)
    for item in items:
        fingerprint = None
        if spec is not None:
            fingerprint = item_fingerprint(item, identity, temporal_factor=spec.temporal_factor)
        yield item, fingerprint, classify(state, item.id, fingerprint)


def count_plan(
    manifest: str,
    spec: PipelineSpec | None,
    state: RootState,
    rules: Rules = Rules(),
    *,
    keep_todo_ids: int = 0,
    **read,
) -> PlanCounts:
    """The counting pass: counts only (and the first `keep_todo_ids` ids to dispatch), so
    memory does not grow with the manifest."""
    counts: Counter[ItemKind] = Counter()
    todo = 0
    changed_ids: list[str] = []
    todo_ids: list[str] = []
    for item, _, kind in iter_classified(manifest, spec, state, **read):
        counts[kind] += 1
        is_todo = rules.is_todo(kind)
        todo += is_todo
        if is_todo and len(todo_ids) < keep_todo_ids:
            todo_ids.append(item.id)
        if kind is ItemKind.CHANGED and len(changed_ids) < MAX_CHANGED_IDS:
            changed_ids.append(item.id)
    return PlanCounts(
        total=sum(counts.values()),
        done=counts[ItemKind.DONE],
        changed=counts[ItemKind.CHANGED],
        failed=counts[ItemKind.FAILED],
        pending=counts[ItemKind.PENDING],
        damaged=counts[ItemKind.DAMAGED],
        todo=todo,
        failed_before=0 if rules.retry_failed else counts[ItemKind.FAILED],
        changed_ids=tuple(changed_ids),
        todo_ids=tuple(todo_ids),
    )


def iter_todo(
    manifest: str, spec: PipelineSpec, state: RootState, rules: Rules = Rules(), **read
) -> Iterator[Pending]:
    """The dispatch pass, consumed as workers drain the driver's queue: the items to generate.

    An item whose inputs changed between the passes is left alone unless `regenerate_changed`.
    """
    for item, fingerprint, kind in iter_classified(manifest, spec, state, **read):
        if rules.is_todo(kind):
            yield Pending(item, fingerprint, cost=item.cost())


def changed_error(plan: PlanCounts) -> ChangedItemsError:
    if plan.changed <= len(plan.changed_ids):
        return ChangedItemsError(sorted(plan.changed_ids))
    return ManyChangedItemsError(list(plan.changed_ids), plan.changed)
