"""The output root, spec by spec, on memory://, a local folder and the S3 test server alike."""

from __future__ import annotations

import hashlib
import pickle
import uuid
from collections.abc import Callable

import fsspec
import pyarrow.parquet as pq
import pytest
from store_support import planned
from test_store_fswrap import CountingFS, FailingFS, FlakyFS
from test_store_s3 import s3_root

from pusa_batch.errors import LeaseError, StoreError
from pusa_batch.store.io import RetryPolicy, redact_url
from pusa_batch.store.store import Store

FAST_RETRY = RetryPolicy(attempts=5, base_delay=0.001, max_delay=0.005)
StoreFactory = Callable[..., Store]


@pytest.fixture(params=["memory", "local", "s3"])
def open_store(request, tmp_path) -> StoreFactory:
    """Opens Stores on one fresh root; `wrap` puts a filesystem wrapper in between."""
    if request.param == "memory":
        url, options = f"memory://t-{uuid.uuid4().hex[:10]}", {}
    elif request.param == "local":
        url, options = str(tmp_path / "out"), {}
    else:
        url, options = s3_root(), request.getfixturevalue("s3").storage_options

    def make(wrap: Callable | None = None) -> Store:
        if wrap is None:
            return Store(url, options, retry=FAST_RETRY)
        inner, _ = fsspec.core.url_to_fs(url, **options)
        return Store(url, options, filesystem=wrap(inner), retry=FAST_RETRY)

    return make


def all_files(store: Store) -> list[str]:
    fs, root = store.root.fs, store.root.root
    return sorted(p[len(root) + 1 :] for p in fs.find(root))


def test_a_committed_item_is_done_with_size_hash_and_fingerprint(open_store):
    store = open_store()
    store.commit("a", b"mp4-bytes", {"fingerprint": "f1", "prompt": "a cat"})
    marker = store.read_item("a")
    assert planned(store, [("a", "f1"), ("b", "f1")]).done == ("a",)
    assert marker["video"] == "videos/a.mp4" and marker["video_bytes"] == 9
    assert marker["video_sha256"] == hashlib.sha256(b"mp4-bytes").hexdigest()
    assert (marker["fingerprint"], marker["prompt"]) == ("f1", "a cat")
    with store.open_video("a") as handle:
        assert handle.read() == b"mp4-bytes"


def test_a_marker_without_its_video_is_not_done(open_store):
    store = open_store()
    store.commit("a", b"video", {"fingerprint": "f1"})
    store.root.delete("videos/a.mp4")
    assert planned(store, [("a", "f1")]).pending == ("a",)
    assert not store.is_done("a")


def test_a_marker_whose_video_has_another_size_is_not_done(open_store):
    store = open_store()
    store.commit("a", b"full video", {"fingerprint": "f1"})
    store.root.write_bytes("videos/a.mp4", b"trunc")
    plan = planned(store, [("a", "f1")])
    assert plan.pending == ("a",) and plan.orphans == ("a",)


def test_a_crash_before_the_marker_leaves_an_orphan_that_a_later_commit_overwrites(open_store):
    crashing = open_store(
        lambda fs: FailingFS(fs, lambda name, path: "/items/" in path, lambda: PermissionError())
    )
    with pytest.raises(StoreError, match="permission denied"):
        crashing.commit("a", b"first try", {"fingerprint": "f1"})
    store = open_store()
    plan = planned(store, [("a", "f1")])
    assert (plan.pending, plan.orphans, plan.done) == (("a",), ("a",), ())
    store.commit("a", b"second try", {"fingerprint": "f1"})
    assert planned(store, [("a", "f1")]).done == ("a",)
    assert store.open_video("a").read() == b"second try"


def test_a_changed_fingerprint_is_reported_before_and_after_compaction(open_store):
    store = open_store()
    store.commit("a", b"v", {"fingerprint": "old"})
    assert planned(store, [("a", "new")]).changed == ("a",)
    store.compact_index()
    assert planned(store, [("a", "new")]).changed == ("a",)
    assert planned(store, [("a", "old")]).done == ("a",)


