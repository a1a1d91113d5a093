"""The checks of a parsed pipeline TOML's values, and `Where`, which names the file and the key in
every `PipelineError` they raise. Each check raises on the first problem it finds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pusa_batch.errors import PipelineError
from pusa_batch.item import FITS
from pusa_batch.models.teacache import COEFFICIENTS as TEACACHE_MODELS
from pusa_batch.pipelines.spec_types import (
    DIFFUSERS_VAE_TILE,
    VAE_TILE_OPTIONS,
    Defaults,
    Options,
)

SCHEDULES = ("auto", "shifted", "linear_quadratic")
CONDITION_LATENTS = ("sample", "mean")
DTYPES = ("auto", "bf16", "fp16", "fp32")
ATTENTIONS = ("sdpa", "flash", "sage")  # flash and sage: checked installed by doctor and load
IDLE_EXPERT = ("keep", "offload")
NUMERICS = ("fp32", "upstream")  # docs/parity.md
LORA_KINDS = ("pusa", "lightx2v")
EXPERTS = ("high", "low")


class Where:
    """Names the file and key in every error."""

    def __init__(self, source: Path):
        self.source = source

    def fail(self, key: str, message: str) -> PipelineError:
        return PipelineError(f"{self.source}: {key}: {message}")

    def table(self, raw: Mapping[str, Any], key: str) -> Mapping[str, Any]:
        value = raw.get(key, {})
        if not isinstance(value, Mapping):
            raise self.fail(key, f"must be a table ([{key}]), got {type(value).__name__}")
        return value

    def no_unknown(self, raw: Mapping[str, Any], allowed: tuple[str, ...], prefix: str) -> None:
        unknown = sorted(set(raw) - set(allowed))
        if unknown:
            names = ", ".join(f"{prefix}{k}" for k in unknown)
            raise self.fail(names, f"unknown key; allowed here: {', '.join(allowed)}")


def check_command(where: Where, key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise where.fail(key, f"must be a shell command (a non-empty string), got {value!r}")
    return value.strip()


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def has_type(value: Any, want: type) -> bool:
    if want is float:
        return is_number(value)
    if want is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, want)


def check_defaults(where: Where, d: Defaults, r: int) -> None:
    if d.num_frames < r + 1 or (d.num_frames - 1) % r:
        examples = "163, 19" if r == 6 else "81, 17"
        raise where.fail(
            "defaults.num_frames",
            f"must be {r}k+1 and >= {r + 1} ({examples}...), got {d.num_frames}",
        )
    for key in ("height", "width"):
        value = getattr(d, key)
        if value < 16 or value % 16:
            raise where.fail(f"defaults.{key}", f"must be a positive multiple of 16, got {value}")
    checks = {
        "fps": d.fps >= 1,
        "steps": 1 <= d.steps <= 1000,
        "seed": 0 <= d.seed < 2**32,
        "guidance_scale": d.guidance_scale >= 1.0,
        "shift": d.shift > 0,
    }
    for key, ok in checks.items():
        if not ok:
            raise where.fail(f"defaults.{key}", f"out of range: {getattr(d, key)!r}")
    for key in ("image_fit", "video_fit"):
        if getattr(d, key) not in FITS:
            raise where.fail(
                f"defaults.{key}", f"must be one of {', '.join(FITS)}, got {getattr(d, key)!r}"
            )


def check_options(where: Where, o: Options, family: str) -> None:
    choices = {
        "dtype": DTYPES,
        "attention": ATTENTIONS,
        "idle_expert": IDLE_EXPERT,
        "schedule": SCHEDULES,
        "condition_latents": CONDITION_LATENTS,
        "numerics": NUMERICS,
    }
    for key, allowed in choices.items():
        if getattr(o, key) not in allowed:
            raise where.fail(f"options.{key}", f"must be one of {', '.join(allowed)}")
    if o.device != "auto" and o.device.split(":")[0] not in ("cpu", "cuda"):
        raise where.fail("options.device", f"must be auto, cpu, cuda or cuda:N, got {o.device!r}")
    if not 0 < o.switch_boundary < 1:
        raise where.fail("options.switch_boundary", "must be between 0 and 1 (0.875 for Wan2.2)")
    if not 1 <= o.text_max_length <= 4096:
        raise where.fail("options.text_max_length", "must be in 1..4096 (Wan uses 512)")
    if o.prompt_cache_size < 0:
        raise where.fail("options.prompt_cache_size", "must be >= 0")
    if not 0 < o.threshold_noise < 1:
        raise where.fail("options.threshold_noise", "must be between 0 and 1 (Mochi uses 0.025)")
    if family == "mochi" and o.attention != "sdpa":
        raise where.fail("options.attention", 'the Mochi DiT runs on sdpa only: use "sdpa"')
    _check_speed_options(where, o, family)
    _check_vae_tile(where, o, family)


def _check_speed_options(where: Where, o: Options, family: str) -> None:
    """`compile` and TeaCache are Wan options; the threshold is >= 0, the model one of
    upstream's polynomials."""
    if family == "mochi" and o.compile:
        raise where.fail("options.compile", "only wan pipelines compile their DiT blocks")
    if not 0 <= o.teacache_threshold <= 10:
        raise where.fail(
            "options.teacache_threshold",
            f"must be 0 (off) or a positive number up to 10, got {o.teacache_threshold:g}",
        )
    if family == "mochi" and o.teacache_threshold > 0:
        raise where.fail("options.teacache_threshold", "TeaCache is for wan pipelines only")
    if o.teacache_model not in TEACACHE_MODELS:
        raise where.fail(
            "options.teacache_model", f"must be one of {', '.join(TEACACHE_MODELS)} (upstream's)"
        )


def _check_vae_tile(where: Where, o: Options, family: str) -> None:
    """Tile and stride: 0 (diffusers' own) or positive multiples of 8 pixels (one latent), the
    stride no larger than its tile, and only with `vae_tiling = true` on a Wan pipeline."""
    given = [k for k in VAE_TILE_OPTIONS if getattr(o, k)]
    for key in VAE_TILE_OPTIONS:
        value = getattr(o, key)
        if value < 0 or value % 8:
            raise where.fail(
                f"options.{key}", f"must be 0 or a positive multiple of 8 pixels, got {value}"
            )
    if given and family == "mochi":
        raise where.fail(f"options.{given[0]}", "only wan pipelines take VAE tile sizes")
    if given and not o.vae_tiling:
        raise where.fail(f"options.{given[0]}", "takes effect only with vae_tiling = true")
    for side in ("height", "width"):
        tile = getattr(o, f"vae_tile_{side}") or DIFFUSERS_VAE_TILE[0]
        stride = getattr(o, f"vae_tile_stride_{side}") or DIFFUSERS_VAE_TILE[1]
        if stride > tile:
            raise where.fail(
                f"options.vae_tile_stride_{side}",
                f"{stride} is larger than the tile ({tile}; vae_tile_{side}): it would leave gaps",
            )
