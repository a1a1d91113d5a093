"""Corrupted state, the pieces `benchmarks/faults/corrupted_state.py` found no other test for.

The rest of that script's faults have their short forms elsewhere: a deleted or truncated video
and a truncated marker (`test_store_damage.py`, `test_cli_resume_damaged.py`), a corrupt index
part and `.tmp/` leftovers (`test_store_heal.py`), symlinked layout folders
(`test_store_layout.py`).
"""

from __future__ import annotations

from pusa_batch.store.store import Store


def test_a_half_written_video_left_under_videos_is_removed_with_the_other_temp_files(tmp_path):
    store = Store(str(tmp_path / "out"))
    store.commit("a", b"video a", {"fingerprint": "f"})
    leftover = tmp_path / "out" / "videos" / "b.mp4.tmp"
    leftover.write_bytes(b"half a video")
    store.clean_temp()
    assert not leftover.exists()
    assert (tmp_path / "out" / "videos" / "a.mp4").read_bytes() == b"video a"
