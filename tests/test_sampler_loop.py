"""The Euler loop: what comes out of `sample` for toy models, conditioning and batches."""

from __future__ import annotations

import pytest
import torch
from model_support import stack_noise

from pusa_batch.sampler import (
    ConditioningSpec,
    linear_quadratic_sigmas,
    make_noise,
    sample,
    shifted_sigmas,
)

SHAPE = (1, 4, 6, 3, 5)  # B, C, F, H, W


def per_frame(sigma: torch.Tensor) -> torch.Tensor:
    return sigma[:, None, :, None, None]


def oracle(x0: torch.Tensor):
    """A 'model' that knows x0: v = (x - x0) / sigma, exact on the straight flow path."""

    def model_fn(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s = per_frame(sigma)
        return torch.where(s > 0, (x - x0) / s.clamp_min(1e-12), torch.zeros_like(x))

    return model_fn


def toy(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """A nonlinear toy whose output depends on x, sigma and the other frames."""
    return torch.tanh(x) * (1 + per_frame(sigma)) + x.mean(dim=2, keepdim=True)


def spec(indices, multipliers, seed=7, batch=1) -> ConditioningSpec:
    _, c, _, h, w = SHAPE
    clean = make_noise((batch, c, len(indices), h, w), seed)
    return ConditioningSpec(tuple(indices), clean, tuple(multipliers))


def test_free_frames_reach_the_oracles_x0_at_the_end():
    x0 = make_noise(SHAPE, 1)
    out = sample(oracle(x0), make_noise(SHAPE, 0), shifted_sigmas(10))
    assert torch.allclose(out, x0, atol=1e-5)


def test_noised_conditioning_frame_is_denoised_back_to_its_clean_latent_by_the_oracle():
    cond = spec([2], [0.5])
    x0 = make_noise(SHAPE, 1)
    x0[:, :, 2] = cond.clean[:, :, 0]
    out = sample(oracle(x0), make_noise(SHAPE, 0), shifted_sigmas(10), cond)
    assert torch.allclose(out, x0, atol=1e-5)


@pytest.mark.parametrize("value", [3e38, float("inf")])
def test_frozen_frames_come_out_bit_identical_even_under_a_huge_velocity(value):
    cond = spec([0, 4], [0.0, 0.0])

    def huge(x, sigma):
        return torch.full_like(x, value)

    out = sample(huge, make_noise(SHAPE, 0), shifted_sigmas(5), cond)
    assert torch.equal(out[:, :, [0, 4]], cond.clean)


def test_frozen_frames_stay_bit_identical_with_a_nonlinear_model():
    cond = spec([1], [0.0])
    out = sample(toy, make_noise(SHAPE, 0), linear_quadratic_sigmas(6), cond)
    assert torch.equal(out[:, :, 1], cond.clean[:, :, 0])
    assert not torch.equal(out[:, :, 0], make_noise(SHAPE, 0)[:, :, 0])


def test_model_sees_each_frames_sigma_multiplied_by_its_multiplier():
    seen = []

    def record(x, sigma):
        seen.append(sigma.clone())
        return torch.zeros_like(x)

    sigmas = shifted_sigmas(4)
    sample(record, make_noise(SHAPE, 0), sigmas, spec([0, 3], [0.0, 0.5]))
    assert len(seen) == 4
    for k, sigma in enumerate(seen):
        assert sigma.shape == (1, 6)
        expected = sigmas[k] * torch.tensor([0.0, 1, 1, 0.5, 1, 1])
        assert torch.allclose(sigma[0], expected)


def test_conditioning_is_not_reinjected_after_the_first_step():
    cond = spec([2], [0.5])
    sigmas = shifted_sigmas(3)
    drift = 0.25

    def constant(x, sigma):
        return torch.full_like(x, drift)

    out = sample(constant, make_noise(SHAPE, 0), sigmas, cond)
    start = 0.5 * cond.clean[:, :, 0] + 0.5 * make_noise(SHAPE, 0)[:, :, 2]
    # the frame moves by v * m * (sigma_end - sigma_start) = 0.25 * 0.5 * (0 - 1)
    assert torch.allclose(out[:, :, 2], start - drift * 0.5, atol=1e-6)


def test_conditioning_with_every_multiplier_one_equals_no_conditioning():
    noise = make_noise(SHAPE, 0)
    sigmas = shifted_sigmas(6)
    plain = sample(toy, noise, sigmas)
    uniform = sample(toy, noise, sigmas, spec([0, 5], [1.0, 1.0]))
    assert torch.equal(plain, uniform)


def test_callback_runs_once_per_step_with_step_and_total():
    calls = []
    sample(
        toy, make_noise(SHAPE, 0), shifted_sigmas(7), callback=lambda s, t, x: calls.append((s, t))
    )
    assert calls == [(k, 7) for k in range(1, 8)]


def test_callback_receives_the_current_latents():
    shapes = []
    out = sample(
        toy, make_noise(SHAPE, 0), shifted_sigmas(2), callback=lambda s, t, x: shapes.append(x)
    )
    assert torch.equal(shapes[-1], out)


def test_same_seed_gives_the_same_video_and_another_seed_does_not():
    sigmas = shifted_sigmas(5)
    a = sample(toy, make_noise(SHAPE, 3), sigmas)
    b = sample(toy, make_noise(SHAPE, 3), sigmas)
    c = sample(toy, make_noise(SHAPE, 4), sigmas)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_a_batch_of_two_equals_two_single_runs():
    sigmas = shifted_sigmas(5)
    shape = SHAPE
    cond_a, cond_b = spec([0], [0.3], seed=10), spec([0], [0.3], seed=11)
    both = ConditioningSpec((0,), torch.cat([cond_a.clean, cond_b.clean]), (0.3,))

    def per_item(x, sigma):  # a toy that mixes frames but not batch items
        return torch.tanh(x) * (1 + per_frame(sigma)) + x.mean(dim=2, keepdim=True)

    batch = sample(per_item, stack_noise([(shape, 1), (shape, 2)]), sigmas, both)
    one = sample(per_item, make_noise(shape, 1), sigmas, cond_a)
    two = sample(per_item, make_noise(shape, 2), sigmas, cond_b)
    assert torch.allclose(batch, torch.cat([one, two]), atol=1e-6)


def test_clean_latents_with_batch_one_are_shared_by_the_whole_batch():
    cond = spec([0], [0.0])
    out = sample(toy, stack_noise([(SHAPE, 1), (SHAPE, 2)]), shifted_sigmas(3), cond)
    assert torch.equal(out[0, :, 0], cond.clean[0, :, 0])
    assert torch.equal(out[1, :, 0], cond.clean[0, :, 0])


def test_stacked_noise_of_an_item_does_not_depend_on_its_batch_mates():
    alone = make_noise(SHAPE, 42)
    first = stack_noise([(SHAPE, 42), (SHAPE, 5)])[0:1]
    second = stack_noise([(SHAPE, 9), (SHAPE, 8), (SHAPE, 42)])[2:3]
    assert torch.equal(alone, first) and torch.equal(alone, second)


def test_make_noise_is_seeded_float32_standard_normal():
    noise = make_noise((1, 16, 21, 8, 8), 0)
    assert noise.dtype == torch.float32
    assert torch.equal(
        noise, torch.randn((1, 16, 21, 8, 8), generator=torch.Generator().manual_seed(0))
    )
    assert abs(noise.mean().item()) < 0.05 and abs(noise.std().item() - 1) < 0.05


def test_stack_noise_refuses_items_of_different_latent_shapes():
    with pytest.raises(ValueError, match="share a latent shape"):
        stack_noise([((1, 4, 6, 3, 5), 1), ((1, 4, 5, 3, 5), 2)])


def test_sample_refuses_a_schedule_that_does_not_end_at_zero():
    with pytest.raises(ValueError, match="ending at 0"):
        sample(toy, make_noise(SHAPE, 0), torch.tensor([1.0, 0.5]))


def test_sample_refuses_a_model_output_of_the_wrong_shape():
    with pytest.raises(ValueError, match="model_fn returned shape"):
        sample(lambda x, s: x[:, :, :1], make_noise(SHAPE, 0), shifted_sigmas(2))
