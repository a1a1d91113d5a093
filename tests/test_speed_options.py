"""The speed options (issue 14): TeaCache, the attention backends and their spec keys.

TeaCache follows upstream Pusa's (`PusaV1/diffsynth/pipelines/wan_video_pusa.py` 514-563 and
629-650): its distance is the per-token modulation's, taken from the per-frame one; 0 is off
and bit-identical to off; a positive threshold skips forwards, each CFG branch with its own cache.
Deviation stated for the tiny twin: final latents within 5% relative L2 of full sampling at the
default threshold 0.2 (measured 1.2% at 10 steps; `benchmarks/b11_speed_options.py` reports it).
"""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from pipeline_support import make_item

from pusa_batch.doctor.preflight import diagnose
from pusa_batch.errors import PipelineError
from pusa_batch.models.teacache import COEFFICIENTS, TeaCache, rescale
from pusa_batch.models.wan import PusaWanTransformer, WanConfig, check_attention_backend
from pusa_batch.pipelines import load_pipeline
from pusa_batch.pipelines.spec import load_pipeline_spec, parse_pipeline_spec

PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"
TINY = {
    "patch_size": (1, 2, 2),
    "num_attention_heads": 2,
    "attention_head_dim": 16,
    "text_dim": 32,
    "freq_dim": 32,
    "ffn_dim": 64,
    "num_layers": 2,
    "rope_max_seq_len": 64,
}
STEPS = 10


def spec_with(family: str = "wan2.1", **options):
    raw = {"family": family, "weights": {"tiny": family}, "options": options}
    return parse_pipeline_spec(raw, PIPELINES / "x.toml")


def with_options(pipe, **options):
    spec = pipe.spec
    return dataclasses.replace(spec, options=dataclasses.replace(spec.options, **options))


@pytest.fixture(scope="module")
def pipe(cache):
    return load_pipeline(load_pipeline_spec(PIPELINES / "tiny.toml"))


@pytest.fixture
def sample(pipe):
    """sample(**options) -> latents of the same prepared item, the pipeline's options set."""
    original = pipe.spec
    prepared = pipe.prepare(make_item(original, steps=STEPS))

    def run(**options):
        pipe.spec = with_options(pipe, **options)
        try:
            return pipe.sample(prepared)
        finally:
            pipe.spec = original

    return run


def block_calls(pipe) -> list[int]:
    """A counter of the first block's forwards: one per DiT forward whose blocks ran."""
    counter = [0]

    def hook(*_):
        counter[0] += 1

    handle = pipe.experts["transformer"].blocks[0].register_forward_hook(hook)
    counter.append(handle)
    return counter


# ------------------------------------------------------------------------------------- spec


def test_the_speed_options_are_off_by_default_and_teacache_alone_changes_the_identity():
    plain = spec_with()
    assert (plain.options.compile, plain.options.teacache_threshold) == (False, 0.0)
    assert plain.options.teacache_model == "Wan2.1-T2V-14B"
    assert spec_with(teacache_threshold=0).identity() == plain.identity()
    assert spec_with(compile=True, attention="sage").identity() == plain.identity()
    on = spec_with(teacache_threshold=0.2)
    assert on.identity() != plain.identity()
    assert spec_with(teacache_threshold=0.2, teacache_model="Wan2.1-T2V-1.3B").identity() != (
        on.identity()
    )


@pytest.mark.parametrize(
    ("family", "options", "key", "message"),
    [
        ("wan2.1", {"teacache_threshold": -0.1}, "options.teacache_threshold", "0 \\(off\\)"),
        ("wan2.1", {"teacache_model": "Wan2.2"}, "options.teacache_model", "Wan2.1-T2V-14B"),
        ("wan2.1", {"attention": "xformers"}, "options.attention", "sdpa, flash, sage"),
        ("mochi", {"teacache_threshold": 0.2}, "options.teacache_threshold", "wan pipelines"),
        ("mochi", {"compile": True}, "options.compile", "wan pipelines"),
        ("mochi", {"attention": "sage"}, "options.attention", "sdpa only"),
    ],
)
def test_bad_speed_options_name_the_key(family, options, key, message):
    with pytest.raises(PipelineError, match=key) as err:
        spec_with(family, **options)
    assert err.match(message)


