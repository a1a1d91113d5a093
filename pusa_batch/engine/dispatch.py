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
- Freed memory is given back to the system with each `run.json` write (`heap.py`): without it
  malloc's free pages piled up in the driver's RSS (12 to 128 MB given back per call in B13).
- The driver's rooms: this loop (dispatch, results, periodic work); `pool.py` (starting, growing
  and replacing workers); `worker_loss.py` (lost nodes, crashed and unloadable workers);
  `driver_status.py` (`run.json` and the gauges); `slots.py` (the per-worker record and the pool's
  pure rules); `ray_pool.py` (every call to Ray, swappable: `Driver(..., pool=...)`).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from ray.exceptions import RayActorError

from pusa_batch.engine.config import ItemDone, ItemFailed, OnEvent, RunConfig, WorkerStatus
from pusa_batch.engine.contract import ItemError, Outcome, Pending, RefKind, Result, SlotState, Task
from pusa_batch.engine.driver_status import StatusKeeping
from pusa_batch.engine.heap import release_freed_memory
from pusa_batch.engine.metrics import RunMetrics
from pusa_batch.engine.pool import PoolKeeping
from pusa_batch.engine.ray_pool import RayPool
from pusa_batch.engine.slots import Slot, labels_match, room, worker_depth
from pusa_batch.engine.worker_loss import LossHandling
from pusa_batch.store.store import Store

__all__ = ["LOOKAHEAD", "Driver", "Slot", "labels_match", "room", "worker_depth"]

log = logging.getLogger(__name__)

LOOKAHEAD = 256  # pending items pulled from the manifest at a time
UNREACHABLE_CHECK_S = 1.0  # how often node states are read while a worker is unreachable
STOP_WAIT_S = 3.0  # how long a stopped run waits for its ended workers' last answers


class Driver(PoolKeeping, LossHandling, StatusKeeping):
    """One run's dispatch: `run(source, todo)` returns once every item is done or failed.

    `pool` is what starts and calls the workers (`RayPool`, the default: Ray actors)."""

    def __init__(
        self,
        config: RunConfig,
        store: Store,
        emit: OnEvent,
        make_runner: Callable,
        lease: Any,
        pool: Any = None,
    ):
        self.config, self.store, self.emit, self.make_runner = config, store, emit, make_runner
        self.lease = lease
        self.pool = pool if pool is not None else RayPool()
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

    def run(
        self, source: Iterator[Pending], todo: int, ready: Callable[[], None] | None = None
    ) -> None:
        """Dispatch the items of `source` (`todo` of them, for progress counts). `ready`, if
        given, is called once the workers are starting and before the first item is sent: the
        pre-run check's verdict (it raises to stop the run), taken while the models load."""
        self.source, self.todo = iter(source), todo
        try:
            self._start_workers()
            if ready is not None:
                ready()
            self._loop()
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM's `Terminated`
            self._stop_and_count()
            raise
        finally:
            for slot in self.slots:  # a shared Ray keeps actors alive otherwise
                self._end(slot)

    def _stop_and_count(self) -> None:
        """Stopped from outside: end every worker, then count the items in flight that were
        committed before their worker ended (answered, or found in the root), so what the
        run says it committed is what the root holds."""
        with contextlib.suppress(Exception, KeyboardInterrupt):  # a second Ctrl-C: no count
            for slot in self.slots:
                self._end(slot)
            items = [ref for ref, (kind, _, _) in self.refs.items() if kind is RefKind.ITEM]
            settled = set(self.pool.settled(items, timeout_s=STOP_WAIT_S))
            for ref in items:
                kind, slot, pending = self.refs.pop(ref)
                slot.inflight.pop(ref, None)
                if ref in settled:
                    with contextlib.suppress(Exception):
                        result = self.pool.get(ref)
                        if result.done:
                            self._done(pending, slot, result)
                            continue
                self._committed(pending, slot)

    def _loop(self) -> None:
        self._refill()
        while self.queue or any(s.inflight or s.held for s in self.slots):
            if self.lease.lost is not None:
                raise self.lease.lost
            if not any(s.state is not SlotState.DEAD for s in self.slots):
                raise self._no_workers_left()
            self._dispatch()
            for ref in self.pool.ready(list(self.refs), timeout_s=0.25):
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

    def _dispatch(self) -> None:
        for slot in self.slots:
            while slot.state is SlotState.READY and self.queue and len(slot.inflight) < self.depth:
                pending = self._take(slot.wid)
                task = Task(pending.item, pending.fingerprint, pending.attempts + 1, time.time())
                ref = self.pool.call(slot.handle, "run", task)
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
            result: Result = self.pool.get(ref)
        except RayActorError as exc:
            self._item_lost(ref, slot, pending, exc)
            return
        except Exception as exc:  # noqa: BLE001 - e.g. a result that could not be unpickled
            error = ItemError(type(exc).__name__, str(exc))
            result = Result(pending.id, Outcome.FAILED, pending.attempts + 1, slot.wid, error=error)
        self._result(pending, slot, result)

    def _result(self, pending: Pending, slot: Slot, result: Result) -> None:
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
        if error.error_type == "LeaseError" and not self.lease.still_held():
            raise self.lease.lost  # the worker saw another run's lease: this run is over
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

    def _on_progress(self, ref: Any, slot: Slot) -> None:
        slot.polling = False
        if slot.state is SlotState.DEAD:
            return
        try:
            progress = self.pool.get(ref)
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
                self.pool.kill(slot.handle)
        if self._since_compact and (
            self._since_compact >= self.config.compact_every_items
            or now - self._last_compact >= self.config.compact_every_s
        ):
            self.store.compact_index()
            self._since_compact, self._last_compact = 0, now
        if now - self._last_status >= max(2.0, self.config.status_every_s):
            self._last_status = now
            self.write_status()
            release_freed_memory()  # else freed heap reads as growth (B13)
