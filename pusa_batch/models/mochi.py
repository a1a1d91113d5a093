"""Pusa V0.5: genmo's Mochi 1 AsymmDiT with a per-frame (vectorised) timestep.

Parameter names are genmo's (`pusa_v0_dit.safetensors` loads strictly). The visual tokens are
kept as (B, T, S, D), T latent frames of S = h*w patches, so each frame's modulation (B, T, 1, D)
broadcasts over its patches and no per-token modulation tensor is ever built. The text stream
is modulated by the mean over frames of the conditioning (as Pusa does); with a uniform sigma
the model is exactly Mochi 1.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pusa_batch.errors import CheckpointError
from pusa_batch.models.mochi_keys import check_state_dict

CHECKPOINT_NAME = "pusa_v0_dit.safetensors"
TEXT_TOKENS = 256
TEMPORAL_FACTOR = 6
SPATIAL_FACTOR = 8
LATENT_CHANNELS = 12
# Mochi VAE latent statistics (genmo `vae_stats.py`, diffusers `AutoencoderKLMochi` config).
LATENTS_MEAN = (
    -0.06730895953510081, -0.038011381506090416, -0.07477820912866141, -0.05565264470995561,
    0.012767231469026969, -0.04703542746246419, 0.043896967884726704, -0.09346305707025976,
    -0.09918314763016893, -0.008729793427399178, -0.011931556316503654, -0.0321993391887285,
)  # fmt: skip
LATENTS_STD = (
    0.9263795028493863, 0.9248894543193766, 0.9393059390890617, 0.959253732819592,
    0.8244560132752793, 0.917259975397747, 0.9294154431013696, 1.3720942357788521,
    0.881393668867029, 0.9168315692124348, 0.9185249279345552, 0.9274757570805041,
)  # fmt: skip


@dataclass(frozen=True)
class MochiConfig:
    """AsymmDiT hyper-parameters; the defaults are Mochi 1 preview / Pusa V0.5 (10B)."""

    depth: int = 48
    patch_size: int = 2
    num_heads: int = 24
    hidden_size_x: int = 3072
    hidden_size_y: int = 1536
    mlp_ratio_x: float = 4.0
    mlp_ratio_y: float = 4.0
    in_channels: int = 12
    t5_feat_dim: int = 4096
    t5_token_length: int = 256
    timestep_scale: float = 1000.0
    qkv_bias: bool = False
    out_bias: bool = True

    @property
    def head_dim(self) -> int:
        return self.hidden_size_x // self.num_heads

    @classmethod
    def from_dict(cls, values: dict, *, source: str = "config") -> MochiConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise CheckpointError(
                f"{source}: unknown Mochi config key(s) {unknown}; "
                f"expected some of {sorted(known)}."
            )
        return cls(**values)

    def to_dict(self) -> dict:
        return asdict(self)


def swiglu_hidden(dim: int, ratio: float, multiple_of: int = 256) -> int:
    """genmo's FeedForward width: 2/3 of dim*ratio, rounded up to a multiple of 256."""
    hidden = int(2 * int(dim * ratio) / 3)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


