"""Pusa (PEFT) and LightX2V LoRA merges into the Wan transformer."""

from __future__ import annotations

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
    count = merge_pusa_lora(model, lora, alpha=1.4)
    a, b = (
        lora["blocks.1.cross_attn.o.lora_A.default.weight"],
        lora["blocks.1.cross_attn.o.lora_B.default.weight"],
    )
    assert count == 2 * 10
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


@pytest.mark.parametrize(("alpha", "factor"), [(8.0, 8.0 / RANK), (None, 1.0)])
def test_lightx2v_merge_scales_by_alpha_over_rank(alpha, factor):
    model = fresh_model()
    before = model.blocks[0].attn1.to_q.weight.detach().clone()
    lora = lightx2v_lora(alpha)
    merge_lightx2v_lora(model, lora, scale=0.5)
    down = lora["diffusion_model.blocks.0.self_attn.q.lora_down.weight"]
    up = lora["diffusion_model.blocks.0.self_attn.q.lora_up.weight"]
    expected = before + 0.5 * factor * (up @ down)
    assert torch.allclose(model.blocks[0].attn1.to_q.weight, expected, atol=1e-5)


def test_lightx2v_bias_diff_is_added():
    model = fresh_model()
    before = model.proj_out.bias.detach().clone()
    diff = torch.linspace(-1, 1, before.numel())
    merge_lightx2v_lora(model, {"diffusion_model.head.head.diff_b": diff}, scale=2.0)
    assert torch.allclose(model.proj_out.bias, before + 2.0 * diff)


def test_lightx2v_unknown_module_is_named():
    lora = {"diffusion_model.blocks.0.self_attn.qq.lora_down.weight": torch.zeros(RANK, 32)}
    with pytest.raises(CheckpointError, match=r"self_attn\.qq"):
        merge_lightx2v_lora(fresh_model(), lora)


def test_merges_are_recorded_and_merge_loras_refuses_stale_weights(tmp_path):
    path = tmp_path / "pusa.safetensors"
    save_file(pusa_lora(), str(path))
    model = fresh_model()
    record = merge_loras(model, [LoraRef(str(path), "pusa", 1.4)])
    assert record.loras == (f"pusa:{lora_identity(path, 1.4)}",)
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
