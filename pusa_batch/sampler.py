"""Schedules, the frame-level Euler loop and the model-fn wrappers (torch only; no I/O).

Convention: ``model_fn(x, sigma) -> v`` with ``x`` of shape (B, C, F, H, W), ``sigma`` of shape
(B, F) holding each frame's own noise level (already multiplied by its conditioning multiplier),
and ``v`` the flow velocity dx/dsigma (about ``noise - x0``). See docs/architecture.md.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

ModelFn = Callable[[Tensor, Tensor], Tensor]
Callback = Callable[[int, int, Tensor], None]

# ---------------------------------------------------------------------------------------------
# Schedules


def shifted_sigmas(steps: int, shift: float = 5.0) -> Tensor:
    """Pusa V1 / Wan: s = linspace(1, 0, N+1), sigma = shift*s / (1 + (shift-1)*s); last is 0.

    In float32, as DiffSynth's FlowMatch scheduler computes it: the DiT's bf16 timesteps are then
    the official pipelines' at every step count (from float64 they differ by one bf16 step at
    some step of 60 of the counts 1..1000, the first at 84 steps; docs/parity.md).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    s = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float32)
    sigmas = shift * s / (1 + (shift - 1) * s)
    sigmas[-1] = 0.0
    return sigmas


def linear_quadratic_sigmas(
    steps: int, threshold_noise: float = 0.025, linear_steps: int | None = None
) -> Tensor:
    """Pusa V0.5 / Mochi (genmo's linear_quadratic_schedule), as sigmas from 1.0 down to 0.0.

    Sigma falls linearly from 1 to ``1 - threshold_noise`` over ``linear_steps`` (default N//2)
    steps, then quadratically to 0.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if steps == 1:
        return torch.tensor([1.0, 0.0])
    n_lin = steps // 2 if linear_steps is None else linear_steps
    if not 0 < n_lin < steps:
        raise ValueError(f"linear_steps must be in 1..{steps - 1}, got {n_lin}")
    linear = [i * threshold_noise / n_lin for i in range(n_lin)]
    diff = n_lin - threshold_noise * steps
    n_quad = steps - n_lin
    quad_coef = diff / (n_lin * n_quad**2)
    lin_coef = threshold_noise / n_lin - 2 * diff / (n_quad**2)
    const = quad_coef * n_lin**2
    quadratic = [quad_coef * i**2 + lin_coef * i + const for i in range(n_lin, steps)]
    return torch.tensor([1.0 - t for t in (*linear, *quadratic, 1.0)], dtype=torch.float32)


# ---------------------------------------------------------------------------------------------
# Conditioning


@dataclass(frozen=True, eq=False)
class ConditioningSpec:
    """Clean latents written at ``latent_index`` and their noise multipliers (0 = frozen).

    ``clean`` has shape (B, C, n, H, W) with n == len(latent_index); B may be 1 (broadcast).
    """

    latent_index: tuple[int, ...]
    clean: Tensor
    multipliers: tuple[float, ...]

    def __post_init__(self) -> None:
        n = len(self.latent_index)
        if self.clean.dim() != 5:
            raise ValueError(f"clean must be (B, C, n, H, W), got shape {tuple(self.clean.shape)}")
        if self.clean.shape[2] != n or len(self.multipliers) != n:
            raise ValueError(
                f"{n} latent indices, {self.clean.shape[2]} clean latents and "
                f"{len(self.multipliers)} multipliers: give one of each per conditioned frame"
            )
        if len(set(self.latent_index)) != n:
            raise ValueError(f"latent indices must be unique, got {self.latent_index}")
        if any(not 0.0 <= m <= 1.0 for m in self.multipliers):
            raise ValueError(f"multipliers must be within [0, 1], got {self.multipliers}")

    def check_fits(self, num_frames_latent: int) -> None:
        """Raise ValueError unless every index is in [0, F) and at least one frame stays free."""
        bad = [i for i in self.latent_index if not 0 <= i < num_frames_latent]
        if bad:
            raise ValueError(f"latent indices {bad} outside 0..{num_frames_latent - 1}")
        if len(self.latent_index) >= num_frames_latent:
            raise ValueError(
                f"all {num_frames_latent} latent frames are conditioned; leave at least one free"
            )


def frame_scale(num_frames_latent: int, spec: ConditioningSpec | None) -> Tensor:
    """(F,) float32: 1 for free frames, the multiplier m for conditioned ones."""
    scale = torch.ones(num_frames_latent)
    if spec is not None:
        spec.check_fits(num_frames_latent)
        scale[list(spec.latent_index)] = torch.tensor(spec.multipliers, dtype=torch.float32)
    return scale


INITIAL_ROUNDINGS = ("noise", "state")


def bf16_values(t: Tensor) -> Tensor:
    """Every element rounded to the nearest bf16 value, kept in `t`'s dtype."""
    return t.to(torch.bfloat16).to(t.dtype)


