"""TeaCache for the Wan DiT: skip the transformer blocks when the timestep modulation has barely
moved since the last full forward, and add the blocks' last residual instead.

Upstream Pusa V1 (DiffSynth) has it in `PusaV1/diffsynth/pipelines/wan_video_pusa.py` (the
class at 514-563, its use in `model_fn_wan_video` at 629-650, one cache per CFG branch at 451-452,
the `tea_cache_l1_thresh=None` / `tea_cache_model_id=""` parameters at 369-370); the same class is
in `wan_video_pusa_multi_frames.py`, `wan_video_pusa_v2v.py` and `wan22_video_pusa*.py`, where
both Wan2.2 experts share a branch's cache (`wan22_video_pusa.py` 493-494, 536-548). Semantics,
kept here:

- The "modulated input" is the time projection `t_mod = time_projection(time_embedding(t))`
  (6 x dim per token) in the model dtype, before the blocks add their `scale_shift_table`.
- Each call, after the first, adds `poly(mean|t_mod - t_mod_prev| / mean|t_mod_prev|)` to an
  accumulated distance, `poly` the model's fourth-degree polynomial (`COEFFICIENTS`). Below the
  threshold the blocks are skipped and `tokens + residual` is used; otherwise the blocks run,
  the distance resets to 0 and `residual = blocks(tokens) - tokens` is kept. The first and the
  last call of a run (`steps` calls) always run the blocks. `t_mod_prev` is the previous call's,
  skipped or not. The patch embedding and the head always run.
- Conditional and unconditional CFG passes keep separate caches.

With frame-level timesteps Pusa's `t_mod` is one (6, dim) row per latent frame repeated over the
frame's h*w tokens, so its mean over tokens is the mean over frames: this module takes the
per-frame modulation `(B, F, 6, dim)` the model already has and gets the same number without a
per-token tensor. Frames held clean (multiplier 0) keep the same rows every step, so they add to
the denominator and nothing to the numerator: as upstream, the more frames are conditioned, the
smaller the distance and the more steps are skipped at a given threshold.

Batches: upstream runs one video per pass. Here the distance is taken per sample and the largest
counts, so a sample never skips more than it would alone (items batched together share their
timesteps, so their distances are equal); a batched-CFG pass (cond and uncond in one batch) is
then the two upstream caches in one, each half with its own residual.

Differences: `threshold = 0` means off (no cache is made); upstream's 0.0 still builds one, and
since the polynomials are negative near 0, can skip. Nothing here imports torch (the spec parser
reads `COEFFICIENTS`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor

# Upstream's rescaling polynomials, highest power first (wan_video_pusa.py 524-529).
COEFFICIENTS: dict[str, tuple[float, ...]] = {
    "Wan2.1-T2V-1.3B": (
        -5.21862437e04, 9.23041404e03, -5.28275948e02, 1.36987616e01, -4.99875664e-02
    ),
    "Wan2.1-T2V-14B": (
        -3.03318725e05, 4.90537029e04, -2.65530556e03, 5.87365115e01, -3.15583525e-01
    ),
    "Wan2.1-I2V-14B-480P": (
        2.57151496e05, -3.54229917e04, 1.40286849e03, -1.35890334e01, 1.32517977e-01
    ),
    "Wan2.1-I2V-14B-720P": (
        8.10705460e03, 2.13393892e03, -3.72934672e02, 1.66203073e01, -4.17769401e-02
    ),
}  # fmt: skip
DEFAULT_MODEL = "Wan2.1-T2V-14B"


def rescale(model: str, distance: float) -> float:
    """The model's polynomial at `distance` (Horner, in float64 as numpy's poly1d)."""
    value = 0.0
    for c in COEFFICIENTS[model]:
        value = value * distance + c
    return value


class TeaCache:
    """One CFG branch's cache for one sampling run of `steps` steps (`BlockCache`)."""

    def __init__(self, steps: int, threshold: float, model: str = DEFAULT_MODEL):
        if model not in COEFFICIENTS:
            raise ValueError(f"TeaCache model {model!r}: choose one of {', '.join(COEFFICIENTS)}")
        if steps < 1 or not threshold > 0:
            raise ValueError(
                f"TeaCache needs steps >= 1 and threshold > 0, got {steps}, {threshold}"
            )
        self.steps, self.threshold, self.model = steps, float(threshold), model
        self.step = 0  # calls so far in this run, modulo `steps`
        self.accumulated = 0.0
        self.previous_mod: Tensor | None = None
        self.residual: Tensor | None = None
        self.calls = 0
        self.skipped = 0
        self.distances: list[float] = []  # each call's relative L1 distance (0 when not taken)

    @property
    def skipped_fraction(self) -> float:
        return self.skipped / self.calls if self.calls else 0.0

    def should_compute(self, mod: Tensor) -> bool:
        """Upstream's `check`: advance the step and say whether the blocks must run."""
        edge = self.step == 0 or self.step == self.steps - 1
        if edge or self.previous_mod is None or self.previous_mod.shape != mod.shape:
            compute, distance = True, 0.0
        else:
            prev = self.previous_mod
            dims = tuple(range(1, mod.dim()))
            rel = (mod - prev).abs().mean(dim=dims) / prev.abs().mean(dim=dims)
            distance = max(rel.tolist())
            self.accumulated += rescale(self.model, distance)
            compute = self.accumulated >= self.threshold
        if compute:
            self.accumulated = 0.0
        self.distances.append(distance)
        self.previous_mod = mod
        self.step = (self.step + 1) % self.steps
        return compute

    def run(self, tokens: Tensor, mod: Tensor, blocks: Callable[[Tensor], Tensor]) -> Tensor:
        """tokens (B, N, D) before the blocks, mod (B, G, 6, D): the tokens after them."""
        self.calls += 1
        compute = self.should_compute(mod)
        if not compute and self.residual is not None and self.residual.shape == tokens.shape:
            self.skipped += 1
            return tokens + self.residual
        out = blocks(tokens)
        self.residual = out - tokens
        return out

    def summary(self) -> dict[str, float | int | str]:
        return {
            "model": self.model,
            "threshold": self.threshold,
            "calls": self.calls,
            "skipped": self.skipped,
        }


class BranchCaches:
    """A sampling run's caches, one per CFG branch ("positive", "negative", "batched"), made on
    first use; Wan2.2's two experts share them, as upstream's do."""

    def __init__(self, steps: int, threshold: float, model: str = DEFAULT_MODEL):
        self.steps, self.threshold, self.model = steps, threshold, model
        self.branches: dict[str, TeaCache] = {}

    def get(self, branch: str) -> TeaCache:
        if branch not in self.branches:
            self.branches[branch] = TeaCache(self.steps, self.threshold, self.model)
        return self.branches[branch]

    @property
    def calls(self) -> int:
        return sum(c.calls for c in self.branches.values())

    @property
    def skipped(self) -> int:
        return sum(c.skipped for c in self.branches.values())
