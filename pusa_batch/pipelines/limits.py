"""What bounds an item before anything is allocated: the `[limits]` table (`validate` checks every
row against it) and the `[device]` table (how much memory a worker may plan for, checked by the
worker before an item allocates anything; `pipelines/memory_fit.py`).

Both are parsed by `spec.parse_pipeline_spec`; the checks here name the key and the fix, and
`spec.py` turns each into a `PipelineError` naming the file.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

GIB = 1024**3
DEVICE_KEYS = ("memory_gib",)


@dataclass(frozen=True)
class Limits:
    """The largest item a pipeline takes, checked by `validate` before anything is allocated.

    The defaults sit a little above what each family was trained for (Wan: 81 frames at
    1280x720, 16 fps; Mochi: 163 frames at 848x480, 30 fps); a `[limits]` table in the TOML
    overrides them.
    """

    max_frames: int = 321
    max_side: int = 2048
    max_pixels: int = 1920 * 1088  # height x width
    max_steps: int = 1000
    max_fps: int = 240  # only the mp4's timing, but a huge rate breaks players and encoders


MOCHI_LIMITS = Limits(max_frames=331, max_side=1536, max_pixels=1280 * 736)


@dataclass(frozen=True)
class DeviceSettings:
    """`[device]`: `memory_gib` caps the memory one worker plans for (weights and one item's
    activations), in place of the memory its device reports; None: the device's own."""

    memory_gib: float | None = None

    @property
    def memory_bytes(self) -> int | None:
        return None if self.memory_gib is None else int(self.memory_gib * GIB)


# How far `[limits]` may raise each limit: far above any model or codec (H.264 and AV1 stop at
# 8192 and 65536 pixels a side), so an override stays a bound on what one item may allocate.
CEILINGS = Limits(
    max_frames=100_000, max_side=65_536, max_pixels=2**30, max_steps=100_000, max_fps=1_000
)


def limits_problem(limits: Limits) -> tuple[str, str] | None:
    """(key, message) for the first limit below 1 or above its ceiling, or None."""
    ceilings = asdict(CEILINGS)
    for key, value in asdict(limits).items():
        if value < 1:
            return f"limits.{key}", f"must be at least 1, got {value}"
        if value > ceilings[key]:
            return f"limits.{key}", (
                f"must be at most {ceilings[key]:,} (a bound on what one item may allocate), "
                f"got {value:,}"
            )
    return None


def parse_device(raw: Mapping[str, Any]) -> DeviceSettings | tuple[str, str]:
    """The `[device]` table, or (key, message) for its first problem."""
    unknown = sorted(set(raw) - set(DEVICE_KEYS))
    if unknown:
        names = ", ".join(f"device.{k}" for k in unknown)
        return names, f"unknown key; allowed here: {', '.join(DEVICE_KEYS)}"
    value = raw.get("memory_gib")
    if value is None:
        return DeviceSettings()
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not number or not math.isfinite(value) or value <= 0:
        return (
            "device.memory_gib",
            "must be a positive number of GiB (the memory one worker may plan for, e.g. 20 on a "
            f"shared 80 GiB GPU), got {value!r}",
        )
    return DeviceSettings(memory_gib=float(value))
