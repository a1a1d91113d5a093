"""What the node's weight cache holds, and pruning it: `pusa-batch cache list` and `cache prune`.

Each staged source (a tree) and each doctor's header twin is an entry, with a use record beside
it (`trees/<t>.json`: its URL, redacted, and when a run last staged it). Trees hold hard links
to blobs, so one blob shared by two trees is on disk once; a blob no tree links any more is an
orphan and goes with the prune that removed its last tree.

Pruning never touches what another process is staging (each entry's and blob's lock is taken
without waiting, and what is locked is skipped), nor anything used in the last `GRACE_S`
seconds, so a run that has just staged its weights finds them when its loaders open them.
Files a loader has already opened stay readable after removal (Linux keeps an open inode).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pusa_batch.errors import UsageError
from pusa_batch.weights.cache import CacheLayout, read_json, remove_tree, write_json

GRACE_S = 600.0
KINDS = ("trees", "headers")
_KEY = re.compile(r"^[0-9a-f]{64}$")
_LEFTOVER = re.compile(r"^\.(tmp|trash)-")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)\s*$", re.IGNORECASE)
_SECONDS = {"": 86400.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


@dataclass(frozen=True)
class CacheEntry:
    """One staged source (`kind` "trees") or header twin ("headers") in the cache."""

    kind: str
    key: str
    url: str  # redacted; "" where no run recorded it (staged before records were kept)
    blobs: frozenset[tuple[int, int]]  # (inode, bytes) of the files it holds
    last_used: float  # unix time

    @property
    def bytes(self) -> int:
        return sum(size for _, size in self.blobs)


@dataclass(frozen=True)
class PruneRule:
    """Which entries go: unused for `older_than_s`, then the least recently used until the cache
    holds at most `max_bytes`; `everything` takes all. None of them within `grace_s`."""

    older_than_s: float | None = None
    max_bytes: int | None = None
    everything: bool = False
    grace_s: float = GRACE_S


@dataclass(frozen=True)
class PruneReport:
    removed: tuple[CacheEntry, ...]
    freed_bytes: int
    skipped_busy: tuple[str, ...]  # entries or blobs locked by a process staging them now
    left_bytes: int


def parse_duration(text: str) -> float:
    """`30d`, `12h`, `90m`, `45s`, `2w`; a bare number is days."""
    found = _DURATION.match(text.lower())
    if found is None:
        raise UsageError(f"--older-than {text!r}: give a duration such as 30d, 12h or 90m")
    return float(found.group(1)) * _SECONDS[found.group(2)]


def parse_size(text: str) -> int:
    """`200GB`, `1.5T`, `500MiB`, `0`; decimal units (GB = 1e9), binary with `i` (GiB)."""
    found = _SIZE.match(text)
    if found is None:
        raise UsageError(f"--max-size {text!r}: give a size such as 200GB, 1.5TB or 500MiB")
    unit = found.group(2).lower().rstrip("b")
    power = "kmgt".find(unit[:1]) + 1 if unit else 0
    base = 1024 if unit.endswith("i") else 1000
    return int(float(found.group(1)) * base**power)


def record_use(layout: CacheLayout, kind: str, key: str, url: str) -> None:
    """Note that a run (or doctor) used this entry now; best effort, never fails the staging."""
    with contextlib.suppress(OSError):
        write_json(_record(layout, kind, key), {"url": url, "last_used": time.time()})


def _record(layout: CacheLayout, kind: str, key: str) -> Path:
    return layout.root / kind / f"{key}.json"


def _lock_path(layout: CacheLayout, kind: str, key: str) -> Path:
    return layout.root / kind / f"{key}.lock"


def cache_entries(layout: CacheLayout) -> list[CacheEntry]:
    """Every tree and header twin, least recently used first."""
    entries = []
    for kind in KINDS:
        folder = layout.root / kind
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            if _KEY.match(path.name) and path.is_dir() and not path.is_symlink():
                entries.append(_entry(layout, kind, path))
    return sorted(entries, key=lambda e: (e.last_used, e.kind, e.key))


def _entry(layout: CacheLayout, kind: str, path: Path) -> CacheEntry:
    record = read_json(_record(layout, kind, path.name)) or {}
    used = record.get("last_used")
    if not isinstance(used, (int, float)):
        used = _mtime(path)
    url = record.get("url") if isinstance(record.get("url"), str) else ""
    return CacheEntry(kind, path.name, url, frozenset(_files(path)), float(used))


def _files(tree: Path) -> Iterator[tuple[int, int]]:
    """(inode, bytes on disk) of each file in a tree, following the links to blobs."""
    for root, _, names in os.walk(tree):
        for name in names:
            with contextlib.suppress(OSError):
                info = os.stat(os.path.join(root, name))
                yield info.st_ino, min(info.st_size, info.st_blocks * 512)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def disk_bytes(entries: Iterable[CacheEntry], orphans: Iterable[tuple[int, int]] = ()) -> int:
    """Bytes on disk for these entries and orphan blobs, a shared blob counted once."""
    seen: dict[int, int] = dict(orphans)
    for entry in entries:
        seen.update(entry.blobs)
    return sum(seen.values())


def choose(entries: list[CacheEntry], rule: PruneRule, now: float) -> list[CacheEntry]:
    """The entries `rule` removes, pure: by age, then least recently used down to the size."""
    removable = [e for e in entries if now - e.last_used >= rule.grace_s]
    if rule.everything:
        return removable
    old = rule.older_than_s
    gone = [e for e in removable if old is not None and now - e.last_used >= old]
    if rule.max_bytes is not None:
        kept = [e for e in entries if e not in gone]
        for entry in sorted(removable, key=lambda e: e.last_used):
            if disk_bytes(kept) <= rule.max_bytes:
                break
            if entry not in gone:
                gone.append(entry)
                kept.remove(entry)
    return gone


@contextlib.contextmanager
def _held_or_none(path: Path) -> Iterator[bool]:
    """Try the fcntl lock the stagers take (`cache.file_lock`) without waiting: True if taken."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def prune(layout: CacheLayout, rule: PruneRule, *, dry_run: bool = False) -> PruneReport:
    """Remove what `rule` chooses, then the blobs no entry links any more, dead partial
    downloads (with `everything` or past `older_than_s`) and leftovers of killed stagers."""
    now = time.time()
    entries = cache_entries(layout)
    before = disk_bytes(entries, blob_sizes(layout))
    removed, busy = [], []
    for entry in choose(entries, rule, now):
        if dry_run:
            removed.append(entry)
            continue
        with _held_or_none(_lock_path(layout, entry.kind, entry.key)) as held:
            if not held:
                busy.append(f"{entry.kind}/{entry.key}")
                continue
            if _used_since(layout, entry):
                continue  # a run staged it while we looked: it stays
            remove_tree(layout.root / entry.kind / entry.key)
            _record(layout, entry.kind, entry.key).unlink(missing_ok=True)
            removed.append(entry)
    kept = [e for e in entries if e not in removed]
    linked = {inode for e in kept for inode, _ in e.blobs}
    for path, inode, _ in _blob_files(layout):
        if inode in linked or now - _mtime(path) < rule.grace_s:
            continue
        if dry_run:
            continue
        with _held_or_none(path.with_name(path.name + ".lock")) as held:
            if not held:
                busy.append(f"blobs/{path.name}")
                continue
            path.unlink(missing_ok=True)
            path.with_name(path.name + ".json").unlink(missing_ok=True)
    if not dry_run:
        _remove_partials(layout, rule, now)
        _remove_leftovers(layout, rule, now)
    if dry_run:
        blobs = _blob_files(layout)
        left = [(i, n) for p, i, n in blobs if i in linked or now - _mtime(p) < rule.grace_s]
    else:
        left = blob_sizes(layout)
    after = disk_bytes(kept, left)
    return PruneReport(tuple(removed), max(0, before - after), tuple(busy), after)


