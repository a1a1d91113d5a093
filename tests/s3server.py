"""A throwaway S3 server for tests: `moto_server` on 127.0.0.1, a free port, killed at the end.

    with s3_server() as server:
        fs_options = server.storage_options
        server.make_bucket("out")

Reuse it from other test modules through the `s3` fixture in tests/test_store_s3.py (or move
that fixture to conftest.py). Needs `moto[server]`; nothing here touches the internet.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

ACCESS_KEY = "testing"
SECRET_KEY = "testing"
REGION = "us-east-1"


@dataclass(frozen=True)
class S3Server:
    endpoint: str

    @property
    def storage_options(self) -> dict:
        """Options for s3fs (fsspec `storage_options`) that point at this server."""
        return {
            "key": ACCESS_KEY,
            "secret": SECRET_KEY,
            "client_kwargs": {"endpoint_url": self.endpoint, "region_name": REGION},
        }

    def make_bucket(self, name: str) -> str:
        """Create a bucket (idempotent on moto) and return `s3://name`."""
        request = urllib.request.Request(f"{self.endpoint}/{name}", method="PUT", data=b"")
        try:
            urllib.request.urlopen(request, timeout=10).close()
        except urllib.error.HTTPError as exc:
            if exc.code != 409:  # 409: the bucket exists already
                raise
        return f"s3://{name}"

    def reset(self) -> None:
        """Drop every bucket and object (moto's reset endpoint)."""
        request = urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST")
        urllib.request.urlopen(request, timeout=10).close()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _moto_command(port: int) -> list[str]:
    exe = shutil.which("moto_server")
    if exe:
        return [exe, "-H", "127.0.0.1", "-p", str(port)]
    return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]


def _wait_until_up(
    endpoint: str,
    process: subprocess.Popen,
    timeout_s: float,
    probe: str = "/moto-api/",
    name: str = "moto_server",
) -> None:
    """Until a GET of `endpoint + probe` answers; an error if `process` exits first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited early with code {process.returncode}")
        try:
            urllib.request.urlopen(f"{endpoint}{probe}", timeout=1).close()
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.1)
    raise RuntimeError(f"{name} did not answer on {endpoint} within {timeout_s} s")


def _stop(process: subprocess.Popen) -> None:
    """Terminate a test server, killing it if it has not exited 10 s later."""
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def s3_server(timeout_s: float = 30.0) -> Iterator[S3Server]:
    """Start `moto_server` on a free local port, yield it, and stop it on exit."""
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        _moto_command(port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        _wait_until_up(endpoint, process, timeout_s)
        yield S3Server(endpoint)
    finally:
        _stop(process)
