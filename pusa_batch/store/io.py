"""Storage primitives under one output root: retries, atomic writes, listing, URL redaction.

Every storage call of the store goes through `Root`, and every `Root` call goes through
`with_retries`: transient failures (throttling, 5xx, resets, timeouts) are retried with
exponential backoff and full jitter; permanent ones (permission, not found) are not.
Writes are atomic per file: local files are written under `.tmp/` and renamed into place;
object stores get one PUT (`pipe_file`), which makes the key visible all at once.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import logging
import os
import posixpath
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from stat import S_ISREG
from typing import Any, TypeVar

from pusa_batch.errors import (
    CorruptRecordError,
    StoreConfigError,
    StoreError,
    StoreUnreachableError,
)
from pusa_batch.redaction import (  # noqa: F401 - re-exported: the store's old face
    redact_text,
    redact_url,
    secrets_of,
)
from pusa_batch.store.gcs import GCS_PROTOCOLS, NO_OBJECT, upload_if_generation

log = logging.getLogger(__name__)
T = TypeVar("T")

TMP_DIR = ".tmp"
_PERMANENT = (
    FileNotFoundError,
    FileExistsError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
    NotImplementedError,
    ValueError,
    TypeError,
)
_TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}
_TRANSIENT_ERRNO = {
    errno.ECONNRESET,
    errno.ECONNABORTED,
    errno.ECONNREFUSED,
    errno.ETIMEDOUT,
    errno.EAGAIN,
    errno.EPIPE,
}
_TRANSIENT_WORDS = (
    "slowdown",
    "slow down",
    "throttl",
    "service unavailable",
    "serviceunavailable",
    "internalerror",
    "internal error",
    "requesttimeout",
    "request timeout",
    "too many requests",
    "reduce your request rate",
    "connection reset",
    "timed out",
)
# Network errors of botocore / aiohttp, matched by name so this module imports neither.
_TRANSIENT_CLASS_NAMES = {
    "EndpointConnectionError",
    "ConnectionClosedError",  # closed before a response: a balancer with no backends, a restart
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "ClientConnectorError",
    "ServerDisconnectedError",
    "ClientPayloadError",
    "ResponseStreamingError",
    "IncompleteReadError",
}


def is_transient(exc: BaseException) -> bool:
    """True for failures worth retrying: throttling, 5xx, connection resets, timeouts."""
    if isinstance(exc, _PERMANENT):
        return False
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    if type(exc).__name__ in _TRANSIENT_CLASS_NAMES:
        return True
    status = getattr(exc, "response", {}) or {}
    if isinstance(status, dict):
        code = status.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in _TRANSIENT_STATUS:
            return True
    if isinstance(exc, OSError):
        first = exc.args[0] if exc.args else None
        if first in _TRANSIENT_STATUS or exc.errno in _TRANSIENT_ERRNO:
            return True
        text = str(exc).lower()
        return any(word in text for word in _TRANSIENT_WORDS)
    return False


OnRetry = Callable[[float, BaseException], None]
_retry_listeners: list[OnRetry] = []


def add_retry_listener(listener: OnRetry) -> Callable[[], None]:
    """Call `listener(seconds_since_first_failure, error)` before each retry of a transient
    storage error in this process (the run's live view shows outages); returns its remover."""
    _retry_listeners.append(listener)
    return lambda: _retry_listeners.remove(listener) if listener in _retry_listeners else None


class _Outage:
    """When this process's storage calls began failing, cleared by any success: a call started
    during an outage gets only what is left of `--storage-timeout`, so a run that cannot reach
    its store ends after about one timeout, not one per call on the way out."""

    QUIET_S = 15.0  # no failure for this long (retries come at most 10 s apart): a new outage

    def __init__(self) -> None:
        self._since: float | None = None
        self._last = 0.0
        self._lock = threading.Lock()

    def began(self, now: float) -> float:
        """When the outage that this failure (at `now`) belongs to began."""
        with self._lock:
            if self._since is None or now - self._last > self.QUIET_S:
                self._since = now
            self._last = now
            return self._since

    def ended(self) -> None:
        self._since = None


_OUTAGE = _Outage()


def with_retries(
    fn: Callable[[], T],
    attempts: int = 5,
    base_delay: float = 0.2,
    max_delay: float = 10.0,
    *,
    deadline_s: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    retryable: Callable[[BaseException], bool] = is_transient,
    report_outage: bool = True,
) -> T:
    """Call `fn` until it succeeds, retrying transient errors with full-jitter backoff.

    With `deadline_s`, transient errors are retried until that many seconds have passed since
    the first failure (however many attempts that takes); without it, `attempts` bound them.
    """
    first_failure: float | None = None
    # an outage of the output root, not one call: the live view counts it down
    shared = report_outage and deadline_s is not None and clock is time.monotonic
    for attempt in itertools.count(1):
        try:
            result = fn()
            if shared:
                _OUTAGE.ended()
            return result
        except Exception as exc:
            now = clock()
            since = _OUTAGE.began(now) if shared and retryable(exc) else now
            first_failure = since if first_failure is None else first_failure
            waited = now - first_failure
            delay = random.uniform(0, min(max_delay, base_delay * 2 ** (attempt - 1)))
            out_of_time = attempt >= attempts if deadline_s is None else waited + delay > deadline_s
            if out_of_time or not retryable(exc):
                raise
            for listener in list(_retry_listeners):
                with contextlib.suppress(Exception):
                    listener(waited, exc)
            log.debug("transient %s (attempt %d), retrying", type(exc).__name__, attempt)
            sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    base_delay: float = 0.2
    max_delay: float = 10.0
    deadline_s: float | None = None  # set: retry transient errors for this long instead

    def run(self, fn: Callable[[], T]) -> T:
        return with_retries(
            fn, self.attempts, self.base_delay, self.max_delay, deadline_s=self.deadline_s
        )


_UNREACHABLE = (
    "EndpointConnectionError",
    "ConnectTimeoutError",
    "ConnectionError",
    "ConnectionClosedError",
    "ReadTimeoutError",  # connected, then no answer: a partition
)


def is_unreachable(exc: BaseException) -> bool:
    """The endpoint did not answer (refused, timed out, dropped): not a refusal by the store."""
    return type(exc).__name__ in _UNREACHABLE or isinstance(exc, (ConnectionError, TimeoutError))


def is_config_problem(exc: BaseException) -> bool:
    """A failure the user fixes in the URL, options or root (exit 2), not a passing one."""
    hint = storage_hint(exc)
    return hint != GENERIC_HINT and not is_unreachable(exc) and "disk is full" not in hint


GENERIC_HINT = "check the output root's URL, credentials and options"
_OPTION_ERRORS = ("UnknownSignatureVersionError", "InvalidRegionError", "ParamValidationError")


def storage_hint(exc: BaseException) -> str:
    """What a failed storage call most likely needs, from the exception's type and errno."""
    name = type(exc).__name__
    text = str(exc)
    if isinstance(exc, ImportError):
        return _missing_filesystem(text)
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return "the disk is full: free space or choose another output root"
    if isinstance(exc, OSError) and exc.errno == errno.EROFS:
        return (
            "the output root is on a read-only file system: make it writable or choose another -o"
        )
    if isinstance(exc, PermissionError):
        return "permission denied: check the credentials and the bucket or folder permissions"
    if isinstance(exc, IsADirectoryError):
        return "a folder is where pusa-batch keeps a file: move the folder away"
    if isinstance(exc, NotADirectoryError):
        return "a file is where pusa-batch keeps a folder: move the file away"
    if isinstance(exc, NotImplementedError):
        return (
            "this filesystem cannot be written (https:// and http:// are read-only): give -o a "
            "local path, s3://, gs:// or another writable fsspec URL"
        )
    if name in _OPTION_ERRORS or "Invalid endpoint" in text:
        return "a storage option is wrong (endpoint, region or signature): check --storage-option"
    if name in ("NoCredentialsError", "PartialCredentialsError") or "credentials" in text.lower():
        return "no usable credentials: set them in the environment or with --storage-option"
    if name == "NoSuchBucket" or "NoSuchBucket" in text or "bucket does not exist" in text:
        return "the bucket does not exist: create it or fix the URL"
    if is_unreachable(exc):
        return (
            "the storage endpoint cannot be reached after retries: check the endpoint URL and "
            "the network, then retry"
        )
    if isinstance(exc, TypeError):
        return "a storage option is not one this filesystem takes: check --storage-option"
    return GENERIC_HINT


_EXTRAS = {"gcsfs": "gcs", "s3fs": "s3"}  # fsspec's package per protocol -> our extra


def _missing_filesystem(text: str) -> str:
    """fsspec says e.g. "Install gcsfs to access Google Storage": name our extra for it."""
    for package, extra in _EXTRAS.items():
        if package in text:
            return f"this URL needs {package}: pip install {package} (or the [{extra}] extra)"
    return "the filesystem for this URL is not installed: see the error for the package"


def _orphaned_io_error(context: dict) -> bool:
    """An aiohttp task of a reset connection that nobody awaited (the call that owned it was
    retried): asyncio would print its traceback into the run's output."""
    error = context.get("exception")
    return (
        "never retrieved" in str(context.get("message", ""))
        and error is not None
        and (is_transient(error) or type(error).__module__.startswith("aiohttp"))
    )


_QUIETED_LOOPS: set[int] = set()


def quiet_orphaned_io_errors(loop: Any) -> None:
    """Log those at debug level on fsspec's event loop; everything else as asyncio would."""
    if loop is None or id(loop) in _QUIETED_LOOPS:
        return
    _QUIETED_LOOPS.add(id(loop))

    def handler(loop: Any, context: dict) -> None:
        if _orphaned_io_error(context):
            log.debug("a reset connection's task failed unobserved: %s", context.get("exception"))
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)


