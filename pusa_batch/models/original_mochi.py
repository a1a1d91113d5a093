"""genmo's Mochi VAE halves, `encoder.safetensors` and `decoder.safetensors`, read into diffusers'
`AutoencoderKLMochi` (the class the Pusa V0.5 pipeline runs).

The key map is diffusers' `scripts/convert_mochi_to_diffusers.py`
(`convert_mochi_vae_state_dict_to_diffusers`), written for any config instead of the release's
fixed counts. Decoder (genmo `blocks.*`): `blocks.0.0` is `conv_in`, `blocks.0.{i+1}` the
`block_in` resnets, `blocks.{b+1}.blocks.{i}` / `.proj` up block b, `blocks.{n_up+1}.{i}` the
`block_out` resnets, `output_proj` is `proj_out`. Encoder (genmo `layers.*`): `layers.0` is
`proj_in`, then the `block_in` resnets, the down blocks (`layers.k.layers.0` their `conv_in`,
`layers.k.layers.{i+1}` their resnets) and the `block_out` resnets, in that order;
`output_norm` / `output_proj` are `norm_out` / `proj_out`. Inside a resnet `stack.{0,2,3,5}` are
`norm1.norm_layer`, `conv1.conv`, `norm2.norm_layer`, `conv2.conv`; an attention block's
`attn_block.norm` is the stage's `norms.i.norm_layer`, its fused `attn_block.attn.qkv` splits
into `to_q` / `to_k` / `to_v` (thirds along dim 0) and `attn.out` is `to_out.0`.
The config (channels, layers per block, expansions, attention per stage) is read off the shapes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from pusa_batch.errors import CheckpointError, PipelineError
from pusa_batch.models.layouts import MOCHI_VAE_FILES
from pusa_batch.models.loading import load_fp32_strictly, read_header, read_state_dict

Shapes = Mapping[str, tuple[int, ...]]
ENCODER, DECODER = MOCHI_VAE_FILES
_RESNET = {"norm1.norm_layer": "stack.0", "conv1.conv": "stack.2", "norm2.norm_layer": "stack.3"}
_RESNET["conv2.conv"] = "stack.5"
_QKV = ("to_q", "to_k", "to_v")


def _resnet(rest: list[str]) -> str:
    inner = ".".join(rest[:2])
    if inner not in _RESNET:
        raise KeyError(".".join(rest))
    return ".".join([_RESNET[inner], *rest[2:]])


def _attention(rest: list[str]) -> tuple[str, int | None]:
    """`attentions.i.<rest>` of one stage -> (genmo name under the block, q/k/v part)."""
    if rest[0] in _QKV:
        return "attn_block.attn.qkv." + ".".join(rest[1:]), _QKV.index(rest[0])
    if rest[:2] == ["to_out", "0"]:
        return "attn_block.attn.out." + ".".join(rest[2:]), None
    raise KeyError(".".join(rest))


def _stage(prefix: str, rest: list[str], offset: int) -> tuple[str, int | None]:
    """A mid/down block's `resnets.i` / `norms.i` / `attentions.i` key -> genmo's, resnet i
    living at `prefix` + (i + offset)."""
    kind, index, tail = rest[0], int(rest[1]), rest[2:]
    block = f"{prefix}{index + offset}."
    if kind == "resnets":
        return block + _resnet(tail), None
    if kind == "norms" and tail[0] == "norm_layer":
        return block + "attn_block.norm." + ".".join(tail[1:]), None
    if kind == "attentions":
        name, part = _attention(tail)
        return block + name, part
    raise KeyError(".".join(rest))


def genmo_vae_name(key: str, config: Mapping[str, Any]) -> tuple[str, str, int | None]:
    """A diffusers `AutoencoderKLMochi` key -> (genmo file, genmo key, q/k/v part or None)."""
    lpb = list(config["layers_per_block"])
    n_down = len(config["encoder_block_out_channels"]) - 1
    n_up = len(config["decoder_block_out_channels"]) - 1
    side, head, rest = key.split(".")[0], key.split(".")[1], key.split(".")[2:]
    try:
        if side == "decoder":
            if head == "conv_in":
                return DECODER, "blocks.0.0." + ".".join(rest), None
            if head == "block_in":
                return (DECODER, *_stage("blocks.0.", rest, 1))
            if head == "up_blocks":
                block, tail = int(rest[0]), rest[1:]
                if tail[0] == "proj":
                    return DECODER, f"blocks.{block + 1}.proj." + ".".join(tail[1:]), None
                return (DECODER, *_stage(f"blocks.{block + 1}.blocks.", tail, 0))
            if head == "block_out":
                return (DECODER, *_stage(f"blocks.{n_up + 1}.", rest, 0))
            if head == "proj_out":
                return DECODER, "output_proj." + ".".join(rest), None
        elif side == "encoder":
            if head == "proj_in":
                return ENCODER, "layers.0." + ".".join(rest), None
            if head == "block_in":
                return (ENCODER, *_stage("layers.", rest, 1))
            if head == "down_blocks":
                layer, tail = 1 + lpb[0] + int(rest[0]), rest[1:]
                if tail[:2] == ["conv_in", "conv"]:
                    return ENCODER, f"layers.{layer}.layers.0." + ".".join(tail[2:]), None
                return (ENCODER, *_stage(f"layers.{layer}.layers.", tail, 1))
            if head == "block_out":
                return (ENCODER, *_stage("layers.", rest, 1 + lpb[0] + n_down))
            if head == "norm_out" and rest[0] == "norm_layer":
                return ENCODER, "output_norm." + ".".join(rest[1:]), None
            if head == "proj_out":
                return ENCODER, "output_proj." + ".".join(rest), None
    except (KeyError, IndexError, ValueError):
        pass
    raise CheckpointError(f"no genmo Mochi VAE name for diffusers key {key!r}")


def genmo_vae_config(
    encoder: Shapes, decoder: Shapes, *, source: str = "Mochi VAE"
) -> dict[str, Any]:
    """`AutoencoderKLMochi` keywords read off genmo's encoder and decoder shapes."""
    try:
        return _genmo_vae_config(encoder, decoder)
    except (KeyError, IndexError, ValueError) as exc:
        raise CheckpointError(
            f"{source}: not genmo's Mochi VAE ({ENCODER} / {DECODER}): cannot read its config "
            f"({type(exc).__name__}: {exc})"
        ) from exc


