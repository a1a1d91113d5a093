"""The example manifest `manifests/all_tasks.parquet` (one row per task) runs unchanged on every
tiny pipeline: Wan2.1 (r = 4), Wan2.2 (two experts) and Mochi (r = 6), each item giving the
frames and size its pipeline's defaults ask for."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pusa_batch.manifest.read import iter_items, validate_manifest
from pusa_batch.pipelines import load_pipeline
from pusa_batch.pipelines.base import Pipeline
from pusa_batch.pipelines.spec import load_pipeline_spec

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = str(ROOT / "manifests" / "all_tasks.parquet")
PIPELINES = ("tiny.toml", "tiny-wan22.toml", "tiny-mochi.toml")


@pytest.fixture(scope="module", autouse=True)
def tiny_cache(cache) -> Path:
    return cache


@pytest.fixture(scope="module", params=PIPELINES)
def pipe(request) -> Pipeline:
    return load_pipeline(load_pipeline_spec(ROOT / "pipelines" / request.param))


def test_the_manifest_validates_on_every_tiny_pipeline(pipe):
    report = validate_manifest(MANIFEST, pipe.spec)
    assert report.problems == []
    assert report.rows == 8


def test_every_task_generates_the_frames_and_size_of_its_pipeline(pipe):
    d = pipe.spec.defaults
    items = list(iter_items(MANIFEST, pipe.spec))
    assert sorted(item.task for item in items) == sorted(
        ["t2v", "i2v", "start_end", "keyframes", "extend", "complete", "transition", "loop"]
    )
    for item in items:
        assert (item.num_frames, item.height, item.width) == (d.num_frames, d.height, d.width)
        frames = pipe.generate(item)
        assert frames.shape == (d.num_frames, d.height, d.width, 3), item.id
        assert frames.dtype == np.uint8


def test_every_conditioned_task_conditions_some_but_not_all_latents(pipe):
    for item in iter_items(MANIFEST, pipe.spec):
        meta = pipe.conditioning_metadata(item)
        n = len(meta["latent_indices"])
        assert (n == 0) == (item.task == "t2v"), item.id
        assert n < meta["latent_frames"], item.id
