"""The driver's record of each worker (`Slot`), and the pure rules of the pool: how many items a
worker holds, how many workers fit a cluster's free resources, which nodes a label selector
takes."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

from pusa_batch.engine.contract import ItemError, Pending, SlotState


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


def died(slot: Slot, error_type: str) -> ItemError:
    """The error charged to the item a worker was sampling when its process died."""
    return ItemError(
        error_type="WorkerDied",
        message=f"worker {slot.wid} died while sampling this item ({error_type}); "
        "often out of memory: try fewer frames, a smaller size or fewer workers per node",
        node=slot.info.get("host"),
    )
