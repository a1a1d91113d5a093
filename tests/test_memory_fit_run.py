"""`run` on a real local Ray with a real worker: under a `[device] memory_gib` cap the item that
cannot fit is refused before it allocates anything, recorded like any item failure, and the
other items are done."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pusa_batch.engine.config import RunConfig
from pusa_batch.engine.run import run
from pusa_batch.engine.status import read_status

TINY = Path(__file__).resolve().parents[1] / "pipelines" / "tiny.toml"
ROWS = [
    "id,task,prompt,num_frames,height,width,steps,seed",
    "cat,t2v,a red cat,9,32,32,2,1",
    "big,t2v,a wide sea,81,512,512,2,2",  # ~42 MiB of activations against a 10 MiB cap
    "dog,t2v,a blue dog,9,32,32,2,3",
]


@pytest.fixture(scope="module")
def capped_run(local_ray, tmp_path_factory):
    folder = tmp_path_factory.mktemp("capped")
    pipeline = folder / "capped.toml"
    pipeline.write_text(TINY.read_text() + "\n[device]\nmemory_gib = 0.009765625\n")  # 10 MiB
    manifest = folder / "manifest.csv"
    manifest.write_text("\n".join(ROWS) + "\n")
    output = folder / "out"
    cfg = RunConfig(
        str(manifest), str(output), str(pipeline), workers=1, max_retries=0, status_every_s=0.2
    )
    return output, run(cfg)


def test_the_item_over_the_cap_fails_and_the_others_are_done(capped_run):
    output, summary = capped_run
    assert (summary.generated, summary.failed, summary.exit_code) == (2, 1, 1)
    assert {p.stem for p in (output / "items").glob("*.json")} == {"cat", "dog"}
    (failure,) = summary.failures
    assert (failure["id"], failure["error_type"]) == ("big", "ItemTooLargeError")
    assert "needs about 42 MiB" in failure["message"]


def test_the_refusal_is_recorded_at_prepare_with_the_estimate_device_and_fix(capped_run):
    output, _ = capped_run
    record = json.loads((output / "failures" / "big.json").read_text())
    assert record["stage"] == "prepare" and record["attempts"] == 1
    message = record["message"]
    assert "81 frames at 512x512 needs about 42 MiB" in message
    assert "the [device] memory_gib cap (10 MiB)" in message
    assert "smaller size or fewer frames" in message and "a higher [device] memory_gib" in message
    assert not (output / "videos" / "big.mp4").exists()


def test_status_lists_the_refusal(capped_run):
    output, _ = capped_run
    (error,) = read_status(str(output))["errors"]
    assert (error["id"], error["error_type"]) == ("big", "ItemTooLargeError")
