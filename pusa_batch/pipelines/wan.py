"""`WanPipeline`: Pusa V1 on Wan2.1 (one transformer) or Wan2.2 (two experts).

The Wan family's hooks for the shared `Pipeline`: T5 prompts, the Wan VAE's latent
normalisation, the expert switch and idle-expert offload, LoRAs merged once at load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pusa_batch import sampler
from pusa_batch.errors import PipelineError
from pusa_batch.models.loading import load_wan_transformer
from pusa_batch.models.text import TextEncoder
from pusa_batch.pipelines.base import Pipeline, PixelEncoder, apply_determinism
from pusa_batch.pipelines.spec import PipelineSpec


class WanPipeline(Pipeline):
    """Pusa V1 on Wan2.1 (one transformer) or Wan2.2 (two experts), LoRAs merged once."""

    def __init__(
        self,
        spec: PipelineSpec,
        *,
        device: torch.device,
        dtype: torch.dtype,
        text: TextEncoder,
        vae: torch.nn.Module,
        experts: dict[str, torch.nn.Module],
        storage_options: dict | None = None,
    ):
        super().__init__(spec, device=device, dtype=dtype, storage_options=storage_options)
        self.text = text
        self.vae = vae
        self.experts = experts
        vae_cfg = vae.config
        self._latents_mean = torch.tensor(vae_cfg.latents_mean).view(1, -1, 1, 1, 1)
        # diffusers keeps 1/std and divides by it to un-normalise; same arithmetic, same bits.
        self._inv_std = 1.0 / torch.tensor(vae_cfg.latents_std).view(1, -1, 1, 1, 1)
        self.z_dim = int(vae_cfg.z_dim)

    @classmethod
    def build(
        cls,
        spec: PipelineSpec,
        paths: dict[str, Path],
        dev: torch.device,
        dtype: torch.dtype,
        storage_options: dict | None = None,
    ) -> WanPipeline:
        apply_determinism(spec.options)  # first: before anything reaches the GPU
        opts = spec.options
        text = TextEncoder.load(
            paths["text_encoder"],
            paths["tokenizer"],
            max_length=opts.text_max_length,
            device=torch.device("cpu") if opts.text_encoder_offload else dev,
            dtype=dtype,
            cache_size=opts.prompt_cache_size,
        )
        vae = _load_vae(paths["vae"], dev, tiling=opts.vae_tiling, tile=_vae_tile(opts))
        experts = {}
        for i, name in enumerate(spec.experts):
            # With idle_expert = "offload" only the first (high-noise) expert starts on the GPU.
            home = dev if i == 0 or opts.idle_expert == "keep" else torch.device("cpu")
            experts[name] = load_wan_transformer(
                paths[name], dtype=dtype, device=home, attention=opts.attention
            )
        _merge_loras(spec, experts)
        return cls(
            spec,
            device=dev,
            dtype=dtype,
            text=text,
            vae=vae,
            experts=experts,
            storage_options=storage_options,
        )

    def encode_prompt(self, prompt: str) -> Tensor:
        with self._text_lock:
            return self.text.encode(prompt)

    def describe(self) -> dict[str, Any]:
        """Also the LoRAs merged into each expert, and per merge what was merged and skipped."""
        loras = {name: list(model.merged_weights.loras) for name, model in self.experts.items()}
        merges = {name: list(m.merged_weights.merges) for name, m in self.experts.items()}
        return {
            **super().describe(),
            "loras": loras,
            "lora_merges": merges,
            "timesteps": dict(sampler.TIMESTEP_RULES),
        }

    def _model_fn(
        self,
        positive: sampler.Context,
        negative: sampler.Context | None,
        scale: float,
        multipliers: Tensor | None,
    ) -> sampler.ModelFn:
        opts = self.spec.options

        def expert_fn(name: str) -> sampler.ModelFn:
            call = self._model_call(name, multipliers)
            return sampler.guided(call, positive, negative, scale, batched=opts.batched_cfg)

        if self.spec.family == "wan2.2":
            return sampler.expert_switch(
                expert_fn("transformer"), expert_fn("transformer_2"), opts.switch_boundary
            )
        return expert_fn("transformer")

    def decode(self, latents: Tensor) -> np.ndarray:
        """uint8 (frames, H, W, 3) from normalised latents (diffusers' Wan un-normalisation)."""
        z = latents.float() / self._inv_std + self._latents_mean
        with self._vae_lock, torch.inference_mode():
            video = self.vae.decode(z.to(self.device), return_dict=False)[0]
        video = ((video[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return video.permute(1, 2, 3, 0).cpu().numpy()

    def encode_video(self, pixels: np.ndarray) -> Tensor:
        """uint8 (n, H, W, 3) -> normalised VAE mean latents (1, 16, 1 + (n-1)//4, h, w), CPU."""
        x = torch.tensor(np.asarray(pixels, dtype=np.uint8)).permute(3, 0, 1, 2)[None]
        x = x.float() / 127.5 - 1.0
        with self._vae_lock, torch.inference_mode():
            mean = self.vae.encode(x.to(self.device)).latent_dist.mode()
        return ((mean.float().cpu() - self._latents_mean) * self._inv_std).contiguous()

    def _pixel_encoder(self, item: Any) -> PixelEncoder:
        return self.encode_video

    def _model_call(self, name: str, multipliers: Tensor | None) -> sampler.ModelCall:
        model = self.experts[name]
        conditioned = multipliers is not None

        def call(x: Tensor, sigma: Tensor, context: Tensor) -> Tensor:
            self._activate(name)
            t = sampler.wan_timesteps(sigma, conditioned=conditioned, multipliers=multipliers)
            t = t.to(self.device)
            return model(x.to(self.dtype), t, context).float()

        return call

    def _activate(self, name: str) -> None:
        """With idle_expert = "offload", keep only the running expert on the device."""
        if self.spec.options.idle_expert != "offload" or len(self.experts) < 2:
            return
        for other, model in self.experts.items():
            target = self.device if other == name else torch.device("cpu")
            if next(model.parameters()).device != target:
                model.to(target)


def _vae_tile(opts: Any) -> dict[str, int]:
    """`enable_tiling`'s keywords from the spec's options (pixels); the 0s are left out, for
    diffusers' own values."""
    names = {
        "vae_tile_height": "tile_sample_min_height",
        "vae_tile_width": "tile_sample_min_width",
        "vae_tile_stride_height": "tile_sample_stride_height",
        "vae_tile_stride_width": "tile_sample_stride_width",
    }
    return {theirs: getattr(opts, ours) for ours, theirs in names.items() if getattr(opts, ours)}


def _load_vae(
    path: Path, device: torch.device, *, tiling: bool, tile: dict[str, int] | None = None
) -> torch.nn.Module:
    from pusa_batch.models.original_wan import load_wan_vae

    vae = load_wan_vae(path)  # a diffusers folder, or the original layout's Wan2.1_VAE.pth
    if tiling:
        try:
            vae.enable_tiling(**(tile or {}))  # encode and decode alike, as upstream tiles both
        except TypeError as e:
            raise PipelineError(
                f"this diffusers' AutoencoderKLWan.enable_tiling takes no tile sizes ({e}); "
                "upgrade diffusers, or leave the options.vae_tile_* keys out"
            ) from e
    return vae.to(device).eval().requires_grad_(False)


def _merge_loras(spec: PipelineSpec, experts: dict[str, torch.nn.Module]) -> None:
    """Each expert gets its own LoRAs, merged once into the weights just loaded."""
    from pusa_batch.models.lora import LoraRef, merge_loras

    for name, model in experts.items():
        expert = "low" if name == "transformer_2" else "high"
        refs = [
            LoraRef(str(lo.path), lo.kind, lo.alpha) for lo in spec.loras if lo.expert == expert
        ]
        if refs:
            merge_loras(model, refs)