def _genmo_vae_config(encoder: Shapes, decoder: Shapes) -> dict[str, Any]:
    proj_in = encoder["layers.0.weight"]
    top = re.compile(r"^layers\.(\d+)\.")
    indices = sorted({int(m.group(1)) for k in encoder if (m := top.match(k))} - {0})
    downs = [k for k in indices if f"layers.{k}.layers.0.weight" in encoder]
    if not downs or downs != list(range(downs[0], downs[-1] + 1)):
        raise ValueError("the encoder's down blocks are not one run of layers")
    block_in = [k for k in indices if k < downs[0]]
    block_out = [k for k in indices if k > downs[-1]]

    def attends(block: str) -> bool:
        return f"{block}.attn_block.norm.weight" in encoder

    def resnets(k: int) -> int:
        inner = re.compile(rf"^layers\.{k}\.layers\.(\d+)\.stack\.")
        return len({int(m.group(1)) for x in encoder if (m := inner.match(x))})

    convs = [encoder[f"layers.{k}.layers.0.weight"] for k in downs]
    n_up = sum(1 for k in decoder if re.match(r"^blocks\.\d+\.proj\.weight$", k))
    dec_channels = [decoder[f"blocks.{n_up + 1}.0.stack.0.weight"][0]]
    dec_channels += [decoder[f"blocks.{n_up - i}.blocks.0.stack.0.weight"][0] for i in range(n_up)]
    return {
        "in_channels": proj_in[1],
        "out_channels": decoder["output_proj.weight"][0],
        "encoder_block_out_channels": (proj_in[0], *(conv[0] for conv in convs)),
        "decoder_block_out_channels": tuple(dec_channels),
        "latent_channels": decoder["blocks.0.0.weight"][1],
        "layers_per_block": (len(block_in), *map(resnets, downs), len(block_out)),
        "temporal_expansions": tuple(conv[2] for conv in convs),
        "spatial_expansions": tuple(conv[3] for conv in convs),
        "add_attention_block": (
            attends(f"layers.{block_in[0]}") if block_in else False,
            *(attends(f"layers.{k}.layers.1") for k in downs),
            attends(f"layers.{block_out[0]}") if block_out else False,
        ),
    }


def genmo_vae_on_meta(encoder: Shapes, decoder: Shapes, *, source: str = "Mochi VAE"):
    from diffusers import AutoencoderKLMochi

    config = genmo_vae_config(encoder, decoder, source=source)
    with torch.device("meta"):
        return AutoencoderKLMochi(**config)


