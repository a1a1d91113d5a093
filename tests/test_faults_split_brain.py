"""Split brain: a driver paused past its lease's staleness while a second run takes the root.

The short form of `benchmarks/faults/split_brain.py`. A first driver (a subprocess on this
module's local Ray) is SIGSTOPped once it has committed an item; a second run on the same root
waits out the lease's staleness, takes it over and finishes; then the first is resumed
(SIGCONT). The first must notice and stop without writing anything: no marker, video, failure
record, index part or run.json of the second is replaced.

No timing guesses: the pause follows the first marker, the second run starts once lease.json shows
a missed heartbeat and itself waits for the lease to go stale, and the resume follows its return.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray

from pusa_batch.engine.config import Notice, RunConfig
from pusa_batch.engine.run import run

TINY = Path(__file__).resolve().parents[1] / "pipelines" / "tiny.toml"
IDS = [f"s{n}" for n in range(6)]
STALE_S = 3.0  # the first driver heartbeats every 1 s
STEPS = 100

DRIVER = """
import sys
from pusa_batch.engine.config import RunConfig
from pusa_batch.engine.run import run

run(RunConfig(manifest=sys.argv[1], output=sys.argv[2], pipeline=sys.argv[3],
              address=sys.argv[4], workers=1, lease_stale_s=float(sys.argv[5]), max_retries=5))
"""
# max_retries=5: an item its worker may no longer commit comes back as an item failure; the
# heartbeat must find the lease lost before such an item runs out of tries (one sample each)


def markers(out: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (out / "items").glob("*.json")}


def heartbeat_age(out: Path) -> float:
    return time.time() - json.loads((out / "lease.json").read_text())["heartbeat_unix"]


def wait_for(predicate, what: str, timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"still waiting for {what}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def split(local_ray, tmp_path_factory):
    folder = tmp_path_factory.mktemp("split")
    rows = [f"{i},t2v,clip {n},5,32,32,{STEPS},{n}" for n, i in enumerate(IDS)]
    manifest = folder / "manifest.csv"
    manifest.write_text("\n".join(["id,task,prompt,num_frames,height,width,steps,seed", *rows]))
    out = folder / "out"
    script = folder / "driver.py"
    script.write_text(DRIVER)
    cluster = ray.get_runtime_context().gcs_address
    first = subprocess.Popen(
        [sys.executable, str(script), str(manifest), str(out), str(TINY), cluster, str(STALE_S)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: markers(out) or first.poll() is not None, "the first driver's commit")
        assert first.poll() is None, first.stderr.read()[-3000:]
        os.kill(first.pid, signal.SIGSTOP)
        paused = markers(out)
        # a fresh heartbeat is refused at once; one past half the staleness is waited for
        wait_for(lambda: heartbeat_age(out) > STALE_S / 2, "a missed heartbeat")
        events: list = []
        config = RunConfig(str(manifest), str(out), str(TINY), workers=1, lease_stale_s=STALE_S)
        summary = run(config, events.append)
        second = {i: m["commit_token"] for i, m in markers(out).items()}
        second_files = files_of(out)
        os.kill(first.pid, signal.SIGCONT)
        _, first_said = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            os.kill(first.pid, signal.SIGCONT)
            first.kill()
    return {
        "out": out,
        "paused": paused,
        "events": events,
        "summary": summary,
        "second": second,
        "second_files": second_files,
        "first_rc": first.returncode,
        "first_said": " ".join(first_said.split()),
    }


def test_the_second_run_takes_the_stale_lease_over_and_finishes(split):
    notices = [e.message for e in split["events"] if isinstance(e, Notice)]
    assert any("took over a stale lease" in n for n in notices), notices
    assert 1 <= len(split["paused"]) < len(IDS)
    assert sorted(split["second"]) == IDS and split["summary"].failed == 0


def test_the_resumed_first_driver_stops_saying_it_lost_the_lease(split):
    assert split["first_rc"] != 0
    assert "lost the lease" in split["first_said"], split["first_said"][-2000:]


def test_the_resumed_first_driver_overwrites_no_item(split):
    now = {i: m["commit_token"] for i, m in markers(split["out"]).items()}
    assert now == split["second"]
    assert not list((split["out"] / "failures").glob("*.json"))


def files_of(out: Path) -> dict[Path, int]:
    """Every file of the root but run.json and temp files, with its modification time."""
    return {
        p.relative_to(out): p.stat().st_mtime_ns
        for p in out.rglob("*")
        if p.is_file() and ".tmp" not in p.parts and p.name != "run.json"
    }


def test_the_resumed_first_driver_writes_no_file_of_the_root(split):
    assert files_of(split["out"]) == split["second_files"]


def test_the_resumed_first_driver_leaves_the_second_runs_run_json(split):
    info = json.loads((split["out"] / "run.json").read_text())
    assert (info["state"], info["pid"]) == ("finished", os.getpid())
