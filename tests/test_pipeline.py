"""`Pipeline` on the tiny Wan twins: shapes, determinism, prompt caching, exact conditioning."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLWan
from pipeline_support import make_item
from safetensors.torch import save_file

from pusa_batch import video
from pusa_batch.errors import PipelineError
from pusa_batch.models.tiny import ensure_tiny_model
from pusa_batch.pipelines import load_pipeline
from pusa_batch.pipelines.base import Pipeline
from pusa_batch.pipelines.spec import load_pipeline_spec

PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"


@pytest.fixture(scope="module")
def pipe(cache) -> Pipeline:
    return load_pipeline(load_pipeline_spec(PIPELINES / "tiny.toml"))


@pytest.fixture(scope="module")
def pipe22(cache) -> Pipeline:
    return load_pipeline(load_pipeline_spec(PIPELINES / "tiny-wan22.toml"))


def vae_latent(cache: Path, pixels: np.ndarray) -> torch.Tensor:
    """Independent reference: diffusers' VAE mean, normalised as diffusers' Wan I2V does."""
    vae = AutoencoderKLWan.from_pretrained(ensure_tiny_model("wan2.1") / "vae").eval()
    x = torch.tensor(pixels).permute(3, 0, 1, 2)[None].float() / 127.5 - 1.0
    with torch.no_grad():
        mu = vae.encode(x).latent_dist.mode()
    mean = torch.tensor(vae.config.latents_mean).view(1, 16, 1, 1, 1)
    inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, 16, 1, 1, 1)
    return (mu - mean) * inv_std


def test_t2v_makes_the_requested_frames(pipe):
    frames = pipe.generate(make_item(pipe.spec))
    assert frames.shape == (17, 64, 64, 3) and frames.dtype == np.uint8


def test_other_sizes_follow_the_item(pipe):
    item = make_item(pipe.spec, num_frames=9, height=48, width=80, steps=2)
    assert pipe.generate(item).shape == (9, 48, 80, 3)


def test_i2v_makes_the_requested_frames(pipe, image):
    frames = pipe.generate(make_item(pipe.spec, task="i2v", image=image))
    assert frames.shape == (17, 64, 64, 3)


def test_same_item_and_seed_give_identical_frames(pipe, cache):
    item = make_item(pipe.spec, seed=42)
    first = pipe.generate(item)
    again = load_pipeline(pipe.spec).generate(item)
    np.testing.assert_array_equal(first, again)


def test_another_seed_gives_other_frames(pipe):
    a = pipe.sample(pipe.prepare(make_item(pipe.spec, seed=1)))
    b = pipe.sample(pipe.prepare(make_item(pipe.spec, seed=2)))
    assert not torch.equal(a, b)


def test_noise_has_the_latent_shape_and_comes_from_the_seed(pipe):
    prepared = pipe.prepare(make_item(pipe.spec, seed=5))
    assert prepared.noise.shape == (1, 16, 5, 8, 8)
    expected = torch.randn((1, 16, 5, 8, 8), generator=torch.Generator().manual_seed(5))
    assert torch.equal(prepared.noise, expected)


def test_negative_prompt_is_encoded_once_for_many_items(pipe):
    negative = "a negative prompt only this test uses"
    before = pipe.text.calls
    for i in range(3):
        pipe.prepare(make_item(pipe.spec, prompt=f"prompt number {i}", negative_prompt=negative))
    assert pipe.text.calls - before == 3 + 1


def test_repeated_prompts_come_from_the_cache(pipe):
    item = make_item(pipe.spec, prompt="a cat sitting on a chair")
    first = pipe.prepare(item)
    calls = pipe.text.calls
    again = pipe.prepare(item)
    assert pipe.text.calls == calls
    assert torch.equal(first.positive, again.positive)


def test_guidance_one_encodes_no_negative_prompt(pipe):
    before = pipe.text.calls
    prepared = pipe.prepare(
        make_item(pipe.spec, prompt="a dog running", negative_prompt="unused", guidance_scale=1.0)
    )
    assert prepared.negative is None
    assert pipe.text.calls - before == 1


def test_prompt_embeddings_are_zero_past_the_real_tokens(pipe):
    emb = pipe.encode_prompt("a boat")
    tokens = pipe.text.tokenizer("a boat").input_ids
    assert emb.shape == (1, pipe.spec.options.text_max_length, 32)
    assert emb[0, : len(tokens)].abs().sum(dim=-1).gt(0).all()
    assert torch.count_nonzero(emb[0, len(tokens) :]) == 0


def test_m0_image_latent_survives_sampling_bit_identical(pipe, image, cache):
    item = make_item(pipe.spec, task="i2v", image=image, cond_frames=(0,), noise_multipliers=(0.0,))
    latents = pipe.sample(pipe.prepare(item))
    pixels = video.load_image(image, 64, 64)
    expected = vae_latent(cache, pixels[None])[:, :, 0]
    assert torch.equal(latents[:, :, 0], expected)


def test_image_at_a_later_frame_fills_that_latent(pipe, image, cache):
    item = make_item(pipe.spec, task="i2v", image=image, cond_frames=(8,), noise_multipliers=(0.0,))
    latents = pipe.sample(pipe.prepare(item))
    expected = vae_latent(cache, video.load_image(image, 64, 64)[None])[:, :, 0]
    assert torch.equal(latents[:, :, 2], expected)
    assert not torch.equal(latents[:, :, 0], expected)


def test_m0_video_latents_equal_the_encoded_opening_frames(pipe, clip, cache):
    item = make_item(
        pipe.spec, task="extend", video=clip, cond_frames=(0, 1, 2, 3, 4), noise_multipliers=(0.0,)
    )
    latents = pipe.sample(pipe.prepare(item))
    expected = vae_latent(cache, video.read_frames(clip, range(5), 64, 64))
    assert torch.equal(latents[:, :, :2], expected)


def test_video_task_makes_the_requested_frames(pipe, clip):
    frames = pipe.generate(make_item(pipe.spec, task="extend", video=clip))
    assert frames.shape == (17, 64, 64, 3)


def test_conditioning_metadata_lists_pixel_and_latent_positions(pipe, image):
    item = make_item(
        pipe.spec, task="start_end", images=(image, image), noise_multipliers=(0.2, 0.5)
    )
    meta = pipe.conditioning_metadata(item)
    assert meta["latent_indices"] == [0, 4]
    assert meta["pixel_frames"] == [[0], [16]]
    assert meta["multipliers"] == [0.2, 0.5]


def test_callback_sees_every_step(pipe):
    seen = []
    pipe.sample(pipe.prepare(make_item(pipe.spec)), callback=lambda k, n, x: seen.append((k, n)))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_wan22_switches_from_high_to_low_expert(pipe22):
    calls = {"transformer": 0, "transformer_2": 0}
    hooks = [
        model.register_forward_hook(lambda *_, name=name: calls.__setitem__(name, calls[name] + 1))
        for name, model in pipe22.experts.items()
    ]
    try:
        # 4 steps at shift 5: t = 1000, 937.5 (high), 833.3, 625 (low); two passes each for CFG.
        frames = pipe22.generate(make_item(pipe22.spec))
    finally:
        for hook in hooks:
            hook.remove()
    assert frames.shape == (17, 64, 64, 3)
    assert calls == {"transformer": 4, "transformer_2": 4}


def test_batched_cfg_runs_one_pass_per_step_with_the_same_result(pipe, cache):
    spec = dataclasses.replace(
        pipe.spec, options=dataclasses.replace(pipe.spec.options, batched_cfg=True)
    )
    batched = load_pipeline(spec)
    calls = []
    hook = batched.experts["transformer"].register_forward_hook(lambda *_: calls.append(1))
    item = make_item(pipe.spec, seed=3)
    try:
        out = batched.sample(batched.prepare(item))
    finally:
        hook.remove()
    assert len(calls) == 4
    torch.testing.assert_close(out, pipe.sample(pipe.prepare(item)), rtol=1e-4, atol=1e-4)


def test_missing_weights_fail_on_load_naming_the_path(tmp_path):
    toml = tmp_path / "p.toml"
    toml.write_text('family = "wan2.1"\n[weights]\nroot = "nowhere"\n')
    with pytest.raises(PipelineError, match="nowhere/transformer"):
        load_pipeline(load_pipeline_spec(toml))


def write_tiny_lora(path: Path, seed: int = 0) -> dict[str, torch.Tensor]:
    """A rank-2 PEFT LoRA on block 0's query projection, with diffusers module names."""
    g = torch.Generator().manual_seed(seed)
    sd = {
        "blocks.0.attn1.to_q.lora_A.weight": torch.randn(2, 64, generator=g),
        "blocks.0.attn1.to_q.lora_B.weight": torch.randn(64, 2, generator=g),
    }
    save_file(sd, str(path))
    return sd


