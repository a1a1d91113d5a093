"""What the gallery shows, before any HTML: cards, their groups, the filters and sweep points.

Pure functions over the records of an output root (markers and failure records). A sweep row's
id is ``{base_id}--{column}_{value}--...`` (see `pusa_batch.manifest.builders_sweep.sweep`): the id
is the only place a root records that an item belongs to a sweep, so the base id and the swept
columns are read back from it; the values themselves come from the item, where they are exact.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields

from pusa_batch.item import Item
from pusa_batch.outputs.common import input_images, redact_text

GROUPINGS = ("auto", "prompt", "base", "none")
# Columns a sweep can vary (the manifest's columns; `image` is the one-image spelling).
_NOT_SWEPT_FIELDS = {"id", "row", "extra"}
SWEEP_COLUMNS = tuple(
    sorted({f.name for f in fields(Item)} - _NOT_SWEPT_FIELDS | {"image"}, key=len, reverse=True)
)
NO_PROMPT = "(no prompt recorded)"
NOT_SWEPT = "(not swept)"
_CAPPED_TAIL = re.compile(r"-[0-9a-f]{10}$")  # cap_id's hash tail on ids of 128 characters


@dataclass(frozen=True)
class SweepPoint:
    """Where an item sits in a sweep: its base row's id and the swept columns, in id order."""

    base_id: str
    columns: tuple[str, ...]


@dataclass(frozen=True)
class Card:
    """One item as the page shows it (done or failed), with the URLs of its media."""

    item_id: str
    status: str  # "done" or "failed"
    item: dict
    video_src: str | None = None
    poster_src: str | None = None
    conditioning: dict = field(default_factory=dict)
    inputs: tuple[tuple[str | None, str], ...] = ()  # (thumbnail src or None, label)
    failure: dict = field(default_factory=dict)
    pipeline: str = ""  # "name identity8", "" when the record names none
    timings: Mapping[str, float] = field(default_factory=dict)  # seconds per stage
    committed_at: str | None = None
    sample_batch: int = 1  # items that shared the sampling forward

    @property
    def prompt(self) -> str:
        return str(self.item.get("prompt") or "")

    @property
    def sweep(self) -> SweepPoint | None:
        return sweep_point(self.item_id)


@dataclass(frozen=True)
class Group:
    """Cards shown side by side: one prompt, one sweep's base row, or every card (key None)."""

    key: str | None
    title: str
    subtitle: str
    cards: tuple[Card, ...]
    varying: tuple[str, ...]  # traits whose value differs between the cards, in trait order


@dataclass(frozen=True)
class Facet:
    """One filter: the card attribute it reads and each value with its number of cards."""

    name: str
    attribute: str
    values: tuple[tuple[str, int], ...]


# --------------------------------------------------------------------------- sweeps


def _sweep_column(part: str) -> str | None:
    return next((c for c in SWEEP_COLUMNS if part.startswith(f"{c}_")), None)


def sweep_point(item_id: str) -> SweepPoint | None:
    """The sweep an id was built by, or None for an id no sweep made.

    The base id is everything before the first ``--`` after which every part names a column.
    An id capped at 128 characters may end in a cut part and a hash: that part is skipped."""
    parts = item_id.split("--")
    if _CAPPED_TAIL.search(item_id) and len(item_id) >= 128 and _sweep_column(parts[-1]) is None:
        parts = parts[:-1]
    for start in range(1, len(parts)):
        columns = [_sweep_column(p) for p in parts[start:]]
        if parts[0] and all(columns):
            return SweepPoint("--".join(parts[:start]), tuple(c for c in columns if c))
    return None


# --------------------------------------------------------------------------- values


def value_text(value: object) -> str:
    """A short, stable display of one item value (paths by their file name, URLs redacted)."""
    if value is None:
        return "default"
    if isinstance(value, bool) or isinstance(value, (list, tuple)):
        return json.dumps(list(value) if isinstance(value, tuple) else value)
    if isinstance(value, str) and ("/" in value or "://" in value):
        return posixpath.basename((redact_text(value) or "").rstrip("/")) or value
    return str(value)


def item_value(item: Mapping, column: str) -> object:
    if column == "image":
        images = input_images(dict(item))
        return images[0] if images else None
    if column == "images":
        return [value_text(p) for p in input_images(dict(item))] or None
    return item.get(column)


def pipeline_label(pipeline: object) -> str:
    """``name identity[:8]`` of a marker's pipeline record ("" when there is none)."""
    if isinstance(pipeline, dict):
        name = str(pipeline.get("name") or pipeline.get("pipeline") or "")
        identity = str(pipeline.get("identity") or "")[:8]
        return " ".join(p for p in (name, identity) if p)
    return "" if pipeline is None else str(pipeline)


# Traits a group's cards are told apart by, in the order their labels read.
TRAITS = (
    "seed",
    "task",
    "steps",
    "guidance_scale",
    "shift",
    "num_frames",
    "height",
    "width",
    "fps",
    "cond_frames",
    "noise_multipliers",
    "images",
    "video",
    "video_b",
    "negative_prompt",
    "pipeline",
)


