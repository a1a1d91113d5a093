"""What the output root says is done: index parts (`parts.py`) plus markers written since.

A commit writes `recent/{id}@{token}` first (token = time-sortable commit id), then the video,
then `items/{id}.json` carrying the same `commit_token`. Reading the state therefore costs one
listing of `index/`, one read per part, one listing of `recent/` and two calls per recent id,
whatever the number of done items. A recent id is done only if its marker carries the newest
token and its video has the recorded size; it then overrides the index. Compaction folds done
recent ids into a new part and deletes only the pointers it folded (tokens up to the marker's),
so a commit racing the compaction keeps its own, newer pointer.

Decisions:
- The state holds, per done item, two 8-byte keys (`keys.py`): its id's and its recorded
  fingerprint's, sorted; planning looks a whole manifest chunk up at once. Only what is small or
  rare is kept as text: items committed since the last compaction, damaged ones, failures.
- Parts are read by column: the state reads `STATE_COLUMNS`, never the markers.
- Verification compares the index with one listing each of `videos/` and `items/`, column-wise.
- The final `index.parquet` is merged from the parts' final-index columns (no marker is parsed)
  and records what it was made of, so writing it again when nothing changed writes nothing.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import posixpath
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pusa_batch.store.io import Root
from pusa_batch.store.keys import KeyTable, key_set, text_keys
from pusa_batch.store.parts import (
    FANOUT,
    INDEX_DIR,
    PART_SCHEMA,
    STATE_COLUMNS,
    Part,
    Source,
    UnreadablePart,
    encode_part,
    final_columns,
    iter_merged,
    list_parts,
    merge_sources,
    merge_tiers,
    next_number,
    part_name,
    part_table,
    read_columns,
    unified_schema,
    write_merged,
)

log = logging.getLogger(__name__)

QUARANTINE_DIR = "index/quarantine"
RECENT_DIR = "recent"
ITEMS_DIR = "items"
VIDEOS_DIR = "videos"
FAILURES_DIR = "failures"
FINAL_INDEX = "index.parquet"
SOURCE_KEY = b"pusa_batch.source"  # index.parquet metadata: a digest of what it was made of
_READ_THREADS = 16
_READ_TRIES = 3


def marker_path(item_id: str) -> str:
    return f"{ITEMS_DIR}/{item_id}.json"


def video_path(item_id: str) -> str:
    return f"{VIDEOS_DIR}/{item_id}.mp4"


def failure_path(item_id: str) -> str:
    return f"{FAILURES_DIR}/{item_id}.json"


def pointer_path(item_id: str, token: str) -> str:
    return f"{RECENT_DIR}/{item_id}@{token}"


# --------------------------------------------------------------------------- the state


@dataclass
class RootState:
    """Done-ness of every item the root knows about, read without touching each item.

    `done` maps the key of every done item's id to the key of its recorded fingerprint.
    `damaged` holds indexed items whose files no longer match the record (see `verify_files`):
    they are not done, and a run makes them again.
    """

    done: KeyTable = field(default_factory=KeyTable.empty)
    recent_done: dict[str, dict] = field(default_factory=dict)
    recent_open: set[str] = field(default_factory=set)
    orphans: set[str] = field(default_factory=set)
    failures: set[str] = field(default_factory=set)
    pointers: dict[str, list[str]] = field(default_factory=dict)
    damaged: dict[str, str] = field(default_factory=dict)  # id -> what is wrong
    verified: bool = False
    corrupt_parts: list[str] = field(default_factory=list)  # index parts that cannot be read
    rebuilt: dict[str, tuple[dict, int | None]] = field(default_factory=dict)  # from markers
    source: Root | None = field(default=None, repr=False, compare=False)

    def recorded(self, id_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(whether each id is done, its recorded fingerprint's key: NO_KEY if none)."""
        return self.done.find(id_keys)

    @cached_property
    def damaged_keys(self) -> np.ndarray:
        return key_set(self.damaged)

    @cached_property
    def failure_keys(self) -> np.ndarray:
        return key_set(self.failures)

    def is_damaged(self, id_keys: np.ndarray) -> np.ndarray:
        return np.isin(id_keys, self.damaged_keys)

    def has_failed(self, id_keys: np.ndarray) -> np.ndarray:
        return np.isin(id_keys, self.failure_keys)

    def done_count(self) -> int:
        return len(self.done)

    def failed_not_done(self) -> list[str]:
        """Ids with a failure record and no success since, sorted."""
        ids = sorted(self.failures)
        done = self.done.contains(text_keys(np.array(ids, dtype=object)))
        return [i for i, is_done in zip(ids, done, strict=True) if not is_done]

    def rebuilt_markers(self) -> dict[str, dict]:
        return {item_id: marker for item_id, (marker, _) in self.rebuilt.items()}

    def done_ids(self) -> set[str]:
        """Every done id as text: the parts' ids are read again for it (one read per part)."""
        found = set(self.recent_done) | set(self.rebuilt)
        if self.source is None or not len(self.done):
            return found
        for ids in _readable_id_columns(self.source):
            keep = self.done.contains(text_keys(ids))
            found.update(ids.filter(pa.array(keep)).to_pylist())
        return found


