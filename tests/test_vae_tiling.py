"""VAE tiling geometry: upstream Pusa's tiles in the real specs, and the values reach the VAE."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from pusa_batch.errors import PipelineError
from pusa_batch.pipelines import load_pipeline
from pusa_batch.pipelines.spec import load_pipeline_spec, parse_pipeline_spec

pytest_plugins = ["pipeline_support"]
PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"
# Upstream: tile_size (30, 52), tile_stride (15, 26) latents (wan_video_pusa*.py __call__) x 8 px.
UPSTREAM = {
    "vae_tile_height": 240,
    "vae_tile_width": 416,
    "vae_tile_stride_height": 120,
    "vae_tile_stride_width": 208,
}


@pytest.mark.parametrize("name", ["pusa-v1-wan2.1-t2v-14b.toml", "pusa-wan2.2-a14b.toml"])
def test_real_wan_specs_tile_as_upstream_and_hash_the_tiles(name):
    spec = load_pipeline_spec(PIPELINES / name)
    assert spec.options.vae_tiling
    assert {k: getattr(spec.options, k) for k in UPSTREAM} == UPSTREAM
    assert spec._identity_options()["vae_tile"] == [240, 416, 120, 208]


def test_specs_without_tile_sizes_hash_as_before():
    spec = load_pipeline_spec(PIPELINES / "tiny.toml")
    assert "vae_tile" not in spec._identity_options()
    tiled = dataclasses.replace(spec.options, vae_tiling=True)
    assert "vae_tile" not in dataclasses.replace(spec, options=tiled)._identity_options()


def raw(options: dict, family: str = "wan2.1") -> dict:
    return {"family": family, "weights": {"tiny": family}, "options": options}


@pytest.mark.parametrize(
    ("options", "family", "message"),
    [
        ({"vae_tiling": True, "vae_tile_height": 250}, "wan2.1", "multiple of 8"),
        ({"vae_tiling": True, "vae_tile_width": -8}, "wan2.1", "multiple of 8"),
        ({"vae_tile_height": 240}, "wan2.1", "only with vae_tiling = true"),
        ({"vae_tiling": True, "vae_tile_stride_width": 512}, "wan2.1", "would leave gaps"),
        ({"vae_tiling": True, "vae_tile_height": 128}, "wan2.1", "would leave gaps"),
        ({"vae_tiling": True, "vae_tile_height": 240}, "mochi", "only wan pipelines"),
    ],
)
def test_bad_tile_values_are_refused_naming_the_key(options, family, message):
    with pytest.raises(PipelineError, match=message) as info:
        parse_pipeline_spec(raw(options, family), Path("/x/pipe.toml"))
    assert "options.vae_tile" in str(info.value)


@pytest.fixture(scope="module")
def tiled(cache):
    """The tiny Wan pipeline with 32x32 tiles at a 16x16 stride (4 / 2 latents)."""
    spec = load_pipeline_spec(PIPELINES / "tiny.toml")
    tiles = {
        "vae_tile_height": 32,
        "vae_tile_width": 32,
        "vae_tile_stride_height": 16,
        "vae_tile_stride_width": 16,
    }
    options = dataclasses.replace(spec.options, vae_tiling=True, **tiles)
    return load_pipeline(dataclasses.replace(spec, options=options), device="cpu")


def test_the_tile_values_reach_the_vae(tiled):
    vae = tiled.vae
    assert vae.use_tiling
    got = (
        vae.tile_sample_min_height,
        vae.tile_sample_min_width,
        vae.tile_sample_stride_height,
        vae.tile_sample_stride_width,
    )
    assert got == (32, 32, 16, 16)


def test_tiled_encode_and_decode_run_on_frames_larger_than_a_tile(tiled):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (5, 48, 64, 3), dtype=np.uint8)  # 48x64 > 32x32
    latents = tiled.encode_video(pixels)
    assert latents.shape == (1, 16, 2, 6, 8) and torch.isfinite(latents).all()
    frames = tiled.decode(latents)
    assert frames.shape == (5, 48, 64, 3) and frames.dtype == np.uint8
    tiled.vae.use_tiling = False
    try:
        whole = tiled.decode(latents)
    finally:
        tiled.vae.use_tiling = True
    assert not np.array_equal(frames, whole)  # the seams moved: tiles were decoded
