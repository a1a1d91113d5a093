"""Who holds something: a process named by host, boot, pid namespace, pid and start time.

Lease records and takeover claims carry these fields, so a later process can tell whether
their writer is provably gone (same machine, pid no longer running or reused) or can only be
judged by the age of what it wrote.
"""

from __future__ import annotations

import os
import socket


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return None


def process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), None if there is none."""
    stat = _read(f"/proc/{pid}/stat")
    if stat is None:
        return None
    return stat.rpartition(")")[2].split()[19]  # field 22: starttime, after the (comm) field


def process_alive(pid: int, start: str | None) -> bool:
    """Whether `pid` runs and, where start times are known, is the process that started then."""
    if os.path.isdir("/proc/self"):
        now = process_start(pid)
        return now is not None and (start is None or now == start)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def this_machine() -> dict[str, str | None]:
    """What makes two lease records comparable by pid: the same host, boot and pid namespace."""
    try:
        pid_ns = os.readlink("/proc/self/ns/pid")
    except OSError:
        pid_ns = None
    return {
        "host": socket.gethostname(),
        "boot_id": _read("/proc/sys/kernel/random/boot_id"),
        "pid_ns": pid_ns,
    }


def this_process() -> dict:
    """This process as a record names it: `this_machine()` plus pid and pid start time."""
    pid = os.getpid()
    return {**this_machine(), "pid": pid, "pid_start": process_start(pid)}


def holder_is_gone(record: dict) -> bool:
    """True only when the holder is provably a process of this machine that no longer runs.

    A record from another host, boot or pid namespace (a container sharing our host name) is
    never judged by pid: only its heartbeat can tell.
    """
    here = this_machine()
    same_machine = all(record.get(k) == here[k] for k in ("host", "boot_id", "pid_ns"))
    if not same_machine or not isinstance(record.get("pid"), int):
        return False
    return not process_alive(record["pid"], record.get("pid_start"))
