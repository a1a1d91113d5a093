"""Model-fn wrappers: guidance, Wan timestep quantisation, the Wan2.2 expert switch, Mochi."""

from __future__ import annotations

import pytest
import torch
from model_support import flip_to_mochi

from pusa_batch.sampler import (
    ConditioningSpec,
    expert_switch,
    guided,
    linear_quadratic_sigmas,
    make_noise,
    sample,
    shifted_sigmas,
    wan_timesteps,
)

SHAPE = (2, 4, 5, 3, 4)  # B, C, F, H, W


def text_model(x: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """A toy DiT whose output depends on x, sigma and a (B, L, D) context; zero rows add nothing."""
    summary = context.sum(dim=(1, 2))[:, None, None, None, None]
    return torch.tanh(x) * (1 + sigma[:, None, :, None, None]) + 0.1 * summary


def counting(model_call):
    calls = []

    def call(x, sigma, context):
        calls.append(x.shape[0])
        return model_call(x, sigma, context)

    return call, calls


def test_guidance_scale_one_runs_only_the_positive_pass():
    call, calls = counting(text_model)
    pos, neg = make_noise((2, 7, 3), 1), make_noise((2, 7, 3), 2)
    x, sigma = make_noise(SHAPE, 0), torch.full((2, 5), 0.5)
    v = guided(call, pos, neg, 1.0)(x, sigma)
    assert calls == [2]
    assert torch.equal(v, text_model(x, sigma, pos))


def test_guidance_combines_negative_and_positive_passes():
    call, calls = counting(text_model)
    pos, neg = make_noise((2, 7, 3), 1), make_noise((2, 7, 3), 2)
    x, sigma = make_noise(SHAPE, 0), torch.full((2, 5), 0.5)
    v = guided(call, pos, neg, 3.0)(x, sigma)
    assert calls == [2, 2]
    p, n = text_model(x, sigma, pos), text_model(x, sigma, neg)
    assert torch.allclose(v, n + 3.0 * (p - n))


def test_batched_guidance_runs_one_doubled_pass_equal_to_two_passes():
    call, calls = counting(text_model)
    pos, neg = make_noise((2, 7, 3), 1), make_noise((2, 7, 3), 2)
    x, sigma = make_noise(SHAPE, 0), torch.rand(2, 5)
    batched = guided(call, pos, neg, 4.5, batched=True)(x, sigma)
    assert calls == [4]
    two = guided(text_model, pos, neg, 4.5)(x, sigma)
    assert torch.allclose(batched, two, atol=1e-5)


def test_batched_guidance_pads_contexts_of_different_lengths_and_expands_batch_one():
    pos, neg = make_noise((2, 9, 3), 1), make_noise((1, 4, 3), 2)
    x, sigma = make_noise(SHAPE, 0), torch.rand(2, 5)
    batched = guided(text_model, pos, neg, 2.0, batched=True)(x, sigma)
    two = guided(text_model, pos, neg.expand(2, -1, -1), 2.0)(x, sigma)
    assert torch.allclose(batched, two, atol=1e-5)


def test_batched_guidance_pads_tuple_contexts_such_as_features_and_masks():
    def masked_model(x, sigma, context):
        feats, mask = context
        summary = (feats * mask[..., None]).sum(dim=(1, 2))[:, None, None, None, None]
        return x * sigma[:, None, :, None, None] + summary

    pos = (make_noise((2, 6, 3), 1), torch.ones(2, 6, dtype=torch.bool))
    neg = (make_noise((2, 2, 3), 2), torch.zeros(2, 2, dtype=torch.bool))
    x, sigma = make_noise(SHAPE, 0), torch.rand(2, 5)
    batched = guided(masked_model, pos, neg, 4.5, batched=True)(x, sigma)
    two = guided(masked_model, pos, neg, 4.5)(x, sigma)
    assert torch.allclose(batched, two, atol=1e-5)


def test_guidance_above_one_without_a_negative_context_is_refused():
    with pytest.raises(ValueError, match="negative"):
        guided(text_model, make_noise((1, 3, 2), 0), None, 3.0)


@pytest.mark.parametrize(
    ("sigma", "timestep"),
    [(0.97826, 980.0), (0.88235, 884.0), (0.35714, 358.0), (0.99322, 992.0), (1.0, 1000.0),
     (0.9375, 936.0), (0.0, 0.0), (0.2, 200.0)],
)  # fmt: skip
def test_wan_timesteps_round_to_bfloat16_before_truncating_as_upstream(sigma, timestep):
    """The issue's examples: 978.26 -> 980, 882.35 -> 884, 357.14 -> 358 (not 976, 880, 356)."""
    assert wan_timesteps(torch.tensor([[sigma]])).item() == timestep


def test_wan_timesteps_multiply_in_bfloat16_then_truncate_every_frame():
    sigma_frames = 0.9783 * torch.tensor([[1.0, 0.2, 0.3, 0.0]])
    assert wan_timesteps(sigma_frames).tolist() == [[980.0, 196.0, 294.0, 0.0]]


def test_unconditioned_wan_timesteps_are_bfloat16_without_truncation():
    sigma = torch.tensor([[0.95238, 0.95238]])  # 952.38 -> bf16 952, no truncation step
    assert wan_timesteps(sigma, conditioned=False).tolist() == [[952.0, 952.0]]
    low = torch.tensor([[0.0905]])  # 90.5 is a bf16 value: kept, where conditioned truncates
    assert (wan_timesteps(low, conditioned=False).item(), wan_timesteps(low).item()) == (90.5, 90.0)


def test_each_item_of_a_batch_takes_its_own_step_timestep():
    sigma = torch.tensor([[0.9783, 0.0], [0.5, 0.5]])
    assert wan_timesteps(sigma).tolist() == [[980.0, 0.0], [500.0, 500.0]]


def test_expert_switch_uses_high_noise_expert_for_the_first_two_of_four_steps():
    used = []

    def expert(name):
        def fn(x, sigma):
            used.append(name)
            return torch.zeros_like(x)

        return fn

    cond = ConditioningSpec((0,), torch.zeros(1, 4, 1, 3, 4), (0.2,))
    sample(
        expert_switch(expert("high"), expert("low")), make_noise(SHAPE, 0), shifted_sigmas(4), cond
    )
    assert used == ["high", "high", "low", "low"]


def test_expert_switch_boundary_is_inclusive():
    fn = expert_switch(lambda x, s: torch.ones_like(x), lambda x, s: -torch.ones_like(x), 0.875)
    x = torch.zeros(1, 1, 2, 1, 1)
    assert fn(x, torch.tensor([[0.875, 0.1]])).sum() > 0
    assert fn(x, torch.tensor([[0.874, 0.1]])).sum() < 0


def pusa_v05_loop(pred_fn, noise, sigmas, positions, clean, multipliers):
    """Pusa V0.5's sample_model update, written out by hand (batch 1, genmo's conventions)."""
    mult = torch.ones(noise.shape[2])
    mult[positions] = torch.tensor(multipliers)
    z0 = torch.zeros_like(noise)
    z0[:, :, positions] = clean
    sig0 = (sigmas[0] * mult).view(1, 1, -1, 1, 1)
    z = (1 - sig0) * z0 + sig0 * noise
    for k in range(len(sigmas) - 1):
        sigma_vec = sigmas[k] * mult
        pred = pred_fn(z, sigma_vec[None])
        dsigma = sigma_vec - sigmas[k + 1] * mult
        z = z + dsigma.view(1, 1, -1, 1, 1) * pred
    return z


def mochi_dit(z: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """A toy Mochi DiT: takes sigma, embeds t = 1 - sigma, predicts something like x0 - noise."""
    t = 1 - sigma[:, None, :, None, None]
    return -torch.tanh(z) * (0.5 + t) + z.mean(dim=2, keepdim=True)


def test_flip_to_mochi_reproduces_pusa_v05s_update_with_multiplied_sigmas():
    shape = (1, 3, 6, 2, 4)
    noise, clean = make_noise(shape, 0), make_noise((1, 3, 2, 2, 4), 1)
    sigmas = linear_quadratic_sigmas(12)
    cond = ConditioningSpec((0, 3), clean, (0.3, 0.5))
    ours = sample(flip_to_mochi(mochi_dit), noise, sigmas, cond)
    theirs = pusa_v05_loop(mochi_dit, noise, sigmas, [0, 3], clean, [0.3, 0.5])
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_flip_to_mochi_can_pass_mochis_time_instead_of_sigma():
    seen = []

    def dit_taking_time(z, t):
        seen.append(t.clone())
        return torch.zeros_like(z)

    flip_to_mochi(dit_taking_time, takes_time=True)(
        torch.zeros(1, 1, 2, 1, 1), torch.tensor([[0.9, 0.3]])
    )
    assert torch.allclose(seen[0], torch.tensor([[0.1, 0.7]]))
