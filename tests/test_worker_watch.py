"""A worker ends itself as soon as its driver's process is gone (same machine), so a killed run
leaves nothing sampling or committing behind it."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from pusa_batch.store.lease import process_start, this_machine

WORKER = """
import json, sys, time
from pusa_batch.engine.worker import _watch_driver
_watch_driver(json.loads(sys.argv[1]), every_s=0.1)
print("watching", flush=True)
time.sleep(60)
"""


def test_a_worker_exits_soon_after_its_driver_dies():
    """No timing guess: the driver is killed once the worker says it watches, and the worker
    must be gone well inside the 10 s the issue allows (its watch polls every 0.1 s)."""
    driver = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    record = {**this_machine(), "pid": driver.pid, "pid_start": process_start(driver.pid)}
    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER, json.dumps(record)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert worker.stdout.readline().strip() == "watching"
        time.sleep(0.5)  # five polls of a live driver
        assert worker.poll() is None  # the driver lives: the worker goes on
        driver.kill()
        driver.wait()
        worker.wait(timeout=10)
        assert worker.returncode == 1
    finally:
        for process in (driver, worker):
            if process.poll() is None:
                process.kill()