def _readable_id_columns(root: Root) -> Iterator[pa.Array]:
    for part in list_parts(root):
        try:
            yield read_columns(root, part.rel, ["id"])["id"].combine_chunks()
        except (UnreadablePart, FileNotFoundError):
            continue


@dataclass(frozen=True)
class Indexed:
    """What the readable parts record, the latest part winning per id, row-aligned with `keys`
    (kept only while the state is read)."""

    keys: KeyTable  # id key -> fingerprint key
    video_bytes: np.ndarray  # int64, -1 where not recorded
    marker_bytes: np.ndarray
    rows: np.ndarray  # each winner's row in the parts' ids, end to end
    ids: list[pa.Array]  # each part's ids, as text
    corrupt: list[str]

    def id_at(self, winner: int) -> str:
        row = int(self.rows[winner])
        for ids in self.ids:
            if row < len(ids):
                return ids[row].as_py()
            row -= len(ids)
        raise IndexError(winner)


def read_indexed(root: Root) -> Indexed:
    """The readable parts' state columns; an unreadable part is left out (and listed), never a
    crash: see `rebuild_from_markers`. A part merged away while we read means reading again."""
    for _ in range(_READ_TRIES):
        try:
            return _read_indexed_once(root, list_parts(root))
        except FileNotFoundError:
            continue
    raise FileNotFoundError(root.where(INDEX_DIR))


def _read_indexed_once(root: Root, parts: list[Part]) -> Indexed:
    """Part by part, so only one part's fingerprint texts are ever alive (the keys stay)."""
    id_keys, fp_keys, video, marker, ids, corrupt = [], [], [], [], [], []
    for part in parts:
        try:
            table = read_columns(root, part.rel, STATE_COLUMNS)
        except UnreadablePart:
            log.warning("skipping unreadable index part %s", root.where(part.rel))
            corrupt.append(part.rel)
            continue
        id_keys.append(text_keys(table["id"]))
        fp_keys.append(text_keys(table["fingerprint"]))
        video.append(_sizes(table["video_bytes"]))
        marker.append(_sizes(table["marker_bytes"]))
        ids.append(table["id"].combine_chunks())
        del table
    if not id_keys:
        empty = np.zeros(0, dtype=np.int64)
        return Indexed(KeyTable.empty(), empty, empty, empty, [], corrupt)
    all_keys = np.concatenate(id_keys)
    order = np.argsort(all_keys, kind="stable")  # rows of later parts come later: they win
    sorted_keys = all_keys[order]
    last = np.ones(len(order), dtype=bool)
    last[:-1] = sorted_keys[1:] != sorted_keys[:-1]
    rows = order[last]
    return Indexed(
        keys=KeyTable(sorted_keys[last], np.concatenate(fp_keys)[rows]),
        video_bytes=np.concatenate(video)[rows],
        marker_bytes=np.concatenate(marker)[rows],
        rows=rows,
        ids=ids,
        corrupt=corrupt,
    )


