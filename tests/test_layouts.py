"""Original checkpoint layouts: detection from a root's files, the key maps (checked against the
names diffusers' conversion scripts use), configs read off shapes, and strict reading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKLMochi, AutoencoderKLWan
from safetensors.torch import save_file

from pusa_batch.errors import CheckpointError, PipelineError
from pusa_batch.models.layouts import (
    MOCHI_VAE_FILES,
    WAN_T5_FILE,
    WAN_TOKENIZER_DIR,
    WAN_VAE_FILE,
    component_problems,
    detect_layout,
    root_components,
)
from pusa_batch.models.loading import read_header, read_state_dict
from pusa_batch.models.original_mochi import (
    diffusers_to_genmo_vae,
    genmo_vae_config,
    genmo_vae_names,
)
from pusa_batch.models.original_wan import (
    load_umt5_file,
    load_wan_vae_file,
    umt5_config,
    umt5_name,
    umt5_original_names,
    wan_vae_config,
    wan_vae_names,
)
from pusa_batch.models.wan_keys import wan_config_from_shapes
from pusa_batch.pipelines.spec import load_pipeline_spec

PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"


def meta(cls, **config):
    with torch.device("meta"):
        return cls(**config)


# ------------------------------------------------------------------------------ Wan VAE


@pytest.fixture(scope="module")
def wan_vae_map() -> dict[str, str]:
    """{diffusers key: original key} for the real Wan2.1 VAE (AutoencoderKLWan's defaults)."""
    return wan_vae_names(meta(AutoencoderKLWan))


@pytest.mark.parametrize(
    ("original", "diffusers"),
    [
        # diffusers scripts/convert_wan_to_diffusers.py convert_vae: the explicit tables ...
        ("encoder.middle.0.residual.0.gamma", "encoder.mid_block.resnets.0.norm1.gamma"),
        ("decoder.middle.2.residual.6.weight", "decoder.mid_block.resnets.1.conv2.weight"),
        ("encoder.middle.1.to_qkv.weight", "encoder.mid_block.attentions.0.to_qkv.weight"),
        ("decoder.head.0.gamma", "decoder.norm_out.gamma"),
        ("encoder.head.2.weight", "encoder.conv_out.weight"),
        ("conv1.bias", "quant_conv.bias"),
        ("conv2.weight", "post_quant_conv.weight"),
        ("encoder.conv1.weight", "encoder.conv_in.weight"),
        # ... and its rules for the encoder's flat list and the decoder's grouped one
        ("encoder.downsamples.2.resample.1.weight", "encoder.down_blocks.2.resample.1.weight"),
        ("encoder.downsamples.5.time_conv.bias", "encoder.down_blocks.5.time_conv.bias"),
        ("encoder.downsamples.3.shortcut.weight", "encoder.down_blocks.3.conv_shortcut.weight"),
        ("decoder.upsamples.9.residual.3.gamma", "decoder.up_blocks.2.resnets.1.norm2.gamma"),
        ("decoder.upsamples.4.shortcut.bias", "decoder.up_blocks.1.resnets.0.conv_shortcut.bias"),
        (
            "decoder.upsamples.3.resample.1.weight",
            "decoder.up_blocks.0.upsamplers.0.resample.1.weight",
        ),
        (
            "decoder.upsamples.7.time_conv.weight",
            "decoder.up_blocks.1.upsamplers.0.time_conv.weight",
        ),
        ("decoder.upsamples.14.residual.6.bias", "decoder.up_blocks.3.resnets.2.conv2.bias"),
    ],
)
def test_the_wan_vae_map_gives_the_names_diffusers_conversion_uses(
    wan_vae_map, original, diffusers
):
    assert wan_vae_map[diffusers] == original


def test_the_wan_vae_map_is_one_to_one_and_reads_the_real_config_back(wan_vae_map):
    assert len(set(wan_vae_map.values())) == len(wan_vae_map) == 194
    vae = meta(AutoencoderKLWan)
    shapes = {wan_vae_map[k]: tuple(v.shape) for k, v in vae.state_dict().items()}
    assert wan_vae_config(shapes) == {
        "base_dim": 96,
        "z_dim": 16,
        "dim_mult": [1, 2, 4, 4],
        "num_res_blocks": 2,
        "attn_scales": [],
        "temperal_downsample": [False, True, True],
    }


def small_wan_vae() -> AutoencoderKLWan:
    torch.manual_seed(0)
    config = {"base_dim": 8, "dim_mult": [1, 2, 2, 2], "num_res_blocks": 1}
    return AutoencoderKLWan(**config, temperal_downsample=[False, True, True]).eval()


def original_vae_state(vae) -> dict[str, torch.Tensor]:
    names = wan_vae_names(vae)
    return {names[k]: v.clone() for k, v in vae.state_dict().items()}


def test_a_pth_vae_loads_with_the_same_weights(tmp_path):
    vae = small_wan_vae()
    torch.save(original_vae_state(vae), tmp_path / WAN_VAE_FILE)
    loaded = load_wan_vae_file(tmp_path / WAN_VAE_FILE)
    assert loaded.config.num_res_blocks == 1 and list(loaded.config.dim_mult) == [1, 2, 2, 2]
    want = vae.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in loaded.state_dict().items())


