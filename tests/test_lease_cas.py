"""Taking over a lease is a compare-and-swap on the stale record's version: of two takers of
one stale record exactly one wins, on local disk, on S3 (the moto server) and on GCS
(fake-gcs-server), whatever the interleaving; a paused holder's heartbeat cannot overwrite the
run that took over."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import fsspec
import pytest
from conftest import BUCKET
from test_store_fswrap import STORAGE_CALLS

from pusa_batch.errors import LeaseError
from pusa_batch.store.conditional import _claim_name, guarantee, read_versioned
from pusa_batch.store.lease import LEASE_FILE, Lease, process_start, this_machine
from pusa_batch.store.store import Store

HOOKED = STORAGE_CALLS | {"call_s3", "call"}  # s3fs's and gcsfs's own API calls


class Interleave:
    """Forwards to a real filesystem; just before its `at`-th storage call it runs `rival()`
    once, so a rival's whole takeover lands at that exact point of ours."""

    def __init__(self, inner: Any):
        self.inner = inner
        self.calls = 0
        self.at: int | None = None
        self.rival: Callable[[], None] | None = None

    def arm(self, at: int | None, rival: Callable[[], None] | None) -> None:
        self.calls, self.at, self.rival = 0, at, rival

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if name not in HOOKED:
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            if self.calls == self.at and self.rival is not None:
                rival, self.rival = self.rival, None
                rival()
            return attr(*args, **kwargs)

        return call


@pytest.fixture(params=["local", "s3", "gcs"])
def new_root(request, tmp_path) -> Callable[[], tuple[str, dict]]:
    """Makes a fresh output root (URL, storage options) on local disk, the S3 or the GCS server."""

    def make() -> tuple[str, dict]:
        if request.param == "local":
            return str(tmp_path / uuid.uuid4().hex[:8]), {}
        server = request.getfixturevalue(request.param)  # one client: the race is the
        options = server.storage_options  # server's to judge
        scheme = {"s3": "s3", "gcs": "gs"}[request.param]
        return f"{scheme}://{BUCKET}/{uuid.uuid4().hex[:10]}", options

    return make


def leave_stale_record(url: str, options: dict) -> None:
    """lease.json as a run on another host left it, long without a heartbeat."""
    record = {"owner": {"command": "run"}, "token": "stale", "host": "gpu-7", "pid": 4242}
    record |= {"heartbeat_unix": time.time() - 3600, "stale_after_s": 120.0}
    Store(url, options).root.write_bytes(LEASE_FILE, json.dumps(record).encode())


def interleaved_store(url: str, options: dict) -> tuple[Store, Interleave]:
    inner, _ = fsspec.core.url_to_fs(url, **options)
    wrapped = Interleave(inner)
    return Store(url, options, filesystem=wrapped), wrapped


def outcome(attempt: Callable[[], Lease]) -> Lease | LeaseError:
    try:
        return attempt()
    except LeaseError as exc:
        return exc


def holder_token(url: str, options: dict) -> str:
    return Store(url, options).root.read_json(LEASE_FILE)["token"]


def test_each_backend_names_its_guarantee(new_root):
    url, options = new_root()
    expected = {"s3": "s3", "gs": "gcs"}.get(url.partition("://")[0], "local")
    assert guarantee(Store(url, options).root) == expected
    assert guarantee(Store(f"memory://m-{uuid.uuid4().hex[:8]}").root) == "none"


def takeover_with_a_rival_at(url: str, options: dict, at: int | None) -> list[Lease]:
    """Our takeover of a stale record, with a rival's whole takeover just before our `at`-th
    storage call; every Lease that came out of it."""
    leave_stale_record(url, options)
    ours, wrapped = interleaved_store(url, options)
    rival = Store(url, options)
    theirs: list[Lease | LeaseError] = []
    wrapped.arm(at, lambda: theirs.append(outcome(lambda: rival.acquire_lease({"r": 2}))))
    mine = outcome(lambda: ours.acquire_lease({"r": 1}))
    wrapped.arm(None, None)
    return [r for r in (mine, *theirs) if isinstance(r, Lease)]


def heartbeat_with_a_rival_at(url: str, options: dict, at: int) -> tuple[Lease, Lease | None]:
    """A holder's heartbeat, with a rival's whole takeover (it judges any record stale) just
    before the heartbeat's `at`-th storage call; (the holder's lease, the rival's if it won)."""
    holder, wrapped = interleaved_store(url, options)
    lease = holder.acquire_lease({"run_id": "paused"})
    rival = Store(url, options)
    theirs: list[Lease | LeaseError] = []
    wrapped.arm(at, lambda: theirs.append(outcome(lambda: rival.acquire_lease({"r": 2}, 0))))
    outcome(lambda: lease.heartbeat() or lease)
    wrapped.arm(None, None)
    assert len(theirs) == 1, "the rival ran"
    return lease, theirs[0] if isinstance(theirs[0], Lease) else None