def _sizes(column: pa.ChunkedArray) -> np.ndarray:
    return column.fill_null(-1).to_numpy().astype(np.int64)


@dataclass(frozen=True)
class Recent:
    """Markers written since the last compaction, each checked against its files."""

    pointers: dict[str, list[str]]  # id -> its pointer tokens, oldest first
    done: dict[str, dict]  # id -> marker, for ids whose newest commit is whole
    marker_bytes: dict[str, int | None]
    open: set[str]  # ids with a pointer and no whole commit
    orphans: set[str]  # open ids whose video exists


def read_recent(root: Root, pointers: dict[str, list[str]] | None = None) -> Recent:
    """Each recent id checked: its newest marker read and its video's size asked (two calls)."""
    pointers = read_pointers(root) if pointers is None else pointers
    ids = list(pointers)
    done, sizes, still_open, orphans = {}, {}, set(), set()
    results = _reader_pool().map(lambda i: verify_recent(root, i, pointers[i][-1]), ids)
    for item_id, (marker, has_video, marker_bytes) in zip(ids, results):
        if marker is not None:
            done[item_id], sizes[item_id] = marker, marker_bytes
        else:
            still_open.add(item_id)
            if has_video:
                orphans.add(item_id)
    return Recent(pointers, done, sizes, still_open, orphans)


@functools.cache
def _reader_pool() -> ThreadPoolExecutor:
    """One pool for the per-item reads, started once: starting 16 threads for every compaction
    cost more than the reads of a 200-item one on local disk."""
    return ThreadPoolExecutor(max_workers=_READ_THREADS, thread_name_prefix="pusa-read")


def read_pointers(root: Root) -> dict[str, list[str]]:
    """id -> its pointer tokens, oldest first."""
    pointers: dict[str, list[str]] = {}
    for name in root.list_names(RECENT_DIR):
        item_id, sep, token = name.rpartition("@")
        if sep and item_id:
            pointers.setdefault(item_id, []).append(token)
    return {k: sorted(v) for k, v in pointers.items()}


def read_marker(root: Root, item_id: str) -> tuple[dict | None, int | None]:
    """(the parsed marker, its size in bytes); an unreadable marker is (None, its size)."""
    try:
        data = root.read_bytes(marker_path(item_id))
    except FileNotFoundError:
        return None, None
    try:
        marker = json.loads(data)
    except ValueError:
        return None, len(data)
    return (marker if isinstance(marker, dict) else None), len(data)


def verify_recent(
    root: Root, item_id: str, newest_token: str
) -> tuple[dict | None, bool, int | None]:
    """(marker if the item is done, whether its video exists, the marker's size)."""
    marker, marker_bytes = read_marker(root, item_id)
    size = root.size(video_path(item_id))
    done = (
        marker is not None
        and marker.get("commit_token") == newest_token
        and size is not None
        and size == marker.get("video_bytes")
    )
    return (marker if done else None), size is not None, marker_bytes


@dataclass(frozen=True)
class Listing:
    """A folder's listing, for names ending in one suffix: ids, their keys, their sizes."""

    ids: np.ndarray  # object (text)
    keys: np.ndarray
    sizes: np.ndarray  # uint64

    def table(self) -> KeyTable:
        """id key -> size."""
        return KeyTable.latest(self.keys, self.sizes)


def listing(root: Root, folder: str, suffix: str) -> Listing:
    """`folder`'s files ending in `suffix`, from one listing."""
    names, sizes = root.list_suffixed(folder, suffix)
    ids = np.array(names, dtype=object)
    return Listing(ids, text_keys(ids), np.array(sizes, dtype=np.uint64))


