"""What every export shares: the done items of a root, destinations, copies and redaction.

Only done items are exported: their marker is listed by the store and their video has the size
the marker records (checked again here, one stat per item). Failed and orphaned items are left
out. Every destination is an fsspec URL or a local path, written through fsspec; input URLs
copied into metadata are redacted (user:password and query values become ``***``).

Local to local copies are hard links when both sit on one filesystem (a plain copy otherwise);
a hard link shares the video with the output root, so edit neither in place.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import fsspec
import pyarrow as pa

from pusa_batch.errors import ExportError
from pusa_batch.store.index import video_path
from pusa_batch.store.io import redact_text, redact_url
from pusa_batch.store.store import Store, layout_path_of

T = TypeVar("T")


R = TypeVar("R")


_WINDOW = 8  # videos read or copied at once


HF_SCHEMA = pa.schema(
    [
        ("file_name", pa.string()),
        ("id", pa.string()),
        ("prompt", pa.string()),
        ("negative_prompt", pa.string()),
        ("task", pa.string()),
        ("seed", pa.int64()),
        ("num_frames", pa.int64()),
        ("frames", pa.int64()),
        ("height", pa.int64()),
        ("width", pa.int64()),
        ("fps", pa.int64()),
        ("steps", pa.int64()),
        ("guidance_scale", pa.float64()),
        ("shift", pa.float64()),
        ("fit", pa.string()),
        ("input_image", pa.string()),
        ("input_images", pa.list_(pa.string())),
        ("input_video", pa.string()),
        ("input_video_b", pa.string()),
        ("cond_frames", pa.list_(pa.int64())),
        ("noise_multipliers", pa.list_(pa.float64())),
        ("cond_latent_indices", pa.list_(pa.int64())),
        ("cond_pixel_frames", pa.list_(pa.list_(pa.int64()))),
        ("cond_multipliers", pa.list_(pa.float64())),
        ("pipeline", pa.string()),
        ("pipeline_identity", pa.string()),
        ("fingerprint", pa.string()),
        ("video_bytes", pa.int64()),
        ("video_sha256", pa.string()),
        ("committed_at", pa.string()),
        ("sample_s", pa.float64()),
    ]
)

_ITEM_FIELDS = (
    "prompt negative_prompt task seed num_frames height width fps steps guidance_scale shift "
    "fit cond_frames noise_multipliers"
).split()


@dataclass(frozen=True)
class ExportSummary:
    format: str
    dest: str  # redacted URL or path
    exported: int
    bytes: int  # video bytes exported
    linked: int = 0  # videos hard-linked rather than copied
    skipped: tuple[str, ...] = ()  # ids listed as done whose video is missing or short
    files: tuple[str, ...] = ()  # metadata files or shards written, relative to dest
    prompts: int = 0  # distinct VBench file stems
    warnings: tuple[str, ...] = ()  # what the user should know before evaluating (VBench)


def item_fields(marker: dict) -> dict:
    """The manifest item of a marker or failure record (flat markers are read as they are)."""
    item = marker.get("item")
    return item if isinstance(item, dict) else marker


def item_record(marker: dict) -> dict:
    """Flat JSON-ready columns of one done item, in `HF_SCHEMA` order (without file_name)."""
    item = item_fields(marker)
    cond = marker.get("conditioning") or {}
    pipeline = marker.get("pipeline") or {}
    record: dict[str, Any] = {"id": marker["id"]}
    record.update({k: item.get(k) for k in _ITEM_FIELDS})
    record["frames"] = marker.get("frames")
    # `video` is the videofolder's own column (the decoded file): inputs get an `input_` prefix
    images = input_images(item)
    record["input_image"] = redact_text(images[0]) if len(images) == 1 else None
    record["input_images"] = [redact_text(p) for p in images]
    record["input_video"] = redact_text(item.get("video"))
    record["input_video_b"] = redact_text(item.get("video_b"))
    record["cond_latent_indices"] = cond.get("latent_indices")
    record["cond_pixel_frames"] = cond.get("pixel_frames")
    record["cond_multipliers"] = cond.get("multipliers")
    record["pipeline"] = pipeline.get("name") if isinstance(pipeline, dict) else pipeline
    record["pipeline_identity"] = pipeline.get("identity") if isinstance(pipeline, dict) else None
    for key in ("fingerprint", "video_bytes", "video_sha256", "committed_at"):
        record[key] = marker.get(key)
    record["sample_s"] = (marker.get("timings") or {}).get("sample")
    order = [n for n in HF_SCHEMA.names if n in record]
    return {k: record[k] for k in order}


def done_markers(store: Store) -> tuple[list[dict], tuple[str, ...]]:
    """Markers of the done items (sorted by id), and the ids recorded done whose files are
    missing or truncated: one read of the root's state, checked by listing (`Store.state`)."""
    state = store.state()
    markers = sorted(store.iter_done_metadata(state), key=lambda m: m["id"])
    return markers, tuple(sorted(state.damaged))


