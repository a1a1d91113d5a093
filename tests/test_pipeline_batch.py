"""Micro-batching: items sharing a `batch_key` are denoised in one loop (one forward per step for
all of them), and each comes out as it would alone, in the order given.

Batched GEMMs sum in a different order than batch-1 ones, so "as alone" means within float32
rounding: about 1e-6 per forward, grown by the guidance scale over the steps (figures below).
"""

from __future__ import annotations

import contextlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pipeline_support as support
import pytest
import torch
from PIL import Image

from pusa_batch.item import Item
from pusa_batch.pipelines import load_pipeline
from pusa_batch.pipelines.base import Pipeline
from pusa_batch.pipelines.spec import load_pipeline_spec

PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"
SPECS = {"wan": "tiny.toml", "mochi": "tiny-mochi.toml", "wan22": "tiny-wan22.toml"}
# Largest |batched - alone| measured on the tiny twins (fp32, one thread, 4 steps): Wan and
# Wan2.2 2.3e-6 (cfg 3) and 7e-7 (cfg 1); Mochi 1.24e-5 (cfg 4.5, which multiplies the rounding
# of pos - neg by 5.5; its latents reach 11) and 2e-6 (cfg 1). One forward alone: 1e-6 to 2e-6.
TOLERANCE = {"wan": 1e-5, "wan22": 1e-5, "mochi": 3e-5}
PROMPTS = ("a red car on a road", "a dog running along a beach at sunset, waves", "rain")


@pytest.fixture(scope="module", autouse=True)
def tiny_cache(cache) -> Path:
    return cache


