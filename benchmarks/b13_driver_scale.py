"""B13: the driver alone at scale: the real `Driver` feeding 1,000 workers from a 10,000,000-row
manifest, in one process.

What is real: the `Driver` (`engine/dispatch.py` and its rooms, unchanged), the manifest (a
Parquet file of `--rows` t2v rows), the plan (`make_plan`'s counting pass over every row, then
`iter_todo` streaming the items as the queue drains), the output root (a local folder: each item
is committed by `Store.commit`, the driver compacts the index every 200 commits and writes
`run.json` every 2 s), the lease (taken and heartbeaten), Ray's metrics (a local Ray is started
for them, as `run` does) and the worker protocol: each worker is a `WorkerCore`, the actor's own
class, answering `info`, `progress` and `run(Task) -> Result`; and the heap, kept as `run`'s
process keeps it (the script starts itself again after `heap.keep_one_heap()`, since Arrow picks
its allocator at import; `--heap-per-thread` leaves glibc's and Arrow's defaults).

What is simulated: where the workers run. `InProcessPool` takes the place of `RayPool` (the seam
`Driver(..., pool=...)`): a call runs the worker's method in the driver's thread when the driver
reads the answer, and every call answers at once, so the driver is the only bottleneck. The
runner is the cheapest `ItemRunner` there is (16 bytes of "video"), and the worker's own fences
(the lease check before each commit, the watch on the driver's process) are off: they cost the
worker, not the driver. The seconds spent inside the workers' methods (the commit above all) are
measured and taken out: `driver_items_per_s` is items over the driver's own seconds. The live
view is left out too (events go to a counter), and so is Ray's own `ray.wait` on thousands of
references.

Only the first `--items` of the manifest's rows are dispatched (a full 10M-row run would take
hours of commits); the manifest and the plan are whole.

- `B13 driver_items_per_s=... target>=200`: sustained, between 10% and 90% of the items;
- `B13 driver_rss_growth_b_per_item=... target<=64`: the driver process's RSS growth between
  10% and 90% of the items, per item (flat: a 10M-item run would grow by at most 640 MB): the
  least-squares slope of the RSS read at 9 marks (10%, 20%, ... 90%), each read right after
  `heap.release_freed_memory()`. The driver makes that call itself with each `run.json` write,
  every 2 s, and each call gave back 12 to 128 MB of malloc's free pages: read without it, a
  mark's RSS is the floor plus whatever garbage the 2 s since the driver's last call left, and
  two such marks differ by tens of MB either way (+46 and -1 MB in two runs of 80,000 items) for
  no growth at all. The raw RSS at each mark, before the call, is printed beside it (its highest
  is the most a container saw at a mark).

`--inject-slowdown S` adds S seconds to each item's handling in the driver and holds S x 1 MB
more per item: both verdicts must then read miss.

    python benchmarks/b13_driver_scale.py [--rows 10000000] [--items 100000] [--workers 1000]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import logging
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from bench_common import (
    Target,
    add_slowdown_flag,
    load_average,
    python_as_run_starts,
    result_line,
    rss_bytes,
    slowdown,
)

from pusa_batch.engine.config import ItemDone, RunConfig
from pusa_batch.engine.dispatch import Driver
from pusa_batch.engine.heap import release_freed_memory
from pusa_batch.engine.plan import Rules, iter_todo, make_plan
from pusa_batch.engine.worker import WorkerCore
from pusa_batch.pipelines.spec import load_pipeline_spec
from pusa_batch.store.store import Store

HERE = Path(__file__).resolve().parent
TINY = HERE.parent / "pipelines" / "tiny.toml"
RATE_TARGET = Target(">=", 200)
GROWTH_TARGET = Target("<=", 64)  # bytes of RSS per item between 10% and 90% of the run
MARKS = (0.1, 0.5, 0.9)  # for the rate
MEMORY_MARKS = tuple(n / 10 for n in range(1, 10))  # for the memory slope
VIDEO = b"\0" * 16
ROW_GROUP = 1_000_000  # manifest rows written at a time


# --------------------------------------------------------------------------- the manifest


def write_manifest(path: Path, rows: int) -> None:
    """id, task, prompt, seed: t2v rows written column-wise, a million at a time."""
    writer = None
    for start in range(0, rows, ROW_GROUP):
        numbers = pa.array(np.arange(start, min(rows, start + ROW_GROUP)))
        text = numbers.cast(pa.string())
        table = pa.table(
            {
                "id": pc.binary_join_element_wise("clip-", pc.utf8_lpad(text, 8, "0"), ""),
                "task": pa.array(["t2v"] * len(numbers)),
                "prompt": pc.binary_join_element_wise(
                    "a slow dolly shot of scene ", text, ", golden hour, 35mm film grain", ""
                ),
                "seed": numbers,
            }
        )
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table, row_group_size=65_536)
    if writer is not None:
        writer.close()


# --------------------------------------------------------------------------- the workers


class SixteenBytes:
    """The cheapest `ItemRunner`: no model; every item's video is 16 bytes."""

    def load(self) -> dict[str, Any]:
        return {}

    def prepare(self, item: Any) -> Any:
        return item

    def sample(self, prepared: Any, on_step: Any) -> Any:
        on_step(1, 1)
        return None

    def finish(self, item: Any, latents: Any) -> tuple[bytes, dict[str, Any]]:
        return VIDEO, {"timings": {"decode": 0.0, "encode": 0.0}}