def initial_latents(
    noise: Tensor,
    sigmas: Tensor,
    spec: ConditioningSpec | None,
    *,
    rounding: str | None = None,
) -> Tensor:
    """x = noise; conditioned frames get their clean latent, noised once with the same noise.

    ``rounding`` reproduces the official pipelines' bf16 start (pipeline option `numerics =
    "upstream"`, docs/parity.md): "noise" rounds the noise to bf16 values first (Pusa V0.5 draws
    it in bf16); "state" also rounds the clean latents first and the whole state after (Pusa V1
    holds noise, conditioning latents and the noised conditioned frames in bf16 until its first
    step). None (the default) keeps everything as given. The result stays in ``noise.dtype``.
    """
    if rounding is not None and rounding not in INITIAL_ROUNDINGS:
        raise ValueError(f"rounding must be None or one of {INITIAL_ROUNDINGS}, got {rounding!r}")
    if rounding is not None:
        noise = bf16_values(noise)
    x = noise.clone()
    if spec is None:
        return x
    spec.check_fits(noise.shape[2])
    clean = spec.clean.to(noise.dtype)
    if rounding == "state":
        clean = bf16_values(clean)
    same_tail = clean.shape[1:2] + clean.shape[3:] == noise.shape[1:2] + noise.shape[3:]
    if clean.shape[0] not in (1, noise.shape[0]) or not same_tail:
        raise ValueError(
            f"clean latents {tuple(spec.clean.shape)} do not match noise {tuple(noise.shape)}"
        )
    clean = clean.expand(noise.shape[0], -1, -1, -1, -1)
    sigma0 = sigmas[0].to(device=noise.device, dtype=torch.float32)
    for j, (f, m) in enumerate(zip(spec.latent_index, spec.multipliers)):
        x[:, :, f] = clean[:, :, j]
        if m > 0:
            s = sigma0 * m  # a float32 tensor: (1 - s) rounds as the official pipelines round it
            x[:, :, f] = ((1 - s) * clean[:, :, j] + s * noise[:, :, f]).to(x.dtype)
    return bf16_values(x) if rounding == "state" else x


# ---------------------------------------------------------------------------------------------
# The sampler


def sample(
    model_fn: ModelFn,
    noise: Tensor,
    sigmas: Tensor,
    cond: ConditioningSpec | None = None,
    *,
    callback: Callback | None = None,
    initial_rounding: str | None = None,
) -> Tensor:
    """Euler flow matching with one noise level per frame.

    Frame f follows the trajectory ``scale_f * sigmas``; frames with multiplier 0 are returned
    bit-identical to their clean latent. Conditioning is written once, never re-injected.
    ``callback(step, total, x)`` runs after each step, with step counting 1..total.
    ``initial_rounding`` is `initial_latents`' ``rounding``; the loop itself always runs in
    ``noise.dtype``.
    """
    if noise.dim() != 5:
        raise ValueError(f"noise must be (B, C, F, H, W), got shape {tuple(noise.shape)}")
    if sigmas.dim() != 1 or len(sigmas) < 2 or float(sigmas[-1]) != 0.0:
        raise ValueError("sigmas must be 1-D with at least 2 entries, ending at 0")
    batch, frames = noise.shape[0], noise.shape[2]
    scale = frame_scale(frames, cond).to(noise.device)
    frozen = (scale == 0).view(1, 1, frames, 1, 1)
    sigmas = sigmas.to(device=noise.device, dtype=torch.float32)
    x = initial_latents(noise, sigmas, cond, rounding=initial_rounding)
    total = len(sigmas) - 1
    for k in range(total):
        sigma_frames = (sigmas[k] * scale).expand(batch, frames)
        v = model_fn(x, sigma_frames)
        if v.shape != x.shape:
            raise ValueError(f"model_fn returned shape {tuple(v.shape)}, expected {tuple(x.shape)}")
        step = (scale * (sigmas[k + 1] - sigmas[k])).view(1, 1, frames, 1, 1)
        x = torch.where(frozen, x, x + v.to(x.dtype) * step)
        if callback is not None:
            callback(k + 1, total, x)
    return x


# ---------------------------------------------------------------------------------------------
# Model-fn wrappers

Context = Tensor | tuple[Tensor, ...]
ModelCall = Callable[[Tensor, Tensor, Context], Tensor]


def _pad_to(t: Tensor, length: int) -> Tensor:
    if t.dim() < 2 or t.shape[1] == length:
        return t
    pad = t.new_zeros((t.shape[0], length - t.shape[1], *t.shape[2:]))
    return torch.cat([t, pad], dim=1)


