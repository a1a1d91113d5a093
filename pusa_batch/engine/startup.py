"""A run's start: Ray (embedded on 127.0.0.1, or joined) and the pipeline's pre-run check, each
in its own thread, so neither waits for the other nor for the plan.

`Startup.begin()` starts both. `run` calls it as soon as the run is sure to need them: right
after reading the root when the manifest has more rows than the root holds done or failed items
(each id is unique, so some row is pending), which lets Ray start while a big manifest's plan is
counted; otherwise once the plan says there is work. A run with nothing to do starts neither.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import math
import os
from collections.abc import Callable, Iterator

import ray
from ray._private.ray_constants import PROCESS_TYPE_MONITOR

from pusa_batch.engine.config import Notice, OnEvent, Phase, RunConfig
from pusa_batch.engine.reaper import Reaper, start_reaper
from pusa_batch.errors import RayStartError

log = logging.getLogger(__name__)

EMBEDDED_RAY_STARTS = 2  # Ray gives its raylet 30 s to register; a loaded machine may need more

# Ray's own start-up chatter that says nothing to act on (kept out of the live view).
RAY_NOISE = (
    "Token authentication is enabled for this Ray cluster",
    "SIGTERM handler is not set",  # started in a thread: the run installs its own handler
)


class Startup:
    """Ray's start and the pre-run check (`check`) of one run.

    `ray_ready()` waits for Ray (and emits its start-up warnings as notices); `wait_for_check`
    waits for the check and raises its error (the driver calls it once the workers are loading,
    before the first item); `close()` waits for both threads and stops a Ray this run started.
    """

    def __init__(self, config: RunConfig, address: str | None, emit: OnEvent, spec, *, check: bool):
        self.config, self.address, self.emit, self.spec, self.check = (
            config,
            address,
            emit,
            spec,
            check,
        )
        self.owned = not ray.is_initialized()
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._ray: concurrent.futures.Future | None = None
        self._checked: concurrent.futures.Future | None = None
        self._told = False
        self._reaper: Reaper | None = None  # an embedded Ray's, once it is up
        self.on_ready: Callable[[], None] = lambda: None  # called in the main thread, Ray up

    def begin(self) -> None:
        if self._pool is not None:
            return
        self._pool = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="startup")
        if self.check:
            self._checked = self._pool.submit(_preflight, self.spec, self.address is None)
        if self.owned:
            self._ray = self._pool.submit(self._start_ray)

    def ray_ready(self) -> None:
        self.begin()
        if self._ray is None:
            return
        if not self._ray.done():
            joining = f"connecting to Ray at {self.address}"
            self.emit(Phase("starting Ray" if self.address is None else joining))
        notes = self._ray.result()
        if not self._told:
            self._told = True
            if self.address is None:  # embedded: if this driver is killed, its Ray goes too
                self._reaper = start_reaper()
                if self._reaper is not None:
                    self._reaper.watch()
            self.on_ready()
            for note in notes:
                self.emit(Notice(f"Ray: {note}"))

    def wait_for_check(self) -> None:
        if self._checked is not None:
            self._checked.result()

    def close(self) -> None:
        """Idempotent; waits for a Ray start under way before stopping it."""
        if self._pool is None:
            return
        pool, self._pool = self._pool, None
        if self._checked is not None:
            self._checked.cancel()
        if self._ray is not None:
            concurrent.futures.wait([self._ray])
            if ray.is_initialized():
                shutdown_ray(embedded=self.address is None)
        if self._reaper is not None:
            self._reaper.close()
        pool.shutdown(wait=True)

    def _start_ray(self) -> list[str]:
        with ray_warnings() as notes:
            ray_init(self.config, self.address)
        return notes


def ray_init(config: RunConfig, address: str | None) -> None:
    """Join `address`, else start an embedded local Ray on 127.0.0.1 (tried twice)."""
    quiet = {"logging_level": logging.WARNING, "log_to_driver": False}
    if address is not None:
        try:
            ray.init(address=address, **quiet)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise RayStartError(
                f"could not join the Ray cluster at {address}: {e}. Check the address "
                "(HOST:6379, ray://HOST:10001 or auto), that the cluster is up, and its token."
            ) from e
        return
    cpus = max(os.cpu_count() or 1, math.ceil((config.workers or 1) * config.cpus_per_worker))
    for start in range(1, EMBEDDED_RAY_STARTS + 1):
        try:
            ray.init(num_cpus=cpus, include_dashboard=False, _node_ip_address="127.0.0.1", **quiet)
            return
        except Exception as e:  # noqa: BLE001 - Ray raises a bare Exception on a start timeout
            ray.shutdown()
            if start == EMBEDDED_RAY_STARTS:
                raise RayStartError(
                    f"the embedded Ray did not start ({start} tries): {e} This machine may be "
                    "overloaded: run the same command again when it is quieter, or start Ray "
                    "yourself (`ray start --head`) and pass --address."
                ) from e
            log.warning("the embedded Ray did not start (%s); trying once more", e)


def shutdown_ray(*, embedded: bool) -> None:
    """`ray.shutdown()`; on an embedded Ray, its autoscaler monitor is killed first. The
    monitor ignores SIGTERM and Ray waits a second for it before killing it anyway, which is a
    second at the end of every run; nothing of ours talks to it."""
    node = getattr(ray._private.worker, "_global_node", None) if embedded else None
    monitors = getattr(node, "all_processes", {}).get(PROCESS_TYPE_MONITOR, ()) if node else ()
    for info in monitors:
        with contextlib.suppress(Exception):
            info.process.kill()
    ray.shutdown()


@contextlib.contextmanager
def ray_warnings() -> Iterator[list[str]]:
    """Ray logs to the terminal through its own handler, which would write into the live view:
    while it starts, its warnings are collected instead (its known noise dropped), to be shown
    as notices."""
    notes: list[str] = []
    ray_logger = logging.getLogger("ray")
    saved = ray_logger.handlers[:]
    collect = logging.Handler(logging.WARNING)
    collect.emit = lambda record: notes.append(record.getMessage())  # type: ignore[method-assign]
    ray_logger.handlers = [collect]
    try:
        yield notes
    finally:
        ray_logger.handlers = saved
        notes[:] = [n for n in notes if not any(noise in n for noise in RAY_NOISE)]


def _preflight(spec, device_checks: bool) -> None:
    # imported here, in the check's thread: torch and the model classes stay off the path to
    # Ray's start
    from pusa_batch.doctor.preflight import preflight

    preflight(spec, device_checks=device_checks)
