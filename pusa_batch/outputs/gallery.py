"""One static HTML page for looking at a run: every done and failed item of an output root.

The page (`gallery_html`) is self-contained: inline CSS, JS and SVG, no network but the media.
It opens with a summary (counts, wall time, items per minute, time per item by stage), then
filters (status, task, seed, pipeline, each swept column, a text search), then the cards grouped
by prompt or by sweep base id (`gallery_cards`), seeds or grid values side by side. Each card's
title is its prompt, its id the subtitle.

Next to the page, in ``{page stem}_files/``, sit the poster frames (``posters/{id}.png``, first
frame, at most 320 px) and thumbnails of the local conditioning inputs (``inputs/{id}-{n}.png``).
Videos are not copied: a video's URL is ``videos/{id}.mp4`` relative to the page when the page
sits in the output root (the default), else ``video_base`` + that path when given, else the
video's own URL (``file://`` for a local root; an ``s3://`` URL is shown but no browser plays
it: pass ``video_base``). Media load lazily, when a card comes into view.

All user text (prompts, ids, paths, error messages) is HTML-escaped; URLs in it are redacted.
"""

from __future__ import annotations

import io
import os
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from PIL import Image, ImageOps

from pusa_batch.errors import ExportError, InputMediaError
from pusa_batch.outputs.common import (
    Destination,
    input_images,
    item_fields,
    open_destination,
    ordered_map,
    redact_text,
)
from pusa_batch.outputs.gallery_cards import GROUPINGS, Card, pipeline_label, resolve_grouping
from pusa_batch.outputs.gallery_html import render_page
from pusa_batch.store.index import video_path
from pusa_batch.store.io import redact_url
from pusa_batch.store.store import Store
from pusa_batch.video import poster_frame_png, to_rgb

DEFAULT_PAGE = "gallery.html"
POSTER_PX = 320
INPUT_PX = 160


@dataclass(frozen=True)
class GallerySummary:
    page: str  # where the page was written (redacted URL or path)
    done: int
    failed: int
    posters: int
    input_thumbnails: int
    grouping: str = "prompt"  # what the cards were grouped by ("auto" resolved)


@dataclass(frozen=True)
class _Page:
    folder: Destination
    name: str
    in_root: bool

    @property
    def assets(self) -> str:
        return f"{posixpath.splitext(self.name)[0]}_files"


def write_gallery(
    store: Store,
    dest: str | os.PathLike | None = None,
    *,
    storage_options: dict | None = None,
    video_base: str | None = None,
    group_by: str = "auto",
) -> GallerySummary:
    """Write the gallery page (default: ``gallery.html`` inside the output root).

    ``group_by``: ``prompt`` (seeds side by side), ``base`` (a sweep's grid points side by
    side), ``none``, or ``auto`` (``base`` when some item came from a sweep, else ``prompt``).
    A root that does not exist is an `ExportError`, and nothing is written."""
    if group_by not in GROUPINGS:
        raise ExportError(
            f"cannot group the gallery by {group_by!r}: choose one of {', '.join(GROUPINGS)}"
        )
    check_root_exists(store)
    page = _page(store, dest, storage_options)
    state = store.state()
    markers = sorted(store.iter_done_metadata(state), key=lambda m: m["id"])
    failures = list(store.iter_failures(state))
    posters = list(ordered_map(lambda m: _write_poster(store, page, m["id"]), markers))
    cards = [
        _done_card(m, _video_src(store, page, m["id"], video_base), poster, page)
        for m, poster in zip(markers, posters, strict=True)
    ]
    cards += [_failed_card(f, page) for f in failures]
    text = render_page(
        cards, title=f"pusa-batch: {store.url}", group_by=group_by, damaged=len(state.damaged)
    )
    page.folder.write(page.name, text.encode())
    return GallerySummary(
        page=f"{page.folder.display.rstrip('/')}/{page.name}",
        done=len(markers),
        failed=len(failures),
        posters=sum(1 for p in posters if p),
        input_thumbnails=sum(1 for c in cards for src, _ in c.inputs if src),
        grouping=resolve_grouping(group_by, cards),
    )


def check_root_exists(store: Store) -> None:
    """A gallery of a root that is not there would create it: refuse, naming the fix."""
    root = store.root
    exists = root.call("stat", "", lambda: root.fs.exists(root.root)) if root.root else True
    if not exists:
        raise ExportError(
            f"the output root {store.url} does not exist, so there is no run to show. Give the "
            f"folder a run wrote (the -o of `pusa-batch run`), or run into it first: "
            f"pusa-batch run MANIFEST -o {store.url} --pipeline PIPELINE.toml"
        )


