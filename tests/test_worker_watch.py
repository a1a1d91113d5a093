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
time.sleep(60)
"""


def test_a_worker_exits_within_a_second_of_its_driver_dying():
    driver = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    record = {**this_machine(), "pid": driver.pid, "pid_start": process_start(driver.pid)}
    worker = subprocess.Popen([sys.executable, "-c", WORKER, json.dumps(record)])
    try:
        time.sleep(1.5)
        assert worker.poll() is None  # the driver lives: the worker goes on
        driver.kill()
        driver.wait()
        started = time.monotonic()
        worker.wait(timeout=10)
        assert time.monotonic() - started < 2 and worker.returncode == 1
    finally:
        for process in (driver, worker):
            if process.poll() is None:
                process.kill()
