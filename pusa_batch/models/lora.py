"""Merge Pusa and LightX2V LoRAs into a loaded Wan transformer, in place.

Merges add up (Pusa issue #29: a LoRA merged twice makes flashing videos), so every merge is
recorded in `model.merged_weights` and `merge_loras` refuses weights that are not fresh.
Each merge validates every key before touching a weight: a bad file changes nothing.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from pusa_batch.errors import CheckpointError, PipelineError
from pusa_batch.models.loading import file_identity, read_state_dict
from pusa_batch.models.wan import MergedWeights, PusaWanTransformer
from pusa_batch.models.wan_keys import wan_name_to_diffusers

__all__ = [
    "LoraRef",
    "MergedWeights",
    "lora_identity",
    "merge_lightx2v_lora",
    "merge_loras",
    "merge_pusa_lora",
    "read_lora",
]

_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "base_model.model.", "transformer.")
_PEFT = re.compile(r"^(?P<module>.+)\.lora_(?P<part>A|B)(?:\.default)?\.weight$")
_KOHYA = re.compile(
    r"^(?P<module>.+)\.(?P<part>lora_down\.weight|lora_up\.weight|alpha|diff|diff_b)$"
)
_SHOW = 10


@dataclass(frozen=True)
class LoraRef:
    """One LoRA to merge: `kind` "pusa" uses `strength` as alpha, "lightx2v" as scale."""

    path: str
    kind: Literal["pusa", "lightx2v"]
    strength: float

    def identity(self) -> str:
        return f"{self.kind}:{lora_identity(self.path, self.strength)}"


def lora_identity(path: str | Path, alpha: float) -> str:
    """Fingerprint of a LoRA file and the strength it is merged with."""
    return f"{file_identity(path)}@{alpha:g}"


def read_lora(path: str | Path) -> dict[str, torch.Tensor]:
    """A LoRA state dict from safetensors, or `.pt`/`.pth` through torch.load(weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: LoRA file not found; check the path in the pipeline spec")
    return read_state_dict(path)


def _strip(key: str) -> str:
    for prefix in _PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key


def _group(
    state_dict: Mapping[str, torch.Tensor], pattern: re.Pattern
) -> tuple[dict[str, dict[str, torch.Tensor]], list[str]]:
    groups: dict[str, dict[str, torch.Tensor]] = {}
    bad = []
    for key, value in state_dict.items():
        m = pattern.match(_strip(key))
        if m is None:
            bad.append(f"{key} (not a LoRA key)")
        else:
            groups.setdefault(m["module"], {})[m["part"]] = value
    return groups, bad


def _resolve(module: str, params: Mapping[str, torch.Tensor]) -> str | None:
    """The diffusers module path for a Wan- or diffusers-named module, if the model has it."""
    for name in (wan_name_to_diffusers(module), module):
        if name is not None and f"{name}.weight" in params:
            return name
    return None


def _fail(problems: list[str], source: str) -> None:
    if problems:
        shown = "; ".join(problems[:_SHOW]) + (" ..." if len(problems) > _SHOW else "")
        raise CheckpointError(
            f"{source}: {len(problems)} LoRA key(s) do not fit this transformer "
            f"(LoRA for the wrong base?): {shown}"
        )


@torch.no_grad()
def _add(param: torch.Tensor, delta: torch.Tensor) -> None:
    param.copy_((param.float() + delta.to(param.device, torch.float32)).to(param.dtype))


def _record(model: torch.nn.Module, identity: str) -> None:
    record = getattr(model, "merged_weights", MergedWeights())
    model.merged_weights = dataclasses.replace(record, loras=(*record.loras, identity))


def _plan_pusa(groups, params) -> tuple[list[tuple[str, torch.Tensor, torch.Tensor]], list[str]]:
    plan, problems = [], []
    for module, parts in sorted(groups.items()):
        if set(parts) != {"A", "B"}:
            problems.append(f"{module}: has lora_{''.join(parts)} but not both lora_A and lora_B")
            continue
        target = _resolve(module, params)
        a, b = parts["A"], parts["B"]
        if target is None:
            problems.append(f"{module}: no such weight in the transformer")
        elif a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            problems.append(f"{module}: lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)}")
        elif (b.shape[0], a.shape[1]) != tuple(params[f"{target}.weight"].shape):
            want = tuple(params[f"{target}.weight"].shape)
            problems.append(f"{module}: delta {(b.shape[0], a.shape[1])} vs weight {want}")
        else:
            plan.append((f"{target}.weight", a, b))
    return plan, problems


def merge_pusa_lora(
    model: PusaWanTransformer,
    state_dict: Mapping[str, torch.Tensor],
    alpha: float = 1.4,
    *,
    identity: str | None = None,
    source: str = "Pusa LoRA",
) -> int:
    """W += alpha * (B @ A) for every PEFT pair (no division by rank); returns weights merged."""
    groups, problems = _group(state_dict, _PEFT)
    params = dict(model.named_parameters())
    plan, more = _plan_pusa(groups, params)
    _fail(problems + more, source)
    if not plan:
        raise CheckpointError(f"{source}: holds no LoRA weights")
    for name, a, b in plan:
        _add(params[name], alpha * (b.float() @ a.float()))
    _record(model, identity or f"pusa:unnamed@{alpha:g}")
    return len(plan)


def _plan_lightx2v(groups, params, scale: float) -> tuple[list, list[str]]:
    plan, problems = [], []
    for module, parts in sorted(groups.items()):
        target = _resolve(module, params)
        if target is None:
            problems.append(f"{module}: no such weight in the transformer")
            continue
        weight = params[f"{target}.weight"]
        down, up = parts.get("lora_down.weight"), parts.get("lora_up.weight")
        if (down is None) != (up is None):
            problems.append(f"{module}: needs both lora_down and lora_up")
        elif down is not None:
            if down.ndim != 2 or up.ndim != 2 or (up.shape[0], down.shape[1]) != weight.shape:
                problems.append(f"{module}: up {tuple(up.shape)} @ down {tuple(down.shape)}")
            else:
                rank = down.shape[0]
                alpha = float(parts["alpha"]) if "alpha" in parts else float(rank)
                plan.append((weight, (scale * alpha / rank) * (up.float() @ down.float())))
        elif "alpha" in parts:
            problems.append(f"{module}: alpha without lora_down/lora_up")
        for part, suffix in (("diff", "weight"), ("diff_b", "bias")):
            if part in parts:
                param = params.get(f"{target}.{suffix}")
                if param is None or param.shape != parts[part].shape:
                    problems.append(f"{module}.{part}: does not match {target}.{suffix}")
                else:
                    plan.append((param, scale * parts[part].float()))
    return plan, problems


def merge_lightx2v_lora(
    model: PusaWanTransformer,
    state_dict: Mapping[str, torch.Tensor],
    scale: float = 1.0,
    *,
    identity: str | None = None,
    source: str = "LightX2V LoRA",
) -> int:
    """W += scale * (alpha / rank) * up @ down (alpha defaults to rank); `.diff`/`.diff_b` add
    scale * diff to the weight/bias. Returns the number of tensors changed."""
    groups, problems = _group(state_dict, _KOHYA)
    params = dict(model.named_parameters())
    plan, more = _plan_lightx2v(groups, params, scale)
    _fail(problems + more, source)
    if not plan:
        raise CheckpointError(f"{source}: holds no LoRA weights")
    for param, delta in plan:
        _add(param, delta)
    _record(model, identity or f"lightx2v:unnamed@{scale:g}")
    return len(plan)


def merge_loras(model: PusaWanTransformer, refs: Sequence[LoraRef]) -> MergedWeights:
    """Merge each LoRA once into freshly loaded weights; returns (and records) what was merged."""
    record = getattr(model, "merged_weights", MergedWeights())
    if not record.fresh:
        raise PipelineError(
            f"LoRAs {list(record.loras)} are already merged into these weights, and merges add "
            "up; reload the base transformer before merging a different set or strength"
        )
    for ref in refs:
        merge = merge_pusa_lora if ref.kind == "pusa" else merge_lightx2v_lora
        merge(model, read_lora(ref.path), ref.strength, identity=ref.identity(), source=ref.path)
    return model.merged_weights
