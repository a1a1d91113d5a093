"""A manifest built by the CLI builders runs end to end on the tiny pipeline, as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "pipelines" / "tiny.toml"


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pusa_batch", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def test_a_folder_swept_over_seeds_generates_one_video_per_image_and_seed(tmp_path):
    photos = tmp_path / "photos" / "beach"
    photos.mkdir(parents=True)
    for name, colour in [("crab", (200, 40, 30)), ("wave", (30, 90, 220))]:
        Image.fromarray(np.full((40, 56, 3), colour, np.uint8)).save(photos / f"{name}.png")
        (photos / f"{name}.txt").write_text(f"a {name} on the beach, slow motion\n")
    base, swept, out = tmp_path / "base.csv", tmp_path / "swept.parquet", tmp_path / "out"

    built = cli("manifest", "from-folder", tmp_path / "photos", "-o", base, "--pipeline", TINY)
    assert built.returncode == 0, built.stderr
    assert "wrote 2 row(s)" in built.stdout
    sweep = cli("manifest", "sweep", base, "--grid", "seed=0..1", "-o", swept, "--pipeline", TINY)
    assert sweep.returncode == 0, sweep.stderr
    ran = cli("run", swept, "-o", out, "--pipeline", TINY, "--workers", "1")
    assert ran.returncode == 0, ran.stderr[-3000:]

    ids = set(pd.read_parquet(swept)["id"])
    assert len(ids) == 4
    assert {p.stem for p in (out / "videos").glob("*.mp4")} == ids
    for item_id in ids:
        meta = json.loads((out / "items" / f"{item_id}.json").read_text())
        assert meta["item"]["task"] == "i2v" and meta["item"]["prompt"].endswith("slow motion")
        assert meta["item"]["seed"] in (0, 1)
