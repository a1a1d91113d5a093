"""The index in tiers: compactions write tier-0 parts, FANOUT parts of a tier merge into one of
the next, the final index is merged from the parts' columns and not written again when nothing
changed."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from store_support import planned
from test_store_fswrap import CountingFS

from pusa_batch.store.index import INDEX_DIR, read_state
from pusa_batch.store.parts import FANOUT, PART_SCHEMA, list_parts, table_bytes
from pusa_batch.store.store import Store


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(str(tmp_path / "out"))


def commit_and_compact(store: Store, ids: list[str], fingerprint: str = "f") -> None:
    for item_id in ids:
        store.commit(item_id, f"video of {item_id}".encode(), {"fingerprint": fingerprint})
    store.compact_index()


def tiers(store: Store) -> list[int]:
    return sorted(p.tier for p in list_parts(store.root))


def final_index(store: Store):
    return pq.read_table(store.root.fs.open(store.root.path("index.parquet")))


def test_each_compaction_writes_a_tier_0_part(store):
    for n in range(FANOUT - 1):
        commit_and_compact(store, [f"i{n}"])
    assert tiers(store) == [0] * (FANOUT - 1)


def test_fanout_parts_of_tier_0_become_one_part_of_tier_1(store):
    for n in range(FANOUT):
        commit_and_compact(store, [f"i{n}"])
    assert tiers(store) == [1]
    assert planned(store, [(f"i{n}", "f") for n in range(FANOUT)]).done == tuple(
        f"i{n}" for n in range(FANOUT)
    )


def test_tiers_count_compactions_like_a_base_fanout_counter(store):
    compactions = FANOUT**2 + FANOUT + 1  # one part of tier 2, one of tier 1, one of tier 0
    for n in range(compactions):
        commit_and_compact(store, [f"i{n:03d}"])
    assert tiers(store) == [0, 1, 2]


def test_an_item_is_rewritten_once_per_tier_it_climbs(store):
    rewritten = 0
    for n in range(FANOUT**3):
        store.commit(f"i{n:03d}", b"v", {"fingerprint": "f"})
        rewritten += store.compact_index().rewritten_rows
    assert tiers(store) == [3]
    assert rewritten == 3 * FANOUT**3  # each of the 64 items: tier 1, 2 and 3


def test_the_final_index_lists_every_done_id_once_after_many_compactions(store):
    ids = [f"i{n:03d}" for n in range(50)]
    for start in range(0, len(ids), 3):
        commit_and_compact(store, ids[start : start + 3])
    commit_and_compact(store, ["i007", "i042"], fingerprint="again")  # made again: latest wins
    store.commit("late", b"v", {"fingerprint": "f"})  # not compacted yet
    assert store.write_final_index() == 51
    table = final_index(store)
    assert table["id"].to_pylist() == sorted([*ids, "late"])
    fingerprints = dict(zip(table["id"].to_pylist(), table["fingerprint"].to_pylist()))
    assert fingerprints["i007"] == fingerprints["i042"] == "again" and fingerprints["i000"] == "f"


def test_the_final_index_is_not_written_again_when_nothing_changed(store, tmp_path):
    commit_and_compact(store, ["a", "b"])
    store.write_final_index()
    counting = Store(str(tmp_path / "out"), filesystem=CountingFS(store.root.fs))
    assert counting.write_final_index() == 2
    writes = counting.root.fs.calls["pipe_file"] + counting.root.fs.calls["mv"]
    assert writes == 0


def test_a_commit_since_the_final_index_writes_it_again(store):
    commit_and_compact(store, ["a", "b"])
    store.write_final_index()
    store.commit("c", b"v", {"fingerprint": "f"})
    assert store.write_final_index() == 3
    assert final_index(store)["id"].to_pylist() == ["a", "b", "c"]


def test_a_damaged_item_leaves_the_final_index(store):
    commit_and_compact(store, ["a", "b"])
    store.root.delete("videos/a.mp4")
    assert store.write_final_index() == 1
    assert final_index(store)["id"].to_pylist() == ["b"]


def test_a_runs_state_rechecks_only_the_items_it_found_damaged(store):
    commit_and_compact(store, ["a", "b", "c"])
    store.root.delete("videos/a.mp4")
    store.root.delete("videos/b.mp4")
    state = store.state()
    commit_and_compact(store, ["a"])  # the run made "a" again; "b" failed
    assert store.write_final_index(state) == 2
    assert final_index(store)["id"].to_pylist() == ["a", "c"]


OLD_COLUMNS = ["id", "fingerprint", "video", "video_bytes", "video_sha256", "committed_at"]


def old_part(markers: list[dict]) -> bytes:
    """A part as versions before the tiers wrote it: these columns, then the marker's size and
    the marker, in this order, and nothing of the final index."""
    columns = {n: [m.get(n) for m in markers] for n in [*OLD_COLUMNS, "commit_token"]}
    columns["marker_bytes"] = [None] * len(markers)
    columns["marker_json"] = [json.dumps(m, sort_keys=True) for m in markers]
    schema = pa.schema([PART_SCHEMA.field(n) for n in columns])
    return table_bytes(pa.table(columns, schema=schema))


def test_a_part_written_by_an_older_version_is_read_merged_and_indexed(store):
    store.commit("new", b"v", {"fingerprint": "f", "seed": 2})
    marker = dict(store.read_item("new"), id="old", video="videos/old.mp4", seed=1)
    store.root.write_bytes("videos/old.mp4", b"v")
    store.root.write_bytes("items/old.json", json.dumps(marker).encode())
    store.root.write_bytes(f"{INDEX_DIR}/part-000001.parquet", old_part([marker]))
    for n in range(FANOUT - 1):
        commit_and_compact(store, [f"i{n}"])
    assert tiers(store) == [1]
    assert "old" in read_state(store.root).done_ids()
    store.write_final_index()
    table = final_index(store)
    assert table["id"].to_pylist() == ["i0", "i1", "i2", "new", "old"]
    assert dict(zip(table["id"].to_pylist(), table["seed"].to_pylist()))["old"] == 1