def verify_files(indexed: Indexed, skip: np.ndarray, videos: KeyTable, markers: KeyTable) -> dict:
    """id -> what is wrong, for indexed items whose video or marker is missing or has another
    size than recorded. `skip` holds the keys of items committed since the last compaction:
    they were checked one by one already."""
    keys = indexed.keys.keys
    has_video, video = videos.find(keys)
    has_marker, marker = markers.find(keys)
    video, marker = video.astype(np.int64), marker.astype(np.int64)
    recorded_video, recorded_marker = indexed.video_bytes, indexed.marker_bytes
    wrong_video = (recorded_video >= 0) & (video != recorded_video)
    wrong_marker = (recorded_marker >= 0) & (marker != recorded_marker)
    bad = (~has_video | wrong_video | ~has_marker | wrong_marker) & ~np.isin(keys, skip)
    damaged = {}
    for row in np.flatnonzero(bad):
        item_id = indexed.id_at(int(row))
        if not has_video[row]:
            damaged[item_id] = "video missing"
        elif wrong_video[row]:
            damaged[item_id] = f"video is {video[row]} bytes, {recorded_video[row]} recorded"
        elif not has_marker[row]:
            damaged[item_id] = "marker missing"
        else:
            damaged[item_id] = f"marker is {marker[row]} bytes, {recorded_marker[row]} recorded"
    return damaged


def read_state(root: Root, *, verify: bool = True) -> RootState:
    """What the root holds. With `verify`, one listing each of `videos/` and `items/` checks
    every indexed item's files against the index (see `verify_files`)."""
    indexed = read_indexed(root)
    recent = read_recent(root)
    names = root.list_names(FAILURES_DIR)
    state = RootState(
        recent_done=recent.done,
        recent_open=recent.open,
        orphans=recent.orphans,
        failures={n[: -len(".json")] for n in names if n.endswith(".json")},
        pointers=recent.pointers,
        corrupt_parts=indexed.corrupt,
        source=root,
    )
    recent_keys = key_set(recent.pointers)
    known = np.union1d(indexed.keys.keys, recent_keys)
    if verify:
        videos = listing(root, VIDEOS_DIR, ".mp4")
        if len(indexed.keys):
            markers = listing(root, ITEMS_DIR, ".json").table()
            state.damaged = verify_files(indexed, recent_keys, videos.table(), markers)
        state.verified = True
        if not indexed.corrupt:
            state.rebuilt = rebuild_unindexed(root, videos, known, state.damaged)
    if indexed.corrupt:
        state.rebuilt = rebuild_from_markers(root, known)
    state.done = done_table(indexed.keys, state)
    return state


def rebuild_unindexed(
    root: Root, videos: Listing, known: np.ndarray, damaged: dict[str, str] | None = None
) -> dict[str, tuple[dict, int | None]]:
    """Done items the index lost (a part deleted, or the whole `index/`), found from the listing
    of `videos/` the verification takes anyway: a video whose id neither the index nor `recent/`
    knows is an orphan of a crash between video and marker (rare) or an item the index lost.
    Only those ids' markers are read, one read each; a marker that names that video with the
    listed size counts as done (`heal` indexes it again). With the index whole this costs no
    storage call beyond the listing; n lost items cost n marker reads."""
    lost = ~np.isin(videos.keys, known)
    if not lost.any():
        return {}
    unknown = [str(i) for i in videos.ids[lost]]
    rebuilt = {}
    found = _reader_pool().map(lambda i: read_marker(root, i), unknown)
    for item_id, listed, (marker, size) in zip(unknown, videos.sizes[lost], found, strict=True):
        if _names_video(marker, item_id, int(listed)):
            rebuilt[item_id] = (marker, size)
        elif marker is None and size is not None and damaged is not None:
            # a marker there but unreadable (cut, emptied): damage, not a crash's orphan video
            damaged[item_id] = f"marker is unreadable ({size} bytes) and the index lost the item"
    return rebuilt


def _names_video(marker: dict | None, item_id: str, size: int) -> bool:
    return (
        marker is not None
        and marker.get("id") == item_id
        and marker.get("video") == video_path(item_id)
        and marker.get("video_bytes") == size
    )


