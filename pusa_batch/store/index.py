"""What the output root says is done: compacted Parquet parts plus markers written since.

A commit writes `recent/{id}@{token}` first (token = time-sortable commit id), then the video,
then `items/{id}.json` carrying the same `commit_token`. Reading the state therefore costs one
listing of `index/`, one read per part, one listing of `recent/` and two calls per recent id,
whatever the number of done items. A recent id is done only if its marker carries the newest
token and its video has the recorded size; it then overrides the index. Compaction folds done
recent ids into a new part and deletes only the pointers it folded (tokens up to the marker's),
so a commit racing the compaction keeps its own, newer pointer.
"""

from __future__ import annotations

import io
import json
import logging
import posixpath
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from pusa_batch.store.io import Root

log = logging.getLogger(__name__)

INDEX_DIR = "index"
QUARANTINE_DIR = "index/quarantine"
RECENT_DIR = "recent"
ITEMS_DIR = "items"
VIDEOS_DIR = "videos"
FAILURES_DIR = "failures"
_READ_THREADS = 16

PART_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("fingerprint", pa.string()),
        ("video", pa.string()),
        ("video_bytes", pa.int64()),
        ("video_sha256", pa.string()),
        ("committed_at", pa.string()),
        ("commit_token", pa.string()),
        ("marker_bytes", pa.int64()),  # the marker file's own size, to spot a truncated one
        ("marker_json", pa.string()),
    ]
)
FLAT_FIRST = ["id", "fingerprint", "video", "video_bytes", "video_sha256", "committed_at"]


def marker_path(item_id: str) -> str:
    return f"{ITEMS_DIR}/{item_id}.json"


def video_path(item_id: str) -> str:
    return f"{VIDEOS_DIR}/{item_id}.mp4"


def failure_path(item_id: str) -> str:
    return f"{FAILURES_DIR}/{item_id}.json"


def pointer_path(item_id: str, token: str) -> str:
    return f"{RECENT_DIR}/{item_id}@{token}"


def part_name(number: int) -> str:
    return f"part-{number:06d}.parquet"


def part_number(name: str) -> int | None:
    if not (name.startswith("part-") and name.endswith(".parquet")):
        return None
    digits = name[len("part-") : -len(".parquet")]
    return int(digits) if digits.isdigit() else None


def encode_part(markers: list[dict], marker_bytes: list[int | None] | None = None) -> bytes:
    columns = {name: [m.get(name) for m in markers] for name in PART_SCHEMA.names[:-2]}
    columns["marker_bytes"] = marker_bytes or [None] * len(markers)
    columns["marker_json"] = [json.dumps(m, sort_keys=True) for m in markers]
    return table_bytes(pa.table(columns, schema=PART_SCHEMA))


def table_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def decode_part(data: bytes, columns: list[str] | None = None) -> pa.Table:
    """The part's table; a column a part from an older version lacks comes back as nulls."""
    table = pq.read_table(io.BytesIO(data))
    for name in columns or []:
        if name not in table.column_names:
            table = table.append_column(
                name, pa.nulls(table.num_rows, PART_SCHEMA.field(name).type)
            )
    return table.select(columns) if columns else table


@dataclass(frozen=True)
class Recorded:
    """What the index records of a done item, to check the files against."""

    fingerprint: str | None
    video_bytes: int | None
    marker_bytes: int | None


@dataclass
class RootState:
    """Done-ness of every item the root knows about, read without touching each item.

    `damaged` holds indexed items whose files no longer match the record (see `verify_files`):
    they are not done, and a run makes them again.
    """

    indexed: dict[str, Recorded] = field(default_factory=dict)
    recent_done: dict[str, dict] = field(default_factory=dict)
    recent_open: set[str] = field(default_factory=set)
    orphans: set[str] = field(default_factory=set)
    failures: set[str] = field(default_factory=set)
    pointers: dict[str, list[str]] = field(default_factory=dict)
    damaged: dict[str, str] = field(default_factory=dict)  # id -> what is wrong
    verified: bool = False
    corrupt_parts: list[str] = field(default_factory=list)  # index parts that cannot be read
    rebuilt: dict[str, tuple[dict, int | None]] = field(default_factory=dict)  # from markers

    def done_fingerprint(self, item_id: str) -> tuple[bool, str | None]:
        if item_id in self.recent_done:
            return True, self.recent_done[item_id].get("fingerprint")
        if item_id in self.rebuilt:
            return True, self.rebuilt[item_id][0].get("fingerprint")
        if item_id in self.recent_open or item_id in self.damaged or item_id not in self.indexed:
            return False, None
        return True, self.indexed[item_id].fingerprint

    def done_ids(self) -> set[str]:
        done = set(self.indexed) - self.recent_open - set(self.damaged)
        return done | set(self.recent_done) | set(self.rebuilt)


def list_parts(root: Root) -> list[tuple[int, str]]:
    numbered = ((part_number(n), n) for n in root.list_names(INDEX_DIR))
    return sorted((num, f"{INDEX_DIR}/{name}") for num, name in numbered if num is not None)


