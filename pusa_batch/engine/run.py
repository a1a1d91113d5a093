"""A run: validate, take the lease, plan (`plan.py`), dispatch (`dispatch.py`), index.

Decisions:
- The manifest is streamed, never held: it is validated in one pass, then read twice more in
  chunks of `PLAN_CHUNK_ROWS` rows against one read of the root's state (`Store.state()`). The
  first pass keeps counts, the first `MAX_CHANGED_IDS` changed ids and the rows to do (2 bytes
  each at most), so changed items stop the run before anything is generated; the second pass
  checks only those rows and feeds the driver's bounded queue as workers drain it. The driver's
  memory is flat in the number of rows (the root's state holds 16 bytes per done item).
- Items that failed in an earlier run are skipped (counted in `failed_before`) unless
  `retry_failed`; done items whose fingerprint changed stop the run (`ChangedItemsError`) unless
  `regenerate_changed`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import logging
import math
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import ray
from ray._private.ray_constants import PROCESS_TYPE_MONITOR

from pusa_batch.engine.config import (
    Finished,
    Notice,
    OnEvent,
    Phase,
    RunConfig,
    RunSummary,
    Started,
)
from pusa_batch.engine.dispatch import Driver
from pusa_batch.engine.plan import Rules, changed_error, iter_todo, make_plan
from pusa_batch.engine.runner import PipelineRunner, run_spec
from pusa_batch.engine.worker import ItemRunner
from pusa_batch.errors import (
    LeaseError,
    RayStartError,
    StoreUnreachableError,
    Terminated,
    UsageError,
)
from pusa_batch.manifest.read import validate_manifest
from pusa_batch.store.io import RetryPolicy, add_retry_listener
from pusa_batch.store.store import Store

log = logging.getLogger(__name__)


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
    emit(Phase("validating the manifest"))
    address = ray_address(config.address, os.environ)
    spec = run_spec(config.pipeline, dict(config.weights_storage_options))
    report = validate_manifest(config.manifest, spec, strict_columns=config.strict_columns)
    report.raise_for_problems(config.manifest)
    extra = tuple(report.extra_columns)
    retry = RetryPolicy(deadline_s=config.storage_timeout_s)
    store = Store(config.output, dict(config.storage_options), retry=retry)
    if "memory" in store.root.protocols and make_runner is None:
        raise UsageError(
            f"-o {store.url}: memory:// lives inside one process, and the workers commit from "
            "their own processes, so nothing would reach this one. Use a local folder, or an "
            "object store (s3://, gs://) that every worker can reach."
        )
    stop_watching = add_retry_listener(_outage_notices(emit, config.storage_timeout_s))
    try:
        return _run_on(config, spec, store, address, emit, make_runner, started, extra)
    finally:
        stop_watching()


def _run_on(config, spec, store, address, emit, make_runner, started, extra) -> RunSummary:
    owner = {"host": socket.gethostname(), "pid": os.getpid(), "command": "run"}
    lease = store.acquire_lease(
        owner,
        stale_after_s=config.lease_stale_s,
        wait=config.lease_wait,
        on_wait=_countdown(emit),
    )
    lease.start_heartbeat(max(1.0, config.lease_stale_s / 4))
    if lease.note:
        emit(Notice(lease.note))
    try:
        emit(Phase("reading the output root"))
        state = store.state(verify=not config.trust_index)
        healed = store.heal_index(state)
        if healed:
            emit(Notice(healed))
        if store.root.is_local and store.clean_temp():
            emit(Notice("removed temporary files left by an earlier run"))
        rules = Rules(config.retry_failed, config.regenerate_changed)
        planned = make_plan(config.manifest, spec, state, rules)
        plan = planned.counts
        if plan.changed and not config.regenerate_changed:
            raise changed_error(plan)
        emit(Started(total=plan.total, pending=plan.todo, done_before=plan.done))
        if plan.damaged:
            emit(Notice(_damaged_notice(plan.damaged, state.damaged, store.url)))
        # resolved here: a worker elsewhere on a cluster has another working directory
        pipeline_path = str(Path(config.pipeline).expanduser().resolve())
        weight_options = dict(config.weights_storage_options)
        runner = make_runner or functools.partial(PipelineRunner, pipeline_path, weight_options)
        driver = Driver(config, store, emit, runner, lease)
        if plan.todo:
            try:
                check = make_runner is None
                with _ray_session(config, address, emit, spec, check=check) as checked:
                    emit(Phase("loading models"))
                    driver.run(
                        iter_todo(config.manifest, spec, state, rules, plan=planned),
                        plan.todo,
                        ready=checked,
                    )
            except BaseException as stopped:
                still_ours = not isinstance(stopped, LeaseError) and lease.lost is None
                if still_ours and not _unreachable(stopped):
                    with contextlib.suppress(Exception):  # keep what is done; the error is news
                        store.compact_index()
                        driver.write_status(state="stopped")
                raise
        compacted = store.compact_index()
        changed_root = driver.generated or compacted.folded or healed or state.damaged
        if changed_root or not store.has_final_index():  # a no-op rerun rewrites nothing
            store.write_final_index(state)
        summary = RunSummary(
            total=plan.total,
            done_before=plan.done,
            generated=driver.generated,
            failed=len(driver.failures),
            skipped=plan.done + plan.failed_before,
            wall_s=time.monotonic() - started,
            output=store.url,
            failures=driver.failures,
            failed_before=plan.failed_before,
            workers=driver.worker_stats(),
            active_s=driver.active_s(),
            damaged=plan.damaged,
            extra_columns=extra,
        )
        driver.write_status(state="finished", summary=summary)
    finally:
        lease.release()
    emit(Finished(summary))
    return summary


@contextlib.contextmanager
def _ray_session(
    config: RunConfig, address: str | None, emit: OnEvent, spec, *, check: bool
) -> Iterator[Callable[[], None]]:
    """Use the connected Ray, else connect (embedded local Ray on 127.0.0.1 when no address).

    The pipeline's pre-run check (`check`) runs meanwhile, in a thread: it imports torch and
    reads file headers while Ray starts its processes and the workers load. What this yields
    waits for that check and raises its error; the driver calls it after starting the workers
    and before the first item, so a bad pipeline still stops the run before anything is made.
    """
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="preflight") as pool:
        checked = pool.submit(_preflight, spec, address is None) if check else None
        owned = not ray.is_initialized()
        if owned:
            emit(Phase("starting Ray" if address is None else f"connecting to Ray at {address}"))
            with _ray_logs_as_notices(emit):
                _ray_init(config, address)

        def wait_for_check() -> None:
            if checked is not None:
                checked.result()

        try:
            with _sigterm_unwinds():
                yield wait_for_check
        finally:
            if checked is not None:
                checked.cancel()
            if owned:
                shutdown_ray(embedded=address is None)


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


def _preflight(spec, device_checks: bool) -> None:
    # imported here, in the check's thread: torch and the model classes stay off the path to
    # Ray's start
    from pusa_batch.doctor.preflight import preflight

    preflight(spec, device_checks=device_checks)


def _unreachable(error: BaseException) -> bool:
    """A storage error after retries ran out: more calls on the way out would each wait out
    their own timeout, and the store could not take them anyway."""
    return isinstance(error, StoreUnreachableError)


SIGTERM_RECEIVED = threading.Event()


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """SIGTERM raises `Terminated` in the main thread, as Ctrl-C raises KeyboardInterrupt.
    Installed after Ray starts: Ray's core worker puts its own handler there (a stack dump and
    an abort), and ours must be the one that answers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum: int, frame: object) -> None:
        SIGTERM_RECEIVED.set()  # Ray's calls turn any KeyboardInterrupt into a plain one
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def ray_address(given: str | None, environ) -> str | None:
    """The cluster `run` joins: `--address`, else RAY_ADDRESS, else None (embedded local Ray).

    A dashboard URL (http://HEAD:8265) is what `submit` and `ray job` take; `ray.init` cannot
    join through it, so it is refused with the two addresses that work.
    """
    address, source = (given, "--address") if given else (environ.get("RAY_ADDRESS"), None)
    address = address or None
    if address and address.startswith(("http://", "https://")):
        named = source or "RAY_ADDRESS"
        raise UsageError(
            f"{named}={address} is a Ray dashboard address, which `pusa-batch submit` takes; "
            "`run` joins a cluster by HOST:6379, ray://HOST:10001 or auto"
            + ("" if source else " (unset RAY_ADDRESS, or give --address)")
        )
    return address


