"""The live view of a run: what it waits for, one progress bar (done/failed/total, rate, ETA,
elapsed) and a line per worker saying what that worker does now.

Decisions:
- No bar before the run knows its total: until `Started` the view is one line naming the stage
  (validating, reading the root), so a first frame never shows `0/0 done`.
- Until every worker has loaded, a "loading models: k/N workers ready" line says why nothing
  moves yet.
- A worker's line is what it does now, from its last status: sampling (with the step),
  writing (decode, encode, commit), preparing, or idle (with its load time). After the run,
  every worker reads "finished".
- The rate, and so the ETA, counts from the first worker ready: start-up is not throughput.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from pusa_batch.engine.config import (
    ActorFailed,
    ActorLoaded,
    Event,
    Finished,
    ItemDone,
    ItemFailed,
    Notice,
    Phase,
    Started,
    WorkerLeft,
    WorkersStarting,
    WorkerStatus,
)


@dataclass
class WorkerView:
    state: str = "loading"  # loading | ready | failed | left | finished
    doing: str = ""
    loaded: str = ""

    def line(self) -> str:
        if self.state == "loading":
            return self.doing or "loading the pipeline..."
        if self.state == "failed":
            return f"FAILED: {self.doing}"
        if self.state == "left":
            return f"left the pool: {self.doing}"
        if self.state == "finished":
            return "finished"
        return self.doing or ("idle" + (f" ({self.loaded})" if self.loaded else ""))


@dataclass
class RunView:
    """Counts and per-worker state folded from engine events; rendering is separate."""

    total: int | None = None  # None until the run has planned
    pending: int = 0
    done_before: int = 0
    done: int = 0
    failed: int = 0
    retried: int = 0
    phase: str = "starting"
    started_at: float = field(default_factory=time.monotonic)
    first_done_at: float | None = None
    first_ready_at: float | None = None  # the rate counts from here, not from start-up
    workers_expected: int | None = None
    workers: dict[str, WorkerView] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    finished: bool = False

    def apply(self, event: Event) -> None:
        if isinstance(event, Phase):
            self.phase = event.name
        elif isinstance(event, Started):
            self.total, self.pending, self.done_before = (
                event.total,
                event.pending,
                event.done_before,
            )
        elif isinstance(event, WorkersStarting):
            self.workers_expected = event.count
            for n in range(event.count):
                self.workers.setdefault(f"w{n}", WorkerView())
        elif isinstance(event, ActorLoaded):
            worker = self.workers.setdefault(event.worker, WorkerView())
            worker.state, worker.doing = "ready", ""
            self.first_ready_at = self.first_ready_at or time.monotonic()
            worker.loaded = f"loaded in {event.seconds:.1f}s on {event.host}"
        elif isinstance(event, ActorFailed):
            worker = self.workers.setdefault(event.worker, WorkerView())
            worker.state, worker.doing = "failed", event.reason
            self.notes.append(f"worker {event.worker} failed: {event.reason}")
        elif isinstance(event, WorkerLeft):
            worker = self.workers.setdefault(event.worker, WorkerView())
            worker.state, worker.doing = "left", event.reason
        elif isinstance(event, WorkerStatus):
            worker = self.workers.setdefault(event.worker, WorkerView(state="ready"))
            if worker.state == "ready":
                worker.doing = worker_activity(event)
            elif worker.state == "loading" and event.staging:
                worker.doing = event.staging
        elif isinstance(event, ItemDone):
            self.done += 1
            self.first_done_at = self.first_done_at or time.monotonic()
        elif isinstance(event, ItemFailed):
            if event.final:
                self.failed += 1
                self.notes.append(f"{event.id}: {event.error_type}: {event.message}")
            else:
                self.retried += 1
        elif isinstance(event, Notice):
            self.notes.append(event.message)
        elif isinstance(event, Finished):
            self.finished = True
            for worker in self.workers.values():
                if worker.state not in ("failed", "left"):
                    worker.state = "finished"

    def ready_workers(self) -> int:
        return sum(1 for w in list(self.workers.values()) if w.state in ("ready", "finished"))

    def loading_line(self) -> str | None:
        """ "loading models: k/N workers ready" while some worker still loads, else None."""
        if self.workers_expected is None or self.finished:
            return None
        if not any(w.state == "loading" for w in list(self.workers.values())):
            return None
        gone = sum(1 for w in list(self.workers.values()) if w.state in ("failed", "left"))
        expected = max(self.workers_expected, len(self.workers)) - gone
        return f"loading models: {self.ready_workers()}/{expected} workers ready"

    def elapsed_s(self) -> float:
        return time.monotonic() - self.started_at

    def rate_per_min(self) -> float:
        """Items per minute since the first worker was ready (start-up is not throughput)."""
        if not self.done or self.first_ready_at is None:
            return 0.0
        working = time.monotonic() - self.first_ready_at
        return 60.0 * self.done / working if working > 0 else 0.0

    def eta_s(self) -> float | None:
        left = self.pending - self.done - self.failed
        rate = self.rate_per_min() / 60.0
        return left / rate if rate > 0 and left > 0 else None


def worker_activity(status: WorkerStatus) -> str:
    """`sampling a step 2/4 · finishing b · preparing c`, or "" when the worker is idle."""
    parts = []
    if status.item:
        step = f" step {status.step}/{status.steps}" if status.steps else ""
        parts.append(f"sampling {status.item}{step}")
    if status.finishing:
        parts.append(f"writing {status.finishing}")
    if status.preparing:
        parts.append(f"preparing {status.preparing}")
    return " · ".join(parts)


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "--"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def head_line(view: RunView) -> Text:
    elapsed = f"elapsed {format_duration(view.elapsed_s())}"
    if view.total is None:
        return Text(f"{view.phase}...  {elapsed}")
    finished = view.done_before + view.done
    width = 30
    filled = int(width * finished / view.total) if view.total else width
    bar = Text("█" * filled + "░" * (width - filled), style="cyan")
    return Text.assemble(
        bar,
        f"  {finished}/{view.total} done",
        (f"  {view.failed} failed" if view.failed else ""),
        f"  {view.rate_per_min():.1f} items/min  ETA {format_duration(view.eta_s())}  {elapsed}",
    )


def render(view: RunView) -> Group:
    lines: list = [head_line(view)]
    loading = view.loading_line()
    if loading:
        lines.append(Text(loading))
    elif view.total is not None and view.workers_expected is None and view.pending:
        lines.append(Text(f"{view.phase}..."))
    table = Table.grid(padding=(0, 2))
    for worker, state in sorted(view.workers.items()):
        table.add_row(Text(worker, style="dim"), Text(state.line()))
    return Group(*lines, table)


class LiveRunView:
    """Context manager feeding engine events into a rich Live display (or plain lines).

    `verbosity` -1 keeps only failures; 1 adds a line per committed item and per loaded worker.
    """

    def __init__(self, console: Console, enabled: bool = True, verbosity: int = 0):
        self.view = RunView()
        self.console = console
        self.verbosity = verbosity
        self.enabled = enabled and console.is_terminal and verbosity >= 0
        self.live = Live(
            render(self.view),
            console=console,
            refresh_per_second=4,
            transient=True,
            get_renderable=lambda: render(self.view),  # the elapsed time moves between events
        )

    def __enter__(self) -> LiveRunView:
        if self.enabled:
            self.live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self.live.__exit__(*exc)

    def __call__(self, event: Event) -> None:
        """Fold the event in; lines worth keeping are printed (above the live view, if any)."""
        self.view.apply(event)
        if self.enabled:
            self.live.refresh()
        line = event_line(event, self.verbosity)
        if line and (not self.enabled or not isinstance(event, Started)):
            self.console.print(line, markup=False, highlight=False)


def event_line(event: Event, verbosity: int = 0) -> str | None:
    """The one line an event leaves in the log, or None (fewer with -q, more with -v)."""
    if isinstance(event, ItemFailed) and event.final:
        return f"failed: {event.id}: {event.error_type}: {event.message}"
    if isinstance(event, ActorFailed):
        return f"worker {event.worker} failed: {event.reason}"
    if isinstance(event, WorkerLeft) and verbosity >= 0:
        return f"worker {event.worker} left the pool: {event.reason}"
    if verbosity < 0:
        return None
    if isinstance(event, Started):
        return f"{event.total} items: {event.done_before} already done, {event.pending} to generate"
    if isinstance(event, Notice):
        return f"note: {event.message}"
    if verbosity < 1:
        return None
    if isinstance(event, Phase):
        return f"{event.name}..."
    if isinstance(event, ActorLoaded):
        return f"worker {event.worker} loaded in {event.seconds:.1f}s on {event.host}"
    if isinstance(event, ItemDone):
        total = item_seconds(event.timings)
        return f"done: {event.id} on {event.worker} ({total:.1f}s)"
    if isinstance(event, ItemFailed):
        return f"retrying: {event.id} ({event.error_type}: {event.message})"
    return None


def item_seconds(timings: dict[str, float]) -> float:
    """An item's own seconds: its stages, not its wait in the queue nor any clock reading."""
    return sum(v for k, v in timings.items() if k != "queue" and not k.endswith("_unix"))
