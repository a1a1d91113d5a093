"""Wan <-> diffusers key names, checked against diffusers' own single-file converter."""

from __future__ import annotations

import pytest
import torch
from diffusers import WanTransformer3DModel
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers
from model_support import diffusers_to_wan

from pusa_batch.errors import CheckpointError
from pusa_batch.models.wan_keys import (
    is_wan_format,
    wan_config_to_diffusers,
    wan_name_to_diffusers,
    wan_to_diffusers,
)

TINY = {
    "num_attention_heads": 2,
    "attention_head_dim": 16,
    "text_dim": 32,
    "freq_dim": 32,
    "ffn_dim": 64,
    "num_layers": 2,
}


@pytest.fixture(scope="module")
def diffusers_sd() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return WanTransformer3DModel(**TINY).state_dict()


def test_round_trip_is_the_identity_and_covers_every_key(diffusers_sd):
    wan = diffusers_to_wan(diffusers_sd)
    assert len(wan) == len(diffusers_sd)
    assert not any(k in diffusers_sd for k in wan if "attn" in k or "embedder" in k)
    back = wan_to_diffusers(wan)
    assert back.keys() == diffusers_sd.keys()
    assert all(back[k] is diffusers_sd[k] for k in back)


def test_wan_names_agree_with_diffusers_converter(diffusers_sd):
    wan = diffusers_to_wan(diffusers_sd)
    converted = convert_wan_transformer_to_diffusers(dict(wan))
    assert converted.keys() == diffusers_sd.keys()
    assert all(converted[k] is diffusers_sd[k] for k in converted)


@pytest.mark.parametrize(
    ("wan", "diffusers"),
    [
        ("blocks.3.self_attn.o.weight", "blocks.3.attn1.to_out.0.weight"),
        ("blocks.0.cross_attn.norm_k.weight", "blocks.0.attn2.norm_k.weight"),
        ("blocks.1.norm3.bias", "blocks.1.norm2.bias"),
        ("blocks.1.ffn.0.weight", "blocks.1.ffn.net.0.proj.weight"),
        ("blocks.12.modulation", "blocks.12.scale_shift_table"),
        ("head.modulation", "scale_shift_table"),
        ("head.head.bias", "proj_out.bias"),
        ("time_projection.1.weight", "condition_embedder.time_proj.weight"),
        ("text_embedding.2.bias", "condition_embedder.text_embedder.linear_2.bias"),
        ("blocks.2.cross_attn.v", "blocks.2.attn2.to_v"),  # a bare module path, as in LoRA files
    ],
)
def test_known_wan_names(wan, diffusers):
    assert wan_name_to_diffusers(wan) == diffusers


def test_prefixed_wan_checkpoint_is_stripped_and_detected(diffusers_sd):
    wan = {f"model.diffusion_model.{k}": v for k, v in diffusers_to_wan(diffusers_sd).items()}
    assert is_wan_format(wan)
    assert not is_wan_format(diffusers_sd)
    assert wan_to_diffusers(wan).keys() == diffusers_sd.keys()


def test_i2v_keys_are_refused_by_name(diffusers_sd):
    wan = diffusers_to_wan(diffusers_sd)
    wan["blocks.0.cross_attn.k_img.weight"] = torch.zeros(1)
    wan["img_emb.proj.0.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"k_img.*img_emb|img_emb.*k_img"):
        wan_to_diffusers(wan, source="wan_dir")


def test_wan_config_becomes_the_diffusers_config():
    wan = {
        "_class_name": "WanModel",
        "dim": 5120,
        "eps": 1e-06,
        "ffn_dim": 13824,
        "freq_dim": 256,
        "in_dim": 16,
        "model_type": "t2v",
        "num_heads": 40,
        "num_layers": 40,
        "out_dim": 16,
        "text_len": 512,
    }
    cfg = wan_config_to_diffusers(wan)
    assert cfg["num_attention_heads"] == 40 and cfg["attention_head_dim"] == 128
    assert cfg["in_channels"] == cfg["out_channels"] == 16
    assert cfg["text_dim"] == 4096 and cfg["patch_size"] == [1, 2, 2]


def test_i2v_wan_config_is_refused():
    with pytest.raises(CheckpointError, match="T2V"):
        wan_config_to_diffusers({"model_type": "i2v", "dim": 64, "num_heads": 4})
