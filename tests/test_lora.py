"""Pusa (PEFT) and LightX2V LoRA merges into the Wan transformer."""

from __future__ import annotations

import re

import pytest
import torch
from safetensors.torch import save_file

from pusa_batch.errors import CheckpointError, PipelineError
from pusa_batch.models.lora import (
    LoraRef,
    lora_identity,
    merge_lightx2v_lora,
    merge_loras,
    merge_pusa_lora,
    read_lora,
)
from pusa_batch.models.wan import PusaWanTransformer, WanConfig

TINY = WanConfig(
    num_attention_heads=2,
    attention_head_dim=16,
    text_dim=24,
    freq_dim=32,
    ffn_dim=64,
    num_layers=2,
)
RANK = 4


def fresh_model() -> PusaWanTransformer:
    torch.manual_seed(0)
    return PusaWanTransformer(TINY)


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    theirs = b.state_dict()
    return all(torch.equal(v, theirs[k]) for k, v in a.state_dict().items())


def pair(out_f: int, in_f: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(RANK, in_f, generator=gen), torch.randn(out_f, RANK, generator=gen)


def pusa_lora(prefix: str = "", default: str = ".default") -> dict[str, torch.Tensor]:
    """Wan-named PEFT LoRA over q/k/v/o and both FFN linears of every block."""
    sd = {}
    for i in range(TINY.num_layers):
        attn = (f"blocks.{i}.{a}.{p}" for a in ("self_attn", "cross_attn") for p in "qkvo")
        targets = {m: (32, 32) for m in attn}
        targets |= {f"blocks.{i}.ffn.0": (64, 32), f"blocks.{i}.ffn.2": (32, 64)}
        for seed, (module, (out_f, in_f)) in enumerate(sorted(targets.items())):
            a, b = pair(out_f, in_f, seed + 100 * i)
            sd[f"{prefix}{module}.lora_A{default}.weight"] = a
            sd[f"{prefix}{module}.lora_B{default}.weight"] = b
    return sd


def test_pusa_merge_is_alpha_times_b_at_a_without_rank_division():
    model = fresh_model()
    before = model.blocks[1].attn2.to_out[0].weight.detach().clone()
    lora = pusa_lora()
    report = merge_pusa_lora(model, lora, alpha=1.4)
    a, b = (
        lora["blocks.1.cross_attn.o.lora_A.default.weight"],
        lora["blocks.1.cross_attn.o.lora_B.default.weight"],
    )
    assert report.merged == 2 * 10 and report.ranks == (RANK,) and report.ignored == {}
    assert torch.allclose(model.blocks[1].attn2.to_out[0].weight, before + 1.4 * (b @ a), atol=1e-5)


def test_pusa_merge_leaves_untargeted_weights_alone():
    model = fresh_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    merge_pusa_lora(model, pusa_lora())
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {
        k
        for k in before
        if k.endswith(".weight") and (".attn" in k or ".ffn." in k) and "norm" not in k
    }


@pytest.mark.parametrize("prefix", ["", "diffusion_model."])
@pytest.mark.parametrize("default", ["", ".default"])
def test_pusa_prefix_and_default_variants_merge_the_same(prefix, default):
    reference, model = fresh_model(), fresh_model()
    merge_pusa_lora(reference, pusa_lora())
    merge_pusa_lora(model, pusa_lora(prefix, default))
    assert same_weights(reference, model)


def test_pusa_lora_with_diffusers_names_merges_the_same():
    reference, model = fresh_model(), fresh_model()
    merge_pusa_lora(reference, pusa_lora())
    renamed = {
        k.replace("self_attn", "attn1")
        .replace("cross_attn", "attn2")
        .replace(".o.", ".to_out.0.")
        .replace(".q.", ".to_q.")
        .replace(".k.", ".to_k.")
        .replace(".v.", ".to_v.")
        .replace("ffn.0", "ffn.net.0.proj")
        .replace("ffn.2", "ffn.net.2"): v
        for k, v in pusa_lora(prefix="transformer.").items()
    }
    merge_pusa_lora(model, renamed)
    assert same_weights(reference, model)


def test_lora_for_a_wider_base_fails_naming_keys_and_changes_nothing():
    model = fresh_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lora = pusa_lora()
    lora["blocks.0.self_attn.q.lora_B.default.weight"] = torch.zeros(48, RANK)
    lora["blocks.7.self_attn.q.lora_A.default.weight"] = torch.zeros(RANK, 32)
    lora["blocks.7.self_attn.q.lora_B.default.weight"] = torch.zeros(32, RANK)
    with pytest.raises(CheckpointError, match="wrong base") as info:
        merge_pusa_lora(model, lora)
    assert "blocks.0.self_attn.q" in str(info.value) and "blocks.7.self_attn.q" in str(info.value)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_half_a_pusa_pair_is_refused():
    lora = pusa_lora()
    del lora["blocks.1.ffn.2.lora_B.default.weight"]
    with pytest.raises(CheckpointError, match="blocks.1.ffn.2"):
        merge_pusa_lora(fresh_model(), lora)


def lightx2v_lora(alpha: float | None) -> dict[str, torch.Tensor]:
    down, up = pair(32, 32, seed=7)
    sd = {
        "diffusion_model.blocks.0.self_attn.q.lora_down.weight": down,
        "diffusion_model.blocks.0.self_attn.q.lora_up.weight": up,
    }
    if alpha is not None:
        sd["diffusion_model.blocks.0.self_attn.q.alpha"] = torch.tensor(alpha)
    return sd


# Upstream (Pusa-VidGen 8a8c4f5, PusaV1/diffsynth/models/model_manager.py:474-487): the module's
# `.alpha` when the file has one (the strength is then unused), else the strength, over the rank.
@pytest.mark.parametrize(("alpha", "factor"), [(8.0, 8.0 / RANK), (None, 0.5 / RANK)])
def test_lightx2v_merge_scales_by_alpha_over_rank(alpha, factor):
    model = fresh_model()
    before = model.blocks[0].attn1.to_q.weight.detach().clone()
    lora = lightx2v_lora(alpha)
    report = merge_lightx2v_lora(model, lora, scale=0.5)
    down = lora["diffusion_model.blocks.0.self_attn.q.lora_down.weight"]
    up = lora["diffusion_model.blocks.0.self_attn.q.lora_up.weight"]
    expected = before + factor * (up @ down)
    assert torch.allclose(model.blocks[0].attn1.to_q.weight, expected, atol=1e-5)
    assert (report.alpha_from_file, report.alpha_from_strength) == (
        (1, 0) if alpha is not None else (0, 1)
    )


def test_lightx2v_without_alpha_at_strength_one_is_one_over_rank_not_one():
    model = fresh_model()
    before = model.blocks[0].attn1.to_q.weight.detach().clone()
    lora = lightx2v_lora(None)
    merge_lightx2v_lora(model, lora, scale=1.0)
    down = lora["diffusion_model.blocks.0.self_attn.q.lora_down.weight"]
    up = lora["diffusion_model.blocks.0.self_attn.q.lora_up.weight"]
    delta = model.blocks[0].attn1.to_q.weight - before
    assert torch.allclose(delta, (up @ down) / RANK, atol=1e-5)


@pytest.mark.parametrize(
    ("key", "shape", "part"),
    [
        ("diffusion_model.blocks.0.self_attn.q.diff", (32, 32), "diff"),
        ("diffusion_model.blocks.0.self_attn.q.diff_b", (32,), "diff_b"),
        ("diffusion_model.head.head.diff_b", None, "diff_b"),
        ("diffusion_model.blocks.1.diff_m", None, "diff_m"),
    ],
)
def test_lightx2v_diff_keys_are_ignored_as_upstream_and_recorded(key, shape, part):
    model = fresh_model()
    params = dict(model.named_parameters())
    if shape is None:  # the real target's shape: proj_out.bias, blocks.1.scale_shift_table
        target = "proj_out.bias" if "head" in key else "blocks.1.scale_shift_table"
        shape = tuple(params[target].shape)
    lora = lightx2v_lora(8.0) | {key: torch.ones(shape)}
    reference = fresh_model()
    merge_lightx2v_lora(reference, lightx2v_lora(8.0))
    report = merge_lightx2v_lora(model, lora)
    assert same_weights(reference, model)  # the diff added nothing
    assert report.ignored == {part: 1} and report.ignored_keys == (key,)
    assert report.merged == 1
    assert model.merged_weights.merges[-1]["ignored"] == {part: 1}


@pytest.mark.parametrize(
    "key",
    [
        "diffusion_model.blocks.0.self_attn.q.diff_b",  # the wrong size for to_q's bias
        "diffusion_model.blocks.0.diff_m",  # the wrong size for the block's modulation
        "diffusion_model.blocks.9.self_attn.q.diff",  # no such block
    ],
)
def test_diff_keys_that_fit_nothing_are_refused_by_name(key):
    model = fresh_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lora = lightx2v_lora(8.0) | {key: torch.ones(7)}
    with pytest.raises(CheckpointError, match=re.escape(key)):
        merge_lightx2v_lora(model, lora)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_a_diff_only_file_has_nothing_to_merge():
    model = fresh_model()
    diff = torch.linspace(-1, 1, model.proj_out.bias.numel())
    with pytest.raises(CheckpointError, match="holds no lightx2v LoRA weights"):
        merge_lightx2v_lora(model, {"diffusion_model.head.head.diff_b": diff}, scale=2.0)


def test_pusa_lora_alpha_keys_are_ignored_as_upstream():
    reference, model = fresh_model(), fresh_model()
    merge_pusa_lora(reference, pusa_lora(), alpha=1.4)
    lora = pusa_lora() | {"blocks.0.self_attn.q.alpha": torch.tensor(64.0)}
    report = merge_pusa_lora(model, lora, alpha=1.4)
    assert same_weights(reference, model)
    assert report.ignored == {"alpha": 1}


def test_each_kind_refuses_the_other_layout_naming_the_kind():
    with pytest.raises(CheckpointError, match='kind = "lightx2v"') as info:
        merge_pusa_lora(fresh_model(), lightx2v_lora(8.0))
    assert "blocks.0.self_attn.q.lora_down.weight" in str(info.value)
    with pytest.raises(CheckpointError, match='kind = "pusa"'):
        merge_lightx2v_lora(fresh_model(), pusa_lora())


def test_unknown_keys_are_refused_by_name_and_nothing_changes():
    model = fresh_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lora = lightx2v_lora(8.0) | {
        "diffusion_model.blocks.0.self_attn.q.lora_mid.weight": torch.ones(4)
    }
    with pytest.raises(CheckpointError, match=r"lora_mid\.weight \(not a LoRA key\)"):
        merge_lightx2v_lora(model, lora)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_half_a_lightx2v_pair_and_a_lone_alpha_are_refused():
    lora = lightx2v_lora(8.0)
    del lora["diffusion_model.blocks.0.self_attn.q.lora_up.weight"]
    with pytest.raises(CheckpointError, match="blocks.0.self_attn.q"):
        merge_lightx2v_lora(fresh_model(), lora)
    lone = lightx2v_lora(8.0) | {"diffusion_model.blocks.1.self_attn.k.alpha": torch.tensor(8.0)}
    with pytest.raises(CheckpointError, match="blocks.1.self_attn.k.alpha: an alpha with no"):
        merge_lightx2v_lora(fresh_model(), lone)


def test_lightx2v_unknown_module_is_named():
    lora = {"diffusion_model.blocks.0.self_attn.qq.lora_down.weight": torch.zeros(RANK, 32)}
    with pytest.raises(CheckpointError, match=r"self_attn\.qq"):
        merge_lightx2v_lora(fresh_model(), lora)


def test_merges_are_recorded_and_merge_loras_refuses_stale_weights(tmp_path):
    path = tmp_path / "pusa.safetensors"
    save_file(pusa_lora(), str(path))
    model = fresh_model()
    light = tmp_path / "lightx2v.safetensors"
    save_file(
        lightx2v_lora(None) | {"diffusion_model.head.head.diff_b": torch.ones(64)}, str(light)
    )
    refs = [LoraRef(str(path), "pusa", 1.4), LoraRef(str(light), "lightx2v", 1.0)]
    record = merge_loras(model, refs)
    assert record.loras == (
        f"pusa:{lora_identity(path, 1.4)}",
        f"lightx2v:{lora_identity(light, 1)}",
    )
    pusa, lightx2v = record.merges
    assert (pusa["lora"], pusa["merged"], pusa["ignored"]) == (record.loras[0], 20, {})
    assert lightx2v["merged"] == 1 and lightx2v["alpha_from_strength"] == 1
    assert lightx2v["ignored"] == {"diff_b": 1}
    assert lightx2v["ignored_keys"] == ["diffusion_model.head.head.diff_b"]
    with pytest.raises(PipelineError, match="reload the base"):
        merge_loras(model, [LoraRef(str(path), "pusa", 1.2)])


def test_lora_identity_depends_on_content_and_alpha(tmp_path):
    first, second = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_file(pusa_lora(), str(first))
    lora = pusa_lora()
    lora["blocks.0.ffn.0.lora_A.default.weight"] += 1
    save_file(lora, str(second))
    assert lora_identity(first, 1.4) != lora_identity(first, 1.2)
    assert lora_identity(first, 1.4) != lora_identity(second, 1.4)
    assert lora_identity(first, 1.4) == lora_identity(first, 1.4)


def test_read_lora_accepts_a_pt_file(tmp_path):
    path = tmp_path / "pusa_v1.pt"
    torch.save(pusa_lora(), path)
    model, reference = fresh_model(), fresh_model()
    merge_pusa_lora(model, read_lora(path))
    merge_pusa_lora(reference, pusa_lora())
    assert same_weights(reference, model)
