"""`Pipeline` on the tiny Pusa V0.5 (Mochi) twin: shapes, seeds, prompts, exact conditioning."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pipeline_support as support
import pytest
import torch
from diffusers import AutoencoderKLMochi
from diffusers.pipelines.mochi.pipeline_mochi import linear_quadratic_schedule

from pusa_batch import sampler, video
from pusa_batch.errors import PipelineError
from pusa_batch.item import Item
from pusa_batch.models.tiny import ensure_tiny_model
from pusa_batch.pipelines import load_pipeline
from pusa_batch.pipelines.base import Pipeline
from pusa_batch.pipelines.mochi import MochiPipeline, condition_generator
from pusa_batch.pipelines.spec import load_pipeline_spec

PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"


@pytest.fixture(scope="module")
def pipe(cache) -> Pipeline:
    return load_pipeline(load_pipeline_spec(PIPELINES / "tiny-mochi.toml"))


@pytest.fixture(scope="module")
def vae(pipe) -> AutoencoderKLMochi:
    """Independent reference: diffusers' Mochi VAE loaded from the twin's folder."""
    return AutoencoderKLMochi.from_pretrained(ensure_tiny_model("mochi") / "vae").eval()


def make_item(spec, **changes) -> Item:
    return support.make_item(spec, **{"prompt": "a red fox runs over the hill", **changes})


def with_options(spec, **options):
    return dataclasses.replace(spec, options=dataclasses.replace(spec.options, **options))


def to_video(pixels: np.ndarray) -> torch.Tensor:
    return torch.tensor(pixels).permute(3, 0, 1, 2)[None].float() / 127.5 - 1.0


def test_load_gives_the_mochi_pipeline(pipe):
    assert isinstance(pipe, MochiPipeline)
    assert pipe.spec.temporal_factor == 6


def test_t2v_makes_the_requested_frames(pipe):
    frames = pipe.generate(make_item(pipe.spec))
    assert frames.shape == (19, 64, 64, 3) and frames.dtype == np.uint8


def test_other_sizes_follow_the_item(pipe):
    item = make_item(pipe.spec, num_frames=13, height=48, width=80, steps=2)
    assert pipe.generate(item).shape == (13, 48, 80, 3)


def test_wan_frame_counts_are_refused_naming_6k_plus_1(pipe):
    with pytest.raises(PipelineError, match=r"item item: num_frames 17 must be 6k\+1"):
        pipe.prepare(make_item(pipe.spec, num_frames=17))


def test_noise_has_12_channels_and_comes_from_the_seed(pipe):
    prepared = pipe.prepare(make_item(pipe.spec, seed=5))
    expected = torch.randn((1, 12, 4, 8, 8), generator=torch.Generator().manual_seed(5))
    assert torch.equal(prepared.noise, expected)


def test_sigmas_are_mochis_linear_quadratic_schedule(pipe):
    prepared = pipe.prepare(make_item(pipe.spec, steps=6))
    expected = torch.tensor([*linear_quadratic_schedule(6, 0.025), 0.0], dtype=torch.float32)
    torch.testing.assert_close(prepared.sigmas, expected)


def test_shift_is_ignored(pipe):
    a = pipe.prepare(make_item(pipe.spec, shift=1.0))
    b = pipe.prepare(make_item(pipe.spec, shift=9.0))
    assert torch.equal(a.sigmas, b.sigmas)
    assert "ignored" in pipe.describe()["shift"]


def test_empty_negative_prompt_has_no_valid_token(pipe):
    prepared = pipe.prepare(make_item(pipe.spec, negative_prompt=""))
    feat, mask = prepared.negative
    assert feat.shape == (1, 256, 32) and not mask.any()
    tokens = pipe.text.tokenizer("a red fox runs over the hill").input_ids
    assert prepared.positive[1].sum() == len(tokens)


def test_prompts_are_encoded_once(pipe):
    item = make_item(pipe.spec, prompt="a dog runs on the beach", negative_prompt="dark")
    pipe.prepare(item)
    calls = pipe.text.calls
    pipe.prepare(dataclasses.replace(item, seed=9))
    assert pipe.text.calls == calls


def test_guidance_one_runs_one_pass_per_step(pipe):
    calls = []
    hook = pipe.dit.register_forward_hook(lambda *_: calls.append(1))
    try:
        prepared = pipe.prepare(make_item(pipe.spec, guidance_scale=1.0))
        pipe.sample(prepared)
    finally:
        hook.remove()
    assert prepared.negative is None
    assert len(calls) == 4


def test_guidance_runs_two_passes_per_step(pipe):
    calls = []
    hook = pipe.dit.register_forward_hook(lambda *_: calls.append(1))
    try:
        pipe.sample(pipe.prepare(make_item(pipe.spec)))
    finally:
        hook.remove()
    assert len(calls) == 8


def test_batched_cfg_gives_the_two_pass_result(pipe, cache):
    batched = load_pipeline(with_options(pipe.spec, batched_cfg=True))
    item = make_item(pipe.spec, seed=3)
    out = batched.sample(batched.prepare(item))
    torch.testing.assert_close(out, pipe.sample(pipe.prepare(item)), rtol=1e-4, atol=1e-4)


def test_callback_sees_every_step(pipe):
    seen = []
    pipe.sample(pipe.prepare(make_item(pipe.spec)), callback=lambda k, n, x: seen.append((k, n)))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_same_item_and_seed_give_identical_frames(pipe, image, cache):
    item = make_item(pipe.spec, task="i2v", image=image, seed=42)
    first = pipe.generate(item)
    again = load_pipeline(pipe.spec).generate(item)
    np.testing.assert_array_equal(first, again)


def test_another_seed_gives_other_frames_and_other_condition_samples(pipe, image):
    a = pipe.prepare(make_item(pipe.spec, task="i2v", image=image, seed=1))
    b = pipe.prepare(make_item(pipe.spec, task="i2v", image=image, seed=2))
    assert not torch.equal(a.cond.clean, b.cond.clean)
    assert not torch.equal(pipe.sample(a), pipe.sample(b))


def test_m0_image_latent_is_the_seeded_posterior_sample_bit_identical(pipe, vae, image):
    item = make_item(pipe.spec, task="i2v", image=image, cond_frames=(0,), noise_multipliers=(0.0,))
    latents = pipe.sample(pipe.prepare(item))
    pixels = video.load_image(image, 64, 64)[None]
    with torch.no_grad():
        dist = vae.encode(to_video(pixels)).latent_dist
    expected = dist.sample(generator=condition_generator(item.seed))[:, :, 0]
    assert torch.equal(latents[:, :, 0], expected)
    assert not torch.equal(expected, dist.mean[:, :, 0])


def test_image_at_a_later_frame_fills_its_latent(pipe, vae, image):
    item = make_item(
        pipe.spec, task="i2v", image=image, cond_frames=(12,), noise_multipliers=(0.0,)
    )
    latents = pipe.sample(pipe.prepare(item))
    with torch.no_grad():
        dist = vae.encode(to_video(video.load_image(image, 64, 64)[None])).latent_dist
    expected = dist.sample(generator=condition_generator(item.seed))[:, :, 0]
    assert torch.equal(latents[:, :, 2], expected)  # frames 7..12 are latent 2


def test_mean_mode_normalised_gives_the_normalised_posterior_mean(pipe, vae, image, cache):
    mean_pipe = load_pipeline(
        with_options(pipe.spec, condition_latents="mean", normalize_condition=True)
    )
    item = make_item(pipe.spec, task="i2v", image=image, cond_frames=(0,), noise_multipliers=(0.0,))
    latents = mean_pipe.sample(mean_pipe.prepare(item))
    with torch.no_grad():
        mu = vae.encode(to_video(video.load_image(image, 64, 64)[None])).latent_dist.mean
    mean = torch.tensor(vae.config.latents_mean).view(1, 12, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, 12, 1, 1, 1)
    expected = ((mu - mean) / std)[:, :, 0]
    torch.testing.assert_close(latents[:, :, 0], expected, rtol=0, atol=1e-6)


def test_m0_video_latents_are_the_encoded_opening_frames(pipe, vae, clip):
    item = make_item(
        pipe.spec, task="extend", video=clip, cond_frames=tuple(range(7)), noise_multipliers=(0.0,)
    )
    latents = pipe.sample(pipe.prepare(item))
    pixels = video.read_frames(clip, range(7), 64, 64)
    with torch.no_grad():
        dist = vae.encode(to_video(pixels)).latent_dist
    expected = dist.sample(generator=condition_generator(item.seed))
    assert expected.shape[2] == 2
    assert torch.equal(latents[:, :, :2], expected)


def test_no_conditioning_equals_an_all_ones_frame_scale(pipe):
    prepared = pipe.prepare(make_item(pipe.spec, seed=11))
    clean = torch.randn(1, 12, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    ones = dataclasses.replace(prepared, cond=sampler.ConditioningSpec((1,), clean, (1.0,)))
    assert torch.equal(pipe.sample(prepared), pipe.sample(ones))


def test_conditioning_metadata_uses_six_frames_per_latent(pipe, image):
    item = make_item(pipe.spec, task="start_end", images=(image, image))
    meta = pipe.conditioning_metadata(item)
    assert meta["latent_frames"] == 4
    assert meta["latent_indices"] == [0, 3]
    assert meta["pixel_frames"] == [[0], [18]]


def test_describe_names_the_family_and_schedule(pipe):
    info = pipe.describe()
    assert (info["family"], info["schedule"]) == ("mochi", "linear_quadratic")
    assert (info["condition_latents"], info["normalize_condition"]) == ("sample", False)
