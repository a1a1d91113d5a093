"""The engine under crashes: a worker process or the driver SIGKILLed mid-run (local Ray, tiny).

After any crash, the output root must hold every id exactly once, with no partial files, and
items done before the crash must not be generated again.

No timed asserts: each kill is triggered by what the run shows (a worker a few steps into an
item, the first committed marker), and the items are made long enough (`SLOW_STEPS` steps, about
1.5 s each on the tiny model) that the run cannot finish between the trigger and the kill.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import ray

from pusa_batch.engine.config import ActorFailed, ActorLoaded, Notice, RunConfig, WorkerStatus
from pusa_batch.engine.run import run

TINY = Path(__file__).resolve().parents[1] / "pipelines" / "tiny.toml"
IDS = [f"v{n:02d}" for n in range(6)]
FEW = IDS[:4]  # enough for the worker kills: two items per worker
SLOW_STEPS = 300

DRIVER = """
import sys
from pusa_batch.engine.config import RunConfig
from pusa_batch.engine.run import run

run(
    RunConfig(
        manifest=sys.argv[1],
        output=sys.argv[2],
        pipeline=sys.argv[3],
        address=sys.argv[4],
        workers=1,
    )
)
"""


def write_manifest(folder: Path, ids: list[str] = IDS) -> Path:
    rows = [f"{i},t2v,clip number {n},9,32,32,{SLOW_STEPS},{n}" for n, i in enumerate(ids)]
    path = folder / "manifest.csv"
    path.write_text("\n".join(["id,task,prompt,num_frames,height,width,steps,seed", *rows]))
    return path


def markers(output: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (output / "items").glob("*.json")}


def assert_complete_and_whole(output: Path, ids: list[str] = IDS) -> None:
    """Every id has one marker and one video of the recorded size; nothing else is there."""
    done = markers(output)
    assert sorted(done) == ids
    videos = sorted(p.name for p in (output / "videos").iterdir())
    assert videos == [f"{i}.mp4" for i in ids]
    for item_id, meta in done.items():
        assert (output / "videos" / f"{item_id}.mp4").stat().st_size == meta["video_bytes"]


class KillWorkerMidSampling:
    """An on_event hook: SIGKILL the first worker seen a few steps into sampling (only once)."""

    def __init__(self):
        self.pids: dict[str, int] = {}
        self.events: list = []
        self.worker: str | None = None
        self.item: str | None = None

    def __call__(self, event) -> None:
        self.events.append(event)
        if isinstance(event, ActorLoaded):
            self.pids[event.worker] = event.pid
        elif isinstance(event, WorkerStatus) and event.step >= 2 and self.worker is None:
            self.worker, self.item = event.worker, event.item
            os.kill(self.pids[event.worker], signal.SIGKILL)


def test_a_worker_killed_mid_sampling_is_restarted_and_loses_no_item(local_ray, tmp_path):
    manifest = write_manifest(tmp_path, FEW)
    hook = KillWorkerMidSampling()
    cfg = RunConfig(str(manifest), str(tmp_path / "out"), str(TINY), workers=2, status_every_s=0.1)
    summary = run(cfg, hook)
    assert hook.worker, "the test never saw a worker sampling"
    assert_complete_and_whole(tmp_path / "out", FEW)
    assert summary.failed == 0 and summary.generated == len(FEW)
    assert summary.workers[hook.worker]["deaths"] == 1
    assert summary.workers[hook.worker]["state"] in {"ready", "restarting"}  # Ray brings it back
    assert markers(tmp_path / "out")[hook.item]["attempts"] == 2


def test_a_worker_past_its_restarts_is_retired_and_the_others_finish(local_ray, tmp_path):
    manifest = write_manifest(tmp_path, FEW)
    hook = KillWorkerMidSampling()
    cfg = RunConfig(
        str(manifest),
        str(tmp_path / "out"),
        str(TINY),
        workers=2,
        status_every_s=0.1,
        max_actor_restarts=0,
    )
    summary = run(cfg, hook)
    assert hook.worker, "the test never saw a worker sampling"
    assert_complete_and_whole(tmp_path / "out", FEW)
    retired = [e for e in hook.events if isinstance(e, ActorFailed)]
    assert [e.worker for e in retired] == [hook.worker]
    assert "max_actor_restarts=0" in retired[0].reason
    assert summary.workers[hook.worker]["state"] == "dead"


def wait_for(predicate, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.05)


def wait_until_quiet(folder: Path, quiet_s: float) -> None:
    seen, since = len(list(folder.iterdir())), time.monotonic()
    while time.monotonic() - since < quiet_s:
        time.sleep(0.1)
        now = len(list(folder.iterdir()))
        if now != seen:
            seen, since = now, time.monotonic()


def committed_and_reported(out: Path, driver: subprocess.Popen) -> bool:
    """True once an item is committed and run.json written; raises if the driver ended first."""
    if driver.poll() is not None:
        raise RuntimeError(f"the driver exited ({driver.returncode}) before the kill")
    return (out / "run.json").exists() and (out / "items").exists() and len(markers(out)) >= 1


def test_a_killed_driver_is_resumed_without_duplicates(local_ray, tmp_path):
    manifest = write_manifest(tmp_path)
    out = tmp_path / "out"
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    cluster = ray.get_runtime_context().gcs_address  # the driver joins this module's Ray
    driver = subprocess.Popen(
        [sys.executable, str(script), str(manifest), str(out), str(TINY), cluster],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: committed_and_reported(out, driver), 240)
        os.kill(driver.pid, signal.SIGKILL)  # Ray then ends the actors this driver owned
        driver.wait()
        wait_until_quiet(out / "items", quiet_s=3.0)  # an item mid-commit may still land
    finally:
        if driver.poll() is None:
            driver.kill()
    before = markers(out)
    assert 1 <= len(before) < len(IDS), "the kill must land mid-run"
    progress = json.loads((out / "run.json").read_text())  # what `status` reads mid-run
    assert progress["state"] == "running" and progress["pipeline"] == str(TINY)
    assert set(progress["workers"]) == {"w0"}
    events: list = []
    resumed_at = time.monotonic()
    summary = run(RunConfig(str(manifest), str(out), str(TINY), workers=1), events.append)
    notices = [e.message for e in events if isinstance(e, Notice)]
    assert any("run that is gone" in n for n in notices), notices  # taken over, not waited for
    assert time.monotonic() - resumed_at < 120  # the default lease_stale_s was never waited out
    assert summary.done_before == len(before)
    assert summary.generated == len(IDS) - len(before)
    assert_complete_and_whole(out)
    after = markers(out)
    assert {i: after[i]["committed_at"] for i in before} == {
        i: m["committed_at"] for i, m in before.items()
    }