def ordered_map(fn: Callable[[T], R], items: Iterable[T], window: int = _WINDOW) -> Iterator[R]:
    """`map(fn, items)` on a few threads (storage calls), in order, with `window` in flight."""
    with ThreadPoolExecutor(window) as pool:
        pending: list = []
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= window:
                yield pending.pop(0).result()
        for future in pending:
            yield future.result()


@dataclass(frozen=True)
class Destination:
    """A folder (local or fsspec URL) that exports write into."""

    fs: Any
    root: str
    display: str
    is_local: bool

    def path(self, rel: str) -> str:
        return f"{self.root}/{rel}" if self.root else rel

    def write(self, rel: str, data: bytes) -> None:
        self.makedirs(os.path.dirname(rel))
        with self._writing(rel):
            self.fs.pipe_file(self.path(rel), data)

    def makedirs(self, rel_dir: str) -> None:
        if self.is_local:
            with self._writing(rel_dir):
                self.fs.makedirs(self.path(rel_dir) if rel_dir else self.root, exist_ok=True)

    @contextlib.contextmanager
    def _writing(self, rel: str) -> Iterator[None]:
        """A local write that fails (a read-only file system, no permission, a full disk) is an
        `ExportError` naming the file, not a traceback."""
        try:
            yield
        except OSError as exc:
            if not self.is_local:
                raise
            where = f"{self.display.rstrip('/')}/{rel}" if rel else self.display
            raise ExportError(
                f"cannot write {where}: {exc.strerror or exc}; give a destination you can write "
                "(export: --dest; gallery: --html PAGE)"
            ) from None


def open_destination(
    dest: str | os.PathLike, storage_options: dict | None, store: Store | None = None
) -> Destination:
    """The export folder; with `store`, one inside the run's own layout (`videos/`, `items/`,
    ...) is refused: the next run or a repair would mix or delete what is written there."""
    url = os.fspath(dest)
    if store is not None and store.root.is_local and "://" not in url:
        entry = layout_path_of(store.root.path(""), url)
        if entry is not None:
            raise ExportError(
                f"--dest {url} is inside the output root's own {entry}: the run keeps its "
                "files there. Give a folder outside it, or a new folder in the root"
            )
    try:
        fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
    except (ValueError, ImportError, TypeError) as exc:
        raise ExportError(
            f"cannot open the export destination {redact_url(url)} ({exc}); give a local folder "
            "or an fsspec URL such as s3://bucket/prefix with its storage options"
        ) from exc
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    is_local = bool({"file", "local"} & set(protocols))
    if is_local and os.path.exists(root) and not os.path.isdir(root):
        raise ExportError(f"--dest {redact_url(url)} is a file: give a folder (new or empty)")
    dest_obj = Destination(fs, root.rstrip("/"), redact_url(url), is_local)
    try:
        if is_local:
            fs.makedirs(dest_obj.root, exist_ok=True)
    except OSError as exc:  # a file on the way (NotADirectoryError), no permission, ...
        raise ExportError(
            f"cannot create the export destination {redact_url(url)}: {exc.strerror or exc}; "
            "give a folder you can write (new or empty)"
        ) from None
    return dest_obj


def copy_video(store: Store, item_id: str, dest: Destination, rel: str) -> bool:
    """Copy (or hard-link) one video; True when it was linked."""
    dest.makedirs(os.path.dirname(rel))
    target = dest.path(rel)
    if store.root.is_local and dest.is_local:
        source = store.root.path(video_path(item_id))
        if os.path.exists(target) and os.path.samefile(source, target):
            return True
        try:
            if os.path.lexists(target):
                os.remove(target)
            os.link(source, target)
            return True
        except OSError:
            pass  # another filesystem, or no hard links here: copy instead
    with store.open_video(item_id) as src, dest.fs.open(target, "wb") as out:
        shutil.copyfileobj(src, out, 1 << 20)
    return False


def copy_all(store: Store, dest: Destination, pairs: list[tuple[dict, str]]) -> int:
    """Copy each (marker, relative target); return how many were hard links."""
    linked = ordered_map(lambda p: copy_video(store, p[0]["id"], dest, p[1]), pairs)
    return sum(1 for was_linked in linked if was_linked)


def jsonl_bytes(rows: Iterable[dict]) -> bytes:
    return b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in rows)


def input_images(item: dict) -> list[str]:
    """The item's input images; a record from before 0.2 may name its one image as `image`."""
    images = list(item.get("images") or [])
    return images or ([item["image"]] if item.get("image") else [])