def _used_since(layout: CacheLayout, entry: CacheEntry) -> bool:
    used = (read_json(_record(layout, entry.kind, entry.key)) or {}).get("last_used")
    return isinstance(used, (int, float)) and used > entry.last_used


def _blob_files(layout: CacheLayout) -> list[tuple[Path, int, int]]:
    """(path, inode, bytes on disk) of every finished blob."""
    out = []
    for path in (layout.root / "blobs").glob("??/*"):
        if _KEY.match(path.name):
            with contextlib.suppress(OSError):
                info = path.stat()
                out.append((path, info.st_ino, min(info.st_size, info.st_blocks * 512)))
    return out


def blob_sizes(layout: CacheLayout) -> list[tuple[int, int]]:
    return [(inode, size) for _, inode, size in _blob_files(layout)]


def _remove_partials(layout: CacheLayout, rule: PruneRule, now: float) -> None:
    """`.part` downloads nobody is resuming: their lock is free and they are old enough."""
    age = 0.0 if rule.everything else rule.older_than_s
    if age is None:
        return
    for part in (layout.root / "blobs").glob("??/*.part"):
        key = part.name.removesuffix(".part")
        if now - _mtime(part) < max(age, rule.grace_s):
            continue
        with _held_or_none(part.with_name(key + ".lock")) as held:
            if held:
                part.unlink(missing_ok=True)
                part.with_name(part.name + ".json").unlink(missing_ok=True)


def _remove_leftovers(layout: CacheLayout, rule: PruneRule, now: float) -> None:
    """Half-built trees and trash a killed process left (`.tmp-*`, `.trash-*`)."""
    for kind in KINDS:
        for path in (layout.root / kind).glob(".*"):
            if _LEFTOVER.match(path.name) and now - _mtime(path) >= rule.grace_s:
                shutil.rmtree(path, ignore_errors=True)


def size_text(n: int) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"