def iter_parts(root: Root, columns: list[str] | None) -> Iterator[tuple[int, pa.Table]]:
    """Each readable part in order (an unreadable one is skipped: `read_indexed` reports it)."""
    for number, rel in list_parts(root):
        try:
            yield number, decode_part(root.read_bytes(rel), columns)
        except (pa.ArrowException, ValueError):
            log.warning("skipping unreadable index part %s", root.where(rel))


def read_indexed(root: Root) -> tuple[dict[str, Recorded], list[str]]:
    """(id -> what is recorded, over every readable part, a later part winning; the parts that
    cannot be read). An unreadable part is left out, never a crash: see `rebuild_from_markers`."""
    names = ["id", "fingerprint", "video_bytes", "marker_bytes"]
    for _ in range(3):
        try:
            indexed: dict[str, Recorded] = {}
            corrupt: list[str] = []
            for _, rel in list_parts(root):
                try:
                    table = decode_part(root.read_bytes(rel), names)
                except (pa.ArrowException, OSError, ValueError) as exc:
                    if isinstance(exc, FileNotFoundError):
                        raise
                    corrupt.append(rel)
                    continue
                ids, fps, videos, markers = (table[n].to_pylist() for n in names)
                indexed.update(
                    (i, Recorded(f, v, m)) for i, f, v, m in zip(ids, fps, videos, markers)
                )
            return indexed, corrupt
        except FileNotFoundError:  # a compaction merged parts while we read: read again
            continue
    raise FileNotFoundError(root.where(INDEX_DIR))


def rebuild_from_markers(root: Root, state: RootState) -> None:
    """With a part unreadable, find done items from their markers instead: every marker not in
    the readable index and not committed since is read and its video checked (one read and one
    stat per such item), so a corrupt part costs time, not a mass regeneration."""
    names = root.list_names(ITEMS_DIR)
    known = set(state.indexed) | set(state.pointers)
    ids = [n[: -len(".json")] for n in names if n.endswith(".json")]
    ids = [i for i in ids if i not in known]

    def check(item_id: str) -> tuple[dict | None, int | None]:
        marker, size = read_marker(root, item_id)
        whole = marker is not None and root.size(video_path(item_id)) == marker.get("video_bytes")
        return (marker if whole else None), size

    with ThreadPoolExecutor(max_workers=_READ_THREADS) as pool:
        for item_id, (marker, size) in zip(ids, pool.map(check, ids)):
            if marker is not None:
                state.rebuilt[item_id] = (marker, size)


def heal(root: Root, state: RootState) -> str | None:
    """Run by the lease holder: move unreadable parts to `index/quarantine/` and index the
    markers rebuilt in their place as a new part. Returns a notice, or None if all was well."""
    if not state.corrupt_parts:
        return None
    for rel in state.corrupt_parts:
        root.write_bytes(f"{QUARANTINE_DIR}/{posixpath.basename(rel)}", root.read_bytes(rel))
        root.delete(rel)
    if state.rebuilt:
        parts = list_parts(root)
        rel = f"{INDEX_DIR}/{part_name((parts[-1][0] if parts else 0) + 1)}"
        markers = [m for m, _ in state.rebuilt.values()]
        root.create_exclusive(rel, encode_part(markers, [n for _, n in state.rebuilt.values()]))
    return (
        f"{len(state.corrupt_parts)} unreadable index part(s) moved to {QUARANTINE_DIR}/; "
        f"{len(state.rebuilt)} done item(s) found again from their markers"
    )


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


def verify_files(state: RootState, videos: dict[str, int], markers: dict[str, int]) -> None:
    """Mark indexed items damaged whose video or marker is missing or has another size.

    `videos` and `markers` are one listing each of `videos/` and `items/` (name -> size).
    Items committed since the last compaction were checked one by one already.
    """
    for item_id, recorded in state.indexed.items():
        if item_id in state.recent_done or item_id in state.recent_open:
            continue
        video = videos.get(f"{item_id}.mp4")
        marker = markers.get(f"{item_id}.json")
        if video is None:
            state.damaged[item_id] = "video missing"
        elif recorded.video_bytes is not None and video != recorded.video_bytes:
            state.damaged[item_id] = f"video is {video} bytes, {recorded.video_bytes} recorded"
        elif marker is None:
            state.damaged[item_id] = "marker missing"
        elif recorded.marker_bytes is not None and marker != recorded.marker_bytes:
            state.damaged[item_id] = f"marker is {marker} bytes, {recorded.marker_bytes} recorded"
    state.verified = True


def read_state(root: Root, *, verify: bool = True) -> RootState:
    """What the root holds. With `verify`, one listing each of `videos/` and `items/` checks
    every indexed item's files against the index (see `verify_files`)."""
    indexed, corrupt = read_indexed(root)
    state = RootState(indexed=indexed, pointers=read_pointers(root), corrupt_parts=corrupt)
    ids = list(state.pointers)
    with ThreadPoolExecutor(max_workers=_READ_THREADS) as pool:
        results = pool.map(lambda i: verify_recent(root, i, state.pointers[i][-1]), ids)
        for item_id, (marker, has_video, _) in zip(ids, results):
            if marker is not None:
                state.recent_done[item_id] = marker
            else:
                state.recent_open.add(item_id)
                if has_video:
                    state.orphans.add(item_id)
    names = root.list_names(FAILURES_DIR)
    state.failures = {n[: -len(".json")] for n in names if n.endswith(".json")}
    if verify and state.indexed:
        verify_files(state, root.list_sizes(VIDEOS_DIR), root.list_sizes(ITEMS_DIR))
    if corrupt:
        rebuild_from_markers(root, state)
    return state


