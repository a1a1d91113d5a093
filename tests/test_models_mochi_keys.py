"""genmo <-> diffusers key conversion for the Mochi DiT, and strict loading of pusa_v0_dit."""

import json

import pytest
import torch
from diffusers import MochiTransformer3DModel
from safetensors.torch import save_file

from pusa_batch.errors import CheckpointError
from pusa_batch.models.mochi import CHECKPOINT_NAME, MochiConfig, load_mochi_transformer
from pusa_batch.models.mochi_keys import diffusers_to_genmo, genmo_to_diffusers, swap_halves
from pusa_batch.models.tiny_mochi import TINY_CONFIG, make_tiny_mochi_dit


@pytest.fixture(scope="module")
def genmo_state() -> dict:
    return make_tiny_mochi_dit(seed=3).state_dict()


def test_round_trip_restores_every_key_and_tensor(genmo_state):
    back = diffusers_to_genmo(genmo_to_diffusers(genmo_state))
    assert set(back) == set(genmo_state)
    assert all(torch.equal(back[k], genmo_state[k]) for k in genmo_state)


def test_full_size_conversion_gives_exactly_diffusers_keys_and_shapes():
    with torch.device("meta"):
        from pusa_batch.models.mochi import PusaMochiTransformer

        ours = PusaMochiTransformer(MochiConfig()).state_dict()
        theirs = MochiTransformer3DModel().state_dict()
    converted = genmo_to_diffusers(ours)
    assert set(converted) == set(theirs)
    assert all(converted[k].shape == theirs[k].shape for k in theirs)


def test_fused_qkv_splits_in_q_k_v_order(genmo_state):
    converted = genmo_to_diffusers(genmo_state)
    qkv = genmo_state["blocks.0.attn.qkv_y.weight"]
    parts = [converted[f"transformer_blocks.0.attn1.add_{p}_proj.weight"] for p in "qkv"]
    assert torch.equal(torch.cat(parts), qkv)


def test_swiglu_and_final_modulation_halves_are_swapped(genmo_state):
    converted = genmo_to_diffusers(genmo_state)
    w1 = genmo_state["blocks.1.mlp_x.w1.weight"]
    assert torch.equal(converted["transformer_blocks.1.ff.net.0.proj.weight"], swap_halves(w1))
    shift, scale = genmo_state["final_layer.mod.bias"].chunk(2)
    assert torch.equal(converted["norm_out.linear.bias"], torch.cat([scale, shift]))


def test_last_block_text_modulation_maps_to_the_continuous_norm(genmo_state):
    converted = genmo_to_diffusers(genmo_state)
    assert "transformer_blocks.1.norm1_context.linear_1.weight" in converted
    assert "transformer_blocks.0.norm1_context.linear.weight" in converted


def test_unknown_key_is_named(genmo_state):
    with pytest.raises(CheckpointError, match="blocks.0.attn.lora_A.weight"):
        genmo_to_diffusers({**genmo_state, "blocks.0.attn.lora_A.weight": torch.zeros(1)})


def write_checkpoint(directory, state, config: MochiConfig | None = TINY_CONFIG):
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(directory / CHECKPOINT_NAME))
    if config is not None:
        (directory / "config.json").write_text(json.dumps(config.to_dict()))
    return directory / CHECKPOINT_NAME


def test_loads_tiny_checkpoint_with_its_config(tmp_path, genmo_state):
    path = write_checkpoint(tmp_path, genmo_state)
    model = load_mochi_transformer(path, dtype=torch.float32, device="cpu")
    assert model.config == TINY_CONFIG
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], genmo_state[k]) for k in genmo_state)


def test_loads_from_the_directory_in_bfloat16_keeping_rope_frequencies_fp32(tmp_path, genmo_state):
    write_checkpoint(tmp_path, genmo_state)
    model = load_mochi_transformer(tmp_path, dtype=torch.bfloat16)
    assert model.blocks[0].mod_x.weight.dtype == torch.bfloat16
    assert model.pos_frequencies.dtype == torch.float32


def test_missing_and_unexpected_keys_are_named(tmp_path, genmo_state):
    state = dict(genmo_state)
    del state["blocks.1.attn.qkv_y.weight"]
    state["blocks.1.attn.proj_y.weight"] = torch.zeros(96, 192)
    path = write_checkpoint(tmp_path, state)
    with pytest.raises(CheckpointError) as err:
        load_mochi_transformer(path)
    assert "missing: blocks.1.attn.qkv_y.weight" in str(err.value)
    assert "unexpected: blocks.1.attn.proj_y.weight" in str(err.value)


def test_without_config_json_the_10b_defaults_apply(tmp_path, genmo_state):
    path = write_checkpoint(tmp_path, genmo_state, config=None)
    with pytest.raises(CheckpointError, match=r"10B defaults.*missing: .*blocks\.10\.attn"):
        load_mochi_transformer(path)


def test_unknown_config_key_is_named(tmp_path, genmo_state):
    path = write_checkpoint(tmp_path, genmo_state)
    (tmp_path / "config.json").write_text(json.dumps({**TINY_CONFIG.to_dict(), "depht": 3}))
    with pytest.raises(CheckpointError, match="depht"):
        load_mochi_transformer(path)


def test_missing_checkpoint_names_the_file(tmp_path):
    with pytest.raises(CheckpointError, match=CHECKPOINT_NAME):
        load_mochi_transformer(tmp_path)
