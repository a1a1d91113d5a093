"""Index parts: Parquet files of compacted markers, in tiers, merged by streaming their columns.

A part holds, per done item, the columns the root's state needs (`STATE_COLUMNS`), the whole
marker (`marker_json`) for exports, and the item's row of the final `index.parquet` (columns
named `flat:<name>`), so the final index is written from columns, never from parsed markers.

Decisions:
- Log-structured tiers: a compaction writes a tier-0 part; `FANOUT` parts of one tier are
  merged into one part of the next tier. An item is rewritten once per tier it climbs, so a
  run of n items costs O(n log n) in all, where merging everything every few thousand items
  (the old way) cost O(n^2). Names carry the tier: `part-000042-t1.parquet`; a part named the
  old way (`part-000042.parquet`) counts as tier 0.
- A later part number wins over an earlier one for the same id; a merge takes every part of its
  tier and gets a new, highest number. Merges run from tier 0 up right after a compaction, so the
  tiers below a merging one are empty then, and no older row can end up above a newer one.
- Every part is sorted by id and written in row groups of `ROW_GROUP_ROWS`: a merge (and the
  final index) reads each input one row group at a time and takes contiguous runs of it, so
  memory holds the ids of all inputs plus a few row groups, whatever the number of rows. An
  old part that is not sorted by id is read whole instead.
- Winners are chosen by sorting the ids themselves (Arrow), never by hash, so no id can be
  lost to a collision in what the root lists as done.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import posixpath
import re
import tempfile
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pusa_batch.store.io import TMP_DIR, Root

INDEX_DIR = "index"
FANOUT = 4  # parts of one tier merged into one part of the next
ROW_GROUP_ROWS = 16_384  # a row group of real markers is ~40 MB decoded
MERGE_BATCH_ROWS = 16_384
FLAT_PREFIX = "flat:"
NESTED_JSON = "nested_json"
EXTRA = "extra"  # the final index's struct of the user's own manifest columns
STATE_COLUMNS = ["id", "fingerprint", "video_bytes", "marker_bytes"]
# Plain encoding: ids, hashes, prompts and markers hardly repeat, and trying a dictionary for
# each costs more than the whole compression.
WRITE_OPTIONS = {"compression": "zstd", "use_dictionary": False, "write_statistics": False}

# The state columns first: a read of them alone is one contiguous range per row group.
PART_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("fingerprint", pa.string()),
        ("video_bytes", pa.int64()),
        ("marker_bytes", pa.int64()),  # the marker file's own size, to spot a truncated one
        ("video", pa.string()),
        ("video_sha256", pa.string()),
        ("committed_at", pa.string()),
        ("commit_token", pa.string()),
        ("marker_json", pa.string()),
    ]
)
# Final-index columns that a part holds under their own name (the others are `flat:<name>`).
FLAT_FIRST = ["id", "fingerprint", "video", "video_bytes", "video_sha256", "committed_at"]
_NAME = re.compile(r"^part-(?P<number>\d+)(?:-t(?P<tier>\d+))?\.parquet$")


class UnreadablePart(Exception):
    """An index part whose bytes are not a Parquet file this version can read."""


# --------------------------------------------------------------------------- names


@dataclass(frozen=True, order=True)
class Part:
    number: int
    tier: int
    rel: str


def part_name(number: int, tier: int = 0) -> str:
    return f"part-{number:06d}-t{tier}.parquet"


def parse_part(name: str) -> Part | None:
    found = _NAME.match(name)
    if found is None:
        return None
    tier = int(found["tier"]) if found["tier"] is not None else 0
    return Part(int(found["number"]), tier, f"{INDEX_DIR}/{name}")


def list_parts(root: Root) -> list[Part]:
    """The parts under `index/`, oldest (lowest number) first."""
    parts = (parse_part(name) for name in root.list_names(INDEX_DIR))
    return sorted(p for p in parts if p is not None)


def next_number(parts: Sequence[Part]) -> int:
    return (parts[-1].number if parts else 0) + 1


# --------------------------------------------------------------------------- encoding


def part_table(markers: list[dict], marker_bytes: Sequence[int | None] | None = None) -> pa.Table:
    """One row per marker, sorted by id: state columns, the marker, its final-index row."""
    sizes = list(marker_bytes) if marker_bytes is not None else [None] * len(markers)
    order = sorted(range(len(markers)), key=lambda i: markers[i]["id"])
    markers = [markers[i] for i in order]
    columns: dict[str, pa.Array] = {}
    for field in PART_SCHEMA:
        if field.name == "marker_bytes":
            values = [sizes[i] for i in order]
        elif field.name == "marker_json":
            values = [json.dumps(m, sort_keys=True) for m in markers]
        else:
            values = [m.get(field.name) for m in markers]
        columns[field.name] = pa.array(values, field.type)
    for name, values in flat_columns(markers).items():
        columns[FLAT_PREFIX + name] = values
    return pa.table(columns)


def table_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, row_group_size=ROW_GROUP_ROWS, **WRITE_OPTIONS)
    return sink.getvalue()


def encode_part(markers: list[dict], marker_bytes: Sequence[int | None] | None = None) -> bytes:
    return table_bytes(part_table(markers, marker_bytes))


def flat_columns(markers: list[dict]) -> dict[str, pa.Array]:
    """The final index's columns for these markers beyond FLAT_FIRST: every scalar field (the
    item's own too, and the pipeline's name and identity) by name, in name order, and the nested
    ones as one JSON text, `nested_json`. A key nested in any of them stays out of the columns."""
    rows = [_with_item_columns(m) for m in markers]
    scalar_keys: set[str] = set()
    nested_keys: set[str] = set()
    for row in rows:
        for key, value in row.items():
            (nested_keys if isinstance(value, (dict, list)) else scalar_keys).add(key)
        item = row.get("item") or {}
        nested_keys.update(k for k, v in item.items() if isinstance(v, (dict, list)))
    names = sorted(scalar_keys - nested_keys - set(FLAT_FIRST) - {"commit_token"})
    columns = {k: _column_array([_scalar(r.get(k)) for r in rows]) for k in names}
    extra = [(m.get("item") or {}).get("extra") for m in markers]
    if any(extra):  # the user's own manifest columns, one struct field each
        columns[EXTRA] = extra_column(extra)
    nested = [{k: v for k, v in r.items() if isinstance(v, (dict, list))} for r in rows]
    columns[NESTED_JSON] = pa.array([json.dumps(n, sort_keys=True) for n in nested], pa.string())
    return columns


def extra_column(values: list[dict | None]) -> pa.StructArray:
    """One struct per item (null for none) with a field per extra column, in name order; a
    field whose values differ in type across items is text."""
    names = sorted({name for value in values if isinstance(value, dict) for name in value})
    present = [isinstance(v, dict) and bool(v) for v in values]
    fields = [
        _column_array([v.get(name) if isinstance(v, dict) else None for v in values])
        for name in names
    ]
    mask = pa.array([not p for p in present], pa.bool_())
    return pa.StructArray.from_arrays(fields, names=names, mask=mask)


def _with_item_columns(marker: dict) -> dict:
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


def _column_array(values: list) -> pa.Array:
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
        return pa.array([_as_text(v) for v in values], pa.string())


def _as_text(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value)


# --------------------------------------------------------------------------- reading


# What makes a Parquet file an index part: these columns, of these kinds (`marker_bytes` may be
# missing from a part older than it, and is then read as nulls).
REQUIRED_COLUMNS = {
    "id": pa.types.is_string,
    "fingerprint": pa.types.is_string,
    "video_bytes": pa.types.is_integer,
    "marker_json": pa.types.is_string,
}
OPTIONAL_COLUMNS = {"marker_bytes": pa.types.is_integer}


def check_part_schema(schema: pa.Schema, where: str) -> None:
    """Raise `UnreadablePart` for Parquet that is not an index part (another schema, or a state
    column of another type): it is quarantined like a corrupt one, never read as nulls."""
    for name, is_kind in {**REQUIRED_COLUMNS, **OPTIONAL_COLUMNS}.items():
        index = schema.get_field_index(name)
        if index < 0 and name in REQUIRED_COLUMNS:
            raise UnreadablePart(f"{where}: no {name!r} column, not an index part")
        if index >= 0 and not (is_kind(schema.field(index).type) or _is_null(schema, index)):
            raise UnreadablePart(f"{where}: column {name!r} is {schema.field(index).type}")


def _is_null(schema: pa.Schema, index: int) -> bool:
    return pa.types.is_null(schema.field(index).type)


def read_columns(root: Root, rel: str, columns: list[str]) -> pa.Table:
    """These columns of a part (nulls for one an older part lacks), reading only their bytes.

    Raises `UnreadablePart` when the part's bytes, read again whole, are still not Parquet (so a
    read that failed half-way is never taken for a corrupt part) or are Parquet of another schema
    (`check_part_schema`), FileNotFoundError if it is gone (a merge replaced it).
    """
    try:
        schema, table = root.call("read", rel, lambda: _read_projected(root, rel, columns))
    except FileNotFoundError:
        raise
    except Exception:  # noqa: BLE001 - decided below, from the whole bytes
        if root.is_folder(rel):
            raise UnreadablePart(f"{root.where(rel)} (a folder, not a file)") from None
        data = root.read_bytes(rel)
        try:
            table = pq.read_table(io.BytesIO(data), columns=None)
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise UnreadablePart(root.where(rel)) from exc
        schema = table.schema
    check_part_schema(schema, root.where(rel))
    return _with_columns(table, columns)


def _read_projected(root: Root, rel: str, columns: list[str]) -> tuple[pa.Schema, pa.Table]:
    with root.fs.open(root.path(rel), "rb") as handle:
        parquet = pq.ParquetFile(handle, pre_buffer=True)  # coalesced ranges: fewer requests
        schema = parquet.schema_arrow
        present = [c for c in columns if c in schema.names]
        return schema, parquet.read(columns=present)


def _with_columns(table: pa.Table, columns: list[str]) -> pa.Table:
    for name in columns:
        if name not in table.column_names:
            kind = PART_SCHEMA.field(name).type if name in PART_SCHEMA.names else pa.string()
            table = table.append_column(name, pa.nulls(table.num_rows, kind))
    return table.select(columns)


def decode_part(data: bytes, columns: list[str] | None = None) -> pa.Table:
    """A part's table from its bytes (nulls for a column an older part lacks)."""
    table = pq.read_table(io.BytesIO(data))
    return _with_columns(table, columns) if columns else table


