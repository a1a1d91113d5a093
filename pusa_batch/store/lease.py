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
on local disk, `xb` on memory and s3fs, which sends `If-None-Match: *`). A takeover, and every
heartbeat, replaces the record only if it is still the version that was read
(`conditional.replace_if`: `If-Match` on the ETag on S3, `ifGenerationMatch` on GCS, an exclusive
claim plus a rename on local disk), so of two takers of one stale record exactly one wins, and a
paused holder that wakes up cannot overwrite its successor. On other backends the swap is a
check then a write: the last writer wins and the loser learns it at its first heartbeat,
before it commits.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone

from pusa_batch.errors import LeaseError, StoreError
from pusa_batch.store.conditional import (
    VersionChanged,
    Versioned,
    read_versioned,
    replace_if,
)
from pusa_batch.store.holder import holder_is_gone, process_start, this_machine
from pusa_batch.store.io import Root

LEASE_FILE = "lease.json"


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")


def is_record(record: dict) -> bool:
    """Whether a parsed lease.json is a lease record (a torn or foreign file is not; nor is one
    whose heartbeat is not a finite number of seconds)."""
    beat = record.get("heartbeat_unix")
    return (
        isinstance(record.get("token"), str)
        and isinstance(beat, (int, float))
        and not isinstance(beat, bool)
        and math.isfinite(beat)
    )


def describe(record: dict, now: float) -> str:
    if not is_record(record):
        return "an unreadable lease.json (not a lease record)"
    owner = record.get("owner") or {}
    age = now - _heartbeat_unix(record)
    when = f"{age:.0f} s ago" if age >= 0 else f"dated {-age:.0f} s in the future"
    return (
        f"owner {json.dumps(owner, sort_keys=True)}, host {record.get('host')}, "
        f"pid {record.get('pid')}, started {record.get('started_at')}, "
        f"last heartbeat {record.get('heartbeat_at')} ({when})"
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
        """Refresh the heartbeat; raise LeaseError if another run has taken the lease.

        The token is checked first (that alone catches a takeover where writes are not
        conditional, or a store ignores the condition), then the record is replaced only if
        it is still the version just read, so a takeover in between is never overwritten.
        """
        current = read_versioned(self._root, LEASE_FILE)
        if current is None or _parsed(current.data).get("token") != self.token:
            raise self._lost(current)
        now = time.time()
        record = {**self.record, "heartbeat_at": _iso(now), "heartbeat_unix": now}
        data = json.dumps(record).encode()
        try:
            replace_if(self._root, LEASE_FILE, data, current.version)
        except VersionChanged:
            current = read_versioned(self._root, LEASE_FILE)
            if current is None or current.data != data:  # else ours landed; its answer was lost
                raise self._lost(current) from None
        self.record = record

    def still_held(self) -> bool:
        """Whether lease.json still names this run (one read); once not, `lost` says why."""
        if self.lost is not None:
            return False
        current = read_versioned(self._root, LEASE_FILE)
        if current is None or _parsed(current.data).get("token") != self.token:
            self.lost = self._lost(current)
            return False
        return True

    def _lost(self, current: Versioned | None) -> LeaseError:
        who = describe(_parsed(current.data), time.time()) if current else None
        return LeaseError(
            f"lost the lease on {self._root.where(LEASE_FILE)}: now held by "
            f"{who or 'nobody (lease.json is gone)'}. "
            "Stop this run; another run owns the output root."
        )

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
        current = read_versioned(self._root, LEASE_FILE)
        if current is not None and _parsed(current.data).get("token") == self.token:
            self._root.delete(LEASE_FILE)


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
    seen: tuple[bytes, float] | None = None  # the record as last read, and since when (ours)
    for _ in range(1000):
        try:
            root.create_exclusive(LEASE_FILE, data)
            return _confirmed(root, record, note=None)
        except FileExistsError:
            pass
        read = read_versioned(root, LEASE_FILE)
        if read is None:  # released between our create and our read: try again
            continue
        current = _parsed(read.data)
        now = time.time()
        if seen is None or seen[0] != read.data:
            seen = (read.data, time.monotonic())
        if not is_record(current):
            note = (
                "lease.json was unreadable (not a lease record), so it counts as stale: replaced it"
            )
            return _take_over(root, read, record, data, note)
        if holder_is_gone(current):
            note = f"took over the lease of a run that is gone: {describe(current, now)}"
            return _take_over(root, read, record, data, note)
        age = now - _heartbeat_unix(current)
        ahead = age < -missed_after_s  # dated in the future: this clock cannot judge its age
        if ahead:  # how long the record has stayed the same, on this machine's clock
            age = time.monotonic() - seen[1]
        if age >= stale_after_s:
            what = (
                f"a lease whose heartbeat is dated in the future and did not change for {age:.0f} s"
                if ahead
                else "a stale lease"
            )
            return _take_over(
                root, read, record, data, f"took over {what}: {describe(current, now)}"
            )
        if (age < missed_after_s and not ahead) or not wait:
            if ahead:
                hint = (
                    "its heartbeat is dated in the future (clocks out of step?): rerun without "
                    "--no-wait to watch it; it is taken over once it stops changing"
                )
            elif age >= missed_after_s:
                hint = "it has missed its heartbeats: rerun without --no-wait to wait for it"
            else:
                hint = "wait for it to finish, or stop it"
            raise LeaseError(
                f"another run holds {root.where(LEASE_FILE)}: {describe(current, now)}. "
                f"{hint.capitalize()}; a lease without heartbeat for {stale_after_s:.0f} s is "
                "taken over automatically."
            )
        if on_wait is not None:
            on_wait(describe(current, now), stale_after_s - age)
        time.sleep(min(1.0, max(0.05, stale_after_s - age)))
    raise LeaseError(f"could not acquire {root.where(LEASE_FILE)}: it keeps changing; retry")


def _parsed(data: bytes) -> dict:
    """The lease record; an unreadable one (a torn write) counts as stale, not as an error."""
    try:
        record = json.loads(data)
    except ValueError:
        record = None
    return record if isinstance(record, dict) else {"note": "lease.json was unreadable"}


def _heartbeat_unix(record: dict) -> float:
    try:
        return float(record.get("heartbeat_unix", 0))
    except (TypeError, ValueError):
        return 0.0


def _take_over(root: Root, stale: Versioned, record: dict, data: bytes, note: str) -> Lease:
    """Replace the stale record only if it is still the version we judged (compare-and-swap)."""
    try:
        replace_if(root, LEASE_FILE, data, stale.version)
    except VersionChanged:
        current = read_versioned(root, LEASE_FILE)
        if current is not None and current.data == data:  # ours landed; its answer was lost
            return Lease(root, record, note)
        who = describe(_parsed(current.data), time.time()) if current else "nobody: released"
        raise LeaseError(
            f"lost a race for {root.where(LEASE_FILE)}: another run took it over first "
            f"(now held by {who}); run the same command again later"
        ) from None
    return Lease(root, record, note)


def _confirmed(root: Root, record: dict, note: str | None) -> Lease:
    current = read_versioned(root, LEASE_FILE)
    held = _parsed(current.data) if current is not None else None
    if held is None or held.get("token") != record["token"]:
        who = describe(held, time.time()) if held else "nobody"
        raise LeaseError(f"lost a race for {root.where(LEASE_FILE)} to {who}; retry later")
    return Lease(root, record, note)
