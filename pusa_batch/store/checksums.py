"""Done videos against their recorded sha256, and markers against the index's copy: what finds a
video overwritten with as many bytes, or a marker swapped for another of the same size (sizes
alone cannot). Every video and marker is read whole, so it runs only when asked (`verify
--checksums`): two reads per done item, eight at a time."""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

from pusa_batch.store.index import marker_path, video_path
from pusa_batch.store.io import Root

OVERWRITTEN = "video's sha256 differs from the recorded one (overwritten)"
REPLACED = "marker is not the one the index recorded (another item's copied over it?)"
_BLOCK = 1 << 20


def checksum_damage(root: Root, markers: Iterable[dict]) -> dict[str, str]:
    """id -> what is wrong, for the index's markers whose video's sha256 is not the one they
    record (a marker without one, or a video that is gone, is left to the size check), or whose
    marker file is not theirs (another item's or another commit's JSON copied over it)."""
    markers = list(markers)
    damage = dict(
        zip((m["id"] for m in markers), _pool().map(lambda m: _marker_damage(root, m), markers))
    )
    recorded = [m for m in markers if m.get("video_sha256")]
    found = _pool().map(lambda m: video_sha256(root, m["id"]), recorded)
    for m, digest in zip(recorded, found, strict=True):
        if digest is not None and digest != m["video_sha256"]:
            damage[m["id"]] = OVERWRITTEN
    return {item_id: why for item_id, why in damage.items() if why}


def _marker_damage(root: Root, indexed: dict) -> str | None:
    """The marker file against the index's copy of it: same id and commit, or what differs."""
    try:
        marker = json.loads(root.read_bytes(marker_path(indexed["id"])))
    except (FileNotFoundError, ValueError):
        return None  # missing or torn: the listing's check names it
    if not isinstance(marker, dict):
        return None
    for key in ("id", "commit_token"):
        if key in indexed and marker.get(key) != indexed[key]:
            found, expected = str(marker.get(key))[:40], str(indexed[key])[:40]
            return f"{REPLACED} ({key} {found!r}, the index has {expected!r})"
    return None


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
