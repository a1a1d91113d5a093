"""Done items are checked against their files: a missing or truncated video or marker is damage,
found by one listing of `videos/` and `items/`, never trusted as done."""

from __future__ import annotations

import os

import pytest

from pusa_batch.engine.plan import ItemKind, classify
from pusa_batch.store.store import Store


@pytest.fixture
def root(tmp_path) -> Store:
    """Three committed items, compacted into the index, and one committed since."""
    store = Store(str(tmp_path / "out"))
    for item_id in ("a", "b", "c"):
        store.commit(item_id, f"video {item_id}".encode() * 10, {"fingerprint": "f"})
    store.compact_index()
    store.commit("d", b"video d" * 10, {"fingerprint": "f"})
    return store


def truncate(store: Store, rel: str) -> None:
    data = store.root.read_bytes(rel)
    store.root.write_bytes(rel, data[: len(data) // 2])


def test_whole_items_are_done_and_nothing_is_damaged(root):
    state = root.state()
    assert state.done_ids() == {"a", "b", "c", "d"} and state.damaged == {}


def test_a_deleted_video_is_damage_not_done(root):
    root.root.delete("videos/a.mp4")
    state = root.state()
    assert state.damaged == {"a": "video missing"}
    assert classify(state, "a", "f") is ItemKind.DAMAGED and "a" not in state.done_ids()


def test_a_truncated_video_is_damage_with_its_sizes(root):
    truncate(root, "videos/b.mp4")
    assert root.state().damaged == {"b": "video is 35 bytes, 70 recorded"}


def test_a_truncated_marker_of_an_indexed_item_is_damage(root):
    truncate(root, "items/c.json")
    assert root.state().damaged["c"].startswith("marker is ")


def test_a_deleted_marker_of_an_indexed_item_is_damage(root):
    root.root.delete("items/c.json")
    assert root.state().damaged == {"c": "marker missing"}


def test_a_truncated_marker_of_a_recent_item_is_not_done_and_not_a_crash(root):
    truncate(root, "items/d.json")
    state = root.state()
    assert "d" not in state.done_ids() and classify(state, "d", "f") is ItemKind.PENDING


def test_trusting_the_index_skips_the_check(root):
    root.root.delete("videos/a.mp4")
    state = root.state(verify=False)
    assert state.damaged == {} and "a" in state.done_ids()


def test_checking_costs_one_listing_each_of_videos_and_items(root, monkeypatch):
    listed: list[str] = []
    real = root.root.list_suffixed
    monkeypatch.setattr(
        root.root, "list_suffixed", lambda rel, suffix: listed.append(rel) or real(rel, suffix)
    )
    root.state()
    assert sorted(listed) == ["items", "videos"]


def test_a_video_removed_while_the_folder_is_listed_is_missing_and_the_rest_are_whole(
    root, monkeypatch
):
    real_listdir = os.listdir

    def listdir_then_remove(folder):
        names = real_listdir(folder)
        if "a.mp4" in names:
            os.unlink("a.mp4", dir_fd=folder)  # gone between the listing and its stat
        return names

    monkeypatch.setattr(os, "listdir", listdir_then_remove)
    state = root.state()
    assert state.damaged == {"a": "video missing"}
    assert state.done_ids() == {"b", "c", "d"}


def test_a_symlinked_video_counts_by_its_target_and_a_dangling_one_as_missing(root):
    folder = root.root.path("videos")
    os.replace(f"{folder}/a.mp4", f"{folder}/../a-target.mp4")
    os.symlink("../a-target.mp4", f"{folder}/a.mp4")
    os.remove(f"{folder}/b.mp4")
    os.symlink("../nowhere.mp4", f"{folder}/b.mp4")
    assert root.state().damaged == {"b": "video missing"}


def test_repair_restores_a_marker_whose_video_is_whole_and_removes_a_broken_video(root):
    marker = root.root.read_bytes("items/c.json")
    truncate(root, "items/c.json")
    truncate(root, "videos/b.mp4")
    outcome = root.repair(root.state())
    assert outcome == {
        "b": "removed; the next run makes it again",
        "c": "marker restored from the index",
    }
    assert root.root.read_bytes("items/c.json") == marker
    assert root.state().damaged == {"b": "video missing"}


def test_damaged_items_are_left_out_of_the_done_metadata(root):
    root.root.delete("videos/a.mp4")
    assert sorted(m["id"] for m in root.iter_done_metadata()) == ["b", "c", "d"]


def test_an_emptied_marker_of_an_item_the_index_lost_is_damage(root):
    import shutil

    top = root.root.path("")
    shutil.rmtree(f"{top}/index")
    with open(f"{top}/items/a.json", "w"):
        pass  # emptied
    state = root.state()
    assert state.damaged == {"a": "marker is unreadable (0 bytes) and the index lost the item"}
    assert classify(state, "a", "f") is ItemKind.DAMAGED
    assert {"b", "c", "d"} <= state.done_ids() and "a" not in state.done_ids()
