"""Shared fixtures: a real S3 API (moto_server on 127.0.0.1) for the whole session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # test helper modules (s3server) import by name

from s3server import S3Server, s3_server  # noqa: E402

BUCKET = "pusa-test"


@pytest.fixture(scope="session")
def s3() -> S3Server:
    """A moto S3 server started for this session and stopped after it, with BUCKET created."""
    with s3_server() as server:
        server.make_bucket(BUCKET)
        yield server