def test_a_pth_vae_with_an_unknown_or_a_missing_key_is_refused_naming_it(tmp_path):
    state = original_vae_state(small_wan_vae())
    state["decoder.extra.weight"] = torch.zeros(1)
    del state["decoder.head.2.bias"]
    torch.save(state, tmp_path / "v.pth")
    with pytest.raises(CheckpointError) as e:
        load_wan_vae_file(tmp_path / "v.pth")
    assert "decoder.extra.weight" in str(e.value) and "decoder.conv_out.bias" in str(e.value)
    assert "missing" in str(e.value) and "unexpected" in str(e.value)


class NotATensor:
    pass


def test_a_pth_is_read_with_weights_only(tmp_path):
    torch.save({"encoder.conv1.weight": NotATensor()}, tmp_path / "v.pth")
    with pytest.raises(CheckpointError, match=r"weights_only=True"):
        read_state_dict(tmp_path / "v.pth")


def test_a_pth_header_is_read_without_its_tensor_data(tmp_path, monkeypatch):
    torch.save({"w": torch.ones(3, 2, dtype=torch.bfloat16)}, tmp_path / "v.pth")
    calls = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    assert read_header(tmp_path / "v.pth") == {"w": ("BF16", (3, 2))}
    assert calls == [{"map_location": "cpu", "weights_only": True, "mmap": True}]


# ----------------------------------------------------------------------------------- umT5


def test_the_umt5_map_covers_umt5_xxl():
    names = umt5_original_names(24)  # umt5_xxl: 24 encoder layers (Wan t5.py 456-467)
    assert len(names) == 2 + 24 * 10
    assert names["shared.weight"] == "token_embedding.weight"
    assert (
        names["encoder.block.3.layer.1.DenseReluDense.wi_0.weight"] == "blocks.3.ffn.gate.0.weight"
    )
    assert names["encoder.block.3.layer.1.DenseReluDense.wi_1.weight"] == "blocks.3.ffn.fc1.weight"
    bias = "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
    assert names[bias] == "blocks.0.pos_embedding.embedding.weight"
    assert umt5_name("blocks.0.attn.x.weight") is None and umt5_name("head.weight") is None


def test_the_umt5_config_of_the_real_shapes_is_umt5_xxl():
    shapes = {
        "token_embedding.weight": (256384, 4096),
        "blocks.0.attn.q.weight": (4096, 4096),
        "blocks.0.pos_embedding.embedding.weight": (32, 64),
        "blocks.0.ffn.fc1.weight": (10240, 4096),
        "blocks.23.norm1.weight": (4096,),
    }
    c = umt5_config(shapes)
    assert (c.vocab_size, c.d_model, c.d_kv, c.num_heads, c.d_ff, c.num_layers) == (
        256384, 4096, 64, 64, 10240, 24,
    )  # fmt: skip
    assert (c.relative_attention_max_distance, c.layer_norm_epsilon, c.dense_act_fn) == (
        128, 1e-6, "gelu_new",
    )  # fmt: skip


def small_umt5_state() -> dict[str, torch.Tensor]:
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(0)
    config = UMT5Config(vocab_size=40, d_model=16, d_kv=4, d_ff=32, num_layers=2, num_heads=4)
    model = UMT5EncoderModel(config).eval()
    names = umt5_original_names(2)
    state = model.state_dict()
    return {old: state[new].clone() for new, old in names.items()}


