"""`MochiPipeline`: Pusa V0.5 (Mochi 1 AsymmDiT with per-frame timesteps) behind `Pipeline`.

What differs from Wan, as the V0.5 release does it (research/pusa-method.md sections 0.2, 1.3):
- prompts: T5 to 256 tokens, (features, mask); an empty prompt is all-zero ids and an all-False
  mask (`models.mochi_conventions.mochi_text_inputs`), so the default negative prompt ""
  attends to nothing;
- conditioning pixels: the Mochi VAE (6x time, 8x space, 12 channels). `condition_latents =
  "sample"` (the default) draws the posterior *sample* from a generator seeded by the item, and
  `normalize_condition = false` writes it un-normalised, as the release does; `"mean"` and
  `true` are the consistent alternative;
- sampling: the linear-quadratic schedule and the DiT's velocity (`mochi_velocity`, v = -pred);
- decoding: `dit_latents_to_vae_latents`, then the VAE decoder.
Everything item-level (sizes, the conditioning plan, media, noise, the Euler loop) is shared.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pusa_batch import sampler
from pusa_batch.models.mochi import LATENT_CHANNELS, load_mochi_transformer
from pusa_batch.models.mochi_conventions import (
    decode_mochi_latents,
    encode_mochi_text,
    mochi_velocity,
    vae_latents_to_dit_latents,
)
from pusa_batch.models.text import PromptCache, load_text_model
from pusa_batch.pipelines.base import Pipeline, PixelEncoder, apply_determinism
from pusa_batch.pipelines.spec import PipelineSpec

__all__ = ["MochiPipeline", "MochiText", "condition_generator", "encode_condition"]

# XORed into the item seed for the conditioning generator: with the bare seed the posterior
# sample of latent 0 would replay the first values of the item's noise.
CONDITION_SEED_SALT = 0x5EED_C0DE


def condition_generator(seed: int) -> torch.Generator:
    """The CPU generator an item's conditioning samples come from (same seed, same latents)."""
    return torch.Generator("cpu").manual_seed((int(seed) ^ CONDITION_SEED_SALT) % 2**32)


def pixels_to_video(pixels: np.ndarray) -> Tensor:
    """uint8 (n, H, W, 3) -> float32 (1, 3, n, H, W) in [-1, 1]."""
    x = torch.tensor(np.asarray(pixels, dtype=np.uint8)).permute(3, 0, 1, 2)[None]
    return x.float() / 127.5 - 1.0


@torch.no_grad()
def encode_condition(
    vae: torch.nn.Module,
    video: Tensor,
    *,
    mode: str,
    normalize: bool,
    generator: torch.Generator | None = None,
) -> Tensor:
    """(1, 3, n, H, W) in [-1, 1] -> latents (1, 12, 1 + (n-1)//6, H/8, W/8), float32 on the CPU.

    `mode` "sample" draws from the posterior with `generator`; "mean" takes its mean.
    """
    param = next(vae.parameters())
    dist = vae.encode(video.to(param.device, param.dtype)).latent_dist
    latents = dist.sample(generator=generator) if mode == "sample" else dist.mode()
    latents = latents.float().cpu()
    return (vae_latents_to_dit_latents(latents) if normalize else latents).contiguous()


class MochiText:
    """T5 tokenizer + encoder, loaded once; `encode(prompt)` -> (features, mask), LRU-cached."""

    def __init__(self, tokenizer, model: torch.nn.Module, *, max_length: int, cache_size: int):
        self.tokenizer = tokenizer
        self.model = model.eval()
        self.max_length = max_length
        self.calls = 0  # encoder forward passes actually run (cache misses)
        self._cache: PromptCache[tuple[Tensor, Tensor]] = PromptCache(cache_size)

    @classmethod
    def load(
        cls,
        text_encoder_path: Path,
        tokenizer_path: Path,
        *,
        max_length: int,
        device: torch.device,
        dtype: torch.dtype,
        cache_size: int,
    ) -> MochiText:
        from transformers import T5EncoderModel

        tokenizer, model = load_text_model(
            T5EncoderModel, "T5", text_encoder_path, tokenizer_path, dtype
        )
        model = model.to(device).requires_grad_(False)
        return cls(tokenizer, model, max_length=max_length, cache_size=cache_size)

    def encode(self, prompt: str) -> tuple[Tensor, Tensor]:
        """((1, L, d_model) features, (1, L) bool mask) on the CPU."""
        return self._cache.get(prompt, lambda: self._run(prompt))

    def _run(self, prompt: str) -> tuple[Tensor, Tensor]:
        with torch.inference_mode():
            feat, mask = encode_mochi_text(self.model, self.tokenizer, [prompt], self.max_length)
        self.calls += 1
        return feat.cpu(), mask.cpu()