def test_teacache_model_ids_are_upstreams():
    assert list(COEFFICIENTS) == [
        "Wan2.1-T2V-1.3B",
        "Wan2.1-T2V-14B",
        "Wan2.1-I2V-14B-480P",
        "Wan2.1-I2V-14B-720P",
    ]
    for model, coefficients in COEFFICIENTS.items():
        for x in (0.0, 0.013, 0.07, 0.7):
            assert rescale(model, x) == pytest.approx(np.poly1d(coefficients)(x), rel=1e-12)


# -------------------------------------------------------------------------------- attention


@pytest.mark.skipif(importlib.util.find_spec("sageattention") is not None, reason="installed")
def test_sage_attention_without_the_package_names_it_and_the_pip_command():
    for build in (
        lambda: check_attention_backend("sage"),
        lambda: PusaWanTransformer(WanConfig.from_dict(TINY), attention="sage"),
    ):
        with pytest.raises(PipelineError, match="sageattention") as err:
            build()
        assert err.match("pip install sageattention") and err.match("attention='sdpa'")


@pytest.mark.skipif(importlib.util.find_spec("sageattention") is not None, reason="installed")
def test_the_doctor_and_the_load_fail_on_sage_before_any_item_runs(cache):
    spec = spec_with(attention="sage")
    dtype = next(c for c in diagnose(spec).checks if c.name == "dtype")
    assert dtype.status == "fail" and "pip install sageattention" in dtype.detail
    with pytest.raises(PipelineError, match="sageattention"):
        load_pipeline(spec)


@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is not None, reason="installed")
def test_flash_attention_without_the_package_names_the_extra():
    with pytest.raises(PipelineError, match=r"flash-attn.*pusa-batch\[flash\]"):
        check_attention_backend("flash")


# ---------------------------------------------------------------------------- TeaCache unit


def test_the_distance_of_per_frame_modulation_is_upstreams_per_token_one():
    """Upstream repeats each frame's (6, D) row over its h*w tokens, (B, 6, N, D): the mean over
    tokens is the mean over frames, so the per-frame tensor gives the same distance."""
    gen = torch.Generator().manual_seed(0)
    frames, tokens_per_frame, dim = 4, 6, 8
    mods = [torch.randn(1, frames, 6, dim, generator=gen) for _ in range(3)]
    cache = TeaCache(steps=3, threshold=1.0)
    for mod in mods:
        cache.should_compute(mod)

    def per_token(m):
        return m.permute(0, 2, 1, 3).repeat_interleave(tokens_per_frame, dim=2)

    a, b = per_token(mods[0]), per_token(mods[1])
    upstream = ((b - a).abs().mean() / a.abs().mean()).item()
    assert cache.distances[1] == pytest.approx(upstream, rel=1e-6)
    assert cache.distances[0] == cache.distances[2] == 0.0  # first and last step: not taken


def test_first_and_last_steps_always_run_and_the_distance_accumulates():
    mods = [torch.full((1, 1, 6, 4), 1.0 + 0.01 * k) for k in range(6)]
    lenient = TeaCache(steps=6, threshold=10.0)
    assert [lenient.should_compute(m) for m in mods] == [True, False, False, False, False, True]
    # At ~1% the 14B polynomial gives about 0.05 a step: 0.09 is passed every second step; the
    # 1.3B one about 0.042, so 0.1 every third.
    strict = TeaCache(steps=6, threshold=0.09)
    assert [strict.should_compute(m) for m in mods] == [True, False, True, False, True, True]
    small = TeaCache(steps=6, threshold=0.1, model="Wan2.1-T2V-1.3B")
    assert [small.should_compute(m) for m in mods] == [True, False, False, True, False, True]