def test_two_takers_of_one_stale_record_never_both_win_at_any_interleaving(new_root):
    url, options = new_root()
    leave_stale_record(url, options)
    ours, wrapped = interleaved_store(url, options)
    wrapped.arm(None, None)
    ours.acquire_lease({"run_id": "dry"})
    takeover_calls = wrapped.calls
    assert takeover_calls > 1
    for at in range(1, takeover_calls + 1):
        url, options = new_root()
        winners = takeover_with_a_rival_at(url, options, at)
        assert len(winners) == 1, f"rival at call {at} of {takeover_calls}: {winners}"
        assert holder_token(url, options) == winners[0].token


def test_a_takeover_is_never_undone_by_the_paused_holders_heartbeat(new_root):
    url, options = new_root()
    holder, wrapped = interleaved_store(url, options)
    lease = holder.acquire_lease({"run_id": "paused"})
    wrapped.arm(None, None)
    lease.heartbeat()
    beat_calls = wrapped.calls
    assert beat_calls > 0
    for at in range(1, beat_calls + 1):
        url, options = new_root()
        paused, taker = heartbeat_with_a_rival_at(url, options, at)
        expected = taker.token if taker is not None else paused.token
        assert holder_token(url, options) == expected, f"rival at call {at} of {beat_calls}"
        survivor = taker or paused
        assert outcome(lambda: survivor.heartbeat() or survivor) is survivor  # noqa: B023
        if taker is not None:
            with pytest.raises(LeaseError, match="lost the lease"):
                paused.heartbeat()


def race_two_threads(url: str, options: dict) -> list[Lease | LeaseError]:
    """Two takers of one stale record, released at once from a barrier."""
    leave_stale_record(url, options)
    stores = [Store(url, options), Store(url, options)]
    start = threading.Barrier(2)
    results: list[Lease | LeaseError] = [LeaseError("not run"), LeaseError("not run")]

    def take(i: int) -> None:
        start.wait()
        results[i] = outcome(lambda: stores[i].acquire_lease({"taker": i}))

    threads = [threading.Thread(target=take, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_racing_threads_take_over_one_stale_record_with_exactly_one_winner(new_root):
    rounds = 60 if "://" not in new_root()[0] else 10
    for _ in range(rounds):
        url, options = new_root()
        results = race_two_threads(url, options)
        winners = [r for r in results if isinstance(r, Lease)]
        assert len(winners) == 1, results
        assert holder_token(url, options) == winners[0].token


class IgnoresConditions:
    """An S3-compatible store that drops If-Match: every PutObject lands."""

    def __init__(self, inner: Any):
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if name != "call_s3":
            return attr
        return lambda *args, **kwargs: attr(
            *args, **{k: v for k, v in kwargs.items() if k != "IfMatch"}
        )


def test_where_a_store_ignores_if_match_the_takers_loser_learns_at_its_first_heartbeat(s3):
    url, options = f"s3://{BUCKET}/{uuid.uuid4().hex[:10]}", s3.storage_options
    leave_stale_record(url, options)
    inner, _ = fsspec.core.url_to_fs(url, **options)
    wrapped = Interleave(IgnoresConditions(inner))
    ours = Store(url, options, filesystem=wrapped)
    rival = Store(url, options, filesystem=IgnoresConditions(inner))
    theirs: list[Lease | LeaseError] = []
    wrapped.arm(3, lambda: theirs.append(outcome(lambda: rival.acquire_lease({"r": 2}))))
    mine = ours.acquire_lease({"r": 1})  # create, GET, then (call 3) our PutObject: both land
    [their_lease] = theirs
    assert isinstance(their_lease, Lease)
    with pytest.raises(LeaseError, match="lost the lease"):
        their_lease.heartbeat()
    mine.heartbeat()
    assert holder_token(url, options) == mine.token


def test_a_live_takeover_claim_on_local_disk_makes_the_second_taker_lose(tmp_path):
    url = str(tmp_path / "out")
    leave_stale_record(url, {})
    store = Store(url)
    stale = read_versioned(store.root, LEASE_FILE)
    claim = {**this_machine(), "pid": 1, "pid_start": process_start(1)}  # pid 1: alive
    claim["claimed_unix"] = time.time()
    store.root.write_bytes(_claim_name(LEASE_FILE, stale.version, 0), json.dumps(claim).encode())
    with pytest.raises(LeaseError, match="lost a race.*gpu-7"):
        store.acquire_lease({"run_id": "second"})
    assert holder_token(url, {}) == "stale"


def test_a_claim_left_by_a_dead_taker_does_not_block_the_takeover(tmp_path):
    url = str(tmp_path / "out")
    leave_stale_record(url, {})
    store = Store(url)
    stale = read_versioned(store.root, LEASE_FILE)
    dead = {**this_machine(), "pid": 1, "pid_start": "no-such-start", "claimed_unix": time.time()}
    store.root.write_bytes(_claim_name(LEASE_FILE, stale.version, 0), json.dumps(dead).encode())
    lease = store.acquire_lease({"run_id": "next"})
    assert "took over a stale lease" in lease.note
    assert holder_token(url, {}) == lease.token
    assert store.root.list_names(".tmp") == []  # the claims on the replaced version are gone
    lease.release()