# --------------------------------------------------------------------------- merging


@dataclass(frozen=True)
class Source:
    """Rows to merge: a part file, or rows in memory (recent markers, an old part rebuilt); a
    later source wins."""

    rel: str | None = None  # the part, if it is one
    table: pa.Table | None = None  # its rows, if they are in memory


def winners(ids: list[pa.Array], skip: Iterable[str] = (), only: Iterable[str] | None = None):
    """(source, row) of each id's latest row, in id order, leaving out `skip` (and keeping only
    `only`, when given)."""
    lengths = [len(a) for a in ids]
    if sum(lengths) == 0:
        return np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.int64)
    all_ids = pa.concat_arrays([a.cast(pa.large_string()) for a in ids])
    source = np.repeat(np.arange(len(ids), dtype=np.int32), lengths)
    row = np.concatenate([np.arange(n, dtype=np.int64) for n in lengths])
    order = pc.sort_indices(all_ids).to_numpy()  # stable: a later source's row comes later
    sorted_ids = all_ids.take(order)
    last = np.ones(len(order), dtype=bool)
    if len(order) > 1:
        last[:-1] = pc.not_equal(sorted_ids[1:], sorted_ids[:-1]).to_numpy(zero_copy_only=False)
    keep = last
    skipped = list(skip)
    if skipped:
        keep &= ~pc.is_in(sorted_ids, pa.array(skipped, pa.large_string())).to_numpy(
            zero_copy_only=False
        )
    if only is not None:
        keep &= pc.is_in(sorted_ids, pa.array(list(only), pa.large_string())).to_numpy(
            zero_copy_only=False
        )
    chosen = order[keep]
    return source[chosen], row[chosen]


