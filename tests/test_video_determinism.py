"""An mp4 depends on its frames alone, not on what the process encoded before it.

The frames are the tiny pipeline's own decoded videos: with libx264's macroblock-tree rate
control on, exactly these came out as different bitstreams depending on the encodes before them
(one worker and two workers then made different videos from identical latents).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import av
import numpy as np
import pytest
from pipeline_support import make_item

from pusa_batch.pipelines import load_pipeline
from pusa_batch.pipelines.spec import load_pipeline_spec
from pusa_batch.video import decode_mp4, encode_mp4

TINY = Path(__file__).resolve().parents[1] / "pipelines" / "tiny.toml"
PROMPTS = {"sea": ("the sea at night", 32, 48, 3), "cat": ("a red cat", 32, 32, 1)}
PROMPTS["dog"] = ("a blue dog", 32, 32, 2)


@pytest.fixture(scope="module")
def tiny_videos(cache) -> dict[str, np.ndarray]:
    spec = load_pipeline_spec(TINY)
    pipe = load_pipeline(spec)
    videos = {}
    for name, (prompt, height, width, seed) in PROMPTS.items():
        item = make_item(
            spec,
            id=name,
            prompt=prompt,
            height=height,
            width=width,
            seed=seed,
            num_frames=9,
            steps=3,
        )
        videos[name] = pipe.decode_item(item, pipe.sample(pipe.prepare(item)))
    return videos


def churn_the_heap(rng: np.random.Generator) -> None:
    """Allocate and free frame buffers full of random bytes, as other work in a worker would."""
    frames = []
    for width, height in [(32, 32), (48, 32), (64, 64), (128, 96), (256, 256)] * 3:
        frame = av.VideoFrame(width, height, "yuv420p")
        for plane in frame.planes:
            plane.update(rng.integers(0, 256, plane.buffer_size, dtype=np.uint8).tobytes())
        frames.append(frame)
    del frames


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_the_same_frames_encode_to_the_same_bytes_whatever_was_encoded_before(tiny_videos):
    rng = np.random.default_rng(1)
    seen: dict[str, set[str]] = {name: set() for name in tiny_videos}
    for turn in range(45):
        name = list(tiny_videos)[turn % len(tiny_videos)]
        churn_the_heap(rng)
        seen[name].add(sha(encode_mp4(tiny_videos[name], 16)))
    assert {name: len(hashes) for name, hashes in seen.items()} == dict.fromkeys(seen, 1)


def test_an_encoded_tiny_video_decodes_to_its_frame_count_and_size(tiny_videos):
    frames, fps = decode_mp4(encode_mp4(tiny_videos["sea"], 16))
    assert frames.shape == tiny_videos["sea"].shape and fps == 16