@dataclass(frozen=True)
class CompactionResult:
    folded: int
    part: str | None
    merged_parts: int = 0


def compact(root: Root, min_items: int, max_parts: int) -> CompactionResult:
    """Fold verified recent markers into a new part, then drop the pointers it covers."""
    state = RootState(pointers=read_pointers(root))
    ids = list(state.pointers)
    if len(ids) < max(1, min_items):
        return CompactionResult(0, None)
    with ThreadPoolExecutor(max_workers=_READ_THREADS) as pool:
        checked = list(pool.map(lambda i: verify_recent(root, i, state.pointers[i][-1]), ids))
    done = [marker for marker, _, _ in checked if marker is not None]
    sizes = [size for marker, _, size in checked if marker is not None]
    if not done:
        return CompactionResult(0, None)
    parts = list_parts(root)
    rel = f"{INDEX_DIR}/{part_name((parts[-1][0] if parts else 0) + 1)}"
    root.create_exclusive(rel, encode_part(done, sizes))
    covered = [
        pointer_path(m["id"], t)
        for m in done
        for t in state.pointers[m["id"]]
        if t <= m["commit_token"]
    ]
    root.delete_many(covered)
    merged = merge_parts(root, max_parts) if len(parts) + 1 > max_parts else 0
    return CompactionResult(len(done), rel, merged)


def merge_parts(root: Root, max_parts: int) -> int:
    """Rewrite every part into one (latest row per id wins); return how many were merged."""
    parts = list_parts(root)
    if len(parts) <= max_parts:
        return 0
    tables = [decode_part(root.read_bytes(rel)) for _, rel in parts]
    table = pa.concat_tables(tables)
    latest: dict[str, int] = {item_id: row for row, item_id in enumerate(table["id"].to_pylist())}
    merged = table.take(sorted(latest.values()))
    root.create_exclusive(f"{INDEX_DIR}/{part_name(parts[-1][0] + 1)}", table_bytes(merged))
    root.delete_many([rel for _, rel in parts])
    return len(parts)


def iter_indexed_markers(root: Root, skip: set[str]) -> Iterator[dict]:
    """Markers stored in the parts, latest per id, leaving out the ids in `skip`."""
    winner: dict[str, int] = {}
    for number, table in iter_parts(root, ["id"]):
        winner.update(dict.fromkeys(table["id"].to_pylist(), number))
    for number, table in iter_parts(root, ["id", "marker_json"]):
        for item_id, text in zip(table["id"].to_pylist(), table["marker_json"].to_pylist()):
            if winner.get(item_id) == number and item_id not in skip:
                winner.pop(item_id)
                yield json.loads(text)


def _column_array(values: list) -> pa.Array:
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
        return pa.array([None if v is None else json.dumps(v) for v in values], pa.string())


def final_index_table(markers: Iterable[dict]) -> pa.Table:
    """One row per marker: scalar fields as columns, nested ones in a `nested_json` column."""
    rows = [_with_item_columns(m) for m in sorted(markers, key=lambda m: m["id"])]
    scalar_keys: set[str] = set()
    nested_keys: set[str] = set()  # a key nested in any row stays out of the flat columns
    for marker in rows:
        for key, value in marker.items():
            (nested_keys if isinstance(value, (dict, list)) else scalar_keys).add(key)
        item = marker.get("item") or {}
        nested_keys.update(k for k, v in item.items() if isinstance(v, (dict, list)))
    scalar_keys -= nested_keys
    order = [k for k in FLAT_FIRST if k in scalar_keys or k == "id"]
    order += sorted(scalar_keys - set(order) - {"commit_token"})
    columns = {k: _column_array([_scalar(m.get(k)) for m in rows]) for k in order}
    nested = [{k: v for k, v in m.items() if isinstance(v, (dict, list))} for m in rows]
    columns["nested_json"] = pa.array([json.dumps(n, sort_keys=True) for n in nested], pa.string())
    return pa.table(columns)


def _with_item_columns(marker: dict) -> dict:
    """The item's own scalar fields (prompt, task, seed, sizes...) and the pipeline's name and
    identity as top-level columns, so the index can be filtered without parsing JSON."""
    extra = {
        k: v
        for k, v in (marker.get("item") or {}).items()
        if k not in marker and not isinstance(v, (dict, list))
    }
    pipeline = marker.get("pipeline") or {}
    for key in ("name", "identity"):
        if isinstance(pipeline, dict) and key in pipeline:
            extra[f"pipeline_{key}"] = pipeline[key]
    return {**extra, **marker}


def _scalar(value: object) -> object:
    return None if isinstance(value, (dict, list)) else value
