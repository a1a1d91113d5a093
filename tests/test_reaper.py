"""The embedded Ray's reaper: when a driver is SIGKILLed, no process of its run is left behind
(Ray's own agents would be, reparented to init); at a normal end it kills nothing."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pusa_batch.engine.reaper import serve, start_time

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "pipelines" / "tiny.toml")
pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="the reaper reads /proc")


@pytest.fixture
def sleeper():
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield process
    process.kill()
    process.wait()


def listed(*processes) -> str:
    return json.dumps([[p.pid, start_time(p.pid)] for p in processes]) + "\n"


def gone(process, within_s: float = 5.0) -> bool:
    try:
        process.wait(timeout=within_s)
    except subprocess.TimeoutExpired:
        return False
    return True


def test_the_end_of_the_pipe_without_done_kills_the_listed_processes(sleeper):
    serve(io.StringIO(listed(sleeper)))
    assert gone(sleeper) and sleeper.returncode == -signal.SIGKILL


def test_done_leaves_every_listed_process_alone(sleeper):
    serve(io.StringIO(listed(sleeper) + "done\n"))
    assert not gone(sleeper, within_s=0.5)


def test_a_pid_that_now_names_another_process_is_left_alone(sleeper):
    serve(io.StringIO(json.dumps([[sleeper.pid, "1"]]) + "\n"))  # started at another time
    assert not gone(sleeper, within_s=0.5)


def session_processes(sid: int) -> list[str]:
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == sid:
            continue
        try:
            if os.getsid(int(name)) != sid:
                continue
            found.append(Path(f"/proc/{name}/cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:
            continue
    return [cmd for cmd in found if cmd]


def test_no_process_of_a_run_is_left_10_s_after_its_driver_is_sigkilled(tmp_path):
    manifest = tmp_path / "m.csv"
    rows = "".join(f"k{n},t2v,a cat {n},{n},17,64,64,4\n" for n in range(40))
    manifest.write_text("id,task,prompt,seed,num_frames,height,width,steps\n" + rows)
    out = str(tmp_path / "out")
    command = [sys.executable, "-m", "pusa_batch", "run", str(manifest), "-o", out,
               "-p", TINY, "--workers", "1", "--log-format", "json"]  # fmt: skip
    driver = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        for line in driver.stderr:  # until the worker has loaded: Ray and its agents all up
            if '"event": "actor_loaded"' in line or '"event": "finished"' in line:
                break
        assert session_processes(driver.pid), "the run started no process of its own"
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
        deadline = time.monotonic() + 10
        while session_processes(driver.pid) and time.monotonic() < deadline:
            time.sleep(0.25)
        assert session_processes(driver.pid) == []
    finally:
        with_group = [int(p) for p in os.listdir("/proc") if p.isdigit()]
        for pid in with_group:
            try:
                if os.getsid(pid) == driver.pid:
                    os.kill(pid, signal.SIGKILL)
            except OSError:
                continue
