"""The frame-level sampler: schedules, conditioning, the Euler loop and noise."""

from __future__ import annotations

import pytest
import torch

from pusa_batch.sampler import (
    ConditioningSpec,
    frame_scale,
    initial_latents,
    linear_quadratic_sigmas,
    make_noise,
    shifted_sigmas,
)

SHAPE = (1, 4, 6, 3, 5)  # B, C, F, H, W


def per_frame(sigma: torch.Tensor) -> torch.Tensor:
    return sigma[:, None, :, None, None]


def spec(indices, multipliers, seed=7, shape=SHAPE) -> ConditioningSpec:
    b, c, _, h, w = shape
    clean = make_noise((b, c, len(indices), h, w), seed)
    return ConditioningSpec(tuple(indices), clean, tuple(multipliers))


# --- schedules -------------------------------------------------------------------------------


def test_shifted_sigmas_match_pusa_v1_table_for_10_steps():
    expected = [1000, 978.3, 952.4, 921.1, 882.4, 833.3, 769.2, 681.8, 555.6, 357.1]
    t = shifted_sigmas(10, shift=5.0)[:-1] * 1000
    assert torch.allclose(t, torch.tensor(expected), atol=0.05)


def test_shifted_sigmas_match_pusa_v1_table_for_4_steps():
    t = shifted_sigmas(4)[:-1] * 1000
    assert torch.allclose(t, torch.tensor([1000, 937.5, 833.3, 625.0]), atol=0.05)


def test_shifted_sigmas_end_exactly_at_zero_and_have_steps_plus_one_entries():
    sigmas = shifted_sigmas(30)
    assert sigmas.shape == (31,)
    assert sigmas[-1].item() == 0.0
    assert sigmas[0].item() == 1.0


def test_shifted_sigmas_30_steps_end_like_pusa():
    t = shifted_sigmas(30)[-5:-1] * 1000
    assert torch.allclose(t, torch.tensor([434.8, 357.1, 263.2, 147.1]), atol=0.05)


def test_linear_quadratic_sigmas_match_mochi_for_30_steps():
    s = linear_quadratic_sigmas(30)
    assert s.shape == (31,)
    assert s[0].item() == 1.0 and s[-1].item() == 0.0
    assert s[1].item() == pytest.approx(0.99833, abs=1e-4)
    assert s[15].item() == pytest.approx(0.975, abs=1e-6)
    assert s[16].item() == pytest.approx(0.9691, abs=1e-4)
    assert s[17].item() == pytest.approx(0.9548, abs=1e-4)
    assert s[-3].item() == pytest.approx(0.2398, abs=1e-4)
    assert s[-2].item() == pytest.approx(0.1241, abs=1e-4)


def test_linear_quadratic_sigmas_fall_linearly_then_faster():
    s = linear_quadratic_sigmas(30)
    linear_steps = s[:16].diff()
    assert torch.allclose(linear_steps, torch.full_like(linear_steps, -0.025 / 15), atol=1e-6)
    assert (s[16:].diff() < s[:16].diff().min()).all()


def test_linear_quadratic_sigmas_one_step_goes_straight_to_zero():
    assert linear_quadratic_sigmas(1).tolist() == [1.0, 0.0]


# --- conditioning spec -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("indices", "multipliers", "n_clean", "fragment"),
    [
        ((0, 1), (0.2,), 2, "multipliers"),
        ((0, 1), (0.2, 0.3), 1, "clean"),
        ((2, 2), (0.2, 0.3), 2, "unique"),
        ((0,), (1.5,), 1, "[0, 1]"),
        ((0,), (-0.1,), 1, "[0, 1]"),
    ],
)
def test_conditioning_spec_rejects_inconsistent_input(indices, multipliers, n_clean, fragment):
    clean = torch.zeros(1, 4, n_clean, 3, 5)
    with pytest.raises(ValueError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        ConditioningSpec(indices, clean, multipliers)


def test_conditioning_that_leaves_no_free_frame_is_refused():
    full = spec(range(6), [0.0] * 6)
    with pytest.raises(ValueError, match="leave at least one free"):
        frame_scale(6, full)


def test_conditioning_index_outside_the_clip_is_refused():
    with pytest.raises(ValueError, match=r"0\.\.5"):
        frame_scale(6, spec([6], [0.0]))


def test_frame_scale_is_one_for_free_frames_and_m_for_conditioned():
    scale = frame_scale(6, spec([0, 4], [0.0, 0.5]))
    assert scale.tolist() == [0.0, 1.0, 1.0, 1.0, 0.5, 1.0]


# --- initial latents -------------------------------------------------------------------------


def test_initial_latents_write_clean_frames_and_noise_them_once_with_the_same_noise():
    noise = make_noise(SHAPE, 0)
    cond = spec([0, 3], [0.0, 0.4])
    sigmas = shifted_sigmas(8)
    x = initial_latents(noise, sigmas, cond)
    assert torch.equal(x[:, :, 0], cond.clean[:, :, 0])
    expected = (1 - 0.4) * cond.clean[:, :, 1] + 0.4 * noise[:, :, 3]
    assert torch.allclose(x[:, :, 3], expected, atol=1e-6)
    free = [1, 2, 4, 5]
    assert torch.equal(x[:, :, free], noise[:, :, free])


def test_initial_latents_scale_the_noise_by_the_first_sigma():
    noise = make_noise(SHAPE, 0)
    cond = spec([2], [0.5])
    sigmas = torch.tensor([0.6, 0.3, 0.0])
    x = initial_latents(noise, sigmas, cond)
    expected = (1 - 0.3) * cond.clean[:, :, 0] + 0.3 * noise[:, :, 2]
    assert torch.allclose(x[:, :, 2], expected, atol=1e-6)


def test_initial_latents_do_not_modify_the_noise_tensor():
    noise = make_noise(SHAPE, 0)
    before = noise.clone()
    initial_latents(noise, shifted_sigmas(4), spec([0], [0.3]))
    assert torch.equal(noise, before)


def test_initial_latents_refuse_clean_latents_of_another_shape():
    noise = make_noise(SHAPE, 0)
    wrong = ConditioningSpec((0,), torch.zeros(1, 4, 1, 3, 6), (0.0,))
    with pytest.raises(ValueError, match="do not match noise"):
        initial_latents(noise, shifted_sigmas(4), wrong)


def test_initial_latents_refuse_clean_latents_for_another_batch_size():
    noise = make_noise((3, 4, 6, 3, 5), 0)
    wrong = ConditioningSpec((0,), torch.zeros(2, 4, 1, 3, 5), (0.0,))
    with pytest.raises(ValueError, match="do not match noise"):
        initial_latents(noise, shifted_sigmas(4), wrong)
