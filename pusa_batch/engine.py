"""A run: validate, take the lease, plan from the output root, dispatch (`dispatch.py`), index.

Decisions:
- The manifest is streamed, never held: it is validated in one pass, then read twice more in
  chunks of `PLAN_CHUNK_ROWS` rows against one read of the root's state (`Store.state()`). The
  first pass keeps only counts and the first `MAX_CHANGED_IDS` changed ids, so changed items stop
  the run before anything is generated; the second pass feeds the driver's bounded queue as
  workers drain it. The driver's memory is flat in the number of rows (the root's state still
  holds one fingerprint per done item).
- Items that failed in an earlier run are skipped (counted in `failed_before`) unless
  `retry_failed`; done items whose fingerprint changed stop the run (`ChangedItemsError`) unless
  `regenerate_changed`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import ray

from pusa_batch.doctor import preflight
from pusa_batch.errors import ChangedItemsError, ManyChangedItemsError
from pusa_batch.manifest import item_fingerprint, iter_items, validate_manifest
from pusa_batch.manifest_schema import Item
from pusa_batch.pipeline_spec import PipelineSpec, load_pipeline_spec
from pusa_batch.store import Store
from pusa_batch.store_index import RootState
from pusa_batch.worker import ItemRunner, PipelineRunner

if TYPE_CHECKING:
    from pusa_batch.dispatch import Pending

log = logging.getLogger(__name__)

PLAN_CHUNK_ROWS = 8192  # manifest rows read at a time while planning
MAX_CHANGED_IDS = 1000  # changed ids kept for the error message (all are counted)


@dataclass(frozen=True)
class RunConfig:
    manifest: str
    output: str
    pipeline: str
    storage_options: Mapping[str, Any] = field(default_factory=dict)
    workers: int | None = None  # None: one per GPU in the cluster, else 1
    gpus_per_worker: float | None = None  # None: 1 when the cluster has GPUs, else 0
    cpus_per_worker: float = 1.0
    address: str | None = None  # None: embedded local Ray on 127.0.0.1; "auto", "ray://..."
    max_retries: int = 2
    max_actor_restarts: int = 3
    retry_failed: bool = False
    regenerate_changed: bool = False
    longest_first: bool = False
    batch_size: int = 1
    overlap: bool = True
    compact_every_items: int = 200
    compact_every_s: float = 300.0
    lease_stale_s: float = 120.0
    status_every_s: float = 1.0
    worker_start_timeout_s: float = 900.0

    def __post_init__(self) -> None:
        problems = [
            f"{name} must be {rule}, got {getattr(self, name)!r}"
            for name, ok, rule in (
                ("workers", self.workers is None or self.workers >= 1, "at least 1"),
                ("cpus_per_worker", self.cpus_per_worker > 0, "positive"),
                ("max_retries", self.max_retries >= 0, "0 or more"),
                ("max_actor_restarts", self.max_actor_restarts >= 0, "0 or more"),
                ("batch_size", self.batch_size >= 1, "at least 1"),
                ("compact_every_items", self.compact_every_items >= 1, "at least 1"),
                ("lease_stale_s", self.lease_stale_s > 0, "positive"),
            )
            if not ok
        ]
        if problems:
            raise ValueError("invalid run settings: " + "; ".join(problems))


@dataclass(frozen=True)
class RunSummary:
    total: int
    done_before: int
    generated: int
    failed: int
    skipped: int
    wall_s: float
    output: str
    failures: list[dict[str, Any]]
    failed_before: int = 0
    workers: dict[str, dict[str, Any]] = field(default_factory=dict)
    active_s: float = 0.0  # wall time from the last worker loaded to the last result

    @property
    def exit_code(self) -> int:
        return 1 if self.failed or self.failed_before else 0


@dataclass(frozen=True)
class Event:
    kind: ClassVar[str] = "event"


@dataclass(frozen=True)
class Started(Event):
    kind: ClassVar[str] = "started"
    total: int
    pending: int
    done_before: int


@dataclass(frozen=True)
class Notice(Event):
    """Something the user should know that is not an error (e.g. a stale lease taken over)."""

    kind: ClassVar[str] = "notice"
    message: str


@dataclass(frozen=True)
class ActorLoaded(Event):
    kind: ClassVar[str] = "actor_loaded"
    worker: str
    seconds: float
    pid: int
    host: str


@dataclass(frozen=True)
class ActorFailed(Event):
    kind: ClassVar[str] = "actor_failed"
    worker: str
    reason: str


@dataclass(frozen=True)
class ItemDone(Event):
    kind: ClassVar[str] = "item_done"
    id: str
    worker: str
    attempt: int
    timings: dict[str, float]


@dataclass(frozen=True)
class ItemFailed(Event):
    kind: ClassVar[str] = "item_failed"
    id: str
    worker: str
    error_type: str
    message: str
    attempts: int
    final: bool  # False: it will be retried


@dataclass(frozen=True)
class WorkerStatus(Event):
    kind: ClassVar[str] = "worker_status"
    worker: str
    item: str | None
    step: int
    steps: int


@dataclass(frozen=True)
class Finished(Event):
    kind: ClassVar[str] = "finished"
    summary: RunSummary


OnEvent = Callable[[Event], None]


def run(
    config: RunConfig,
    on_event: OnEvent | None = None,
    *,
    make_runner: Callable[[], ItemRunner] | None = None,
) -> RunSummary:
    """Generate every pending item of `config.manifest` into `config.output`.

    `make_runner` replaces the pipeline runner (a picklable factory returning an `ItemRunner`).
    """
    from pusa_batch.dispatch import Driver  # dispatch imports this module's events

    emit = on_event or (lambda event: None)
    started = time.monotonic()
    spec = load_pipeline_spec(config.pipeline)
    validate_manifest(config.manifest, spec).raise_for_problems(config.manifest)
    store = Store(config.output, dict(config.storage_options))
    owner = {"host": socket.gethostname(), "pid": os.getpid(), "command": "run"}
    lease = store.acquire_lease(owner, stale_after_s=config.lease_stale_s)
    lease.start_heartbeat(max(1.0, config.lease_stale_s / 4))
    if lease.note:
        emit(Notice(lease.note))
    try:
        state = store.state()
        plan = count_plan(config, spec, state)
        if plan.changed and not config.regenerate_changed:
            raise _changed_error(plan)
        emit(Started(total=plan.total, pending=plan.todo, done_before=plan.done))
        runner = make_runner or functools.partial(PipelineRunner, config.pipeline)
        driver = Driver(config, store, emit, runner, lease)
        if plan.todo and make_runner is None:
            preflight(spec, device_checks=config.address is None)
        if plan.todo:
            try:
                with _ray_session(config):
                    driver.run(iter_todo(config, spec, state), plan.todo)
            except BaseException:
                with contextlib.suppress(Exception):  # keep what is done; the error is the news
                    store.compact_index()
                    driver.write_status(state="stopped")
                raise
        store.compact_index()
        store.write_final_index()
        summary = RunSummary(
            total=plan.total,
            done_before=plan.done,
            generated=driver.generated,
            failed=len(driver.failures),
            skipped=plan.done + plan.failed_before,
            wall_s=time.monotonic() - started,
            output=config.output,
            failures=driver.failures,
            failed_before=plan.failed_before,
            workers=driver.worker_stats(),
            active_s=driver.active_s(),
        )
        driver.write_status(state="finished", summary=summary)
    finally:
        lease.release()
    emit(Finished(summary))
    return summary


# -- planning: two streaming passes over the manifest against one read of the root's state -----


@dataclass(frozen=True)
class PlanCounts:
    """What the first pass keeps: counts, and the first `MAX_CHANGED_IDS` changed ids."""

    total: int
    done: int
    todo: int  # items to dispatch
    failed_before: int  # failed in an earlier run and skipped (0 with retry_failed)
    changed: int
    changed_ids: tuple[str, ...]


def classify(state: RootState, item_id: str, fingerprint: str) -> str:
    """done | changed (done with another fingerprint) | failed (in an earlier run) | pending."""
    is_done, recorded = state.done_fingerprint(item_id)
    if is_done:
        return "done" if recorded == fingerprint else "changed"
    return "failed" if item_id in state.failures else "pending"


def is_todo(kind: str, config: RunConfig) -> bool:
    return (
        kind == "pending"
        or (kind == "failed" and config.retry_failed)
        or (kind == "changed" and config.regenerate_changed)
    )


def iter_classified(
    config: RunConfig, spec: PipelineSpec, state: RootState
) -> Iterator[tuple[Item, str, str]]:
    """(item, fingerprint, kind) in manifest order, read `PLAN_CHUNK_ROWS` rows at a time."""
    identity, factor = spec.identity(), spec.temporal_factor
    for item in iter_items(config.manifest, spec, chunk_rows=PLAN_CHUNK_ROWS):
        fingerprint = item_fingerprint(item, identity, temporal_factor=factor)
        yield item, fingerprint, classify(state, item.id, fingerprint)


def count_plan(config: RunConfig, spec: PipelineSpec, state: RootState) -> PlanCounts:
    """The first pass: counts only, so the driver's memory does not grow with the manifest."""
    counts: Counter[str] = Counter()
    changed_ids: list[str] = []
    for item, _, kind in iter_classified(config, spec, state):
        counts[kind] += 1
        counts["todo"] += is_todo(kind, config)
        if kind == "changed" and len(changed_ids) < MAX_CHANGED_IDS:
            changed_ids.append(item.id)
    return PlanCounts(
        total=sum(counts[k] for k in ("done", "changed", "failed", "pending")),
        done=counts["done"],
        todo=counts["todo"],
        failed_before=0 if config.retry_failed else counts["failed"],
        changed=counts["changed"],
        changed_ids=tuple(changed_ids),
    )