EMBEDDED_RAY_STARTS = 2  # Ray gives its raylet 30 s to register; a loaded machine may need more


def _ray_init(config: RunConfig, address: str | None) -> None:
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


# Ray's own start-up chatter that says nothing to act on (kept out of the live view).
RAY_NOISE = ("Token authentication is enabled for this Ray cluster",)


@contextlib.contextmanager
def _ray_logs_as_notices(emit: OnEvent) -> Iterator[None]:
    """Ray logs to the terminal through its own handler, which would write into the live view:
    while it starts, its warnings become notices instead (its known noise is dropped)."""
    records: list[logging.LogRecord] = []
    ray_logger = logging.getLogger("ray")
    saved = ray_logger.handlers[:]
    collect = logging.Handler(logging.WARNING)
    collect.emit = records.append  # type: ignore[method-assign]
    ray_logger.handlers = [collect]
    try:
        yield
    finally:
        ray_logger.handlers = saved
        for record in records:
            message = record.getMessage()
            if not any(noise in message for noise in RAY_NOISE):
                emit(Notice(f"Ray: {message}"))


def _outage_notices(emit: OnEvent, timeout_s: float) -> Callable[[float, BaseException], None]:
    """Storage retries as notices, at most one every 5 s."""
    last: list[float] = []

    def on_retry(waited_s: float, error: BaseException) -> None:
        now = time.monotonic()
        if last and now - last[-1] < 5.0:
            return
        last.append(now)
        emit(
            Notice(
                f"storage unreachable, retrying ({waited_s:.0f} s of {timeout_s:g} s, "
                f"--storage-timeout): {type(error).__name__}"
            )
        )

    return on_retry


def _countdown(emit: OnEvent) -> Callable[[str, float], None]:
    """Lease waits as notices, one every 5 s of the countdown."""
    last: list[int] = []

    def on_wait(holder: str, left_s: float) -> None:
        step = int(left_s // 5)
        if not last or step < last[-1]:
            last.append(step)
            emit(
                Notice(f"waiting for the lease held by {holder}: taking it over in {left_s:.0f} s")
            )

    return on_wait


def _damaged_notice(count: int, damaged: dict[str, str], output: str) -> str:
    shown = ", ".join(f"{i} ({why})" for i, why in sorted(damaged.items())[:5])
    more = f" and {count - 5} more" if count > 5 else ""
    return (
        f"{count} item(s) recorded as done have missing or truncated files and are generated "
        f"again: {shown}{more}. `pusa-batch verify {output}` lists them all."
    )
