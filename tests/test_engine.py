"""The engine end to end on a local Ray (127.0.0.1) with the tiny pipeline: the files a run leaves.

One Ray start serves the module; the main run is shared by the tests that read its output.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pusa_batch.engine.config import ActorLoaded, ItemDone, RunConfig, Started
from pusa_batch.engine.run import run
from pusa_batch.errors import LeaseError, PipelineError
from pusa_batch.models.tiny import ensure_tiny_model
from pusa_batch.store.store import Store

TINY = Path(__file__).resolve().parents[1] / "pipelines" / "tiny.toml"
COLUMNS = "id,task,prompt,image,num_frames,height,width,steps,seed"
GOOD = [
    "cat,t2v,a red cat,,9,32,32,3,1",
    "dog,t2v,a blue dog,,9,32,32,3,2",
    "sea,t2v,the sea at night,,9,32,48,3,3",
    "pic,i2v,a moving picture,pic.png,9,32,32,3,4",
    "sun,t2v,a sunrise,,9,32,32,3,5",
]
BROKEN = "bad,i2v,a broken picture,bad.png,9,32,32,3,6"


def write_png(path: Path, seed: int) -> None:
    pixels = np.random.default_rng(seed).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def write_manifest(folder: Path, rows: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write_png(folder / "pic.png", 0)
    write_png(folder / "bad.png", 1)
    path = folder / "manifest.csv"
    path.write_text("\n".join([COLUMNS, *rows]) + "\n")
    return path


def config(manifest: Path, output: Path, **overrides) -> RunConfig:
    settings = {"workers": 2, "status_every_s": 0.2, **overrides}
    return RunConfig(manifest=str(manifest), output=str(output), pipeline=str(TINY), **settings)


def markers(output: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (output / "items").glob("*.json")}


def corrupt_after_validation(image: Path):
    """An on_event hook: once the run has validated and planned, truncate `image`."""

    def on_event(event) -> None:
        if isinstance(event, Started):
            data = image.read_bytes()
            image.write_bytes(data[: len(data) // 3])

    return on_event


@pytest.fixture(scope="module")
def first_run(local_ray, tmp_path_factory):
    """Two workers, five good items and one whose image breaks after validation."""
    folder = tmp_path_factory.mktemp("first")
    manifest = write_manifest(folder, [*GOOD, BROKEN])
    events: list = []
    hook = corrupt_after_validation(folder / "bad.png")

    def on_event(event) -> None:
        events.append(event)
        hook(event)

    cfg = config(manifest, folder / "out")
    summary = run(cfg, on_event)
    return cfg, summary, events, markers(folder / "out")


def test_every_good_item_is_committed_exactly_once(first_run):
    cfg, summary, events, done = first_run
    ids = {row.split(",")[0] for row in GOOD}
    assert set(done) == ids
    assert sorted(e.id for e in events if isinstance(e, ItemDone)) == sorted(ids)
    assert {p.stem for p in (Path(cfg.output) / "videos").glob("*.mp4")} == ids
    assert summary.generated == len(ids)


def test_item_metadata_records_where_and_how_it_was_made(first_run):
    _, _, _, done = first_run
    meta = done["pic"]
    assert meta["item"]["id"] == "pic" and meta["item"]["seed"] == 4
    assert meta["pipeline"]["name"] == "tiny"
    assert meta["worker"] in {"w0", "w1"} and meta["device"] == "cpu" and meta["node"]
    assert set(meta["versions"]) == {"pusa-batch", "torch", "diffusers", "ray"}
    assert {"queue", "prepare", "sample", "decode", "encode"} <= set(meta["timings"])
    assert meta["attempts"] == 1 and meta["status"] == "done"
    assert meta["conditioning"]["latent_indices"] == [0]


def test_every_worker_loads_the_pipeline_once(first_run):
    # A worker still loading when the others have finished every item never reports (the run
    # does not wait for it), so on a loaded machine one worker may do all the work.
    _, summary, events, done = first_run
    loaded = [e.worker for e in events if isinstance(e, ActorLoaded)]
    assert len(loaded) == len(set(loaded)) and set(loaded) <= {"w0", "w1"}
    assert {meta["worker"] for meta in done.values()} <= set(loaded)
    assert set(summary.workers) == {"w0", "w1"}
    assert all(summary.workers[w]["load_s"] > 0 for w in loaded)
    assert all(w["deaths"] == 0 for w in summary.workers.values())


def test_an_item_that_always_fails_is_recorded_after_its_retries(first_run):
    cfg, summary, _, _ = first_run
    record = json.loads((Path(cfg.output) / "failures" / "bad.json").read_text())
    assert record["attempts"] == 3
    assert record["error_type"] == "InputMediaError"
    assert "bad.png" in record["message"] and "Traceback" in record["traceback"]
    assert record["worker"] in {"w0", "w1"} and record["node"]
    assert summary.failed == 1 and summary.exit_code == 1
    assert [f["id"] for f in summary.failures] == ["bad"]


def test_run_json_reports_the_finished_run(first_run):
    cfg, _, _, _ = first_run
    status = json.loads((Path(cfg.output) / "run.json").read_text())
    assert status["state"] == "finished"
    assert (status["generated"], status["failed"], status["pending"]) == (5, 1, 0)
    assert set(status["workers"]) == {"w0", "w1"}


def test_rerun_generates_nothing_and_keeps_the_commits(first_run):
    cfg, _, _, before = first_run
    write_png(Path(cfg.manifest).parent / "bad.png", 1)  # readable again: it still failed before
    summary = run(cfg)
    assert (summary.generated, summary.done_before, summary.failed_before) == (0, 5, 1)
    after = markers(Path(cfg.output))
    assert {k: v["committed_at"] for k, v in after.items()} == {
        k: v["committed_at"] for k, v in before.items()
    }


@pytest.fixture(scope="module")
def one_worker_run(local_ray, tmp_path_factory):
    """The good items again, on one worker, one item at a time, largest first."""
    folder = tmp_path_factory.mktemp("one")
    manifest = write_manifest(folder, GOOD)
    events: list = []
    cfg = config(manifest, folder / "out", workers=1, overlap=False, longest_first=True)
    run(cfg, events.append)
    return events, markers(folder / "out")


def test_one_worker_makes_the_same_videos_as_two(first_run, one_worker_run):
    _, _, _, two = first_run
    _, one = one_worker_run
    assert {k: v["video_sha256"] for k, v in one.items()} == {
        k: v["video_sha256"] for k, v in two.items()
    }


def test_longest_first_dispatches_the_costliest_item_first(one_worker_run):
    events, _ = one_worker_run
    order = [e.id for e in events if isinstance(e, ItemDone)]
    assert order == ["sea", "cat", "dog", "pic", "sun"]  # sea is 32x48, the others 32x32


def test_a_second_run_on_a_held_output_is_refused(local_ray, tmp_path):
    manifest = write_manifest(tmp_path, GOOD[:1])
    held = Store(str(tmp_path / "out")).acquire_lease({"host": "elsewhere", "pid": 1})
    try:
        with pytest.raises(LeaseError, match="another run holds"):
            run(config(manifest, tmp_path / "out"))
    finally:
        held.release()
    assert not (tmp_path / "out" / "items").exists()


def test_a_pipeline_failing_its_checks_stops_the_run_before_any_item_is_made(local_ray, tmp_path):
    weights = shutil.copytree(ensure_tiny_model("wan2.1"), tmp_path / "weights")
    for file in (weights / "transformer").glob("*.safetensors"):
        file.write_bytes(b"\0" * file.stat().st_size)  # same size and name, unreadable content
    broken = tmp_path / "broken.toml"
    broken.write_text(f'family = "wan2.1"\n[weights]\nroot = "{weights}"\n')
    manifest = write_manifest(tmp_path, GOOD[:2])
    cfg = RunConfig(str(manifest), str(tmp_path / "out"), str(broken), workers=2)
    with pytest.raises(PipelineError, match="failed its checks.*keys: transformer"):
        run(cfg)
    assert not (tmp_path / "out" / "videos").exists()


def test_workers_that_cannot_load_the_pipeline_stop_the_run_with_the_reason(local_ray, tmp_path):
    # A driver joining a cluster skips the device checks (its own machine may have no GPU), so a
    # pipeline asking for CUDA reaches the workers, which cannot load it here.
    weights = ensure_tiny_model("wan2.1")
    cuda = tmp_path / "cuda.toml"
    cuda.write_text(
        f'family = "wan2.1"\n[weights]\nroot = "{weights}"\n[options]\ndevice = "cuda"\n'
    )
    manifest = write_manifest(tmp_path, GOOD[:2])
    cfg = RunConfig(str(manifest), str(tmp_path / "out"), str(cuda), workers=2, address="auto")
    with pytest.raises(PipelineError, match="no worker could load the pipeline") as caught:
        run(cfg)
    assert "w0" in str(caught.value) and "w1" in str(caught.value)
