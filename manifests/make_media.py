"""Regenerate the example manifests and their small input media (deterministic).

    python manifests/make_media.py

Writes media/*.png (128x128 pictures), media/*.mp4 (81 frames, 128x128, 16 fps, H.264),
demo.csv (t2v and i2v rows) and all_tasks.parquet (one row per task). Every file is small
(< 100 KB) and committed; the mp4s are committed with `git add -f` because *.mp4 is ignored.

all_tasks.parquet leaves num_frames, height and width empty, so each pipeline's defaults apply,
and its cond_frames fit both temporal factors (Wan r = 4, Mochi r = 6) at the tiny pipelines'
short clips (17 and 19 frames) and at the real ones (81 and 163). Transition lists its frames
(the first two and the last two) because its default, three latents at each end, needs at
least 7 latent frames: 25+ frames for Wan, 37+ for Mochi.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from pusa_batch.video import encode_mp4

HERE = Path(__file__).resolve().parent
SIZE = 128
VIDEO_FRAMES = 81
VIDEO_FPS = 16

PICTURES = {  # name: (background, disc colour, disc centre as fractions)
    "red_ball": ((235, 230, 215), (200, 30, 30), (0.3, 0.6)),
    "blue_sky": ((120, 170, 235), (250, 250, 250), (0.6, 0.3)),
    "sunset": ((250, 150, 70), (250, 220, 90), (0.5, 0.7)),
}


def picture(background, colour, centre) -> Image.Image:
    img = Image.new("RGB", (SIZE, SIZE), background)
    x, y, r = centre[0] * SIZE, centre[1] * SIZE, SIZE // 6
    ImageDraw.Draw(img).ellipse((x - r, y - r, x + r, y + r), fill=colour)
    return img


def moving_square(colour: tuple[int, int, int], direction: int) -> np.ndarray:
    """A square crossing a gradient, one pixel step per frame: easy to see frame order."""
    ramp = np.linspace(40, 200, SIZE, dtype=np.float32)
    frames = np.empty((VIDEO_FRAMES, SIZE, SIZE, 3), dtype=np.uint8)
    frames[:] = np.stack([ramp[None, :].repeat(SIZE, 0)] * 3, axis=-1).astype(np.uint8)
    for t in range(VIDEO_FRAMES):
        x = 8 + t if direction > 0 else SIZE - 32 - t
        frames[t, 48:72, max(0, x) : max(0, x) + 24] = colour
    return frames


DEMO_CSV = """\
id,task,prompt,image,cond_frames,noise_multipliers,seed,num_frames
cat-surfing,t2v,"A cat surfing a wave at sunset, cinematic",,,,0,
city-timelapse,t2v,"Time-lapse of a city at night, light trails",,,,1,
forest-drone,t2v,"Drone shot gliding over a misty pine forest",,,,2,33
ball-rolls,i2v,"The red ball rolls slowly to the right",media/red_ball.png,,,0,
clouds-drift,i2v,"Clouds drift across a blue sky",media/blue_sky.png,0,0.2,0,
sun-sets,i2v,"The sun sinks below the horizon",media/sunset.png,"[0]",[0.3],7,
"""


def all_tasks_table() -> pa.Table:
    rows = [
        ("t2v-1", "t2v", "Waves crash on a rocky shore", None, None, None, None, None, None),
        ("i2v-1", "i2v", "The ball bounces", "media/red_ball.png", None, None, None, [0], [0.2]),
        ("start-end-1", "start_end", "Morning turns to evening", None,
         ["media/blue_sky.png", "media/sunset.png"], None, None, [0, -1], [0.2, 0.5]),
        ("keyframes-1", "keyframes", "A day in three pictures", None,
         ["media/blue_sky.png", "media/red_ball.png", "media/sunset.png"], None, None, None,
         None),
        ("extend-1", "extend", "The square keeps moving", None, None, "media/clip_a.mp4", None,
         [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], None),
        ("complete-1", "complete", "The square crosses the frame", None, None,
         "media/clip_a.mp4", None, None, [0.3, 0.3]),
        ("transition-1", "transition", "One square becomes the other", None, None,
         "media/clip_a.mp4", "media/clip_b.mp4", [0, 1, -2, -1], None),
        ("loop-1", "loop", "A seamless loop of a ball", "media/red_ball.png", None, None, None,
         None, None),
    ]  # fmt: skip
    names = ["id", "task", "prompt", "image", "images", "video", "video_b", "cond_frames",
             "noise_multipliers"]  # fmt: skip
    types = [pa.string()] * 4 + [pa.list_(pa.string())] + [pa.string()] * 2
    types += [pa.list_(pa.int64()), pa.list_(pa.float64())]
    columns = {
        n: pa.array([r[k] for r in rows], t)
        for k, (n, t) in enumerate(zip(names, types, strict=True))
    }
    columns["seed"] = pa.array(range(len(rows)), pa.int64())
    return pa.table(columns)


def main() -> None:
    media = HERE / "media"
    media.mkdir(exist_ok=True)
    for name, (background, colour, centre) in PICTURES.items():
        picture(background, colour, centre).save(media / f"{name}.png", optimize=True)
    (media / "clip_a.mp4").write_bytes(encode_mp4(moving_square((220, 40, 40), +1), VIDEO_FPS))
    (media / "clip_b.mp4").write_bytes(encode_mp4(moving_square((40, 40, 220), -1), VIDEO_FPS))
    (HERE / "demo.csv").write_text(DEMO_CSV)
    pq.write_table(all_tasks_table(), HERE / "all_tasks.parquet")
    for path in sorted([*media.iterdir(), HERE / "demo.csv", HERE / "all_tasks.parquet"]):
        print(f"{path.relative_to(HERE)}  {path.stat().st_size / 1024:.1f} KB")


if __name__ == "__main__":
    main()
