"""When a worker stops answering: its node is gone (it leaves the pool, its items go back
uncharged), its process died (Ray restarts it; the item it sampled is charged), or it never
loaded (it is retired). The rules are in `dispatch.py`'s decisions.

`LossHandling` is a part of `Driver`: it reads and writes the driver's slots, queue and pool.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

from pusa_batch.engine.config import ActorFailed, ActorLoaded, Notice, WorkerLeft
from pusa_batch.engine.contract import ItemError, Outcome, Pending, Result, SlotState
from pusa_batch.engine.slots import Slot, died
from pusa_batch.errors import PipelineError, WorkerError

log = logging.getLogger(__name__)


class LossHandling:
    def _check_nodes(self) -> None:
        """Workers on nodes Ray has marked dead leave the pool."""
        self._last_nodes = time.monotonic()
        dead = self._dead_nodes()
        for slot in self.slots:
            if slot.state is not SlotState.DEAD and slot.node_id in dead:
                self._node_lost(slot, "its node is gone")

    def _dead_nodes(self) -> set[str]:
        try:
            return {n["NodeID"] for n in self.pool.nodes() if not n.get("Alive")}
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
        self._end(slot)
        for pending in reversed(back):
            if not self._committed(pending, slot):
                self.queue.appendleft(pending)
        log.warning("%s; %d item(s) back to the queue", slot.reason, len(back))
        self.emit(WorkerLeft(slot.wid, slot.reason))
        self.emit(Notice(f"{slot.reason}; {len(back)} item(s) went back to the queue"))
        self._replace(slot)

    def _end(self, slot: Slot) -> None:
        """End the worker's actor for good (it may be gone already)."""
        try:
            self.pool.kill(slot.handle)
        except Exception:  # noqa: BLE001 - already gone
            pass

    def _committed(self, pending: Pending, slot: Slot) -> bool:
        """Whether an item a gone worker held was committed just before it went (then: done)."""
        try:
            done = self.store.is_done(pending.id)
        except Exception:  # noqa: BLE001 - not known: generated again, committed once more
            return False
        if done:
            self._done(pending, slot, Result(pending.id, Outcome.DONE, pending.attempts + 1))
        return done

    def _item_lost(self, ref: Any, slot: Slot, pending: Pending, exc: RayActorError) -> None:
        """The worker holding `pending` stopped answering: done if it committed just before,
        charged if it died sampling it (once the cause is known), else back to the queue."""
        self._unreachable(slot, exc)
        if slot.lost:
            if not self._committed(pending, slot):
                self.queue.appendleft(pending)
            return
        if self.store.is_done(pending.id):  # committed just before the worker died
            self._result(pending, slot, Result(pending.id, Outcome.DONE, pending.attempts + 1))
        elif slot.status[0] == pending.id:  # it died while sampling this one
            if slot.crashed:
                self._failed(pending, slot, died(slot, type(exc).__name__))
            else:
                slot.held = (pending, type(exc).__name__)  # charged once the cause is known
        else:
            self.queue.appendleft(pending)

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
            self._failed(pending, slot, died(slot, held_error or error_type))

    def _on_info(self, ref: Any, slot: Slot) -> None:
        if slot.state is SlotState.DEAD:
            return
        try:
            info = self.pool.get(ref)
        except ActorUnavailableError:
            slot.reprobe_at = time.monotonic() + 0.5  # still restarting: ask again soon
            return
        except RayActorError as exc:
            self._not_back(slot, exc)
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
            self.pool.kill(slot.handle)
            return
        slot.info, slot.state = info, SlotState.READY
        slot.status, slot.activity = (None, 0, 0), (None, None)
        self.emit(ActorLoaded(slot.wid, info["load_s"], info["pid"], info["host"]))
        if (
            all(s.state in (SlotState.READY, SlotState.DEAD) for s in self.slots)
            and self.all_loaded_at is None
        ):
            self.all_loaded_at = time.monotonic()

    def _not_back(self, slot: Slot, exc: RayActorError) -> None:
        """The worker's `info` failed for good: its node is gone, or it is retired."""
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
