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

import contextlib
import functools
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

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
from pusa_batch.engine.startup import Startup
from pusa_batch.engine.worker import ItemRunner
from pusa_batch.errors import (
    LeaseError,
    PipelineError,
    StoreUnreachableError,
    Terminated,
    UsageError,
)
from pusa_batch.manifest.read import validate_manifest
from pusa_batch.store.io import RetryPolicy, add_retry_listener
from pusa_batch.store.store import Store, refuse_layout_input
from pusa_batch.weights.urls import is_url

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
    retry = RetryPolicy(deadline_s=config.storage_timeout_s)
    store = Store(config.output, dict(config.storage_options), retry=retry)
    manifest = str(config.manifest)
    if store.root.is_local and (not is_url(manifest) or manifest.startswith("file://")):
        local = manifest.removeprefix("file://")
        refuse_layout_input(store.root.path(""), local, "the manifest")
    report = validate_manifest(
        config.manifest,
        spec,
        strict_columns=config.strict_columns,
        fold_case=store.names_ignore_case(),  # `Cat` and `cat` would be one video there
    )
    report.raise_for_problems(config.manifest)
    if "memory" in store.root.protocols and make_runner is None:
        raise UsageError(
            f"-o {store.url}: memory:// lives inside one process, and the workers commit from "
            "their own processes, so nothing would reach this one. Use a local folder, or an "
            "object store (s3://, gs://) that every worker can reach."
        )
    stop_watching = add_retry_listener(_outage_notices(emit, config.storage_timeout_s))
    fresh = not store.exists()
    try:
        startup = Startup(config, address, emit, spec, check=make_runner is None)
        with _sigterm_unwinds() as answer_sigterm:
            startup.on_ready = answer_sigterm
            try:
                return _run_on(config, spec, store, startup, emit, make_runner, started, report)
            finally:
                startup.close()
    except PipelineError:
        if fresh:  # refused before its first item: the new root goes again
            with contextlib.suppress(Exception):
                store.remove_if_unused()
        raise
    finally:
        stop_watching()


def _run_on(config, spec, store, startup, emit, make_runner, started, report) -> RunSummary:
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
        if report.rows > state.done_count() + len(state.failures):
            startup.begin()  # some row is pending for sure: Ray starts while the plan is counted
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
                startup.ray_ready()
                emit(Phase("loading models"))
                driver.run(
                    iter_todo(config.manifest, spec, state, rules, plan=planned),
                    plan.todo,
                    ready=startup.wait_for_check,
                )
            except BaseException as stopped:
                startup.close()
                still_ours = not isinstance(stopped, LeaseError) and lease.lost is None
                if still_ours and not _unreachable(stopped):
                    with contextlib.suppress(Exception):  # keep what is done; the error is news
                        store.compact_index()
                        driver.write_status(state="stopped")
                raise
            startup.close()  # Ray stops before the index is finished, as its workers are gone
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
            extra_columns=tuple(report.extra_columns),
        )
        driver.write_status(state="finished", summary=summary)
    finally:
        lease.release()
    emit(Finished(summary))
    return summary


def _unreachable(error: BaseException) -> bool:
    """A storage error after retries ran out: more calls on the way out would each wait out
    their own timeout, and the store could not take them anyway."""
    return isinstance(error, StoreUnreachableError)


SIGTERM_RECEIVED = threading.Event()


def _terminate(signum: int, frame: object) -> None:
    SIGTERM_RECEIVED.set()  # Ray's calls turn any KeyboardInterrupt into a plain one
    raise Terminated()


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[Callable[[], None]]:
    """SIGTERM raises `Terminated` in the main thread, as Ctrl-C raises KeyboardInterrupt, from
    the lease's taking to the run's end. What this yields takes the handler back: Ray's start
    (in its own thread) can put its core worker's handler there (a stack dump and an abort),
    so it is called once Ray is up."""
    if threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return

    def answer() -> None:
        signal.signal(signal.SIGTERM, _terminate)

    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield answer
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