def recent_state(root: Root) -> RootState:
    """The state of the items committed since the last compaction only (no part is read): what
    the final index needs besides the parts it merges itself."""
    recent = read_recent(root)
    return RootState(
        recent_done=recent.done,
        recent_open=recent.open,
        orphans=recent.orphans,
        pointers=recent.pointers,
        source=root,
    )


def done_table(indexed: KeyTable, state: RootState) -> KeyTable:
    """The indexed items less those committed since or damaged, plus the recent and rebuilt
    ones with their own fingerprints."""
    gone = key_set([*state.pointers, *state.damaged])
    table = indexed.without(gone) if len(gone) else indexed
    for markers in (state.rebuilt_markers(), state.recent_done):
        ids = list(markers)
        fingerprints = [markers[i].get("fingerprint") for i in ids]
        table = table.with_pairs(
            text_keys(np.array(ids, dtype=object)), text_keys(np.array(fingerprints, dtype=object))
        )
    return table


def rebuild_from_markers(root: Root, known: np.ndarray) -> dict[str, tuple[dict, int | None]]:
    """With a part unreadable, find done items from their markers instead: every marker whose
    id is not in `known` (the readable index and the recent ids) is read and its video checked
    (one read and one stat per such item), so a corrupt part costs time, not a regeneration."""
    names = root.list_names(ITEMS_DIR)
    ids = np.array([n[: -len(".json")] for n in names if n.endswith(".json")], dtype=object)
    ids = [str(i) for i in ids[~np.isin(text_keys(ids), known)]] if len(ids) else []

    def check(item_id: str) -> tuple[dict | None, int | None]:
        marker, size = read_marker(root, item_id)
        whole = marker is not None and root.size(video_path(item_id)) == marker.get("video_bytes")
        return (marker if whole else None), size

    rebuilt = {}
    for item_id, (marker, size) in zip(ids, _reader_pool().map(check, ids)):
        if marker is not None:
            rebuilt[item_id] = (marker, size)
    return rebuilt


def heal(root: Root, state: RootState) -> str | None:
    """Run by the lease holder: move unreadable parts to `index/quarantine/` and index the
    markers rebuilt in their place (or found for videos the index lost) as a new part. Returns a
    notice, or None if all was well."""
    if not state.corrupt_parts and not state.rebuilt:
        return None
    for rel in state.corrupt_parts:
        aside = f"{QUARANTINE_DIR}/{posixpath.basename(rel)}"
        if root.is_folder(rel):  # a folder under a part's name: moved aside whole
            root.move_folder(rel, aside)
            continue
        root.write_bytes(aside, root.read_bytes(rel))
        root.delete(rel)
    if state.rebuilt:
        rel = f"{INDEX_DIR}/{part_name(next_number(list_parts(root)))}"
        markers = [m for m, _ in state.rebuilt.values()]
        root.create_exclusive(rel, encode_part(markers, [n for _, n in state.rebuilt.values()]))
    found = f"{len(state.rebuilt)} done item(s) found again from their markers"
    if not state.corrupt_parts:
        return f"{found}: the index had lost them; indexed them again"
    return (
        f"{len(state.corrupt_parts)} unreadable index part(s) moved to {QUARANTINE_DIR}/; {found}"
    )


# --------------------------------------------------------------------------- compaction


@dataclass(frozen=True)
class CompactionResult:
    folded: int
    part: str | None
    merged_parts: int = 0
    rewritten_rows: int = 0  # rows the tier merges wrote (the index's cost beyond the fold)
    written_bytes: int = 0  # bytes written to index/: the new part and the merges


