"""item_fingerprint: changes with everything that changes the video, and nothing else."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import fsspec
import pytest
from PIL import Image

from pusa_batch.manifest.read import SAMPLER_VERSION, content_hash, item_fingerprint, iter_items

IDENTITY = "wan2.1-tiny-abc"


@pytest.fixture
def item(tmp_path: Path):
    Image.new("RGB", (16, 16), (1, 2, 3)).save(tmp_path / "a.png")
    Image.new("RGB", (16, 16), (9, 9, 9)).save(tmp_path / "b.png")
    (tmp_path / "m.csv").write_text(
        "id,task,prompt,images,cond_frames,noise_multipliers\n"
        'k,keyframes,a day,"a.png,b.png","0,-1","0.2,0.5"\n'
    )
    return next(iter_items(str(tmp_path / "m.csv")))


CHANGES = {
    "prompt": "another day",
    "negative_prompt": "blurry",
    "task": "start_end",
    "cond_frames": (0, 40),
    "noise_multipliers": (0.2, 0.6),
    "num_frames": 77,
    "height": 480,
    "width": 832,
    "fps": 16,
    "seed": 1,
    "steps": 4,
    "guidance_scale": 1.0,
    "shift": 3.0,
}


@pytest.mark.parametrize(("field", "value"), CHANGES.items(), ids=list(CHANGES))
def test_changing_one_setting_changes_the_fingerprint(item, field, value):
    assert getattr(item, field) != value
    changed = replace(item, **{field: value})
    assert item_fingerprint(changed, IDENTITY) != item_fingerprint(item, IDENTITY)


def test_the_pipeline_identity_is_part_of_it(item):
    assert item_fingerprint(item, "other-weights") != item_fingerprint(item, IDENTITY)


def test_image_order_is_part_of_it(item):
    swapped = replace(item, images=item.images[::-1])
    assert item_fingerprint(swapped, IDENTITY) != item_fingerprint(item, IDENTITY)


def test_input_content_is_part_of_it(item):
    before = item_fingerprint(item, IDENTITY)
    Image.new("RGB", (16, 16), (200, 0, 0)).save(item.images[0])
    assert item_fingerprint(item, IDENTITY) != before


def test_the_sampler_version_is_part_of_it(item, monkeypatch):
    before = item_fingerprint(item, IDENTITY)
    monkeypatch.setattr(
        "pusa_batch.manifest.fingerprint.SAMPLER_VERSION", SAMPLER_VERSION + "-next"
    )
    assert item_fingerprint(item, IDENTITY) != before


def test_row_number_and_id_are_not(item):
    moved = replace(item, row=item.row + 10, id="renamed")
    assert item_fingerprint(moved, IDENTITY) == item_fingerprint(item, IDENTITY)


def test_a_negative_position_equals_its_positive_spelling(item):
    spelled = replace(item, cond_frames=(0, item.num_frames - 1))
    assert item_fingerprint(spelled, IDENTITY) == item_fingerprint(item, IDENTITY)


def test_file_mtime_alone_does_not_change_it(item):
    before = item_fingerprint(item, IDENTITY)
    os.utime(item.images[0], (1_000_000, 1_000_000))
    assert item_fingerprint(item, IDENTITY) == before


def test_moving_the_inputs_does_not_change_it(item, tmp_path):
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    paths = []
    for path in item.images:
        target = moved / Path(path).name
        target.write_bytes(Path(path).read_bytes())
        paths.append(str(target))
    relocated = replace(item, images=tuple(paths))
    assert item_fingerprint(relocated, IDENTITY) == item_fingerprint(item, IDENTITY)


def test_row_order_in_the_manifest_does_not_change_it(tmp_path):
    (tmp_path / "a.csv").write_text("task,prompt,seed\nt2v,x,1\nt2v,y,2\n")
    (tmp_path / "b.csv").write_text("task,prompt,seed\nt2v,y,2\nt2v,x,1\n")
    first = {i.id: item_fingerprint(i, IDENTITY) for i in iter_items(str(tmp_path / "a.csv"))}
    second = {i.id: item_fingerprint(i, IDENTITY) for i in iter_items(str(tmp_path / "b.csv"))}
    assert first == second


def test_content_hash_is_the_sha256_of_the_bytes_for_urls_too():
    import hashlib

    with fsspec.open("memory://inputs/x.bin", "wb") as f:
        f.write(b"pusa" * 1000)
    assert content_hash("memory://inputs/x.bin") == hashlib.sha256(b"pusa" * 1000).hexdigest()


def test_a_custom_file_hasher_is_used(item):
    seen: list[str] = []

    def hasher(path: str) -> str:
        seen.append(path)
        return "same"

    item_fingerprint(item, IDENTITY, hash_file=hasher)
    assert seen == list(item.images)