class InProcessWorker(WorkerCore):
    """The actor's class, loaded without importing torch (no device to name)."""

    def _load(self, make_runner: Any) -> None:
        self.runner = make_runner()
        self.runner.load()
        self.device = "in-process"
        self._loaded.set()


@dataclasses.dataclass(eq=False)
class Call:
    """A call's reference: the method runs when the driver reads the answer."""

    worker: InProcessWorker
    method: str
    args: tuple


class InProcessPool:
    """`RayPool`'s methods over workers in this process; every call answers at once. The
    seconds spent inside the workers (`worker_s`) are the workers' cost, not the driver's."""

    def __init__(self, cpus: float):
        self.cpus = cpus
        self.worker_s = 0.0
        self.started = 0

    def start_worker(self, options: dict, make_runner: Any, settings: Any) -> InProcessWorker:
        t0 = time.perf_counter()
        self.started += 1
        settings = dataclasses.replace(settings, torch_threads=None, lease_token=None, driver=None)
        worker = InProcessWorker(make_runner, settings)
        self.worker_s += time.perf_counter() - t0
        return worker

    def call(self, handle: InProcessWorker, method: str, *args: Any) -> Call:
        return Call(handle, method, args)

    def ready(self, refs: list[Call], timeout_s: float) -> list[Call]:
        return refs

    def settled(self, refs: list[Call], timeout_s: float) -> list[Call]:
        return refs

    def get(self, ref: Call) -> Any:
        t0 = time.perf_counter()
        try:
            return getattr(ref.worker, ref.method)(*ref.args)
        finally:
            self.worker_s += time.perf_counter() - t0

    def kill(self, handle: InProcessWorker) -> None:
        pass

    def cluster_resources(self) -> dict[str, float]:
        return {"CPU": self.cpus}

    def free_per_node(self) -> dict[Any, dict[str, float]]:
        return {None: {"CPU": 0.0}}

    def nodes(self) -> list[dict[str, Any]]:
        return [{"NodeID": "in-process", "Alive": True}]


# --------------------------------------------------------------------------- measuring


@dataclasses.dataclass(frozen=True)
class Mark:
    items: int
    wall_s: float
    worker_s: float
    rss: int
    arrow_peak: int = 0  # the most Arrow held at once so far (the index merges read parts)
    rss_raw: int = 0  # before freed memory was given back

    @property
    def driver_s(self) -> float:
        return self.wall_s - self.worker_s


