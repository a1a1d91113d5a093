"""The node's weight cache: where things go, their content-addressed keys, and the file lock.

    <cache>/blobs/<k[:2]>/<k>             one remote file's verified bytes
    <cache>/blobs/<k[:2]>/<k>.json        its URL (redacted), version, size, sha256 if checked
    <cache>/blobs/<k[:2]>/<k>.part        a download under way (or interrupted: resumed)
    <cache>/blobs/<k[:2]>/<k>.part.json   which chunks of the .part are written
    <cache>/blobs/<k[:2]>/<k>.lock        the fcntl lock its downloader holds
    <cache>/trees/<t>/...                 a source as the loaders read it: hard links to blobs
    <cache>/headers/<t>/...               doctor's twin: small files, safetensors headers only

`k = sha256(normalised URL, endpoint, size, version)` and `t` = the same over a whole listing,
so a file whose ETag (or size, or mtime) changes gets a new key and is fetched again, while a
warm cache is found from one listing. Trees and header twins are built in a temporary folder
and renamed into place, so readers never see half of one.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pusa_batch.weights.remote import RemoteFile, Source

CACHE_ENV = "PUSA_BATCH_CACHE"


def default_cache_root() -> Path:
    """`$PUSA_BATCH_CACHE/weights`, else `~/.cache/pusa-batch/weights` (beside `tiny/`)."""
    base = os.environ.get(CACHE_ENV)
    return (Path(base).expanduser() if base else Path.home() / ".cache" / "pusa-batch") / "weights"


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def blob_key(file: RemoteFile, endpoint: str) -> str:
    return _digest(file.url.normalised(), endpoint, str(file.size), file.version)


def tree_key(source: Source, endpoint: str) -> str:
    entries = [f"{f.rel}\t{blob_key(f, endpoint)}" for f in source.files]
    kind = "file" if source.is_file else "folder"
    return _digest(source.url.normalised(), endpoint, kind, *sorted(entries))


@dataclass(frozen=True)
class CacheLayout:
    root: Path

    def blob(self, key: str) -> Path:
        return self.root / "blobs" / key[:2] / key

    def sibling(self, key: str, suffix: str) -> Path:
        return self.blob(key).with_name(key + suffix)

    def tree(self, key: str) -> Path:
        return self.root / "trees" / key

    def headers(self, key: str) -> Path:
        return self.root / "headers" / key


@contextlib.contextmanager
def file_lock(
    path: Path, *, on_wait: Callable[[], None] | None = None, poll_s: float = 0.2
) -> Iterator[None]:
    """An exclusive `fcntl.flock` on `path`, for threads and processes alike (each call opens
    its own descriptor). While another holds it, `on_wait()` is called every `poll_s`. The lock
    dies with its holder, so a killed download never blocks the next one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if on_wait is not None:
                    on_wait()
                time.sleep(poll_s)
        yield
    finally:
        os.close(fd)  # releases the lock


def write_json(path: Path, data: object) -> None:
    """Atomically: a reader sees the old record or the new one."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps(data, sort_keys=True))
    os.replace(tmp, path)


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def link_into(blob: Path, target: Path) -> None:
    """`target` becomes a hard link to `blob` (a symbolic one where hard links are refused)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(blob, target)
    except OSError:
        os.symlink(blob, target)


def publish(build: Callable[[Path], None], final: Path) -> Path:
    """Build a folder with `build(tmp)` beside `final` and rename it into place; when another
    process got there first, keep theirs."""
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".tmp-{final.name[:16]}-{uuid.uuid4().hex[:8]}")
    try:
        tmp.mkdir()
        build(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def discard_damaged(tree: Path, files: Iterable[tuple[str, int]]) -> None:
    """Remove `tree` if it still does not hold `files`, checked again under the tree's lock, so
    a tree another process has just rebuilt is never removed."""
    files = list(files)
    with file_lock(tree.with_name(tree.name + ".lock")):
        if tree.is_dir() and not sizes_match(tree, files):
            remove_tree(tree)


def remove_tree(tree: Path) -> None:
    """Rename it aside, then delete: a reader never sees it half removed."""
    trash = tree.with_name(f".trash-{uuid.uuid4().hex[:8]}")
    os.rename(tree, trash)
    shutil.rmtree(trash, ignore_errors=True)


def sizes_match(folder: Path, files: Iterable[tuple[str, int]]) -> bool:
    """True when every (name, size) is a file of that size under `folder`."""
    try:
        return all((folder / rel).stat().st_size == size for rel, size in files)
    except OSError:
        return False
