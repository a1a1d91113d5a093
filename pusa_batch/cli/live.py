"""The live view of a run: one progress bar (done/failed/total, rate, ETA) and a line per worker."""

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
    ItemDone,
    ItemFailed,
    Notice,
    Started,
    WorkerStatus,
)


@dataclass
class RunView:
    """Counts and per-worker state folded from engine events; rendering is separate."""

    total: int = 0
    pending: int = 0
    done_before: int = 0
    done: int = 0
    failed: int = 0
    retried: int = 0
    started_at: float = field(default_factory=time.monotonic)
    first_done_at: float | None = None
    workers: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def apply(self, event: Event) -> None:
        if isinstance(event, Started):
            self.total, self.pending, self.done_before = (
                event.total,
                event.pending,
                event.done_before,
            )
        elif isinstance(event, ActorLoaded):
            self.workers[event.worker] = f"loaded in {event.seconds:.1f}s on {event.host}"
        elif isinstance(event, ActorFailed):
            self.workers[event.worker] = f"FAILED: {event.reason}"
            self.notes.append(f"worker {event.worker} failed: {event.reason}")
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
        elif isinstance(event, WorkerStatus):
            where = f"{event.item} step {event.step}/{event.steps}" if event.item else "idle"
            self.workers[event.worker] = where

    def rate_per_min(self) -> float:
        elapsed = time.monotonic() - self.started_at
        return 60.0 * self.done / elapsed if elapsed > 0 and self.done else 0.0

    def eta_s(self) -> float | None:
        left = self.pending - self.done - self.failed
        rate = self.rate_per_min() / 60.0
        return left / rate if rate > 0 and left > 0 else None


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "--"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def render(view: RunView) -> Group:
    finished = view.done_before + view.done
    width = 30
    filled = int(width * finished / view.total) if view.total else width
    bar = Text("█" * filled + "░" * (width - filled), style="cyan")
    head = Text.assemble(
        bar,
        f"  {finished}/{view.total} done",
        (f"  {view.failed} failed" if view.failed else ""),
        f"  {view.rate_per_min():.1f} items/min  ETA {format_duration(view.eta_s())}",
    )
    table = Table.grid(padding=(0, 2))
    for worker, state in sorted(view.workers.items()):
        table.add_row(Text(worker, style="dim"), Text(state))
    return Group(head, table)


class LiveRunView:
    """Context manager feeding engine events into a rich Live display (or plain lines)."""

    def __init__(self, console: Console, enabled: bool = True):
        self.view = RunView()
        self.console = console
        self.live = Live(render(self.view), console=console, refresh_per_second=4, transient=True)
        self.enabled = enabled and console.is_terminal

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
            self.live.update(render(self.view))
        line = event_line(event)
        if line and (not self.enabled or not isinstance(event, Started)):
            self.console.print(line, markup=False, highlight=False)


def event_line(event: Event) -> str | None:
    """The one line an event leaves in the log, or None."""
    if isinstance(event, Started):
        return f"{event.total} items: {event.done_before} already done, {event.pending} to generate"
    if isinstance(event, Notice):
        return f"note: {event.message}"
    if isinstance(event, ActorFailed):
        return f"worker {event.worker} failed: {event.reason}"
    if isinstance(event, ItemFailed) and event.final:
        return f"failed: {event.id}: {event.error_type}: {event.message}"
    return None
