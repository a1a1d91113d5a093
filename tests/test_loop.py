"""The loop task closes on its first frame, measured with `video.loop_seam` on the tiny models."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from pusa_batch.manifest.read import iter_items
from pusa_batch.pipelines import load_pipeline
from pusa_batch.pipelines.spec import load_pipeline_spec
from pusa_batch.video import loop_seam

ROOT = Path(__file__).resolve().parents[1]
ALL_TASKS = ROOT / "manifests" / "all_tasks.parquet"


@pytest.fixture(scope="module", params=["tiny.toml", "tiny-mochi.toml"])
def loaded(request):
    spec = load_pipeline_spec(ROOT / "pipelines" / request.param)
    pipeline = load_pipeline(spec)
    loop = next(i for i in iter_items(str(ALL_TASKS), spec) if i.task == "loop")
    return pipeline, loop


def test_a_loops_closing_latent_is_bit_identical_to_its_opening_one(loaded):
    pipeline, loop = loaded
    latents = pipeline.sample(pipeline.prepare(loop))
    assert torch.equal(latents[:, :, 0], latents[:, :, -1])


def test_a_loop_with_multiplier_0_ends_on_its_first_frame(loaded):
    pipeline, loop = loaded
    frames = pipeline.generate(loop)
    seam = loop_seam(frames)
    assert frames.shape[0] == loop.num_frames
    assert seam["first_last_mae"] == 0.0 and seam["first_last_psnr_db"] is None


def test_the_closing_frame_is_no_bigger_a_jump_than_an_ordinary_step(loaded):
    pipeline, loop = loaded
    seam = loop_seam(pipeline.generate(loop))
    assert seam["closing_step_mae"] <= 1.5 * seam["mean_step_mae"]


def test_a_noisier_loop_still_closes_far_better_than_text_to_video(loaded):
    pipeline, loop = loaded
    noisy = dataclasses.replace(loop, noise_multipliers=(0.3, 0.3))
    free = dataclasses.replace(
        loop, task="t2v", images=(), video=None, cond_frames=None,
        noise_multipliers=None,
    )  # fmt: skip
    looped = loop_seam(pipeline.generate(noisy))["first_last_mae"]
    baseline = loop_seam(pipeline.generate(free))["first_last_mae"]
    assert looped < baseline


def test_loop_seam_measures_the_wrap_around_against_ordinary_steps():
    ramp = np.stack([np.full((4, 4, 3), 10 * i, np.uint8) for i in range(5)])
    seam = loop_seam(ramp)
    assert seam["first_last_mae"] == 40.0 and seam["mean_step_mae"] == 10.0
    assert seam["seam_ratio"] == 4.0 and seam["closing_step_mae"] == 10.0


def test_loop_seam_of_identical_ends_has_no_psnr():
    frames = np.stack([np.zeros((2, 2, 3), np.uint8), np.ones((2, 2, 3), np.uint8)] * 2)
    frames[-1] = frames[0]
    assert loop_seam(frames)["first_last_psnr_db"] is None
