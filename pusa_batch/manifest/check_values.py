"""Value checks of one chunk's parsed columns: required cells, known tasks and fits, the spec's
ranges and limits (`value_rules.py`), the pixel count, and `image` beside `images`."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from pusa_batch import tasks as task_rules
from pusa_batch.item import FITS
from pusa_batch.manifest.check_cells import (
    Problems,
    as_written,
    missing_message,
    pixels,
    present,
)
from pusa_batch.manifest.schema import REQUIRED_COLUMNS, Rules
from pusa_batch.manifest.value_rules import limit_rules, range_rules, written_text


def check_values(cols: dict[str, Any], found: Problems, rules: Rules) -> None:
    for name in REQUIRED_COLUMNS:
        if name in cols:
            empty = ~present(cols[name])
            for i in np.flatnonzero(empty):  # a cell of the wrong type is named once, as such
                if (int(i), name) not in found.cells:
                    found.add(int(i), name, missing_message(name)(None))
    if "task" in cols:
        tasks = pd.Series(cols["task"], dtype=object)
        unknown = tasks.notna().to_numpy() & ~tasks.isin(task_rules.TASKS).to_numpy()
        valid = ", ".join(task_rules.TASKS)
        found.add_where(
            unknown, "task", lambda v: f"unknown task {v!r}; use one of: {valid}.", tasks
        )
    r, m = rules.temporal_factor, rules.spatial_multiple
    for name, is_bad, message in range_rules(r, m) + limit_rules(rules.limits):
        if name in cols:
            values, written = cols[name], cols[as_written(name)]
            with np.errstate(invalid="ignore"):
                mask = ~np.isnan(values) & is_bad(values)
            for i in np.flatnonzero(mask):
                v = values[i]
                found.add(int(i), name, message(v, written_text(written.iloc[i], v)))
    _check_pixels(cols, found, rules)
    if "fit" in cols:
        fits = pd.Series(cols["fit"], dtype=object)
        unknown = fits.notna().to_numpy() & ~fits.isin(FITS).to_numpy()
        choices = ", ".join(FITS)
        found.add_where(
            unknown, "fit", lambda v: f"unknown fit {v!r}; use one of: {choices}.", fits
        )
    if "images" in cols and "image" in cols:
        both = present(cols["image"]) & np.array([v is not None for v in cols["images"]])
        found.add_where(
            both,
            "images",
            lambda _: "give either 'image' or 'images', not both.",
            cols["images"],
        )


def _check_pixels(cols: dict[str, Any], found: Problems, rules: Rules) -> None:
    """height x width against the spec's max_pixels (a missing cell takes the default)."""
    if "height" not in cols and "width" not in cols:
        return
    limit = rules.limits.max_pixels

    def column(name: str) -> np.ndarray:
        values = cols.get(name)
        default = float(rules.defaults[name])
        if values is None:
            return np.full(len(cols.get("height", cols.get("width"))), default)
        return np.where(np.isnan(values), default, values)

    height, width = column("height"), column("width")
    with np.errstate(invalid="ignore", over="ignore"):
        mask = height * width > limit
    sizes = np.array([f"{h:.0f}x{w:.0f}" for h, w in zip(height, width)], dtype=object)
    found.add_where(
        mask,
        "width",
        lambda v: (
            f"{v} is {pixels(v):,} pixels, over this pipeline's limit of {limit:,} "
            "(max_pixels); make it smaller, or raise limits.max_pixels in the pipeline TOML."
        ),
        sizes,
    )