def genmo_vae_names(vae: torch.nn.Module) -> dict[str, tuple[str, str, int | None]]:
    """{diffusers key: (genmo file, genmo key, q/k/v part)} for every tensor of `vae`."""
    return {k: genmo_vae_name(k, vae.config) for k in vae.state_dict()}


def genmo_to_diffusers_entries(
    halves: Mapping[str, Mapping[str, tuple[str, tuple[int, ...]]]], vae: torch.nn.Module
) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Header entries {key: (dtype, shape)} of both halves under diffusers names (a fused qkv
    split in three); unknown keys keep `file:key` so the strict check names them."""
    names = genmo_vae_names(vae)
    wanted = {(file, key) for file, key, _ in names.values()}
    out = {}
    for new, (file, key, part) in names.items():
        if key in halves[file]:
            dtype, shape = halves[file][key]
            if part is not None:
                shape = (shape[0] // 3, *shape[1:])
            out[new] = (dtype, tuple(shape))
    for file, entries in halves.items():
        out.update((f"{file}:{k}", v) for k, v in entries.items() if (file, k) not in wanted)
    return out


def genmo_to_diffusers(
    halves: Mapping[str, Mapping[str, torch.Tensor]], vae: torch.nn.Module
) -> dict[str, torch.Tensor]:
    """genmo's two state dicts as one diffusers state dict for `vae`; unknown keys are kept as
    `file:key` so the strict check names them."""
    names = genmo_vae_names(vae)
    wanted = {(file, key) for file, key, _ in names.values()}
    out = {}
    for new, (file, key, part) in names.items():
        value = halves[file].get(key)
        if value is not None:
            out[new] = value if part is None else value.chunk(3, dim=0)[part]
    for file, state in halves.items():
        out.update((f"{file}:{k}", v) for k, v in state.items() if (file, k) not in wanted)
    return out


def diffusers_to_genmo_vae(vae: torch.nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    """`vae`'s weights as genmo's {file: state dict} (how the tiny twin writes its halves)."""
    out: dict[str, dict[str, Any]] = {ENCODER: {}, DECODER: {}}
    state = vae.state_dict()
    for new, (file, key, part) in genmo_vae_names(vae).items():
        tensor = state[new].detach().contiguous()
        if part is None:
            out[file][key] = tensor
        else:
            out[file].setdefault(key, [None, None, None])[part] = tensor
    for halves in out.values():
        for key, value in halves.items():
            if isinstance(value, list):
                halves[key] = torch.cat(value, dim=0).contiguous()
    return out


def genmo_halves_header(folder: Path) -> dict[str, dict[str, tuple[str, tuple[int, ...]]]]:
    return {name: read_header(folder / name) for name in MOCHI_VAE_FILES}


def load_genmo_vae(folder: str | Path) -> torch.nn.Module:
    """`encoder.safetensors` + `decoder.safetensors` in `folder` as an fp32
    `AutoencoderKLMochi`, strictly."""
    folder = Path(folder)
    halves = {name: read_state_dict(folder / name) for name in MOCHI_VAE_FILES}
    shapes = {n: {k: tuple(v.shape) for k, v in s.items()} for n, s in halves.items()}
    vae = genmo_vae_on_meta(shapes[ENCODER], shapes[DECODER], source=str(folder))
    state = genmo_to_diffusers(halves, vae)
    return load_fp32_strictly(vae, state, f"{folder} (genmo's {ENCODER} + {DECODER})")


def load_mochi_vae(path: str | Path) -> torch.nn.Module:
    """The Mochi VAE at `path`: genmo's two halves, or a diffusers folder; fp32, eval mode."""
    from diffusers import AutoencoderKLMochi

    path = Path(path)
    if path.is_dir() and all((path / name).is_file() for name in MOCHI_VAE_FILES):
        return load_genmo_vae(path)
    try:
        return AutoencoderKLMochi.from_pretrained(
            str(path), torch_dtype=torch.float32, low_cpu_mem_usage=False
        )
    except (OSError, ValueError) as e:
        raise PipelineError(
            f"cannot load the Mochi VAE from {path}: {e}. It must be a diffusers "
            "AutoencoderKLMochi folder (config.json + diffusion_pytorch_model.safetensors), "
            "e.g. the vae/ folder of genmo/mochi-1-preview, or a folder holding genmo's "
            "encoder.safetensors and decoder.safetensors (RaphaelLiu/Pusa-V0.5)."
        ) from e
