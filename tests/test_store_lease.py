"""The lease: who may take it over, and when."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from pusa_batch.errors import LeaseError
from pusa_batch.store.lease import LEASE_FILE, process_start, this_machine
from pusa_batch.store.store import Store


def held_by(store: Store, heartbeat_age_s: float = 0.0, **record) -> dict:
    """Write lease.json as another run would have left it."""
    now = time.time()
    full = {
        "owner": {"command": "run"},
        "token": "their-token",
        "started_at": "2026-12-01T00:00:00+00:00",
        "heartbeat_at": "2026-12-01T00:00:00+00:00",
        "heartbeat_unix": now - heartbeat_age_s,
        "stale_after_s": 120.0,
        **record,
    }
    store.root.write_bytes(LEASE_FILE, json.dumps(full).encode())
    return full


def test_the_lease_of_a_killed_run_on_this_host_is_taken_over_at_once(tmp_path):
    out = str(tmp_path / "out")
    code = (
        "import os, sys\n"
        "from pusa_batch.store.store import Store\n"
        "Store(sys.argv[1]).acquire_lease({'command': 'run'})\n"
        "os._exit(0)  # gone without releasing, as after SIGKILL\n"
    )
    subprocess.run([sys.executable, "-c", code, out], check=True)
    started = time.monotonic()
    lease = Store(out).acquire_lease({"command": "run"}, stale_after_s=120)
    assert time.monotonic() - started < 60  # not the 120 s a stale holder is waited for
    assert "run that is gone" in lease.note
    lease.release()


def test_a_reused_pid_does_not_pass_for_the_dead_holder(tmp_path):
    store = Store(str(tmp_path / "out"))
    me = this_machine()
    held_by(store, **me, pid=1, pid_start="no-such-start")  # pid 1 runs, but not since then
    lease = store.acquire_lease({"command": "run"})
    assert "run that is gone" in lease.note
    lease.release()


def test_a_live_holder_on_this_host_is_refused(tmp_path):
    store = Store(str(tmp_path / "out"))
    held_by(store, **this_machine(), pid=1, pid_start=process_start(1))
    with pytest.raises(LeaseError, match="another run holds"):
        store.acquire_lease({"command": "run"})


def test_a_holder_in_another_pid_namespace_is_judged_by_its_heartbeat_only(tmp_path):
    store = Store(str(tmp_path / "out"))
    other = {**this_machine(), "pid_ns": "pid:[1]"}  # a container with our host name
    held_by(store, **other, pid=999_999, pid_start="1")
    with pytest.raises(LeaseError, match="another run holds"):
        store.acquire_lease({"command": "run"})


def test_a_remote_holder_that_missed_heartbeats_is_refused_at_once_without_waiting(tmp_path):
    store = Store(str(tmp_path / "out"))
    held_by(store, heartbeat_age_s=80, host="gpu-7", pid=4242)
    started = time.monotonic()
    with pytest.raises(LeaseError, match="missed its heartbeats.*--no-wait"):
        store.acquire_lease({"command": "run"}, stale_after_s=120, wait=False)
    assert time.monotonic() - started < 30  # not the 40 s left of its staleness


def test_a_remote_holder_that_missed_heartbeats_is_waited_for_with_a_countdown(tmp_path):
    store = Store(str(tmp_path / "out"))
    held_by(store, heartbeat_age_s=1.5, host="gpu-7", pid=4242)
    countdown: list[float] = []
    lease = store.acquire_lease(
        {"command": "run"}, stale_after_s=2.5, on_wait=lambda who, left: countdown.append(left)
    )
    assert countdown and countdown[0] <= 1.0 + 0.1 and "gpu-7" in lease.note
    assert "took over a stale lease" in lease.note
    lease.release()


def test_a_remote_holder_that_heartbeats_is_refused(tmp_path):
    store = Store(str(tmp_path / "out"))
    held_by(store, heartbeat_age_s=1, host="gpu-7", pid=4242)
    with pytest.raises(LeaseError, match="another run holds.*gpu-7"):
        store.acquire_lease({"command": "run"}, stale_after_s=120)


def test_an_unreadable_lease_counts_as_stale_not_as_a_crash(tmp_path):
    store = Store(str(tmp_path / "out"))
    store.root.write_bytes(LEASE_FILE, b'{"token": "tor')
    lease = store.acquire_lease({"command": "run"})
    assert "stale" in lease.note
    lease.release()


@pytest.mark.parametrize("beat", ["nan", float("nan"), float("inf"), "soon", None, True])
def test_a_lease_whose_heartbeat_is_not_a_finite_time_counts_as_unreadable(tmp_path, beat):
    store = Store(str(tmp_path / "out"))
    held_by(store, host="gpu-7", pid=4242, heartbeat_unix=beat)
    lease = store.acquire_lease({"command": "run"}, stale_after_s=120, wait=False)
    assert "unreadable" in lease.note
    lease.release()


def test_a_heartbeat_dated_in_the_future_is_watched_not_trusted_and_taken_over_when_it_stops(
    tmp_path,
):
    store = Store(str(tmp_path / "out"))
    held_by(store, heartbeat_age_s=-1e9, host="gpu-7", pid=4242)  # 30 years ahead
    countdown: list[float] = []
    lease = store.acquire_lease(
        {"command": "run"}, stale_after_s=2.0, on_wait=lambda who, left: countdown.append(left)
    )
    assert countdown and all(0 < left <= 2.0 for left in countdown)
    assert "dated in the future" in lease.note and "did not change for" in lease.note
    lease.release()


def test_a_heartbeat_dated_in_the_future_is_refused_at_once_with_no_wait_naming_the_clock(
    tmp_path,
):
    store = Store(str(tmp_path / "out"))
    held_by(store, heartbeat_age_s=-1e9, host="gpu-7", pid=4242)
    with pytest.raises(LeaseError, match="dated .* in the future.*clocks out of step"):
        store.acquire_lease({"command": "run"}, stale_after_s=120, wait=False)
