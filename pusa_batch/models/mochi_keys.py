"""Mochi DiT state dicts: genmo key names <-> diffusers `MochiTransformer3DModel` key names.

Beyond renames, three tensors change layout: the fused `qkv_{x,y}` split into q/k/v projections,
the SwiGLU `w1` halves swap (genmo applies SiLU to the first half, diffusers to the second),
and the final modulation swaps (shift, scale) -> (scale, shift).
"""

from __future__ import annotations

import re

import torch

from pusa_batch.errors import CheckpointError

_GLOBAL = {
    "x_embedder.proj": "patch_embed.proj",
    "t_embedder.mlp.0": "time_embed.timestep_embedder.linear_1",
    "t_embedder.mlp.2": "time_embed.timestep_embedder.linear_2",
    "t5_y_embedder.to_kv": "time_embed.pooler.to_kv",
    "t5_y_embedder.to_q": "time_embed.pooler.to_q",
    "t5_y_embedder.to_out": "time_embed.pooler.to_out",
    "t5_yproj": "time_embed.caption_proj",
    "final_layer.linear": "proj_out",
    "pos_frequencies": "pos_frequencies",
}
_BLOCK = {
    "mod_x": "norm1.linear",
    "attn.q_norm_x": "attn1.norm_q",
    "attn.k_norm_x": "attn1.norm_k",
    "attn.q_norm_y": "attn1.norm_added_q",
    "attn.k_norm_y": "attn1.norm_added_k",
    "attn.proj_x": "attn1.to_out.0",
    "attn.proj_y": "attn1.to_add_out",
    "mlp_x.w2": "ff.net.2",
    "mlp_y.w2": "ff_context.net.2",
}
_SWAPPED = {"mlp_x.w1": "ff.net.0.proj", "mlp_y.w1": "ff_context.net.0.proj"}
_FUSED = {
    "attn.qkv_x": ("attn1.to_q", "attn1.to_k", "attn1.to_v"),
    "attn.qkv_y": ("attn1.add_q_proj", "attn1.add_k_proj", "attn1.add_v_proj"),
}
_FINAL_MOD = ("final_layer.mod", "norm_out.linear")
_SUFFIX = re.compile(r"^(.*?)(?:\.(weight|bias))?$")
_BLOCK_KEY = re.compile(r"^(blocks|transformer_blocks)\.(\d+)\.(.+)$")


def swap_halves(t: torch.Tensor) -> torch.Tensor:
    a, b = t.chunk(2, dim=0)
    return torch.cat([b, a], dim=0)


def _depth(keys, prefix: str) -> int:
    found = [int(m.group(2)) for k in keys if (m := _BLOCK_KEY.match(k)) and m.group(1) == prefix]
    return max(found) + 1 if found else 0


def _mod_y_name(index: int, depth: int) -> str:
    last = index == depth - 1
    return "norm1_context.linear_1" if last else "norm1_context.linear"


def genmo_to_diffusers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Convert a genmo AsymmDiT state dict (e.g. `pusa_v0_dit.safetensors`) to diffusers names."""
    depth, out, unknown = _depth(state, "blocks"), {}, []
    for key, value in state.items():
        stem, suffix = _SUFFIX.match(key).groups()
        tail = f".{suffix}" if suffix else ""
        block = _BLOCK_KEY.match(stem)
        if block is None:
            if stem == _FINAL_MOD[0]:
                out[_FINAL_MOD[1] + tail] = swap_halves(value)
            elif stem in _GLOBAL:
                out[_GLOBAL[stem] + tail] = value
            else:
                unknown.append(key)
            continue
        index, name = int(block.group(2)), block.group(3)
        new = f"transformer_blocks.{index}."
        if name in _BLOCK:
            out[new + _BLOCK[name] + tail] = value
        elif name == "mod_y":
            out[new + _mod_y_name(index, depth) + tail] = value
        elif name in _SWAPPED:
            out[new + _SWAPPED[name] + tail] = swap_halves(value)
        elif name in _FUSED:
            for part, tensor in zip(_FUSED[name], value.chunk(3, dim=0)):
                out[new + part + tail] = tensor
        else:
            unknown.append(key)
    _raise_unknown(unknown, "genmo")
    return out


def diffusers_to_genmo(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of `genmo_to_diffusers`."""
    inverse = {v: k for k, v in _GLOBAL.items()}
    block_inverse = {v: k for k, v in _BLOCK.items()}
    swapped_inverse = {v: k for k, v in _SWAPPED.items()}
    fused_parts = {p: (k, i) for k, parts in _FUSED.items() for i, p in enumerate(parts)}
    out, pending, unknown = {}, {}, []
    for key, value in state.items():
        stem, suffix = _SUFFIX.match(key).groups()
        tail = f".{suffix}" if suffix else ""
        block = _BLOCK_KEY.match(stem)
        if block is None:
            if stem == _FINAL_MOD[1]:
                out[_FINAL_MOD[0] + tail] = swap_halves(value)
            elif stem in inverse:
                out[inverse[stem] + tail] = value
            else:
                unknown.append(key)
            continue
        index, name = int(block.group(2)), block.group(3)
        old = f"blocks.{index}."
        if name in block_inverse:
            out[old + block_inverse[name] + tail] = value
        elif name in ("norm1_context.linear", "norm1_context.linear_1"):
            out[old + "mod_y" + tail] = value
        elif name in swapped_inverse:
            out[old + swapped_inverse[name] + tail] = swap_halves(value)
        elif name in fused_parts:
            fused, position = fused_parts[name]
            pending.setdefault(old + fused + tail, [None, None, None])[position] = value
        else:
            unknown.append(key)
    _raise_unknown(unknown, "diffusers")
    for key, parts in pending.items():
        if any(p is None for p in parts):
            raise CheckpointError(
                f"diffusers state dict lacks part of the q/k/v projection for {key}."
            )
        out[key] = torch.cat(parts, dim=0)
    return out


def _raise_unknown(keys: list[str], layout: str) -> None:
    if keys:
        shown = ", ".join(sorted(keys)[:10]) + (" ..." if len(keys) > 10 else "")
        raise CheckpointError(
            f"{len(keys)} key(s) are not Mochi DiT keys in {layout} layout: {shown}. "
            "Is this the right checkpoint (a Mochi/Pusa V0.5 DiT)?"
        )


def check_state_dict(model: torch.nn.Module, state: dict, source: str) -> None:
    """Strict key and shape check; the error names what is missing, unexpected or mis-shaped."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [
        f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = [
        f"{label}: {', '.join(items[:10])}{' ...' if len(items) > 10 else ''}"
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape", shapes))
        if items
    ]
    if problems:
        raise CheckpointError(
            f"{source} does not match the Mochi DiT config ({'; '.join(problems)}). Check that it "
            "is a genmo-layout Pusa V0.5/Mochi DiT and that config.json next to it (if any) fits."
        )
