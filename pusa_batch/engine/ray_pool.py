"""What the driver asks of Ray, in one place: start an actor, call it, wait, read, end it, and
the cluster's resources and nodes.

`Driver` takes any object with these methods (`RayPool` is the default), so its bookkeeping can be
measured without Ray's processes: `benchmarks/b13_driver_scale.py` swaps in workers that run
inside the driver's process. Failures keep Ray's exception types (`RayActorError` and its
subclasses), which the driver tells apart.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ray


class RayPool:
    """The real pool: `Worker` actors and Ray's object references."""

    def start_worker(self, options: dict[str, Any], make_runner: Callable, settings: Any) -> Any:
        from pusa_batch.engine.worker import Worker

        return Worker.options(**options).remote(make_runner, settings)

    def call(self, handle: Any, method: str, *args: Any) -> Any:
        """Start `handle.method(*args)`; a reference to its answer."""
        return getattr(handle, method).remote(*args)

    def ready(self, refs: list[Any], timeout_s: float) -> list[Any]:
        """Every reference of `refs` whose answer is there, waiting up to `timeout_s` for one."""
        if not refs:
            return []
        first, _ = ray.wait(refs, num_returns=1, timeout=timeout_s)
        if not first:
            return []
        more, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        return list({*first, *more})

    def settled(self, refs: list[Any], timeout_s: float) -> list[Any]:
        """The references of `refs` answered (or failed) within `timeout_s`, waiting for all."""
        if not refs:
            return []
        done, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        return done

    def get(self, ref: Any) -> Any:
        return ray.get(ref)

    def kill(self, handle: Any) -> None:
        ray.kill(handle, no_restart=True)

    def cluster_resources(self) -> dict[str, float]:
        return ray.cluster_resources()

    def free_per_node(self) -> dict[Any, dict[str, float]]:
        """Free resources by node id (the key None: the cluster as one node)."""
        try:
            from ray._private.state import state  # per node: a worker cannot span two

            return state.available_resources_per_node()
        except Exception:  # noqa: BLE001 - a Ray without it: the cluster as one node
            return {None: ray.available_resources()}

    def nodes(self) -> list[dict[str, Any]]:
        return ray.nodes()