def test_a_recommit_after_compaction_overrides_the_index(open_store):
    store = open_store()
    store.commit("a", b"v1", {"fingerprint": "old"})
    store.compact_index()
    store.commit("a", b"v2!", {"fingerprint": "new"})
    assert planned(store, [("a", "new")]).done == ("a",)
    store.compact_index()
    assert planned(store, [("a", "new")]).done == ("a",)
    assert [m["video_bytes"] for m in store.iter_done_metadata()] == [3]


def test_a_failure_is_reported_until_a_success_clears_it(open_store):
    store = open_store()
    store.record_failure("a", {"error_type": "OutOfMemoryError", "attempts": 2, "node": "n1"})
    plan = planned(store, [("a", "f1")])
    assert (plan.pending, plan.failed) == (("a",), ("a",))
    assert [f["error_type"] for f in store.iter_failures()] == ["OutOfMemoryError"]
    store.commit("a", b"v", {"fingerprint": "f1"})
    assert planned(store, [("a", "f1")]).failed == ()
    assert store.read_failure("a") is None and list(store.iter_failures()) == []


def test_status_counts_come_from_the_root_alone(open_store):
    store = open_store()
    for item_id in ("a", "b", "c"):
        store.commit(item_id, b"v", {"fingerprint": "f"})
    store.compact_index()
    store.commit("d", b"v", {"fingerprint": "f"})
    store.record_failure("e", {"error_type": "X"})
    assert store.status_counts() == {
        "done": 4,
        "failed": 1,
        "damaged": 0,
        "orphans": 0,
        "uncompacted": 1,
    }


def test_a_live_lease_refuses_a_second_run_and_names_the_holder(open_store):
    store = open_store()
    lease = store.acquire_lease({"run_id": "r1", "host": "gpu-7", "pid": 4242})
    with pytest.raises(LeaseError) as refused:
        open_store().acquire_lease({"run_id": "r2"})
    message = str(refused.value)
    for part in ("r1", "gpu-7", "4242", lease.record["started_at"], "last heartbeat"):
        assert part in message
    lease.release()


def test_a_stale_lease_is_taken_over_with_a_note_and_the_old_holder_learns_it(open_store):
    old = open_store().acquire_lease({"run_id": "r1"})
    new = open_store().acquire_lease({"run_id": "r2"}, stale_after_s=0)
    assert "took over a stale lease" in new.note and "r1" in new.note
    with pytest.raises(LeaseError, match="lost the lease"):
        old.heartbeat()
    new.heartbeat()
    old.release()  # not ours any more: must leave the new holder's lease alone
    assert open_store().root.read_json("lease.json")["token"] == new.token


def test_a_released_lease_can_be_acquired_again(open_store):
    open_store().acquire_lease({"run_id": "r1"}).release()
    assert open_store().acquire_lease({"run_id": "r2"}).note is None


def test_compaction_keeps_the_plan_and_reduces_storage_calls(open_store):
    store = open_store()
    for n in range(12):
        store.commit(f"i{n:02d}", b"v" * n, {"fingerprint": "f"})
    store.record_failure("x", {"error_type": "E"})
    entries = [(f"i{n:02d}", "f" if n % 3 else "g") for n in range(14)] + [("x", "f")]
    counting = open_store(CountingFS)
    before = planned(counting, entries)
    calls_before = counting.root.fs.total
    store.compact_index()
    counting.root.fs.reset()
    assert planned(counting, entries) == before
    assert counting.root.fs.total < calls_before


def test_plan_calls_do_not_grow_with_the_number_of_done_items(open_store):
    store, counting = open_store(), open_store(CountingFS)

    def plan_calls_with(n_done: int) -> int:
        for n in range(n_done):
            store.commit(f"i{n}", b"v", {"fingerprint": "f"})
        store.compact_index(max_parts=1)
        counting.root.fs.reset()
        assert len(planned(counting, [(f"i{n}", "f") for n in range(n_done)]).done) == n_done
        return counting.root.fs.total

    assert plan_calls_with(3) == plan_calls_with(30)