def _rms(x: torch.Tensor, eps: float) -> torch.Tensor:
    x = x.float()
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def modulated_rmsnorm(x: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """RMS-normalise x and scale by (1 + scale); scale broadcasts (per frame or per sample)."""
    return (_rms(x, eps) * (1 + scale.float())).to(x.dtype)


def gated_residual(x: torch.Tensor, res: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """Sandwich norm: x + tanh(gate) * rmsnorm(res)."""
    return x + (_rms(res, 1e-6) * torch.tanh(gate).float()).to(x.dtype)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (_rms(x, self.eps) * self.weight).to(x.dtype)


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, in_channels: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) -> (B, T, S, D)."""
        b, c, t, h, w = x.shape
        x = self.proj(x.transpose(1, 2).reshape(b * t, c, h, w))
        return x.flatten(2).transpose(1, 2).unflatten(0, (b, t))


class TimestepEmbedder(nn.Module):
    def __init__(self, dim: int, scale: float, freq_dim: int = 256):
        super().__init__()
        self.scale = scale
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """t of any shape (...) -> (..., D); Pusa feeds (B, T)."""
        half = self.freq_dim // 2
        freqs = torch.exp(
            torch.arange(half, dtype=torch.float32, device=t.device) * (-math.log(10000) / half)
        )
        args = (t * self.scale).float()[..., None] * freqs
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


class AttentionPool(nn.Module):
    """Pools T5 tokens into one vector: the masked mean token queries all valid tokens."""

    def __init__(self, dim: int, out_dim: int, num_heads: int = 8):
        super().__init__()
        self.num_heads = num_heads
        self.to_kv = nn.Linear(dim, 2 * dim)
        self.to_q = nn.Linear(dim, dim)
        self.to_out = nn.Linear(dim, out_dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        weights = mask[:, :, None].to(x.dtype)
        weights = weights / weights.sum(1, keepdim=True).clamp(min=1)
        x = torch.cat([(x * weights).sum(1, keepdim=True), x], dim=1)  # (B, 1+L, D)
        attn_mask = F.pad(mask[:, None, None, :].bool(), (1, 0), value=True)
        k, v = self.to_kv(x).unflatten(2, (2, self.num_heads, -1)).transpose(1, 3).unbind(2)
        q = self.to_q(x[:, 0]).unflatten(1, (self.num_heads, -1))[:, :, None]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.to_out(out.flatten(1))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(dim, 2 * hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = self.w1(x).chunk(2, dim=-1)
        return self.w2(F.silu(x) * gate)


def mochi_rope(freqs: torch.Tensor, t: int, ph: int, pw: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mochi's learned mixed RoPE: positions interpolated to a 192x192 patch area.

    Returns (N, heads, d/2)."""
    scale = math.sqrt(36864 / (ph * pw))

    def centers(n: int) -> torch.Tensor:
        edges = torch.linspace(-n * scale / 2, n * scale / 2, n + 1)
        return (edges[:-1] + edges[1:]) / 2

    grid = torch.meshgrid(
        torch.arange(t, dtype=torch.float32), centers(ph), centers(pw), indexing="ij"
    )
    pos = torch.stack(grid, dim=-1).view(-1, 3).to(freqs.device)
    angles = torch.einsum("nd,dhf->nhf", pos, freqs.float())
    return torch.cos(angles), torch.sin(angles)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    even, odd = x[..., 0::2].float(), x[..., 1::2].float()
    out = torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1)
    return out.flatten(-2).to(x.dtype)


def joint_attention(qkv_x: tuple, qkv_y: tuple, mask: torch.Tensor) -> tuple:
    """SDPA over each sample's visual tokens plus its valid text tokens (B, N|L, heads, d)."""
    n, length = qkv_x[0].shape[1], qkv_y[0].shape[1]
    out_x, out_y = [], []
    for b in range(mask.shape[0]):
        valid = mask[b].nonzero().squeeze(1)
        q, k, v = (
            torch.cat([sx[b], sy[b, valid]]).transpose(0, 1)[None] for sx, sy in zip(qkv_x, qkv_y)
        )
        out = F.scaled_dot_product_attention(q, k, v)[0].transpose(0, 1)  # (N + valid, h, d)
        out_x.append(out[:n])
        out_y.append(out.new_zeros(length, *out.shape[1:]).index_copy(0, valid, out[n:]))
    return torch.stack(out_x).flatten(2), torch.stack(out_y).flatten(2)


