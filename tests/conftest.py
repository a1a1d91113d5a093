"""Shared fixtures: a real S3 API (moto_server on 127.0.0.1) and a GCS one (fake-gcs-server on
127.0.0.1), each for the whole session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # test helper modules (s3server) import by name

from gcs_server import GcsServer, gcs_server  # noqa: E402  (first: it sets gcsfs's mode)
from s3server import S3Server, s3_server  # noqa: E402

pytest_plugins = ["pipeline_support"]  # the tiny-model cache, an input photo and clip fixtures

BUCKET = "pusa-test"


@pytest.fixture(scope="session")
def s3() -> S3Server:
    """A moto S3 server started for this session and stopped after it, with BUCKET created."""
    with s3_server() as server:
        server.make_bucket(BUCKET)
        yield server


@pytest.fixture(scope="session")
def gcs() -> GcsServer:
    """A fake-gcs-server started for this session and stopped after it, with BUCKET created."""
    with gcs_server() as server:
        server.make_bucket(BUCKET)
        yield server


@pytest.fixture(autouse=True)
def no_storage_outage_carried_over():
    """The store remembers, per process, since when its calls have been failing; a test that
    ends inside an outage must not shorten the next test's retries."""
    yield
    from pusa_batch.store import io

    io._OUTAGE.ended()


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Two cores shared by Ray workers and the test process: one torch thread each avoids
    oversubscription, which slows tiny-model tests many times over."""
    try:
        import torch
    except ImportError:  # pragma: no cover
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def local_ray():
    """A real local Ray on 127.0.0.1 for one test module, shut down after it."""
    import ray

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        logging_level="WARNING",
        log_to_driver=False,
    )
    yield
    from pusa_batch.engine.startup import shutdown_ray

    shutdown_ray(embedded=True)
