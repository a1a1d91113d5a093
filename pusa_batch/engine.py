"""The Ray driver: plan from the output root, feed idle workers, retry, record, compact.

Decisions:
- Items are pulled, never pre-sharded: a worker holds at most 3 items with overlap (one being
  prepared, one sampled, one decoded/encoded/committed) and 1 without.
- Workers commit (`store.commit`) themselves, so mp4 bytes never travel through the driver; the
  output root must therefore be reachable from every worker (a shared path or object store).
- An item's exception is retried up to `max_retries` times, preferably on another worker, then
  recorded in `failures/{id}.json`; the run goes on.
- A dead worker's items go back to the queue; only the item it was sampling is charged an attempt.
  Ray restarts a worker up to `max_actor_restarts` times, after which it is retired with a
  message; the run fails with `WorkerError` only when no worker is left.
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
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import ray
from ray.exceptions import ActorUnavailableError, RayActorError

from pusa_batch.doctor import preflight
from pusa_batch.errors import ChangedItemsError, PipelineError, WorkerError
from pusa_batch.manifest import item_fingerprint, iter_items, validate_manifest
from pusa_batch.pipeline_spec import load_pipeline_spec
from pusa_batch.store import Store
from pusa_batch.worker import ItemRunner, PipelineRunner, Worker, WorkerSettings

log = logging.getLogger(__name__)


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
                ("batch_size", self.batch_size == 1, "1 (batched sampling is not supported yet)"),
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
    emit = on_event or (lambda event: None)
    started = time.monotonic()
    items, fingerprints = _load_items(config)
    store = Store(config.output, dict(config.storage_options))
    owner = {"host": socket.gethostname(), "pid": os.getpid(), "command": "run"}
    lease = store.acquire_lease(owner, stale_after_s=config.lease_stale_s)
    lease.start_heartbeat(max(1.0, config.lease_stale_s / 4))
    if lease.note:
        emit(Notice(lease.note))
    try:
        plan = store.plan(fingerprints.items())
        if plan.changed and not config.regenerate_changed:
            raise ChangedItemsError(sorted(plan.changed))
        failed_before = set() if config.retry_failed else set(plan.failed)
        todo = (set(plan.pending) - failed_before) | set(plan.changed)
        order = [i for i in items if i in todo]
        if config.longest_first:
            order.sort(key=lambda i: -items[i].cost())
        emit(Started(total=len(items), pending=len(order), done_before=len(plan.done)))
        runner = make_runner or functools.partial(PipelineRunner, config.pipeline)
        driver = _Driver(config, store, emit, runner, lease)
        if order and make_runner is None:
            preflight(load_pipeline_spec(config.pipeline), device_checks=config.address is None)
        if order:
            try:
                with _ray_session(config):
                    driver.run([Pending(items[i].to_dict(), fingerprints[i]) for i in order])
            except BaseException:
                with contextlib.suppress(Exception):  # keep what is done; the error is the news
                    store.compact_index()
                    driver.write_status(state="stopped")
                raise
        store.compact_index()
        store.write_final_index()
        summary = RunSummary(
            total=len(items),
            done_before=len(plan.done),
            generated=driver.generated,
            failed=len(driver.failures),
            skipped=len(plan.done) + len(failed_before),
            wall_s=time.monotonic() - started,
            output=config.output,
            failures=driver.failures,
            failed_before=len(failed_before),
            workers=driver.worker_stats(),
            active_s=driver.active_s(),
        )
        driver.write_status(state="finished", summary=summary)
    finally:
        lease.release()
    emit(Finished(summary))
    return summary


def _load_items(config: RunConfig) -> tuple[dict[str, Any], dict[str, str]]:
    """Validate every row (ManifestError lists them all), then the items and fingerprints."""
    spec = load_pipeline_spec(config.pipeline)
    validate_manifest(config.manifest, spec).raise_for_problems(config.manifest)
    identity, factor = spec.identity(), spec.temporal_factor
    items = {item.id: item for item in iter_items(config.manifest, spec)}
    fingerprints = {
        i: item_fingerprint(item, identity, temporal_factor=factor) for i, item in items.items()
    }
    return items, fingerprints


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


@dataclass
class Pending:
    item: dict[str, Any]
    fingerprint: str
    attempts: int = 0  # failed attempts so far
    tried: set[str] = field(default_factory=set)

    @property
    def id(self) -> str:
        return self.item["id"]


@dataclass
class Slot:
    wid: str
    handle: Any
    state: str = "loading"  # loading | ready | restarting | dead
    since: float = field(default_factory=time.monotonic)
    inflight: dict[Any, Pending] = field(default_factory=dict)
    status: tuple[str | None, int, int] = (None, 0, 0)
    polling: bool = False
    deaths: int = 0
    reprobe_at: float | None = None
    info: dict[str, Any] = field(default_factory=dict)
    done: int = 0
    busy_s: float = 0.0
    reason: str | None = None


class _Driver:
    def __init__(
        self, config: RunConfig, store: Store, emit: OnEvent, make_runner: Callable, lease: Any
    ):
        self.config, self.store, self.emit, self.make_runner = config, store, emit, make_runner
        self.lease = lease
        self.depth = 3 if config.overlap else 1
        self.queue: deque[Pending] = deque()
        self.slots: list[Slot] = []
        self.refs: dict[Any, tuple[str, Slot, Pending | None]] = {}
        self.generated = 0
        self.failures: list[dict[str, Any]] = []
        self.started = time.monotonic()
        self.all_loaded_at: float | None = None
        self.last_result_at: float | None = None
        self._since_compact = 0
        self._last_compact = self._last_status = self._last_poll = time.monotonic()

    # -- the loop ----------------------------------------------------------------------------

    def run(self, tasks: list[Pending]) -> None:
        self.queue.extend(tasks)
        try:
            self._start_workers()
            self._loop()
        finally:
            for slot in self.slots:  # a shared Ray keeps actors alive otherwise
                ray.kill(slot.handle, no_restart=True)

    def _loop(self) -> None:
        while self.queue or any(s.inflight for s in self.slots):
            if self.lease.lost is not None:
                raise self.lease.lost
            if not any(s.state != "dead" for s in self.slots):
                raise self._no_workers_left()
            self._dispatch()
            ready, _ = ray.wait(list(self.refs), num_returns=1, timeout=0.25)
            if ready:
                more, _ = ray.wait(list(self.refs), num_returns=len(self.refs), timeout=0)
                for ref in {*ready, *more}:
                    self._handle(ref)
            self._periodic()

    def _start_workers(self) -> None:
        resources = ray.cluster_resources()
        gpus = self.config.gpus_per_worker
        if gpus is None:
            gpus = 1.0 if resources.get("GPU", 0) >= 1 else 0.0
        workers = self.config.workers or (int(resources.get("GPU", 0) // gpus) if gpus else 1)
        for n in range(max(1, workers)):
            settings = WorkerSettings(
                worker_id=f"w{n}",
                output=self.config.output,
                storage_options=dict(self.config.storage_options),
                torch_threads=None if gpus else max(1, int(self.config.cpus_per_worker)),
                lease_token=self.lease.token,
            )
            handle = Worker.options(
                num_cpus=self.config.cpus_per_worker,
                num_gpus=gpus,
                max_restarts=self.config.max_actor_restarts,
                max_task_retries=0,
                max_concurrency=self.depth,
            ).remote(self.make_runner, settings)
            slot = Slot(f"w{n}", handle)
            self.slots.append(slot)
            self._probe(slot)

    def _probe(self, slot: Slot) -> None:
        self.refs[slot.handle.info.remote()] = ("info", slot, None)

    def _dispatch(self) -> None:
        for slot in self.slots:
            while slot.state == "ready" and self.queue and len(slot.inflight) < self.depth:
                pending = self._take(slot.wid)
                task = {
                    "item": pending.item,
                    "fingerprint": pending.fingerprint,
                    "attempt": pending.attempts + 1,
                    "queued_at": time.time(),
                }
                ref = slot.handle.run.remote(task)
                slot.inflight[ref] = pending
                self.refs[ref] = ("item", slot, pending)

    def _take(self, wid: str) -> Pending:
        """The first queued item this worker has not failed on yet, else the first one."""
        for i, pending in enumerate(self.queue):
            if wid not in pending.tried:
                del self.queue[i]
                return pending
        return self.queue.popleft()

    def _handle(self, ref: Any) -> None:
        kind, slot, pending = self.refs.pop(ref)
        if kind == "item":
            slot.inflight.pop(ref, None)
            self._on_item(ref, slot, pending)
        elif kind == "info":
            self._on_info(ref, slot)
        else:
            self._on_progress(ref, slot)

    # -- results -----------------------------------------------------------------------------

    def _on_item(self, ref: Any, slot: Slot, pending: Pending) -> None:
        try:
            result = ray.get(ref)
        except RayActorError as exc:
            self._lost(slot, exc)
            if self.store.is_done(pending.id):  # committed just before the worker died
                result = {"status": "done", "attempt": pending.attempts + 1, "timings": {}}
            elif slot.status[0] == pending.id:  # it died while sampling this one
                return self._failed(pending, slot, _died(slot, exc))
            else:
                return self.queue.appendleft(pending)
        except Exception as exc:  # noqa: BLE001 - e.g. a result that could not be unpickled
            result = {"status": "failed", "error_type": type(exc).__name__, "message": str(exc)}
        self.last_result_at = time.monotonic()
        if result["status"] == "done":
            self.generated += 1
            self._since_compact += 1
            slot.done += 1
            slot.busy_s += result["timings"].get("sample", 0.0)
            self.emit(ItemDone(pending.id, slot.wid, result["attempt"], result["timings"]))
        else:
            slot.busy_s += result.get("timings", {}).get("sample", 0.0)
            self._failed(pending, slot, result)

    def _failed(self, pending: Pending, slot: Slot, error: dict[str, Any]) -> None:
        pending.attempts += 1
        pending.tried.add(slot.wid)
        final = pending.attempts > self.config.max_retries
        self.emit(
            ItemFailed(
                pending.id,
                slot.wid,
                error.get("error_type", "Error"),
                error.get("message", ""),
                pending.attempts,
                final,
            )
        )
        if not final:
            self.queue.appendleft(pending)
            return
        info = {
            "id": pending.id,
            "error_type": error.get("error_type", "Error"),
            "message": error.get("message", ""),
            "traceback": error.get("traceback", ""),
            "stage": error.get("stage"),
            "attempts": pending.attempts,
            "worker": slot.wid,
            "node": error.get("node", slot.info.get("host")),
            "fingerprint": pending.fingerprint,
            "item": pending.item,
        }
        self.store.record_failure(pending.id, info)
        self.failures.append({k: info[k] for k in ("id", "error_type", "message", "attempts")})

    def _lost(self, slot: Slot, exc: Exception) -> None:
        """The worker process is gone: wait for Ray's restart, or retire it if Ray gave up."""
        if slot.state != "ready":
            return
        slot.deaths += 1
        slot.state = "restarting"
        slot.since = time.monotonic()
        log.warning("worker %s died (%s); waiting for its restart", slot.wid, type(exc).__name__)
        self._probe(slot)

    def _on_info(self, ref: Any, slot: Slot) -> None:
        if slot.state == "dead":
            return
        try:
            info = ray.get(ref)
        except ActorUnavailableError:
            slot.reprobe_at = time.monotonic() + 0.5  # still restarting: ask again soon
            return
        except RayActorError as exc:
            reason = (
                f"worker {slot.wid} died {slot.deaths} time(s) and exceeded max_actor_restarts="
                f"{self.config.max_actor_restarts}"
                if slot.deaths
                else f"worker {slot.wid} could not start: {exc}"
            )
            self._retire(slot, reason)
            return
        if info.get("error"):
            err = info["error"]
            self._retire(
                slot,
                f"worker {slot.wid} could not load the pipeline: {err['error_type']}: "
                f"{err['message']}",
                load_error=True,
            )
            ray.kill(slot.handle, no_restart=True)
            return
        slot.info, slot.state = info, "ready"
        slot.status = (None, 0, 0)
        self.emit(ActorLoaded(slot.wid, info["load_s"], info["pid"], info["host"]))
        if all(s.state in ("ready", "dead") for s in self.slots) and self.all_loaded_at is None:
            self.all_loaded_at = time.monotonic()

    def _retire(self, slot: Slot, reason: str, load_error: bool = False) -> None:
        slot.state, slot.reason = "dead", reason
        slot.info["load_error"] = load_error
        for ref, pending in list(slot.inflight.items()):
            self.refs.pop(ref, None)
            self.queue.appendleft(pending)
        slot.inflight.clear()
        log.error(reason)
        self.emit(ActorFailed(slot.wid, reason))

    def _no_workers_left(self) -> Exception:
        reasons = "; ".join(s.reason or s.wid for s in self.slots)
        if all(s.info.get("load_error") for s in self.slots):
            return PipelineError(f"no worker could load the pipeline: {reasons}")
        return WorkerError(
            f"every worker is gone ({reasons}); {len(self.queue)} item(s) are still pending. "
            "Fix the cause and rerun: done items are kept."
        )

    def _on_progress(self, ref: Any, slot: Slot) -> None:
        slot.polling = False
        try:
            progress = ray.get(ref)
        except RayActorError as exc:
            self._lost(slot, exc)
            return
        status = (progress["item"], progress["step"], progress["steps"])
        if status != slot.status:
            slot.status = status
            self.emit(WorkerStatus(slot.wid, *status))

    # -- periodic work -----------------------------------------------------------------------

    def _periodic(self) -> None:
        now = time.monotonic()
        if now - self._last_poll >= self.config.status_every_s:
            self._last_poll = now
            for slot in self.slots:
                if slot.state == "ready" and not slot.polling:
                    slot.polling = True
                    self.refs[slot.handle.progress.remote()] = ("progress", slot, None)
        for slot in self.slots:
            if slot.reprobe_at is not None and now >= slot.reprobe_at:
                slot.reprobe_at = None
                self._probe(slot)
            starting = slot.state in ("loading", "restarting")
            if starting and now - slot.since > self.config.worker_start_timeout_s:
                self._retire(
                    slot,
                    f"worker {slot.wid} did not (re)start within "
                    f"{self.config.worker_start_timeout_s} s; does the cluster have "
                    f"num_cpus={self.config.cpus_per_worker} free?",
                )
                ray.kill(slot.handle, no_restart=True)
        if self._since_compact and (
            self._since_compact >= self.config.compact_every_items
            or now - self._last_compact >= self.config.compact_every_s
        ):
            self.store.compact_index()
            self._since_compact, self._last_compact = 0, now
        if now - self._last_status >= max(2.0, self.config.status_every_s):
            self._last_status = now
            self.write_status()

    def active_s(self) -> float:
        if self.all_loaded_at is None or self.last_result_at is None:
            return 0.0
        return max(0.0, self.last_result_at - self.all_loaded_at)

    def worker_stats(self) -> dict[str, dict[str, Any]]:
        return {
            s.wid: {
                "state": s.state,
                "item": s.status[0] if s.inflight else None,
                "step": s.status[1],
                "steps": s.status[2],
                "done": s.done,
                "busy_s": round(s.busy_s, 3),
                "load_s": s.info.get("load_s"),
                "deaths": s.deaths,
                "reason": s.reason,
            }
            for s in self.slots
        }

    def write_status(self, state: str = "running", summary: RunSummary | None = None) -> None:
        """Write `run.json`, which `pusa-batch status` reads while the run goes on."""
        elapsed = time.monotonic() - self.started
        inflight = sum(len(s.inflight) for s in self.slots)
        status = {
            "state": state,
            "manifest": self.config.manifest,
            "pipeline": self.config.pipeline,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "updated_at": time.time(),
            "elapsed_s": round(elapsed, 3),
            "generated": self.generated,
            "failed": len(self.failures),
            "pending": len(self.queue) + inflight,
            "items_per_s": round(self.generated / elapsed, 4) if elapsed > 0 else 0.0,
            "workers": self.worker_stats(),
        }
        if summary:
            status.update(
                total=summary.total, done_before=summary.done_before, skipped=summary.skipped
            )
        try:
            self.store.write_run_info(status)
        except Exception:  # progress is best effort; the run itself must not stop for it
            log.warning("could not write run.json", exc_info=True)


def _died(slot: Slot, exc: Exception) -> dict[str, Any]:
    return {
        "error_type": "WorkerDied",
        "message": f"worker {slot.wid} died while sampling this item ({type(exc).__name__}); "
        "often out of memory: try fewer frames, a smaller size or fewer workers per node",
        "node": slot.info.get("host"),
    }