def test_parts_beyond_the_limit_are_merged_without_changing_the_plan(open_store):
    store = open_store()
    merged = []
    for n in range(4):
        store.commit(f"i{n}", b"v", {"fingerprint": f"f{n}"})
        store.commit("shared", b"s" * (n + 1), {"fingerprint": f"s{n}"})
        merged.append(store.compact_index(max_parts=3).merged_parts)
    entries = [(f"i{n}", f"f{n}") for n in range(4)] + [("shared", "s3")]
    assert merged == [0, 0, 0, 4]
    assert len(store.root.list_names("index")) == 1
    assert planned(store, entries).done == tuple(i for i, _ in entries)


def test_transient_errors_are_retried_and_nothing_is_duplicated(open_store):
    flaky = open_store(lambda fs: FlakyFS(fs, k=2))
    flaky.commit("a", b"v1", {"fingerprint": "f"})
    flaky.commit("b", b"v2", {"fingerprint": "f"})
    flaky.record_failure("c", {"error_type": "E"})
    flaky.compact_index()
    flaky.commit("d", b"v4", {"fingerprint": "f"})
    lease = flaky.acquire_lease({"run_id": "r"})
    plan = planned(flaky, [("a", "f"), ("b", "f"), ("c", "f"), ("d", "f")])
    assert (plan.done, plan.failed) == (("a", "b", "d"), ("c",))
    assert flaky.root.fs.failures > 0
    lease.release()
    files = [f for f in all_files(open_store()) if not f.startswith(("index/", "recent/"))]
    assert files == [
        "failures/c.json",
        "items/a.json",
        "items/b.json",
        "items/d.json",
        "videos/a.mp4",
        "videos/b.mp4",
        "videos/d.mp4",
    ]


def test_no_temporary_file_is_left_under_videos_even_when_a_write_fails(open_store):
    def video_publish(name: str, path: str) -> bool:  # local: the rename; others: the PUT
        return name == "mv" or (name == "pipe_file" and "/videos/" in path)

    failing = open_store(lambda fs: FailingFS(fs, video_publish, lambda: PermissionError()))
    with pytest.raises(StoreError):
        failing.commit("b", b"never", {"fingerprint": "f"})
    open_store().commit("a", b"v", {"fingerprint": "f"})
    files = all_files(open_store())
    assert [f for f in files if f.startswith("videos/")] == ["videos/a.mp4"]
    assert [f for f in files if f.startswith(".tmp/")] == []


def test_the_final_index_has_one_flat_row_per_done_item(open_store):
    store = open_store()
    store.commit("b", b"vv", {"fingerprint": "f", "seed": 7, "lora": [{"name": "x"}]})
    store.commit("a", b"v", {"fingerprint": "f", "seed": 3, "lora": []})
    store.compact_index()
    store.commit("a", b"vvv", {"fingerprint": "g", "seed": 5, "lora": []})
    assert store.write_final_index() == 2
    table = pq.read_table(store.root.fs.open(store.root.path("index.parquet")))
    assert table["id"].to_pylist() == ["a", "b"]
    assert table["seed"].to_pylist() == [5, 7]
    assert table["video_bytes"].to_pylist() == [3, 2]
    assert '"name": "x"' in table["nested_json"][1].as_py()


def test_unsafe_item_ids_are_refused_with_the_rule(open_store):
    store = open_store()
    for bad in ("../escape", "a/b", "", ".hidden", "x@y"):
        with pytest.raises(StoreError, match="cannot be used as a file name"):
            store.commit(bad, b"v", {})


def test_a_store_survives_pickling_for_workers(open_store):
    store = open_store()
    store.commit("a", b"v", {"fingerprint": "f"})
    assert planned(pickle.loads(pickle.dumps(store)), [("a", "f")]).done == ("a",)


def test_urls_with_credentials_are_redacted():
    url = "s3://AKIAFAKE:supersecret@bucket/out?X-Amz-Signature=abc123"
    assert redact_url(url) == "s3://***@bucket/out?X-Amz-Signature=***"
    assert repr(Store("memory://plain/root")) == "Store('memory://plain/root')"


def test_metadata_that_is_not_json_is_refused_before_anything_is_written(open_store):
    store = open_store()
    with pytest.raises(StoreError, match="item a.*not plain JSON"):
        store.commit("a", b"v", {"fingerprint": "f", "seed": float("nan")})
    assert [f for f in all_files(store) if not f.startswith(".tmp")] == []
