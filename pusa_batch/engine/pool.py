"""The driver's pool of workers: how many to start, starting one, growing an elastic pool and
replacing a lost worker (the rules are in `dispatch.py`'s decisions).

`PoolKeeping` is a part of `Driver`: it reads and writes the driver's slots, settings and pool.
"""

from __future__ import annotations

from typing import Any

from pusa_batch.engine.config import Notice, WorkersStarting
from pusa_batch.engine.contract import RefKind, SlotState
from pusa_batch.engine.slots import Slot, room
from pusa_batch.engine.worker import WorkerSettings


class PoolKeeping:
    def _start_workers(self) -> None:
        resources = self.pool.cluster_resources()
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
        handle = self.pool.start_worker(options, self.make_runner, settings)
        slot = Slot(wid, handle)
        self.slots.append(slot)
        self._probe(slot)
        self._poll(slot)  # answered as soon as the actor runs: it is placed, and on which node
        return slot

    def _probe(self, slot: Slot) -> None:
        self.refs[self.pool.call(slot.handle, "info")] = (RefKind.INFO, slot, None)

    def _poll(self, slot: Slot) -> None:
        slot.polling = True
        self.refs[self.pool.call(slot.handle, "progress")] = (RefKind.PROGRESS, slot, None)

    def _room(self) -> int:
        """How many more workers the cluster's free resources hold now."""
        free = self.pool.free_per_node()
        nodes = {n["NodeID"]: n for n in self.pool.nodes() if n.get("Alive")}
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


def _driver_identity(lease: Any) -> dict | None:
    record = getattr(lease, "record", None)
    if not isinstance(record, dict):
        return None
    keys = ("host", "boot_id", "pid_ns", "pid", "pid_start")
    return {k: record.get(k) for k in keys}
