"""Our pipelines' final latents equal an independent restatement of the official Pusa loops.

`upstream_reference.py` restates Yaofang-Liu/Pusa-VidGen's loops (8a8c4f5) from reading them;
here each family's tiny twin runs every task x steps 4/10/30 x guidance 1/3 both ways, from the
same prompts, conditioning latents and noise, and the final latents agree to 1e-5 (fp32). The
upstream behaviours we deliberately do not share (docs/parity.md) each get a test that shows
they are the only difference where they apply. docs/parity.md's tables come from the same code:
`python tests/upstream_reference.py --table > docs/parity.md`.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch
import upstream_reference as ref

from pusa_batch.sampler import linear_quadratic_sigmas, shifted_sigmas, wan_timesteps

DOC = Path(__file__).resolve().parents[1] / "docs" / "parity.md"
GRID = [(s, g) for s in ref.STEPS for g in ref.GUIDANCE]


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> ref.Media:
    return ref.make_media(tmp_path_factory.mktemp("parity-media"))


@pytest.fixture(scope="module")
def pipes(cache) -> dict:
    return {family: ref.load_tiny(family) for family in ref.FAMILIES}


def run_cell(pipe, media, task, steps, guidance, **reference_options) -> tuple:
    item = ref.task_item(pipe.spec, task, steps, guidance, media)
    prepared = pipe.prepare(item)
    return ref.ours(pipe, prepared), ref.reference(pipe, item, prepared, **reference_options)


# --- the reference's own schedules ------------------------------------------------------------


def test_reference_wan_timesteps_are_the_published_tables():
    """research/pusa-method.md 1.1, computed there from the formula: N = 4 and N = 10."""
    _, t4 = ref.flow_match_schedule(4, 5.0)
    _, t10 = ref.flow_match_schedule(10, 5.0)
    assert t4.tolist() == pytest.approx([1000, 937.5, 833.33, 625.0], abs=0.01)
    table = [1000, 978.3, 952.4, 921.1, 882.4, 833.3, 769.2, 681.8, 555.6, 357.1]
    assert t10.tolist() == pytest.approx(table, abs=0.05)


def test_reference_mochi_schedule_is_the_published_table():
    sigmas = ref.mochi_sigma_schedule(30)
    assert len(sigmas) == 31 and sigmas[0] == 1.0 and sigmas[-1] == 0.0
    assert sigmas[15] == pytest.approx(0.975)
    head, tail = [1.0, 0.9983], [0.2398, 0.1241, 0.0]
    assert sigmas[:2] + sigmas[-3:] == pytest.approx(head + tail, abs=1e-4)


def test_our_schedules_are_the_references_bit_for_bit():
    for steps in range(1, 201):
        sigmas, timesteps = ref.flow_match_schedule(steps, 5.0)
        ours = shifted_sigmas(steps, 5.0)
        assert torch.equal(ours[:-1], sigmas) and ours[-1] == 0, steps
        if steps > 1:  # upstream's schedule divides by N // 2 = 0 at one step; ours is 1, 0
            mochi = torch.tensor(ref.mochi_sigma_schedule(steps), dtype=torch.float32)
            assert torch.equal(linear_quadratic_sigmas(steps), mochi), steps


@pytest.mark.parametrize("multiplier", [None, 0.0, 0.2, 0.35])
def test_our_dit_timesteps_are_upstreams_at_every_step_count(multiplier):
    """The timestep vectors the two loops build, without a model: steps 1..300, one conditioned
    frame (or none: the T2V rule)."""
    for steps in range(1, 301):
        sigmas, timesteps = ref.flow_match_schedule(steps, 5.0)
        t = timesteps[:, None].expand(steps, 3).to(torch.bfloat16)
        scale = torch.ones(3)
        if multiplier is not None:
            t[:, 1] = t[:, 1] * multiplier
            t = t.to(torch.long).to(torch.bfloat16)
            scale[1] = multiplier
        conditioned = multiplier is not None
        sigma = shifted_sigmas(steps, 5.0)[:-1, None] * scale  # the sampler's frame sigmas
        given = scale if conditioned else None  # what the Wan pipeline passes
        ours = wan_timesteps(sigma, conditioned=conditioned, multipliers=given)
        assert torch.equal(ours, t.float()), steps


# --- the grid ----------------------------------------------------------------------------------


@pytest.mark.parametrize("task", ref.TASK_ORDER)
@pytest.mark.parametrize("family", list(ref.FAMILIES))
def test_final_latents_match_the_upstream_loop(pipes, media, family, task):
    """One test per family x task; its six cells (steps x guidance) all within 1e-5."""
    diffs = {}
    for steps, g in GRID:
        ours, upstream = run_cell(pipes[family], media, task, steps, g)
        assert ours.shape == upstream.shape and upstream.dtype == torch.float32
        diffs[steps, g] = ref.max_diff(ours, upstream)
    assert max(diffs.values()) <= ref.TOLERANCE, diffs


@pytest.mark.parametrize("task", ["t2v", "start_end", "extend"])
@pytest.mark.parametrize("family", list(ref.FAMILIES))
def test_numerics_upstream_matches_the_upstream_bf16_start(pipes, media, family, task):
    """`numerics = "upstream"` against the reference in its scripts' bf16 start (the full grid is
    in docs/parity.md)."""
    pipe = ref.with_options(pipes[family], numerics="upstream")
    ours, upstream = run_cell(pipe, media, task, 10, 3.0, bf16_start=True)
    assert ref.max_diff(ours, upstream) <= ref.TOLERANCE


@pytest.mark.parametrize("family", ["wan2.1", "wan2.2"])
def test_a_multiplied_timestep_on_a_bf16_tie_rounds_as_upstream(pipes, media, family):
    """11 steps, m = 0.35: at the step with bf16 t = 740, 740 * 0.35 = 259 is a bf16 tie (260)
    that sigma_f / sigma_k instead of 0.35 would round to 258."""
    pipe = pipes[family]
    item = ref.task_item(pipe.spec, "i2v", 11, 3.0, media)
    item = dataclasses.replace(item, noise_multipliers=(0.35,))
    prepared = pipe.prepare(item)
    low_noise = pipe.experts["transformer_2" if family == "wan2.2" else "transformer"]
    seen = []
    hook = low_noise.register_forward_pre_hook(lambda m, args: seen.append(args[1][0, 0].item()))
    try:
        ours = ref.ours(pipe, prepared)
    finally:
        hook.remove()
    assert 260.0 in seen and 258.0 not in seen
    assert ref.max_diff(ours, ref.reference(pipe, item, prepared)) <= ref.TOLERANCE


# --- the deliberate differences, each where it applies -------------------------------------


def test_a_small_multiplier_freezes_upstream_once_its_timestep_truncates_to_zero(pipes, media):
    """Upstream: a conditioned frame with bf16(t_k) * m < 1 gets DiT timestep 0 and stops moving
    (flow_match_pusa_v2v.py:74-77). Ours keeps following m * sigma. With m = 0.005 over 30 steps
    that is the last step only (t = 147): only that frame differs, and without that one rule the
    reference matches everywhere."""
    pipe = pipes["wan2.1"]
    item = ref.task_item(pipe.spec, "i2v", 30, 1.0, media)
    item = dataclasses.replace(item, noise_multipliers=(0.005,))
    prepared = pipe.prepare(item)
    ours = ref.ours(pipe, prepared)
    upstream = ref.reference(pipe, item, prepared)
    without = ref.reference(pipe, item, prepared, quirks=ref.QUIRKS - {"zero_timestep_freezes"})
    per_frame = (ours - upstream).abs().amax(dim=(0, 1, 3, 4))
    assert per_frame[0] > 1e-4 and float(per_frame[1:].max()) <= ref.TOLERANCE
    assert ref.max_diff(ours, without) <= ref.TOLERANCE


def test_from_60_steps_upstream_steps_with_a_neighbouring_sigma(pipes, media):
    """Upstream's scheduler finds the step again from the bf16 timestep; at 60 steps step 4
    (t = 985.9, bf16 984) comes out as step 5 (t = 982.1, nearer 984), so that step moves by
    sigma_6 - sigma_5 and the steps no longer add up to 1. We step on the schedule itself.
    Without that one rule the reference matches."""
    pipe = pipes["wan2.1"]
    ours, upstream = run_cell(pipe, media, "t2v", 60, 1.0)
    _, without = run_cell(pipe, media, "t2v", 60, 1.0, quirks=ref.QUIRKS - {"bf16_step_lookup"})
    assert ref.max_diff(ours, upstream) > 1e-4
    assert ref.max_diff(ours, without) <= ref.TOLERANCE


def test_upstream_v2v_ignores_a_last_latent_given_as_minus_one(pipes, media):
    """Upstream V2V slices latents[:, :, i:i+1]: for i = -1 that is empty, so the last latent is
    never written nor noised, yet its timestep and step are scaled by m. Our plans name latents
    0..F-1 only, so we condition it; the reference given F-1 agrees with us."""
    pipe = pipes["wan2.1"]
    item = ref.task_item(pipe.spec, "complete", 4, 1.0, media)
    prepared = pipe.prepare(item)
    c = prepared.cond
    assert c.latent_index[-1] == 4  # complete: latents 0 and 4 of 5
    ours = ref.ours(pipe, prepared)
    kwargs = dict(
        seed=item.seed, shape=tuple(prepared.noise.shape), steps=4, shift=item.shift,
        guidance=1.0, positive=prepared.positive, negative=None, loop="v2v",
    )  # fmt: skip
    dit = [pipe.experts["transformer"]]
    with torch.inference_mode():
        normalised = ref.wan_upstream(dit, cond=(c.latent_index, c.clean, c.multipliers), **kwargs)
        minus_one = ref.wan_upstream(dit, cond=((0, -1), c.clean, c.multipliers), **kwargs)
    assert ref.max_diff(ours, normalised) <= ref.TOLERANCE
    assert ref.max_diff(ours[:, :, 4], minus_one[:, :, 4]) > 0.1


# --- the published table -----------------------------------------------------------------------


def test_docs_parity_lists_every_cell_within_tolerance():
    text = DOC.read_text(encoding="utf-8")
    assert "python tests/upstream_reference.py --table > docs/parity.md" in text
    rows = re.findall(r"^\| (wan2\.1|wan2\.2|mochi) \| (\w+) \|(.*)\|$", text, re.MULTILINE)
    first = {(f, t): cells for f, t, cells in rows[: len(ref.FAMILIES) * len(ref.TASK_ORDER)]}
    assert set(first) == {(f, t) for f in ref.FAMILIES for t in ref.TASK_ORDER}
    for cells in first.values():
        values = [float(c) for c in cells.split("|")]
        assert len(values) == len(GRID) and max(values) <= ref.TOLERANCE