class AsymmetricAttention(nn.Module):
    def __init__(self, cfg: MochiConfig, update_y: bool):
        super().__init__()
        dx, dy, hd = cfg.hidden_size_x, cfg.hidden_size_y, cfg.head_dim
        self.num_heads = cfg.num_heads
        self.qkv_x = nn.Linear(dx, 3 * dx, bias=cfg.qkv_bias)
        self.qkv_y = nn.Linear(dy, 3 * dx, bias=cfg.qkv_bias)
        self.q_norm_x, self.k_norm_x = RMSNorm(hd), RMSNorm(hd)
        self.q_norm_y, self.k_norm_y = RMSNorm(hd), RMSNorm(hd)
        self.proj_x = nn.Linear(dx, dx, bias=cfg.out_bias)
        self.proj_y = nn.Linear(dx, dy, bias=cfg.out_bias) if update_y else None

    def forward(self, x, y, mask, rope):
        """x (B, N, Dx) and y (B, L, Dy), both already modulated and normalised."""
        q_x, k_x, v_x = self.qkv_x(x).unflatten(2, (3, self.num_heads, -1)).unbind(2)
        q_x = apply_rope(self.q_norm_x(q_x), *rope)
        k_x = apply_rope(self.k_norm_x(k_x), *rope)
        q_y, k_y, v_y = self.qkv_y(y).unflatten(2, (3, self.num_heads, -1)).unbind(2)
        q_y, k_y = self.q_norm_y(q_y), self.k_norm_y(k_y)
        out_x, out_y = joint_attention((q_x, k_x, v_x), (q_y, k_y, v_y), mask)
        return self.proj_x(out_x), (self.proj_y(out_y) if self.proj_y is not None else None)


class AsymmetricJointBlock(nn.Module):
    def __init__(self, cfg: MochiConfig, update_y: bool):
        super().__init__()
        dx, dy = cfg.hidden_size_x, cfg.hidden_size_y
        self.update_y = update_y
        self.mod_x = nn.Linear(dx, 4 * dx)
        self.mod_y = nn.Linear(dx, 4 * dy if update_y else dy)
        self.attn = AsymmetricAttention(cfg, update_y)
        self.mlp_x = FeedForward(dx, swiglu_hidden(dx, cfg.mlp_ratio_x))
        if update_y:
            self.mlp_y = FeedForward(dy, swiglu_hidden(dy, cfg.mlp_ratio_y))

    def forward(self, x, c_x, c_y, y, mask, rope):
        """x (B, T, S, Dx); c_x = silu(c) (B, T, Dx) per frame; c_y = silu(mean_T c) (B, Dx)."""
        mod_x = self.mod_x(c_x)[:, :, None]  # (B, T, 1, 4 Dx): one row per frame
        scale_msa, gate_msa, scale_mlp, gate_mlp = mod_x.chunk(4, dim=-1)
        mod_y = self.mod_y(c_y)[:, None]  # (B, 1, 4 Dy | Dy)
        scale_msa_y = mod_y.chunk(4, dim=-1)[0] if self.update_y else mod_y
        x_mod = modulated_rmsnorm(x, scale_msa).flatten(1, 2)
        x_attn, y_attn = self.attn(x_mod, modulated_rmsnorm(y, scale_msa_y), mask, rope)
        x = gated_residual(x, x_attn.view_as(x), gate_msa)
        x = gated_residual(x, self.mlp_x(modulated_rmsnorm(x, scale_mlp)), gate_mlp)
        if self.update_y:
            _, gate_msa_y, scale_mlp_y, gate_mlp_y = mod_y.chunk(4, dim=-1)
            y = gated_residual(y, y_attn, gate_msa_y)
            y = gated_residual(y, self.mlp_y(modulated_rmsnorm(y, scale_mlp_y)), gate_mlp_y)
        return x, y


class FinalLayer(nn.Module):
    def __init__(self, dim: int, patch: int, out_channels: int):
        super().__init__()
        self.mod = nn.Linear(dim, 2 * dim)
        self.linear = nn.Linear(dim, patch * patch * out_channels)

    def forward(self, x: torch.Tensor, c_x: torch.Tensor) -> torch.Tensor:
        shift, scale = self.mod(c_x)[:, :, None].chunk(2, dim=-1)  # per frame
        x = F.layer_norm(x, x.shape[-1:], eps=1e-6)
        return self.linear(x * (1 + scale) + shift)


def frame_sigma(sigma: torch.Tensor, batch: int, frames: int) -> torch.Tensor:
    """Accept sigma as (B,) or (B, T); return (B, T) float32."""
    sigma = torch.as_tensor(sigma, dtype=torch.float32)
    if sigma.shape == (batch,):
        return sigma[:, None].expand(batch, frames)
    if sigma.shape == (batch, frames):
        return sigma
    raise ValueError(
        f"sigma must have shape ({batch},) or ({batch}, {frames}); got {tuple(sigma.shape)}"
    )