@pytest.fixture(scope="module")
def pipes() -> dict[str, Pipeline]:
    return {name: load_pipeline(load_pipeline_spec(PIPELINES / f)) for name, f in SPECS.items()}


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[str]:
    rng = np.random.default_rng(3)
    folder = tmp_path_factory.mktemp("media")
    paths = []
    for i in range(2):
        path = folder / f"photo{i}.png"
        Image.fromarray(rng.integers(0, 256, (72, 96, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def make_item(spec, **changes) -> Item:
    return support.make_item(spec, **{"prompt": PROMPTS[0], **changes})


def t2v_items(pipe: Pipeline, **changes) -> list[Item]:
    return [
        make_item(pipe.spec, id=f"t2v-{i}", prompt=prompt, seed=10 + i, **changes)
        for i, prompt in enumerate(PROMPTS)
    ]


def i2v_items(pipe: Pipeline, images: list[str]) -> list[Item]:
    return [
        make_item(pipe.spec, id=f"i2v-{i}", task="i2v", image=path, prompt=PROMPTS[i], seed=20 + i)
        for i, path in enumerate(images)
    ]


def max_abs_diff(batched: list[torch.Tensor], alone: list[torch.Tensor]) -> float:
    assert [b.shape for b in batched] == [a.shape for a in alone]
    return max(float((b - a).abs().max()) for b, a in zip(batched, alone, strict=True))


@contextlib.contextmanager
def forward_batches(*models: torch.nn.Module):
    """Record the batch size of every forward the models run (observation only)."""
    seen: list[tuple[int, int]] = []
    handles = [
        model.register_forward_pre_hook(lambda _m, args, i=i: seen.append((i, args[0].shape[0])))
        for i, model in enumerate(models)
    ]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def assert_batched_equals_alone(pipe: Pipeline, family: str, items: list[Item]) -> None:
    prepared = [pipe.prepare(item) for item in items]
    alone = [pipe.sample(p) for p in prepared]
    batched = pipe.sample_batch(prepared)
    assert max_abs_diff(batched, alone) <= TOLERANCE[family]


# --------------------------------------------------------------------------- equal to batch 1


@pytest.mark.parametrize("family", ["wan", "mochi"])
def test_t2v_items_sampled_together_equal_each_sampled_alone(pipes, family):
    pipe = pipes[family]
    assert_batched_equals_alone(pipe, family, t2v_items(pipe))


@pytest.mark.parametrize("family", ["wan", "mochi"])
def test_i2v_items_with_different_images_sampled_together_equal_each_alone(pipes, images, family):
    pipe = pipes[family]
    assert_batched_equals_alone(pipe, family, i2v_items(pipe, images))


@pytest.mark.parametrize("family", ["wan", "mochi"])
def test_each_item_gets_back_its_own_latents_in_the_order_given(pipes, family):
    pipe = pipes[family]
    prepared = [pipe.prepare(item) for item in t2v_items(pipe)]
    forward = pipe.sample_batch(prepared)
    backward = pipe.sample_batch(prepared[::-1])[::-1]
    assert max_abs_diff(backward, forward) <= TOLERANCE[family]
    for i in range(len(forward)):
        for j in range(i + 1, len(forward)):
            assert float((forward[i] - forward[j]).abs().max()) > 0.1


@pytest.mark.parametrize("family", ["wan", "mochi"])
def test_frozen_first_latents_come_back_exactly_as_each_item_gave_them(pipes, images, family):
    pipe = pipes[family]
    items = [replace(item, noise_multipliers=(0.0,)) for item in i2v_items(pipe, images)]
    prepared = [pipe.prepare(item) for item in items]
    batched = pipe.sample_batch(prepared)
    for p, latents in zip(prepared, batched, strict=True):
        assert torch.equal(latents[:, :, 0], p.cond.clean[:, :, 0])


def test_the_wan22_expert_switch_runs_both_experts_on_the_whole_batch(pipes):
    pipe = pipes["wan22"]
    items = t2v_items(pipe, guidance_scale=1.0)
    prepared = [pipe.prepare(item) for item in items]
    alone = [pipe.sample(p) for p in prepared]
    experts = (pipe.experts["transformer"], pipe.experts["transformer_2"])
    with forward_batches(*experts) as seen:
        batched = pipe.sample_batch(prepared)
    assert {expert for expert, _ in seen} == {0, 1}
    assert {batch for _, batch in seen} == {len(items)}
    assert max_abs_diff(batched, alone) <= TOLERANCE["wan22"]


def test_the_wan22_batch_with_guidance_equals_each_alone(pipes):
    pipe = pipes["wan22"]
    assert_batched_equals_alone(pipe, "wan22", t2v_items(pipe)[:2])


# --------------------------------------------------------------------------- guidance


@pytest.mark.parametrize("family", ["wan", "mochi"])
def test_guidance_1_batches_with_one_forward_per_step(pipes, family):
    pipe = pipes[family]
    items = t2v_items(pipe, guidance_scale=1.0)
    prepared = [pipe.prepare(item) for item in items]
    assert all(p.negative is None for p in prepared)
    alone = [pipe.sample(p) for p in prepared]
    model = pipe.dit if family == "mochi" else pipe.experts["transformer"]
    with forward_batches(model) as seen:
        batched = pipe.sample_batch(prepared)
    assert [batch for _, batch in seen] == [len(items)] * items[0].steps
    assert max_abs_diff(batched, alone) <= TOLERANCE[family]


def test_guidance_above_1_runs_the_negative_pass_on_the_whole_batch(pipes):
    pipe = pipes["wan"]
    items = t2v_items(pipe, guidance_scale=3.0)
    prepared = [pipe.prepare(item) for item in items]
    with forward_batches(pipe.experts["transformer"]) as seen:
        pipe.sample_batch(prepared)
    assert [batch for _, batch in seen] == [len(items)] * (2 * items[0].steps)


# --------------------------------------------------------------------------- keys


@pytest.mark.parametrize("family", ["wan", "mochi"])
def test_prompts_of_any_length_share_a_key(pipes, family):
    pipe = pipes[family]
    keys = {pipe.batch_key(pipe.prepare(item)) for item in t2v_items(pipe)}
    assert len(keys) == 1


def test_i2v_items_with_different_images_share_a_key(pipes, images):
    pipe = pipes["wan"]
    keys = {pipe.batch_key(pipe.prepare(item)) for item in i2v_items(pipe, images)}
    assert len(keys) == 1


@pytest.mark.parametrize(
    ("family", "change", "field"),
    [
        ("wan", {"steps": 3}, "sigmas"),
        ("wan", {"shift": 3.0}, "sigmas"),
        ("wan", {"guidance_scale": 5.0}, "guidance_scale"),
        ("wan", {"guidance_scale": 1.0}, "guidance_scale"),
        ("wan", {"num_frames": 9}, "latent_shape"),
        ("wan", {"width": 48}, "latent_shape"),
        ("wan", {"task": "i2v"}, "conditioning"),
        ("wan", {"task": "i2v", "noise_multipliers": (0.3,)}, "conditioning"),
        ("mochi", {"steps": 3}, "sigmas"),
        ("mochi", {"num_frames": 13}, "latent_shape"),
        ("mochi", {"task": "i2v"}, "conditioning"),
    ],
)
def test_items_that_cannot_share_a_forward_are_refused(pipes, images, family, change, field):
    pipe = pipes[family]
    base = {"task": "i2v", "image": images[0]} if change.get("noise_multipliers") else {}
    first = pipe.prepare(make_item(pipe.spec, id="first", **base))
    other_fields = {"image": images[1]} if change.get("task") == "i2v" else {}
    other = pipe.prepare(make_item(pipe.spec, id="other", seed=5, **other_fields, **change))
    assert getattr(pipe.batch_key(first), field) != getattr(pipe.batch_key(other), field)
    with pytest.raises(ValueError, match=rf"items first and other .*{field}"):
        pipe.sample_batch([first, other])


def test_mochi_ignores_shift_so_items_differing_only_in_shift_batch(pipes):
    pipe = pipes["mochi"]
    a = pipe.prepare(make_item(pipe.spec, id="a", shift=5.0))
    b = pipe.prepare(make_item(pipe.spec, id="b", shift=2.0, seed=4))
    assert pipe.batch_key(a) == pipe.batch_key(b)


def test_an_empty_batch_is_refused(pipes):
    with pytest.raises(ValueError, match="at least one"):
        pipes["wan"].sample_batch([])


@pytest.mark.parametrize("family", ["wan", "mochi"])
def test_batched_guidance_on_a_batch_equals_each_item_alone(family):
    spec = load_pipeline_spec(PIPELINES / SPECS[family])
    spec = replace(spec, options=replace(spec.options, batched_cfg=True))
    pipe = load_pipeline(spec)
    assert_batched_equals_alone(pipe, family, t2v_items(pipe))
