"""One static HTML page showing every item of an output root: done ones and failed ones.

The page is self-contained (inline CSS and JS, no CDN). Next to it, in ``{page stem}_files/``,
sit the poster frames (``posters/{id}.png``, first frame, at most 320 px) and thumbnails of the
local conditioning inputs (``inputs/{id}-{n}.png``). Videos are not copied: the ``<video>``
source is ``videos/{id}.mp4`` relative to the page when the page sits in the output root (the
default), else ``video_base`` + that path when given, else the video's own URL (``file://`` for
a local root; an ``s3://`` URL is shown but no browser plays it: pass ``video_base``).

All user text (prompts, ids, paths, error messages) is HTML-escaped; URLs in it are redacted.
Once every video has fired ``loadeddata`` (or ``error``) and every image ``load`` (or ``error``),
an inline script sets ``data-media-total``, ``data-media-loaded``, ``data-media-errors`` and
``data-media-done="1"`` on ``<body>`` (``data-media-error-codes`` lists ``kind:code:id``), so a
headless browser can check the page.
"""

from __future__ import annotations

import html
import io
import os
import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from PIL import Image, ImageOps

from pusa_batch.errors import InputMediaError
from pusa_batch.outputs.common import (
    Destination,
    done_markers,
    input_images,
    item_fields,
    open_destination,
    ordered_map,
    redact_text,
)
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


@dataclass(frozen=True)
class Card:
    item_id: str
    status: str  # "done" or "failed"
    item: dict
    video_src: str | None = None
    poster_src: str | None = None
    conditioning: dict = field(default_factory=dict)
    inputs: tuple[tuple[str | None, str], ...] = ()  # (thumbnail src or None, label)
    failure: dict = field(default_factory=dict)


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
) -> GallerySummary:
    """Write the gallery page (default: ``gallery.html`` inside the output root)."""
    page = _page(store, dest, storage_options)
    markers, _ = done_markers(store)
    failures = list(store.iter_failures())
    posters = ordered_map(lambda m: _write_poster(store, page, m["id"]), markers)
    cards = [
        Card(
            item_id=m["id"],
            status="done",
            item=item_fields(m),
            video_src=_video_src(store, page, m["id"], video_base),
            poster_src=poster,
            conditioning=m.get("conditioning") or {},
            inputs=_input_thumbnails(page, m["id"], item_fields(m)),
        )
        for m, poster in zip(markers, posters, strict=True)
    ]
    cards += [
        Card(
            item_id=f["id"],
            status="failed",
            item=item_fields(f) if isinstance(f.get("item"), dict) else {},
            inputs=_input_thumbnails(page, f["id"], f.get("item") or {}),
            failure=f,
        )
        for f in failures
    ]
    cards.sort(key=lambda c: (c.item.get("row") or 0, c.item_id))
    page.folder.write(page.name, render_page(cards, title=f"pusa-batch: {store.url}").encode())
    return GallerySummary(
        page=f"{page.folder.display.rstrip('/')}/{page.name}",
        done=len(markers),
        failed=len(failures),
        posters=len(markers),
        input_thumbnails=sum(1 for c in cards for src, _ in c.inputs if src),
    )


# --------------------------------------------------------------------------- files


def _page(store: Store, dest: str | os.PathLike | None, storage_options: dict | None) -> _Page:
    if dest is None:
        folder = Destination(store.root.fs, store.root.root, store.url, store.root.is_local)
        return _Page(folder, DEFAULT_PAGE, in_root=True)
    url = os.fspath(dest)
    parent, name = posixpath.split(url.replace(os.sep, "/") if "://" not in url else url)
    folder = open_destination(parent or ".", storage_options)
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


def _write_poster(store: Store, page: _Page, item_id: str) -> str:
    with store.open_video(item_id) as handle:
        first = poster_frame_png(handle.read())
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


# --------------------------------------------------------------------------- HTML


