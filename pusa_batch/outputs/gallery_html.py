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
from pusa_batch.outputs.gallery_static import PAGE_HEAD, PAGE_TAIL
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
        PAGE_HEAD.replace("__TITLE__", esc(title)).replace("__GROUPING__", esc(grouping))
        + render_summary(stats, plot)
        + render_filters(found, len(cards))
        + f'<main id="cards">{empty}{body}</main>'
        + PAGE_TAIL
    )
