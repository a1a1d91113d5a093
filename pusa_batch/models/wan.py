"""The Wan2.1/2.2 T2V DiT with frame-level (vectorised) timesteps, as Pusa uses it.

Config keys and state-dict names are exactly those of diffusers' `WanTransformer3DModel`, so a
diffusers `transformer/` checkpoint loads with `strict=True`. Numerics follow diffusers (fp32
sinusoid, fp32 layer norms and modulation, RoPE in float64 then fp32, qk RMSNorm across heads).

The difference is the timestep path: the sinusoid, the time MLP and the 6-way projection run once
per latent frame, giving a `(B, F, 6, D)` modulation. Blocks apply it by viewing the token axis as
`(F, h*w)`, so no per-token `(B, N, 6, D)` tensor is ever built (Pusa's original code builds one,
about 5 GB at 720p). A scalar timestep `(B,)` is the one-group case `(B, 1, 6, D)`.

Speed options (pipeline `[options]`): `attention` picks the kernel (`ATTENTION_BACKENDS`),
`compile_blocks` runs each block through `torch.compile`, and `forward(..., cache=)` takes a
`BlockCache` (`models/teacache.py`) that may skip the blocks and reuse their last residual.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from pusa_batch.errors import PipelineError

ATTENTION_BACKENDS = ("sdpa", "flash", "sage")
# The package each optional kernel needs and how to install it (checked by the doctor and at load).
ATTENTION_PACKAGES = {  # backend: (module, package, install command)
    "flash": ("flash_attn", "flash-attn", "pip install 'pusa-batch[flash]'"),
    "sage": ("sageattention", "sageattention", "pip install sageattention"),
}
# Parameters diffusers keeps in fp32 whatever the load dtype (`_keep_in_fp32_modules`).
FP32_MODULES = ("time_embedder", "scale_shift_table", "norm1", "norm2", "norm3")


@dataclass(frozen=True)
class WanConfig:
    """diffusers' `WanTransformer3DModel` config, key for key (T2V only)."""

    patch_size: tuple[int, int, int] = (1, 2, 2)
    num_attention_heads: int = 40
    attention_head_dim: int = 128
    in_channels: int = 16
    out_channels: int = 16
    text_dim: int = 4096
    freq_dim: int = 256
    ffn_dim: int = 13824
    num_layers: int = 40
    cross_attn_norm: bool = True
    qk_norm: str | None = "rms_norm_across_heads"
    eps: float = 1e-6
    image_dim: int | None = None
    added_kv_proj_dim: int | None = None
    rope_max_seq_len: int = 1024
    pos_embed_seq_len: int | None = None

    @classmethod
    def from_dict(cls, raw: dict[str, Any], *, source: str = "config") -> WanConfig:
        """Build from a diffusers `config.json` dict, ignoring `_class_name` and other `_` keys."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in raw.items() if not k.startswith("_")}
        unknown = sorted(set(values) - known)
        if unknown:
            raise PipelineError(
                f"{source}: unknown WanTransformer3DModel config key(s) {unknown}; "
                "is this a Wan transformer config (diffusers layout)?"
            )
        if values.get("out_channels") is None:
            values["out_channels"] = values.get("in_channels", cls.in_channels)
        if "patch_size" in values:
            values["patch_size"] = tuple(int(p) for p in values["patch_size"])
        return cls(**values).validated(source)

    def validated(self, source: str = "config") -> WanConfig:
        if self.image_dim is not None or self.added_kv_proj_dim is not None:
            raise PipelineError(
                f"{source}: image_dim/added_kv_proj_dim are set, so this is a Wan I2V/FLF2V "
                "transformer; Pusa uses the T2V transformer. Point the pipeline at T2V weights."
            )
        if self.qk_norm not in ("rms_norm_across_heads", None):
            raise PipelineError(f"{source}: qk_norm={self.qk_norm!r} is not supported")
        if self.attention_head_dim % 2 or len(self.patch_size) != 3:
            raise PipelineError(
                f"{source}: attention_head_dim must be even and patch_size three integers"
            )
        return self

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["patch_size"] = list(self.patch_size)
        return {"_class_name": "WanTransformer3DModel", **out}


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """diffusers' `get_timestep_embedding(flip_sin_to_cos=True, shift=0)`, for any shape of t."""
    half = dim // 2
    exponent = -math.log(10000) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    angles = t.float()[..., None] * torch.exp(exponent)
    emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


