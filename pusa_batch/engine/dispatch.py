"""The driver loop: feed idle Ray workers from a bounded look-ahead, retry, record, compact.

Decisions:
- Items are pulled, never pre-sharded. With overlap a worker holds at most 2 x batch_size + 1
  items: while a batch is sampled, batch_size more wait for the sampler and the batch before it is
  finished (decoded, encoded, committed); the worker itself keeps the finish lane from taking the
  waiting items' places (`worker.py`), so `--batch-size N` finds N items waiting. Without overlap
  a worker holds batch_size items. At batch_size 1 that is 3 and 1, as before batching.
- The driver holds at most `LOOKAHEAD` + `LOOKAHEAD // 2` queued items (plus retries and the items
  in flight), refilled from a generator as workers drain the queue, so its memory does not grow
  with the manifest. `longest_first` orders each refill window of `LOOKAHEAD` items, not the
  whole manifest (a global order would need every item in memory at once).
- Workers commit (`store.commit`) themselves, so mp4 bytes never travel through the driver; the
  output root must therefore be reachable from every worker (a shared path or object store).
- An item's exception is retried up to `max_retries` times, preferably on another worker, then
  recorded in `failures/{id}.json`; the run goes on. Retries go back to the front of the queue.
- A dead worker's items go back to the queue; only the item it was sampling is charged an attempt.
  Ray restarts a worker up to `max_actor_restarts` times, after which it is retired with a
  message; the run fails with `WorkerError` only when no worker is left.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import ActorUnavailableError, RayActorError

from pusa_batch.engine.config import (
    ActorFailed,
    ActorLoaded,
    ItemDone,
    ItemFailed,
    OnEvent,
    RunConfig,
    RunSummary,
    WorkersStarting,
    WorkerStatus,
)
from pusa_batch.engine.contract import ItemError, Outcome, Pending, RefKind, Result, SlotState, Task
from pusa_batch.engine.worker import Worker, WorkerSettings
from pusa_batch.errors import PipelineError, WorkerError
from pusa_batch.store.store import Store

log = logging.getLogger(__name__)

LOOKAHEAD = 256  # pending items pulled from the manifest at a time


@dataclass
class Slot:
    wid: str
    handle: Any
    state: SlotState = SlotState.LOADING
    since: float = field(default_factory=time.monotonic)
    inflight: dict[Any, Pending] = field(default_factory=dict)
    status: tuple[str | None, int, int] = (None, 0, 0)
    activity: tuple[str | None, str | None] = (None, None)  # (preparing, finishing)
    polling: bool = False
    deaths: int = 0
    reprobe_at: float | None = None
    info: dict[str, Any] = field(default_factory=dict)
    done: int = 0
    busy_s: float = 0.0
    reason: str | None = None


def worker_depth(batch_size: int, overlap: bool) -> int:
    """Items in flight per worker: a batch waiting for the sampler, a batch being sampled or
    finished, and one more so the finish lane never waits for the driver; without overlap, one
    batch."""
    return 2 * batch_size + 1 if overlap else batch_size


class Driver:
    """One run's dispatch: `run(source, todo)` returns once every item is done or failed."""

    def __init__(
        self, config: RunConfig, store: Store, emit: OnEvent, make_runner: Callable, lease: Any
    ):
        self.config, self.store, self.emit, self.make_runner = config, store, emit, make_runner
        self.lease = lease
        self.depth = worker_depth(config.batch_size, config.overlap)
        self.queue: deque[Pending] = deque()
        self.source: Iterator[Pending] | None = None
        self.todo = 0
        self.slots: list[Slot] = []
        self.refs: dict[Any, tuple[RefKind, Slot, Pending | None]] = {}
        self.generated = 0
        self.failures: list[dict[str, Any]] = []
        self.started = time.monotonic()
        self.all_loaded_at: float | None = None
        self.last_result_at: float | None = None
        self._since_compact = 0
        self._last_compact = self._last_status = self._last_poll = time.monotonic()

    # -- the loop ----------------------------------------------------------------------------

    def run(self, source: Iterator[Pending], todo: int) -> None:
        """Dispatch the items of `source` (`todo` of them, for progress counts)."""
        self.source, self.todo = iter(source), todo
        try:
            self._start_workers()
            self._loop()
        finally:
            for slot in self.slots:  # a shared Ray keeps actors alive otherwise
                ray.kill(slot.handle, no_restart=True)

    def _loop(self) -> None:
        self._refill()
        while self.queue or any(s.inflight for s in self.slots):
            if self.lease.lost is not None:
                raise self.lease.lost
            if not any(s.state is not SlotState.DEAD for s in self.slots):
                raise self._no_workers_left()
            self._dispatch()
            ready, _ = ray.wait(list(self.refs), num_returns=1, timeout=0.25)
            if ready:
                more, _ = ray.wait(list(self.refs), num_returns=len(self.refs), timeout=0)
                for ref in {*ready, *more}:
                    self._handle(ref)
            self._periodic()
            self._refill()

    def _refill(self) -> None:
        """Top the queue up with the next window of items once it is half drained."""
        if self.source is None or len(self.queue) >= LOOKAHEAD // 2:
            return
        window = list(itertools.islice(self.source, LOOKAHEAD))
        if len(window) < LOOKAHEAD:
            self.source = None
        if self.config.longest_first:
            window.sort(key=lambda pending: -pending.cost)
        self.queue.extend(window)

    def _start_workers(self) -> None:
        resources = ray.cluster_resources()
        gpus = self.config.gpus_per_worker
        if gpus is None:
            gpus = 1.0 if resources.get("GPU", 0) >= 1 else 0.0
        workers = self.config.workers or (int(resources.get("GPU", 0) // gpus) if gpus else 1)
        self.emit(WorkersStarting(max(1, workers)))
        for n in range(max(1, workers)):
            settings = WorkerSettings(
                worker_id=f"w{n}",
                output=self.config.output,
                storage_options=dict(self.config.storage_options),
                torch_threads=None if gpus else max(1, int(self.config.cpus_per_worker)),
                lease_token=self.lease.token,
                batch_size=self.config.batch_size,
                driver=_driver_identity(self.lease),
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
        self.refs[slot.handle.info.remote()] = (RefKind.INFO, slot, None)

    def _dispatch(self) -> None:
        for slot in self.slots:
            while slot.state is SlotState.READY and self.queue and len(slot.inflight) < self.depth:
                pending = self._take(slot.wid)
                task = Task(pending.item, pending.fingerprint, pending.attempts + 1, time.time())
                ref = slot.handle.run.remote(task)
                slot.inflight[ref] = pending
                self.refs[ref] = (RefKind.ITEM, slot, pending)

    def _take(self, wid: str) -> Pending:
        """The first queued item this worker has not failed on yet, else the first one."""
        for i, pending in enumerate(self.queue):
            if wid not in pending.tried:
                del self.queue[i]
                return pending
        return self.queue.popleft()

    def _handle(self, ref: Any) -> None:
        kind, slot, pending = self.refs.pop(ref)
        if kind is RefKind.ITEM:
            slot.inflight.pop(ref, None)
            self._on_item(ref, slot, pending)
        elif kind is RefKind.INFO:
            self._on_info(ref, slot)
        else:
            self._on_progress(ref, slot)

    # -- results -----------------------------------------------------------------------------

    def _on_item(self, ref: Any, slot: Slot, pending: Pending) -> None:
        try:
            result: Result = ray.get(ref)
        except RayActorError as exc:
            self._lost(slot, exc)
            if self.store.is_done(pending.id):  # committed just before the worker died
                result = Result(pending.id, Outcome.DONE, pending.attempts + 1, slot.wid)
            elif slot.status[0] == pending.id:  # it died while sampling this one
                return self._failed(pending, slot, _died(slot, exc))
            else:
                return self.queue.appendleft(pending)
        except Exception as exc:  # noqa: BLE001 - e.g. a result that could not be unpickled
            error = ItemError(type(exc).__name__, str(exc))
            result = Result(pending.id, Outcome.FAILED, pending.attempts + 1, slot.wid, error=error)
        self.last_result_at = time.monotonic()
        slot.busy_s += result.timings.get("sample", 0.0)
        if result.done:
            self.generated += 1
            self._since_compact += 1
            slot.done += 1
            self.emit(ItemDone(pending.id, slot.wid, result.attempt, result.timings))
        else:
            self._failed(pending, slot, result.error or ItemError("Error", ""))

    def _failed(self, pending: Pending, slot: Slot, error: ItemError) -> None:
        pending.attempts += 1
        pending.tried.add(slot.wid)
        final = pending.attempts > self.config.max_retries
        self.emit(
            ItemFailed(
                pending.id, slot.wid, error.error_type, error.message, pending.attempts, final
            )
        )
        if not final:
            self.queue.appendleft(pending)
            return
        info = {
            "id": pending.id,
            **error.to_dict(),
            "attempts": pending.attempts,
            "worker": slot.wid,
            "node": error.node or slot.info.get("host"),
            "fingerprint": pending.fingerprint,
            "item": pending.item.to_dict(),
        }
        try:
            self.store.record_failure(pending.id, info)
        except Exception as exc:  # noqa: BLE001 - one item's record must not stop the batch
            log.error("could not record the failure of %s: %s", pending.id, exc)
            info["message"] += f" (and its failure record could not be written: {exc})"
        self.failures.append({k: info[k] for k in ("id", "error_type", "message", "attempts")})

    def _lost(self, slot: Slot, exc: Exception) -> None:
        """The worker process is gone: wait for Ray's restart, or retire it if Ray gave up."""
        if slot.state is not SlotState.READY:
            return
        slot.deaths += 1
        slot.state = SlotState.RESTARTING
        slot.since = time.monotonic()
        log.warning("worker %s died (%s); waiting for its restart", slot.wid, type(exc).__name__)
        self._probe(slot)

    def _on_info(self, ref: Any, slot: Slot) -> None:
        if slot.state is SlotState.DEAD:
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
            err: ItemError = info["error"]
            self._retire(
                slot,
                f"worker {slot.wid} could not load the pipeline: {err.error_type}: {err.message}",
                load_error=True,
            )
            ray.kill(slot.handle, no_restart=True)
            return
        slot.info, slot.state = info, SlotState.READY
        slot.status, slot.activity = (None, 0, 0), (None, None)
        self.emit(ActorLoaded(slot.wid, info["load_s"], info["pid"], info["host"]))
        if (
            all(s.state in (SlotState.READY, SlotState.DEAD) for s in self.slots)
            and self.all_loaded_at is None
        ):
            self.all_loaded_at = time.monotonic()

    def _retire(self, slot: Slot, reason: str, load_error: bool = False) -> None:
        slot.state, slot.reason = SlotState.DEAD, reason
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
            f"every worker is gone ({reasons}); {self.pending()} item(s) are still pending. "
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
        activity = (progress.get("preparing"), progress.get("finishing"))
        if (status, activity) != (slot.status, slot.activity):
            slot.status, slot.activity = status, activity
            self.emit(WorkerStatus(slot.wid, *status, *activity))

    # -- periodic work -----------------------------------------------------------------------

    def _periodic(self) -> None:
        now = time.monotonic()
        if now - self._last_poll >= self.config.status_every_s:
            self._last_poll = now
            for slot in self.slots:
                if slot.state is SlotState.READY and not slot.polling:
                    slot.polling = True
                    self.refs[slot.handle.progress.remote()] = (RefKind.PROGRESS, slot, None)
        for slot in self.slots:
            if slot.reprobe_at is not None and now >= slot.reprobe_at:
                slot.reprobe_at = None
                self._probe(slot)
            starting = slot.state in (SlotState.LOADING, SlotState.RESTARTING)
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

    def pending(self) -> int:
        """Items not yet done nor finally failed (queued, in flight or still in the manifest)."""
        return max(0, self.todo - self.generated - len(self.failures))

    def active_s(self) -> float:
        if self.all_loaded_at is None or self.last_result_at is None:
            return 0.0
        return max(0.0, self.last_result_at - self.all_loaded_at)

    def worker_stats(self) -> dict[str, dict[str, Any]]:
        return {
            s.wid: {
                "state": s.state.value,
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
            "pending": self.pending(),
            "in_flight": sum(len(s.inflight) for s in self.slots),
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


def _died(slot: Slot, exc: Exception) -> ItemError:
    return ItemError(
        error_type="WorkerDied",
        message=f"worker {slot.wid} died while sampling this item ({type(exc).__name__}); "
        "often out of memory: try fewer frames, a smaller size or fewer workers per node",
        node=slot.info.get("host"),
    )


def _driver_identity(lease: Any) -> dict | None:
    record = getattr(lease, "record", None)
    if not isinstance(record, dict):
        return None
    keys = ("host", "boot_id", "pid_ns", "pid", "pid_start")
    return {k: record.get(k) for k in keys}