def trait_value(card: Card, trait: str) -> object:
    return (card.pipeline or None) if trait == "pipeline" else item_value(card.item, trait)


def _sort_key(value: object) -> tuple:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, value_text(value))


def varying_traits(cards: Iterable[Card]) -> tuple[str, ...]:
    """Traits with more than one value among the cards (a record that names no pipeline, as a
    failure record does not, is not counted as another pipeline)."""
    cards = list(cards)

    def values(trait: str) -> set[str]:
        known = [c for c in cards if trait != "pipeline" or c.pipeline]
        return {value_text(trait_value(c, trait)) for c in known}

    return tuple(t for t in TRAITS if len(values(t)) > 1)


def variant_label(card: Card, varying: Iterable[str]) -> str:
    """What tells this card apart in its group, e.g. ``seed 3 · steps 20``."""
    return " · ".join(f"{t} {value_text(trait_value(card, t))}" for t in varying)


# --------------------------------------------------------------------------- groups


def resolve_grouping(group_by: str, cards: Iterable[Card]) -> str:
    """``auto`` is ``base`` when some item came from a sweep, else ``prompt`` when some prompt
    has more than one item, else ``none`` (groups of one would only repeat each title)."""
    if group_by != "auto":
        return group_by
    cards = list(cards)
    if any(c.sweep for c in cards):
        return "base"
    prompts = Counter(c.prompt for c in cards)
    return "prompt" if any(n > 1 for n in prompts.values()) else "none"


def _group_key(card: Card, grouping: str) -> str | None:
    if grouping == "prompt":
        return card.prompt
    if grouping == "base":
        point = card.sweep
        return f"sweep:{point.base_id}" if point else f"item:{card.item_id}"
    return None


def _group(key: str | None, cards: list[Card], grouping: str) -> Group:
    varying = varying_traits(cards) if len(cards) > 1 else ()
    ordered = sorted(
        cards, key=lambda c: (tuple(_sort_key(trait_value(c, t)) for t in varying), c.item_id)
    )
    prompts = list(dict.fromkeys(c.prompt for c in ordered))
    title = (prompts[0] or NO_PROMPT) if len(prompts) == 1 else f"{len(prompts)} prompts"
    count = f"{len(cards)} item{'s' if len(cards) != 1 else ''}"
    differ = f" · by {', '.join(varying)}" if varying else ""
    if grouping == "base" and key and key.startswith("sweep:"):
        subtitle = f"sweep of {key.removeprefix('sweep:')} · {count}{differ}"
    elif grouping == "base":
        subtitle = ordered[0].item_id
    else:
        subtitle = f"{count}{differ}"
    return Group(key, title, subtitle, tuple(ordered), varying)


def group_cards(cards: Iterable[Card], grouping: str) -> tuple[Group, ...]:
    """Cards by prompt, by sweep base id, or all in one group (``none``), groups in row order."""
    cards = sorted(cards, key=lambda c: (c.item.get("row") or 0, c.item_id))
    if grouping == "none":
        return (Group(None, "", "", tuple(cards), ()),) if cards else ()
    members: dict[str | None, list[Card]] = {}
    for card in cards:
        members.setdefault(_group_key(card, grouping), []).append(card)
    return tuple(_group(key, found, grouping) for key, found in members.items())


# --------------------------------------------------------------------------- filters


def facet_values(card: Card, sweep_columns: Iterable[str]) -> dict[str, str]:
    """The value of every filter for one card (what its ``data-*`` attributes hold)."""
    values = {
        "status": card.status,
        "task": str(card.item.get("task") or "unknown"),
        "seed": value_text(card.item.get("seed")),
        "pipeline": card.pipeline or "(not recorded)",
    }
    point = card.sweep
    for column in sweep_columns:
        swept = point is not None and column in point.columns
        values[column] = value_text(item_value(card.item, column)) if swept else NOT_SWEPT
    return values


def sweep_columns(cards: Iterable[Card]) -> tuple[str, ...]:
    """Swept columns in first-seen order, without those that already have a filter."""
    found = dict.fromkeys(c for card in cards if card.sweep for c in card.sweep.columns)
    return tuple(c for c in found if c not in ("seed", "task"))


def facet_attribute(name: str) -> str:
    return (
        f"data-{name}" if name in ("status", "task", "seed", "pipeline") else f"data-sweep-{name}"
    )


def facets(cards: Iterable[Card]) -> tuple[Facet, ...]:
    cards = list(cards)
    columns = sweep_columns(cards)
    per_card = [facet_values(c, columns) for c in cards]
    out = []
    for name in ("status", "task", "seed", "pipeline", *columns):
        counts = Counter(values[name] for values in per_card)
        ordered = sorted(counts, key=lambda v: _sort_key(_number_or_text(v)))
        out.append(Facet(name, facet_attribute(name), tuple((v, counts[v]) for v in ordered)))
    return tuple(out)


def _number_or_text(text: str) -> object:
    try:
        return float(text)
    except ValueError:
        return text
