"""One live run per output root: `lease.json`, created exclusively and kept fresh by heartbeats.

Who may take a held lease over:
- its holder is on this host (same host name, boot and pid namespace) and its process is gone:
  at once, with a notice. The process is named by its pid *and* its start time, so a reused pid
  does not pass for the dead holder;
- its holder is elsewhere and has missed heartbeats: once its last heartbeat is `stale_after_s`
  old. Until then the caller waits with a countdown (`on_wait`), or, with `wait=False`, is
  refused at once (exit 3);
- a holder that heartbeats is refused.

Guarantees by backend: the first lease is created exclusively where the backend can (a hard link
on local disk, `xb` on memory and s3fs, which sends `If-None-Match: *`). A takeover deletes the
stale record and creates the new one exclusively, then re-reads its token (`_confirmed`): two
takers racing on local disk or S3 cannot both win; on a backend without exclusive create the
last writer wins and the loser learns it at its first heartbeat, before it commits.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone

from pusa_batch.errors import LeaseError, StoreError
from pusa_batch.store.io import Root

LEASE_FILE = "lease.json"


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")


def describe(record: dict, now: float) -> str:
    owner = record.get("owner") or {}
    age = now - float(record.get("heartbeat_unix", 0))
    return (
        f"owner {json.dumps(owner, sort_keys=True)}, host {record.get('host')}, "
        f"pid {record.get('pid')}, started {record.get('started_at')}, "
        f"last heartbeat {record.get('heartbeat_at')} ({age:.0f} s ago)"
    )


class Lease:
    """A held lease. Call `heartbeat()` (or `start_heartbeat()`) and `release()` at the end."""

    def __init__(self, root: Root, record: dict, note: str | None = None):
        self._root = root
        self.record = record
        self.note = note
        self.lost: Exception | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def token(self) -> str:
        return self.record["token"]

    def heartbeat(self) -> None:
        """Refresh the heartbeat; raise LeaseError if another run has taken the lease."""
        current = self._root.read_json(LEASE_FILE)
        if current is None or current.get("token") != self.token:
            who = describe(current, time.time()) if current else "nobody (lease.json is gone)"
            raise LeaseError(
                f"lost the lease on {self._root.where(LEASE_FILE)}: now held by {who}. "
                "Stop this run; another run owns the output root."
            )
        now = time.time()
        record = {**self.record, "heartbeat_at": _iso(now), "heartbeat_unix": now}
        self._root.write_bytes(LEASE_FILE, json.dumps(record).encode())
        self.record = record

    def start_heartbeat(self, interval_s: float = 30.0) -> None:
        """Heartbeat from a daemon thread; a failure stops it and is kept in `self.lost`."""

        def loop() -> None:
            while not self._stop.wait(interval_s):
                try:
                    self.heartbeat()
                except (StoreError, OSError) as exc:  # surfaced to the driver via `lost`
                    self.lost = exc
                    return

        self._thread = threading.Thread(target=loop, name="pusa-lease-heartbeat", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Stop heartbeats and delete lease.json if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        current = self._root.read_json(LEASE_FILE)
        if current is not None and current.get("token") == self.token:
            self._root.delete(LEASE_FILE)


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


def new_record(owner: dict, stale_after_s: float, now: float) -> dict:
    pid = owner.get("pid") or os.getpid()
    machine = this_machine()
    return {
        "owner": owner,
        "host": owner.get("host") or machine["host"],
        "pid": pid,
        "pid_start": process_start(pid),
        "boot_id": machine["boot_id"],
        "pid_ns": machine["pid_ns"],
        "started_at": _iso(now),
        "heartbeat_at": _iso(now),
        "heartbeat_unix": now,
        "stale_after_s": stale_after_s,
        "token": uuid.uuid4().hex,
    }


OnWait = Callable[[str, float], None]  # (holder description, seconds left until takeover)


def acquire_lease(
    root: Root,
    owner: dict,
    stale_after_s: float = 120.0,
    *,
    wait: bool = True,
    on_wait: OnWait | None = None,
    missed_after_s: float | None = None,
) -> Lease:
    """Take the lease, or take over one whose holder is gone (see the module docstring).

    `missed_after_s` is how old a heartbeat must be to count as missed (default: half of
    `stale_after_s`, twice the heartbeat interval the engine uses).
    """
    missed_after_s = stale_after_s / 2 if missed_after_s is None else missed_after_s
    record = new_record(owner, stale_after_s, time.time())
    data = json.dumps(record).encode()
    for _ in range(1000):
        try:
            root.create_exclusive(LEASE_FILE, data)
            return _confirmed(root, record, note=None)
        except FileExistsError:
            pass
        current = _read_record(root)
        if current is None:  # released between our create and our read: try again
            continue
        now = time.time()
        age = now - float(current.get("heartbeat_unix", 0))
        if holder_is_gone(current):
            note = f"took over the lease of a run that is gone: {describe(current, now)}"
            return _take_over(root, current, record, data, note)
        if age >= stale_after_s:
            note = f"took over a stale lease: {describe(current, now)}"
            return _take_over(root, current, record, data, note)
        if age < missed_after_s or not wait:
            hint = (
                "it has missed its heartbeats: rerun without --no-wait to wait for it"
                if age >= missed_after_s
                else "wait for it to finish, or stop it"
            )
            raise LeaseError(
                f"another run holds {root.where(LEASE_FILE)}: {describe(current, now)}. "
                f"{hint.capitalize()}; a lease without heartbeat for {stale_after_s:.0f} s is "
                "taken over automatically."
            )
        if on_wait is not None:
            on_wait(describe(current, now), stale_after_s - age)
        time.sleep(min(1.0, max(0.05, stale_after_s - age)))
    raise LeaseError(f"could not acquire {root.where(LEASE_FILE)}: it keeps changing; retry")


def _read_record(root: Root) -> dict | None:
    """The lease record; an unreadable one (a torn write) counts as stale, not as an error."""
    try:
        return root.read_json(LEASE_FILE)
    except StoreError:
        return {"heartbeat_unix": 0, "note": "lease.json was unreadable"}


def _take_over(root: Root, stale: dict, record: dict, data: bytes, note: str) -> Lease:
    """Replace the stale record, only if it is still the one we judged, then confirm."""
    current = _read_record(root)
    if current is not None and current.get("token") != stale.get("token"):
        raise LeaseError(f"lost a race for {root.where(LEASE_FILE)}; retry later")
    root.delete(LEASE_FILE)
    try:
        root.create_exclusive(LEASE_FILE, data)
    except FileExistsError:
        raise LeaseError(f"lost a race for {root.where(LEASE_FILE)}; retry later") from None
    return _confirmed(root, record, note=note)


def _confirmed(root: Root, record: dict, note: str | None) -> Lease:
    current = root.read_json(LEASE_FILE)
    if current is None or current.get("token") != record["token"]:
        who = describe(current, time.time()) if current else "nobody"
        raise LeaseError(f"lost a race for {root.where(LEASE_FILE)} to {who}; retry later")
    return Lease(root, record, note)
