"""`run --log-format json`: every engine event as one JSON object per line, for log pipelines.

Lines go to stderr, so stdout keeps only the result (`--json` puts the summary there). Each line
is `{"ts": unix seconds, "event": kind, ...the event's fields}`; worker step statuses, which
change every second, are left out unless `-v`.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from typing import IO

from pusa_batch.engine.config import Event, Finished, WorkerStatus


def event_record(event: Event, now: float | None = None) -> dict:
    fields = dataclasses.asdict(event)
    if isinstance(event, Finished):
        fields = {"summary": {**fields["summary"], "exit_code": event.summary.exit_code}}
    return {"ts": round(time.time() if now is None else now, 3), "event": event.kind, **fields}


class JsonEventLog:
    """An `on_event` callback writing one JSON line per event (a context manager, like the
    live view, so the run command treats both alike)."""

    def __init__(self, stream: IO[str] | None = None, verbosity: int = 0):
        self.stream = stream or sys.stderr
        self.verbosity = verbosity

    def __enter__(self) -> JsonEventLog:
        return self

    def __exit__(self, *exc) -> None:
        self.stream.flush()

    def __call__(self, event: Event) -> None:
        if isinstance(event, WorkerStatus) and self.verbosity < 1:
            return
        self.stream.write(json.dumps(event_record(event), default=str) + "\n")
        self.stream.flush()