def test_a_pth_umt5_loads_strictly_and_ties_its_embedding(tmp_path):
    state = small_umt5_state()
    torch.save(state, tmp_path / WAN_T5_FILE)
    model = load_umt5_file(tmp_path / WAN_T5_FILE)
    assert model.encoder.embed_tokens.weight.data_ptr() == model.shared.weight.data_ptr()
    assert torch.equal(model.shared.weight, state["token_embedding.weight"])
    state["blocks.0.attn.x.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=r"unexpected key\(s\): blocks\.0\.attn\.x\.weight"):
        load_umt5_file(tmp_path / "bad.pth")


# -------------------------------------------------------------------------- single-file DiT


def test_a_14b_dit_config_is_read_off_its_shapes():
    shapes = {
        "patch_embedding.weight": (5120, 16, 1, 2, 2),
        "blocks.0.ffn.0.weight": (13824, 5120),
        "blocks.39.norm3.weight": (5120,),
        "text_embedding.0.weight": (5120, 4096),
        "time_embedding.0.weight": (5120, 256),
        "head.head.weight": (64, 5120),
    }
    c = wan_config_from_shapes(shapes)
    assert (c["dim"], c["num_heads"], c["num_layers"], c["ffn_dim"], c["out_dim"]) == (
        5120, 40, 40, 13824, 16,
    )  # fmt: skip
    with pytest.raises(CheckpointError, match="config.json"):
        wan_config_from_shapes({**shapes, "patch_embedding.weight": (100, 16, 1, 2, 2)})


# -------------------------------------------------------------------------------- Mochi VAE


@pytest.fixture(scope="module")
def mochi_vae_map() -> dict[str, tuple[str, str, int | None]]:
    return genmo_vae_names(meta(AutoencoderKLMochi))


@pytest.mark.parametrize(
    ("side", "genmo", "part", "diffusers"),
    [
        # diffusers scripts/convert_mochi_to_diffusers.py, convert_mochi_vae_state_dict_to_diffusers
        ("decoder", "blocks.0.0.weight", None, "conv_in.weight"),
        ("decoder", "blocks.0.3.stack.5.bias", None, "block_in.resnets.2.conv2.conv.bias"),
        ("decoder", "blocks.1.blocks.5.stack.0.weight", None, "up_blocks.0.resnets.5.norm1.norm_layer.weight"),  # noqa: E501
        ("decoder", "blocks.3.proj.bias", None, "up_blocks.2.proj.bias"),
        ("decoder", "blocks.4.2.stack.3.weight", None, "block_out.resnets.2.norm2.norm_layer.weight"),  # noqa: E501
        ("decoder", "output_proj.weight", None, "proj_out.weight"),
        ("encoder", "layers.0.bias", None, "proj_in.bias"),
        ("encoder", "layers.2.stack.2.weight", None, "block_in.resnets.1.conv1.conv.weight"),
        ("encoder", "layers.5.layers.0.weight", None, "down_blocks.1.conv_in.conv.weight"),
        ("encoder", "layers.6.layers.6.attn_block.attn.qkv.weight", 1, "down_blocks.2.attentions.5.to_k.weight"),  # noqa: E501
        ("encoder", "layers.4.layers.1.attn_block.norm.bias", None, "down_blocks.0.norms.0.norm_layer.bias"),  # noqa: E501
        ("encoder", "layers.9.attn_block.attn.out.bias", None, "block_out.attentions.2.to_out.0.bias"),  # noqa: E501
        ("encoder", "output_norm.weight", None, "norm_out.norm_layer.weight"),
        ("encoder", "output_proj.weight", None, "proj_out.weight"),
    ],
)  # fmt: skip
def test_the_mochi_vae_map_gives_the_names_diffusers_conversion_uses(
    mochi_vae_map, side, genmo, part, diffusers
):
    assert mochi_vae_map[f"{side}.{diffusers}"] == (f"{side}.safetensors", genmo, part)


def test_the_real_mochi_vae_config_is_read_back_off_genmo_shapes():
    vae = meta(AutoencoderKLMochi)
    halves = {name: {} for name in MOCHI_VAE_FILES}
    state = vae.state_dict()
    for new, (file, key, part) in genmo_vae_names(vae).items():
        shape = tuple(state[new].shape)
        halves[file][key] = shape if part is None else (3 * shape[0], *shape[1:])
    config = genmo_vae_config(*(halves[name] for name in MOCHI_VAE_FILES))
    defaults = dict(vae.config)
    assert {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()} == {
        k: tuple(defaults[k]) if isinstance(defaults[k], list) else defaults[k] for k in config
    }


def test_genmo_halves_round_trip_with_the_fused_qkv(tmp_path):
    torch.manual_seed(0)
    vae = AutoencoderKLMochi(
        encoder_block_out_channels=(32, 32, 32, 64),
        decoder_block_out_channels=(32, 32, 32, 64),
        layers_per_block=(1, 1, 2, 1, 1),
        add_attention_block=(False, True, False, True, True),
    ).eval()
    for name, state in diffusers_to_genmo_vae(vae).items():
        save_file(state, str(tmp_path / name))
    encoder = read_header(tmp_path / "encoder.safetensors")
    assert "layers.2.layers.1.attn_block.attn.qkv.weight" in encoder  # down block 0 attends
    assert "layers.3.layers.1.attn_block.norm.weight" not in encoder  # down block 1 does not
    from pusa_batch.models.original_mochi import load_genmo_vae

    loaded = load_genmo_vae(tmp_path)
    assert loaded.config.layers_per_block == (1, 1, 2, 1, 1)
    assert loaded.config.add_attention_block == (False, True, False, True, True)
    want = vae.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in loaded.state_dict().items())
    (tmp_path / "decoder.safetensors").unlink()
    assert component_problems("mochi", "vae", tmp_path) == [
        f"{tmp_path}: decoder.safetensors missing (genmo's VAE)"
    ]