class Meter:
    """The driver's `emit`: counts the items done and marks 10%, 50%, 90% of them (wall and
    worker seconds, RSS). With a slowdown, each item costs the driver S s and S MB more."""

    def __init__(self, items: int, pool: InProcessPool, slow_s: float):
        self.pool, self.slow_s = pool, slow_s
        self.at = {max(1, int(items * share)): share for share in {*MARKS, *MEMORY_MARKS}}
        self.marks: dict[float, Mark] = {}
        self.done = 0
        self.events = 0
        self.held: list[bytearray] = []

    def __call__(self, event: Any) -> None:
        self.events += 1
        if not isinstance(event, ItemDone):
            return
        self.done += 1
        if self.slow_s:
            time.sleep(self.slow_s)
            self.held.append(bytearray(int(self.slow_s * 2**20)))
        share = self.at.get(self.done)
        if share is not None:
            arrow_peak = pa.default_memory_pool().max_memory()
            raw = rss_bytes()
            wall_s, worker_s = time.perf_counter(), self.pool.worker_s
            release_freed_memory()  # the driver's own call, made here too: read the floor
            mark = Mark(self.done, wall_s, worker_s, rss_bytes(), arrow_peak, raw)
            self.marks[share] = mark


def sustained_rate(first: Mark, last: Mark) -> float:
    """Items per second of the driver's own time between two marks."""
    return (last.items - first.items) / max(1e-9, last.driver_s - first.driver_s)


def growth_per_item(marks: list[Mark]) -> float:
    """RSS bytes gained per item: the least-squares slope over the marks (0 when it shrank)."""
    items = np.array([m.items for m in marks], dtype=float)
    rss = np.array([m.rss for m in marks], dtype=float)
    if len(marks) < 2 or np.ptp(items) == 0:
        return 0.0
    return max(0.0, float(np.polyfit(items, rss, 1)[0]))


# --------------------------------------------------------------------------- the run


def start_ray() -> None:
    """A local Ray, as `run` starts one: the driver's metrics need it."""
    import ray

    quiet = {"logging_level": logging.WARNING, "log_to_driver": False}
    ray.init(num_cpus=1, include_dashboard=False, _node_ip_address="127.0.0.1", **quiet)


def measure(args: argparse.Namespace, tmp: Path, slow_s: float) -> int:
    if not args.heap_per_thread:
        print(f"  one heap, as in `run`: Arrow on {pa.default_memory_pool().backend_name}")
    manifest = tmp / "manifest.parquet"
    began = time.perf_counter()
    write_manifest(manifest, args.rows)
    print(f"  manifest: {args.rows:,} rows in {time.perf_counter() - began:.1f} s")
    if not args.no_ray:
        began = time.perf_counter()
        start_ray()
        print(f"  local Ray (for the metrics) up in {time.perf_counter() - began:.1f} s")

    spec = load_pipeline_spec(TINY)
    output = str(tmp / "out")
    config = RunConfig(str(manifest), output, str(TINY), workers=args.workers)
    if args.compact_every:
        config = dataclasses.replace(
            config, compact_every_items=args.compact_every, compact_every_s=float("inf")
        )
    store = Store(output)
    owner = {"host": socket.gethostname(), "pid": os.getpid(), "command": "b13"}
    lease = store.acquire_lease(owner, stale_after_s=config.lease_stale_s, wait=False)
    lease.start_heartbeat(max(1.0, config.lease_stale_s / 4))
    try:
        rss_before_plan = rss_bytes()
        began = time.perf_counter()
        state = store.state(verify=False)
        plan = make_plan(str(manifest), spec, state, Rules())
        plan_s = time.perf_counter() - began
        print(
            f"  plan: counting pass over {plan.counts.total:,} rows in {plan_s:.1f} s "
            f"({plan.counts.todo:,} to do); RSS {rss_before_plan / 2**20:.0f} -> "
            f"{rss_bytes() / 2**20:.0f} MB"
        )
        items = min(args.items, plan.counts.todo)
        source = itertools.islice(iter_todo(str(manifest), spec, state, Rules(), plan=plan), items)
        pool = InProcessPool(cpus=args.workers * config.cpus_per_worker)
        meter = Meter(items, pool, slow_s)
        driver = Driver(config, store, meter, SixteenBytes, lease, pool=pool)
        began = time.perf_counter()
        driver.run(source, items)
        wall_s = time.perf_counter() - began
        store.compact_index()
        indexed = store.state(verify=False).done_count()
    finally:
        lease.release()
    if driver.generated != items or indexed != items or driver.failures:
        print(
            f"B13 error: {items} items dispatched, {driver.generated} done, {indexed} indexed, "
            f"{len(driver.failures)} failed",
            file=sys.stderr,
        )
        return 1
    report(args, items, wall_s, pool, meter, driver)
    return 0


