"""Taking the lease of a dead run removes the temporary files it left (`.tmp/`), with a notice,
before anything is planned; nothing else in the root is touched."""

from __future__ import annotations

import json
import time
from pathlib import Path

from pusa_batch.engine.config import Notice, RunConfig
from pusa_batch.engine.run import run
from pusa_batch.store.lease import LEASE_FILE, this_machine
from pusa_batch.store.store import Store

TINY = Path(__file__).resolve().parents[1] / "pipelines" / "tiny.toml"


def test_the_run_that_takes_a_dead_runs_lease_removes_its_temporary_files(tmp_path):
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(
        "id,task,prompt,num_frames,height,width,steps,seed\ncat,t2v,a cat,9,32,32,3,1\n"
    )
    out = tmp_path / "out"
    store = Store(str(out))
    store.record_failure("cat", {"error_type": "OOM", "message": "out of memory"})  # nothing to do
    dead = {**this_machine(), "pid": 1, "pid_start": "no-such-start", "token": "dead"}
    dead |= {"heartbeat_unix": time.time(), "owner": {"command": "run"}}
    store.root.write_bytes(LEASE_FILE, json.dumps(dead).encode())
    (out / ".tmp").mkdir(exist_ok=True)
    (out / ".tmp" / "0f1e2d-cat.mp4").write_bytes(b"half a video")
    (out / ".tmp" / "0f1e2d-cat.json").write_bytes(b'{"half": ')
    events: list = []
    config = RunConfig(manifest=str(manifest), output=str(out), pipeline=str(TINY))
    summary = run(config, events.append)
    notices = [e.message for e in events if isinstance(e, Notice)]
    assert any("run that is gone" in n for n in notices)
    assert "removed temporary files left by an earlier run" in notices
    assert list((out / ".tmp").iterdir()) == []
    assert summary.failed_before == 1 and (out / "failures" / "cat.json").exists()