class PusaMochiTransformer(nn.Module):
    """Pusa V0.5 DiT: forward(x, sigma, t5_feat, t5_mask) -> pred, z_next = z + (s - s')*pred."""

    def __init__(self, config: MochiConfig = MochiConfig()):
        super().__init__()
        cfg = self.config = config
        dx = cfg.hidden_size_x
        self.x_embedder = PatchEmbed(cfg.patch_size, cfg.in_channels, dx)
        self.t_embedder = TimestepEmbedder(dx, cfg.timestep_scale)
        self.t5_y_embedder = AttentionPool(cfg.t5_feat_dim, dx)
        self.t5_yproj = nn.Linear(cfg.t5_feat_dim, cfg.hidden_size_y)
        self.pos_frequencies = nn.Parameter(torch.zeros(3, cfg.num_heads, cfg.head_dim // 2))
        self.blocks = nn.ModuleList(
            AsymmetricJointBlock(cfg, update_y=i < cfg.depth - 1) for i in range(cfg.depth)
        )
        self.final_layer = FinalLayer(dx, cfg.patch_size, cfg.in_channels)

    def forward(
        self, x: torch.Tensor, sigma: torch.Tensor, t5_feat: torch.Tensor, t5_mask: torch.Tensor
    ) -> torch.Tensor:
        """x (B, 12, T, H, W); sigma (B, T) or (B,), 1 = noise; t5_feat (B, L, F); mask (B, L)."""
        b, _, t, h, w = x.shape
        p, dtype = self.config.patch_size, self.x_embedder.proj.weight.dtype
        sigma = frame_sigma(sigma, b, t).to(x.device)
        tokens = self.x_embedder(x.to(dtype))  # (B, T, S, D)
        rope = mochi_rope(self.pos_frequencies, t, h // p, w // p)
        t5_feat, t5_mask = t5_feat.to(dtype), t5_mask.bool()
        c = self.t_embedder(1 - sigma) + self.t5_y_embedder(t5_feat, t5_mask)[:, None]  # (B, T, D)
        c_x, c_y = F.silu(c), F.silu(c.mean(dim=1))
        y = self.t5_yproj(t5_feat)
        for block in self.blocks:
            tokens, y = block(tokens, c_x, c_y, y, t5_mask, rope)
        out = self.final_layer(tokens, c_x)  # (B, T, S, p*p*C)
        out = out.view(b, t, h // p, w // p, p, p, -1).permute(0, 6, 1, 2, 4, 3, 5)
        return out.reshape(b, -1, t, h, w)


# ---- Loading -----------------------------------------------------------------------------


def load_mochi_config(checkpoint: Path) -> MochiConfig:
    """`config.json` next to the checkpoint, else the 10B defaults (the real release has none)."""
    path = Path(checkpoint).parent / "config.json"
    if not path.is_file():
        return MochiConfig()
    try:
        values = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(
            f"{path} is not valid JSON ({exc}); fix it, or delete it to use the 10B defaults."
        ) from exc
    return MochiConfig.from_dict(values, source=str(path))


def _read_state_dict(path: Path, device: str | torch.device) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device=str(device))
    if path.suffix in (".pt", ".pth", ".bin"):
        return torch.load(path, map_location=device, weights_only=True)
    raise CheckpointError(f"{path}: unsupported checkpoint format; use .safetensors or .pt.")


def load_mochi_transformer(
    path: str | Path, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> PusaMochiTransformer:
    """Load `pusa_v0_dit.safetensors` (a file, or the directory holding it), strictly."""
    file = Path(path)
    file = file / CHECKPOINT_NAME if file.is_dir() else file
    if not file.is_file():
        raise CheckpointError(
            f"Mochi DiT checkpoint not found: {file}. Download {CHECKPOINT_NAME}."
        )
    config = load_mochi_config(file)
    with torch.device("meta"):
        model = PusaMochiTransformer(config)
    state = _read_state_dict(file, device)
    has_config = (file.parent / "config.json").is_file()
    used = "its config.json" if has_config else "the 10B defaults, as no config.json is beside it"
    check_state_dict(model, state, f"{file} (config: {used})")
    state = {k: v.to(torch.float32 if k == "pos_frequencies" else dtype) for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()
