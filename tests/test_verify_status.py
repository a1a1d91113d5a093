"""`status` on roots a user may find: a failed item counted once, a run whose driver is dead
on this host, a lease.json that is not a lease record."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from pusa_batch.engine.status import format_status, read_status
from pusa_batch.store.lease import LEASE_FILE, new_record
from pusa_batch.store.store import Store

COLUMNS = "id,task,prompt,num_frames,height,width,steps,seed"


@pytest.fixture
def root(tmp_path):
    """a done, b failed, c never ran; the manifest lists a, b, c."""
    manifest = tmp_path / "manifest.csv"
    rows = ["a,t2v,a red cat,9,32,32,3,1", "b,t2v,a dog,9,32,32,3,2", "c,t2v,the sea,9,32,32,3,3"]
    manifest.write_text("\n".join([COLUMNS, *rows]) + "\n")
    store = Store(str(tmp_path / "out"))
    store.commit("a", b"video a", {"fingerprint": "f"})
    store.record_failure("b", {"error_type": "InputMediaError", "message": "bad", "attempts": 3})
    return store, manifest


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def running_run_json(store: Store) -> None:
    now = time.time()
    store.write_run_info({"state": "running", "updated_at": now, "in_flight": 1, "pending": 2})


def test_with_a_manifest_each_item_is_counted_once(root):
    store, manifest = root
    counts = read_status(store.url, manifest=str(manifest))["counts"]
    assert (counts["done"], counts["failed"], counts["pending"], counts["total"]) == (1, 1, 1, 3)


def test_a_run_whose_driver_died_on_this_host_is_stopped_not_running(root):
    store, _ = root
    running_run_json(store)
    record = new_record({"command": "run", "pid": dead_pid()}, 120.0, time.time())
    store.root.write_bytes(LEASE_FILE, json.dumps(record).encode())
    report = read_status(store.url)
    assert report["state"] == "stopped" and "driver is gone" in report["state_reason"]
    assert report["counts"]["in_flight"] == 0


@pytest.mark.parametrize("garbage", [b"[1, 2]", b"{}", b"not json at all"])
def test_a_garbage_lease_reads_as_unreadable(root, garbage):
    store, _ = root
    store.root.write_bytes(LEASE_FILE, garbage)
    report = read_status(store.url)
    assert report["state"] == "stopped" and "lease.json is unreadable" in format_status(report)


@pytest.mark.parametrize("garbage", [b"[1, 2]", b"{}", b"not json at all"])
def test_taking_over_a_garbage_lease_says_it_was_unreadable(root, garbage):
    store, _ = root
    store.root.write_bytes(LEASE_FILE, garbage)
    lease = store.acquire_lease({"command": "run"})
    lease.release()
    assert "lease.json was unreadable" in lease.note and "owner {}" not in lease.note


def test_done_items_the_index_lost_are_counted_done_with_a_note(root):
    store, _ = root
    store.compact_index()
    for name in store.root.list_names("index"):
        store.root.delete(f"index/{name}")
    report = read_status(store.url)
    assert report["counts"]["done"] == 1
    assert report["notes"] == [
        "1 done item(s) found from their markers, missing from the index; the next run or "
        "`pusa-batch verify --repair` indexes them again"
    ]
