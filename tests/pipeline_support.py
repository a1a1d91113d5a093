"""What the pipeline test modules share: a per-session tiny-model cache, input media, and a
resolved `Item` built from a spec's defaults. Import the fixtures into a module to use them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pusa_batch import video
from pusa_batch.item import Item


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """Tiny twins built once per session under the test run's base temp folder."""
    root = tmp_path_factory.getbasetemp() / "pusa-cache"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PUSA_BATCH_CACHE", str(root))
        yield root


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> str:
    """A 120x90 random photo (not the item size, so it is resized and cropped)."""
    rng = np.random.default_rng(7)
    path = tmp_path_factory.mktemp("media") / "photo.png"
    Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)).save(path)
    return str(path)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> str:
    """A 24-frame 64x64 mp4: a bright square moving right."""
    frames = np.zeros((24, 64, 64, 3), dtype=np.uint8)
    for i in range(24):
        frames[i, 20:40, 2 * i : 2 * i + 16] = (200, 120, 40)
    path = tmp_path_factory.mktemp("media") / "clip.mp4"
    path.write_bytes(video.encode_mp4(frames, fps=8))
    return str(path)


def make_item(spec, **changes) -> Item:
    """A t2v item at the spec's defaults, with `changes` applied (`image=p` gives `images=(p,)`)."""
    d = spec.defaults
    fields = {
        "id": "item",
        "row": 1,
        "task": "t2v",
        "prompt": "a red car on a road",
        "negative_prompt": d.negative_prompt,
        "images": (),
        "video": None,
        "video_b": None,
        "cond_frames": None,
        "noise_multipliers": None,
        "num_frames": d.num_frames,
        "height": d.height,
        "width": d.width,
        "fps": d.fps,
        "seed": 1,
        "steps": d.steps,
        "guidance_scale": d.guidance_scale,
        "shift": d.shift,
    }
    image = changes.pop("image", None)  # the manifest's one-image column, as `images`
    if image is not None:
        changes["images"] = (image,)
    return Item(**{**fields, **changes})
