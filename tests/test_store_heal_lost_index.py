"""Index parts lost (some, all, or the whole `index/`) while markers and videos remain: done
items are found again from their markers, from the one listing of `videos/` the verification
takes anyway, and indexed again; never regenerated."""

from __future__ import annotations

import shutil
import uuid

import pytest
from conftest import BUCKET
from store_support import planned

from pusa_batch.store.store import Store

IDS = ("a", "b", "c")


def committed(url: str, storage_options: dict | None = None) -> Store:
    """a, b, c compacted into one part; d committed since (only in recent/)."""
    store = Store(url, storage_options)
    for item_id in IDS:
        store.commit(item_id, b"video " + item_id.encode(), {"fingerprint": "f"})
    store.compact_index()
    store.commit("d", b"video d", {"fingerprint": "f"})
    return store


def drop_parts(store: Store) -> None:
    for name in store.root.list_names("index"):
        store.root.delete(f"index/{name}")


@pytest.fixture
def root(tmp_path) -> Store:
    return committed(str(tmp_path / "out"))


def entries(*ids: str) -> list[tuple[str, str]]:
    return [(item_id, "f") for item_id in ids]


def test_items_of_deleted_parts_are_planned_done_not_regenerated(root):
    drop_parts(root)
    plan = planned(root, entries(*IDS, "d"))
    assert plan.done == (*IDS, "d") and plan.pending == ()


def test_a_deleted_index_folder_loses_no_done_item(root, tmp_path):
    shutil.rmtree(tmp_path / "out" / "index")
    state = root.state()
    assert state.done_ids() == {*IDS, "d"} and state.damaged == {}


def test_healing_indexes_the_found_items_again_as_a_new_part(root):
    drop_parts(root)
    notice = root.heal_index(root.state())
    assert (
        notice == "3 done item(s) found again from their markers: the index had lost them; "
        "indexed them again"
    )
    again = root.state()
    assert again.rebuilt == {} and again.done_ids() == {*IDS, "d"}


def test_a_video_whose_marker_names_another_size_is_not_done(root, tmp_path):
    drop_parts(root)
    (tmp_path / "out" / "videos" / "b.mp4").write_bytes(b"short")
    assert planned(root, entries(*IDS)).pending == ("b",)


def test_an_orphan_video_without_a_marker_is_not_done(root, tmp_path):
    (tmp_path / "out" / "videos" / "z.mp4").write_bytes(b"half written")
    assert planned(root, entries("z")).pending == ("z",)


def test_exports_list_each_found_item_once_after_healing(root):
    drop_parts(root)
    state = root.state()
    root.heal_index(state)
    assert sorted(m["id"] for m in root.iter_done_metadata(state)) == [*IDS, "d"]


def test_on_s3_the_items_of_deleted_parts_are_found_again(s3):
    store = committed(f"s3://{BUCKET}/{uuid.uuid4().hex[:10]}", s3.storage_options)
    drop_parts(store)
    assert planned(store, entries(*IDS, "d")).done == (*IDS, "d")
