"""Done videos against their recorded sha256: what finds a video overwritten with as many bytes
(sizes alone cannot). Every video is read whole, so it runs only when asked (`verify
--checksums`): one read per done item, eight at a time."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

from pusa_batch.store.index import video_path
from pusa_batch.store.io import Root

OVERWRITTEN = "video's sha256 differs from the recorded one (overwritten)"
_BLOCK = 1 << 20


def checksum_damage(root: Root, markers: Iterable[dict]) -> dict[str, str]:
    """id -> OVERWRITTEN, for the markers whose video's sha256 is not the one they record (a
    marker without one, or a video that is gone, is left to the size check)."""
    recorded = [m for m in markers if m.get("video_sha256")]
    found = _pool().map(lambda m: video_sha256(root, m["id"]), recorded)
    return {
        m["id"]: OVERWRITTEN
        for m, digest in zip(recorded, found, strict=True)
        if digest is not None and digest != m["video_sha256"]
    }


def video_sha256(root: Root, item_id: str) -> str | None:
    """The video's sha256, read in 1 MiB blocks; None if it is gone."""
    digest = hashlib.sha256()
    try:
        with root.open_read(video_path(item_id)) as handle:
            while block := handle.read(_BLOCK):
                digest.update(block)
    except FileNotFoundError:
        return None
    return digest.hexdigest()


@functools.cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=8, thread_name_prefix="pusa-sha256")
