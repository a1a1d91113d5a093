"""Helpers for the export and gallery tests (no tests here): output roots committed through
`Store.commit` with real mp4s and markers shaped like the worker's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from pusa_batch.item import Item
from pusa_batch.store.store import Store
from pusa_batch.tasks import plan_conditioning
from pusa_batch.video import encode_mp4

SCRIPT_PROMPT = 'a <script>alert("x")</script> & "quotes"'


def frames(seed: int, n: int = 9, height: int = 32, width: int = 32) -> np.ndarray:
    """A moving colour gradient (never blank), different per seed."""
    rng = np.random.default_rng(seed)
    base = rng.integers(40, 200, size=3)
    y, x = np.mgrid[0:height, 0:width]
    out = np.empty((n, height, width, 3), np.uint8)
    for t in range(n):
        for c in range(3):
            out[t, :, :, c] = (base[c] + 2 * x + 3 * y + 5 * t * (c + 1)) % 256
    return out


def item_dict(item_id: str, prompt: str, seed: int, task: str = "t2v", **fields) -> dict:
    values = {
        "id": item_id,
        "row": fields.pop("row", 1),
        "task": task,
        "prompt": prompt,
        "negative_prompt": "blurry",
        "images": (),
        "video": None,
        "video_b": None,
        "cond_frames": None,
        "noise_multipliers": None,
        "num_frames": 9,
        "height": 32,
        "width": 32,
        "fps": 8,
        "seed": seed,
        "steps": 3,
        "guidance_scale": 3.0,
        "shift": 5.0,
    }
    image = fields.pop("image", None)  # the manifest's one-image column, as `images`
    if image is not None:
        values["images"] = (image,)
    values.update(fields)
    return Item(**values).to_dict()


def commit_item(store: Store, item: dict, video: bytes | None = None) -> bytes:
    """Commit one item as the worker does (marker fields included); return the mp4 bytes."""
    if video is None:
        video = encode_mp4(frames(item["seed"], item["num_frames"], item["height"]), item["fps"])
    n_images = len(item["images"])
    plan = plan_conditioning(
        item["task"],
        num_frames=item["num_frames"],
        temporal_factor=4,
        cond_frames=item["cond_frames"],
        noise_multipliers=item["noise_multipliers"],
        n_images=n_images,
    )
    meta = {
        "item": item,
        "fingerprint": f"fp-{item['id']}",
        "pipeline": {"name": "tiny", "identity": "abc123"},
        "conditioning": plan.to_metadata(),
        "frames": item["num_frames"],
        "status": "done",
        "attempts": 1,
        "worker": "w0",
        "node": "host",
        "timings": {"sample": 0.5, "decode": 0.1},
    }
    store.commit(item["id"], video, meta)
    return video


def record_failure(store: Store, item: dict, error_type: str, message: str) -> None:
    store.record_failure(
        item["id"],
        {
            "error_type": error_type,
            "message": message,
            "traceback": f"Traceback ...\n{error_type}: {message}",
            "stage": "prepare",
            "attempts": 3,
            "item": item,
        },
    )


def write_png(path: Path, seed: int, size: int = 32) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def build_root(folder: Path) -> Store:
    """A root with: three videos of one prompt (seeds 3, 1, 1), a prompt with a slash, an i2v
    item with a dotted id and a local input image, a failed item, an orphan video and a done
    item whose video was truncated afterwards."""
    folder.mkdir(parents=True, exist_ok=True)
    image = write_png(folder / "input.png", 7)
    store = Store(str(folder / "out"))
    commit_item(store, item_dict("cat-c", "a red cat", 3, row=1))
    commit_item(store, item_dict("cat-b", "a red cat", 1, row=2))
    commit_item(store, item_dict("cat-a", "a red cat", 1, row=3))
    commit_item(store, item_dict("slash", "day/night cycle", 5, row=4))
    commit_item(store, item_dict("clip.v2", SCRIPT_PROMPT, 9, task="i2v", image=str(image), row=5))
    record_failure(
        store,
        item_dict("broken", "a <b>bold</b> failure", 11, task="i2v", image="missing.png", row=6),
        "InputMediaError",
        "missing.png: file not found. Check the path in the manifest.",
    )
    (folder / "out" / "videos" / "orphan.mp4").write_bytes(encode_mp4(frames(20), 8))
    commit_item(store, item_dict("short", "a truncated video", 12, row=7))
    store.compact_index()  # the index now lists "short" as done: only its size betrays it
    short = folder / "out" / "videos" / "short.mp4"
    short.write_bytes(short.read_bytes()[:100])
    return store


DONE_IDS = {"cat-a", "cat-b", "cat-c", "slash", "clip.v2"}