# ------------------------------------------------------------------------ layout detection


def touch(path: Path, text: str = "x") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_a_root_shows_its_layout(tmp_path):
    wan = tmp_path / "wan"
    assert detect_layout(wan, "wan2.1") is None  # missing
    touch(wan / WAN_VAE_FILE)
    assert detect_layout(wan, "wan2.1") == "original"
    touch(wan / "transformer" / "config.json")
    assert detect_layout(wan, "wan2.1") == "diffusers"  # both: the -Diffusers copy wins
    only_config = tmp_path / "cfg"
    touch(only_config / "config.json", json.dumps({"dim": 64, "num_heads": 4}))
    assert detect_layout(only_config, "wan2.1") == "original"
    mochi = tmp_path / "mochi"
    touch(mochi / "decoder.safetensors")
    assert detect_layout(mochi, "mochi") == "original"
    touch(mochi / "vae" / "config.json")
    assert detect_layout(mochi, "mochi") == "diffusers"


def test_original_components_sit_where_wan_ai_and_genmo_put_them(tmp_path):
    r = tmp_path
    assert root_components(r, "wan2.1", "original") == {
        "transformer": r,
        "vae": r / WAN_VAE_FILE,
        "text_encoder": r / WAN_T5_FILE,
        "tokenizer": r / WAN_TOKENIZER_DIR,
    }
    wan22 = root_components(r, "wan2.2", "original")
    assert (wan22["transformer"], wan22["transformer_2"]) == (
        r / "high_noise_model",
        r / "low_noise_model",
    )
    mochi = root_components(r, "mochi", "original")
    assert (mochi["dit"], mochi["vae"]) == (r / "pusa_v0_dit.safetensors", r)
    touch(r / "dit.safetensors")  # genmo/mochi-1-preview's own DiT, when Pusa's is absent
    assert root_components(r, "mochi", "original")["dit"] == r / "dit.safetensors"


def write_spec(folder: Path, weights: str, family: str = "wan2.1") -> Path:
    path = folder / "p.toml"
    path.write_text(f'family = "{family}"\n[weights]\n{weights}\n')
    return path


def test_the_spec_reads_the_detected_layout_and_falls_back_to_the_declared_one(tmp_path):
    root = tmp_path / "zoo"
    missing = load_pipeline_spec(write_spec(tmp_path, 'root = "zoo"'))
    assert missing.weights.vae == root / "vae"  # "auto" before the download: diffusers
    declared = load_pipeline_spec(write_spec(tmp_path, 'root = "zoo"\nlayout = "original"'))
    assert declared.weights.vae == root / WAN_VAE_FILE
    touch(root / "transformer" / "config.json")  # the root exists: its files decide
    detected = load_pipeline_spec(write_spec(tmp_path, 'root = "zoo"\nlayout = "original"'))
    assert detected.weights.vae == root / "vae"
    url = load_pipeline_spec(write_spec(tmp_path, 'root = "s3://b/wan"\nlayout = "original"'))
    assert str(url.weights.text_encoder) == f"s3://b/wan/{WAN_T5_FILE}"


@pytest.mark.parametrize(
    "weights",
    ['root = "zoo"\nlayout = "comfy"', 'layout = "original"\ntransformer = "t"'],
)
def test_a_bad_layout_is_refused_naming_the_key(tmp_path, weights):
    with pytest.raises(PipelineError, match="weights.layout: must be one of auto, diffusers"):
        load_pipeline_spec(write_spec(tmp_path, weights))


@pytest.mark.parametrize(
    ("name", "where"),
    [
        ("pusa-v1-wan2.1-t2v-14b", {"vae": "PusaV1/Wan2.1-T2V-14B/Wan2.1_VAE.pth"}),
        ("pusa-wan2.2-a14b", {"transformer_2": "PusaV1/Wan2.2-T2V-A14B/low_noise_model"}),
        ("pusa-v0.5-mochi", {"vae": "Pusa-V0.5", "dit": "Pusa-V0.5/pusa_v0_dit.safetensors"}),
    ],
)
def test_the_real_pipelines_read_what_the_pusa_readme_downloads(name, where):
    spec = load_pipeline_spec(PIPELINES / f"{name}.toml")
    zoo = PIPELINES.parent / "model_zoo"
    for component, path in where.items():
        assert getattr(spec.weights, component) == zoo / path
    readme = "Wan-AI/Wan2.1-T2V-14B " if "2.1" in name else "RaphaelLiu/Pusa-V0.5 --local-dir"
    if "2.2" in name:
        readme = "Wan-AI/Wan2.2-T2V-A14B "
    assert readme in (spec.download("vae") or "")
