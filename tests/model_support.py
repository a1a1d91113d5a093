"""Helpers the model and sampler tests share, which the library itself never needs: several items'
noise in one batch, a Mochi-convention DiT as a model function, original-layout Wan state dicts,
header-only safetensors listings and Pusa V0.5's conditioning latents."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import torch
from torch import Tensor

from pusa_batch.models.loading import read_safetensors_header, weight_files
from pusa_batch.models.mochi_conventions import vae_latents_to_dit_latents
from pusa_batch.models.wan_keys import diffusers_name_to_wan
from pusa_batch.sampler import ModelFn, make_noise

V = TypeVar("V")


def stack_noise(shapes_and_seeds: Sequence[tuple[Sequence[int], int]]) -> Tensor:
    """Concatenate each item's own noise along batch: item i never depends on its batch mates.

    Each shape includes its batch axis (usually 1); all shapes must agree past it.
    """
    if not shapes_and_seeds:
        raise ValueError("stack_noise needs at least one (shape, seed)")
    tails = {tuple(shape[1:]) for shape, _ in shapes_and_seeds}
    if len(tails) != 1:
        raise ValueError(f"items in one micro-batch must share a latent shape, got {sorted(tails)}")
    return torch.cat([make_noise(shape, seed) for shape, seed in shapes_and_seeds], dim=0)


def flip_to_mochi(mochi_call: ModelFn, *, takes_time: bool = False) -> ModelFn:
    """Adapt a Mochi-convention DiT (predicts ``x0 - noise``) to ``model_fn``: v = -pred.

    genmo's DiT takes sigma and embeds ``1 - sigma`` itself; pass ``takes_time=True`` for a
    DiT whose input is already Mochi's time ``t = 1 - sigma`` (1 = clean). Either way Pusa
    V0.5's update ``z += (sigma - sigma_next) * pred`` is ``sample``'s Euler step.
    """

    def model_fn(x: Tensor, sigma: Tensor) -> Tensor:
        return -mochi_call(x, 1.0 - sigma if takes_time else sigma)

    return model_fn


def inspect_safetensors(path: str | Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """{key: (dtype, shape)} from the safetensors headers only; no tensor data is read."""
    out: dict[str, tuple[str, tuple[int, ...]]] = {}
    for file in weight_files(path):
        for key, info in read_safetensors_header(file).items():
            if key != "__metadata__":
                out[key] = (info["dtype"], tuple(info["shape"]))
    return out


def diffusers_to_wan(state_dict: Mapping[str, V], *, source: str = "checkpoint") -> dict[str, V]:
    out = {}
    for key, value in state_dict.items():
        name = diffusers_name_to_wan(key)
        if name is None:
            raise ValueError(f"{source}: {key} is not a diffusers Wan transformer key")
        out[name] = value
    return out


@torch.no_grad()
def mochi_condition_latents(
    vae, pixels: torch.Tensor, *, generator: torch.Generator, normalize: bool = False
) -> torch.Tensor:
    """Conditioning latents as Pusa V0.5 makes them: a seeded *sample* of the VAE posterior.

    pixels: (B, 3, F, H, W) in [-1, 1] -> (B, 12, 1 + (F - 1) // 6, H / 8, W / 8). The release
    writes the raw sample into the DiT-space latent without `vae_latents_to_dit_latents`
    (`normalize=False`, the default, reproduces that; `normalize=True` is the consistent choice).
    """
    param = next(vae.parameters())
    dist = vae.encode(pixels.to(param.device, param.dtype)).latent_dist
    latents = dist.sample(generator=generator)
    return vae_latents_to_dit_latents(latents) if normalize else latents