CALL_TIMEOUT_FLOOR_S = 60.0  # a big video's PUT on a slow link must still fit in one call


def call_timeout_s(retry: RetryPolicy) -> float:
    """How long one call to an object store may take before it counts as a transient failure."""
    return max(CALL_TIMEOUT_FLOOR_S, retry.deadline_s or 0.0)


class Root:
    """An fsspec filesystem plus a root path; every method takes a path relative to the root."""

    def __init__(
        self,
        fs: Any,
        root: str,
        display_url: str,
        retry: RetryPolicy,
        secrets: tuple[str, ...] = (),
    ):
        self.secrets = secrets
        self.fs = fs
        self.root = root.rstrip("/")
        self.display_url = display_url
        self.retry = retry
        protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
        self.protocols = frozenset(protocols)
        self.is_local = bool({"file", "local"} & self.protocols)
        self._made_dirs: set[str] = set()
        # fsspec's async filesystems take `timeout=` per call (then FSTimeoutError, a transient
        # TimeoutError): without it a PUT into a partition that swallows bytes waits forever
        # (aiohttp's 100-continue has no timeout), and --storage-timeout never fires.
        self.io = {"timeout": call_timeout_s(retry)} if getattr(fs, "async_impl", False) else {}
        if self.io:
            quiet_orphaned_io_errors(getattr(fs, "loop", None))

    def path(self, rel: str) -> str:
        return f"{self.root}/{rel}" if self.root else rel

    def where(self, rel: str) -> str:
        return f"{self.display_url.rstrip('/')}/{rel}"

    def call(self, what: str, rel: str, fn: Callable[[], T]) -> T:
        """Run one storage call with retries; missing/existing files pass through unchanged."""
        try:
            return self.retry.run(fn)
        except FileNotFoundError as exc:
            if what in ("write", "create") and not self.is_local:  # no parent dirs there
                raise StoreError(
                    f"could not {what} {self.where(rel)}: the bucket does not exist: create it "
                    f"or fix the URL ({redact_text(str(exc), self.secrets)})"
                ) from None
            raise
        except FileExistsError:
            raise
        except PermissionError as exc:
            raise StoreConfigError(
                f"permission denied to {what} {self.where(rel)}: check the credentials "
                f"and the bucket or directory permissions ({type(exc).__name__})"
            ) from exc
        except Exception as exc:
            if isinstance(exc, StoreError):
                raise
            detail = redact_text(f"{type(exc).__name__}: {exc}", self.secrets)
            waited = ""
            if self.retry.deadline_s is not None and is_transient(exc):
                waited = f", still failing after {self.retry.deadline_s:g} s of retries"
            kind = StoreUnreachableError if is_unreachable(exc) else StoreError
            kind = StoreConfigError if is_config_problem(exc) else kind
            raise kind(
                f"could not {what} {self.where(rel)}: {storage_hint(exc)} ({detail}){waited}"
            ) from None

    # reads
    def read_bytes(self, rel: str) -> bytes:
        return self.call("read", rel, lambda: self.fs.cat_file(self.path(rel), **self.io))

    def read_json(self, rel: str) -> dict | None:
        """The parsed JSON file, or None if it does not exist."""
        try:
            data = self.read_bytes(rel)
        except FileNotFoundError:
            return None
        try:
            return json.loads(data)
        except ValueError as exc:
            raise CorruptRecordError(
                f"{self.where(rel)} is not valid JSON ({exc}); delete it if it is a leftover"
            ) from exc

    def size(self, rel: str) -> int | None:
        """Size in bytes, or None if the file does not exist."""
        try:
            info = self.call("stat", rel, lambda: self.fs.info(self.path(rel), **self.io))
        except FileNotFoundError:
            return None
        return None if info.get("type") == "directory" else int(info["size"])

    def is_folder(self, rel: str) -> bool:
        """True when `rel` is a folder (on an object store: a prefix with keys under it)."""
        try:
            info = self.call("stat", rel, lambda: self.fs.info(self.path(rel), **self.io))
        except FileNotFoundError:
            return False
        return info.get("type") == "directory"

    def move_folder(self, rel: str, to: str) -> None:
        """Move a folder and what it holds to `to` (a local rename; copies then deletes on an
        object store)."""
        if self.is_local:
            self._makedirs(posixpath.dirname(to))
        self.call("move", rel, lambda: self.fs.mv(self.path(rel), self.path(to), recursive=True))

    def list_names(self, rel_dir: str) -> list[str]:
        """Base names of the files directly under a folder (empty if it does not exist)."""
        path = self.path(rel_dir)

        def listing() -> list[str]:
            self.fs.invalidate_cache(path)  # other processes write here: never trust a cache
            try:
                return self.fs.ls(path, detail=False, **self.io)
            finally:  # nor leave one: s3fs answers `info` of a file from its folder's listing
                self.fs.invalidate_cache(path)

        try:
            names = self.call("list", rel_dir, listing)
        except FileNotFoundError:
            return []
        return sorted(posixpath.basename(n.rstrip("/")) for n in names)

    def list_sizes(self, rel_dir: str) -> dict[str, int]:
        """Base name -> size of the files directly under a folder, in one (paginated) listing."""
        if self.is_local:
            names, sizes = self.list_suffixed(rel_dir, "")
            return dict(zip(names, sizes, strict=True))
        return self._remote_sizes(rel_dir)

    def list_suffixed(self, rel_dir: str, suffix: str) -> tuple[list[str], list[int]]:
        """The files directly under a folder whose names end in `suffix`: their names without
        it, and their sizes, in one (paginated) listing."""
        cut = len(suffix)
        if not self.is_local:
            found = [(n, s) for n, s in self._remote_sizes(rel_dir).items() if n.endswith(suffix)]
            return [n[: len(n) - cut] for n, _ in found], [s for _, s in found]
        try:
            folder = os.open(self.path(rel_dir), os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            return [], []
        try:
            return _sized_files(folder, suffix)
        finally:
            os.close(folder)

    def _remote_sizes(self, rel_dir: str) -> dict[str, int]:
        path = self.path(rel_dir)

        def listing() -> list[dict]:
            self.fs.invalidate_cache(path)
            try:
                return self.fs.ls(path, detail=True, **self.io)
            finally:  # a cached listing would hide files written after it from `size`
                self.fs.invalidate_cache(path)

        try:
            entries = self.call("list", rel_dir, listing)
        except FileNotFoundError:
            return {}
        return {
            posixpath.basename(e["name"].rstrip("/")): int(e.get("size") or 0)
            for e in entries
            if e.get("type") != "directory"
        }

    def open_read(self, rel: str) -> Any:
        return self.call("open", rel, lambda: self.fs.open(self.path(rel), "rb"))

    def url(self, rel: str) -> str:
        return self.fs.unstrip_protocol(self.path(rel))

    # writes
    def write_bytes(self, rel: str, data: bytes) -> None:
        """Atomically create or replace one file."""
        if not self.is_local:
            self.call("write", rel, lambda: self.fs.pipe_file(self.path(rel), data, **self.io))
            return
        self._local_write(rel, data, publish=lambda tmp: self.fs.mv(tmp, self.path(rel)))

    def create_exclusive(self, rel: str, data: bytes) -> None:
        """Create a file only if it does not exist; raise FileExistsError otherwise."""
        if self.is_local:  # a hard link fails if the target exists: atomic and exclusive
            self._local_write(rel, data, publish=lambda tmp: self.fs.link(tmp, self.path(rel)))
            return
        if GCS_PROTOCOLS & self.protocols:  # ifGenerationMatch=0, in one request
            path = self.path(rel)
            self.call("create", rel, lambda: upload_if_generation(self.fs, path, data, NO_OBJECT))
            return

        def put() -> None:
            with self.fs.open(self.path(rel), "xb") as handle:
                handle.write(data)

        try:
            self.call("create", rel, put)
        except StoreError as exc:
            if not isinstance(exc.__cause__, (NotImplementedError, ValueError, TypeError)):
                raise
            # No exclusive create on this backend: check, then write; callers re-read a token.
            if self.size(rel) is not None:
                raise FileExistsError(self.where(rel)) from None
            self.write_bytes(rel, data)

    def _local_write(self, rel: str, data: bytes, publish: Callable[[str], None]) -> None:
        self._makedirs(posixpath.dirname(rel))
        self._makedirs(TMP_DIR)
        tmp = self.path(f"{TMP_DIR}/{uuid.uuid4().hex}-{posixpath.basename(rel)}")
        try:
            self.call("write", rel, lambda: self.fs.pipe_file(tmp, data))
            self.call("publish", rel, lambda: publish(tmp))
        finally:
            self._remove_tmp(tmp)

    def clean_temp(self, older_than_s: float = 0.0, beside: Iterable[str] = ()) -> int:
        """Delete what dead writers left: everything under TMP_DIR, and `*.tmp` files in the
        folders `beside` (a half-written video of another writer); return how many went."""
        if not self.is_local:  # object stores are written with one PUT: no temporary files
            return 0
        now, removed = time.time(), 0
        leftovers = [(TMP_DIR, name) for name in self.list_sizes(TMP_DIR)]
        for folder in beside:
            leftovers += [(folder, n) for n in self.list_sizes(folder) if n.endswith(".tmp")]
        for folder, name in leftovers:
            path = self.path(f"{folder}/{name}")
            try:
                if now - os.path.getmtime(path) >= older_than_s:
                    os.remove(path)
                    removed += 1
            except OSError:
                continue
        return removed

    def _remove_tmp(self, tmp: str) -> None:
        if self.is_local and not os.path.lexists(tmp):
            return  # never made (the write failed before it), or renamed into place
        try:
            self.call("clean up", TMP_DIR, lambda: self.fs.rm_file(tmp))
        except FileNotFoundError:
            pass  # the usual case: it was renamed into place
        except StoreError as exc:
            log.warning("could not remove a temporary file under %s: %s", TMP_DIR, exc)

    def _makedirs(self, rel_dir: str) -> None:
        if rel_dir in self._made_dirs:
            return
        self.call("create folder", rel_dir, lambda: self.fs.makedirs(self.path(rel_dir), True))
        self._made_dirs.add(rel_dir)

    def delete(self, rel: str) -> None:
        """Delete one file; a missing file is fine."""
        try:
            self.call("delete", rel, lambda: self.fs.rm_file(self.path(rel), **self.io))
        except FileNotFoundError:
            pass

    def delete_many(self, rels: Iterable[str]) -> None:
        rels = list(rels)
        paths = [self.path(r) for r in rels]
        if not paths:
            return
        if self.is_local:
            for rel in rels:
                self.delete(rel)
            return
        try:
            self.call("delete", posixpath.dirname(rels[0]), lambda: self.fs.rm(paths, **self.io))
        except FileNotFoundError:
            for rel in rels:
                self.delete(rel)


def _sized_files(folder: int, suffix: str) -> tuple[list[str], list[int]]:
    """The regular files (symlinks followed) in an open folder whose names end in `suffix`:
    names without it, and sizes. One directory read and one stat per file, relative to the
    folder's descriptor (a fifth faster than `os.scandir`'s entries on 100,000 files); a file
    removed between the two is left out, not an error."""
    cut = len(suffix)
    names: list[str] = []
    sizes: list[int] = []
    stat, is_regular = os.stat, S_ISREG
    for name in os.listdir(folder):
        if not name.endswith(suffix):
            continue
        try:
            info = stat(name, dir_fd=folder)
        except FileNotFoundError:
            continue
        if is_regular(info.st_mode):
            names.append(name[: len(name) - cut])
            sizes.append(info.st_size)
    return names, sizes
