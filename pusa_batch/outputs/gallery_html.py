"""The gallery page as HTML: a summary, the filters, the groups of cards, one inline script.

All user text (prompts, ids, paths, error messages, stage names) goes through `esc`; none of it
is placed inside the script, which reads the cards' ``data-*`` attributes instead, so no prompt
can end the script early. Media are lazy: a card holds its video and poster URLs in
``data-src`` / ``data-poster`` and its input thumbnails in ``data-src``; the script creates the
``<video>`` (and sets the images' ``src``) when the card comes near the viewport, and removes
the video again when it leaves, so a page of thousands of items loads only what is in view.
"""

from __future__ import annotations

import html

from pusa_batch.outputs.common import redact_text
from pusa_batch.outputs.gallery_cards import (
    NO_PROMPT,
    Card,
    Facet,
    Group,
    facet_values,
    facets,
    group_cards,
    resolve_grouping,
    sweep_columns,
    variant_label,
)
from pusa_batch.outputs.gallery_timings import (
    RunStats,
    Timed,
    duration_text,
    run_stats,
    stage_colours,
    timing_svg,
    work_stages,
)


def esc(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


# --------------------------------------------------------------------------- cards


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


def _time_text(card: Card) -> str | None:
    stages = work_stages(card.timings)
    if not stages:
        return None
    sample = stages.get("sample")
    total = duration_text(sum(stages.values()))
    return f"{total} (sample {duration_text(sample)})" if sample is not None else total


def _facts(card: Card) -> str:
    item = card.item
    size = f"{item.get('num_frames')} × {item.get('height')}×{item.get('width')}"
    rows = [
        ("task", item.get("task")),
        ("seed", item.get("seed")),
        ("size", f"{size} @ {item.get('fps')} fps"),
        ("steps", f"{item.get('steps')} · cfg {item.get('guidance_scale')}"),
        ("conditioning", _conditioning_text(card)),
        ("negative", item.get("negative_prompt") or None),
        ("pipeline", card.pipeline or None),
        ("time", _time_text(card)),
    ]
    return "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in rows if v is not None)


def _media(card: Card, variant: str) -> str:
    chip = f'<span class="variant">{esc(variant)}</span>' if variant else ""
    if card.status == "done":
        return (
            f'<div class="media" data-src="{esc(card.video_src)}" '
            f'data-poster="{esc(card.poster_src or "")}">{chip}</div>'
        )
    label = esc(card.failure.get("error_type") or "failed")
    return f'<div class="media no-video">{chip}<span>{label}</span></div>'


def _inputs(card: Card) -> str:
    if not card.inputs:
        return ""
    figures = []
    for src, label in card.inputs:
        image = (
            f'<img alt="input" data-src="{esc(src)}">' if src else '<div class="no-thumb"></div>'
        )
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


def render_card(
    card: Card, filters: dict[str, str], attributes: dict[str, str], variant: str
) -> str:
    data = "".join(f' {attributes[name]}="{esc(value)}"' for name, value in filters.items())
    return (
        f'<article class="card {esc(card.status)}" data-id="{esc(card.item_id)}"{data}>'
        f'{_media(card, variant)}<div class="text">'
        f'<h3 class="title">{esc(card.prompt or NO_PROMPT)}</h3>'
        f'<p class="subtitle"><code>{esc(card.item_id)}</code> '
        f'<span class="badge">{esc(card.status)}</span></p>'
        f"<dl>{_facts(card)}</dl>{_inputs(card)}{_error(card)}</div></article>"
    )


def render_group(group: Group, columns: tuple[str, ...], attributes: dict[str, str]) -> str:
    cards = "".join(
        render_card(c, facet_values(c, columns), attributes, variant_label(c, group.varying))
        for c in group.cards
    )
    if group.key is None:
        return f'<section class="group flat"><div class="grid">{cards}</div></section>'
    return (
        f'<section class="group" data-group="{esc(group.key)}"><header class="group-head">'
        f'<h2>{esc(group.title)}</h2><p class="muted">{esc(group.subtitle)}</p></header>'
        f'<div class="grid">{cards}</div></section>'
    )


# --------------------------------------------------------------------------- summary, filters


def _stat(name: str, value: object) -> str:
    return f"<div><dt>{esc(name)}</dt><dd>{esc(value)}</dd></div>"


def render_summary(stats: RunStats, plot: str) -> str:
    rate = f"{stats.items_per_min:.1f}" if stats.items_per_min is not None else "n/a"
    numbers = [
        _stat("done", stats.done),
        _stat("failed", stats.failed),
        _stat("damaged", stats.damaged) if stats.damaged else "",
        _stat("wall time", duration_text(stats.wall_s)),
        _stat("items / min", rate),
        _stat("sampling time", duration_text(stats.sampling_s)),
    ]
    colours = stage_colours(s.stage for s in stats.stages)
    rows = "".join(
        f'<tr><td><i style="background:{colours[s.stage]}"></i>{esc(s.stage)}</td>'
        f"<td>{s.items}</td><td>{esc(duration_text(s.median_s))}</td>"
        f"<td>{esc(duration_text(s.p90_s))}</td><td>{esc(duration_text(s.max_s))}</td>"
        f"<td>{esc(duration_text(s.total_s))}</td></tr>"
        for s in stats.stages
    )
    table = (
        '<table class="stages"><thead><tr><th>stage</th><th>items</th><th>median</th>'
        f"<th>p90</th><th>max</th><th>total</th></tr></thead><tbody>{rows}</tbody></table>"
        if rows
        else ""
    )
    figure = (
        f'<figure class="plot">{plot}<figcaption>time per item by stage (queue waits not '
        "drawn)</figcaption></figure>"
        if plot
        else ""
    )
    return (
        f'<section class="summary"><dl class="stats">{"".join(numbers)}</dl>'
        f'<div class="charts">{figure}{table}</div></section>'
    )


def render_filters(found: tuple[Facet, ...], total: int) -> str:
    selects = []
    for facet in found:
        options = [f'<option value="">all ({total})</option>'] + [
            f'<option value="{esc(v)}">{esc(v)} ({n})</option>' for v, n in facet.values
        ]
        selects.append(
            f'<label>{esc(facet.name)} <select data-facet="{esc(facet.name)}" '
            f'data-attr="{esc(facet.attribute)}">{"".join(options)}</select></label>'
        )
    return (
        '<nav class="filters"><input type="search" id="search" data-facet="q" '
        'placeholder="search prompts and ids" aria-label="search prompts and ids">'
        f'{"".join(selects)}<span id="shown" aria-live="polite">{total} shown</span></nav>'
    )


def render_page(cards: list[Card], title: str, *, group_by: str = "auto", damaged: int = 0) -> str:
    grouping = resolve_grouping(group_by, cards)
    found = facets(cards)
    columns = sweep_columns(cards)
    attributes = {f.name: f.attribute for f in found}
    done = sorted((c for c in cards if c.status == "done"), key=lambda c: c.committed_at or "")
    timed = [Timed(c.timings, c.committed_at, c.sample_batch) for c in done]
    stats = run_stats(timed, sum(1 for c in cards if c.status == "failed"), damaged)
    plot = timing_svg([work_stages(t.timings) for t in timed if work_stages(t.timings)])
    groups = group_cards(cards, grouping)
    body = "".join(render_group(g, columns, attributes) for g in groups)
    empty = "" if cards else '<p class="empty">This root holds no done or failed items yet.</p>'
    return (
        _HEAD.replace("__TITLE__", esc(title)).replace("__GROUPING__", esc(grouping))
        + render_summary(stats, plot)
        + render_filters(found, len(cards))
        + f'<main id="cards">{empty}{body}</main>'
        + _TAIL
    )


_HEAD = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>
body{margin:0;font:14px/1.4 system-ui,sans-serif;background:#f3f4f6;color:#111}
body>header{padding:12px 20px;background:#1f2937;color:#fff}
body>header h1{margin:0;font-size:18px;word-break:break-all}
.summary{background:#fff;padding:10px 20px;border-bottom:1px solid #ddd}
.stats{display:flex;flex-wrap:wrap;gap:4px 28px;margin:0 0 8px}
.stats dt{color:#666;font-size:12px}.stats dd{margin:0;font-size:18px;font-weight:600}
.charts{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}
.plot{margin:0;flex:1 1 480px;max-width:760px}.plot svg{width:100%;height:auto;display:block}
.plot figcaption{font-size:11px;color:#666}
.stages{border-collapse:collapse;font-size:12px}
.stages th,.stages td{padding:2px 8px;text-align:right;border-bottom:1px solid #eee}
.stages th:first-child,.stages td:first-child{text-align:left}
.stages i{display:inline-block;width:10px;height:10px;margin-right:6px;border-radius:2px}
.filters{position:sticky;top:0;z-index:2;display:flex;flex-wrap:wrap;gap:6px 14px;
align-items:center;padding:8px 20px;background:#fff;border-bottom:1px solid #ddd}
.filters label{color:#555;font-weight:600}
.filters select,.filters input{font:inherit;padding:2px 4px}
.filters input{min-width:220px}
#shown{margin-left:auto;color:#555}
main{display:flex;flex-wrap:wrap;gap:18px 28px;align-items:flex-start;padding:12px 20px}
.group{max-width:100%}.group.flat{width:100%}
.group-head{width:0;min-width:100%}
.group-head h2{margin:0;font-size:16px;white-space:pre-wrap;word-break:break-word;
display:-webkit-box;-webkit-line-clamp:2;-webkit-box-orient:vertical;overflow:hidden}
.group-head p{margin:0 0 6px}
.grid{display:flex;flex-wrap:wrap;gap:12px}
.card{width:260px;background:#fff;border-radius:8px;box-shadow:0 1px 3px #0002;
overflow:hidden;content-visibility:auto;contain-intrinsic-size:260px 380px}
.card.failed{border-top:4px solid #dc2626}.card.done{border-top:4px solid #16a34a}
.media{position:relative;aspect-ratio:16/10;background:#1f2937}
.media video{display:block;width:100%;height:100%;object-fit:contain;background:#111}
.no-video{display:flex;align-items:center;justify-content:center;color:#fca5a5;font-weight:600}
.variant{position:absolute;z-index:1;top:6px;left:6px;background:#000a;color:#fff;
border-radius:6px;padding:1px 7px;font-size:12px;pointer-events:none}
.text{padding:8px 12px}
.title{margin:0;font-size:14px;white-space:pre-wrap;word-break:break-word;cursor:pointer;
display:-webkit-box;-webkit-line-clamp:3;-webkit-box-orient:vertical;overflow:hidden}
.title.open{display:block}
.subtitle{margin:2px 0 6px;font-size:12px;color:#555;word-break:break-all}
.badge{font-size:11px;color:#555;border:1px solid #ccc;border-radius:8px;padding:0 6px}
dl{display:grid;grid-template-columns:auto 1fr;gap:2px 10px;margin:0;font-size:12px}
dt{color:#666}dd{margin:0;word-break:break-word}
.inputs{display:flex;flex-wrap:wrap;gap:6px;margin-top:8px}
.inputs figure{margin:0;width:96px;font-size:10px;color:#666;word-break:break-all}
.inputs img,.no-thumb{width:96px;height:64px;object-fit:cover;background:#ddd;display:block}
.error{color:#b91c1c;margin:8px 0 2px;word-break:break-word}
.muted{color:#666;margin:0;font-size:12px}
.empty{color:#555}
pre{white-space:pre-wrap;font-size:11px;max-height:200px;overflow:auto;background:#f9fafb}
[hidden]{display:none!important}
</style></head>
<body data-grouping="__GROUPING__" data-media-done="0"><header><h1>__TITLE__</h1></header>
"""

# Filters: every <select data-facet> matches a card attribute; the search box matches every
# word against the card's title and id. The state lives in the URL fragment (#status=failed&q=
# cat). Media: an IntersectionObserver mounts a card's <video> near the viewport and removes it
# when the card leaves. For headless checks, <body> carries data-shown (visible cards),
# data-media-mounted (videos in the page), data-media-total/-loaded/-errors (media asked for,
# loaded, failed), data-media-error-codes and data-media-done="1" once all asked for settled.
_TAIL = """<script>
(() => {
  "use strict";
  const body = document.body;
  const cards = Array.from(document.querySelectorAll("article.card"));
  const groups = Array.from(document.querySelectorAll("section.group"));
  const selects = Array.from(document.querySelectorAll("select[data-facet]"));
  const search = document.getElementById("search");
  const shown = document.getElementById("shown");
  const texts = cards.map((c) =>
    (c.querySelector(".title").textContent + " " + c.dataset.id).toLowerCase());

  function apply() {
    const wanted = selects.filter((s) => s.value !== "").map((s) => [s.dataset.attr, s.value]);
    const words = search.value.toLowerCase().split(/\\s+/).filter(Boolean);
    let n = 0;
    cards.forEach((card, i) => {
      const ok = wanted.every(([attr, value]) => card.getAttribute(attr) === value) &&
        words.every((w) => texts[i].includes(w));
      card.hidden = !ok;
      if (ok) n++;
    });
    groups.forEach((g) => { g.hidden = !g.querySelector("article.card:not([hidden])"); });
    shown.textContent = n + " of " + cards.length + " shown";
    body.dataset.shown = n;
  }
  function writeHash() {
    const params = new URLSearchParams();
    selects.forEach((s) => { if (s.value) params.set(s.dataset.facet, s.value); });
    if (search.value) params.set("q", search.value);
    history.replaceState(null, "", params.toString() ? "#" + params : location.pathname);
  }
  function readHash() {
    const params = new URLSearchParams(location.hash.slice(1));
    selects.forEach((s) => { s.value = params.get(s.dataset.facet) || ""; });
    search.value = params.get("q") || "";
    apply();
  }
  selects.forEach((s) => s.addEventListener("change", () => { apply(); writeHash(); }));
  search.addEventListener("input", () => { apply(); writeHash(); });
  window.addEventListener("hashchange", readHash);
  document.querySelectorAll(".title").forEach((t) =>
    t.addEventListener("click", () => t.classList.toggle("open")));

  let total = 0, loaded = 0, errors = 0, observed = false;
  const codes = [];
  function report() {
    body.dataset.mediaTotal = total;
    body.dataset.mediaLoaded = loaded;
    body.dataset.mediaErrors = errors;
    body.dataset.mediaErrorCodes = codes.join(" ");
    body.dataset.mediaMounted = document.querySelectorAll(".media video").length;
    body.dataset.mediaDone = observed && loaded + errors === total ? "1" : "0";
  }
  function watch(el, okEvent, label) {
    let settled = false;
    total++;
    const end = (ok) => {
      if (settled) return;
      settled = true;
      if (ok) loaded++;
      else { errors++; codes.push(label + ":" + (el.error ? el.error.code : 0)); }
      report();
    };
    el.addEventListener(okEvent, () => end(true));
    el.addEventListener("error", () => end(false));
    return () => { if (!settled) { settled = true; total--; report(); } };
  }
  function mount(card) {
    card.querySelectorAll("img[data-src]:not([src])").forEach((img) => {
      watch(img, "load", "img:" + card.dataset.id);
      img.src = img.dataset.src;
    });
    const media = card.querySelector(".media[data-src]");
    if (!media || media.querySelector("video")) return;
    const video = document.createElement("video");
    Object.assign(video, {controls: true, muted: true, loop: true, playsInline: true});
    video.preload = "metadata";
    if (media.dataset.poster) video.poster = media.dataset.poster;
    video.dataset.id = card.dataset.id;
    video.cancel = watch(video, "loadeddata", "video:" + card.dataset.id);
    video.src = media.dataset.src;
    media.appendChild(video);
  }
  function unmount(card) {
    const video = card.querySelector(".media video");
    if (!video) return;
    video.cancel();
    video.pause();
    video.removeAttribute("src");
    video.load();
    video.remove();
    report();
  }
  cards.forEach((card) => {
    card.addEventListener("mouseenter", () => {
      const v = card.querySelector("video");
      if (v) v.play().catch(() => {});
    });
    card.addEventListener("mouseleave", () => {
      const v = card.querySelector("video");
      if (v) v.pause();
    });
  });
  const lazy = new IntersectionObserver((entries) => {
    entries.forEach((e) => (e.isIntersecting ? mount(e.target) : unmount(e.target)));
    observed = true;
    report();
  }, {rootMargin: "150px 0px"});
  cards.forEach((card) => lazy.observe(card));
  readHash();
  report();
})();
</script>
</body></html>
"""
