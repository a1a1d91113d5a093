"""Key and config conversion between original Wan names (Wan2.1 repo, DiffSynth) and diffusers.

The mapping is an explicit table of module paths (not chained string replaces), applied to full
keys (`blocks.3.self_attn.q.weight`) and to bare module paths (`blocks.3.self_attn.q`, as found in
LoRA files) alike. It agrees with diffusers' `convert_wan_transformer_to_diffusers` for T2V keys.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from pusa_batch.errors import CheckpointError

V = TypeVar("V")

TOP_WAN_TO_DIFFUSERS = {
    "patch_embedding": "patch_embedding",
    "text_embedding.0": "condition_embedder.text_embedder.linear_1",
    "text_embedding.2": "condition_embedder.text_embedder.linear_2",
    "time_embedding.0": "condition_embedder.time_embedder.linear_1",
    "time_embedding.2": "condition_embedder.time_embedder.linear_2",
    "time_projection.1": "condition_embedder.time_proj",
    "head.head": "proj_out",
    "head.modulation": "scale_shift_table",
}


def _attn(wan: str, ours: str) -> dict[str, str]:
    pairs = {"q": "to_q", "k": "to_k", "v": "to_v", "o": "to_out.0"}
    pairs |= {"norm_q": "norm_q", "norm_k": "norm_k"}
    return {f"{wan}.{a}": f"{ours}.{b}" for a, b in pairs.items()}


BLOCK_WAN_TO_DIFFUSERS = {
    **_attn("self_attn", "attn1"),
    **_attn("cross_attn", "attn2"),
    "norm3": "norm2",  # the affine norm before cross-attention
    "ffn.0": "ffn.net.0.proj",
    "ffn.2": "ffn.net.2",
    "modulation": "scale_shift_table",
}

_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")
_PREFIXES = ("model.diffusion_model.", "diffusion_model.")


def _swap(name: str, table: Mapping[str, str]) -> str | None:
    for old, new in table.items():
        if name == old or name.startswith(old + "."):
            return new + name[len(old) :]
    return None


def _convert(name: str, top: Mapping[str, str], block: Mapping[str, str]) -> str | None:
    m = _BLOCK.match(name)
    if m:
        rest = _swap(m.group(2), block)
        return None if rest is None else f"blocks.{m.group(1)}.{rest}"
    return _swap(name, top)


def wan_name_to_diffusers(name: str) -> str | None:
    """`blocks.0.self_attn.q.weight` -> `blocks.0.attn1.to_q.weight`; None if not a Wan T2V name."""
    return _convert(name, TOP_WAN_TO_DIFFUSERS, BLOCK_WAN_TO_DIFFUSERS)


def diffusers_name_to_wan(name: str) -> str | None:
    top = {v: k for k, v in TOP_WAN_TO_DIFFUSERS.items()}
    block = {v: k for k, v in BLOCK_WAN_TO_DIFFUSERS.items()}
    return _convert(name, top, block)


def strip_prefix(state_dict: Mapping[str, V]) -> dict[str, V]:
    """Drop a `diffusion_model.` / `model.diffusion_model.` prefix shared by every key."""
    for prefix in _PREFIXES:
        if state_dict and all(k.startswith(prefix) for k in state_dict):
            return {k[len(prefix) :]: v for k, v in state_dict.items()}
    return dict(state_dict)


def is_wan_format(keys: Iterable[str]) -> bool:
    """True if the keys use original Wan names (any key only Wan has)."""
    markers = ("head.head.", "time_projection.", "text_embedding.", ".self_attn.", ".cross_attn.")
    return any(any(m in "." + k for m in markers) for k in keys)


def _convert_all(state_dict: Mapping[str, V], convert, source: str, what: str) -> dict[str, V]:
    out: dict[str, V] = {}
    bad = []
    for key, value in state_dict.items():
        new = convert(key)
        if new is None:
            bad.append(key)
        else:
            out[new] = value
    if bad:
        shown = ", ".join(bad[:10]) + (" ..." if len(bad) > 10 else "")
        raise CheckpointError(
            f"{source}: {len(bad)} key(s) are not {what} T2V transformer names: {shown}. "
            "Is this an I2V/VACE checkpoint or another model?"
        )
    return out


def wan_to_diffusers(state_dict: Mapping[str, V], *, source: str = "checkpoint") -> dict[str, V]:
    return _convert_all(strip_prefix(state_dict), wan_name_to_diffusers, source, "Wan")


def wan_config_to_diffusers(raw: Mapping[str, Any], *, source: str = "config.json") -> dict:
    """An original Wan `config.json` (dim, num_heads, ...) as a diffusers transformer config."""
    model_type = raw.get("model_type", "t2v")
    if model_type not in ("t2v", "ti2v"):
        raise CheckpointError(
            f"{source}: model_type {model_type!r} is not a T2V transformer; "
            "Pusa uses Wan T2V weights (model_type 't2v')"
        )
    missing = [k for k in ("dim", "num_heads", "num_layers", "ffn_dim") if k not in raw]
    if missing:
        raise CheckpointError(f"{source}: Wan config lacks {missing}")
    if raw["dim"] % raw["num_heads"]:
        raise CheckpointError(f"{source}: dim {raw['dim']} is not divisible by num_heads")
    if tuple(raw.get("window_size", (-1, -1))) != (-1, -1):
        raise CheckpointError(f"{source}: local attention (window_size) is not supported")
    in_dim = raw.get("in_dim", 16)
    return {
        "patch_size": list(raw.get("patch_size", (1, 2, 2))),
        "num_attention_heads": raw["num_heads"],
        "attention_head_dim": raw["dim"] // raw["num_heads"],
        "in_channels": in_dim,
        "out_channels": raw.get("out_dim", in_dim),
        "text_dim": raw.get("text_dim", 4096),
        "freq_dim": raw.get("freq_dim", 256),
        "ffn_dim": raw["ffn_dim"],
        "num_layers": raw["num_layers"],
        "cross_attn_norm": raw.get("cross_attn_norm", True),
        "qk_norm": "rms_norm_across_heads" if raw.get("qk_norm", True) else None,
        "eps": raw.get("eps", 1e-6),
    }


WAN_HEAD_DIM = 128


def wan_config_from_shapes(
    shapes: Mapping[str, tuple[int, ...]], *, source: str = "Wan DiT"
) -> dict[str, Any]:
    """An original-format Wan config (`dim`, `num_heads`, ...) read off a T2V DiT's shapes
    (original names, prefix stripped), the head size being Wan's 128 at every size (Wan2.1
    `wan/configs`: 1.3B dim 1536 / 12 heads, 14B dim 5120 / 40 heads)."""
    try:
        dim, in_dim, *patch = shapes["patch_embedding.weight"]
        ffn_dim = shapes["blocks.0.ffn.0.weight"][0]
        text_dim = shapes["text_embedding.0.weight"][1]
        freq_dim = shapes["time_embedding.0.weight"][1]
        head_out = shapes["head.head.weight"][0]
    except (KeyError, ValueError) as exc:
        raise CheckpointError(
            f"{source}: cannot read a Wan T2V config off its tensors (no {exc}); put the Wan "
            "config.json beside it"
        ) from exc
    if dim % WAN_HEAD_DIM:
        raise CheckpointError(
            f"{source}: dim {dim} is not a multiple of Wan's head size {WAN_HEAD_DIM}; put the "
            "Wan config.json (num_heads) beside it"
        )
    layers = 1 + max(int(k.split(".")[1]) for k in shapes if k.startswith("blocks."))
    return {
        "model_type": "t2v",
        "patch_size": list(patch),
        "in_dim": in_dim,
        "dim": dim,
        "ffn_dim": ffn_dim,
        "freq_dim": freq_dim,
        "text_dim": text_dim,
        "out_dim": head_out // math.prod(patch),
        "num_heads": dim // WAN_HEAD_DIM,
        "num_layers": layers,
    }