def test_a_lora_is_merged_once_into_the_fresh_weights(pipe, tmp_path):
    sd = write_tiny_lora(tmp_path / "lora.safetensors")
    toml = tmp_path / "tiny-lora.toml"
    toml.write_text(
        (PIPELINES / "tiny.toml").read_text()
        + '\n[[lora]]\npath = "lora.safetensors"\nalpha = 0.5\n'
    )
    merged = load_pipeline(load_pipeline_spec(toml))
    base = pipe.experts["transformer"].blocks[0].attn1.to_q.weight
    delta = 0.5 * sd["blocks.0.attn1.to_q.lora_B.weight"] @ sd["blocks.0.attn1.to_q.lora_A.weight"]
    got = merged.experts["transformer"].blocks[0].attn1.to_q.weight
    torch.testing.assert_close(got, base + delta)
    assert len(merged.describe()["loras"]["transformer"]) == 1
    assert merged.spec.identity() != pipe.spec.identity()


@pytest.mark.parametrize(
    ("task", "inputs"),
    [
        ("t2v", {}),
        ("i2v", {"image": "IMAGE"}),
        ("start_end", {"images": ("IMAGE", "IMAGE")}),
        ("keyframes", {"images": ("IMAGE", "IMAGE", "IMAGE")}),
        ("extend", {"video": "CLIP"}),
        ("complete", {"video": "CLIP"}),
        ("transition", {"video": "CLIP", "video_b": "CLIP", "num_frames": 33}),
        ("loop", {"image": "IMAGE"}),
        ("loop", {"video": "CLIP"}),
    ],
)
def test_every_task_runs_with_its_default_conditioning(pipe, image, clip, task, inputs):
    media = {"IMAGE": image, "CLIP": clip}
    resolved = {
        k: tuple(media[x] for x in v) if isinstance(v, tuple) else media.get(v, v)
        for k, v in inputs.items()
    }
    item = make_item(pipe.spec, task=task, steps=1, **resolved)
    prepared = pipe.prepare(item)
    expected = pipe.conditioning_metadata(item)["latent_indices"]
    assert list(prepared.cond.latent_index if prepared.cond else []) == expected
    latent_frames = (item.num_frames - 1) // 4 + 1
    assert pipe.sample(prepared).shape == (1, 16, latent_frames, 8, 8)
