"""The range and limit rules of a manifest's number columns, and how a number is shown in
their messages (as the manifest wrote it: a huge JSON integer exactly, CSV text as typed).

Each rule is (column, is_bad(values) -> mask, message(value, shown) -> text).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from pusa_batch import tasks as task_rules
from pusa_batch.manifest.schema import SEED_MAX
from pusa_batch.pipelines.limits import Limits


def written_text(cell: Any, value: float) -> str:
    """A number as the manifest wrote it (a huge JSON integer exactly, CSV text as typed)."""
    if isinstance(cell, str):
        return cell.strip()
    if isinstance(cell, (int, np.integer)) and not isinstance(cell, (bool, np.bool_)):
        return str(int(cell))
    if math.isfinite(value) and value.is_integer() and abs(value) < 1e16:
        return f"{value:.0f}"
    return f"{value:g}"


def _map_unique(values: np.ndarray, check: Callable[[int], bool]) -> np.ndarray:
    """Apply a per-value rule once per distinct value (whole, non-NaN values only)."""
    uniq = np.unique(values[~np.isnan(values)])
    good = [u for u in uniq if u == math.floor(u) and check(int(u))]
    return np.isin(values, good)


def limit_rules(limits: Limits) -> list[tuple[str, Callable, Callable]]:
    """Upper bounds from the pipeline spec (`[limits]`), so nothing huge is ever allocated.
    Each message takes the value and the text the manifest wrote for it."""

    def over(name: str, limit: int, key: str) -> tuple[str, Callable, Callable]:
        return (
            name,
            lambda v: v > limit,
            lambda v, shown: (
                f"{name} {shown} is over this pipeline's limit of {limit} ({key}); "
                f"use at most {limit}, or raise limits.{key} in the pipeline TOML."
            ),
        )

    return [
        over("num_frames", limits.max_frames, "max_frames"),
        over("height", limits.max_side, "max_side"),
        over("width", limits.max_side, "max_side"),
        over("fps", limits.max_fps, "max_fps"),
        over("steps", limits.max_steps, "max_steps"),
    ]


def range_rules(r: int, m: int) -> list[tuple[str, Callable, Callable]]:
    def frames_msg(v: float, shown: str) -> str:
        if v < 1:
            return f"num_frames {shown} must be at least 1 ({r}*k+1: 1, {r + 1}, {2 * r + 1}...)."
        low = max(1, (int(v) - 1) // r * r + 1)
        return f"num_frames {shown} is not {r}*k+1; use {low} or {low + r}."

    def size_msg(name: str) -> Callable:
        def msg(v: float, shown: str) -> str:
            low = max(m, int(v) // m * m)
            return f"{name} {shown} is not a positive multiple of {m}; use {low} or {low + m}."

        return msg

    def guidance_msg(v: float, shown: str) -> str:
        if not math.isfinite(v):
            return (
                f"guidance_scale must be a finite number >= 1 (1 turns guidance off), got {shown}."
            )
        return f"guidance_scale must be >= 1 (1 turns guidance off), got {shown}."

    def shift_msg(v: float, shown: str) -> str:
        if not math.isfinite(v):
            return f"shift must be a finite number > 0, got {shown}."
        return f"shift must be > 0, got {shown}."

    return [
        (
            "num_frames",
            lambda v: ~_map_unique(v, lambda n: task_rules.valid_num_frames(n, r)),
            frames_msg,
        ),
        ("height", lambda v: (v <= 0) | (v % m != 0), size_msg("height")),
        ("width", lambda v: (v <= 0) | (v % m != 0), size_msg("width")),
        ("fps", lambda v: v < 1, lambda v, shown: f"fps must be at least 1, got {shown}."),
        (
            "seed",
            lambda v: (v < 0) | (v > SEED_MAX),
            lambda v, shown: f"seed {shown} is outside 0..{SEED_MAX} (uint32).",
        ),
        ("steps", lambda v: v < 1, lambda v, shown: f"steps must be at least 1, got {shown}."),
        ("guidance_scale", lambda v: ~np.isfinite(v) | (v < 1), guidance_msg),
        ("shift", lambda v: ~np.isfinite(v) | (v <= 0), shift_msg),
    ]
