"""One live run per output root: `lease.json`, created exclusively and kept fresh by heartbeats.

A lease whose last heartbeat is older than `stale_after_s` (by the reader's clock) is taken over.
Where the backend has exclusive create (local, memory, s3fs), two runs cannot both create the
lease; a takeover, and backends without exclusive create, rely on re-reading our owner token.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
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


def new_record(owner: dict, stale_after_s: float, now: float) -> dict:
    return {
        "owner": owner,
        "host": owner.get("host") or socket.gethostname(),
        "pid": owner.get("pid") or os.getpid(),
        "started_at": _iso(now),
        "heartbeat_at": _iso(now),
        "heartbeat_unix": now,
        "stale_after_s": stale_after_s,
        "token": uuid.uuid4().hex,
    }


def acquire_lease(root: Root, owner: dict, stale_after_s: float = 120.0) -> Lease:
    """Take the lease, or take over a stale one (see `Lease.note`); refuse a live holder."""
    record = new_record(owner, stale_after_s, time.time())
    data = json.dumps(record).encode()
    for _ in range(3):
        try:
            root.create_exclusive(LEASE_FILE, data)
            return _confirmed(root, record, note=None)
        except FileExistsError:
            pass
        current = root.read_json(LEASE_FILE)
        if current is None:  # released between our create and our read: try again
            continue
        now = time.time()
        if now - float(current.get("heartbeat_unix", 0)) < stale_after_s:
            raise LeaseError(
                f"another run holds {root.where(LEASE_FILE)}: {describe(current, now)}. "
                "Wait for it to finish, or stop it; a lease without heartbeat for "
                f"{stale_after_s:.0f} s is taken over automatically."
            )
        root.write_bytes(LEASE_FILE, data)
        return _confirmed(root, record, note=f"took over a stale lease: {describe(current, now)}")
    raise LeaseError(f"could not acquire {root.where(LEASE_FILE)}: it keeps changing; retry")


def _confirmed(root: Root, record: dict, note: str | None) -> Lease:
    current = root.read_json(LEASE_FILE)
    if current is None or current.get("token") != record["token"]:
        who = describe(current, time.time()) if current else "nobody"
        raise LeaseError(f"lost a race for {root.where(LEASE_FILE)} to {who}; retry later")
    return Lease(root, record, note)