def _done_card(marker: dict, video_src: str, poster: str | None, page: _Page) -> Card:
    item = item_fields(marker)
    return Card(
        item_id=marker["id"],
        status="done",
        item=item,
        video_src=video_src,
        poster_src=poster,
        conditioning=marker.get("conditioning") or {},
        inputs=_input_thumbnails(page, marker["id"], item),
        pipeline=pipeline_label(marker.get("pipeline")),
        timings=_of_type(marker.get("timings"), dict, {}),
        committed_at=_of_type(marker.get("committed_at"), str, None),
        sample_batch=_of_type(marker.get("sample_batch"), int, 1),
    )


def _of_type(value: object, kind: type, default: object) -> Any:
    """A marker field as recorded, or `default` when an older or damaged record lacks it."""
    return value if isinstance(value, kind) and not isinstance(value, bool) else default


def _failed_card(failure: dict, page: _Page) -> Card:
    item = item_fields(failure) if isinstance(failure.get("item"), dict) else {}
    return Card(
        item_id=failure["id"],
        status="failed",
        item=item,
        inputs=_input_thumbnails(page, failure["id"], item),
        failure=failure,
        pipeline=pipeline_label(failure.get("pipeline")),
    )


# --------------------------------------------------------------------------- files


def _page(store: Store, dest: str | os.PathLike | None, storage_options: dict | None) -> _Page:
    if dest is None:
        folder = Destination(store.root.fs, store.root.root, store.url, store.root.is_local)
        return _Page(folder, DEFAULT_PAGE, in_root=True)
    url = os.fspath(dest)
    if "://" not in url and os.path.isdir(url):  # a folder: the page goes inside it
        url = os.path.join(url, DEFAULT_PAGE)
    parent, name = posixpath.split(url.replace(os.sep, "/") if "://" not in url else url)
    folder = open_destination(parent or ".", storage_options, store)
    same_fs = type(folder.fs) is type(store.root.fs)
    return _Page(folder, name or DEFAULT_PAGE, same_fs and folder.root == store.root.root)


def _src(rel: str) -> str:
    return quote(rel, safe="/")


def _video_src(store: Store, page: _Page, item_id: str, video_base: str | None) -> str:
    rel = video_path(item_id)
    if page.in_root:
        return _src(rel)
    if video_base:
        return f"{video_base.rstrip('/')}/{_src(rel)}"
    if store.root.is_local:
        return Path(store.root.path(rel)).resolve().as_uri()
    return redact_url(store.video_url(item_id))


def _png(image: Image.Image, size: int) -> bytes:
    image = to_rgb(ImageOps.exif_transpose(image))
    image.thumbnail((size, size))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def _write_poster(store: Store, page: _Page, item_id: str) -> str | None:
    """The first frame as a small PNG beside the page; None when the video cannot be decoded
    (the card then shows a plain placeholder until the video itself loads)."""
    try:
        with store.open_video(item_id) as handle:
            first = poster_frame_png(handle.read())
    except InputMediaError:
        return None
    rel = f"{page.assets}/posters/{item_id}.png"
    page.folder.write(rel, _png(Image.open(io.BytesIO(first)), POSTER_PX))
    return _src(rel)


def _is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


def _thumbnail(path: str) -> bytes | None:
    """A small PNG of a local input image or of a local input video's first frame."""
    local = path.removeprefix("file://")
    try:
        with open(local, "rb") as handle:
            data = handle.read()
        try:
            image = Image.open(io.BytesIO(data))
            image.load()
        except (OSError, Image.DecompressionBombError):
            image = Image.open(io.BytesIO(poster_frame_png(data)))
        return _png(image, INPUT_PX)
    except (OSError, InputMediaError, ValueError):
        return None


def _input_thumbnails(page: _Page, item_id: str, item: dict) -> tuple[tuple[str | None, str], ...]:
    paths = [*input_images(item), item.get("video"), item.get("video_b")]
    out = []
    for n, path in enumerate(p for p in paths if p):
        src = None
        if _is_local(str(path)):
            data = _thumbnail(str(path))
            if data is not None:
                rel = f"{page.assets}/inputs/{item_id}-{n}.png"
                page.folder.write(rel, data)
                src = _src(rel)
        out.append((src, redact_text(str(path)) or ""))
    return tuple(out)
