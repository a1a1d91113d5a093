"""with_retries: transient storage errors are retried with bounded backoff, permanent ones not."""

from __future__ import annotations

import socket
import time

import fsspec
import pytest

from pusa_batch.errors import StoreError
from pusa_batch.store.io import RetryPolicy, Root, add_retry_listener, is_transient, with_retries
from pusa_batch.store.store import Store


def failing_then(value, errors: list[Exception]):
    calls = []

    def fn():
        calls.append(1)
        if len(calls) <= len(errors):
            raise errors[len(calls) - 1]
        return value

    return fn, calls


@pytest.mark.parametrize(
    "error",
    [
        ConnectionError("reset"),
        TimeoutError(),
        OSError(503, "Service Unavailable"),
        OSError(5, "SlowDown: please reduce your request rate"),
    ],
)
def test_transient_errors_are_retried_until_success(error):
    fn, calls = failing_then("ok", [error, error])
    assert with_retries(fn, attempts=5, base_delay=0, max_delay=0) == "ok"
    assert len(calls) == 3


@pytest.mark.parametrize(
    "error", [PermissionError("denied"), FileNotFoundError("gone"), ValueError("bad")]
)
def test_permanent_errors_are_raised_at_once(error):
    fn, calls = failing_then("ok", [error])
    with pytest.raises(type(error)):
        with_retries(fn, attempts=5, base_delay=0, max_delay=0)
    assert len(calls) == 1


def test_retries_stop_after_the_last_attempt():
    fn, calls = failing_then("ok", [ConnectionError()] * 10)
    with pytest.raises(ConnectionError):
        with_retries(fn, attempts=4, base_delay=0, max_delay=0)
    assert len(calls) == 4


def test_backoff_is_jittered_and_capped():
    delays: list[float] = []
    fn, _ = failing_then("ok", [ConnectionError()] * 6)
    with_retries(fn, attempts=7, base_delay=1.0, max_delay=4.0, sleep=delays.append)
    caps = [1.0, 2.0, 4.0, 4.0, 4.0, 4.0]
    assert all(0 <= d <= cap for d, cap in zip(delays, caps, strict=True))
    assert len(set(delays)) > 1


def test_a_status_code_inside_a_path_is_not_mistaken_for_a_server_error():
    assert not is_transient(OSError(2, "no such object: videos/503.mp4"))


def test_exhausted_retries_become_a_store_error_naming_the_file():
    root = Root(fsspec.filesystem("memory"), "/r", "memory://r", RetryPolicy(2, 0, 0))
    fn, calls = failing_then("ok", [ConnectionError()] * 3)
    with pytest.raises(StoreError, match=r"memory://r/items/a.json.*retry"):
        root.call("read", "items/a.json", fn)
    assert len(calls) == 2


def test_with_a_deadline_transient_errors_are_retried_until_it_passes_not_n_times():
    clock = iter(range(100)).__next__  # one second per call
    calls = []

    def fn():
        calls.append(1)
        raise ConnectionError("connection reset by peer")

    with pytest.raises(ConnectionError):
        with_retries(fn, attempts=2, base_delay=0, max_delay=0, deadline_s=5, clock=clock)
    assert len(calls) == 7  # failures at t=0..6 s: only the one at 6 s is past the deadline


def test_a_call_started_during_an_outage_gets_only_what_is_left_of_the_timeout():
    def down():
        calls.append(1)
        raise ConnectionError("connection refused")

    calls: list[int] = []
    with pytest.raises(ConnectionError):  # the outage begins: this call retries for 0.3 s
        with_retries(down, base_delay=0.01, max_delay=0.02, deadline_s=0.3)
    assert len(calls) > 1
    time.sleep(0.3)  # the outage goes on past the whole timeout
    calls.clear()
    with pytest.raises(ConnectionError):
        with_retries(down, base_delay=0.01, max_delay=0.02, deadline_s=0.3)
    assert len(calls) == 1  # no fresh 0.3 s of its own
    with_retries(lambda: "up", deadline_s=0.3)  # any success ends the outage
    calls.clear()
    with pytest.raises(ConnectionError):
        with_retries(down, base_delay=0.01, max_delay=0.02, deadline_s=0.3)
    assert len(calls) > 1


def test_retries_are_announced_to_listeners_with_the_time_waited():
    seen: list[tuple[float, str]] = []
    remove = add_retry_listener(lambda waited, exc: seen.append((waited, type(exc).__name__)))
    outcomes = iter([TimeoutError("slow"), TimeoutError("slow"), "ok"])

    def fn():
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    try:
        assert with_retries(fn, base_delay=0, max_delay=0) == "ok"
    finally:
        remove()
    assert [name for _, name in seen] == ["TimeoutError", "TimeoutError"]


def test_an_unreachable_endpoint_fails_after_the_storage_timeout_naming_it():
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    options = {
        "key": "k",
        "secret": "s",
        "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}", "region_name": "us-east-1"},
        "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 1},
    }
    policy = RetryPolicy(base_delay=0.05, max_delay=0.2, deadline_s=1.0)
    store = Store("s3://bucket/run", options, retry=policy)
    with pytest.raises(StoreError, match="still failing after 1 s of retries"):
        store.root.write_bytes("run.json", b"{}")


def test_a_run_shows_an_outage_as_a_notice_at_most_every_5_s():
    from pusa_batch.engine.config import Notice
    from pusa_batch.engine.run import _outage_notices

    notices: list[Notice] = []
    on_retry = _outage_notices(notices.append, 30.0)
    for waited in (0.0, 0.4, 1.0):
        on_retry(waited, ConnectionError("refused"))
    assert [n.message for n in notices] == [
        "storage unreachable, retrying (0 s of 30 s, --storage-timeout): ConnectionError"
    ]