def _cat_contexts(pos: Context, neg: Context, batch: int) -> Context:
    """Concatenate two contexts along batch, expanding batch-1 ones and zero-padding dim 1."""
    if isinstance(pos, Tensor):
        pos_t, neg_t = pos.expand(batch, *pos.shape[1:]), neg.expand(batch, *neg.shape[1:])
        length = max(pos_t.shape[1], neg_t.shape[1]) if pos_t.dim() >= 2 else 0
        return torch.cat([_pad_to(pos_t, length), _pad_to(neg_t, length)], dim=0)
    if len(pos) != len(neg):
        raise ValueError("positive and negative contexts must have the same parts")
    return tuple(_cat_contexts(p, n, batch) for p, n in zip(pos, neg))


def guided(
    model_call: ModelCall,
    positive: Context,
    negative: Context | None,
    scale: float,
    *,
    batched: bool = False,
) -> ModelFn:
    """Classifier-free guidance: v = neg + scale * (pos - neg); scale 1 runs only the positive pass.

    ``batched=True`` runs one pass on the doubled batch. Contexts (a tensor or a tuple of tensors,
    batch first) are then expanded from batch 1 and zero-padded along dim 1 to the longer one.
    Zero padding is exact for Wan (umT5 embeddings are zero past the real tokens, padded to 512
    anyway) and for masks (False); for a model whose padding is not zeros, use two passes.
    """
    if scale == 1.0:
        return lambda x, sigma: model_call(x, sigma, positive)
    if negative is None:
        raise ValueError(f"guidance scale {scale} needs a negative context")

    def two_pass(x: Tensor, sigma: Tensor) -> Tensor:
        pos = model_call(x, sigma, positive)
        neg = model_call(x, sigma, negative)
        return neg + scale * (pos - neg)

    def one_pass(x: Tensor, sigma: Tensor) -> Tensor:
        context = _cat_contexts(positive, negative, x.shape[0])
        v = model_call(torch.cat([x, x]), torch.cat([sigma, sigma]), context)
        pos, neg = v.chunk(2)
        return neg + scale * (pos - neg)

    return one_pass if batched else two_pass


def wan_timesteps(
    sigma_frames: Tensor, *, conditioned: bool = True, multipliers: Tensor | None = None
) -> Tensor:
    """Pusa V1's DiT timesteps, rounded in the order the official pipelines round them.

    The step's timestep `1000 * sigma_k` (sigma_k: the item's largest frame sigma, its free
    frames) is cast to bf16 first. Unconditioned (T2V, `wan_video_pusa.py`, `wan22_video_pusa.py`)
    that is all. Conditioned (`*_multi_frames.py`, `*_v2v.py`) each frame's bf16 timestep is
    multiplied by its multiplier (in float32, rounded to bf16, as a bf16 tensor times a Python
    float is), then truncated to an integer and cast to bf16 again, for every frame. E.g. sigma_k
    0.9783: 978.3 -> 980 (both); at multiplier 0.2, 196.
    ``multipliers`` (F,) are the frames' noise multipliers (1 for free frames). Give them: without
    them each is recovered as sigma_f / sigma_k, which can miss float32(m) by its last bit and so
    land a product that is a bf16 tie (740 * 0.35 = 259) one bf16 step off.
    Returned as float32 of `sigma_frames`' shape `(B, F)`.
    """
    sigma = sigma_frames.float()
    step = sigma.amax(dim=-1, keepdim=True)
    t = (step * 1000.0).to(torch.bfloat16)
    if not conditioned:
        return t.float().expand_as(sigma).contiguous()
    if multipliers is not None:
        multiplier = multipliers.to(device=sigma.device, dtype=torch.float32).expand_as(sigma)
    else:
        multiplier = torch.where(step > 0, sigma / step.clamp_min(1e-30), torch.zeros_like(sigma))
    scaled = (t.float() * multiplier).to(torch.bfloat16)  # bf16 tensor x python float, upstream
    return scaled.long().to(torch.bfloat16).float()


TIMESTEP_RULES = {
    "t2v": "bf16(1000*sigma_k)",
    "conditioned": "bf16(long(bf16(bf16(1000*sigma_k) * m)))",
}


def expert_switch(high_fn: ModelFn, low_fn: ModelFn, boundary: float = 0.875) -> ModelFn:
    """Wan2.2: the high-noise expert while the step's un-multiplied t >= boundary*1000, else low.

    The step sigma is the max over frames (at least one frame is always free), so conditioned
    frames never change the choice: one expert per step for all frames.
    """

    def model_fn(x: Tensor, sigma: Tensor) -> Tensor:
        t = float(sigma.max()) * 1000.0
        return high_fn(x, sigma) if t >= boundary * 1000.0 else low_fn(x, sigma)

    return model_fn


# ---------------------------------------------------------------------------------------------
# Noise


def make_noise(shape: Sequence[int], seed: int) -> Tensor:
    """float32 noise from a fresh CPU generator: the same seed gives the same tensor anywhere."""
    generator = torch.Generator("cpu").manual_seed(int(seed))
    return torch.randn(tuple(shape), generator=generator, dtype=torch.float32)