def rope_tables(
    head_dim: int, grid: tuple[int, int, int], max_len: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token RoPE cos/sin, shape (N, head_dim // 2), split over (frame, height, width)."""
    if max(grid) > max_len:
        raise PipelineError(
            f"latent grid {grid} exceeds rope_max_seq_len={max_len}; use a smaller video"
        )
    h_dim = w_dim = 2 * (head_dim // 6)
    parts = []
    for n, d in zip(grid, (head_dim - h_dim - w_dim, h_dim, w_dim), strict=True):
        freqs = 1.0 / (10000.0 ** (torch.arange(0, d, 2, dtype=torch.float64, device=device) / d))
        pos = torch.arange(n, dtype=torch.float64, device=device)
        parts.append(torch.outer(pos, freqs))
    f, h, w = grid
    angles = torch.cat(
        [
            parts[0].view(f, 1, 1, -1).expand(f, h, w, -1),
            parts[1].view(1, h, 1, -1).expand(f, h, w, -1),
            parts[2].view(1, 1, w, -1).expand(f, h, w, -1),
        ],
        dim=-1,
    ).reshape(f * h * w, -1)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, N, H, d); rotates interleaved pairs (x[2i], x[2i+1]) as diffusers does."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[None, :, None], sin[None, :, None]
    out = torch.empty_like(x)
    even, odd = out.unflatten(-1, (-1, 2)).unbind(-1)
    even.copy_((x1 * cos).sub_(x2 * sin))  # one half at a time keeps the transients small
    odd.copy_((x1 * sin).add_(x2 * cos))
    return out


def modulate(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """x * (1 + scale) + shift, x (B, N, D), scale/shift (B, G, D): G groups of N/G tokens."""
    b, n, d = x.shape
    g = scale.shape[1]
    y = x.view(b, g, n // g, d) * (1 + scale[:, :, None])
    return y.add_(shift[:, :, None]).view(b, n, d)


def gated(x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """x * gate with x (B, N, D) and gate (B, G, D), broadcast per group of tokens."""
    b, n, d = x.shape
    return (x.view(b, gate.shape[1], n // gate.shape[1], d) * gate[:, :, None]).view(b, n, d)


def layer_norm_fp32(x: torch.Tensor, eps: float) -> torch.Tensor:
    return F.layer_norm(x.float(), (x.shape[-1],), eps=eps)


class FP32LayerNorm(nn.LayerNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.float() if self.weight is not None else None
        b = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).to(x.dtype)


class _MLP(nn.Module):
    """Linear-act-Linear with diffusers' `linear_1`/`linear_2` names."""

    def __init__(self, d_in: int, d_out: int, act: nn.Module):
        super().__init__()
        self.linear_1 = nn.Linear(d_in, d_out)
        self.act = act
        self.linear_2 = nn.Linear(d_out, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(x)))


class _GeluProj(nn.Module):
    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.proj = nn.Linear(d_in, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(x), approximate="tanh")


class FeedForward(nn.Module):
    """Wan's GELU MLP, run over chunks of tokens so its wide hidden layer is never whole.

    Unchunked, the (N, ffn_dim) projection and its GELU hold about 5.4x the (N, D) activations
    (ffn_dim = 2.7 D) and set the peak memory of the block; chunks are row slices, so the result
    is the same up to GEMM rounding.
    """

    min_chunk_tokens = 1024

    def __init__(self, dim: int, ffn_dim: int):
        super().__init__()
        self.net = nn.ModuleList([_GeluProj(dim, ffn_dim), nn.Identity(), nn.Linear(ffn_dim, dim)])
        self.chunks = 2 * math.ceil(ffn_dim / dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[1]
        size = max(self.min_chunk_tokens, math.ceil(n / self.chunks))
        if n <= size:
            return self.net[2](self.net[0](x))
        out = x.new_empty(*x.shape[:-1], self.net[2].out_features)
        for start in range(0, n, size):
            out[:, start : start + size] = self.net[2](self.net[0](x[:, start : start + size]))
        return out


class ConditionEmbedder(nn.Module):
    def __init__(self, cfg: WanConfig):
        super().__init__()
        dim = cfg.inner_dim
        self.time_embedder = _MLP(cfg.freq_dim, dim, nn.SiLU())
        self.time_proj = nn.Linear(dim, 6 * dim)
        self.text_embedder = _MLP(cfg.text_dim, dim, nn.GELU(approximate="tanh"))


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, eps: float, backend: str):
        super().__init__()
        self.heads, self.backend = heads, backend
        self.to_q, self.to_k, self.to_v = (nn.Linear(dim, dim) for _ in range(3))
        self.to_out = nn.ModuleList([nn.Linear(dim, dim), nn.Identity()])
        self.norm_q = nn.RMSNorm(dim, eps=eps)
        self.norm_k = nn.RMSNorm(dim, eps=eps)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        kv = x if context is None else context
        q = self.norm_q(self.to_q(x)).unflatten(2, (self.heads, -1))
        if rope is not None:
            q = apply_rope(q, *rope)
        k = self.norm_k(self.to_k(kv)).unflatten(2, (self.heads, -1))
        if rope is not None:
            k = apply_rope(k, *rope)
        v = self.to_v(kv).unflatten(2, (self.heads, -1))
        out = attention(q, k, v, self.backend).flatten(2, 3).type_as(q)
        del q, k, v  # free them before the output projection allocates
        return self.to_out[0](out)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str) -> torch.Tensor:
    """q, k, v and the result are (B, N, heads, head_dim)."""
    if backend == "flash":
        from flash_attn import flash_attn_func

        return flash_attn_func(q, k, v)
    if backend == "sage":
        from sageattention import sageattn

        return sageattn(q, k, v, tensor_layout="NHD", is_causal=False)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


class WanBlock(nn.Module):
    def __init__(self, cfg: WanConfig, backend: str):
        super().__init__()
        dim, self.eps = cfg.inner_dim, cfg.eps
        self.attn1 = Attention(dim, cfg.num_attention_heads, cfg.eps, backend)
        self.attn2 = Attention(dim, cfg.num_attention_heads, cfg.eps, backend)
        self.norm2 = FP32LayerNorm(dim, cfg.eps) if cfg.cross_attn_norm else nn.Identity()
        self.ffn = FeedForward(dim, cfg.ffn_dim)
        self.scale_shift_table = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor,
        mod: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
    ) -> torch.Tensor:
        """mod: (B, G, 6, D), one modulation per group of N/G consecutive tokens."""
        e = (self.scale_shift_table[:, None] + mod.float()).unbind(2)
        shift, scale, gate, c_shift, c_scale, c_gate = e
        h = modulate(layer_norm_fp32(x, self.eps), scale, shift).type_as(x)
        x = (x.float() + gated(self.attn1(h, rope=rope), gate)).type_as(x)
        h = self.norm2(x.float()).type_as(x)
        x = x + self.attn2(h, context)
        h = modulate(layer_norm_fp32(x, self.eps), c_scale, c_shift).type_as(x)
        return (x.float() + gated(self.ffn(h).float(), c_gate)).type_as(x)


class PusaWanTransformer(nn.Module):
    """Wan T2V DiT taking one timestep per latent frame: `forward(x, timestep, context)`."""

    def __init__(self, config: WanConfig, *, attention: str = "sdpa"):
        super().__init__()
        self.config = config.validated()
        self.attention = check_attention_backend(attention)
        cfg, dim = config, config.inner_dim
        self.patch_embedding = nn.Conv3d(
            cfg.in_channels, dim, kernel_size=cfg.patch_size, stride=cfg.patch_size
        )
        self.condition_embedder = ConditionEmbedder(cfg)
        self.blocks = nn.ModuleList(WanBlock(cfg, attention) for _ in range(cfg.num_layers))
        self.proj_out = nn.Linear(dim, cfg.out_channels * math.prod(cfg.patch_size))
        self.scale_shift_table = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)
        self.merged_weights = MergedWeights()

    def set_dtype(self, dtype: torch.dtype) -> PusaWanTransformer:
        """Cast to dtype, keeping time embedder, norms and modulation tables in fp32."""
        self.to(dtype)
        for name, module in self.named_modules():
            if name.rsplit(".", 1)[-1] in FP32_MODULES:
                module.float()
        self.scale_shift_table.data = self.scale_shift_table.data.float()
        for block in self.blocks:
            block.scale_shift_table.data = block.scale_shift_table.data.float()
        return self

    def frame_modulation(
        self, timestep: torch.Tensor, frames: int, like: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,) or (B, frames) timesteps -> temb (B, G, D) and projection (B, G, 6, D).

        The MLPs run once per distinct timestep value and are gathered back, so the result
        depends only on the values: a uniform (B, F) vector gives bit-for-bit the scalar output.
        """
        t = timestep[:, None] if timestep.ndim == 1 else timestep
        if t.ndim != 2 or t.shape[1] not in (1, frames):
            raise ValueError(
                f"timestep must have shape (B,) or (B, {frames}), got {tuple(timestep.shape)}"
            )
        values, inverse = torch.unique(t.float(), return_inverse=True)
        embedder = self.condition_embedder
        emb = sinusoidal_embedding(values, self.config.freq_dim)
        emb = emb.to(embedder.time_embedder.linear_1.weight.dtype)
        temb = embedder.time_embedder(emb).type_as(like)
        proj = embedder.time_proj(F.silu(temb)).unflatten(1, (6, -1))
        return temb[inverse], proj[inverse]

    def compile_blocks(self, backend: str = "inductor", **options: Any) -> PusaWanTransformer:
        """`torch.compile` each transformer block in place (`nn.Module.compile`): parameter names,
        LoRA merges and `state_dict()` are unchanged; the embeddings and head stay eager."""
        for block in self.blocks:
            block.compile(backend=backend, **options)
        return self

    def forward(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        context: torch.Tensor,
        *,
        cache: BlockCache | None = None,
    ) -> torch.Tensor:
        """x (B, C, F, H, W), timestep (B,) or (B, F // p_t), context (B, L, text_dim).

        With a `cache`, the blocks run through `cache.run(tokens, mod, blocks)`, which may skip
        them; the patch embedding, the modulation and the head always run."""
        cfg = self.config
        b, _, f, h, w = x.shape
        pt, ph, pw = cfg.patch_size
        if f % pt or h % ph or w % pw:
            raise ValueError(f"latent shape {(f, h, w)} is not divisible by patch {cfg.patch_size}")
        grid = (f // pt, h // ph, w // pw)
        dtype = self.patch_embedding.weight.dtype
        if timestep.shape[0] != b or context.shape[0] != b:
            raise ValueError(
                f"batch sizes differ: x {b}, timestep {timestep.shape[0]}, "
                f"context {context.shape[0]}"
            )

        rope = rope_tables(cfg.attention_head_dim, grid, cfg.rope_max_seq_len, x.device)
        tokens = self.patch_embedding(x.to(dtype)).flatten(2).transpose(1, 2).contiguous()
        context = context.to(dtype)
        temb, mod = self.frame_modulation(timestep.to(x.device), grid[0], context)
        context = self.condition_embedder.text_embedder(context)

        def blocks(tokens: torch.Tensor) -> torch.Tensor:
            for block in self.blocks:
                tokens = block(tokens, context, mod, rope)
            return tokens

        tokens = blocks(tokens) if cache is None else cache.run(tokens, mod, blocks)

        shift, scale = (self.scale_shift_table[:, None] + temb[:, :, None]).unbind(2)
        tokens = modulate(layer_norm_fp32(tokens, cfg.eps), scale, shift).type_as(tokens)
        out = self.proj_out(tokens).reshape(b, *grid, pt, ph, pw, -1)
        return out.permute(0, 7, 1, 4, 2, 5, 3, 6).flatten(6, 7).flatten(4, 5).flatten(2, 3)


class BlockCache(Protocol):
    """What `PusaWanTransformer.forward(cache=)` takes (`models.teacache.TeaCache` is one)."""

    def run(
        self,
        tokens: torch.Tensor,
        mod: torch.Tensor,
        blocks: Callable[[torch.Tensor], torch.Tensor],
    ) -> torch.Tensor: ...


def check_attention_backend(name: str) -> str:
    """The backend name, or a `PipelineError` naming the package to install and how."""
    if name not in ATTENTION_BACKENDS:
        raise PipelineError(f"attention={name!r}: choose one of {', '.join(ATTENTION_BACKENDS)}")
    if name in ATTENTION_PACKAGES:
        module, package, command = ATTENTION_PACKAGES[name]
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise PipelineError(
                f"attention={name!r} needs the {package} package (import {module} failed: "
                f"{exc}); install it with `{command}` on a CUDA machine, or use attention='sdpa'"
            ) from exc
    return name


@dataclass(frozen=True)
class MergedWeights:
    """What a model's weights are: the base they were loaded from and the LoRAs merged since.

    Merges are in place and add up, so a model is "fresh" only while `loras` is empty.
    """

    base: str = ""
    loras: tuple[str, ...] = field(default=())
    # One JSON-ready `lora.MergeReport` per merge, in order: what was merged, what was skipped.
    merges: tuple[dict, ...] = field(default=())

    @property
    def fresh(self) -> bool:
        return not self.loras
