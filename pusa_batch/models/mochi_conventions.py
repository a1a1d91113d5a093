"""Conventions the Pusa V0.5 pipeline follows around the Mochi DiT.

T5 text inputs (an empty prompt attends to nothing), the VAE <-> DiT latent normalisation,
conditioning latents (a seeded posterior sample, as the release makes them), decoding to uint8
frames, and the sampler's velocity from the model's prediction.
"""

from __future__ import annotations

import torch

from pusa_batch.models.mochi import LATENTS_MEAN, LATENTS_STD, TEXT_TOKENS, PusaMochiTransformer


def mochi_text_inputs(
    tokenizer, prompts: list[str], max_length: int = TEXT_TOKENS
) -> tuple[torch.Tensor, torch.Tensor]:
    """T5 ids and mask padded to 256; an empty prompt becomes all-zero ids and an all-False mask."""
    tokens = tokenizer(
        list(prompts),
        padding="max_length",
        truncation=True,
        max_length=max_length,
        return_attention_mask=True,
        return_tensors="pt",
    )
    ids, mask = tokens["input_ids"], tokens["attention_mask"].bool()
    empty = torch.tensor([p == "" for p in prompts], dtype=torch.bool)
    ids[empty], mask[empty] = 0, False
    return ids, mask


@torch.no_grad()
def encode_mochi_text(
    text_encoder, tokenizer, prompts: list[str], max_length: int = TEXT_TOKENS
) -> tuple[torch.Tensor, torch.Tensor]:
    """(t5_feat (B, L, F), t5_mask (B, L)) on the text encoder's device."""
    ids, mask = mochi_text_inputs(tokenizer, prompts, max_length)
    device = next(text_encoder.parameters()).device
    out = text_encoder(input_ids=ids.to(device), attention_mask=mask.to(device))
    return out.last_hidden_state, mask.to(device)


def _latent_stats(like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor(LATENTS_MEAN, dtype=like.dtype, device=like.device).view(1, -1, 1, 1, 1)
    std = torch.tensor(LATENTS_STD, dtype=like.dtype, device=like.device).view(1, -1, 1, 1, 1)
    return mean, std


def vae_latents_to_dit_latents(latents: torch.Tensor) -> torch.Tensor:
    mean, std = _latent_stats(latents)
    return (latents - mean) / std


def dit_latents_to_vae_latents(latents: torch.Tensor) -> torch.Tensor:
    """Run on the sampler's output before the VAE decoder."""
    mean, std = _latent_stats(latents)
    return latents * std + mean


@torch.no_grad()
def decode_mochi_latents(vae, dit_latents: torch.Tensor) -> torch.Tensor:
    """Sampler output (B, 12, T, h, w) -> uint8 frames (B, 1 + 6 (T - 1), 8 h, 8 w, 3)."""
    param = next(vae.parameters())
    latents = dit_latents_to_vae_latents(dit_latents.to(param.device, torch.float32))
    video = vae.decode(latents.to(param.dtype)).sample.float()
    video = ((video.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return video.permute(0, 2, 3, 4, 1)


@torch.no_grad()
def mochi_velocity(
    model: PusaMochiTransformer,
    x: torch.Tensor,
    sigma: torch.Tensor,
    t5_feat: torch.Tensor,
    t5_mask: torch.Tensor,
) -> torch.Tensor:
    """Our sampler's v = dx/dsigma. Mochi steps z' = z + (sigma - sigma') * pred, so v = -pred."""
    return -model(x, sigma, t5_feat, t5_mask).to(x.dtype)
