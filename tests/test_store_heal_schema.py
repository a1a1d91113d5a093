"""An index part that is valid Parquet of another schema, or with a state column of another
type, is quarantined like a corrupt one: no traceback, and its items are found from markers."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pusa_batch.store.store import Store

FOREIGN = {
    "another schema": pa.table({"x": [1, 2], "y": ["p", "q"]}),
    "an integer id column": pa.table(
        {"id": [1], "fingerprint": ["f"], "video_bytes": [7], "marker_json": ["{}"]}
    ),
}


@pytest.fixture
def root(tmp_path) -> Store:
    store = Store(str(tmp_path / "out"))
    for item_id in ("a", "b"):
        store.commit(item_id, b"video " + item_id.encode(), {"fingerprint": "f"})
    store.compact_index()
    return store


def add_foreign_part(store: Store, table: pa.Table) -> str:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    store.root.write_bytes("index/part-000009-t0.parquet", sink.getvalue())
    return "index/part-000009-t0.parquet"


@pytest.mark.parametrize("kind", sorted(FOREIGN))
def test_a_part_of_a_foreign_schema_is_counted_corrupt(root, kind):
    rel = add_foreign_part(root, FOREIGN[kind])
    state = root.state()
    assert state.corrupt_parts == [rel] and state.done_ids() == {"a", "b"}


def test_a_part_of_a_foreign_schema_is_moved_to_quarantine(root):
    add_foreign_part(root, FOREIGN["another schema"])
    root.heal_index(root.state())
    assert root.root.list_names("index/quarantine") == ["part-000009-t0.parquet"]
    assert root.state().corrupt_parts == []


def test_exports_and_the_final_index_read_past_a_foreign_part(root):
    add_foreign_part(root, FOREIGN["another schema"])
    assert sorted(m["id"] for m in root.iter_done_metadata()) == ["a", "b"]
    assert root.write_final_index() == 2
