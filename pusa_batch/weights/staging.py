"""Stage weight URLs on this node, once: list, fetch what the cache lacks, verify, link.

`stage_sources(requests, config, on_progress)` lists every source first (LIST and HEAD requests
only), so the total is known and a warm cache answers without reading any object. Each missing
file is fetched under its own fcntl lock: of several actors on one node, one downloads and the
others wait (seeing its progress), then find the blob there. A source becomes a tree of hard
links to its blobs, the local path the loaders read.
"""

from __future__ import annotations

import logging
import posixpath
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pusa_batch.errors import WeightsError
from pusa_batch.weights.cache import (
    CacheLayout,
    blob_key,
    default_cache_root,
    discard_damaged,
    file_lock,
    link_into,
    publish,
    read_json,
    remove_tree,
    sizes_match,
    tree_key,
)
from pusa_batch.weights.fetch import MIB, fetch_blob, recorded_bytes
from pusa_batch.weights.prune import record_use
from pusa_batch.weights.remote import (
    SIDECAR_SUFFIX,
    Reader,
    RemoteFile,
    Source,
    list_source,
)
from pusa_batch.weights.urls import WeightURL

log = logging.getLogger(__name__)
STATES = ("listing", "fetching", "waiting", "verifying", "ready")
_SUM_LINE = re.compile(r"^([0-9a-fA-F]{64})(?:\s+\*?(.+?))?\s*$")


@dataclass(frozen=True)
class StagingConfig:
    """Where and how weight URLs are staged. `storage_options` maps a protocol (`s3`, `gs`,
    `https`...) to its fsspec options; it is never printed (`repr=False`) and never part of a
    pipeline's identity."""

    cache: Path | None = None  # None: $PUSA_BATCH_CACHE/weights, else ~/.cache/pusa-batch/weights
    chunk_bytes: int = 64 * MIB
    parallel: int = 8  # threads per file, each reading one chunk at a time
    storage_options: dict[str, dict[str, Any]] = field(
        default_factory=dict, repr=False, compare=False
    )

    def layout(self) -> CacheLayout:
        return CacheLayout(self.cache if self.cache is not None else default_cache_root())

    def options_for(self, url: WeightURL) -> dict[str, Any]:
        return dict(self.storage_options.get(url.protocol, {}))

    def endpoint_for(self, url: WeightURL) -> str:
        """The endpoint a URL is read from, part of the cache key (one bucket name on two
        S3-compatible stores is two sources)."""
        options = self.options_for(url)
        client = options.get("client_kwargs") or {}
        return str(options.get("endpoint_url") or client.get("endpoint_url") or "")

    def with_options(self, protocol: str, options: Mapping[str, Any]) -> StagingConfig:
        merged = {**self.storage_options}
        merged[protocol] = deep_merge(merged.get(protocol, {}), options)
        return StagingConfig(self.cache, self.chunk_bytes, self.parallel, merged)


def deep_merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


@dataclass(frozen=True)
class SourceRequest:
    """A URL to stage; for a file, the names beside it to stage with it when they exist (a Mochi
    DiT's `config.json`). A file's `<name>.sha256` is always looked for (not over http(s))."""

    url: WeightURL
    siblings: tuple[str, ...] = ()

    def all_siblings(self) -> tuple[str, ...]:
        return (*self.siblings, self.url.name + SIDECAR_SUFFIX)


@dataclass(frozen=True)
class StagingProgress:
    """One worker's staging, for a live view: `str(p)` reads "staging 12.1/28.0 GB"."""

    state: str  # one of STATES
    done_bytes: int
    total_bytes: int
    files_done: int
    files_total: int
    file: str = ""  # the file at hand, its URL redacted

    def __str__(self) -> str:
        sizes = f"{self.done_bytes / 1e9:.1f}/{self.total_bytes / 1e9:.1f} GB"
        if self.state == "listing":
            return "staging: listing the weights"
        if self.state == "ready":
            return f"weights staged ({self.total_bytes / 1e9:.1f} GB)"
        if self.state == "waiting":
            return f"staging {sizes} (another worker on this node is fetching {self.file})"
        if self.state == "verifying":
            return f"staging {sizes} (checking the sha256 of {self.file})"
        return f"staging {sizes}"


OnProgress = Callable[[StagingProgress], None]


class Tally:
    """Bytes and files done across one staging, told to `on_progress` as they change."""

    def __init__(self, total_bytes: int, files_total: int, on_progress: OnProgress | None):
        self.total_bytes, self.files_total = total_bytes, files_total
        self.on_progress = on_progress
        self.finished_bytes = self.files_done = self.current = 0
        self._lock = threading.Lock()

    def emit(self, state: str, file: str = "", extra: int = 0) -> None:
        if self.on_progress is None:
            return
        with self._lock:
            done = min(self.total_bytes, self.finished_bytes + self.current + extra)
            event = StagingProgress(
                state, done, self.total_bytes, self.files_done, self.files_total, file
            )
        self.on_progress(event)

    def add(self, n: int, file: str) -> None:
        with self._lock:
            self.current += n
        self.emit("fetching", file)

    def finish(self, file: RemoteFile) -> None:
        with self._lock:
            self.finished_bytes += file.size
            self.files_done += 1
            self.current = 0


def stage_sources(
    requests: Sequence[SourceRequest],
    config: StagingConfig,
    on_progress: OnProgress | None = None,
) -> list[Path]:
    """The local path of each request's source, staged in the cache (a folder's tree, or the
    file in its tree). Raises `WeightsError` naming the URL on any failure."""
    if on_progress is not None:
        on_progress(StagingProgress("listing", 0, 0, 0, 0))
    sources = {r.url: list_for(r, config) for r in requests}
    tally = Tally(
        sum(s.total_bytes for s in sources.values()),
        sum(len(s.files) for s in sources.values()),
        on_progress,
    )
    staged = {url: stage_source(source, config, tally) for url, source in sources.items()}
    tally.emit("ready")
    return [staged[r.url] for r in requests]


