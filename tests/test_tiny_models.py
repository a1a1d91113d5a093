"""Tiny Wan twins: the real on-disk layout, loadable by diffusers/transformers and by our loader."""

from __future__ import annotations

import hashlib
import inspect
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import AutoTokenizer, UMT5EncoderModel

from pusa_batch.errors import PipelineError
from pusa_batch.models.loading import load_wan_transformer
from pusa_batch.models.tiny import TINY_VERSION, ensure_tiny_model, make_tiny_model

WAN21_FILES = {
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "tokenizer/tokenizer.json",
    "tokenizer/tokenizer_config.json",
    "transformer/config.json",
    "transformer/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
}
WAN22_FILES = WAN21_FILES | {
    "transformer_2/config.json",
    "transformer_2/diffusion_pytorch_model.safetensors",
}


@pytest.fixture(scope="module")
def tiny21(tmp_path_factory) -> Path:
    return make_tiny_model("wan2.1", tmp_path_factory.mktemp("tiny") / "wan2.1")


@pytest.fixture(scope="module")
def tiny22(tmp_path_factory) -> Path:
    return make_tiny_model("wan2.2", tmp_path_factory.mktemp("tiny") / "wan2.2")


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def digests(root: Path) -> dict[str, str]:
    return {
        name: hashlib.sha256((root / name).read_bytes()).hexdigest() for name in files_under(root)
    }


def test_wan21_twin_has_the_diffusers_file_layout(tiny21):
    assert files_under(tiny21) == WAN21_FILES


def test_wan22_twin_adds_the_low_noise_expert_and_boundary(tiny22):
    assert files_under(tiny22) == WAN22_FILES
    index = json.loads((tiny22 / "model_index.json").read_text())
    assert index["transformer_2"] == ["diffusers", "WanTransformer3DModel"]
    assert index["boundary_ratio"] == 0.875


def test_model_index_names_the_real_wan_classes(tiny21):
    index = json.loads((tiny21 / "model_index.json").read_text())
    assert index["_class_name"] == "WanPipeline"
    assert index["transformer"] == ["diffusers", "WanTransformer3DModel"]
    assert index["vae"] == ["diffusers", "AutoencoderKLWan"]
    assert index["text_encoder"] == ["transformers", "UMT5EncoderModel"]


def test_transformer_config_has_exactly_the_diffusers_keys(tiny21):
    config = json.loads((tiny21 / "transformer/config.json").read_text())
    params = set(inspect.signature(WanTransformer3DModel.__init__).parameters) - {"self"}
    assert {k for k in config if not k.startswith("_")} == params
    assert config["_class_name"] == "WanTransformer3DModel"


def test_transformer_weights_have_diffusers_key_names_and_shapes(tiny21):
    config = WanTransformer3DModel.load_config(tiny21 / "transformer")
    reference = WanTransformer3DModel.from_config(config).state_dict()
    path = tiny21 / "transformer/diffusion_pytorch_model.safetensors"
    with safe_open(str(path), "pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    assert shapes == {k: tuple(v.shape) for k, v in reference.items()}


def test_transformer_loads_strictly_into_diffusers_class(tiny21):
    config = WanTransformer3DModel.load_config(tiny21 / "transformer")
    model = WanTransformer3DModel.from_config(config)
    sd = load_file(tiny21 / "transformer/diffusion_pytorch_model.safetensors")
    result = model.load_state_dict(sd, strict=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_transformer_loads_with_our_loader_and_runs_per_frame_timesteps(tiny21):
    model = load_wan_transformer(tiny21 / "transformer")
    x = torch.randn(1, 16, 5, 8, 8)
    out = model(x, torch.tensor([[1000.0, 0.0, 500.0, 500.0, 250.0]]), torch.zeros(1, 8, 32))
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_vae_has_wan_latent_space_and_compression(tiny21):
    vae = AutoencoderKLWan.from_pretrained(tiny21 / "vae")
    cfg = vae.config
    assert cfg.z_dim == 16
    assert (cfg.scale_factor_temporal, cfg.scale_factor_spatial) == (4, 8)
    assert len(cfg.latents_mean) == 16 and len(cfg.latents_std) == 16
    with torch.no_grad():
        latent = vae.encode(torch.zeros(1, 3, 9, 32, 48)).latent_dist.mode()
    assert latent.shape == (1, 16, 3, 4, 6)


def test_text_encoder_and_tokenizer_load_with_transformers_auto_classes(tiny21):
    tokenizer = AutoTokenizer.from_pretrained(tiny21 / "tokenizer")
    encoder = UMT5EncoderModel.from_pretrained(tiny21 / "text_encoder")
    assert len(tokenizer) == encoder.config.vocab_size
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id) == (0, 1)
    tokens = tokenizer("A cat walking on the beach", return_tensors="pt")
    assert tokens.input_ids[0, -1].item() == tokenizer.eos_token_id
    assert tokenizer.unk_token_id not in tokens.input_ids[0].tolist()
    hidden = encoder(**tokens).last_hidden_state
    assert hidden.shape == (1, tokens.input_ids.shape[1], 32)


def test_unknown_characters_become_unk(tiny21):
    tokenizer = AutoTokenizer.from_pretrained(tiny21 / "tokenizer")
    assert tokenizer.unk_token_id in tokenizer("日本").input_ids


def test_same_kind_gives_the_same_bytes(tiny21, tmp_path):
    again = make_tiny_model("wan2.1", tmp_path / "again")
    assert digests(again) == digests(tiny21)


def test_building_leaves_the_global_rng_alone(tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    make_tiny_model("wan2.1", tmp_path / "m")
    assert torch.equal(torch.rand(3), expected)


def test_unknown_kind_is_a_pipeline_error(tmp_path):
    with pytest.raises(PipelineError, match="wan2.1, wan2.2"):
        make_tiny_model("wan3", tmp_path / "x")


def test_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(PipelineError, match="not empty"):
        make_tiny_model("wan2.1", tmp_path)


def test_ensure_builds_once_into_the_versioned_cache(tmp_path):
    first = ensure_tiny_model("wan2.1", tmp_path)
    assert first == tmp_path / f"wan2.1-{TINY_VERSION}"
    stamp = (first / "model_index.json").stat().st_mtime_ns
    assert ensure_tiny_model("wan2.1", tmp_path) == first
    assert (first / "model_index.json").stat().st_mtime_ns == stamp


def test_ensure_reads_the_cache_root_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("PUSA_BATCH_CACHE", str(tmp_path / "cache"))
    assert ensure_tiny_model("wan2.1") == tmp_path / "cache" / "tiny" / f"wan2.1-{TINY_VERSION}"


def test_concurrent_callers_agree_on_one_complete_copy(tmp_path, tiny21):
    # Threads race through the same build-in-a-temp-folder-then-rename path that processes do.
    start = threading.Barrier(3)

    def build() -> Path:
        start.wait()
        return ensure_tiny_model("wan2.1", tmp_path)

    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda _: build(), range(3)))
    target = tmp_path / f"wan2.1-{TINY_VERSION}"
    assert results == [target] * 3
    assert [p.name for p in tmp_path.iterdir()] == [target.name]
    assert digests(target) == digests(tiny21)
