"""The processes a command started, read from /proc: what a second Ctrl-C stops at once."""

from __future__ import annotations

import contextlib
import os
import signal

from pusa_batch.engine.reaper import children_of


def descendants(pid: int) -> list[int]:
    """Every live descendant of `pid` (read from /proc; empty where there is none)."""
    return children_of(pid)


def kill_descendants() -> None:
    """SIGKILL every process this one started, and theirs (an embedded Ray's, its workers)."""
    for pid in descendants(os.getpid()):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
