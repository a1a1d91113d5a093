"""A full disk: an output root on a small tmpfs, filled up before a commit.

The short form of `benchmarks/faults/full_disk.py`, which fills the disk under a whole CLI run.
The commit that cannot be written fails with the disk-full cause (not "unreachable"), nothing
half-written counts as done or is left under `videos/`, and once space is freed the same commit
goes through. Mounting needs root (or CAP_SYS_ADMIN): elsewhere the tests skip, saying so.
"""

from __future__ import annotations

import subprocess

import pytest

from pusa_batch.errors import StoreError
from pusa_batch.store.store import Store

VIDEO = b"\x00\x00\x00\x18ftypmp42" + bytes(200_000)


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}); needs root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def fill(disk, leave_bytes: int):
    """A filler file that leaves about `leave_bytes` free on `disk`."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while f.write(bytes(4096)):
                pass
        except OSError:  # ENOSPC: the disk is full
            pass
    free = filler.stat().st_size
    with open(filler, "r+b") as f:
        f.truncate(max(0, free - leave_bytes))
    return filler


@pytest.fixture
def full_root(small_disk):
    store = Store(str(small_disk / "out"))
    store.commit("a", VIDEO[:5000], {"fingerprint": "f"})
    filler = fill(small_disk, leave_bytes=50_000)
    with pytest.raises(StoreError) as raised:
        store.commit("b", VIDEO, {"fingerprint": "f"})
    return store, small_disk / "out", filler, str(raised.value)


def test_a_commit_on_a_full_disk_fails_naming_the_full_disk(full_root):
    _, _, _, message = full_root
    assert "the disk is full" in message
    assert "unreachable" not in message and "cannot be reached" not in message


def test_nothing_half_written_counts_as_done_or_stays_under_videos(full_root):
    store, out, _, _ = full_root
    state = store.state()
    assert store.status_counts(state)["done"] == 1 and not state.damaged
    assert sorted(p.name for p in (out / "videos").iterdir()) == ["a.mp4"]


def test_the_same_commit_after_freeing_space_completes(full_root):
    store, _, filler, _ = full_root
    filler.unlink()
    store.commit("b", VIDEO, {"fingerprint": "f"})
    state = store.state()
    assert store.status_counts(state)["done"] == 2 and not state.damaged
