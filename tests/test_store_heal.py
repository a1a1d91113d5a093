"""A corrupt index part costs a rebuild from the markers, never a traceback or a mass
regeneration; temporary files of dead writers are cleaned up by the next lease holder."""

from __future__ import annotations

import pytest

from pusa_batch.store.store import Store


@pytest.fixture
def root(tmp_path) -> Store:
    store = Store(str(tmp_path / "out"))
    for item_id in ("a", "b", "c"):
        store.commit(item_id, b"video " + item_id.encode(), {"fingerprint": "f"})
    store.compact_index()
    store.commit("d", b"video d", {"fingerprint": "f"})
    return store


def corrupt_the_part(store: Store) -> str:
    [part] = store.root.list_names("index")
    store.root.write_bytes(f"index/{part}", b"PAR1 garbage")
    return part


def test_a_corrupt_part_is_reported_and_its_items_are_found_from_their_markers(root):
    part = corrupt_the_part(root)
    state = root.state()
    assert state.corrupt_parts == [f"index/{part}"]
    assert state.done_ids() == {"a", "b", "c", "d"} and state.damaged == {}


def test_healing_quarantines_the_part_and_indexes_the_markers_again(root):
    part = corrupt_the_part(root)
    notice = root.heal_index(root.state())
    assert "1 unreadable index part(s) moved to index/quarantine/" in notice
    assert "3 done item(s) found again" in notice
    assert root.root.read_bytes(f"index/quarantine/{part}") == b"PAR1 garbage"
    state = root.state()
    assert state.corrupt_parts == [] and state.rebuilt == {}
    assert state.done_ids() == {"a", "b", "c", "d"}


def test_exports_and_the_final_index_read_past_a_corrupt_part(root):
    corrupt_the_part(root)
    assert sorted(m["id"] for m in root.iter_done_metadata()) == ["a", "b", "c", "d"]
    assert root.write_final_index() == 4


def test_a_marker_whose_video_is_gone_is_not_rebuilt_as_done(root):
    corrupt_the_part(root)
    root.root.delete("videos/b.mp4")
    assert root.state().done_ids() == {"a", "c", "d"}


def test_temporary_files_of_a_dead_writer_are_removed(root, tmp_path):
    leftover = tmp_path / "out" / ".tmp" / "deadbeef-a.mp4"
    leftover.write_bytes(b"half a video")
    assert root.clean_temp() == 1 and not leftover.exists()
