"""Merge Pusa and LightX2V LoRAs into a loaded Wan transformer, in place, as upstream does.

The rules are those of upstream Pusa's loaders (Yaofang-Liu/Pusa-VidGen @ 8a8c4f5,
`PusaV1/diffsynth/models/`), which the official scripts run:

* kind "pusa" (`ModelManager.load_lora` -> `lora.py` `GeneralLoRAFromPeft`, lines 205-277): PEFT
  pairs, ``W += strength * (lora_B @ lora_A)``, never divided by the rank; `.alpha` keys are not
  read (only `.lora_B.` keys and their `.lora_A.` twins are, lines 209-218).
* kind "lightx2v" (`ModelManager.load_lora_lightx2v` / `ModelManagerWan22.load_loras_wan22_lightx2v`
  -> `_load_and_merge_lora_weight_from_safetensors`, `model_manager.py` 440-493,
  `model_manager_wan22.py` 465-518): ``W += (alpha / rank) * (lora_up @ lora_down)`` where alpha
  is the module's `.alpha` from the file when there is one (the strength is then not used) and
  the strength (upstream's `lora_alpha`, 1.0 in every script) when there is none; rank is
  `lora_down`'s first dimension. Only `<param>.lora_down.weight` keys are looked up, so
  `.diff` (weight), `.diff_b` (bias) and `.diff_m` (modulation) keys are never added.

Keys upstream skips (`.alpha` in a Pusa file, `.diff` / `.diff_b` / `.diff_m`) are skipped here
too, after checking that they name a tensor of this transformer, and `MergeReport.ignored` says
how many. Any other key that cannot be placed (not a LoRA key, a module this transformer lacks, a
shape that does not fit, half a pair, a pair of the other kind's layout) is refused, naming the
keys: upstream would silently merge a part of such a file, or nothing.

Merges add up (Pusa issue #29: a LoRA merged twice makes flashing videos), so every merge is
recorded in `model.merged_weights` (its identity, and its `MergeReport` as a dict) and
`merge_loras` refuses weights that are not fresh. Each merge validates every key before touching a
weight: a bad file changes nothing.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from pusa_batch.errors import CheckpointError, PipelineError
from pusa_batch.models.loading import file_identity, read_state_dict
from pusa_batch.models.wan import MergedWeights, PusaWanTransformer
from pusa_batch.models.wan_keys import wan_name_to_diffusers

__all__ = [
    "LoraRef",
    "MergeReport",
    "MergedWeights",
    "lora_identity",
    "merge_lightx2v_lora",
    "merge_loras",
    "merge_pusa_lora",
    "read_lora",
]

_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "base_model.model.", "transformer.")
_KEY = re.compile(
    r"^(?P<module>.+?)\.(?P<part>lora_A(?:\.default)?\.weight|lora_B(?:\.default)?\.weight"
    r"|lora_down\.weight|lora_up\.weight|alpha|diff|diff_b|diff_m)$"
)
_PART = {"lora_down.weight": "down", "lora_up.weight": "up"}
# What each diff key would add to (upstream adds none of them): (parameter of the module, or of
# the module's own `modulation`).
_DIFFS = {"diff": ".weight", "diff_b": ".bias", "diff_m": ".modulation"}
_PAIRS = {"pusa": ("A", "B"), "lightx2v": ("down", "up")}
_SHOW = 10


@dataclass(frozen=True)
class LoraRef:
    """One LoRA to merge. `strength` is upstream's `lora_alpha`: a Pusa LoRA's multiplier; for a
    LightX2V LoRA the alpha of the modules that carry no `.alpha` of their own."""

    path: str
    kind: Literal["pusa", "lightx2v"]
    strength: float

    def identity(self) -> str:
        return f"{self.kind}:{lora_identity(self.path, self.strength)}"


@dataclass(frozen=True)
class MergeReport:
    """What one merge did: weights changed, how they were scaled, and the keys it skipped."""

    lora: str
    kind: str
    strength: float
    merged: int  # weights changed
    rule: str  # the formula, as upstream applies it
    ranks: tuple[int, ...] = ()
    alpha_from_file: int = 0  # LightX2V pairs scaled by their own `.alpha` (strength unused)
    alpha_from_strength: int = 0  # LightX2V pairs with no `.alpha`: strength / rank
    ignored: dict[str, int] = field(default_factory=dict)  # skipped, as upstream: part -> count
    ignored_keys: tuple[str, ...] = ()  # the first few of them, as written in the file

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["ranks"] = list(self.ranks)
        out["ignored_keys"] = list(self.ignored_keys)
        return out

    def summary(self) -> str:
        """How the weights were scaled and what was skipped, for `doctor`."""
        text = self.rule
        if self.ranks:
            text += f", rank {'/'.join(map(str, self.ranks))}"
        if self.kind == "lightx2v":
            if self.alpha_from_file:
                unused = "" if self.alpha_from_strength else f", alpha {self.strength:g} unused"
                text += f"; {self.alpha_from_file} with the file's .alpha{unused}"
            if self.alpha_from_strength:
                text += f"; {self.alpha_from_strength} with no .alpha: alpha {self.strength:g}"
        if self.ignored:
            parts = ", ".join(f"{n} .{p}" for p, n in sorted(self.ignored.items()))
            text += f"; ignored as upstream does: {parts}"
        return text


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


def _part(raw: str) -> str:
    if raw.startswith("lora_A"):
        return "A"
    if raw.startswith("lora_B"):
        return "B"
    return _PART.get(raw, raw)


def _group(
    state_dict: Mapping[str, torch.Tensor],
) -> tuple[dict[str, dict[str, tuple[str, torch.Tensor]]], list[str]]:
    """{module: {part: (key as written, tensor)}} and the keys that are no LoRA key at all."""
    groups: dict[str, dict[str, tuple[str, torch.Tensor]]] = {}
    bad = []
    for key, value in state_dict.items():
        m = _KEY.match(_strip(key))
        if m is None:
            bad.append(f"{key} (not a LoRA key)")
        else:
            groups.setdefault(m["module"], {})[_part(m["part"])] = (key, value)
    return groups, bad


def _resolve(
    module: str, params: Mapping[str, torch.Tensor], suffix: str = ".weight"
) -> str | None:
    """The diffusers name of `module + suffix` for a Wan- or diffusers-named module, if the model
    has it (a `.modulation` suffix is Wan's name for diffusers' `scale_shift_table`)."""
    for name in (wan_name_to_diffusers(module + suffix), module + suffix):
        if name is not None and name in params:
            return name
    return None


def _fail(problems: list[str], source: str) -> None:
    if problems:
        shown = "; ".join(problems[:_SHOW]) + (" ..." if len(problems) > _SHOW else "")
        raise CheckpointError(
            f"{source}: {len(problems)} LoRA key(s) cannot be placed in this transformer "
            f"(LoRA for the wrong base?); none of it was merged: {shown}"
        )


@torch.no_grad()
def _add(param: torch.Tensor, delta: torch.Tensor) -> None:
    param.copy_((param.float() + delta.to(param.device, torch.float32)).to(param.dtype))


def _record(model: torch.nn.Module, report: MergeReport) -> None:
    record = getattr(model, "merged_weights", MergedWeights())
    model.merged_weights = dataclasses.replace(
        record,
        loras=(*record.loras, report.lora),
        merges=(*record.merges, report.to_dict()),
    )


@dataclass
class _Plan:
    deltas: list[tuple[torch.Tensor, Any]] = field(default_factory=list)  # (param, thunk)
    problems: list[str] = field(default_factory=list)
    ranks: set[int] = field(default_factory=set)
    from_file: int = 0
    from_strength: int = 0
    ignored: dict[str, int] = field(default_factory=dict)
    ignored_keys: list[str] = field(default_factory=list)

    def ignore(self, part: str, key: str) -> None:
        self.ignored[part] = self.ignored.get(part, 0) + 1
        if len(self.ignored_keys) < _SHOW:
            self.ignored_keys.append(key)


def _plan(groups, params, kind: str, strength: float) -> _Plan:
    plan = _Plan()
    first, second = _PAIRS[kind]
    other = "lightx2v" if kind == "pusa" else "pusa"
    for module, parts in sorted(groups.items()):
        for part, suffix in _DIFFS.items():
            if part in parts:
                key, tensor = parts[part]
                target = _resolve(module, params, suffix)
                if target is None or tuple(params[target].shape) != tuple(tensor.shape):
                    plan.problems.append(f"{key}: fits no {module}{suffix} of this transformer")
                else:
                    plan.ignore(part, key)
        theirs = [p for p in _PAIRS[other] if p in parts]
        if theirs:
            names = ", ".join(parts[p][0] for p in theirs)
            plan.problems.append(f'{names}: {other} layout; set kind = "{other}" for this file')
            continue
        has = [p for p in (first, second) if p in parts]
        if not has:
            if "alpha" in parts:
                plan.problems.append(f"{parts['alpha'][0]}: an alpha with no LoRA pair")
            continue
        if len(has) == 1:
            names = ", ".join(parts[p][0] for p in has)
            plan.problems.append(f"{module}: has {names} but not its {first}/{second} twin")
            continue
        _plan_pair(plan, module, parts, params, kind, strength)
    return plan


def _plan_pair(plan: _Plan, module: str, parts, params, kind: str, strength: float) -> None:
    first, second = _PAIRS[kind]
    (_, down), (_, up) = parts[first], parts[second]
    target = _resolve(module, params)
    if target is None:
        plan.problems.append(f"{module}: no such weight in the transformer")
        return
    if down.ndim != 2 or up.ndim != 2 or down.shape[0] != up.shape[1]:
        plan.problems.append(f"{module}: {second} {tuple(up.shape)} @ {first} {tuple(down.shape)}")
        return
    want = tuple(params[target].shape)
    if (up.shape[0], down.shape[1]) != want:
        plan.problems.append(f"{module}: delta {(up.shape[0], down.shape[1])} vs weight {want}")
        return
    rank = int(down.shape[0])
    plan.ranks.add(rank)
    if kind == "pusa":
        if "alpha" in parts:
            plan.ignore("alpha", parts["alpha"][0])
        scale = float(strength)
    elif "alpha" in parts:
        plan.from_file += 1
        alpha = parts["alpha"][1]
        scale = None if alpha.is_meta else float(alpha) / rank  # meta: doctor's dry run
    else:
        plan.from_strength += 1
        scale = float(strength) / rank
    plan.deltas.append((params[target], (scale, up, down)))


_RULES = {
    "pusa": "strength x B@A, no rank division",
    "lightx2v": "alpha/rank x up@down",
}


def _merge(model, state_dict, kind: str, strength: float, identity: str | None, source: str):
    groups, problems = _group(state_dict)
    params = dict(model.named_parameters())
    plan = _plan(groups, params, kind, strength)
    _fail(problems + plan.problems, source)
    if not plan.deltas:
        raise CheckpointError(f"{source}: holds no {kind} LoRA weights")
    for param, (scale, up, down) in plan.deltas:
        delta = up.float() @ down.float()
        _add(param, delta if scale is None else scale * delta)
    report = MergeReport(
        lora=identity or f"{kind}:unnamed@{strength:g}",
        kind=kind,
        strength=float(strength),
        merged=len(plan.deltas),
        rule=_RULES[kind],
        ranks=tuple(sorted(plan.ranks)),
        alpha_from_file=plan.from_file,
        alpha_from_strength=plan.from_strength,
        ignored=dict(sorted(plan.ignored.items())),
        ignored_keys=tuple(plan.ignored_keys),
    )
    _record(model, report)
    return report


def merge_pusa_lora(
    model: PusaWanTransformer,
    state_dict: Mapping[str, torch.Tensor],
    alpha: float = 1.4,
    *,
    identity: str | None = None,
    source: str = "Pusa LoRA",
) -> MergeReport:
    """W += alpha * (B @ A) for every PEFT pair (no division by rank), as upstream's
    `GeneralLoRAFromPeft.load`; `.alpha`, `.diff*` keys are skipped as there."""
    return _merge(model, state_dict, "pusa", alpha, identity, source)


def merge_lightx2v_lora(
    model: PusaWanTransformer,
    state_dict: Mapping[str, torch.Tensor],
    scale: float = 1.0,
    *,
    identity: str | None = None,
    source: str = "LightX2V LoRA",
) -> MergeReport:
    """W += (alpha / rank) * (up @ down), alpha the module's `.alpha` or else `scale`, as
    upstream's `_load_and_merge_lora_weight_from_safetensors`; `.diff*` keys are skipped there
    and here."""
    return _merge(model, state_dict, "lightx2v", scale, identity, source)


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