def iter_todo(config: RunConfig, spec: PipelineSpec, state: RootState) -> Iterator[Pending]:
    """The second pass, consumed as workers drain the driver's queue: the items to dispatch.

    An item whose inputs changed between the passes is left alone unless `regenerate_changed`.
    """
    from pusa_batch.dispatch import Pending

    for item, fingerprint, kind in iter_classified(config, spec, state):
        if is_todo(kind, config):
            yield Pending(item.to_dict(), fingerprint, cost=item.cost())


def _changed_error(plan: PlanCounts) -> ChangedItemsError:
    if plan.changed <= len(plan.changed_ids):
        return ChangedItemsError(sorted(plan.changed_ids))
    return ManyChangedItemsError(list(plan.changed_ids), plan.changed)


@contextlib.contextmanager
def _ray_session(config: RunConfig) -> Iterator[None]:
    """Use the connected Ray, else connect (embedded local Ray on 127.0.0.1 when no address)."""
    if ray.is_initialized():
        yield
        return
    quiet = {"logging_level": logging.WARNING, "log_to_driver": False}
    if config.address is None:
        cpus = max(os.cpu_count() or 1, math.ceil((config.workers or 1) * config.cpus_per_worker))
        ray.init(num_cpus=cpus, include_dashboard=False, _node_ip_address="127.0.0.1", **quiet)
    else:
        ray.init(address=config.address, **quiet)
    try:
        yield
    finally:
        ray.shutdown()
