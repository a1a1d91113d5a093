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
- A lost node is not a worker failure. Ray says so in the actor's death (`preempted`, "its node
  has died"); a restartable actor's calls fail first with `ActorUnavailableError`, which says
  nothing, so the item it was sampling is held until the cause is known: its node marked dead
  (checked every `pool_poll_s`, and each second while a worker is unreachable) or the actor back
  (a restart by Ray: a crash, if its node lives). A lost worker leaves the pool (`WorkerLeft`):
  its items go back uncharged, its actor is ended, and its place is filled when there is room.
- The pool: `workers=N` keeps N actors, starting a new one for each lost one (it waits for
  room). `workers=None` on a cluster (an address, or RAY_ADDRESS) is elastic: it starts one actor
  per free slot (GPUs, or CPUs, plus `resources`, counted per node on nodes matching
  `node_labels`), at least one (a waiting actor is what makes an autoscaler add a node), and every
  `pool_poll_s` starts more while there is work and room, up to `max_workers`. It grows only when
  no actor of its own waits for room (the cluster's view of free resources is then settled), and
  never refills the place of a worker retired for failing. On an embedded local Ray, which cannot
  grow, `workers=None` is one per GPU, else 1, as before.
- Metrics (`metrics.py`) are recorded here: each result and failure, and the queue, the items in
  flight and the pool's states at every status poll.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
import socket
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

from pusa_batch.engine.config import (
    ActorFailed,
    ActorLoaded,
    ItemDone,
    ItemFailed,
    Notice,
    OnEvent,
    RunConfig,
    RunSummary,
    WorkerLeft,
    WorkersStarting,
    WorkerStatus,
)
from pusa_batch.engine.contract import ItemError, Outcome, Pending, RefKind, Result, SlotState, Task
from pusa_batch.engine.metrics import RunMetrics
from pusa_batch.engine.worker import Worker, WorkerSettings
from pusa_batch.errors import PipelineError, WorkerError
from pusa_batch.store.store import Store

log = logging.getLogger(__name__)

LOOKAHEAD = 256  # pending items pulled from the manifest at a time
UNREACHABLE_CHECK_S = 1.0  # how often node states are read while a worker is unreachable


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
    node_id: str | None = None  # where the actor runs, once it answered
    placed: bool = False  # the actor is running somewhere (False while it waits for room)
    lost: bool = False  # left the pool with its node: not a failure
    crashed: bool = False  # the current death is known to be its process's, not its node's
    held: tuple[Pending, str] | None = None  # the item it was sampling when it became unreachable
    staging: str | None = None
    staging_bytes: int = 0


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
        self._last_pool = self._last_nodes = time.monotonic()
        self.metrics = RunMetrics(store.url)
        self.elastic = config.workers is None and bool(
            config.address or os.environ.get("RAY_ADDRESS")
        )
        self.gpus = 0.0
        self.need: dict[str, float] = {}

    # -- the loop ----------------------------------------------------------------------------

    def run(self, source: Iterator[Pending], todo: int) -> None:
        """Dispatch the items of `source` (`todo` of them, for progress counts)."""
        self.source, self.todo = iter(source), todo
        try:
            self._start_workers()
            self._loop()
        finally:
            for slot in self.slots:  # a shared Ray keeps actors alive otherwise
                with contextlib.suppress(Exception):
                    ray.kill(slot.handle, no_restart=True)

    def _loop(self) -> None:
        self._refill()
        while self.queue or any(s.inflight or s.held for s in self.slots):
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

    # -- the pool ----------------------------------------------------------------------------

    def _start_workers(self) -> None:
        resources = ray.cluster_resources()
        gpus = self.config.gpus_per_worker
        if gpus is None:
            gpus = 1.0 if resources.get("GPU", 0) >= 1 else 0.0
        self.gpus = gpus
        self.need = {"CPU": self.config.cpus_per_worker, **dict(self.config.resources)}
        if gpus:
            self.need["GPU"] = gpus
        if self.config.workers:
            workers = self.config.workers
        elif self.elastic:
            workers = self._room()
        else:
            workers = int(resources.get("GPU", 0) // gpus) if gpus else 1
        if self.config.max_workers:
            workers = min(workers, self.config.max_workers)
        self._add_workers(max(1, workers))

    def _add_workers(self, count: int) -> list[Slot]:
        self.emit(WorkersStarting(len(self.slots) + count))
        return [self._add_worker() for _ in range(count)]

    def _add_worker(self) -> Slot:
        wid = f"w{len(self.slots)}"
        settings = WorkerSettings(
            worker_id=wid,
            output=self.config.output,
            storage_options=dict(self.config.storage_options),
            torch_threads=None if self.gpus else max(1, int(self.config.cpus_per_worker)),
            lease_token=self.lease.token,
            batch_size=self.config.batch_size,
            driver=_driver_identity(self.lease),
        )
        options: dict[str, Any] = {
            "num_cpus": self.config.cpus_per_worker,
            "num_gpus": self.gpus,
            "max_restarts": self.config.max_actor_restarts,
            "max_task_retries": 0,
            "max_concurrency": self.depth,
        }
        if self.config.resources:
            options["resources"] = dict(self.config.resources)
        if self.config.node_labels:
            options["label_selector"] = dict(self.config.node_labels)
        handle = Worker.options(**options).remote(self.make_runner, settings)
        slot = Slot(wid, handle)
        self.slots.append(slot)
        self._probe(slot)
        self._poll(slot)  # answered as soon as the actor runs: it is placed, and on which node
        return slot

    def _room(self) -> int:
        """How many more workers the cluster's free resources hold now."""
        try:
            from ray._private.state import state  # per node: a worker cannot span two

            free = state.available_resources_per_node()
        except Exception:  # noqa: BLE001 - a Ray without it: the cluster as one node
            free = {None: ray.available_resources()}
        nodes = {n["NodeID"]: n for n in ray.nodes() if n.get("Alive")}
        return room(free, nodes, self.need, dict(self.config.node_labels))

    def _grow(self) -> None:
        """Start workers where the cluster has room for them (the elastic pool)."""
        live = [s for s in self.slots if s.state is not SlotState.DEAD]
        if not self._more_work() or any(not s.placed for s in live):
            return
        failed = sum(1 for s in self.slots if s.state is SlotState.DEAD and not s.lost)
        count = self._room() - failed  # a retired worker's place is not refilled
        if self.config.max_workers:
            count = min(count, self.config.max_workers - len(live))
        if count > 0:
            added = self._add_workers(count)
            self.emit(
                Notice(
                    f"the cluster has room for {count} more worker(s): starting "
                    + ", ".join(s.wid for s in added)
                )
            )

    def _more_work(self) -> bool:
        return bool(self.queue) or self.source is not None

    def _replace(self, slot: Slot) -> None:
        """After a lost worker: `workers=N` starts another at once (it waits for room); the
        elastic pool does when no worker is left, else when the cluster has room."""
        if not self._more_work() and not any(s.inflight for s in self.slots):
            return
        live = [s for s in self.slots if s.state is not SlotState.DEAD]
        if not self.elastic or not live:
            self._add_workers(1)

    def _check_nodes(self) -> None:
        """Workers on nodes Ray has marked dead leave the pool."""
        self._last_nodes = time.monotonic()
        dead = self._dead_nodes()
        for slot in self.slots:
            if slot.state is not SlotState.DEAD and slot.node_id in dead:
                self._node_lost(slot, "its node is gone")

    def _dead_nodes(self) -> set[str]:
        try:
            return {n["NodeID"] for n in ray.nodes() if not n.get("Alive")}
        except Exception:  # noqa: BLE001 - asked again at the next check
            log.warning("could not read the cluster's nodes", exc_info=True)
            return set()

    def _node_gone(self, slot: Slot, exc: BaseException | None = None) -> str | None:
        """Why `slot`'s node is gone (its death says so, or Ray marked the node dead), or None."""
        if isinstance(exc, ActorDiedError):
            if getattr(exc, "preempted", False):
                return "its node was preempted"
            if "its node has died" in str(exc):
                return "its node is gone"
        if slot.node_id is not None and slot.node_id in self._dead_nodes():
            return "its node is gone"
        return None

    def _node_lost(self, slot: Slot, why: str) -> None:
        """The worker left with its node: its items go back to the queue, none is charged."""
        node = (slot.node_id or "?")[:12]
        back: list[Pending] = []
        if slot.held is not None:
            back.append(slot.held[0])
            slot.held = None
        for ref, pending in list(slot.inflight.items()):
            self.refs.pop(ref, None)
            back.append(pending)
        slot.inflight.clear()
        slot.state, slot.lost, slot.polling = SlotState.DEAD, True, False
        slot.reason = f"worker {slot.wid} left the pool: {why} (node {node})"
        with contextlib.suppress(Exception):
            ray.kill(slot.handle, no_restart=True)
        for pending in reversed(back):
            if not self._committed(pending, slot):
                self.queue.appendleft(pending)
        log.warning("%s; %d item(s) back to the queue", slot.reason, len(back))
        self.emit(WorkerLeft(slot.wid, slot.reason))
        self.emit(Notice(f"{slot.reason}; {len(back)} item(s) went back to the queue"))
        self._replace(slot)

    def _committed(self, pending: Pending, slot: Slot) -> bool:
        """Whether an item a gone worker held was committed just before it went (then: done)."""
        try:
            done = self.store.is_done(pending.id)
        except Exception:  # noqa: BLE001 - not known: generated again, committed once more
            return False
        if done:
            self._done(pending, slot, Result(pending.id, Outcome.DONE, pending.attempts + 1))
        return done

    def _probe(self, slot: Slot) -> None:
        self.refs[slot.handle.info.remote()] = (RefKind.INFO, slot, None)

    def _poll(self, slot: Slot) -> None:
        slot.polling = True
        self.refs[slot.handle.progress.remote()] = (RefKind.PROGRESS, slot, None)

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
        entry = self.refs.pop(ref, None)
        if entry is None:  # dropped with a worker that left
            return
        kind, slot, pending = entry
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
            self._unreachable(slot, exc)
            if slot.lost:
                if not self._committed(pending, slot):
                    self.queue.appendleft(pending)
                return
            if self.store.is_done(pending.id):  # committed just before the worker died
                result = Result(pending.id, Outcome.DONE, pending.attempts + 1, slot.wid)
            elif slot.status[0] == pending.id:  # it died while sampling this one
                if slot.crashed:
                    return self._failed(pending, slot, _died(slot, type(exc).__name__))
                slot.held = (pending, type(exc).__name__)  # charged once the cause is known
                return None
            else:
                return self.queue.appendleft(pending)
        except Exception as exc:  # noqa: BLE001 - e.g. a result that could not be unpickled
            error = ItemError(type(exc).__name__, str(exc))
            result = Result(pending.id, Outcome.FAILED, pending.attempts + 1, slot.wid, error=error)
        self.last_result_at = time.monotonic()
        slot.busy_s += result.timings.get("sample", 0.0)
        if result.done:
            self._done(pending, slot, result)
        else:
            self._failed(pending, slot, result.error or ItemError("Error", ""))

    def _done(self, pending: Pending, slot: Slot, result: Result) -> None:
        self.generated += 1
        self._since_compact += 1
        slot.done += 1
        self.emit(ItemDone(pending.id, slot.wid, result.attempt, result.timings))
        self.metrics.item_done(slot.wid, result.timings)

    def _failed(self, pending: Pending, slot: Slot, error: ItemError) -> None:
        pending.attempts += 1
        pending.tried.add(slot.wid)
        final = pending.attempts > self.config.max_retries
        self.emit(
            ItemFailed(
                pending.id, slot.wid, error.error_type, error.message, pending.attempts, final
            )
        )
        self.metrics.item_failed(slot.wid, error.error_type, final)
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

    def _unreachable(self, slot: Slot, exc: Exception) -> None:
        """A call to the worker failed: its node is gone (it leaves the pool), or its process
        died (wait for Ray's restart, or retire it if Ray gave up), or not known yet."""
        if slot.state is SlotState.DEAD:
            return
        why = self._node_gone(slot, exc)
        if why:
            self._node_lost(slot, why)
            return
        if slot.state is not SlotState.READY:
            return
        slot.state, slot.placed = SlotState.RESTARTING, False
        slot.since = time.monotonic()
        slot.crashed = False
        if not isinstance(exc, ActorUnavailableError):  # Ray told why: the process, not the node
            self._crashed(slot, type(exc).__name__)
        log.warning("worker %s died (%s); waiting for its restart", slot.wid, type(exc).__name__)
        self._probe(slot)

    def _crashed(self, slot: Slot, error_type: str) -> None:
        """The worker's process died on a live node: count it, and charge the item it sampled."""
        if slot.crashed:
            return
        slot.crashed = True
        slot.deaths += 1
        if slot.held is not None:
            (pending, held_error), slot.held = slot.held, None
            self._failed(pending, slot, _died(slot, held_error or error_type))

    def _on_info(self, ref: Any, slot: Slot) -> None:
        if slot.state is SlotState.DEAD:
            return
        try:
            info = ray.get(ref)
        except ActorUnavailableError:
            slot.reprobe_at = time.monotonic() + 0.5  # still restarting: ask again soon
            return
        except RayActorError as exc:
            why = self._node_gone(slot, exc)
            if why:
                self._node_lost(slot, why)
                return
            if slot.state is SlotState.RESTARTING:
                self._crashed(slot, type(exc).__name__)
            reason = (
                f"worker {slot.wid} died {slot.deaths} time(s) and exceeded max_actor_restarts="
                f"{self.config.max_actor_restarts}"
                if slot.deaths
                else f"worker {slot.wid} could not start: {exc}"
            )
            self._retire(slot, reason)
            return
        if slot.state is SlotState.RESTARTING:  # back: restarted by Ray, here or elsewhere
            why = self._node_gone(slot)
            if why:  # its node went; the actor was restarted on another one
                if slot.held is not None:
                    self.queue.appendleft(slot.held[0])
                    slot.held = None
                self.emit(Notice(f"worker {slot.wid} was restarted elsewhere: {why}"))
            else:
                self._crashed(slot, "ActorDiedError")
        slot.node_id, slot.placed, slot.crashed = info.get("node_id"), True, False
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
        if slot.held is not None:  # it never came back: not known to be the item's doing
            self.queue.appendleft(slot.held[0])
            slot.held = None
        for ref, pending in list(slot.inflight.items()):
            self.refs.pop(ref, None)
            self.queue.appendleft(pending)
        slot.inflight.clear()
        log.error(reason)
        self.emit(ActorFailed(slot.wid, reason))

    def _no_workers_left(self) -> Exception:
        failed = [s for s in self.slots if not s.lost] or self.slots
        reasons = "; ".join(s.reason or s.wid for s in failed)
        if all(s.info.get("load_error") for s in failed):
            return PipelineError(f"no worker could load the pipeline: {reasons}")
        return WorkerError(
            f"every worker is gone ({reasons}); {self.pending()} item(s) are still pending. "
            "Fix the cause and rerun: done items are kept."
        )

    def _on_progress(self, ref: Any, slot: Slot) -> None:
        slot.polling = False
        if slot.state is SlotState.DEAD:
            return
        try:
            progress = ray.get(ref)
        except RayActorError as exc:
            self._unreachable(slot, exc)
            return
        if slot.state is SlotState.LOADING:
            slot.placed = True
            slot.node_id = progress.get("node_id") or slot.node_id
            if progress.get("loading"):
                self._on_staging(slot, progress)
            return
        if slot.state is not SlotState.READY:
            return
        status = (progress["item"], progress["step"], progress["steps"])
        activity = (progress.get("preparing"), progress.get("finishing"))
        if (status, activity) != (slot.status, slot.activity):
            slot.status, slot.activity = status, activity
            self.emit(WorkerStatus(slot.wid, *status, *activity))

    def _on_staging(self, slot: Slot, progress: dict[str, Any]) -> None:
        """A loading worker's weight staging: a status line for the view, bytes for metrics."""
        text = progress.get("staging")
        if text and text != slot.staging:
            slot.staging = text
            self.emit(WorkerStatus(slot.wid, None, 0, 0, staging=text))
        fetched = int(progress.get("staging_bytes") or 0)
        fetching = progress.get("staging_state") in ("fetching", "verifying")
        if fetching and fetched > slot.staging_bytes:
            self.metrics.staged_bytes(slot.wid, fetched - slot.staging_bytes)
            slot.staging_bytes = fetched

    # -- periodic work -----------------------------------------------------------------------

    def _periodic(self) -> None:
        now = time.monotonic()
        if now - self._last_poll >= self.config.status_every_s:
            self._last_poll = now
            for slot in self.slots:
                if slot.state in (SlotState.READY, SlotState.LOADING) and not slot.polling:
                    self._poll(slot)
            self._record_metrics()
        unreachable = any(s.state is SlotState.RESTARTING for s in self.slots)
        since_nodes = now - self._last_nodes
        if since_nodes >= self.config.pool_poll_s or (
            unreachable and since_nodes >= UNREACHABLE_CHECK_S
        ):
            self._check_nodes()
        if self.elastic and now - self._last_pool >= self.config.pool_poll_s:
            self._last_pool = now
            self._grow()
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

    def _record_metrics(self) -> None:
        self.metrics.queue(len(self.queue), self.in_flight())
        counts: dict[str, int] = {}
        for slot in self.slots:
            counts[slot.state.value] = counts.get(slot.state.value, 0) + 1
        self.metrics.workers(counts)

    def in_flight(self) -> int:
        """Items at workers (or held from one that became unreachable), not yet back."""
        return sum(len(s.inflight) + (s.held is not None) for s in self.slots)

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
                "state": "lost" if s.lost else s.state.value,
                "item": s.status[0] if s.inflight else None,
                "step": s.status[1],
                "steps": s.status[2],
                "done": s.done,
                "busy_s": round(s.busy_s, 3),
                "load_s": s.info.get("load_s"),
                "deaths": s.deaths,
                "reason": s.reason,
                "node_id": s.node_id,
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
            "in_flight": self.in_flight(),
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


def room(
    free: dict[Any, dict[str, float]],
    nodes: dict[str, dict[str, Any]],
    need: dict[str, float],
    labels: dict[str, str],
) -> int:
    """How many workers needing `need` fit in the `free` resources of each node (by node id;
    the key None: the cluster as one node); only alive `nodes` whose labels match `labels`."""
    total = 0
    for node_id, available in free.items():
        node = nodes.get(node_id) if node_id is not None else {}
        if node is None or (labels and not labels_match(node.get("Labels") or {}, labels)):
            continue
        fits = [
            math.floor(available.get(name, 0.0) / amount + 1e-9)
            for name, amount in need.items()
            if amount > 0
        ]
        total += max(0, min(fits)) if fits else 0
    return total


def labels_match(labels: dict[str, str], selector: dict[str, str]) -> bool:
    """Ray's label selector: `value`, `!value`, `in(a,b)`, `!in(a,b)` for each key."""
    for key, rule in selector.items():
        negate = rule.startswith("!")
        body = rule[1:] if negate else rule
        if body.startswith("in(") and body.endswith(")"):
            allowed = {v.strip() for v in body[3:-1].split(",")}
        else:
            allowed = {body}
        if (labels.get(key) in allowed) == negate:
            return False
    return True


def _died(slot: Slot, error_type: str) -> ItemError:
    return ItemError(
        error_type="WorkerDied",
        message=f"worker {slot.wid} died while sampling this item ({error_type}); "
        "often out of memory: try fewer frames, a smaller size or fewer workers per node",
        node=slot.info.get("host"),
    )


def _driver_identity(lease: Any) -> dict | None:
    record = getattr(lease, "record", None)
    if not isinstance(record, dict):
        return None
    keys = ("host", "boot_id", "pid_ns", "pid", "pid_start")
    return {k: record.get(k) for k in keys}