def compact(
    root: Root, min_items: int, max_parts: int | None, fanout: int = FANOUT
) -> CompactionResult:
    """Fold verified recent markers into a new tier-0 part, drop the pointers it covers, then
    merge full tiers (see `parts.merge_tiers`)."""
    pointers = read_pointers(root)
    if len(pointers) < max(1, min_items):
        return CompactionResult(0, None)
    recent = read_recent(root, pointers)
    if not recent.done:
        return CompactionResult(0, None)
    data = encode_part(list(recent.done.values()), list(recent.marker_bytes.values()))
    rel = f"{INDEX_DIR}/{part_name(next_number(list_parts(root)))}"
    root.create_exclusive(rel, data)
    covered = [
        pointer_path(item_id, token)
        for item_id, marker in recent.done.items()
        for token in pointers[item_id]
        if token <= marker["commit_token"]
    ]
    root.delete_many(covered)
    merged = merge_tiers(root, fanout, max_parts)
    return CompactionResult(
        len(recent.done), rel, merged.parts, merged.rows, len(data) + merged.bytes
    )


# --------------------------------------------------------------------------- reading markers


def iter_indexed_markers(
    root: Root, skip: Iterable[str], only: Iterable[str] | None = None
) -> Iterator[dict]:
    """The markers stored in the parts, latest per id, in id order, leaving out `skip` (and
    keeping only `only`, when given). An unreadable part is left out."""
    schema, sources = merge_sources(root, list_parts(root), skip_unreadable=True)
    columns = pa.schema([schema.field("id"), schema.field("marker_json")])
    for table in iter_merged(root, sources, columns, skip=set(skip), only=only):
        yield from (json.loads(text) for text in table["marker_json"].to_pylist())


# --------------------------------------------------------------------------- the final index


@dataclass(frozen=True)
class FinalIndex:
    rows: int
    written: bool  # False: the index there already listed exactly this


def write_final_index(root: Root, state: RootState) -> FinalIndex:
    """Write index.parquet from the parts' final-index columns, merged by id, plus the items the
    state has that the parts lack (committed since, rebuilt), less the damaged ones; skipped if
    the index there was made of exactly the same."""
    parts = [p for p in list_parts(root) if p.rel not in state.corrupt_parts]
    extra = {**state.rebuilt_markers(), **state.recent_done}  # they win over the parts
    skip = set(state.recent_open) | set(state.damaged)
    digest = _source_digest(parts, extra, skip)
    existing = _final_source(root)
    if existing is not None and existing[0] == digest:
        return FinalIndex(existing[1], written=False)
    schema, sources = merge_sources(root, parts)  # an unreadable part: UnreadablePart
    if extra:
        table = part_table(list(extra.values()))
        sources.append(Source(table=table))
        schema = unified_schema([schema, table.schema], PART_SCHEMA.names)
    columns, names = final_columns(schema)
    metadata = {SOURCE_KEY.decode(): digest}
    rows, _ = write_merged(
        root,
        FINAL_INDEX,
        sources,
        columns,
        exclusive=False,
        skip=skip,
        names=names,
        metadata=metadata,
    )
    return FinalIndex(rows, written=True)


def _source_digest(parts: list[Part], extra: dict[str, dict], skip: set[str]) -> str:
    """What the final index is made of: the parts by name (a part never changes), the extra
    markers' commits, the ids left out."""
    what = {
        "parts": [p.rel for p in parts],
        "extra": sorted((i, str(m.get("commit_token"))) for i, m in extra.items()),
        "skip": sorted(skip),
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


def final_index_is_sound(root: Root) -> bool:
    """index.parquet exists, its footer reads and records what it was made of."""
    return _final_source(root) is not None


def _final_source(root: Root) -> tuple[str, int] | None:
    """(the digest index.parquet records, its rows), or None if there is none."""

    def read() -> tuple[str, int] | None:
        with root.fs.open(root.path(FINAL_INDEX), "rb") as handle:
            meta = pq.ParquetFile(handle).metadata
            digest = (meta.metadata or {}).get(SOURCE_KEY)
            return (digest.decode(), meta.num_rows) if digest else None

    try:
        return root.call("read", FINAL_INDEX, read)
    except FileNotFoundError:
        return None
    except Exception:  # noqa: BLE001 - an unreadable index is written again
        return None
