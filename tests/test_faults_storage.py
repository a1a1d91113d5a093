"""A storage cut: the moto S3 server behind a loopback TCP proxy (`process_support.TcpProxy`).

The short form of `benchmarks/faults/storage_cut.py`, which cuts a whole CLI run. Here a store
commits through the proxy: a cut shorter than the storage timeout is ridden out by retries; a
longer one ends in a StoreError that names the cause and how long it was retried, with nothing
counted done; the same commit after the cut goes through. Connections reset are ridden out like
refused ones, and a partition that swallows a PUT ends in a storage error too: every call to an
object store carries a timeout of its own (see `storage_cut.py --mode blackhole`).

No timing guesses: a short cut ends from the retry listener, after the third retry it announces.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
from process_support import TcpProxy
from s3server import ACCESS_KEY, REGION, SECRET_KEY

from pusa_batch.errors import StoreError, StoreUnreachableError
from pusa_batch.store.io import RetryPolicy, add_retry_listener
from pusa_batch.store.store import Store

VIDEO = b"\x00\x00\x00\x18ftypmp42" + bytes(4000)
ONE_TRY = {"connect_timeout": 1, "read_timeout": 1, "retries": {"max_attempts": 0}}


@pytest.fixture
def proxy(s3):
    with TcpProxy(urlsplit(s3.endpoint).port) as p:
        yield p


def store_through(proxy: TcpProxy, prefix: str, timeout_s: float) -> Store:
    options = {
        "key": ACCESS_KEY,
        "secret": SECRET_KEY,
        "client_kwargs": {"endpoint_url": proxy.endpoint, "region_name": REGION},
        "config_kwargs": ONE_TRY,
        "skip_instance_cache": True,
    }
    retry = RetryPolicy(base_delay=0.05, max_delay=0.3, deadline_s=timeout_s)
    return Store(f"s3://pusa-test/{prefix}", options, retry=retry)


def commit_through_a_cut(proxy: TcpProxy, store: Store, mode: str, item: str = "b") -> list[str]:
    """Commit `item` while the proxy is cut in `mode`; the cut ends at the third retry.
    Returns the error names the retries announced."""
    retries: list[str] = []

    def end_the_cut_after_three(waited_s: float, error: BaseException) -> None:
        retries.append(type(error).__name__)
        if len(retries) == 3:
            proxy.restore()

    remove = add_retry_listener(end_the_cut_after_three)
    proxy.cut(mode)
    try:
        store.commit(item, VIDEO, {"fingerprint": "f"})
    finally:
        remove()
        proxy.restore()
    return retries


def test_a_cut_shorter_than_the_storage_timeout_is_ridden_out(proxy):
    store = store_through(proxy, "cut-short", timeout_s=60)
    store.commit("a", VIDEO, {"fingerprint": "f"})
    retries = commit_through_a_cut(proxy, store, "refuse")
    assert len(retries) >= 3
    state = store.state()
    assert store.status_counts(state)["done"] == 2 and not state.damaged


def test_a_cut_longer_than_the_storage_timeout_is_a_storage_error_naming_the_cause(proxy):
    store = store_through(proxy, "cut-long", timeout_s=1)
    store.commit("a", VIDEO, {"fingerprint": "f"})
    proxy.cut("refuse")
    try:
        with pytest.raises(StoreUnreachableError) as raised:
            store.commit("b", VIDEO, {"fingerprint": "f"})
    finally:
        proxy.restore()
    message = str(raised.value)
    assert "cannot be reached after retries" in message
    assert "still failing after 1 s of retries" in message
    assert store.status_counts()["done"] == 1  # nothing half-written counts as done


def test_the_same_commit_after_a_long_cut_completes(proxy):
    store = store_through(proxy, "cut-rerun", timeout_s=1)
    proxy.cut("refuse")
    with pytest.raises(StoreError):
        store.commit("b", VIDEO, {"fingerprint": "f"})
    proxy.restore()
    store.commit("b", VIDEO, {"fingerprint": "f"})
    state = store.state()
    assert store.status_counts(state)["done"] == 1 and not state.damaged


def test_a_cut_that_resets_connections_is_ridden_out_too(proxy):
    store = store_through(proxy, "cut-reset", timeout_s=60)
    commit_through_a_cut(proxy, store, "reset")
    assert store.status_counts()["done"] == 1


def test_a_partition_that_swallows_a_put_ends_in_a_storage_error_not_a_hang(proxy, monkeypatch):
    import threading

    from pusa_batch.store import io

    monkeypatch.setattr(io, "CALL_TIMEOUT_FLOOR_S", 2.0)  # one call's timeout, shortened here
    store = store_through(proxy, "cut-blackhole", timeout_s=2)
    store.commit("a", VIDEO, {"fingerprint": "f"})
    raised: list[BaseException] = []

    def commit() -> None:
        try:
            store.commit("b", VIDEO, {"fingerprint": "f"})
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            raised.append(exc)

    proxy.cut("blackhole")
    try:
        writer = threading.Thread(target=commit, daemon=True)
        writer.start()
        writer.join(timeout=120)  # a hang guard, far above the ~6 s it takes
        assert not writer.is_alive(), "the PUT into the partition never returned"
    finally:
        proxy.restore()
    assert len(raised) == 1 and isinstance(raised[0], StoreError)
    assert store.status_counts()["done"] == 1


def test_a_reset_connections_orphaned_task_is_not_printed_but_other_loop_errors_are(caplog):
    import asyncio
    import logging

    from pusa_batch.store.io import quiet_orphaned_io_errors

    loop = asyncio.new_event_loop()
    try:
        quiet_orphaned_io_errors(loop)
        reset = ConnectionResetError("Cannot write to closing transport")
        loop.call_exception_handler(
            {"message": "Task exception was never retrieved", "exception": reset}
        )
        shown = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert not shown  # asyncio would log it at ERROR, with the traceback
        loop.call_exception_handler({"message": "something else", "exception": ValueError("x")})
        assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == [
            "something else"
        ]
    finally:
        loop.close()
