"""The actor side of the engine: one `Worker` per GPU (or CPU slot) holding one loaded pipeline.

An item's life inside a worker is three stages, so that calls running in the actor's threads form
a pipeline: while a batch is sampled, the items sampled before it are decoded, encoded and
committed, and the next ones are prepared. The driver bounds how many items an actor holds at once
(`dispatch.py`); inside it, each stage has its own bound:
- prepare runs ahead, one item at a time; prepared items wait for the sampler;
- the sampler takes the oldest waiting item and up to batch_size - 1 waiting items with its batch
  key; it does not start a partial batch while more items are still being prepared;
- finish (decode, encode, commit) is its own lane, one item at a time, and the sampler starts a
  batch only while at most batch_size sampled items are in that lane. When finishing is the slow
  stage, items pile up waiting for the sampler, not behind the finish, so batches fill.

`run` takes a `Task` and returns a `Result` (`contract.py`). Item errors never escape it: they come
back as a failed `Result` with its `ItemError`, so that a Ray error on the returned reference always
means the actor process itself is gone. The real `ItemRunner` is `runner.PipelineRunner`.

The pipeline loads in a thread started by the constructor, so the actor answers `progress()` while
it loads (with the latest weight-staging event, for the live view) and the driver learns at once
on which node it was placed; `info()` waits for the load to end and reports its error, if any.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import socket
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import ray

from pusa_batch.engine.contract import ItemError, Outcome, Result, Task
from pusa_batch.errors import LeaseError
from pusa_batch.item import Item
from pusa_batch.store.lease import LEASE_FILE, holder_is_gone
from pusa_batch.store.store import Store

OnStep = Callable[[int, int], None]


class ItemRunner(Protocol):
    """The unit of work a worker drives; `PipelineRunner` is the real one."""

    def load(self, on_staging: Callable[[Any], None] | None = None) -> dict[str, Any]: ...

    def prepare(self, item: Item) -> Any: ...

    def sample(self, prepared: Any, on_step: OnStep) -> Any: ...

    def finish(self, item: Item, latents: Any) -> tuple[bytes, dict[str, Any]]: ...


@dataclass(frozen=True)
class WorkerSettings:
    worker_id: str
    output: str
    storage_options: dict[str, Any]
    torch_threads: int | None
    lease_token: str | None = None  # commits are refused once another run holds the lease
    batch_size: int = 1  # items with one batch key may share the sampler's forward passes
    driver: dict | None = None  # the driver's lease record: host, boot, pid namespace, pid


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for dist in ("pusa-batch", "torch", "diffusers", "ray"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = "unknown"
    return out


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.cuda.current_device())
    return "cpu"


def _release_gpu_memory(exc: BaseException) -> None:
    """After a CUDA out-of-memory error, hand cached blocks back before the next item."""
    import torch

    if isinstance(exc, torch.OutOfMemoryError) and torch.cuda.is_available():
        torch.cuda.empty_cache()


def item_error(exc: BaseException, stage: str | None = None, node: str | None = None) -> ItemError:
    return ItemError(
        error_type=type(exc).__name__,
        message=str(exc),
        traceback="".join(traceback.format_exception(exc)),
        stage=stage,
        node=node,
    )


class WorkerCore:
    """Plain-Python worker; `Worker` below is its Ray actor form."""

    def __init__(self, make_runner: Callable[[], ItemRunner], settings: WorkerSettings):
        if settings.torch_threads:
            import torch

            torch.set_num_threads(settings.torch_threads)
        self.settings = settings
        self.store = Store(settings.output, settings.storage_options)
        if settings.driver is not None:
            _watch_driver(settings.driver)
        self._prepare_lock = threading.Lock()
        self._finish_lock = threading.Lock()
        self._progress: tuple[str | None, int, int] = (None, 0, 0)
        self._preparing: str | None = None  # the item in each stage, for the live view
        self._finishing: str | None = None
        # the sampler's queue, under one condition: what it may start depends on all of these
        self._stages = threading.Condition()
        self._to_prepare = 0  # items being prepared or queued for it
        self._waiting: list[_Waiting] = []  # prepared items queued for the sampler, oldest first
        self._sampling = False
        self._to_finish = 0  # the finish lane: sampled items not yet committed (or failed)
        self._busy_s = 0.0
        self.load_error: ItemError | None = None
        self.load_s = 0.0
        self.host = socket.gethostname()
        self.node_id = _node_id()
        self.device = "unknown"
        self.versions: dict[str, str] = {}
        self._staging: Any = None  # the latest StagingProgress while the weights are staged
        self._loaded = threading.Event()
        threading.Thread(
            target=self._load, args=(make_runner,), name="pusa-load", daemon=True
        ).start()

    def _load(self, make_runner: Callable[[], ItemRunner]) -> None:
        started = time.perf_counter()
        try:
            self.runner = make_runner()
            if "on_staging" in inspect.signature(self.runner.load).parameters:
                self.runner.load(on_staging=self._on_staging)
            else:
                self.runner.load()
            self.device = device_name()
            self.versions = versions()
        except Exception as exc:  # noqa: BLE001 - reported by `info`; the driver retires it
            self.load_error = item_error(exc, stage="load")
        finally:
            self.load_s = time.perf_counter() - started
            self._loaded.set()

    def _on_staging(self, event: Any) -> None:
        self._staging = event  # read by `progress`, from another thread

    def info(self) -> dict[str, Any]:
        """Once the pipeline is loaded (or failed to load): where, how long, and its error."""
        self._loaded.wait()
        return {
            "worker": self.settings.worker_id,
            "pid": os.getpid(),
            "host": self.host,
            "node_id": self.node_id,
            "device": self.device,
            "load_s": self.load_s,
            "error": self.load_error,
        }

    def progress(self) -> dict[str, Any]:
        """What the worker does now; answers at once, also while the pipeline loads."""
        item, step, steps = self._progress
        loading = not self._loaded.is_set()
        staging = self._staging if loading else None
        return {
            "item": item,
            "step": step,
            "steps": steps,
            "preparing": self._preparing,
            "finishing": self._finishing,
            "busy_s": self._busy_s,
            "loading": loading,
            "staging": None if staging is None else str(staging),
            "staging_state": getattr(staging, "state", None),
            "staging_bytes": int(getattr(staging, "done_bytes", 0) or 0),
            "node_id": self.node_id,
            "host": self.host,
            "pid": os.getpid(),
        }

    def run(self, task: Task) -> Result:
        """Prepare, sample, decode, encode and commit one item; never raises for item errors."""
        self._loaded.wait()
        if self.load_error is not None:
            return self._result(task, Outcome.FAILED, {}, self.load_error)
        item = task.item
        timings: dict[str, float] = {}
        stage = "prepare"
        try:
            prepared = self._prepare(task, timings)
            stage = "sample"
            latents, batch = self._sample_batched(item.id, prepared, timings)
            del prepared
            stage = "finish"
            try:
                with self._finish_lock, self._doing("_finishing", item.id):
                    t0 = time.perf_counter()
                    video, meta = self.runner.finish(item, latents)
                    del latents
                    timings.update(meta.pop("timings", {}))
                    timings.setdefault("finish", time.perf_counter() - t0)
                    stage = "write"
                    meta = self._metadata(task, {**meta, "sample_batch": batch}, timings)
                    t0 = time.perf_counter()
                    self._check_lease()
                    self.store.commit(item.id, video, meta)
                    timings["write"] = time.perf_counter() - t0
            finally:
                self._leave_finish_lane()
        except Exception as exc:  # noqa: BLE001 - an item error is data, not a worker crash
            _release_gpu_memory(exc)
            return self._result(task, Outcome.FAILED, timings, item_error(exc, stage, self.host))
        return self._result(task, Outcome.DONE, timings)

    def _prepare(self, task: Task, timings: dict[str, float]) -> Any:
        """Counted while it waits and runs, so the sampler knows more items are on their way;
        on success `_sample_batched` moves the item from being prepared to waiting at once."""
        with self._stages:
            self._to_prepare += 1
        try:
            with self._prepare_lock, self._doing("_preparing", task.item.id):
                timings["queue"] = max(0.0, time.time() - task.queued_at)
                t0 = time.perf_counter()
                prepared = self.runner.prepare(task.item)
                timings["prepare"] = time.perf_counter() - t0
        except BaseException:
            with self._stages:
                self._to_prepare -= 1
                self._stages.notify_all()
            raise
        return prepared

    def _leave_finish_lane(self) -> None:
        with self._stages:
            self._to_finish -= 1
            self._stages.notify_all()

    @contextlib.contextmanager
    def _doing(self, stage: str, item_id: str) -> Iterator[None]:
        setattr(self, stage, item_id)
        try:
            yield
        finally:
            setattr(self, stage, None)

    def _result(
        self,
        task: Task,
        outcome: Outcome,
        timings: dict[str, float],
        error: ItemError | None = None,
    ) -> Result:
        return Result(
            id=task.item.id,
            outcome=outcome,
            attempt=task.attempt,
            worker=self.settings.worker_id,
            node=self.host,
            timings=timings,
            error=error,
        )

    def _check_lease(self) -> None:
        """Fence: a worker orphaned by a dead driver must not commit over a newer run."""
        if self.settings.driver is not None and holder_is_gone(self.settings.driver):
            raise LeaseError(
                f"worker {self.settings.worker_id}: its driver is gone; not committing"
            )
        if self.settings.lease_token is None:
            return
        current = self.store.root.read_json(LEASE_FILE) or {}
        if current.get("token") != self.settings.lease_token:
            raise LeaseError(
                f"worker {self.settings.worker_id}: the run that started it no longer holds "
                f"{self.store.url}/{LEASE_FILE}; not committing"
            )

    def _sample_batched(
        self, item_id: str, prepared: Any, timings: dict[str, float]
    ) -> tuple[Any, int]:
        """Queue the item for the sampler and return its latents and the size of its batch.

        Every item's thread takes a turn as the sampler: whichever finds a group it may start
        (`_next_group`) samples it, whether or not its own item is in it, until its own item is
        done. A failed batch is retried item by item, so one bad item never fails the others.
        On success the item is in the finish lane (`_leave_finish_lane` takes it out).
        """
        batch_key = getattr(self.runner, "batch_key", None)
        alone = self.settings.batch_size <= 1 or batch_key is None
        entry = _Waiting(item_id, prepared, timings, None if alone else batch_key(prepared))
        with self._stages:
            self._to_prepare -= 1
            self._waiting.append(entry)
            self._stages.notify_all()
        while True:
            with self._stages:
                group = self._next_group()
                while not entry.done and group is None:
                    self._stages.wait()
                    group = self._next_group()
                if entry.done:
                    break
                self._sampling = True
                for e in group:
                    self._waiting.remove(e)
            try:
                self._run_group(group)
            finally:
                with self._stages:
                    self._sampling = False
                    self._to_finish += sum(1 for e in group if e.error is None)
                    for e in group:
                        e.done = True
                    self._stages.notify_all()
        if entry.error is not None:
            raise entry.error
        return entry.result, entry.batch

    def _next_group(self) -> list[_Waiting] | None:
        """Called under `_stages`: the items to sample now, or None to wait.

        The oldest waiting item and the waiting items sharing its batch key, up to batch_size;
        none while the sampler is busy, while more than batch_size sampled items wait in the
        finish lane, or while the batch is not full and more items are being prepared.
        """
        if self._sampling or not self._waiting or self._to_finish > self.settings.batch_size:
            return None
        first = self._waiting[0]
        if first.key is None:
            return [first]
        same = [e for e in self._waiting if e.key == first.key][: self.settings.batch_size]
        if len(same) < self.settings.batch_size and self._to_prepare > 0:
            return None
        return same

    def _run_group(self, group: list[_Waiting]) -> None:
        """The one sampling thread: one forward per step for the whole group."""
        label = group[0].item_id + (f" +{len(group) - 1}" if len(group) > 1 else "")
        self._progress = (label, 0, 0)
        t0, started = time.perf_counter(), time.time()
        try:
            if len(group) == 1:
                results = [self.runner.sample(group[0].prepared, self._on_step(label))]
            else:
                prepared = [e.prepared for e in group]
                results = self.runner.sample_batch(prepared, self._on_step(label))
            for e, latents in zip(group, results, strict=True):
                e.result, e.batch = latents, len(group)
        except Exception as exc:  # noqa: BLE001 - a lone item's error; a batch retries alone
            if len(group) == 1:
                group[0].error = exc
            else:
                for e in group:
                    self._sample_alone(e)
        finally:
            elapsed = time.perf_counter() - t0
            self._busy_s += elapsed
            self._progress = (None, 0, 0)
            for e in group:
                e.prepared = None  # the sampler's inputs are no longer needed
                e.timings["sample_start_unix"] = started
                e.timings["sample"] = elapsed

    def _sample_alone(self, entry: _Waiting) -> None:
        try:
            entry.result = self.runner.sample(entry.prepared, self._on_step(entry.item_id))
            entry.batch = 1
        except Exception as exc:  # noqa: BLE001 - the item's own error, reported for it
            entry.error = exc

    def _on_step(self, label: str) -> OnStep:
        def on_step(step: int, steps: int) -> None:
            self._progress = (label, step, steps)

        return on_step

    def _metadata(
        self, task: Task, meta: dict[str, Any], timings: dict[str, float]
    ) -> dict[str, Any]:
        return {
            "item": task.item.to_dict(),
            "fingerprint": task.fingerprint,
            **meta,
            "status": Outcome.DONE.value,
            "attempts": task.attempt,
            "worker": self.settings.worker_id,
            "node": self.host,
            "node_id": self.node_id,
            "device": self.device,
            "versions": self.versions,
            "timings": {k: round(v, 4) for k, v in timings.items() if not k.endswith("_unix")},
        }


@dataclass(eq=False)
class _Waiting:
    """A prepared item queued for the sampler, and where its result lands."""

    item_id: str
    prepared: Any
    timings: dict[str, float]
    key: Any
    done: bool = False  # read and set under the worker's `_stages` condition
    result: Any = None
    error: Exception | None = None
    batch: int = 1


def _watch_driver(driver: dict, every_s: float = 0.5) -> None:
    """On the driver's own machine, end this worker as soon as the driver process is gone, so
    nothing of a killed run keeps sampling or committing. Elsewhere Ray's own cleanup applies."""

    def watch() -> None:
        while not holder_is_gone(driver):
            time.sleep(every_s)
        os._exit(1)

    threading.Thread(target=watch, name="pusa-driver-watch", daemon=True).start()


def _node_id() -> str | None:
    if not ray.is_initialized():
        return None
    return ray.get_runtime_context().get_node_id()


@ray.remote(concurrency_groups={"control": 4})
class Worker(WorkerCore):
    """`WorkerCore` as an actor; `info`, `progress` and `pid` answer while items run, and
    `progress` and `pid` while the pipeline loads (`info` waits for the load in its own thread)."""

    @ray.method(concurrency_group="control")
    def info(self) -> dict[str, Any]:
        return WorkerCore.info(self)

    @ray.method(concurrency_group="control")
    def progress(self) -> dict[str, Any]:
        return WorkerCore.progress(self)

    @ray.method(concurrency_group="control")
    def pid(self) -> int:
        return os.getpid()
