"""A counting HTTP proxy in front of the moto S3 server, for the weight-staging tests.

Every request a stager makes (from this process or another) passes through it and is recorded:
method, path, query, Range header, status and the body bytes it returned. Object GETs and
listings are told apart as S3 tells them: a GET on `/bucket/key` reads an object, a GET on
`/bucket?list-type=2...` lists. `slow_s` delays each object GET, so that concurrent stagers
really overlap. It also holds what the weight tests share (`upload`, `write_pipeline`); the tests
at the bottom check the proxy itself.
"""

from __future__ import annotations

import contextlib
import http.client
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "upgrade"}


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    query: str
    range: str | None
    status: int
    body_bytes: int

    @property
    def reads_object(self) -> bool:
        """A GET of one object's bytes (not a bucket listing)."""
        key = self.path.strip("/").partition("/")[2]
        return self.method == "GET" and bool(key) and "list-type" not in self.query


class CountingProxy:
    def __init__(self, upstream: str, slow_s: float = 0.0):
        self.upstream = urlsplit(upstream)
        self.slow_s = slow_s
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"

    def storage_options(self) -> dict:
        """s3fs options that go through the proxy (the moto test credentials)."""
        return {
            "key": "testing",
            "secret": "testing",
            "client_kwargs": {"endpoint_url": self.endpoint, "region_name": "us-east-1"},
        }

    def clear(self) -> None:
        with self._lock:
            self.seen.clear()

    def object_gets(self) -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if s.reads_object]

    def gets_per_object(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for seen in self.object_gets():
            counts[seen.path] = counts.get(seen.path, 0) + 1
        return counts

    def object_bytes(self) -> int:
        return sum(s.body_bytes for s in self.object_gets())

    def _record(self, seen: Seen) -> None:
        with self._lock:
            self.seen.append(seen)

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                parts = urlsplit(self.path)
                if proxy.slow_s and self.command == "GET" and parts.path.strip("/").count("/"):
                    time.sleep(proxy.slow_s)
                conn = http.client.HTTPConnection(
                    proxy.upstream.hostname, proxy.upstream.port, timeout=60
                )
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    answer = conn.getresponse()
                    data = answer.read()
                    seen = Seen(
                        self.command,
                        parts.path,
                        parts.query,
                        self.headers.get("Range"),
                        answer.status,
                        len(data),
                    )
                    proxy._record(seen)  # before the client has its answer: no race with it
                    self.send_response(answer.status, answer.reason)
                    for key, value in answer.getheaders():
                        if key.lower() not in _HOP and key.lower() != "content-length":
                            self.send_header(key, value)
                    declared = answer.getheader("Content-Length")
                    if self.command == "HEAD" and declared is not None:
                        self.send_header("Content-Length", declared)
                    else:
                        self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                finally:
                    conn.close()

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _forward

        return Handler


@contextlib.contextmanager
def counting_proxy(upstream: str, slow_s: float = 0.0) -> Iterator[CountingProxy]:
    proxy = CountingProxy(upstream, slow_s)
    thread = threading.Thread(target=proxy.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        proxy.server.shutdown()
        proxy.server.server_close()


# ------------------------------------------------------------- what the weight tests share


def upload(fs, local: Path, prefix: str) -> dict[str, int]:
    """Every file under `local` to `prefix` (`bucket/key...`), one PUT each; {key: size}."""
    sizes = {}
    for path in sorted(local.rglob("*")):
        if path.is_file():
            key = f"{prefix}/{path.relative_to(local).as_posix()}"
            fs.pipe_file(key, path.read_bytes())
            sizes[key] = path.stat().st_size
    fs.invalidate_cache()
    return sizes


def write_pipeline(
    folder: Path,
    root: str,
    options: dict | None,
    *,
    cache: Path,
    chunk_mb: int = 64,
    name: str = "remote.toml",
) -> Path:
    """A tiny-sized wan2.1 pipeline file reading `root`, with its cache and (for an S3 root)
    its S3 options under [staging]."""
    path = folder / name
    text = (
        f'family = "wan2.1"\n[weights]\nroot = "{root}"\n'
        "[defaults]\nnum_frames = 17\nheight = 64\nwidth = 64\nsteps = 2\n"
        "[options]\ntext_max_length = 32\n"
        f'[staging]\ncache = "{cache}"\nchunk_mb = {chunk_mb}\n'
    )
    if options is not None:
        client = options["client_kwargs"]
        text += (
            "[staging.storage_options.s3]\n"
            f'key = "{options["key"]}"\nsecret = "{options["secret"]}"\n'
            f'client_kwargs = {{ endpoint_url = "{client["endpoint_url"]}", '
            f'region_name = "{client["region_name"]}" }}\n'
        )
    path.write_text(text)
    return path


# ----------------------------------------------------------------------- the proxy's own tests


def test_the_proxy_records_an_object_get_with_its_range_and_bytes(s3):
    import fsspec

    fs = fsspec.filesystem("s3", **s3.storage_options, skip_instance_cache=True)
    fs.pipe_file("pusa-test/proxy/blob.bin", bytes(range(256)) * 4)
    with counting_proxy(s3.endpoint) as proxy:
        through = fsspec.filesystem("s3", **proxy.storage_options(), skip_instance_cache=True)
        assert through.cat_file("pusa-test/proxy/blob.bin", start=10, end=20) == bytes(
            range(10, 20)
        )
    [get] = proxy.object_gets()
    assert (get.path, get.range, get.body_bytes) == ("/pusa-test/proxy/blob.bin", "bytes=10-19", 10)


def test_the_proxy_does_not_count_a_listing_as_an_object_read(s3):
    import fsspec

    with counting_proxy(s3.endpoint) as proxy:
        through = fsspec.filesystem("s3", **proxy.storage_options(), skip_instance_cache=True)
        through.find("pusa-test/proxy")
    assert [s.method for s in proxy.seen] == ["GET"]  # the one listing
    assert proxy.object_gets() == []
