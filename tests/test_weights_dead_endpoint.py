"""Weights on an endpoint that accepts connections and never answers (a partition, a hung
proxy): staging fails in bounded time with an error naming the URL, and the pipeline's other
sources on that endpoint fail at once instead of each waiting out the same deadline."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from pusa_batch.errors import WeightsError
from pusa_batch.weights import SourceRequest, StagingConfig, WeightURL, remote, stage_sources


@pytest.fixture
def silent_endpoint() -> Iterator[str]:
    """http://127.0.0.1:PORT that accepts every connection and never sends a byte."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        server.close()


@pytest.fixture
def short_deadlines(monkeypatch):
    monkeypatch.setattr(remote, "LIST_TIMEOUT_S", 1.0)
    monkeypatch.setattr(remote, "DEADLINE_S", 3.0)
    monkeypatch.setattr(remote, "_DEAD_ENDPOINTS", {})


def config(tmp_path, endpoint: str) -> StagingConfig:
    options = {
        "key": "testing",
        "secret": "testing",
        "skip_instance_cache": True,
        "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
    }
    return StagingConfig(cache=tmp_path / "cache", storage_options={"s3": options})


def test_a_silent_endpoint_fails_in_bounded_time_naming_the_url(
    tmp_path, silent_endpoint, short_deadlines
):
    began = time.monotonic()
    with pytest.raises(WeightsError, match=r"s3://models/dit: cannot list it"):
        stage_sources(
            [SourceRequest(WeightURL("s3://models/dit"))], config(tmp_path, silent_endpoint)
        )
    assert time.monotonic() - began < 30


def test_the_next_source_on_a_dead_endpoint_fails_at_once(
    tmp_path, silent_endpoint, short_deadlines
):
    settings = config(tmp_path, silent_endpoint)
    with pytest.raises(WeightsError):
        stage_sources([SourceRequest(WeightURL("s3://models/dit"))], settings)
    began = time.monotonic()
    with pytest.raises(WeightsError, match="did not answer .* a moment ago"):
        stage_sources([SourceRequest(WeightURL("s3://models/vae"))], settings)
    assert time.monotonic() - began < 1