def test_a_skipped_forward_adds_the_last_residual_to_its_own_tokens():
    cache = TeaCache(steps=4, threshold=10.0)
    mod = torch.ones(1, 1, 6, 4)
    first = cache.run(torch.zeros(1, 3, 4), mod, lambda x: x + 2.0)
    assert torch.equal(first, torch.full((1, 3, 4), 2.0))
    second = cache.run(torch.ones(1, 3, 4), mod, lambda x: pytest.fail("blocks ran"))
    assert torch.equal(second, torch.full((1, 3, 4), 3.0))
    assert (cache.calls, cache.skipped) == (2, 1)


def test_the_model_skips_its_blocks_but_not_its_head():
    torch.manual_seed(0)
    model = PusaWanTransformer(WanConfig.from_dict(TINY)).eval()
    x, ctx = torch.randn(1, 16, 3, 4, 6), torch.randn(1, 7, 32)
    t = torch.tensor([[0.0, 900.0, 900.0]])
    cache = TeaCache(steps=100, threshold=1e9)
    with torch.no_grad():
        full = model(x, t, ctx)
        assert torch.equal(model(x, t, ctx, cache=cache), full)  # the first call runs them
        skipped = model(x, t, ctx, cache=cache)  # same input: the residual reproduces it
        other_t = model(x, t * 0.5, ctx, cache=cache)  # the head sees the new timestep
    assert cache.skipped == 2
    assert (skipped - full).abs().max().item() <= 1e-5
    assert not torch.allclose(other_t, full)


# ------------------------------------------------------------------------ TeaCache pipeline


def test_threshold_zero_is_bit_identical_to_off(pipe, sample):
    off = sample()
    assert pipe.teacache is None
    assert torch.equal(sample(teacache_threshold=0.0), off)
    assert pipe.teacache is None


def test_a_positive_threshold_skips_forwards_within_the_stated_deviation(pipe, sample):
    full = sample()
    counter = block_calls(pipe)
    try:
        cached = sample(teacache_threshold=0.2)
    finally:
        counter[1].remove()
    caches = pipe.teacache
    assert caches.calls == 2 * STEPS  # CFG two passes
    assert 0 < caches.skipped <= 2 * (STEPS - 2)  # first and last steps always run
    assert counter[0] == caches.calls - caches.skipped  # the blocks really were skipped
    assert ((cached - full).norm() / full.norm()).item() <= 0.05
    assert pipe.describe()["teacache"] is None  # the loaded pipeline's own spec: off


def test_cfg_branches_keep_separate_caches_and_batched_cfg_matches_two_passes(pipe, sample):
    two_pass = sample(teacache_threshold=0.2)
    branches = pipe.teacache.branches
    assert set(branches) == {"positive", "negative"}
    pos, neg = branches["positive"], branches["negative"]
    assert pos.calls == neg.calls == STEPS
    assert pos.skipped == neg.skipped > 0  # the same timesteps, the same decisions
    assert not torch.allclose(pos.residual, neg.residual)  # each its own residual
    batched = sample(teacache_threshold=0.2, batched_cfg=True)
    (one,) = pipe.teacache.branches.values()
    assert one.calls == STEPS and one.skipped == pos.skipped
    assert (batched - two_pass).abs().max().item() <= 1e-5


def test_guidance_one_uses_the_positive_branch_only(pipe):
    original = pipe.spec
    prepared = pipe.prepare(make_item(original, steps=STEPS, guidance_scale=1.0))
    pipe.spec = with_options(pipe, teacache_threshold=0.2)
    try:
        pipe.sample(prepared)
    finally:
        pipe.spec = original
    assert set(pipe.teacache.branches) == {"positive"}


def test_wan22_experts_share_each_branchs_cache_as_upstream(cache):
    spec = load_pipeline_spec(PIPELINES / "tiny-wan22.toml")
    spec = dataclasses.replace(
        spec, options=dataclasses.replace(spec.options, teacache_threshold=0.2)
    )
    pipe = load_pipeline(spec)
    pipe.sample(pipe.prepare(make_item(spec, steps=STEPS)))
    assert {b: c.calls for b, c in pipe.teacache.branches.items()} == {
        "positive": STEPS,
        "negative": STEPS,
    }
    assert pipe.describe()["teacache"] == {"threshold": 0.2, "model": "Wan2.1-T2V-14B"}
