"""Will an item fit on this worker's device? One forward's activations estimated per item size
(the doctor's estimate, shared with it), against the device's memory measured after loading.

Decisions:
- The estimate is arithmetic on the denoiser's config (`activation_bytes`): nothing is allocated,
  so an item of any size is checked in microseconds, before its noise or conditioning exists.
  `doctor` gives the same figure at the defaults' size.
- The device is measured once, at the first item, before anything samples (`MemoryFit.
  device_memory`): later, this worker's own items in flight would be counted as in use, since
  preparing one item overlaps sampling another. Memory other processes take or free later is
  not seen; `[device] memory_gib` is the way to plan for a shared device.
- The margin (`FIT_MARGIN` = 2): an item is refused only when what is in use plus half its
  estimated activations exceeds the device. Measured on the CPU (`benchmarks/memory_estimate.py`,
  items of 5k-33k tokens), a forward's peak is 0.67-0.86x the estimate for the Wan DiT (the
  estimate counts its token-chunked FFN whole) and 1.55-1.68x for Mochi's (there the estimate
  runs low), so a refused item needs at least 1.3x the memory there is: it could not have
  fitted. Items that pass may still run out of memory (Mochi's sooner than its estimate says);
  that is an ordinary item failure, retried.
- An item is checked alone (batch 1): a batch that runs out of memory is retried item by item by
  the worker, so a batch never makes an item that fits alone fail.
- Not counted: the text tokens, the VAE's encode and decode (`vae_tiling` bounds them), the prompt
  cache.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from pusa_batch.errors import PusaBatchError
from pusa_batch.models.mochi import PusaMochiTransformer, swiglu_hidden
from pusa_batch.pipelines.device import DeviceMemory, device_memory, format_bytes

FIT_MARGIN = 2.0


class ItemTooLargeError(PusaBatchError):
    """An item whose estimated memory clearly exceeds its worker's device; refused before it
    allocates anything. The message gives the estimate, the device's memory and the fixes."""


@dataclass(frozen=True)
class ItemSize:
    """What one forward's activations scale with."""

    num_frames: int
    height: int
    width: int
    batch: int = 1  # items sharing one forward (`--batch-size`)
    cfg_batched: bool = False  # both guidance branches in one forward (`options.batched_cfg`)


def latent_tokens(size: ItemSize, temporal_factor: int) -> int:
    """T_lat * (H/16) * (W/16): the VAE's 8x and the patch's 2 in space, for both families."""
    frames = (size.num_frames - 1) // temporal_factor + 1
    return frames * (size.height // 16) * (size.width // 16)


def activation_bytes(
    model: torch.nn.Module, size: ItemSize, temporal_factor: int, dtype_size: int
) -> int:
    """Rough peak of one denoiser forward (built on `meta` or loaded: only its config is read).

    Inside a block the FFN phase is the peak. Wan: the residual stream, the normalised input and
    the FFN's two hidden tensors, (3 * dim + 2 * ffn_dim) per token. Mochi (visual stream, dim =
    hidden_size_x): the residual, the modulated input, the SwiGLU's w1 output (2 * hidden) and its
    gated product (hidden), (2 * dim + 3 * hidden) per token. At the run dtype per row of the
    batch (items, times 2 with batched CFG), plus one fp32 (tokens, dim) tensor per item for the
    fp32 norms. SDPA keeps attention itself at O(tokens * dim).
    """
    tokens = latent_tokens(size, temporal_factor)
    cfg = model.config
    if isinstance(model, PusaMochiTransformer):
        dim = cfg.hidden_size_x
        per_token = 2 * dim + 3 * swiglu_hidden(dim, cfg.mlp_ratio_x)
    else:
        dim = cfg.inner_dim
        per_token = 3 * dim + 2 * cfg.ffn_dim
    rows = size.batch * (2 if size.cfg_batched else 1)
    return rows * tokens * per_token * dtype_size + size.batch * tokens * dim * 4


def weight_bytes(modules: Iterable[torch.nn.Module], device: torch.device) -> int:
    """Bytes of the parameters and buffers of `modules` that live on `device` (tied or shared
    tensors counted once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for module in modules:
        for t in (*module.parameters(), *module.buffers()):
            key = (t.untyped_storage().data_ptr(), t.storage_offset())
            if t.device.type != device.type or key in seen:
                continue
            seen.add(key)
            total += t.numel() * t.element_size()
    return total


def check_fits(
    item_id: str, size: ItemSize, activations: int, memory: DeviceMemory, fixes: str
) -> None:
    """Raise `ItemTooLargeError` when `memory.in_use` plus activations / FIT_MARGIN exceeds
    `memory.capacity`."""
    if memory.in_use + activations / FIT_MARGIN <= memory.capacity:
        return
    free = max(0, memory.capacity - memory.in_use)
    raise ItemTooLargeError(
        f"item {item_id}: {size.num_frames} frames at {size.width}x{size.height} needs about "
        f"{format_bytes(activations)} for one forward's activations on top of "
        f"{format_bytes(memory.in_use)} in use, but {memory.where} leaves {format_bytes(free)}; "
        "refused before allocating anything (only an item that would not fit with half that "
        f"estimate is refused). To fit it, use {fixes}"
    )


def fit_fixes(family: str, capped: bool) -> str:
    """What lowers an item's or a worker's memory, as the refusal names it."""
    fixes = ["a smaller size or fewer frames", "vae_tiling = true", "text_encoder_offload = true"]
    if family == "wan2.2":
        fixes.append('idle_expert = "offload"')
    fixes.append("a bigger device")
    if capped:
        fixes.append("a higher [device] memory_gib")
    return f"{', '.join(fixes[:-1])} or {fixes[-1]}"


class MemoryFit:
    """A loaded pipeline's check (`Pipeline.memory`): its device measured once, at the first
    item, then each item's estimate against that."""

    def __init__(self, pipeline: Any):
        self.pipeline = pipeline
        self._lock = threading.Lock()
        self._memory: tuple[DeviceMemory | None] | None = None

    def item_size(self, item: Any, batch: int = 1) -> ItemSize:
        batched = self.pipeline.spec.options.batched_cfg and item.guidance_scale != 1.0
        return ItemSize(item.num_frames, item.height, item.width, batch, batched)

    def activation_bytes(self, size: ItemSize) -> int:
        """The doctor's estimate of one forward's activations at `size`; arithmetic only."""
        p = self.pipeline
        model = p.denoisers()[p.spec.experts[0]]
        return activation_bytes(model, size, p.spec.temporal_factor, p.dtype.itemsize)

    def resident_bytes(self) -> int:
        """The loaded weights on the run device: the text encoder's, the VAE's, the
        denoisers'."""
        p = self.pipeline
        return weight_bytes([p.text.model, p.vae, *p.denoisers().values()], p.device)

    def device_memory(self) -> DeviceMemory | None:
        """What this worker may plan for, measured at the first call (the first item's
        `prepare`, before anything samples); None when the device cannot say."""
        with self._lock:
            if self._memory is None:
                cap = self.pipeline.spec.device.memory_bytes
                resident = self.resident_bytes() if cap is not None else 0
                self._memory = (device_memory(self.pipeline.device, cap=cap, resident=resident),)
            return self._memory[0]

    def check(self, item: Any) -> None:
        """Raise `ItemTooLargeError` for an item that clearly cannot fit."""
        memory = self.device_memory()
        if memory is None:
            return
        size = self.item_size(item)
        capped = self.pipeline.spec.device.memory_gib is not None
        fixes = fit_fixes(self.pipeline.spec.family, capped)
        check_fits(item.id, size, self.activation_bytes(size), memory, fixes)
