"""Remote weights through fsspec: listings (names, sizes, versions), ranged reads, and errors that
name the URL (redacted) and the fix. Every call goes through `store.io.with_retries`."""

from __future__ import annotations

import math
import posixpath
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

from pusa_batch.errors import WeightsError
from pusa_batch.store.io import is_transient, redact_text, secrets_of, with_retries
from pusa_batch.weights.urls import WeightURL

T = TypeVar("T")
SIDECAR_SUFFIX = ".sha256"  # `x.safetensors.sha256` beside `x.safetensors`: sha256sum's output
SUMS_FILE = "SHA256SUMS"  # at a folder's top: `sha256sum ... > SHA256SUMS`, names relative to it
_VERSION_KEYS = ("ETag", "etag", "generation", "md5Hash")  # what a store says changes with content
_TIME_KEYS = ("mtime", "LastModified", "updated", "last_modified")


@dataclass(frozen=True)
class RemoteFile:
    """One file of a source: its name relative to the source, size and version (ETag, GCS
    generation, else the modification time)."""

    rel: str
    url: WeightURL
    size: int
    version: str

    @property
    def is_checksums(self) -> bool:
        name = posixpath.basename(self.rel)
        return name.endswith(SIDECAR_SUFFIX) or name == SUMS_FILE


@dataclass(frozen=True)
class Source:
    """What one weight URL holds: a file (with the siblings asked for that exist) or a folder."""

    url: WeightURL
    is_file: bool
    files: tuple[RemoteFile, ...]

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def listing(self) -> list[tuple[str, int]]:
        """(name, size) as `PipelineSpec.identity` lists local weights: checksum files left out;
        a file source lists the file alone (its siblings are listed on their own)."""
        files = self.files[:1] if self.is_file else self.files
        return sorted((f.rel, f.size) for f in files if not f.is_checksums)


def filesystem(url: WeightURL, options: Mapping[str, Any]) -> tuple[Any, str]:
    """The fsspec filesystem and its path for `url`."""
    from fsspec.core import url_to_fs

    try:
        return url_to_fs(url.url, **options)
    except ImportError as e:
        raise WeightsError(
            f"{url}: no fsspec filesystem for {url.protocol}:// is installed ({e}); install it "
            f"(s3fs for s3://, gcsfs for gs://, aiohttp for https://)"
        ) from e
    except (TypeError, ValueError) as e:
        raise fail(url, options, "open", e) from e


def fail(url: WeightURL, options: Mapping[str, Any], doing: str, exc: BaseException):
    """A `WeightsError` naming the URL, what failed and the likely fix; secrets redacted."""
    secrets = secrets_of(url.url, dict(options))
    cause = redact_text(f"{type(exc).__name__}: {exc}", secrets)
    return WeightsError(f"{url}: cannot {doing} ({cause}); {fix_for(exc, url)}")


def fix_for(exc: BaseException, url: WeightURL) -> str:
    text = f"{type(exc).__name__} {exc}".lower()
    table = f"[staging.storage_options.{url.protocol}]"
    if "invalidrange" in text or "not satisfiable" in text or " 416" in text:
        return "size mismatch: the file is shorter than listed (it changed): stage again"
    if isinstance(exc, FileNotFoundError) or "nosuchkey" in text or "not found" in text:
        return "check the URL (is the file or folder there?)"
    if "nosuchbucket" in text or "bucket does not exist" in text:
        return "the bucket does not exist: fix the URL"
    if isinstance(exc, PermissionError) or "accessdenied" in text or "forbidden" in text:
        return f"access denied: check the credentials and {table}"
    if "credential" in text:
        return (
            "no usable credentials: set them in the environment (AWS_*, "
            f"GOOGLE_APPLICATION_CREDENTIALS, FSSPEC_{url.protocol.upper()}) or in {table}"
        )
    if isinstance(exc, TypeError):
        return f"a storage option is not one this filesystem takes: check {table}"
    if is_transient(exc):
        return "the store did not answer after retries: check the endpoint and the network"
    return f"check the URL, the credentials and {table}"


LIST_TIMEOUT_S = 30.0  # one listing or HEAD; an endpoint that never answers fails in time
READ_TIMEOUT_S = 120.0  # one ranged read of a chunk (64 MiB: above 0.5 MB/s)
DEADLINE_S = 90.0  # retrying one call's transient failures, then it is the endpoint's fault
_DEAD_ENDPOINTS: dict[str, tuple[float, str]] = {}  # endpoint -> (since, why) it stopped


def io_kwargs(fs: Any, timeout_s: float) -> dict[str, Any]:
    """fsspec's async filesystems (s3, gs, http) take `timeout=` per call; others do not."""
    return {"timeout": timeout_s} if getattr(fs, "async_impl", False) else {}


def endpoint_of(url: WeightURL, options: Mapping[str, Any]) -> str:
    client = options.get("client_kwargs") or {}
    where = options.get("endpoint_url") or client.get("endpoint_url") or ""
    return f"{url.protocol}://{where or urlsplit(url.url).hostname or ''}"


