"""Wan-AI's original files, read into the classes our pipeline runs.

- `Wan2.1_VAE.pth` (Wan2.1 `wan/modules/vae.py`, `WanVAE_`) -> diffusers `AutoencoderKLWan`.
  The key map follows diffusers' `scripts/convert_wan_to_diffusers.py` `convert_vae` (the middle,
  attention, head and quant tables and the encoder / decoder renames), written here for any
  config rather than for the 14B's fixed block indices: the decoder's flat `upsamples.k` list
  holds, per stage, `num_res_blocks + 1` residual blocks and then a `Resample` (Wan `vae.py`
  `Decoder3d`, 399-416), which diffusers groups as `up_blocks.s.resnets.j` / `.upsamplers.0`.
  Inside a residual block `residual.{0,2,3,6}` and `shortcut` (Wan `vae.py` 194-200) are
  diffusers' `norm1`, `conv1`, `norm2`, `conv2`, `conv_shortcut`. The config (base_dim, z_dim,
  dim_mult, num_res_blocks, temperal_downsample) is read off the tensor shapes; the latent
  statistics are the ones diffusers' defaults hold, equal to `WanVAE`'s (Wan `vae.py` 629-636).
- `models_t5_umt5-xxl-enc-bf16.pth` (Wan2.1 `wan/modules/t5.py`, `T5Encoder` with
  `shared_pos=False`) -> transformers `UMT5EncoderModel`: `token_embedding` (t5.py 289) is
  `shared`; per block `norm1` / `attn.{q,k,v,o}` / `pos_embedding.embedding` (163-168, 80-83,
  231) are layer 0's `layer_norm` / `SelfAttention.{q,k,v,o}` / `relative_attention_bias`;
  `norm2` and `ffn.gate.0` / `ffn.fc1` / `ffn.fc2` (131-133; `fc1(x) * gelu(gate(x))`) are layer 1's
  `layer_norm` and `DenseReluDense.wi_0` (the activated half) / `wi_1` / `wo`; `norm` (298) is
  `final_layer_norm`. The config comes from the shapes; what shapes cannot say is umT5-XXL's
  (t5.py 456-467, 223, 55): relative_attention_max_distance 128, layer-norm eps 1e-6, gated
  tanh-GELU (`gelu_new`).
- A single-file Wan DiT (ComfyUI's repackaged files, `model.diffusion_model.` prefix) is read
  by `models.loading.load_wan_transformer`, its config off the shapes when no `config.json` is
  beside it (`models.wan_keys.wan_config_from_shapes`).

Every reader is strict: a key the map does not know or a key the model lacks is named.
`.pth` files go through `torch.load(weights_only=True)` only (`models.loading.read_state_dict`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from pusa_batch.errors import CheckpointError, PipelineError
from pusa_batch.models.loading import (
    check_keys,
    load_fp32_strictly,
    read_header,
    read_state_dict,
)

Shapes = Mapping[str, tuple[int, ...]]

# ---------------------------------------------------------------------------------- Wan VAE

_RESIDUAL = {
    "norm1": "residual.0",
    "conv1": "residual.2",
    "norm2": "residual.3",
    "conv2": "residual.6",
    "conv_shortcut": "shortcut",
}
_MIDDLE = {("resnets", 0): 0, ("attentions", 0): 1, ("resnets", 1): 2}
_TOP = {"quant_conv": "conv1", "post_quant_conv": "conv2"}
_SIDE = {"conv_in": "conv1", "norm_out": "head.0", "conv_out": "head.2"}


def _residual(parts: list[str]) -> list[str]:
    return [_RESIDUAL[parts[0]], *parts[1:]] if parts and parts[0] in _RESIDUAL else parts


def wan_vae_original_name(key: str, num_res_blocks: int) -> str:
    """A diffusers `AutoencoderKLWan` key -> its `Wan2.1_VAE.pth` name."""
    parts = key.split(".")
    if parts[0] in _TOP:
        return ".".join([_TOP[parts[0]], *parts[1:]])
    side, head, rest = parts[0], parts[1], parts[2:]
    if head in _SIDE:
        return ".".join([side, _SIDE[head], *rest])
    if head == "mid_block":
        position = _MIDDLE[(rest[0], int(rest[1]))]
        inner = _residual(rest[2:]) if rest[0] == "resnets" else rest[2:]
        return ".".join([side, "middle", str(position), *inner])
    if head == "down_blocks":
        return ".".join(["encoder", "downsamples", rest[0], *_residual(rest[1:])])
    if head == "up_blocks":
        stage, per_stage = int(rest[0]), num_res_blocks + 2
        if rest[1] == "resnets":
            flat = stage * per_stage + int(rest[2])
            return ".".join(["decoder", "upsamples", str(flat), *_residual(rest[3:])])
        if rest[1] == "upsamplers":
            flat = stage * per_stage + num_res_blocks + 1
            return ".".join(["decoder", "upsamples", str(flat), *rest[3:]])
    raise CheckpointError(f"no original Wan VAE name for diffusers key {key!r}")


def wan_vae_config(shapes: Shapes, *, source: str = "Wan VAE") -> dict[str, Any]:
    """`AutoencoderKLWan` keywords read off an original Wan VAE's tensor shapes."""
    try:
        base = shapes["encoder.conv1.weight"][0]
        z_dim = shapes["conv2.weight"][0]
    except KeyError as exc:
        raise CheckpointError(
            f"{source}: not an original Wan VAE (no {exc.args[0]}); expected Wan2.1_VAE.pth"
        ) from exc
    pattern = re.compile(r"^encoder\.downsamples\.(\d+)\.")
    entries = sorted({int(m.group(1)) for k in shapes if (m := pattern.match(k))})
    stages: list[list[int]] = [[]]
    temporal: list[bool] = []
    for i in entries:
        entry = f"encoder.downsamples.{i}."
        if entry + "resample.1.weight" in shapes:
            temporal.append(entry + "time_conv.weight" in shapes)
            stages.append([])
        elif entry + "residual.2.weight" in shapes:
            stages[-1].append(shapes[entry + "residual.2.weight"][0])
        else:
            raise CheckpointError(
                f"{source}: encoder.downsamples.{i} is neither a residual block nor a resample "
                "(attention inside the stages is not a Wan2.1 VAE; diffusers cannot place it)"
            )
    blocks = {len(s) for s in stages}
    if len(blocks) != 1 or not stages[0]:
        raise CheckpointError(f"{source}: the encoder stages hold unequal numbers of blocks")
    return {
        "base_dim": base,
        "z_dim": z_dim,
        "dim_mult": [s[-1] // base for s in stages],
        "num_res_blocks": blocks.pop(),
        "attn_scales": [],
        "temperal_downsample": temporal,
    }


def wan_vae_names(vae: torch.nn.Module) -> dict[str, str]:
    """{diffusers key: original key} for every tensor of `vae` (an `AutoencoderKLWan`)."""
    nrb = vae.config.num_res_blocks
    return {k: wan_vae_original_name(k, nrb) for k in vae.state_dict()}


def _wan_vae_on_meta(shapes: Shapes, source: str) -> torch.nn.Module:
    from diffusers import AutoencoderKLWan

    config = wan_vae_config(shapes, source=source)
    with torch.device("meta"):
        return AutoencoderKLWan(**config)


def wan_vae_on_meta(shapes: Shapes, *, source: str = "Wan VAE") -> torch.nn.Module:
    """The `AutoencoderKLWan` an original Wan VAE's shapes describe, on `meta` (for doctor)."""
    return _wan_vae_on_meta(shapes, source)


def wan_vae_to_diffusers(state: Mapping[str, Any], vae: torch.nn.Module) -> dict[str, Any]:
    """Original VAE keys renamed to `vae`'s; keys the map does not know keep their name (the
    strict check then names them as unexpected)."""
    to_diffusers = {old: new for new, old in wan_vae_names(vae).items()}
    return {to_diffusers.get(k, k): v for k, v in state.items()}


def diffusers_to_wan_vae(vae: torch.nn.Module) -> dict[str, torch.Tensor]:
    """`vae`'s weights under the original names (how the tiny twin writes `Wan2.1_VAE.pth`)."""
    names = wan_vae_names(vae)
    return {names[k]: v.detach().contiguous() for k, v in vae.state_dict().items()}


def load_wan_vae_file(path: str | Path) -> torch.nn.Module:
    """An original Wan VAE file (`Wan2.1_VAE.pth`, or the same keys in one `.safetensors`) as an
    fp32 `AutoencoderKLWan`, strictly."""
    path = Path(path)
    state = read_state_dict(path)
    vae = _wan_vae_on_meta({k: tuple(v.shape) for k, v in state.items()}, str(path))
    return load_fp32_strictly(vae, wan_vae_to_diffusers(state, vae), f"{path} (original Wan VAE)")


def load_wan_vae(path: str | Path) -> torch.nn.Module:
    """The Wan VAE at `path`: a diffusers folder or an original file; fp32, eval mode."""
    from diffusers import AutoencoderKLWan

    path = Path(path)
    if path.is_file():
        return load_wan_vae_file(path)
    try:
        # The VAE is small: plain loading, and no warning when `accelerate` is absent.
        return AutoencoderKLWan.from_pretrained(
            str(path), torch_dtype=torch.float32, low_cpu_mem_usage=False
        )
    except (OSError, ValueError) as e:
        raise PipelineError(
            f"cannot load the Wan VAE from {path}: {e}. It must be a diffusers AutoencoderKLWan "
            "folder (config.json + diffusion_pytorch_model.safetensors) or the original "
            "Wan2.1_VAE.pth."
        ) from e


# ------------------------------------------------------------------------------------ umT5

_T5_BLOCK = {
    "norm1": "layer.0.layer_norm",
    "attn.q": "layer.0.SelfAttention.q",
    "attn.k": "layer.0.SelfAttention.k",
    "attn.v": "layer.0.SelfAttention.v",
    "attn.o": "layer.0.SelfAttention.o",
    "pos_embedding.embedding": "layer.0.SelfAttention.relative_attention_bias",
    "norm2": "layer.1.layer_norm",
    "ffn.gate.0": "layer.1.DenseReluDense.wi_0",
    "ffn.fc1": "layer.1.DenseReluDense.wi_1",
    "ffn.fc2": "layer.1.DenseReluDense.wo",
}
_T5_TOP = {"token_embedding": "shared", "norm": "encoder.final_layer_norm"}
_T5_KEY = re.compile(r"^blocks\.(\d+)\.(.+)\.weight$")
UMT5_MAX_DISTANCE = 128  # Wan t5.py 223 (T5RelativeEmbedding max_dist)
UMT5_EPS = 1e-6  # Wan t5.py 55 (T5LayerNorm)
TIED_EMBEDDING = "encoder.embed_tokens.weight"  # the same tensor as `shared.weight`


def umt5_name(key: str) -> str | None:
    """An original Wan umT5 key -> transformers `UMT5EncoderModel`'s; None if unknown."""
    m = _T5_KEY.match(key)
    if m:
        inner = _T5_BLOCK.get(m.group(2))
        return None if inner is None else f"encoder.block.{m.group(1)}.{inner}.weight"
    stem, _, suffix = key.rpartition(".")
    return f"{_T5_TOP[stem]}.{suffix}" if stem in _T5_TOP and suffix == "weight" else None


def umt5_original_names(num_layers: int) -> dict[str, str]:
    """{transformers key: original key} for an umT5 encoder of `num_layers` blocks."""
    out = {f"{new}.weight": f"{old}.weight" for old, new in _T5_TOP.items()}
    for i in range(num_layers):
        out |= {
            f"encoder.block.{i}.{new}.weight": f"blocks.{i}.{old}.weight"
            for old, new in _T5_BLOCK.items()
        }
    return out


def umt5_config(shapes: Shapes, *, source: str = "umT5"):
    """The `UMT5Config` an original Wan umT5 encoder's shapes describe."""
    from transformers import UMT5Config

    try:
        vocab, d_model = shapes["token_embedding.weight"]
        inner = shapes["blocks.0.attn.q.weight"][0]
        buckets, heads = shapes["blocks.0.pos_embedding.embedding.weight"]
        d_ff = shapes["blocks.0.ffn.fc1.weight"][0]
    except KeyError as exc:
        raise CheckpointError(
            f"{source}: not an original Wan umT5 encoder (no {exc.args[0]}); expected "
            "models_t5_umt5-xxl-enc-bf16.pth"
        ) from exc
    layers = 1 + max(int(m.group(1)) for k in shapes if (m := _T5_KEY.match(k)))
    return UMT5Config(
        vocab_size=vocab,
        d_model=d_model,
        d_kv=inner // heads,
        d_ff=d_ff,
        num_layers=layers,
        num_decoder_layers=layers,
        num_heads=heads,
        relative_attention_num_buckets=buckets,
        relative_attention_max_distance=UMT5_MAX_DISTANCE,
        feed_forward_proj="gated-gelu",
        layer_norm_epsilon=UMT5_EPS,
        dropout_rate=0.0,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )


def umt5_on_meta(shapes: Shapes, *, source: str = "umT5") -> torch.nn.Module:
    from transformers import UMT5EncoderModel

    config = umt5_config(shapes, source=source)
    with torch.device("meta"):
        return UMT5EncoderModel(config)


def umt5_to_transformers(state: Mapping[str, Any]) -> dict[str, Any]:
    """Original umT5 keys renamed to transformers'; unknown keys keep their name."""
    return {(umt5_name(k) or k): v for k, v in state.items()}


def transformers_to_umt5(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A `UMT5EncoderModel`'s weights under the original Wan names (the tied copy once)."""
    names = umt5_original_names(model.config.num_layers)
    state = model.state_dict()
    return {old: state[new].detach().contiguous() for new, old in names.items()}


def load_umt5_file(path: str | Path, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """`models_t5_umt5-xxl-enc-bf16.pth` as a transformers `UMT5EncoderModel`, strictly."""
    path = Path(path)
    state = read_state_dict(path)
    model = umt5_on_meta({k: tuple(v.shape) for k, v in state.items()}, source=str(path))
    renamed = umt5_to_transformers(state)
    expected = {k: v.shape for k, v in model.state_dict().items() if k != TIED_EMBEDDING}
    check_keys(expected, renamed, f"{path} (original Wan umT5)")
    renamed[TIED_EMBEDDING] = renamed["shared.weight"]
    model.load_state_dict(renamed, strict=True, assign=True)
    model.tie_weights()
    return model.to(dtype).eval().requires_grad_(False)


def header_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """{key: shape} of a checkpoint file or folder, from headers only."""
    return {k: shape for k, (_, shape) in read_header(path).items()}