class _Cursor:
    """One source's rows, read a row group at a time (all at once for rows in memory); with
    `forget_before`, the row groups before the latest one asked for are dropped."""

    def __init__(self, root: Root, source: Source, schema: pa.Schema):
        self.schema = schema
        self.groups: dict[int, pa.Table] = {}
        self.handle = None
        if source.table is not None:
            self.starts = np.zeros(1, dtype=np.int64)
            self.groups[0] = conform(source.table, schema)
            return
        self.handle = root.open_read(source.rel)
        self.parquet = pq.ParquetFile(self.handle)
        meta = self.parquet.metadata
        counts = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        self.starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        names = set(self.parquet.schema_arrow.names)
        self.present = [c for c in schema.names if c in names]

    def take(self, rows: np.ndarray, forget_before: bool) -> pa.Table:
        group_of = np.searchsorted(self.starts, rows, side="right") - 1
        pieces = []
        for group in np.unique(group_of):
            table = self._group(int(group))
            local = rows[group_of == group] - self.starts[group]
            if local[-1] - local[0] + 1 == len(local):  # a run of rows: no copy
                pieces.append(table.slice(int(local[0]), len(local)))
            else:
                pieces.append(table.take(local))
        if forget_before and self.handle is not None:
            for old in [g for g in self.groups if g < group_of.max()]:
                del self.groups[old]
        return pa.concat_tables(pieces) if len(pieces) != 1 else pieces[0]

    def _group(self, group: int) -> pa.Table:
        if group not in self.groups:
            table = self.parquet.read_row_group(group, columns=self.present)
            self.groups[group] = conform(table, self.schema)
        return self.groups[group]

    def close(self) -> None:
        self.groups.clear()
        if self.handle is not None:
            self.handle.close()
            self.handle = None


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """The table with exactly the schema's columns, in order: missing ones as nulls, other
    types cast (to text where no cast exists)."""
    columns = []
    for field in schema:
        if field.name not in table.column_names:
            columns.append(pa.nulls(table.num_rows, field.type))
            continue
        column = table[field.name]
        if column.type != field.type:
            column = _cast(column, field.type)
        columns.append(column)
    return pa.table(columns, schema=schema)


