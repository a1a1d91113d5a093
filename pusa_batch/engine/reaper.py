"""The embedded Ray's reaper: a small process that outlives a killed driver by a moment.

When the driver of a run on an embedded local Ray is killed (SIGKILL, OOM killer), Ray's raylet
and workers end with it, but two of Ray's agents (the dashboard agent and the runtime-env
agent) are left running, reparented to init. `start_reaper` is called once Ray is up: it starts
this file as a script (stdlib only, so it costs no import of pusa_batch) and writes it the pids
and start times of every process the driver has started. The reaper then waits on its stdin.
At a normal end the driver writes `done` and closes the pipe, and the reaper exits. If the pipe
closes without it, the driver is dead: the reaper kills the listed processes that still run
(only those whose start time matches, so a reused pid is left alone), and exits.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from typing import IO

DONE = "done"


def start_time(pid: int) -> str | None:
    """A process's start time in clock ticks since boot (Linux), None if there is none."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rpartition(")")[2].split()[19]
    except (OSError, IndexError):
        return None


def children_of(pid: int) -> list[int]:
    """Every live descendant of `pid`, read from /proc (empty where there is no /proc)."""
    parents: dict[int, list[int]] = {}
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat") as handle:
                    ppid = int(handle.read().rpartition(")")[2].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            parents.setdefault(ppid, []).append(int(name))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class Reaper:
    """The driver's side: `watch()` the processes it has started now, `close()` at its end."""

    def __init__(self, process: subprocess.Popen):
        self.process = process

    def watch(self) -> None:
        """Tell the reaper every process this one has started (besides the reaper itself)."""
        stdin = self.process.stdin
        if stdin is None or stdin.closed:
            return
        pids = [p for p in children_of(os.getpid()) if p != self.process.pid]
        listed = [[p, start] for p in pids if (start := start_time(p)) is not None]
        with contextlib.suppress(OSError, ValueError):
            stdin.write(json.dumps(listed) + "\n")
            stdin.flush()

    def close(self) -> None:
        """A normal end: the reaper leaves everything alone and exits."""
        stdin = self.process.stdin
        with contextlib.suppress(OSError, ValueError):
            if stdin is not None and not stdin.closed:
                stdin.write(DONE + "\n")
                stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)


def start_reaper() -> Reaper | None:
    """Start the reaper (Linux only: it reads /proc); None where it cannot run."""
    if not os.path.isdir("/proc/self"):
        return None
    try:
        process = subprocess.Popen(
            [sys.executable, "-I", os.path.abspath(__file__)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            text=True,
            close_fds=True,
            start_new_session=True,  # a kill of the driver's process group leaves it to reap
        )
    except OSError:
        return None
    return Reaper(process)


def reap(listed: list[list]) -> int:
    """SIGKILL each listed process still running with its recorded start time; how many."""
    killed = 0
    for pid, start in listed:
        if start_time(int(pid)) == start:
            with contextlib.suppress(OSError):
                os.kill(int(pid), signal.SIGKILL)
                killed += 1
    return killed


def serve(stdin: IO[str]) -> int:
    """Read pid lists until `done` (exit, nothing killed) or the end of the pipe (reap)."""
    listed: dict[int, list] = {}
    for line in stdin:
        line = line.strip()
        if line == DONE:
            return 0
        with contextlib.suppress(ValueError, TypeError):
            for pid, start in json.loads(line):
                listed[int(pid)] = [int(pid), str(start)]
    reap(list(listed.values()))
    return 0


if __name__ == "__main__":
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # Ctrl-C and `kill` of the group: the driver decides
    sys.exit(serve(sys.stdin))
