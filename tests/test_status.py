"""`read_status` / `format_status` on output roots made through the real `Store` (commits, a
failure record, a lease, a run.json shaped like the engine's), as a user reads them."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from pusa_batch.engine.status import MAX_ERRORS, STALE_AFTER_S, format_status, read_status
from pusa_batch.errors import RootNotFoundError
from pusa_batch.manifest.read import item_fingerprint, iter_items
from pusa_batch.pipelines.spec import load_pipeline_spec
from pusa_batch.store.store import Store

TINY = Path(__file__).resolve().parents[1] / "pipelines" / "tiny.toml"
COLUMNS = "id,task,prompt,num_frames,height,width,steps,seed"
ROWS = {
    "a": "a,t2v,a red cat,9,32,32,3,1",
    "b": "b,t2v,a blue dog,9,32,32,3,2",
    "c": "c,t2v,the sea at night,9,32,32,3,3",
    "d": "d,t2v,a sunrise,9,32,32,3,4",
}


def write_manifest(path: Path, rows: dict[str, str]) -> Path:
    path.write_text("\n".join([COLUMNS, *rows.values()]) + "\n")
    return path


def engine_run_json(now: float, **overrides) -> dict:
    """The shape `dispatch.Driver.write_status` writes."""
    info = {
        "state": "running",
        "pid": 4242,
        "host": "gpu-node-1",
        "updated_at": now,
        "elapsed_s": 120.0,
        "generated": 2,
        "failed": 1,
        "pending": 6,
        "items_per_s": 0.05,
        "workers": {
            "w0": {
                "state": "ready",
                "item": "c",
                "step": 2,
                "steps": 3,
                "done": 2,
                "busy_s": 30.0,
                "load_s": 12.5,
                "deaths": 0,
                "reason": None,
            },
            "w1": {
                "state": "loading",
                "item": None,
                "step": 0,
                "steps": 0,
                "done": 0,
                "busy_s": 0.0,
                "load_s": None,
                "deaths": 0,
                "reason": None,
            },
        },
    }
    return {**info, **overrides}


@pytest.fixture
def spec():
    return load_pipeline_spec(TINY)


@pytest.fixture
def root(tmp_path, spec):
    """a, b committed with their real fingerprints; c failed; d never ran."""
    manifest = write_manifest(tmp_path / "manifest.csv", ROWS)
    store = Store(str(tmp_path / "out"))
    for item in iter_items(str(manifest), spec):
        fingerprint = item_fingerprint(item, spec.identity(), temporal_factor=4)
        if item.id in ("a", "b"):
            store.commit(item.id, b"\x00mp4-" + item.id.encode(), {"fingerprint": fingerprint})
    store.record_failure(
        "c", {"error_type": "InputMediaError", "message": "c.png: cannot decode", "attempts": 3}
    )
    return tmp_path, store, manifest


def test_counts_done_and_failed_from_the_root_alone(root):
    tmp_path, _, _ = root
    report = read_status(str(tmp_path / "out"))
    counts = report["counts"]
    assert (counts["done"], counts["failed"]) == (2, 1)
    assert counts["pending"] is None and counts["changed"] is None


def test_a_manifest_with_its_pipeline_adds_pending_and_changed(root, spec):
    tmp_path, _, manifest = root
    report = read_status(str(tmp_path / "out"), manifest=str(manifest), spec=spec)
    counts = report["counts"]
    assert (counts["total"], counts["pending"], counts["changed"]) == (4, 1, 0)
    assert report["notes"] == []


def test_an_edited_prompt_is_counted_as_changed(root, spec):
    tmp_path, _, manifest = root
    write_manifest(manifest, {**ROWS, "a": "a,t2v,a red cat in the rain,9,32,32,3,1"})
    report = read_status(str(tmp_path / "out"), manifest=str(manifest), spec=spec)
    assert report["counts"]["changed"] == 1
    assert report["changed_ids"] == ["a"]


def test_without_a_pipeline_pending_counts_ids_and_changed_is_explained(root):
    tmp_path, _, manifest = root
    report = read_status(str(tmp_path / "out"), manifest=str(manifest))
    assert report["counts"]["pending"] == 1
    assert report["counts"]["changed"] is None
    assert "--pipeline" in report["notes"][0]


def test_the_pipeline_recorded_in_run_json_is_used_when_none_is_given(root):
    tmp_path, store, manifest = root
    store.write_run_info(engine_run_json(time.time(), state="finished", pipeline=str(TINY)))
    write_manifest(manifest, {**ROWS, "b": "b,t2v,a green dog,9,32,32,3,2"})
    report = read_status(str(tmp_path / "out"), manifest=str(manifest))
    assert report["counts"]["changed"] == 1 and report["notes"] == []


def test_a_live_lease_and_fresh_run_json_mean_running(root):
    tmp_path, store, _ = root
    now = time.time()
    store.write_run_info(engine_run_json(now))
    lease = store.acquire_lease({"command": "run"})
    try:
        report = read_status(str(tmp_path / "out"), now=now + 5)
    finally:
        lease.release()
    assert report["state"] == "running"
    assert report["lease"]["host"]


def test_run_json_not_updated_for_two_minutes_means_stale(root):
    tmp_path, store, _ = root
    now = time.time()
    store.write_run_info(engine_run_json(now))
    lease = store.acquire_lease({"command": "run"}, stale_after_s=3600)
    try:
        report = read_status(str(tmp_path / "out"), now=now + STALE_AFTER_S + 1)
    finally:
        lease.release()
    assert report["state"] == "stale"
    assert "run.json not updated" in report["state_reason"]


def test_a_lease_without_heartbeat_means_stale(root):
    tmp_path, store, _ = root
    now = time.time()
    store.write_run_info(engine_run_json(now))
    lease = store.acquire_lease({"command": "run"}, stale_after_s=30)
    try:
        report = read_status(str(tmp_path / "out"), now=now + 31)
    finally:
        lease.release()
    assert report["state"] == "stale"
    assert "lease heartbeat" in report["state_reason"]


def test_a_running_run_json_without_lease_means_stopped(root):
    tmp_path, store, _ = root
    store.write_run_info(engine_run_json(time.time()))
    assert read_status(str(tmp_path / "out"))["state"] == "stopped"


def test_a_final_run_json_without_lease_means_finished(root):
    _, store, _ = root
    store.write_run_info(engine_run_json(time.time(), state="finished"))
    assert read_status(store.url)["state"] == "finished"


def test_an_empty_root_is_not_started(tmp_path):
    (tmp_path / "empty").mkdir()
    report = read_status(str(tmp_path / "empty"))
    assert report["state"] == "not started"
    assert report["run"] is None and report["workers"] == [] and report["errors"] == []


def test_a_root_that_does_not_exist_is_an_error_and_is_not_created(tmp_path):
    with pytest.raises(RootNotFoundError, match="no output root at .*typo.*check the path"):
        read_status(str(tmp_path / "typo"))
    assert not (tmp_path / "typo").exists()


def test_a_missing_bucket_is_an_error_naming_the_bucket(s3):
    with pytest.raises(RootNotFoundError, match="check the bucket \\(no-such-bucket\\)"):
        read_status("s3://no-such-bucket/run1", s3.storage_options)


def test_items_held_by_workers_are_in_flight_not_pending(root, spec):
    tmp_path, store, manifest = root
    store.write_run_info(engine_run_json(time.time(), in_flight=1))
    lease = store.acquire_lease({"command": "run"})
    try:
        report = read_status(str(tmp_path / "out"), manifest=str(manifest), spec=spec)
    finally:
        lease.release()
    counts = report["counts"]
    assert (counts["done"], counts["in_flight"], counts["pending"]) == (2, 1, 0)
    assert "1 in flight" in format_status(report)


def test_a_finished_run_has_nothing_in_flight(root, spec):
    tmp_path, store, manifest = root
    store.write_run_info(engine_run_json(time.time(), state="finished", in_flight=1))
    report = read_status(str(tmp_path / "out"), manifest=str(manifest), spec=spec)
    assert (report["counts"]["in_flight"], report["counts"]["pending"]) == (0, 1)


def test_throughput_and_eta_come_from_run_json(root):
    tmp_path, store, _ = root
    now = time.time()
    store.write_run_info(engine_run_json(now, items_per_s=0.05, pending=6))
    lease = store.acquire_lease({"command": "run"})
    try:
        run = read_status(str(tmp_path / "out"), now=now + 1)["run"]
    finally:
        lease.release()
    assert run["items_per_min"] == pytest.approx(3.0)
    assert run["eta_s"] == pytest.approx(6 / 0.05)


def test_no_eta_once_the_run_is_over(root):
    tmp_path, store, _ = root
    store.write_run_info(engine_run_json(time.time(), state="finished"))
    assert read_status(str(tmp_path / "out"))["run"]["eta_s"] is None


def test_workers_show_item_step_done_and_load_time(root):
    tmp_path, store, _ = root
    store.write_run_info(engine_run_json(time.time()))
    workers = {w["id"]: w for w in read_status(str(tmp_path / "out"))["workers"]}
    assert set(workers) == {"w0", "w1"}
    w0 = workers["w0"]
    assert (w0["item"], w0["step"], w0["steps"], w0["done"], w0["load_s"]) == ("c", 2, 3, 2, 12.5)


def test_last_errors_are_the_newest_ten_newest_first(tmp_path):
    store = Store(str(tmp_path / "out"))
    for n in range(MAX_ERRORS + 3):
        store.record_failure(
            f"item{n:02d}",
            {
                "error_type": "RuntimeError",
                "message": f"boom {n}",
                "attempts": 3,
                "failed_at": f"2026-01-01T00:00:{n:02d}.000+00:00",
            },
        )
    errors = read_status(str(tmp_path / "out"))["errors"]
    assert [e["id"] for e in errors] == [f"item{n:02d}" for n in range(12, 2, -1)]
    assert errors[0] == {
        "id": "item12",
        "error_type": "RuntimeError",
        "message": "boom 12",
        "attempts": 3,
        "failed_at": "2026-01-01T00:00:12.000+00:00",
    }


def test_a_later_success_clears_the_error(root):
    tmp_path, store, _ = root
    store.commit("c", b"video", {"fingerprint": "x"})
    report = read_status(str(tmp_path / "out"))
    assert report["errors"] == [] and report["counts"]["failed"] == 0


def test_the_report_is_json_ready(root, spec):
    tmp_path, store, manifest = root
    store.write_run_info(engine_run_json(time.time()))
    report = read_status(str(tmp_path / "out"), manifest=str(manifest), spec=spec)
    assert json.loads(json.dumps(report)) == report


def test_the_text_form_has_counts_rate_workers_and_errors_without_colour(root, spec):
    tmp_path, store, manifest = root
    store.write_run_info(engine_run_json(time.time()))
    text = format_status(read_status(str(tmp_path / "out"), manifest=str(manifest), spec=spec))
    assert "\x1b" not in text
    assert "2 done, 1 failed, 1 pending, 0 changed (manifest: 4 items)" in text
    assert "3.00 items/min" in text
    worker_rows = [line.split() for line in text.splitlines() if line.strip().startswith("w0")]
    assert worker_rows == [["w0", "ready", "c", "2/3", "2", "12.5s"]]
    error_rows = [line.split()[:3] for line in text.splitlines() if line.strip().startswith("c ")]
    assert error_rows == [["c", "InputMediaError", "3"]]