def _cast(column: pa.ChunkedArray, kind: pa.DataType) -> pa.ChunkedArray:
    if pa.types.is_struct(kind) and pa.types.is_struct(column.type):
        return pa.chunked_array([_cast_struct(c, kind) for c in column.chunks], kind)
    try:
        return column.cast(kind)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        values = [None if v is None else json.dumps(v) for v in column.to_pylist()]
        return pa.chunked_array([pa.array(values, kind)], kind)


def _cast_struct(array: pa.StructArray, kind: pa.StructType) -> pa.StructArray:
    """The struct with the fields of `kind`, by name: a missing one null, others cast."""
    have = {array.type.field(i).name for i in range(array.type.num_fields)}
    children = []
    for child in kind:
        if child.name in have:
            values = pa.chunked_array([array.field(child.name)])
            children.append(_cast(values, child.type).combine_chunks())
        else:
            children.append(pa.nulls(len(array), child.type))
    mask = array.is_null()
    return pa.StructArray.from_arrays(children, fields=list(kind), mask=mask)


def unified_schema(schemas: Iterable[pa.Schema], order: Sequence[str] = ()) -> pa.Schema:
    """Every column of any schema, `order` first then by name; one type per column: the common
    one, the wider number, or text."""
    kinds: dict[str, list[pa.DataType]] = {}
    for schema in schemas:
        for field in schema:
            kinds.setdefault(field.name, []).append(field.type)
    names = [n for n in order if n in kinds] + sorted(n for n in kinds if n not in order)
    return pa.schema([(n, _common_type(kinds[n])) for n in names])


def _common_type(kinds: list[pa.DataType]) -> pa.DataType:
    known = {k for k in kinds if not pa.types.is_null(k)}
    if not known:
        return pa.string()
    if len(known) == 1:
        return known.pop()
    if all(pa.types.is_struct(k) for k in known):  # extra columns of other manifests: all
        fields: dict[str, list[pa.DataType]] = {}
        for kind in known:
            for child in kind:
                fields.setdefault(child.name, []).append(child.type)
        return pa.struct([(n, _common_type(fields[n])) for n in sorted(fields)])
    if all(pa.types.is_integer(k) or pa.types.is_floating(k) for k in known):
        return pa.float64()
    return pa.string()