def list_for(request: SourceRequest, config: StagingConfig) -> Source:
    return list_source(request.url, config.options_for(request.url), request.all_siblings())


def local_path(root: Path, source: Source) -> Path:
    return root / source.files[0].rel if source.is_file else root


def stage_source(source: Source, config: StagingConfig, tally: Tally) -> Path:
    layout = config.layout()
    key = tree_key(source, config.endpoint_for(source.url))
    tree = layout.tree(key)
    sizes = [(f.rel, f.size) for f in source.files]
    if _use_if_whole(layout, key, source, sizes, config.endpoint_for(source.url)):
        for file in source.files:
            tally.finish(file)
        return local_path(tree, source)
    if tree.is_dir():
        discard_damaged(tree, sizes)  # a file in it was cut or removed: build it again
    sums: dict[str, tuple[str, str]] = {}
    blobs: dict[str, Path] = {}
    for file in sorted(source.files, key=lambda f: (not f.is_checksums, f.rel)):
        blobs[file.rel] = ensure_blob(file, config, sums.get(file.rel), tally)
        if file.is_checksums:
            sums.update(read_checksums(file, blobs[file.rel]))

    def build(tmp: Path) -> None:
        for rel, blob in blobs.items():
            link_into(blob, tmp / rel)

    publish(build, tree)
    with file_lock(tree.with_name(tree.name + ".lock")):
        record_use(layout, "trees", key, str(source.url))
    return local_path(tree, source)


def _use_if_whole(
    layout: CacheLayout, key: str, source: Source, sizes: list[tuple[str, int]], endpoint: str
) -> bool:
    """True when the tree is there whole; its use is then recorded under the lock `cache prune`
    takes, so a prune running now either removed it before or leaves it."""
    tree = layout.tree(key)
    with file_lock(tree.with_name(tree.name + ".lock")):
        whole = tree.is_dir() and sizes_match(tree, sizes)
        if whole and not all(blob_untouched(layout, blob_key(f, endpoint)) for f in source.files):
            remove_tree(tree)  # a file written into since it was verified: built again below
            whole = False
        if whole:
            record_use(layout, "trees", key, str(source.url))
    return whole


def blob_untouched(layout: CacheLayout, key: str) -> bool:
    """False when the blob's modification time is not the one recorded when it was verified:
    something wrote into it (same size or not), so its bytes are not trusted. A blob recorded
    before times were kept passes on its size alone."""
    recorded = (read_json(layout.sibling(key, ".json")) or {}).get("mtime_ns")
    try:
        now = layout.blob(key).stat().st_mtime_ns
    except OSError:
        return False
    return recorded is None or recorded == now


def ensure_blob(
    file: RemoteFile, config: StagingConfig, sha256: tuple[str, str] | None, tally: Tally
) -> Path:
    """The file's verified blob: from the cache, or fetched by the one process that gets its
    lock while the others wait."""
    layout = config.layout()
    key = blob_key(file, config.endpoint_for(file.url))
    blob = layout.blob(key)
    shown = str(file.url)
    if _ready(blob, file.size) and not blob_untouched(layout, key):
        with file_lock(layout.sibling(key, ".lock")):
            if not blob_untouched(layout, key):
                log.warning(
                    "%s: its cached copy was written into since it was verified; fetching it again",
                    shown,
                )
                blob.unlink(missing_ok=True)
    if not _ready(blob, file.size):
        tally.emit("fetching", shown)

        def waiting() -> None:
            tally.emit("waiting", shown, recorded_bytes(layout, key))

        with file_lock(layout.sibling(key, ".lock"), on_wait=waiting):
            if not _ready(blob, file.size):
                fetch_blob(
                    Reader(file, config.options_for(file.url)),
                    layout,
                    key,
                    chunk_bytes=config.chunk_bytes,
                    parallel=config.parallel,
                    sha256=sha256,
                    on_bytes=lambda n: tally.add(n, shown),
                    on_verify=lambda: tally.emit("verifying", shown),
                )
    tally.finish(file)
    return blob


def _ready(blob: Path, size: int) -> bool:
    try:
        return blob.stat().st_size == size
    except OSError:
        return False


def read_checksums(file: RemoteFile, blob: Path) -> dict[str, tuple[str, str]]:
    """{relative name: (sha256, checksum file)} from a `<name>.sha256` or `SHA256SUMS` file in
    sha256sum's format (`HEX  NAME` lines; a `.sha256` may hold the bare digest)."""
    folder = posixpath.dirname(file.rel)
    own = file.rel.removesuffix(SIDECAR_SUFFIX) if file.rel.endswith(SIDECAR_SUFFIX) else None
    out: dict[str, tuple[str, str]] = {}
    for number, line in enumerate(blob.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        found = _SUM_LINE.match(line.strip())
        if found is None:
            raise WeightsError(
                f"{file.url}: line {number} is not `SHA256  NAME` (sha256sum's format); fix or "
                "remove the checksum file"
            )
        digest, name = found.group(1).lower(), found.group(2)
        if name is None and own is None:
            raise WeightsError(f"{file.url}: line {number} names no file; write `SHA256  NAME`")
        target = own if own is not None and (name is None or _same(name, own)) else None
        target = target or posixpath.normpath(posixpath.join(folder, name.removeprefix("./")))
        out[target] = (digest, str(file.url))
    return out


def _same(name: str, rel: str) -> bool:
    return posixpath.basename(name) == posixpath.basename(rel)
