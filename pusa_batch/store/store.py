"""The output root: exactly-once commits, resume plans, index compaction and the run lease.

Layout (every path relative to the root URL):
    videos/{id}.mp4          the video, written before its marker
    items/{id}.json          the commit marker, written LAST; records size, sha256, fingerprint
    recent/{id}@{token}      empty pointer written FIRST; compaction deletes it
    failures/{id}.json       the last failure of an item; cleared by a later success
    index/part-NNNNNN.parquet  compacted, verified markers (a later part wins)
    index.parquet            one row per done item, written at the end of a run
    run.json, lease.json     run-level info; the single-writer lease

Design: an item is done when its marker exists and its video has the recorded size. Markers
written since the last compaction are found by listing the small `recent/` prefix, so `plan`
and `status_counts` read the index parts plus only those markers: their storage calls do not
grow with the number of done items. See store_index.py for the state rules.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import IO, Any
from urllib.parse import urlsplit

import fsspec

from pusa_batch.errors import (
    CorruptRecordError,
    RootNotFoundError,
    StoreConfigError,
    StoreError,
    UnsafeRootError,
)
from pusa_batch.store.checksums import checksum_damage
from pusa_batch.store.index import (
    FAILURES_DIR,
    FINAL_INDEX,
    INDEX_DIR,
    ITEMS_DIR,
    QUARANTINE_DIR,
    RECENT_DIR,
    VIDEOS_DIR,
    CompactionResult,
    RootState,
    compact,
    failure_path,
    final_index_is_sound,
    heal,
    iter_indexed_markers,
    marker_path,
    pointer_path,
    read_marker,
    read_state,
    recent_state,
    video_path,
    write_final_index,
)
from pusa_batch.store.io import (
    TMP_DIR,
    RetryPolicy,
    Root,
    is_config_problem,
    redact_text,
    redact_url,
    secrets_of,
    storage_hint,
)
from pusa_batch.store.lease import LEASE_FILE, Lease, OnWait, acquire_lease
from pusa_batch.store.parts import UnreadablePart

RUN_FILE = "run.json"
DEFAULT_STORAGE_TIMEOUT_S = 30.0  # how long transient storage errors are retried
DEFAULT_RETRY = RetryPolicy(deadline_s=DEFAULT_STORAGE_TIMEOUT_S)
_BAD_ID_CHARS = set('/\\@:*?"<>|')


def check_item_id(item_id: str) -> str:
    """An id becomes a file name: refuse ones that would escape or break the layout."""
    if (
        not isinstance(item_id, str)
        or not item_id
        or len(item_id) > 200
        or item_id.startswith(".")
        or any(c in _BAD_ID_CHARS or ord(c) < 32 for c in item_id)
    ):
        raise StoreError(
            f"item id {item_id!r} cannot be used as a file name: use 1-200 characters, "
            "no leading '.', and none of / \\ @ : * ? \" < > | or control characters"
        )
    return item_id


# Every folder the store writes, moves files into or deletes from (`.tmp/` is emptied by
# `clean_temp` on every start, so a symlinked one would delete files elsewhere).
LAYOUT_DIRS = (ITEMS_DIR, VIDEOS_DIR, FAILURES_DIR, INDEX_DIR, RECENT_DIR, TMP_DIR, QUARANTINE_DIR)
# The files at the top of a root: each rewritten from the rest when it is moved away.
LAYOUT_FILES = (LEASE_FILE, RUN_FILE, FINAL_INDEX)


def check_local_layout(root: str) -> None:
    """Refuse a local root whose layout folders are symlinks or resolve outside the root: nothing
    outside the root is ever written or deleted."""
    if os.path.exists(root) and not os.path.isdir(root):
        raise UnsafeRootError(f"{root} is a file, not a folder: give -o a folder (new or a run's)")
    above = os.path.dirname(os.path.abspath(root))
    while not os.path.exists(above) and os.path.dirname(above) != above:
        above = os.path.dirname(above)
    if not os.path.isdir(above):
        raise UnsafeRootError(
            f"{above} is a file, so {root} cannot be made under it: give -o another folder"
        )
    top = os.path.realpath(root)
    for name in LAYOUT_DIRS:
        path = os.path.join(root, name)
        if not os.path.lexists(path):
            continue
        real = os.path.realpath(path)
        if os.path.islink(path) or os.path.commonpath([top, real]) != top:
            raise UnsafeRootError(
                f"{path} is a symlink (to {real}): pusa-batch writes only inside the output "
                f"root {root}; replace it with a real folder or choose another -o"
            )
        if not os.path.isdir(path):
            raise UnsafeRootError(f"{path} is not a folder; move it away or choose another -o")
    for name in LAYOUT_FILES:
        path = os.path.join(root, name)
        if os.path.isdir(path) and not os.path.islink(path):
            raise UnsafeRootError(
                f"{path} is a folder where pusa-batch keeps a file; move it away (the next run "
                "writes it again) or choose another -o"
            )


def layout_path_of(root: str, path: str) -> str | None:
    """The layout entry of a local `root` that `path` is or lies in (`index.parquet`,
    `videos/`...), else None: the run writes, replaces or deletes such files."""
    top = os.path.realpath(root)
    real = os.path.realpath(path)
    if os.path.commonpath([top, real]) != top:
        return None
    rel = os.path.relpath(real, top).replace(os.sep, "/")
    for name in LAYOUT_FILES:
        if rel == name:
            return name
    for name in LAYOUT_DIRS:
        if rel == name or rel.startswith(name + "/"):
            return name + "/"
    return None


def refuse_layout_input(root: str, path: str, what: str) -> None:
    """Refuse an input file (a manifest) that the run would overwrite or delete."""
    entry = layout_path_of(root, path)
    if entry is None:
        return
    where = (
        f"in the output root's {entry} folder"
        if entry.endswith("/")
        else (f"the output root's own {entry}")
    )
    raise UnsafeRootError(
        f"{what} {path} is {where}, which the run writes and replaces: it would be lost. Move "
        f"it out of {root}, or choose another -o"
    )


_RUN_NUMBERS = ("updated_at", "items_per_s", "elapsed_s", "started_at")


def _is_run_record(info: Any) -> bool:
    """A dict whose numbers are numbers and whose workers are a mapping, as the driver writes."""
    if not isinstance(info, dict):
        return False
    numbers_ok = all(
        info.get(k) is None or (isinstance(info[k], (int, float)) and not isinstance(info[k], bool))
        for k in _RUN_NUMBERS
    )
    return numbers_ok and isinstance(info.get("workers") or {}, dict)


def folds_case(path: str) -> bool:
    """Whether the file system under `path` ignores case, from the first existing folder on the
    way up whose name has a letter: is the name with its case swapped the same folder?"""
    here = os.path.abspath(path)
    while True:
        name = os.path.basename(here)
        if name and name.swapcase() != name and os.path.isdir(here):
            twin = os.path.join(os.path.dirname(here), name.swapcase())
            try:
                return os.path.samefile(here, twin)
            except OSError:
                return False
        parent = os.path.dirname(here)
        if parent == here:
            return False
        here = parent


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _commit_token() -> str:
    """Sorts by time across hosts (to the clock's accuracy), unique by its random tail."""
    return f"{time.time_ns():020d}-{uuid.uuid4().hex[:12]}"


@dataclass(frozen=True)
class CommitResult:
    item_id: str
    video: str
    video_bytes: int
    video_sha256: str
    committed_at: str


class Store:
    """One output root: a URL plus fsspec storage options. Secrets never leave this object."""

    def __init__(
        self,
        url: str,
        storage_options: dict | None = None,
        *,
        filesystem: Any | None = None,
        retry: RetryPolicy = DEFAULT_RETRY,
    ):
        self._url = str(url)
        self._storage_options = dict(storage_options or {})
        self._filesystem = filesystem
        self.url = redact_url(self._url)
        secrets = secrets_of(self._url, self._storage_options)
        if filesystem is None:
            try:
                fs, root = fsspec.core.url_to_fs(self._url, **self._storage_options)
            except Exception as exc:  # noqa: BLE001 - ImportError, TypeError, ValueError, ...
                detail = redact_text(f"{type(exc).__name__}: {exc}", secrets)
                kind = StoreConfigError if is_config_problem(exc) else StoreError
                raise kind(
                    f"cannot open the output root {self.url}: {storage_hint(exc)} ({detail})"
                ) from None
        else:
            fs, root = filesystem, filesystem._strip_protocol(self._url)
        self._root = Root(fs, root, self.url, retry, secrets)
        if self._root.is_local:
            if urlsplit(self._url).scheme == "file" and urlsplit(self._url).query:
                raise StoreConfigError(
                    f"-o {self.url}: a file:// URL takes no query string; it would become part "
                    "of the folder's name (with what it holds). Remove the ?... part."
                )
            check_local_layout(root)

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    def __reduce__(self) -> tuple:  # Ray ships stores to workers; rebuild from the URL there
        return (_rebuild, (self._url, self._storage_options, self._filesystem, self._root.retry))

    @property
    def root(self) -> Root:
        return self._root

    def names_ignore_case(self) -> bool:
        """True when the root's file system takes `Cat` and `cat` for one name (macOS, Windows,
        some SMB shares): told from the nearest existing folder with a letter in its name, by
        stat alone. Object stores never do."""
        return self._root.is_local and folds_case(self._root.root)

    def exists(self) -> bool:
        where = self._root.root
        return bool(self._root.call("list", "", lambda: self._root.fs.exists(where)))

    def remove_if_unused(self) -> bool:
        """Remove a root that holds only what a run writes before its first item (run.json,
        the lease, `.tmp/`, empty folders): a run refused at its start leaves nothing behind.
        True if removed; a root holding anything else is left as it is."""
        fs, where = self._root.fs, self._root.root
        try:
            found = self._root.call("list", "", lambda: fs.find(where, withdirs=False))
        except (FileNotFoundError, StoreError):
            return False
        rels = [posixpath.relpath(f, where) for f in found]
        mine = {RUN_FILE, LEASE_FILE}
        if any(r not in mine and not r.startswith(f"{TMP_DIR}/") for r in rels):
            return False
        for rel in rels:
            self._root.delete(rel)
        if self._root.is_local:
            for folder, _, _ in sorted(os.walk(where), key=lambda w: -len(w[0])):
                with contextlib.suppress(OSError):
                    os.rmdir(folder)
        return True

    def require_existing(self, command: str) -> None:
        """Refuse a root that does not exist (a mistyped path or bucket), creating nothing."""
        where = self._root.root
        exists = self._root.call("list", "", lambda: self._root.fs.exists(where))
        if exists:
            return
        bucket = where.split("/", 1)[0]
        hint = (
            "check the path"
            if self._root.is_local
            else f"check the bucket ({bucket}) and prefix spelling and the credentials"
        )
        raise RootNotFoundError(
            f"{command}: no output root at {self.url}: {hint}. A run creates its root; "
            "nothing was written."
        )

    # writing
    def commit(self, item_id: str, video: bytes, metadata: dict) -> CommitResult:
        """Write the video, then the marker; the item is done once this returns."""
        check_item_id(item_id)
        _json_bytes(metadata, f"item {item_id}")  # refuse bad metadata before writing anything
        token = _commit_token()
        self._root.write_bytes(pointer_path(item_id, token), b"")
        self._root.write_bytes(video_path(item_id), video)
        result = CommitResult(
            item_id=item_id,
            video=video_path(item_id),
            video_bytes=len(video),
            video_sha256=hashlib.sha256(video).hexdigest(),
            committed_at=_now_iso(),
        )
        marker = {
            **metadata,
            "id": item_id,
            "video": result.video,
            "video_bytes": result.video_bytes,
            "video_sha256": result.video_sha256,
            "fingerprint": metadata.get("fingerprint"),
            "committed_at": result.committed_at,
            "commit_token": token,
        }
        self._root.write_bytes(marker_path(item_id), _json_bytes(marker, f"item {item_id}"))
        self._root.delete(failure_path(item_id))
        return result

    def record_failure(self, item_id: str, info: dict) -> None:
        """Write failures/{id}.json (error type, message, traceback, attempts, worker, node)."""
        check_item_id(item_id)
        record = {**info, "id": item_id, "failed_at": info.get("failed_at") or _now_iso()}
        self._root.write_bytes(
            failure_path(item_id), _json_bytes(record, f"failure of item {item_id}")
        )

    def write_run_info(self, info: dict) -> None:
        self._root.write_bytes(RUN_FILE, _json_bytes(info, RUN_FILE))

    def read_run_info(self) -> dict | None:
        """run.json's record; None when there is none or it is not one (torn, garbage, another
        shape): the next run writes it again."""
        try:
            info = self._root.read_json(RUN_FILE)
        except CorruptRecordError:
            return None
        return info if _is_run_record(info) else None

    # planning and status
    def state(self, *, verify: bool = True) -> RootState:
        """What the root holds; `verify` checks each done item's files against the index with one
        listing of `videos/` and one of `items/` (`verify=False` trusts the index)."""
        return read_state(self._root, verify=verify)

    def status_counts(self, state: RootState | None = None) -> dict[str, int]:
        """Counts from the root alone (no manifest): done, failed, orphans, uncompacted."""
        state = self.state() if state is None else state
        return {
            "done": state.done_count(),
            "failed": len(state.failed_not_done()),
            "damaged": len(state.damaged),
            "orphans": len(state.orphans),
            "uncompacted": len(state.pointers),
        }

    def is_done(self, item_id: str) -> bool:
        """One item, checked directly: marker present and video of the recorded size."""
        marker = self.read_item(item_id)
        if marker is None:
            return False
        return self._root.size(video_path(item_id)) == marker.get("video_bytes")

    # index
    def heal_index(self, state: RootState) -> str | None:
        """Quarantine unreadable index parts and index what their markers show (lease holder
        only); a notice for the user, or None when every part was readable."""
        return heal(self._root, state)

    def clean_temp(self, older_than_s: float = 0.0) -> int:
        """Remove temporary files that dead runs left under `.tmp/`, and `videos/*.tmp` (lease
        holder only)."""
        return self._root.clean_temp(older_than_s, beside=(VIDEOS_DIR,))

    def compact_index(self, min_items: int = 1, max_parts: int = 32) -> CompactionResult:
        """Fold markers written since the last compaction into a new tier-0 index part, then
        merge full tiers (see `store.parts`).

        Run it from the lease holder only. Parts beyond `max_parts` are merged into one.
        """
        return compact(self._root, min_items, max_parts)

    def has_final_index(self) -> bool:
        """True when index.parquet is there and readable as this version writes it (its footer
        read); garbage, a torn file or an older one is written again."""
        return final_index_is_sound(self._root)

    def write_final_index(self, state: RootState | None = None) -> int:
        """Write index.parquet, one row per done item (not if it already lists exactly what the
        root holds); return the number of rows.

        With `state` (a run's, read before it generated), the items it found damaged are
        checked again one by one; without, the root is read and verified whole.
        """
        if state is None:
            return write_final_index(self._root, self.state()).rows
        damaged = self._still_damaged(state.damaged)
        now = recent_state(self._root)  # the merge reads the parts itself
        now.damaged = damaged
        try:
            return write_final_index(self._root, now).rows
        except UnreadablePart:  # found since the run began: rebuild its items from markers
            now = self.state(verify=False)
            now.damaged = damaged
            return write_final_index(self._root, now).rows

    def _still_damaged(self, suspects: dict[str, str]) -> dict[str, str]:
        """The suspects whose files are still not as their index row says (made again since:
        whole)."""
        still = {}
        for item_id, why in suspects.items():
            marker, _ = read_marker(self._root, item_id)
            size = self._root.size(video_path(item_id))
            if marker is None or size is None or size != marker.get("video_bytes"):
                still[item_id] = why
        return still

    # readers
    def iter_done_metadata(self, state: RootState | None = None) -> Iterator[dict]:
        """The marker of every done item: compacted ones, then those written since."""
        state = self.state() if state is None else state
        skip = state.recent_open | set(state.recent_done) | set(state.damaged) | set(state.rebuilt)
        yield from iter_indexed_markers(self._root, skip=skip)
        yield from (state.rebuilt[k][0] for k in sorted(state.rebuilt))
        yield from (state.recent_done[k] for k in sorted(state.recent_done))

    def iter_failures(self, state: RootState | None = None) -> Iterator[dict]:
        """Failure records of items that are not done (a success clears its record)."""
        state = self.state() if state is None else state
        for item_id in state.failed_not_done():
            try:
                record = self._root.read_json(failure_path(item_id))
            except CorruptRecordError:
                record = []
            if record is None:
                continue
            if not isinstance(record, dict):  # torn or overwritten: still a failed item
                record = {
                    "id": item_id,
                    "error_type": "UnreadableRecord",
                    "message": f"{failure_path(item_id)} is not a failure record; a rerun with "
                    "--retry-failed makes the item again",
                }
            yield record

    def repair(self, state: RootState) -> dict[str, str]:
        """Mend what the index can mend; return id -> what was done, for every damaged item.

        A marker that is missing or truncated while the video is whole (its size and sha256 as
        recorded) is written again from the index's copy. Otherwise the damaged files are
        removed, so the item is plainly missing until the next run makes it again.
        """
        damaged = dict(state.damaged)
        indexed = {m["id"]: m for m in iter_indexed_markers(self._root, skip=(), only=damaged)}
        outcome: dict[str, str] = {}
        for item_id, why in sorted(damaged.items()):
            marker = indexed.get(item_id)
            if marker is not None and why.startswith("marker") and self._video_is(marker):
                self._root.write_bytes(marker_path(item_id), _json_bytes(marker, f"item {item_id}"))
                outcome[item_id] = "marker restored from the index"
            else:
                self._root.delete_many([marker_path(item_id), video_path(item_id)])
                outcome[item_id] = "removed; the next run makes it again"
        return outcome

    def checksum_damage(self, state: RootState) -> dict[str, str]:
        """id -> what is wrong, for done items whose video's sha256 is not the recorded one (an
        overwrite of the same size). Reads every done video whole: opt-in (`verify --checksums`)."""
        return checksum_damage(self._root, self.iter_done_metadata(state))

    def _video_is(self, marker: dict) -> bool:
        try:
            data = self._root.read_bytes(video_path(marker["id"]))
        except FileNotFoundError:
            return False
        recorded = (marker.get("video_bytes"), marker.get("video_sha256"))
        return (len(data), hashlib.sha256(data).hexdigest()) == recorded

    def read_item(self, item_id: str) -> dict | None:
        return self._root.read_json(marker_path(check_item_id(item_id)))

    def read_failure(self, item_id: str) -> dict | None:
        return self._root.read_json(failure_path(check_item_id(item_id)))

    def video_url(self, item_id: str) -> str:
        """Full URL of the video (for object stores, reading it needs the storage options)."""
        return self._root.url(video_path(check_item_id(item_id)))

    def open_video(self, item_id: str) -> IO[bytes]:
        return self._root.open_read(video_path(check_item_id(item_id)))

    # lease
    def acquire_lease(
        self,
        owner: dict,
        stale_after_s: float = 120.0,
        *,
        wait: bool = True,
        on_wait: OnWait | None = None,
    ) -> Lease:
        return acquire_lease(self._root, owner, stale_after_s, wait=wait, on_wait=on_wait)


def _rebuild(url: str, options: dict, filesystem: Any, retry: RetryPolicy) -> Store:
    return Store(url, options, filesystem=filesystem, retry=retry)


def _json_bytes(record: dict, what: str) -> bytes:
    try:
        return json.dumps(record, sort_keys=True, allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise StoreError(
            f"metadata for {what} is not plain JSON ({exc}); pass strings, numbers, "
            "booleans, lists and dicts only"
        ) from exc
