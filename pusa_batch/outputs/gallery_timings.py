"""The gallery's summary: counts, wall time, throughput, and per-item time by stage as inline SVG.

Every marker records ``timings`` in seconds per stage (``queue``, ``prepare``, ``sample``,
``decode``, ``encode``, ``finish``...). ``queue`` is waiting, not work, so it is counted but not
drawn; ``finish`` contains ``decode`` and ``encode`` when those are recorded, so it is drawn as
what is left of it (``finish (rest)``) and nothing is counted twice. The SVG draws one path per
stage (at most `MAX_BARS` bars; beyond that each bar is the mean of consecutive items), so a
run of thousands of items stays a few tens of kilobytes.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

WAIT_STAGES = ("queue",)
STAGE_ORDER = ("queue", "prepare", "sample", "decode", "encode", "finish", "write")
PARTS_OF = {"finish": ("decode", "encode")}
STAGE_COLOURS = {
    "queue": "#9ca3af",
    "prepare": "#f59e0b",
    "sample": "#2563eb",
    "decode": "#10b981",
    "encode": "#8b5cf6",
    "finish (rest)": "#ec4899",
    "write": "#6b7280",
}
OTHER_COLOURS = ("#0ea5e9", "#84cc16", "#f97316", "#14b8a6", "#a855f7", "#e11d48")
MAX_BARS = 240
MAX_BAR_PX = 24  # a run of a few items draws narrow bars, not wide blocks


@dataclass(frozen=True)
class StageStats:
    stage: str
    items: int
    median_s: float
    p90_s: float
    max_s: float
    total_s: float


@dataclass(frozen=True)
class RunStats:
    done: int
    failed: int
    damaged: int
    wall_s: float | None  # first item's start (its commit less its own time) to the last commit
    items_per_min: float | None
    sampling_s: float  # sampler busy time: a batched forward is counted once
    stages: tuple[StageStats, ...]


@dataclass(frozen=True)
class Timed:
    """What the summary reads from one done item's marker."""

    timings: Mapping[str, float]
    committed_at: str | None = None
    sample_batch: int = 1


def _seconds(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) and value >= 0 else None


def exclusive_stages(timings: Mapping[str, object]) -> dict[str, float]:
    """Seconds per stage with nothing counted twice, in stage order (unknown stages last)."""
    clean = {str(k): s for k, v in timings.items() if (s := _seconds(v)) is not None}
    for outer, parts in PARTS_OF.items():
        if outer in clean and any(p in clean for p in parts):
            rest = clean.pop(outer) - sum(clean.get(p, 0.0) for p in parts)
            clean[f"{outer} (rest)"] = max(0.0, rest)
    rank = {name: i for i, name in enumerate(STAGE_ORDER)}
    rank.update({f"{o} (rest)": rank[o] for o in PARTS_OF})
    return dict(sorted(clean.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0])))


def work_stages(timings: Mapping[str, object]) -> dict[str, float]:
    return {k: v for k, v in exclusive_stages(timings).items() if k not in WAIT_STAGES}


def _quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _time(text: str | None) -> float | None:
    try:
        return datetime.fromisoformat(str(text)).timestamp() if text else None
    except ValueError:
        return None


def stage_stats(items: Iterable[Timed]) -> tuple[StageStats, ...]:
    per_stage: dict[str, list[float]] = {}
    for item in items:
        for stage, seconds in exclusive_stages(item.timings).items():
            per_stage.setdefault(stage, []).append(seconds)
    return tuple(
        StageStats(s, len(v), _quantile(v, 0.5), _quantile(v, 0.9), max(v), sum(v))
        for s, v in per_stage.items()
    )


def run_stats(items: Sequence[Timed], failed: int, damaged: int) -> RunStats:
    spans = []
    for item in items:
        end = _time(item.committed_at)
        if end is not None:
            spans.append((end - sum(exclusive_stages(item.timings).values()), end))
    wall = max(e for _, e in spans) - min(s for s, _ in spans) if spans else None
    rate = len(spans) / (wall / 60) if wall else None
    sampling = sum(
        (_seconds(i.timings.get("sample")) or 0.0) / max(1, i.sample_batch) for i in items
    )
    return RunStats(len(items), failed, damaged, wall, rate, sampling, stage_stats(items))


def duration_text(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    if seconds < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def stage_colours(stages: Iterable[str]) -> dict[str, str]:
    others = iter(OTHER_COLOURS * 10)
    return {s: STAGE_COLOURS.get(s) or next(others, "#555") for s in stages}


# --------------------------------------------------------------------------- SVG


def _nice_ceiling(value: float) -> float:
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    return next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= value)


def _bars(rows: Sequence[Mapping[str, float]]) -> tuple[list[dict[str, float]], int]:
    """Rows binned to at most MAX_BARS bars (each the mean of `per_bar` consecutive rows)."""
    per_bar = max(1, math.ceil(len(rows) / MAX_BARS))
    bars = []
    for start in range(0, len(rows), per_bar):
        chunk = rows[start : start + per_bar]
        stages = dict.fromkeys(s for row in chunk for s in row)
        bars.append({s: sum(row.get(s, 0.0) for row in chunk) / len(chunk) for s in stages})
    return bars, per_bar


def timing_svg(rows: Sequence[Mapping[str, float]], width: int = 720, height: int = 150) -> str:
    """Stacked bars of each item's work stages (`work_stages` rows, in commit order)."""
    if not rows:
        return ""
    bars, per_bar = _bars(rows)
    stages = list(dict.fromkeys(s for bar in bars for s in bar))
    colours = stage_colours(stages)
    left, right, top, bottom = 52, 8, 8, 26
    plot_w, plot_h = width - left - right, height - top - bottom
    y_max = _nice_ceiling(max(sum(bar.values()) for bar in bars))
    step = min(plot_w / len(bars), MAX_BAR_PX)
    bar_w = step * (0.8 if step > 3 else 1.0)
    paths = {s: [] for s in stages}
    for n, bar in enumerate(bars):
        base = 0.0
        for stage in stages:
            seconds = bar.get(stage, 0.0)
            if seconds <= 0:
                continue
            y0 = top + plot_h * (1 - (base + seconds) / y_max)
            h = plot_h * seconds / y_max
            x = left + n * step
            paths[stage].append(f"M{x:.1f} {y0:.1f}h{bar_w:.1f}v{h:.1f}h{-bar_w:.1f}z")
            base += seconds
    esc = html.escape
    parts = [
        f'<svg class="timings" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="time per item by stage">',
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="#f9fafb"/>',
    ]
    for tick in (0.0, y_max / 2, y_max):
        y = top + plot_h * (1 - tick / y_max)
        parts.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>'
            f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end" font-size="11" '
            f'fill="#555">{esc(duration_text(tick))}</text>'
        )
    for stage in stages:
        parts.append(
            f'<path fill="{colours[stage]}" d="{"".join(paths[stage])}">'
            f"<title>{esc(stage)}</title></path>"
        )
    what = f"items 1–{len(rows)} in commit order"
    if per_bar > 1:
        what += f", each bar the mean of {per_bar}"
    parts.append(
        f'<text x="{left + plot_w / 2:.0f}" y="{height - 8}" text-anchor="middle" '
        f'font-size="11" fill="#555">{esc(what)}</text></svg>'
    )
    return "".join(parts)
