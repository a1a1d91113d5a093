"""`WanPipeline`: Pusa V1 on Wan2.1 (one transformer) or Wan2.2 (two experts).

The Wan family's hooks for the shared `Pipeline`: T5 prompts, the Wan VAE's latent
normalisation, the expert switch and idle-expert offload, LoRAs merged once at load. Speed
options: `compile` compiles each expert's blocks after the merge; `teacache_threshold` > 0 gives
every sampling run its own TeaCache per CFG branch (`models/teacache.py`).
"""

from __future__ import annotations

import contextvars
import importlib.util
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pusa_batch import sampler
from pusa_batch.errors import PipelineError
from pusa_batch.models.loading import load_wan_transformer
from pusa_batch.models.teacache import BranchCaches
from pusa_batch.models.text import TextEncoder
from pusa_batch.pipelines.base import Pipeline, PixelEncoder, apply_determinism
from pusa_batch.pipelines.spec import PipelineSpec

# The current sampling run's step count, for TeaCache's always-compute last step (`_denoise`).
_RUN_STEPS: contextvars.ContextVar[int] = contextvars.ContextVar("wan_run_steps")


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
        # The latest sampling run's TeaCaches (None with TeaCache off): its calls and skips.
        self.teacache: BranchCaches | None = None

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
        if opts.compile:
            _check_compiler(dev)  # at load, not at the first forward
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
        if opts.compile:
            for model in experts.values():
                model.compile_blocks()
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
            "compile": self.spec.options.compile,
            "teacache": self._teacache_settings(),
        }

    def _teacache_settings(self) -> dict[str, Any] | None:
        opts = self.spec.options
        if opts.teacache_threshold <= 0:
            return None
        return {"threshold": opts.teacache_threshold, "model": opts.teacache_model}

    def _denoise(
        self,
        noise: Tensor,
        positive: sampler.Context,
        negative: sampler.Context | None,
        cond: sampler.ConditioningSpec | None,
        sigmas: Tensor,
        scale: float,
        callback: sampler.Callback | None,
    ) -> Tensor:
        """The shared loop, with the run's step count known to `_model_fn` (TeaCache)."""
        token = _RUN_STEPS.set(len(sigmas) - 1)
        try:
            return super()._denoise(noise, positive, negative, cond, sigmas, scale, callback)
        finally:
            _RUN_STEPS.reset(token)

    def _model_fn(
        self,
        positive: sampler.Context,
        negative: sampler.Context | None,
        scale: float,
        multipliers: Tensor | None,
    ) -> sampler.ModelFn:
        opts = self.spec.options
        caches = None
        if opts.teacache_threshold > 0:
            steps = _RUN_STEPS.get(None)
            if steps is None:
                raise RuntimeError("TeaCache needs the run's step count: sample through _denoise")
            caches = BranchCaches(steps, opts.teacache_threshold, opts.teacache_model)
            if negative is positive:  # one cached prompt for both: still two branches
                negative = negative.view_as(negative)
        self.teacache = caches

        def branch(context: sampler.Context) -> str:
            """Which CFG pass `guided` is making: it passes our contexts themselves."""
            if context is positive:
                return "positive"
            return "negative" if context is negative else "batched"

        def expert_fn(name: str) -> sampler.ModelFn:
            call = self._model_call(name, multipliers, caches, branch)
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

    def _model_call(
        self,
        name: str,
        multipliers: Tensor | None,
        caches: BranchCaches | None = None,
        branch: Any = None,
    ) -> sampler.ModelCall:
        model = self.experts[name]
        conditioned = multipliers is not None

        def call(x: Tensor, sigma: Tensor, context: Tensor) -> Tensor:
            self._activate(name)
            t = sampler.wan_timesteps(sigma, conditioned=conditioned, multipliers=multipliers)
            t = t.to(self.device)
            cache = None if caches is None else caches.get(branch(context))
            return model(x.to(self.dtype), t, context, cache=cache).float()

        return call

    def _activate(self, name: str) -> None:
        """With idle_expert = "offload", keep only the running expert on the device."""
        if self.spec.options.idle_expert != "offload" or len(self.experts) < 2:
            return
        for other, model in self.experts.items():
            target = self.device if other == name else torch.device("cpu")
            if next(model.parameters()).device != target:
                model.to(target)


def _check_compiler(device: torch.device) -> None:
    """`compile = true` compiles with inductor: C++ on the CPU, triton on CUDA."""
    if device.type == "cpu" and not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        raise PipelineError(
            "options.compile on the CPU needs a C++ compiler (torch.compile's inductor builds "
            "C++ kernels): install one (apt-get install g++), or set compile = false"
        )
    if device.type == "cuda" and importlib.util.find_spec("triton") is None:
        raise PipelineError(
            "options.compile on CUDA needs the triton package (torch.compile's inductor builds "
            "triton kernels): pip install triton, or set compile = false"
        )


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
