"""The tiny Pusa V0.5 twin on disk, and the Mochi conventions the pipeline follows."""

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLMochi, FlowMatchEulerDiscreteScheduler
from diffusers.pipelines.mochi.pipeline_mochi import linear_quadratic_schedule
from model_support import mochi_condition_latents
from transformers import AutoTokenizer, T5EncoderModel

from pusa_batch.models.mochi import load_mochi_transformer
from pusa_batch.models.mochi_conventions import (
    decode_mochi_latents,
    dit_latents_to_vae_latents,
    encode_mochi_text,
    mochi_text_inputs,
    mochi_velocity,
    vae_latents_to_dit_latents,
)
from pusa_batch.models.tiny_mochi import make_tiny_mochi

LAYOUT = [
    "config.json",
    "pusa_v0_dit.safetensors",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "tokenizer/tokenizer.json",
    "tokenizer/tokenizer_config.json",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
]


@pytest.fixture(scope="module")
def twin(tmp_path_factory):
    return make_tiny_mochi(tmp_path_factory.mktemp("tiny_mochi"), seed=0)


@pytest.fixture(scope="module")
def vae(twin):
    return AutoencoderKLMochi.from_pretrained(twin / "vae").eval()


def files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_writes_the_v05_layout(twin):
    assert files(twin) == LAYOUT


def test_same_seed_gives_the_same_bytes(twin, tmp_path):
    again = make_tiny_mochi(tmp_path / "again", seed=0)
    assert all((twin / f).read_bytes() == (again / f).read_bytes() for f in LAYOUT)


def test_another_seed_gives_other_weights(twin, tmp_path):
    other = make_tiny_mochi(tmp_path / "other", seed=1)
    name = "pusa_v0_dit.safetensors"
    assert (twin / name).read_bytes() != (other / name).read_bytes()


def test_tokenizer_loads_with_autotokenizer_and_pads_to_256(twin):
    tokenizer = AutoTokenizer.from_pretrained(twin / "tokenizer")
    ids, mask = mochi_text_inputs(tokenizer, ["a red fox runs over the hill", ""])
    assert ids.shape == mask.shape == (2, 256)
    assert tokenizer.decode(ids[0][mask[0]], skip_special_tokens=True) == (
        "a red fox runs over the hill"
    )
    assert ids[0, mask[0].sum() - 1] == tokenizer.eos_token_id


def test_empty_prompt_is_all_zero_ids_and_no_valid_token(twin):
    tokenizer = AutoTokenizer.from_pretrained(twin / "tokenizer")
    ids, mask = mochi_text_inputs(tokenizer, ["", "a cat"])
    assert not ids[0].any() and not mask[0].any()
    assert mask[1].sum() == 3  # "a", "cat", "</s>"


def test_text_features_match_the_dit_width(twin):
    tokenizer = AutoTokenizer.from_pretrained(twin / "tokenizer")
    encoder = T5EncoderModel.from_pretrained(twin / "text_encoder")
    dit = load_mochi_transformer(twin)
    feat, mask = encode_mochi_text(encoder, tokenizer, ["a dog", ""])
    assert feat.shape == (2, dit.config.t5_token_length, dit.config.t5_feat_dim)
    assert mask.dtype == torch.bool


def test_vae_compresses_6x_in_time_and_8x_in_space_into_12_channels(vae):
    pixels = torch.rand(1, 3, 13, 32, 48) * 2 - 1
    latents = mochi_condition_latents(vae, pixels, generator=torch.Generator().manual_seed(0))
    assert latents.shape == (1, 12, 3, 4, 6)
    frames = decode_mochi_latents(vae, latents)
    assert frames.shape == (1, 13, 32, 48, 3) and frames.dtype == torch.uint8


def test_condition_latents_are_a_seeded_posterior_sample(vae):
    pixels = torch.rand(1, 3, 1, 32, 32) * 2 - 1
    one = mochi_condition_latents(vae, pixels, generator=torch.Generator().manual_seed(5))
    same = mochi_condition_latents(vae, pixels, generator=torch.Generator().manual_seed(5))
    other = mochi_condition_latents(vae, pixels, generator=torch.Generator().manual_seed(6))
    mean = vae.encode(pixels).latent_dist.mean
    assert torch.equal(one, same)
    assert not torch.equal(one, other) and not torch.equal(one, mean)


def test_latent_normalisation_uses_the_vae_statistics(vae):
    raw = torch.randn(1, 12, 2, 3, 3)
    mean = torch.tensor(vae.config.latents_mean).view(1, 12, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, 12, 1, 1, 1)
    assert torch.allclose(vae_latents_to_dit_latents(raw), (raw - mean) / std)
    assert torch.allclose(dit_latents_to_vae_latents(vae_latents_to_dit_latents(raw)), raw)


def test_an_euler_step_on_the_velocity_equals_diffusers_mochi_step(twin):
    dit = load_mochi_transformer(twin)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(1, 12, 2, 4, 4, generator=gen)
    feat, mask = torch.randn(1, 256, 32, generator=gen), torch.ones(1, 256, dtype=torch.bool)
    scheduler = FlowMatchEulerDiscreteScheduler(invert_sigmas=True)  # MochiPipeline's scheduler
    scheduler.set_timesteps(sigmas=np.array(linear_quadratic_schedule(4, 0.025)))
    t = scheduler.timesteps[1]
    sigma, sigma_next = 1 - scheduler.sigmas[1].item(), 1 - scheduler.sigmas[2].item()
    with torch.no_grad():
        pred = dit(x, torch.tensor([sigma]), feat, mask)
    scheduler._step_index = 1
    expected = scheduler.step(pred, t, x, return_dict=False)[0]
    v = mochi_velocity(dit, x, torch.full((1, 2), sigma), feat, mask)
    assert torch.allclose(x + v * (sigma_next - sigma), expected, atol=1e-5)