def esc(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _conditioning_text(card: Card) -> str:
    cond = card.conditioning
    if cond:
        if not cond.get("pixel_frames"):
            return "none"
        pairs = zip(cond.get("pixel_frames", []), cond.get("multipliers", []), strict=False)
        return ", ".join(f"frames {list(f)} × {m}" for f, m in pairs)
    frames, mults = card.item.get("cond_frames"), card.item.get("noise_multipliers")
    if frames is None and mults is None:
        return "task default"
    return f"frames {frames or 'default'} × {mults or 'default'}"


def _facts(card: Card) -> str:
    item = card.item
    frames, fps = item.get("num_frames"), item.get("fps")
    size = f"{frames} × {item.get('height')}×{item.get('width')} @ {fps} fps"
    rows = [
        ("task", item.get("task")),
        ("seed", item.get("seed")),
        ("size", size),
        ("steps", f"{item.get('steps')} · cfg {item.get('guidance_scale')}"),
        ("conditioning", _conditioning_text(card)),
    ]
    return "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in rows)


def _media(card: Card) -> str:
    if card.status == "done":
        return (
            f'<video controls muted loop playsinline preload="metadata" '
            f'data-id="{esc(card.item_id)}" poster="{esc(card.poster_src)}" '
            f'src="{esc(card.video_src)}"></video>'
        )
    return f'<div class="no-video">{esc(card.failure.get("error_type") or "failed")}</div>'


def _inputs(card: Card) -> str:
    if not card.inputs:
        return ""
    figures = []
    for src, label in card.inputs:
        image = f'<img alt="input" src="{esc(src)}">' if src else '<div class="no-thumb"></div>'
        figures.append(f"<figure>{image}<figcaption>{esc(label)}</figcaption></figure>")
    return f'<div class="inputs">{"".join(figures)}</div>'


def _error(card: Card) -> str:
    if card.status != "failed":
        return ""
    f = card.failure
    detail = f"stage {f.get('stage')}, {f.get('attempts')} attempt(s)"
    return (
        f'<p class="error"><strong>{esc(f.get("error_type"))}</strong>: '
        f'{esc(redact_text(f.get("message")))}</p><p class="muted">{esc(detail)}</p>'
        f"<details><summary>traceback</summary><pre>{esc(redact_text(f.get('traceback')))}"
        "</pre></details>"
    )


def render_card(card: Card) -> str:
    return (
        f'<article class="card {esc(card.status)}" data-id="{esc(card.item_id)}" '
        f'data-task="{esc(card.item.get("task"))}" '
        f'data-status="{esc(card.status)}"><div class="media">{_media(card)}</div>'
        f'<div class="text"><h2>{esc(card.item_id)} <span class="badge">{esc(card.status)}'
        f'</span></h2><p class="prompt">{esc(card.item.get("prompt"))}</p>'
        f"<dl>{_facts(card)}</dl>{_inputs(card)}{_error(card)}</div></article>"
    )


def _buttons(kind: str, values: list[str], counts: dict[str, int]) -> str:
    total = sum(counts.values())
    options = [("all", total), *((v, counts.get(v, 0)) for v in values)]
    return "".join(
        f'<button type="button" data-kind="{kind}" data-value="{esc(v)}">{esc(v)} ({n})</button>'
        for v, n in options
    )


def render_page(cards: list[Card], title: str) -> str:
    tasks = sorted({str(c.item.get("task")) for c in cards})
    task_counts = {t: sum(1 for c in cards if str(c.item.get("task")) == t) for t in tasks}
    status_counts = {s: sum(1 for c in cards if c.status == s) for s in ("done", "failed")}
    return (
        _HEAD.replace("__TITLE__", esc(title)) + f'<nav class="filters"><span>status</span>'
        f"{_buttons('status', ['done', 'failed'], status_counts)}"
        f"<span>task</span>{_buttons('task', tasks, task_counts)}</nav>"
        f'<main id="cards">{"".join(render_card(c) for c in cards)}</main>' + _TAIL
    )


_HEAD = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>
body{margin:0;font:14px/1.4 system-ui,sans-serif;background:#f3f4f6;color:#111}
header{padding:12px 20px;background:#1f2937;color:#fff}
header h1{margin:0;font-size:18px;word-break:break-all}
.filters{display:flex;flex-wrap:wrap;gap:6px;align-items:center;padding:10px 20px;background:#fff;
border-bottom:1px solid #ddd}
.filters span{margin-left:12px;color:#555;font-weight:600}
.filters button{border:1px solid #9ca3af;background:#fff;border-radius:14px;padding:3px 10px;
cursor:pointer}
.filters button[aria-pressed=true]{background:#2563eb;border-color:#2563eb;color:#fff}
main{display:grid;grid-template-columns:repeat(auto-fill,minmax(320px,1fr));gap:14px;
padding:16px 20px}
.card{background:#fff;border-radius:8px;box-shadow:0 1px 3px #0002;overflow:hidden}
.card.failed{border-top:4px solid #dc2626}.card.done{border-top:4px solid #16a34a}
.media video,.no-video{display:block;width:100%;aspect-ratio:16/10;background:#111;
object-fit:contain}
.no-video{display:flex;align-items:center;justify-content:center;color:#fca5a5;font-weight:600}
.text{padding:10px 12px}.text h2{margin:0 0 4px;font-size:15px;word-break:break-all}
.badge{font-size:11px;font-weight:500;color:#555;border:1px solid #ccc;border-radius:8px;
padding:0 6px}
.prompt{margin:4px 0 8px;white-space:pre-wrap;word-break:break-word}
dl{display:grid;grid-template-columns:auto 1fr;gap:2px 10px;margin:0;font-size:12px}
dt{color:#666}dd{margin:0;word-break:break-word}
.inputs{display:flex;flex-wrap:wrap;gap:6px;margin-top:8px}
.inputs figure{margin:0;width:96px;font-size:10px;color:#666;word-break:break-all}
.inputs img,.no-thumb{width:96px;height:64px;object-fit:cover;background:#ddd;display:block}
.error{color:#b91c1c;margin:8px 0 2px;word-break:break-word}
.muted{color:#666;margin:0;font-size:12px}
pre{white-space:pre-wrap;font-size:11px;max-height:200px;overflow:auto;background:#f9fafb}
[hidden]{display:none!important}
</style></head>
<body data-media-done="0"><header><h1>__TITLE__</h1></header>
"""

_TAIL = """<script>
(function () {
  var state = {status: "all", task: "all"};
  var buttons = document.querySelectorAll(".filters button");
  function apply() {
    document.querySelectorAll(".card").forEach(function (card) {
      card.hidden = !((state.status === "all" || card.dataset.status === state.status) &&
                      (state.task === "all" || card.dataset.task === state.task));
    });
    buttons.forEach(function (b) {
      b.setAttribute("aria-pressed", String(state[b.dataset.kind] === b.dataset.value));
    });
  }
  buttons.forEach(function (b) {
    b.addEventListener("click", function () {
      state[b.dataset.kind] = b.dataset.value;
      history.replaceState(null, "", "#" + new URLSearchParams(state).toString());
      apply();
    });
  });
  new URLSearchParams(location.hash.slice(1)).forEach(function (value, key) {
    if (key in state) state[key] = value;
  });
  apply();

  var body = document.body, loaded = 0, errors = 0, codes = [];
  var videos = document.querySelectorAll("video"), images = document.querySelectorAll("img");
  var total = videos.length * 2 + images.length;
  function report() {
    body.dataset.mediaTotal = total; body.dataset.mediaLoaded = loaded;
    body.dataset.mediaErrors = errors; body.dataset.mediaErrorCodes = codes.join(" ");
    if (loaded + errors === total) body.dataset.mediaDone = "1";
  }
  function once(fn) {
    var done = false;
    return function (ok, why) { if (!done) { done = true; fn(ok, why); } };
  }
  function settle(ok, why) { if (ok) loaded++; else { errors++; codes.push(why); } report(); }
  function watchImage(img, label) {
    var end = once(settle);
    if (img.complete && img.src) { end(img.naturalWidth > 0, "img:0:" + label); return; }
    img.addEventListener("load", function () { end(true); });
    img.addEventListener("error", function () { end(false, "img:0:" + label); });
  }
  videos.forEach(function (v) {
    var end = once(settle);
    var fail = function () {
      end(false, "video:" + (v.error ? v.error.code : 0) + ":" + v.dataset.id);
    };
    if (v.readyState >= 2) end(true);
    v.addEventListener("loadeddata", function () { end(true); });
    v.addEventListener("error", fail);
    if (v.error) fail();
    var poster = new Image();
    watchImage(poster, "poster:" + v.dataset.id);
    poster.src = v.poster;
  });
  images.forEach(function (img) { watchImage(img, img.getAttribute("src")); });
  report();
})();
</script>
</body></html>
"""