class MochiPipeline(Pipeline):
    """Pusa V0.5: `pusa_v0_dit.safetensors`, the Mochi VAE (diffusers) and T5."""

    z_dim = LATENT_CHANNELS
    upstream_rounding = "noise"  # V0.5 draws its noise in bf16; the rest of its start is fp32

    def __init__(
        self,
        spec: PipelineSpec,
        *,
        device: torch.device,
        dtype: torch.dtype,
        text: MochiText,
        vae: torch.nn.Module,
        dit: torch.nn.Module,
        storage_options: dict | None = None,
    ):
        super().__init__(spec, device=device, dtype=dtype, storage_options=storage_options)
        self.text = text
        self.vae = vae
        self.dit = dit

    @classmethod
    def build(
        cls,
        spec: PipelineSpec,
        paths: dict[str, Path],
        dev: torch.device,
        dtype: torch.dtype,
        storage_options: dict | None = None,
    ) -> MochiPipeline:
        apply_determinism(spec.options)  # first: before anything reaches the GPU
        opts = spec.options
        text = MochiText.load(
            paths["text_encoder"],
            paths["tokenizer"],
            max_length=opts.text_max_length,
            device=torch.device("cpu") if opts.text_encoder_offload else dev,
            # T5 v1.1 overflows in fp16; bf16 and fp32 are safe.
            dtype=torch.float32 if dtype == torch.float16 else dtype,
            cache_size=opts.prompt_cache_size,
        )
        vae = _load_mochi_vae(paths["vae"], dev, tiling=opts.vae_tiling)
        dit = load_mochi_transformer(paths["dit"], dtype=dtype, device=dev).requires_grad_(False)
        return cls(
            spec,
            device=dev,
            dtype=dtype,
            text=text,
            vae=vae,
            dit=dit,
            storage_options=storage_options,
        )

    def encode_prompt(self, prompt: str) -> tuple[Tensor, Tensor]:
        with self._text_lock:
            return self.text.encode(prompt)

    def describe(self) -> dict[str, Any]:
        opts = self.spec.options
        return {
            **super().describe(),
            "threshold_noise": opts.threshold_noise,
            "shift": "ignored: the linear-quadratic schedule has no shift",
            "condition_latents": opts.condition_latents,
            "normalize_condition": opts.normalize_condition,
        }

    def encode_video(self, pixels: np.ndarray, generator: torch.Generator | None = None) -> Tensor:
        """uint8 (n, H, W, 3) -> conditioning latents (1, 12, 1 + (n-1)//6, h, w), CPU."""
        opts = self.spec.options
        with self._vae_lock:
            return encode_condition(
                self.vae,
                pixels_to_video(pixels),
                mode=opts.condition_latents,
                normalize=opts.normalize_condition,
                generator=generator,
            )

    def decode(self, latents: Tensor) -> np.ndarray:
        """uint8 (frames, H, W, 3): DiT latents un-normalised, then the Mochi VAE decoder."""
        with self._vae_lock, torch.inference_mode():
            frames = decode_mochi_latents(self.vae, latents.to(self.device))
        return frames[0].cpu().numpy()

    def _pixel_encoder(self, item: Any) -> PixelEncoder:
        generator = condition_generator(item.seed)  # consumed in slot order: deterministic
        return lambda pixels: self.encode_video(pixels, generator)

    def _model_fn(
        self,
        positive: sampler.Context,
        negative: sampler.Context | None,
        scale: float,
        multipliers: Tensor | None,
    ) -> sampler.ModelFn:
        def call(x: Tensor, sigma: Tensor, context: sampler.Context) -> Tensor:
            feat, mask = context
            v = mochi_velocity(self.dit, x.to(self.dtype), sigma, feat.to(self.dtype), mask)
            return v.float()

        return sampler.guided(
            call, positive, negative, scale, batched=self.spec.options.batched_cfg
        )


def _load_mochi_vae(path: Path, device: torch.device, *, tiling: bool) -> torch.nn.Module:
    from pusa_batch.models.original_mochi import load_mochi_vae

    vae = load_mochi_vae(path)  # a diffusers folder, or genmo's encoder/decoder.safetensors
    if tiling:
        vae.enable_tiling()
    return vae.to(device).eval().requires_grad_(False)
