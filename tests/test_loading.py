"""Reading transformer weights: diffusers dirs, sharded indexes, original Wan dirs, strictness."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import WanTransformer3DModel
from model_support import diffusers_to_wan, inspect_safetensors
from safetensors.torch import save_file

from pusa_batch.errors import CheckpointError
from pusa_batch.models.loading import (
    load_wan_transformer,
    read_state_dict,
)

TINY = {
    "num_attention_heads": 2,
    "attention_head_dim": 16,
    "text_dim": 32,
    "freq_dim": 32,
    "ffn_dim": 64,
    "num_layers": 2,
}
WAN_CONFIG = {
    "_class_name": "WanModel",
    "dim": 32,
    "eps": 1e-06,
    "ffn_dim": 64,
    "freq_dim": 32,
    "in_dim": 16,
    "model_type": "t2v",
    "num_heads": 2,
    "num_layers": 2,
    "out_dim": 16,
    "text_dim": 32,
    "text_len": 512,
}


@pytest.fixture(scope="module")
def reference() -> WanTransformer3DModel:
    torch.manual_seed(0)
    return WanTransformer3DModel(**TINY).eval()


@pytest.fixture(scope="module")
def diffusers_dir(reference, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("diffusers") / "transformer"
    reference.save_pretrained(path)
    return path


def write_wan_dir(folder: Path, state_dict: dict[str, torch.Tensor], shards: int = 3) -> Path:
    """The original Wan layout: Wan config.json and numbered shards with Wan key names, no index."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(WAN_CONFIG))
    wan = diffusers_to_wan(state_dict)
    keys = sorted(wan)
    for i in range(shards):
        part = {k: wan[k].contiguous() for k in keys[i::shards]}
        save_file(
            part, str(folder / f"diffusion_pytorch_model-{i + 1:05d}-of-{shards:05d}.safetensors")
        )
    (folder / "models_t5_umt5-xxl-enc-bf16.pth").write_bytes(b"not a transformer")
    return folder


def outputs_match(model, reference) -> bool:
    gen = torch.Generator().manual_seed(3)
    x, ctx = torch.randn(1, 16, 2, 4, 4, generator=gen), torch.randn(1, 5, 32, generator=gen)
    t = torch.tensor([400.0])
    with torch.no_grad():
        expected = reference(x, t, ctx, return_dict=False)[0]
        return (model(x, t, ctx) - expected).abs().max().item() <= 1e-5


def test_diffusers_transformer_dir_loads_and_matches(diffusers_dir, reference):
    model = load_wan_transformer(diffusers_dir)
    assert outputs_match(model, reference)
    assert not any(p.requires_grad for p in model.parameters())
    assert model.merged_weights.fresh and model.merged_weights.base


def test_sharded_checkpoint_with_index_loads(reference, tmp_path):
    reference.save_pretrained(tmp_path, max_shard_size="20KB")
    assert len(list(tmp_path.glob("*.safetensors"))) > 1
    assert outputs_match(load_wan_transformer(tmp_path), reference)


def test_original_wan_dir_without_index_loads(reference, tmp_path):
    folder = write_wan_dir(tmp_path / "Wan2.1-T2V-tiny", reference.state_dict())
    assert outputs_match(load_wan_transformer(folder), reference)


def test_missing_shard_is_named(reference, tmp_path):
    folder = write_wan_dir(tmp_path / "wan", reference.state_dict())
    (folder / "diffusion_pytorch_model-00002-of-00003.safetensors").unlink()
    with pytest.raises(CheckpointError, match="00002-of-00003"):
        read_state_dict(folder)


def test_missing_and_unexpected_keys_are_named_with_the_folder(reference, tmp_path):
    sd = dict(reference.state_dict())
    del sd["blocks.1.attn2.to_k.weight"]
    sd["blocks.1.attn2.add_k_proj.weight"] = torch.zeros(32, 32)
    tmp_path.joinpath("config.json").write_text(json.dumps(dict(reference.config)))
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError) as info:
        load_wan_transformer(tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message
    assert "missing key(s): blocks.1.attn2.to_k.weight" in message
    assert "unexpected key(s): blocks.1.attn2.add_k_proj.weight" in message


def test_shape_mismatch_is_named(reference, tmp_path):
    config = {**dict(reference.config), "ffn_dim": 96}
    tmp_path.joinpath("config.json").write_text(json.dumps(config))
    save_file(
        {k: v.contiguous() for k, v in reference.state_dict().items()},
        str(tmp_path / "model.safetensors"),
    )
    with pytest.raises(CheckpointError, match=r"blocks\.0\.ffn\.net\.0\.proj\.weight \(64, 32\)"):
        load_wan_transformer(tmp_path)


def test_pt_file_is_read_with_weights_only(tmp_path):
    path = tmp_path / "lora.pt"
    torch.save({"a.weight": torch.ones(2, 3)}, path)
    assert read_state_dict(path)["a.weight"].shape == (2, 3)


class NotATensor:
    pass


def test_pt_file_with_arbitrary_objects_is_refused(tmp_path):
    path = tmp_path / "pickled.pt"
    torch.save({"a": NotATensor()}, path)
    with pytest.raises(CheckpointError, match="weights_only"):
        read_state_dict(path)


def test_inspect_reads_headers_without_tensor_data(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"x": torch.zeros(4, 5, dtype=torch.bfloat16), "y": torch.zeros(3)}, str(path))
    header_len = 8 + int.from_bytes(path.read_bytes()[:8], "little")
    path.write_bytes(
        path.read_bytes()[:header_len]
    )  # drop the data: a header-only read still works
    assert inspect_safetensors(path) == {"x": ("BF16", (4, 5)), "y": ("F32", (3,))}


def test_not_a_safetensors_file_is_refused(tmp_path):
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"\xff" * 16)
    with pytest.raises(CheckpointError, match="w.safetensors"):
        inspect_safetensors(path)


def test_missing_path_names_itself(tmp_path):
    with pytest.raises(CheckpointError, match="nowhere"):
        read_state_dict(tmp_path / "nowhere")