def iter_merged(
    root: Root,
    sources: Sequence[Source],
    schema: pa.Schema,
    *,
    skip: Iterable[str] = (),
    only: Iterable[str] | None = None,
    batch_rows: int = MERGE_BATCH_ROWS,
) -> Iterator[pa.Table]:
    """The latest row of each id over the sources, in id order, in tables of `batch_rows` rows
    with the schema's columns."""
    ids = [_source_ids(root, s) for s in sources]
    monotone = [s.table is None and _is_sorted(i) for s, i in zip(sources, ids)]
    source_of, row_of = winners(ids, skip, only)
    del ids
    last_use = np.full(len(sources), -1, dtype=np.int64)  # the last output row each source gives
    last_use[source_of] = np.arange(len(source_of))  # (a later assignment wins)
    cursors: list[_Cursor] = []
    try:
        cursors.extend(_Cursor(root, s, schema) for s in sources)
        for start in range(0, len(source_of), batch_rows):
            for index in np.flatnonzero(last_use < start):
                cursors[index].close()  # done with: its row groups go
            picked_source = source_of[start : start + batch_rows]
            picked_row = row_of[start : start + batch_rows]
            present = np.unique(picked_source)
            if len(present) == 1:
                yield cursors[present[0]].take(picked_row, monotone[present[0]])
                continue
            pieces, positions = [], []
            for index in present:
                where = np.flatnonzero(picked_source == index)
                pieces.append(cursors[index].take(picked_row[where], monotone[index]))
                positions.append(where)
            table = pa.concat_tables(pieces)
            inverse = np.empty(len(picked_source), dtype=np.int64)
            inverse[np.concatenate(positions)] = np.arange(len(picked_source))
            yield table.take(inverse)
    finally:
        for cursor in cursors:
            cursor.close()


def _source_ids(root: Root, source: Source) -> pa.Array:
    if source.table is not None:
        return source.table["id"].combine_chunks()
    return read_columns(root, source.rel, ["id"])["id"].combine_chunks()


def _is_sorted(ids: pa.Array) -> bool:
    """Strictly increasing: sorted, and each id once."""
    if len(ids) < 2:
        return True
    return bool(pc.all(pc.less(ids[:-1], ids[1:])).as_py())


def write_merged(
    root: Root,
    rel: str,
    sources: Sequence[Source],
    schema: pa.Schema,
    *,
    exclusive: bool,
    skip: Iterable[str] = (),
    names: Sequence[str] | None = None,
    metadata: dict[str, str] | None = None,
) -> tuple[int, int]:
    """Write the merged sources to `rel`, batch by batch through a local file, so only a few
    row groups are ever in memory; `names` renames the schema's columns. (rows, bytes)."""
    out_schema = pa.schema(
        [pa.field(n, f.type) for n, f in zip(names or schema.names, schema, strict=True)],
        metadata=metadata,
    )
    rows = 0
    with staged_file(root, rel, exclusive=exclusive) as path:
        with pq.ParquetWriter(path, out_schema, **WRITE_OPTIONS) as writer:
            for table in iter_merged(root, sources, schema, skip=skip):
                writer.write_table(pa.table(list(table.columns), schema=out_schema), ROW_GROUP_ROWS)
                rows += table.num_rows
        size = os.path.getsize(path)
    return rows, size


@contextlib.contextmanager
def staged_file(root: Root, rel: str, *, exclusive: bool) -> Iterator[str]:
    """A local path to write `rel` at; published when the block ends without an error. Local
    roots stage it under `.tmp/` and rename (or hard-link, for `exclusive`) it into place, as
    `Root` does; object stores upload it with one `put_file`, visible once complete."""
    if root.is_local:
        folder = root.path(TMP_DIR)
        root.call(
            "write", rel, lambda: root.fs.makedirs(root.path(posixpath.dirname(rel)), exist_ok=True)
        )
        root.call("write", rel, lambda: root.fs.makedirs(folder, exist_ok=True))
        path = f"{folder}/{uuid.uuid4().hex}-{posixpath.basename(rel)}"
        try:
            yield path
            publish = root.fs.link if exclusive else root.fs.mv
            root.call("publish", rel, lambda: publish(path, root.path(rel)))
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
        return
    with tempfile.TemporaryDirectory(prefix="pusa-batch-") as folder:
        path = f"{folder}/{posixpath.basename(rel)}"
        yield path
        if exclusive and root.size(rel) is not None:
            raise FileExistsError(root.where(rel))
        root.call("write", rel, lambda: root.fs.put_file(path, root.path(rel)))


