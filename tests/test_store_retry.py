"""with_retries: transient storage errors are retried with bounded backoff, permanent ones not."""

from __future__ import annotations

import fsspec
import pytest

from pusa_batch.errors import StoreError
from pusa_batch.store.io import RetryPolicy, Root, is_transient, with_retries


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
