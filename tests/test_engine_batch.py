"""`run --batch-size`: items sharing a batch key are sampled together and match batch 1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pusa_batch.manifest.read import iter_items
from pusa_batch.pipelines import load_pipeline
from pusa_batch.pipelines.spec import load_pipeline_spec
from pusa_batch.video import decode_mp4

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "pipelines" / "tiny.toml"


@pytest.fixture(scope="module")
def batched_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("batch")
    manifest = folder / "m.csv"
    # 16 steps: sampling clearly outlasts preparing, so prepared items queue for the sampler
    rows = "".join(f"p{i},t2v,prompt number {i},{i},16\n" for i in range(6))
    manifest.write_text("id,task,prompt,seed,steps\n" + rows)
    out = folder / "out"
    done = subprocess.run(
        [sys.executable, "-m", "pusa_batch", "run", str(manifest), "-o", str(out),
         "--pipeline", str(TINY), "--workers", "1", "--batch-size", "3"],
        capture_output=True, text=True, timeout=600, env={**os.environ},
    )  # fmt: skip
    return manifest, out, done


def test_a_batched_run_generates_every_item(batched_run):
    manifest, out, done = batched_run
    assert done.returncode == 0, done.stderr[-3000:]
    assert {p.stem for p in (out / "videos").glob("*.mp4")} == {f"p{i}" for i in range(6)}


def test_items_waiting_for_the_sampler_share_its_forward(batched_run):
    _, out, _ = batched_run
    batches = [json.loads(p.read_text())["sample_batch"] for p in (out / "items").glob("*.json")]
    assert max(batches) > 1 and max(batches) <= 3


def test_batched_items_look_like_their_batch_1_generation(batched_run):
    manifest, out, _ = batched_run
    spec = load_pipeline_spec(TINY)
    pipeline = load_pipeline(spec)
    for item in iter_items(str(manifest), spec):
        frames, _ = decode_mp4(out / "videos" / f"{item.id}.mp4")
        alone, _ = decode_mp4(_encode(pipeline.generate(item), item.fps))
        assert np.abs(frames.astype(int) - alone).mean() < 1.0  # of 255: codec-level noise


def _encode(frames: np.ndarray, fps: int) -> bytes:
    from pusa_batch.video import encode_mp4

    return encode_mp4(frames, fps)
