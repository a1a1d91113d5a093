"""What a run is given and what it tells: `RunConfig`, `RunSummary` and the events it emits.

Frozen dataclasses, sent as they are between the driver, its callers and the CLI.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

RAY_BUILTIN_RESOURCES = ("CPU", "GPU", "memory", "object_store_memory")


@dataclass(frozen=True)
class RunConfig:
    manifest: str
    output: str
    pipeline: str
    storage_options: Mapping[str, Any] = field(default_factory=dict)
    weights_storage_options: Mapping[str, Any] = field(default_factory=dict)  # weight URLs' fsspec
    # None (`--workers auto`): on a cluster (an address, or RAY_ADDRESS), one per free GPU (on
    # CPU, one per `cpus_per_worker` free CPUs), more as nodes join, up to `max_workers`; on an
    # embedded local Ray, one per GPU, else 1. A number: that many, replaced when a node is lost.
    workers: int | None = None
    gpus_per_worker: float | None = None  # None: 1 when the cluster has GPUs, else 0
    cpus_per_worker: float = 1.0
    max_workers: int | None = None  # the most actors `workers=None` grows to (None: no cap)
    resources: Mapping[str, float] = field(default_factory=dict)  # custom Ray resources per actor
    node_labels: Mapping[str, str] = field(default_factory=dict)  # Ray label selector per actor
    pool_poll_s: float = 5.0  # how often the driver looks for room in the cluster and lost nodes
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
    trust_index: bool = False  # skip checking done items' files against the index
    strict_columns: bool = False  # refuse manifest columns that are not ours (else `extra`)
    lease_wait: bool = True  # wait for a holder that missed heartbeats (False: refuse at once)
    storage_timeout_s: float = 30.0  # how long the driver retries an unreachable output root
    status_every_s: float = 1.0
    worker_start_timeout_s: float = 900.0

    def __post_init__(self) -> None:
        problems = [
            f"{name} must be {rule}, got {getattr(self, name)!r}"
            for name, ok, rule in (
                ("workers", self.workers is None or self.workers >= 1, "at least 1"),
                ("cpus_per_worker", self.cpus_per_worker > 0, "positive"),
                (
                    "gpus_per_worker",
                    self.gpus_per_worker is None or self.gpus_per_worker >= 0,
                    "0 or more",
                ),
                ("max_retries", self.max_retries >= 0, "0 or more"),
                ("max_actor_restarts", self.max_actor_restarts >= 0, "0 or more"),
                ("batch_size", self.batch_size >= 1, "at least 1"),
                ("compact_every_items", self.compact_every_items >= 1, "at least 1"),
                ("lease_stale_s", self.lease_stale_s > 0, "positive"),
                ("storage_timeout_s", self.storage_timeout_s > 0, "positive"),
                ("max_workers", self.max_workers is None or self.max_workers >= 1, "at least 1"),
                ("pool_poll_s", self.pool_poll_s > 0, "positive"),
            )
            if not ok
        ]
        if self.max_workers is not None and self.workers is not None:
            problems.append("max_workers caps workers=auto; give one of workers and max_workers")
        for name, amount in dict(self.resources).items():
            if name in RAY_BUILTIN_RESOURCES:
                problems.append(
                    f"resources: {name} is set by cpus_per_worker / gpus_per_worker, not here"
                )
            elif not isinstance(amount, int | float) or isinstance(amount, bool) or amount <= 0:
                problems.append(f"resources: {name} must be a positive number, got {amount!r}")
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
    damaged: int = 0  # recorded done, found missing or truncated, and generated again
    extra_columns: tuple[str, ...] = ()  # the manifest's own columns, carried as `extra`

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
class Phase(Event):
    """The stage a run is in before items flow, so the user sees what they wait for."""

    kind: ClassVar[str] = "phase"
    name: str  # e.g. "reading the manifest and the output root", "starting Ray"


@dataclass(frozen=True)
class WorkersStarting(Event):
    """Workers w0 .. w{count-1} exist or are starting (sent again, larger, as the pool grows)."""

    kind: ClassVar[str] = "workers_starting"
    count: int


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
class WorkerLeft(Event):
    """A worker left the pool without failing (its node was lost or preempted): its items went
    back to the queue, uncharged."""

    kind: ClassVar[str] = "worker_left"
    worker: str
    reason: str


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
    """What a worker does now: `item` is being sampled (at `step` of `steps`), `preparing` is
    being encoded/loaded, `finishing` decoded, encoded and committed; all None: idle."""

    kind: ClassVar[str] = "worker_status"
    worker: str
    item: str | None
    step: int
    steps: int
    preparing: str | None = None
    finishing: str | None = None
    staging: str | None = None  # while loading: weight staging, e.g. "staging 12.1/28.0 GB"


@dataclass(frozen=True)
class Finished(Event):
    kind: ClassVar[str] = "finished"
    summary: RunSummary


OnEvent = Callable[[Event], None]
