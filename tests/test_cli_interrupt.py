"""Ctrl-C says what happened and how to go on; a rerun that skips failed items says how to retry."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pusa_batch.cli.run_commands import print_summary
from pusa_batch.engine.config import RunSummary

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "pipelines" / "tiny.toml"
ROWS = 8


def driver_counted(out: Path) -> int:
    """Items the driver has counted as committed, from the run.json it rewrites every 2 s."""
    try:
        return int(json.loads((out / "run.json").read_text()).get("generated") or 0)
    except (FileNotFoundError, ValueError):
        return 0


@pytest.mark.parametrize(
    ("sent", "code", "said_as"),
    [(signal.SIGINT, 130, "Interrupted"), (signal.SIGTERM, 143, r"Terminated \(SIGTERM\)")],
    ids=["ctrl-c", "sigterm"],
)
def test_a_stopped_run_prints_what_was_committed_and_releases_its_lease(
    tmp_path, sent, code, said_as
):
    manifest = tmp_path / "m.csv"
    # i0 is quick; the rest take about 2 s each here at 1000 steps, so the run is still going
    # well after run.json (rewritten every 2 s) shows the first commit
    rows = [f"i{n},t2v,a cat {n},{n},5,32,32,{1000 if n else 2}" for n in range(ROWS)]
    manifest.write_text("id,task,prompt,seed,num_frames,height,width,steps\n" + "\n".join(rows))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "pusa_batch", "run", str(manifest), "-o", str(out)]
    command += ["--pipeline", str(TINY), "--workers", "1", "--no-progress"]
    driver = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    deadline = time.monotonic() + 240
    while driver_counted(out) < 1:  # the driver has seen the commit, not only the worker made it
        assert driver.poll() is None and time.monotonic() < deadline, "no commit before the signal"
        time.sleep(0.1)
    driver.send_signal(sent)
    stdout, stderr = driver.communicate(timeout=120)
    assert driver.returncode == code, f"{stdout[-1000:]}\n{stderr[-3000:]}"
    assert "Traceback" not in stderr and "SIGTERM received" not in stderr  # Ray's stack dump
    said = re.search(said_as + r": (\d+) committed this run, (\d+) pending; run the same", stderr)
    assert said, stderr[-3000:]
    committed, pending = int(said[1]), int(said[2])
    assert committed >= 1 and committed + pending == ROWS
    markers = sorted((out / "items").glob("*.json"))  # which item lands first is not fixed
    assert committed == len(markers)  # counted: also what landed while the signal was handled
    assert all(json.loads(m.read_text())["id"] == m.stem for m in markers)
    assert not (out / "lease.json").exists()  # released: the next run starts without a takeover


def test_a_rerun_that_only_skips_failed_items_points_at_retry_failed(capsys):
    summary = RunSummary(
        total=3, done_before=2, generated=0, failed=0, skipped=3, wall_s=1.0, output="out",
        failures=[], failed_before=1,
    )  # fmt: skip
    print_summary(summary)
    text = " ".join(capsys.readouterr().out.split())
    assert "1 item(s) failed in an earlier run and are skipped; add --retry-failed" in text
