"""Ctrl-C says what happened and how to go on; a rerun that skips failed items says how to retry."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from pusa_batch.cli.run_commands import print_summary
from pusa_batch.engine.config import RunSummary

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "pipelines" / "tiny.toml"


def test_ctrl_c_prints_what_was_committed_and_exits_130(tmp_path):
    manifest = tmp_path / "m.csv"
    rows = [f"i{n},t2v,a cat {n},{n},5,32,32,{300 if n else 2}" for n in range(4)]
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
    while not list((out / "items").glob("*.json")) if (out / "items").exists() else True:
        assert driver.poll() is None and time.monotonic() < deadline, "no commit before the signal"
        time.sleep(0.1)
    driver.send_signal(signal.SIGINT)
    stdout, stderr = driver.communicate(timeout=120)
    assert driver.returncode == 130, stderr[-3000:]
    assert "Interrupted: 1 committed this run, 3 pending; run the same command to resume." in stderr
    assert json.loads((out / "items" / "i0.json").read_text())["id"] == "i0"


def test_a_rerun_that_only_skips_failed_items_points_at_retry_failed(capsys):
    summary = RunSummary(
        total=3, done_before=2, generated=0, failed=0, skipped=3, wall_s=1.0, output="out",
        failures=[], failed_before=1,
    )  # fmt: skip
    print_summary(summary)
    text = " ".join(capsys.readouterr().out.split())
    assert "1 item(s) failed in an earlier run and are skipped; add --retry-failed" in text