def merge_sources(
    root: Root, parts: Sequence[Part], *, skip_unreadable: bool = False
) -> tuple[pa.Schema, list[Source]]:
    """The schema a merge of these parts has, and the parts as merge sources (an old part
    without final-index columns is rebuilt from its markers, in memory). An unreadable part
    raises `UnreadablePart`, or is left out with `skip_unreadable`."""
    schemas, sources = [], []
    for part in parts:
        try:
            schema = _schema_of(root, part.rel)
            if FLAT_PREFIX + NESTED_JSON in schema.names:
                source = Source(rel=part.rel)
            else:
                table = upgraded(read_columns(root, part.rel, ["marker_json", "marker_bytes"]))
                schema, source = table.schema, Source(part.rel, table)
        except UnreadablePart:
            if not skip_unreadable:
                raise
            continue
        schemas.append(schema)
        sources.append(source)
    return unified_schema([PART_SCHEMA, *schemas], PART_SCHEMA.names), sources


def upgraded(table: pa.Table) -> pa.Table:
    """An old part's rows in today's part form, rebuilt from their markers."""
    markers = [json.loads(text) for text in table["marker_json"].to_pylist()]
    return part_table(markers, table["marker_bytes"].to_pylist())


def _schema_of(root: Root, rel: str) -> pa.Schema:
    def read() -> pa.Schema:
        with root.fs.open(root.path(rel), "rb") as handle:
            return pq.ParquetFile(handle).schema_arrow

    try:
        schema = root.call("read", rel, read)
    except FileNotFoundError:
        raise
    except Exception:  # noqa: BLE001 - the whole bytes decide, as in read_columns
        return read_columns(root, rel, ["id"]).schema  # which checks the schema too
    check_part_schema(schema, root.where(rel))
    return schema


def final_columns(schema: pa.Schema) -> tuple[pa.Schema, list[str]]:
    """(the part columns the final index is made of, their names there) for parts of this
    schema: FLAT_FIRST, then the other scalar fields by name, then `nested_json`."""
    nested = FLAT_PREFIX + NESTED_JSON
    flat = sorted(n for n in schema.names if n.startswith(FLAT_PREFIX) and n != nested)
    read = [*FLAT_FIRST, *flat, nested]
    fields = [schema.field(n) if n in schema.names else pa.field(n, pa.string()) for n in read]
    return pa.schema(fields), [n.removeprefix(FLAT_PREFIX) for n in read]


# --------------------------------------------------------------------------- tiers


@dataclass(frozen=True)
class MergeResult:
    parts: int = 0  # parts merged away
    rows: int = 0  # rows the merges wrote
    bytes: int = 0  # bytes the merges wrote

    def __add__(self, other: MergeResult) -> MergeResult:
        return MergeResult(
            self.parts + other.parts, self.rows + other.rows, self.bytes + other.bytes
        )


def merge_tiers(root: Root, fanout: int = FANOUT, max_parts: int | None = None) -> MergeResult:
    """Merge every tier holding `fanout` parts or more into one part of the next tier, from
    tier 0 up; then, if more than `max_parts` parts are left, all of them into one."""
    parts = list_parts(root)
    done = MergeResult()
    tier = 0
    while parts and tier <= max(p.tier for p in parts):
        same = [p for p in parts if p.tier == tier]
        if len(same) >= fanout:
            new, result = merge(root, same, tier + 1, next_number(parts))
            parts = sorted([p for p in parts if p.tier != tier] + [new])
            done += result
        tier += 1
    if max_parts is not None and len(parts) > max_parts:
        _, result = merge(root, parts, max(p.tier for p in parts) + 1, next_number(parts))
        done += result
    return done


def merge(root: Root, parts: Sequence[Part], tier: int, number: int) -> tuple[Part, MergeResult]:
    """Write these parts as one part of `tier` numbered `number`, then delete them."""
    schema, sources = merge_sources(root, parts, skip_unreadable=True)
    new = Part(number, tier, f"{INDEX_DIR}/{part_name(number, tier)}")
    rows, size = write_merged(root, new.rel, sources, schema, exclusive=True)
    root.delete_many([s.rel for s in sources if s.rel is not None])  # unreadable ones stay
    return new, MergeResult(len(parts), rows, size)