def report(
    args: argparse.Namespace,
    items: int,
    wall_s: float,
    pool: InProcessPool,
    meter: Meter,
    driver: Driver,
) -> None:
    first, middle, last = (meter.marks[share] for share in MARKS)
    rate = sustained_rate(first, last)
    memory = [meter.marks[share] for share in MEMORY_MARKS]
    growth = growth_per_item(memory)
    driver_s = wall_s - pool.worker_s
    print(
        f"  run: {items:,} items on {pool.started} workers in {wall_s:.1f} s wall, of which "
        f"{pool.worker_s:.1f} s inside the workers (commits) and {driver_s:.1f} s the driver's "
        f"({items / max(1e-9, driver_s):,.0f} items/s of driver time over the whole run, "
        f"{items / wall_s:,.0f} items/s wall with the commits); {meter.events:,} events"
    )
    print(
        "  driver RSS: "
        + ", ".join(
            f"{int(share * 100)}% {meter.marks[share].rss / 2**20:.1f} MB" for share in MARKS
        )
        + f" after freed memory was given back (all {len(memory)} marks: "
        + ", ".join(f"{m.rss / 2**20:.0f}" for m in memory)
        + f" MB); slope over {len(memory)} marks from 10% to 90%: "
        f"{growth:.1f} B per item ({growth * (last.items - first.items) / 2**20:+.1f} MB over "
        f"{last.items - first.items:,} items); raw (before): "
        + ", ".join(f"{m.rss_raw / 2**20:.0f}" for m in memory)
        + f" MB, highest {max(m.rss_raw for m in memory) / 2**20:.0f} MB; Arrow's peak so far: "
        + ", ".join(f"{meter.marks[share].arrow_peak / 2**20:.0f}" for share in MARKS)
        + " MB"
    )
    print(
        f"  sustained (10% -> 90%): {rate:,.0f} items/s of driver time; "
        f"10% -> 50%: {sustained_rate(first, middle):,.0f}, "
        f"50% -> 90%: {sustained_rate(middle, last):,.0f}"
    )
    print(result_line("B13", "driver_items_per_s", rate, RATE_TARGET, digits=0))
    print(result_line("B13", "driver_rss_growth_b_per_item", growth, GROWTH_TARGET, digits=1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000, help="manifest rows")
    parser.add_argument("--items", type=int, default=100_000, help="items dispatched")
    parser.add_argument("--workers", type=int, default=1000, help="simulated workers")
    parser.add_argument(
        "--compact-every",
        type=int,
        default=None,
        metavar="N",
        help="compact the index every N commits only (default: run's, every 200 or 300 s); "
        "above --items it leaves the index work to the end, to tell its cost and memory apart",
    )
    parser.add_argument(
        "--no-ray", action="store_true", help="no local Ray: the metrics are not recorded"
    )
    parser.add_argument(
        "--heap-per-thread",
        action="store_true",
        help="leave glibc's arena per thread and Arrow on mimalloc (what `run` did before it "
        "kept one heap)",
    )
    add_slowdown_flag(parser, "S seconds more per item in the driver, and S x 1 MB held per item")
    parser.add_argument("--started-as-run", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not (args.heap_per_thread or args.started_as_run):  # Arrow's pool is chosen at import
        command = [*python_as_run_starts(__file__), *sys.argv[1:], "--started-as-run"]
        os.execv(command[0], command)
    if args.items < 10:
        parser.error("--items must be at least 10 (the marks at 10%, 50% and 90%)")
    print(f"load average at start: {load_average()}")
    with tempfile.TemporaryDirectory(prefix="b13-") as tmp:
        status = measure(args, Path(tmp), slowdown(args))
    print(f"load average at end: {load_average()}")
    return status


if __name__ == "__main__":
    sys.exit(main())
