"""The doctor's memory estimate: weights at the dtypes the loaders use, plus one forward's
activations at the defaults' size, against the run device (or a given budget)."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from pusa_batch.doctor.context import Check, Context, Denoiser, fmt_bytes
from pusa_batch.errors import PusaBatchError
from pusa_batch.models.mochi import PusaMochiTransformer, swiglu_hidden
from pusa_batch.models.wan import FP32_MODULES
from pusa_batch.pipelines.spec import PipelineSpec


def check_memory(ctx: Context) -> Check:
    device, dtype = ctx.run()
    parts = memory_parts(ctx, device, dtype)
    total = sum(parts.values())
    limit, where = _device_memory(device, ctx.memory_budget)
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
    """Rough peak of one denoiser forward at the defaults' size.

    tokens = T_lat * (H/16) * (W/16) (VAE 8x and patch 2 in space, for both families). Inside a
    block the FFN phase is the peak. Wan: the residual stream, the normalised input and the FFN's
    two hidden tensors, (3 * dim + 2 * ffn_dim) per token. Mochi (visual stream, dim =
    hidden_size_x): the residual, the modulated input, the SwiGLU's w1 output (2 * hidden) and
    its gated product (hidden), (2 * dim + 3 * hidden) per token. At the run dtype, times 2 with
    batched CFG, plus one fp32 (tokens, dim) tensor for the fp32 norms. SDPA keeps attention
    itself at O(tokens * dim); the text tokens and the VAE decode are not included.
    """
    d = spec.defaults
    tokens = latent_frames(spec) * (d.height // 16) * (d.width // 16)
    batch = 2 if spec.options.batched_cfg and d.guidance_scale != 1.0 else 1
    cfg = model.config
    if isinstance(model, PusaMochiTransformer):
        dim = cfg.hidden_size_x
        per_token = 2 * dim + 3 * swiglu_hidden(dim, cfg.mlp_ratio_x)
    else:
        dim = cfg.inner_dim
        per_token = 3 * dim + 2 * cfg.ffn_dim
    return batch * tokens * per_token * size + tokens * dim * 4


def latent_frames(spec: PipelineSpec) -> int:
    return (spec.defaults.num_frames - 1) // spec.temporal_factor + 1


def rope_limit(ctx: Context) -> int | None:
    """Wan's rope_max_seq_len, or None: Mochi's RoPE has no table limit, or the config cannot be
    read (the keys check reports that)."""
    if ctx.spec.family == "mochi" or ctx.paths is None or "transformer" in ctx.problems:
        return None
    try:
        return ctx.expert("transformer").config.rope_max_seq_len
    except PusaBatchError:
        return None


def _device_memory(device: torch.device, budget: int | None) -> tuple[int | None, str]:
    if budget is not None:
        return budget, f"budget {fmt_bytes(budget)}"
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device.index or 0)
        return props.total_memory, f"{props.name}: {fmt_bytes(props.total_memory)}"
    available = host_ram_available()
    if available is None:
        return None, "CPU run: host RAM unknown (no /proc/meminfo, no psutil)"
    return available, f"CPU run: host RAM {fmt_bytes(available)} available"


def host_ram_available() -> int | None:
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    m = re.search(r"^MemAvailable:\s+(\d+) kB", text, re.MULTILINE)
    return int(m.group(1)) * 1024 if m else None
