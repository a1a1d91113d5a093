"""The doctor's memory estimate: weights at the dtypes the loaders use, plus one forward's
activations at the defaults' size (`pipelines.memory_fit.activation_bytes`, the estimate a worker
checks each item with), against the run device, the spec's `[device] memory_gib` cap or a given
budget."""

from __future__ import annotations

import torch

from pusa_batch.doctor.context import Check, Context, Denoiser, fmt_bytes
from pusa_batch.errors import PusaBatchError
from pusa_batch.models.mochi import PusaMochiTransformer
from pusa_batch.models.wan import FP32_MODULES
from pusa_batch.pipelines.device import host_ram_available
from pusa_batch.pipelines.memory_fit import ItemSize
from pusa_batch.pipelines.memory_fit import activation_bytes as item_activation_bytes
from pusa_batch.pipelines.spec import PipelineSpec


def check_memory(ctx: Context) -> Check:
    device, dtype = ctx.run()
    run = f"{device.type}/{dtype}"
    parts = ctx.known_parts.get(run) or memory_parts(ctx, device, dtype)
    ctx.measured_parts[run] = parts
    total = sum(parts.values())
    limit, where = _device_memory(device, ctx.memory_budget, ctx.spec.device.memory_bytes)
    shown = ", ".join(f"{k} {fmt_bytes(v)}" for k, v in parts.items())
    detail = f"estimate {fmt_bytes(total)} ({shown}) vs {where}"
    if limit is None:
        return Check("memory", "warn", detail)
    if total > limit:
        offload = "" if ctx.spec.family == "mochi" else ', idle_expert = "offload"'
        return Check(
            "memory",
            "fail",
            f"{detail}: does not fit; use a smaller size, text_encoder_offload{offload} "
            "or a bigger device",
        )
    return Check("memory", "warn" if total > 0.9 * limit else "ok", detail)


def memory_parts(ctx: Context, device: torch.device, dtype: torch.dtype) -> dict[str, int]:
    """Bytes on the run device: each resident denoiser (at the run dtype, with the tensors its
    loader keeps in fp32), the text encoder unless offloaded to the CPU, the fp32 VAE, and one
    forward's activations."""
    spec, opts, size = ctx.spec, ctx.spec.options, dtype.itemsize
    on_cpu = device.type == "cpu"
    experts = spec.experts if on_cpu or opts.idle_expert == "keep" else spec.experts[:1]
    parts = {e: denoiser_bytes(ctx.expert(e), size) for e in experts}
    if on_cpu or not opts.text_encoder_offload:
        # The Mochi pipeline runs T5 in fp32 when asked for fp16 (T5 v1.1 overflows in fp16).
        text_size = 4 if spec.family == "mochi" and dtype == torch.float16 else size
        parts["text_encoder"] = ctx.tensors("text_encoder").numel() * text_size
    parts["vae"] = ctx.tensors("vae").numel() * 4
    parts["activations"] = activation_bytes(spec, ctx.expert(spec.experts[0]), size)
    return parts


def denoiser_bytes(model: Denoiser, size: int) -> int:
    if isinstance(model, PusaMochiTransformer):  # everything at the run dtype but the RoPE table
        return sum(
            p.numel() * (4 if n == "pos_frequencies" else size) for n, p in model.named_parameters()
        )

    def keeps_fp32(name: str) -> bool:
        return name.endswith("scale_shift_table") or any(
            part in FP32_MODULES for part in name.split(".")
        )

    return sum(p.numel() * (4 if keeps_fp32(n) else size) for n, p in model.named_parameters())


def activation_bytes(spec: PipelineSpec, model: Denoiser, size: int) -> int:
    """Rough peak of one denoiser forward at the defaults' size (`memory_fit.activation_bytes`:
    the per-token terms are there); times 2 with batched CFG. The text tokens and the VAE
    decode are not included."""
    d = spec.defaults
    batched = spec.options.batched_cfg and d.guidance_scale != 1.0
    at = ItemSize(d.num_frames, d.height, d.width, cfg_batched=batched)
    return item_activation_bytes(model, at, spec.temporal_factor, size)


def latent_frames(spec: PipelineSpec) -> int:
    return (spec.defaults.num_frames - 1) // spec.temporal_factor + 1


def rope_limit(ctx: Context) -> int | None:
    """Wan's rope_max_seq_len, or None: Mochi's RoPE has no table limit, or the config cannot be
    read (the keys check reports that)."""
    if ctx.spec.family == "mochi" or ctx.paths is None or "transformer" in ctx.problems:
        return None
    try:
        return ctx.expert_config("transformer").rope_max_seq_len
    except PusaBatchError:
        return None


def _device_memory(
    device: torch.device, budget: int | None, cap: int | None
) -> tuple[int | None, str]:
    if budget is not None:
        return budget, f"budget {fmt_bytes(budget)}"
    if cap is not None:
        return cap, f"the [device] memory_gib cap {fmt_bytes(cap)}"
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device.index or 0)
        return props.total_memory, f"{props.name}: {fmt_bytes(props.total_memory)}"
    available = host_ram_available()
    if available is None:
        return None, "CPU run: host RAM unknown (no /proc/meminfo, no psutil)"
    return available, f"CPU run: host RAM {fmt_bytes(available)} available"