def call(url: WeightURL, options: Mapping[str, Any], doing: str, fn: Callable[[], T]) -> T:
    """`fn()` with retries on transient errors for up to DEADLINE_S; any failure becomes a
    `WeightsError`. Once an endpoint has not answered, later calls to it fail at once, so a
    pipeline of four folders on a dead endpoint fails in one deadline, not four."""
    endpoint = endpoint_of(url, options)
    since, why = _DEAD_ENDPOINTS.get(endpoint, (-math.inf, ""))
    if time.monotonic() - since < DEADLINE_S:  # remembered for as long as one call retries
        raise WeightsError(f"{url}: cannot {doing}: {why}")
    try:
        return with_retries(fn, deadline_s=DEADLINE_S, report_outage=False)
    except WeightsError:
        raise
    except Exception as e:  # noqa: BLE001 - fsspec backends raise many kinds
        error = fail(url, options, doing, e)
        if is_transient(e):
            _DEAD_ENDPOINTS[endpoint] = (
                time.monotonic(),
                f"its endpoint did not answer for {DEADLINE_S:g} s a moment ago "
                f"({type(e).__name__}); check the endpoint and the network",
            )
        raise error from e


def version_of(info: Mapping[str, Any]) -> str:
    """What changes when the content does: the ETag or generation, else the mtime, else ''."""
    for key in _VERSION_KEYS:
        if info.get(key):
            return f"{key}={str(info[key]).strip(chr(34))}"
    for key in _TIME_KEYS:
        if info.get(key):
            return f"time={info[key]}"
    return ""


def list_source(
    url: WeightURL,
    options: Mapping[str, Any],
    siblings: tuple[str, ...] = (),
    *,
    missing_ok: bool = False,
) -> Source | None:
    """One listing of `url` (LIST and HEAD requests only: no object is read).

    A folder lists every file under it except hidden ones (`.cache/` and the like); a file lists
    itself and those of `siblings` (names beside it) that exist, except over http(s), where a
    URL is one file alone. Nothing there is a `WeightsError`, or None with `missing_ok`.
    """
    fs, path = filesystem(url, options)
    found = call(url, options, "list it", lambda: _find(fs, path, url.lists_folders))
    if not found and missing_ok:
        return None
    if not found:
        raise WeightsError(f"{url}: not found (no file or folder there); check the URL")
    if set(found) == {path.rstrip("/")}:
        files = [_remote(url.name, url, found[path.rstrip("/")])]
        # http(s) answers a HEAD for a missing file with a GET: siblings only where listings are
        for name in siblings if url.lists_folders else ():
            sibling = url.parent / name
            sfs, spath = filesystem(sibling, options)
            info = call(sibling, options, "look it up", lambda s=spath, f=sfs: _info(f, s))
            if info is not None:
                files.append(_remote(name, sibling, info))
        return Source(url, True, tuple(files))
    prefix = path.rstrip("/") + "/"
    files = []
    for name, info in sorted(found.items()):
        rel = name[len(prefix) :] if name.startswith(prefix) else posixpath.basename(name)
        if not any(part.startswith(".") for part in rel.split("/")):
            files.append(_remote(rel, url / rel, info))
    return Source(url, False, tuple(files))


def _find(fs: Any, path: str, lists_folders: bool) -> dict[str, dict]:
    fs.invalidate_cache(path)
    if not lists_folders:  # http(s): one HEAD; a folder page would be read whole
        info = _info(fs, path)
        return {} if info is None else {path.rstrip("/"): info}
    found = fs.find(path, detail=True, **io_kwargs(fs, LIST_TIMEOUT_S))
    files = {name: info for name, info in found.items() if info.get("type") != "directory"}
    return {name.rstrip("/"): info for name, info in files.items()}


def _info(fs: Any, path: str) -> dict | None:
    try:
        return fs.info(path, **io_kwargs(fs, LIST_TIMEOUT_S))
    except FileNotFoundError:
        return None


def _remote(rel: str, url: WeightURL, info: Mapping[str, Any]) -> RemoteFile:
    return RemoteFile(rel, url, int(info.get("size") or 0), version_of(info))


class Reader:
    """Ranged reads of one remote file through one fsspec filesystem (thread-safe)."""

    def __init__(self, file: RemoteFile, options: Mapping[str, Any]):
        self.file = file
        self.options = options
        self.fs, self.path = filesystem(file.url, options)

    def version_now(self) -> str:
        """The file's version as the store gives it now (one HEAD); '' if it is gone."""

        def look() -> dict | None:
            self.fs.invalidate_cache(self.path)
            return _info(self.fs, self.path)

        info = call(self.file.url, self.options, "look it up", look)
        return "" if info is None else version_of(info)

    def read(self, start: int, end: int) -> bytes:
        """Bytes [start, end): one ranged GET (retried); a short answer is a `WeightsError`."""
        what = f"read bytes {start}-{end}"
        io = io_kwargs(self.fs, READ_TIMEOUT_S)
        fetch = lambda: self.fs.cat_file(self.path, start=start, end=end, **io)  # noqa: E731
        data = call(self.file.url, self.options, what, fetch)
        if len(data) != end - start:
            raise WeightsError(
                f"{self.file.url}: size mismatch: asked for bytes {start}-{end} of the "
                f"{self.file.size} the listing gave, got {len(data)}; the file changed while it "
                "was staged (or the server ignores ranges): stage again"
            )
        return data
