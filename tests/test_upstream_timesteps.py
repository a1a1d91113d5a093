"""The timesteps our Wan DiT receives, step by step, equal those of the official Pusa pipelines.

The reference below restates the upstream loops (Yaofang-Liu/Pusa-VidGen at 8a8c4f5) from
reading them, not from our sampler: DiffSynth's scheduler gives `timesteps = 1000 * sigmas` in
fp32; each step repeats it over the latent frames and casts to the pipeline dtype, bf16
(`wan_video_pusa.py` ~467 for T2V); the conditioned pipelines multiply each conditioned frame's
bf16 timestep by its multiplier (a Python float), then cast every frame to long and back to
bf16 (`wan_video_pusa_multi_frames.py` ~488-505).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pipeline_support import make_item

from pusa_batch.pipelines import load_pipeline
from pusa_batch.pipelines.spec import load_pipeline_spec
from pusa_batch.sampler import shifted_sigmas

TINY = Path(__file__).resolve().parents[1] / "pipelines" / "tiny.toml"


def upstream_timesteps(sigmas, frames: int, multipliers: dict[int, float] | None) -> list:
    steps = []
    for timestep in sigmas[:-1].float() * 1000.0:  # the scheduler's fp32 timesteps
        t = timestep.unsqueeze(0).unsqueeze(1).repeat(1, frames).to(torch.bfloat16)
        if multipliers is None:  # the T2V pipeline stops here
            steps.append(t.float()[0].tolist())
            continue
        for index, multiplier in multipliers.items():
            t[:, index] = t[:, index] * multiplier
        steps.append(t.to(torch.long).to(torch.bfloat16).float()[0].tolist())
    return steps


@pytest.fixture(scope="module")
def pipe(cache):
    return load_pipeline(load_pipeline_spec(TINY))


def received_timesteps(pipe, item) -> list:
    seen = []
    model = pipe.experts["transformer"]
    hook = model.register_forward_pre_hook(lambda m, args: seen.append(args[1][0].tolist()))
    try:
        pipe.sample(pipe.prepare(item))
    finally:
        hook.remove()
    return seen


@pytest.mark.parametrize("steps", [4, 10, 30])
def test_t2v_timesteps_match_the_upstream_t2v_loop(pipe, steps):
    item = make_item(pipe.spec, num_frames=9, height=32, width=32, steps=steps, guidance_scale=1.0)
    expected = upstream_timesteps(shifted_sigmas(steps, item.shift), 3, None)
    assert received_timesteps(pipe, item) == expected


@pytest.mark.parametrize("steps", [4, 10, 30])
@pytest.mark.parametrize("multiplier", [0.0, 0.3])
def test_conditioned_timesteps_match_the_upstream_multi_frame_loop(pipe, image, steps, multiplier):
    item = make_item(
        pipe.spec, task="i2v", image=image, num_frames=9, height=32, width=32, steps=steps,
        guidance_scale=1.0, cond_frames=(0,), noise_multipliers=(multiplier,),
    )  # fmt: skip
    expected = upstream_timesteps(shifted_sigmas(steps, item.shift), 3, {0: multiplier})
    assert received_timesteps(pipe, item) == expected
