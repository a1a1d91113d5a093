"""The run's planning passes (no Ray): counts from one read of the root's state, nothing held
per manifest row, and changed items refused with their full count.

Roots are real output roots: done items are written as a compacted index part, the way the
store's compaction writes them (committing 200k videos one by one would take minutes).
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest

from pusa_batch.engine.config import RunConfig
from pusa_batch.engine.plan import (
    MAX_CHANGED_IDS,
    PLAN_CHUNK_ROWS,
    ItemKind,
    Rules,
    classify,
    count_plan,
    iter_todo,
    make_plan,
)
from pusa_batch.engine.run import run
from pusa_batch.errors import ChangedItemsError, ManifestError
from pusa_batch.manifest.read import item_fingerprint, iter_items
from pusa_batch.pipelines.spec import load_pipeline_spec
from pusa_batch.store.index import encode_part, part_name
from pusa_batch.store.store import Store

TINY = Path(__file__).resolve().parents[1] / "pipelines" / "tiny.toml"
SPEC = load_pipeline_spec(TINY)


def write_manifest(path: Path, rows: int) -> Path:
    """t2v rows that differ only by id (the fingerprint ignores ids: one serves every row)."""
    with path.open("w") as f:
        f.write("id,task,prompt,seed\n")
        f.writelines(f"r{n:07d},t2v,a red cat,1\n" for n in range(rows))
    return path


def row_fingerprint(manifest: Path) -> str:
    item = next(iter_items(str(manifest), SPEC))
    return item_fingerprint(item, SPEC.identity(), temporal_factor=SPEC.temporal_factor)


def write_done(output: Path, fingerprints: dict[str, str]) -> None:
    """Index part 1 lists these ids as done with these fingerprints (a compacted root)."""
    markers = [
        {
            "id": i,
            "fingerprint": fingerprint,
            "video": f"videos/{i}.mp4",
            "video_bytes": 1,
            "video_sha256": "0" * 64,
            "committed_at": "2025-01-01T00:00:00.000+00:00",
            "commit_token": "0",
        }
        for i, fingerprint in fingerprints.items()
    ]
    (output / "index").mkdir(parents=True, exist_ok=True)
    (output / "index" / part_name(1)).write_bytes(encode_part(markers))


def config(manifest: Path, output: Path, **overrides) -> RunConfig:
    return RunConfig(str(manifest), str(output), str(TINY), **overrides)


ROWS = 50_000


@pytest.fixture(scope="module")
def big_root(tmp_path_factory):
    """A 50k-row manifest whose rows are all done but every tenth."""
    folder = tmp_path_factory.mktemp("big")
    manifest = write_manifest(folder / "big.csv", ROWS)
    fingerprint = row_fingerprint(manifest)
    write_done(folder / "out", {f"r{n:07d}": fingerprint for n in range(ROWS) if n % 10})
    return manifest, folder / "out", Store(str(folder / "out")).state(verify=False)


def traced_peak(work) -> int:
    """Peak bytes allocated while `work()` runs (what it held at its fullest)."""
    tracemalloc.start()
    try:
        work()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def consume(iterable) -> None:
    for _ in iterable:
        pass


@pytest.fixture(scope="module")
def reading_peak(big_root) -> int:
    """The floor: reading the manifest's items alone (iter_items keeps a 16-byte hash per row
    for its duplicate-id check; that much grows with the manifest whatever the engine does)."""
    manifest, _, _ = big_root
    return traced_peak(lambda: consume(iter_items(str(manifest), SPEC, chunk_rows=PLAN_CHUNK_ROWS)))


def test_planning_counts_done_and_pending_rows_from_the_root(big_root):
    manifest, out, state = big_root
    plan = count_plan(str(manifest), SPEC, state)
    assert (plan.total, plan.done, plan.todo, plan.changed) == (ROWS, 45_000, 5_000, 0)


def test_planning_keeps_nothing_per_row(big_root, reading_peak):
    # Holding even 5 bytes per row (an id list, a dict of fingerprints) would add 250 KB.
    manifest, out, state = big_root
    peak = traced_peak(lambda: count_plan(str(manifest), SPEC, state))
    assert peak - reading_peak < 250_000, (reading_peak, peak)


def test_the_dispatch_pass_keeps_nothing_per_row(big_root, reading_peak):
    manifest, out, state = big_root
    peak = traced_peak(lambda: consume(iter_todo(str(manifest), SPEC, state)))
    assert peak - reading_peak < 500_000, (reading_peak, peak)


def test_the_dispatch_pass_yields_the_pending_rows_in_manifest_order(tmp_path):
    manifest = write_manifest(tmp_path / "m.csv", 30)
    fingerprint = row_fingerprint(manifest)
    write_done(tmp_path / "out", {f"r{n:07d}": fingerprint for n in range(30) if n % 3})
    state = Store(str(tmp_path / "out")).state(verify=False)
    pending = list(iter_todo(str(manifest), SPEC, state))
    assert [p.id for p in pending] == [f"r{n:07d}" for n in range(0, 30, 3)]
    assert all(p.item.prompt == "a red cat" and p.cost > 0 for p in pending)


def test_each_row_is_done_changed_failed_or_pending(tmp_path):
    manifest = write_manifest(tmp_path / "m.csv", 4)
    fingerprint = row_fingerprint(manifest)
    write_done(tmp_path / "out", {"r0000000": fingerprint, "r0000001": "an older fingerprint"})
    Store(str(tmp_path / "out")).record_failure("r0000002", {"error_type": "E", "message": "m"})
    state = Store(str(tmp_path / "out")).state(verify=False)
    kinds = [classify(state, f"r{n:07d}", fingerprint) for n in range(4)]
    assert kinds == ["done", "changed", "failed", "pending"]


def test_many_changed_items_stop_the_run_with_their_full_count(tmp_path):
    rows = MAX_CHANGED_IDS + 500
    manifest = write_manifest(tmp_path / "m.csv", rows)
    write_done(tmp_path / "out", {f"r{n:07d}": "an older fingerprint" for n in range(rows)})
    with pytest.raises(ChangedItemsError, match=f"^{rows} item\\(s\\) already done") as caught:
        run(config(manifest, tmp_path / "out", trust_index=True))  # no videos behind the index
    assert len(caught.value.changed_ids) == MAX_CHANGED_IDS
    assert caught.value.changed_ids[:2] == ["r0000000", "r0000001"]
    assert not (tmp_path / "out" / "videos").exists()


def test_a_failure_from_an_earlier_run_is_skipped_unless_retried(tmp_path):
    manifest = write_manifest(tmp_path / "m.csv", 4)
    Store(str(tmp_path / "out")).record_failure("r0000002", {"error_type": "E", "message": "m"})
    state = Store(str(tmp_path / "out")).state(verify=False)
    skipped = count_plan(str(manifest), SPEC, state)
    retried = count_plan(str(manifest), SPEC, state, Rules(retry_failed=True))
    assert (skipped.todo, skipped.failed_before) == (3, 1)
    assert (retried.todo, retried.failed_before) == (4, 0)


def mixed_root(tmp_path: Path) -> tuple[Path, Store, dict[str, str]]:
    """Ten rows, each kind twice, through the real store: done and changed (compacted or
    committed since), failed, damaged (video deleted after compaction), pending."""
    manifest = tmp_path / "m.csv"
    with manifest.open("w") as f:
        f.write("id,task,prompt,seed\n")
        f.writelines(f"r{n},t2v,scene {n},{n}\n" for n in range(10))
    items = {i.id: i for i in iter_items(str(manifest), SPEC)}
    fingerprint = {
        i: item_fingerprint(item, SPEC.identity(), temporal_factor=SPEC.temporal_factor)
        for i, item in items.items()
    }
    store = Store(str(tmp_path / "out"))
    for item_id in ("r0", "r2", "r6"):
        store.commit(item_id, b"v", {"fingerprint": fingerprint[item_id]})
    store.commit("r3", b"v", {"fingerprint": "an older fingerprint"})
    store.compact_index()
    store.root.delete("videos/r6.mp4")
    store.commit("r1", b"v", {"fingerprint": fingerprint["r1"]})
    store.commit("r4", b"v", {"fingerprint": "an older fingerprint"})
    for item_id in ("r5", "r8"):
        store.record_failure(item_id, {"error_type": "E", "message": "m"})
    store.root.write_bytes("recent/r9@0000", b"")  # a commit that never finished: pending
    expected = {
        "r0": "done",
        "r1": "done",
        "r2": "done",
        "r3": "changed",
        "r4": "changed",
        "r5": "failed",
        "r6": "damaged",
        "r7": "pending",
        "r8": "failed",
        "r9": "pending",
    }
    return manifest, store, expected


def test_each_row_of_a_mixed_root_is_classified_as_the_row_by_row_rule_says(tmp_path):
    manifest, store, expected = mixed_root(tmp_path)
    state = store.state()
    plan = count_plan(str(manifest), SPEC, state)
    counted = {k: getattr(plan, k) for k in ("done", "changed", "failed", "damaged")}
    assert counted == {"done": 3, "changed": 2, "failed": 2, "damaged": 1}
    assert (plan.pending, plan.total, plan.todo, plan.failed_before) == (2, 10, 3, 2)
    assert sorted(plan.changed_ids) == ["r3", "r4"]
    for item in iter_items(str(manifest), SPEC):
        fp = item_fingerprint(item, SPEC.identity(), temporal_factor=SPEC.temporal_factor)
        assert classify(state, item.id, fp).value == expected[item.id], item.id


def test_without_a_pipeline_a_done_row_is_done_whatever_its_fingerprint(tmp_path):
    manifest, store, _ = mixed_root(tmp_path)
    plan = count_plan(str(manifest), None, store.state())
    assert (plan.done, plan.changed, plan.damaged) == (5, 0, 1)


@pytest.mark.parametrize("kept", [0, 2, 1024])
def test_the_dispatch_pass_of_a_plan_yields_exactly_its_todo_rows_in_manifest_order(tmp_path, kept):
    manifest, store, expected = mixed_root(tmp_path)
    state = store.state()
    for rules in (Rules(), Rules(retry_failed=True), Rules(True, True)):
        plan = make_plan(str(manifest), SPEC, state, rules, keep_todo_items=kept)
        todo = [p.id for p in iter_todo(str(manifest), SPEC, state, rules, plan=plan)]
        wanted = [i for i, kind in expected.items() if rules.is_todo(ItemKind(kind))]
        assert todo == wanted and len(todo) == plan.counts.todo
        assert [p.id for p in iter_todo(str(manifest), SPEC, state, rules)] == wanted


def test_the_dispatch_pass_carries_each_rows_item_and_fingerprint(tmp_path):
    manifest, store, _ = mixed_root(tmp_path)
    state = store.state()
    items = {i.id: i for i in iter_items(str(manifest), SPEC)}
    for pending in iter_todo(
        str(manifest), SPEC, state, plan=make_plan(str(manifest), SPEC, state)
    ):
        item = items[pending.id]
        assert pending.item == item and pending.cost == item.cost()
        assert pending.fingerprint == item_fingerprint(
            item, SPEC.identity(), temporal_factor=SPEC.temporal_factor
        )


def test_the_rows_to_do_are_kept_in_two_bytes_each_at_most(big_root):
    manifest, _, state = big_root
    plan = make_plan(str(manifest), SPEC, state)
    kept = sum(rows.packed.nbytes for rows in plan.todo_rows)
    assert plan.counts.todo == 5_000 and kept <= 2 * plan.counts.todo


def test_a_chunk_that_is_all_to_do_is_kept_as_a_bitmap(tmp_path):
    manifest = write_manifest(tmp_path / "m.csv", PLAN_CHUNK_ROWS + 10)
    state = Store(str(tmp_path / "out")).state()
    plan = make_plan(str(manifest), SPEC, state)
    assert [(r.chunk, r.bitmap) for r in plan.todo_rows] == [(0, True), (1, True)]
    assert sum(r.packed.nbytes for r in plan.todo_rows) == PLAN_CHUNK_ROWS // 8 + 2


def test_a_row_read_again_and_done_since_the_count_is_not_dispatched(tmp_path):
    manifest, store, _ = mixed_root(tmp_path)
    state = store.state()
    plan = make_plan(str(manifest), SPEC, state, keep_todo_items=0)
    later = Store(str(tmp_path / "out"))
    fp = item_fingerprint(
        next(i for i in iter_items(str(manifest), SPEC) if i.id == "r7"),
        SPEC.identity(),
        temporal_factor=SPEC.temporal_factor,
    )
    later.commit("r7", b"v", {"fingerprint": fp})
    todo = [p.id for p in iter_todo(str(manifest), SPEC, later.state(), plan=plan)]
    assert todo == ["r6", "r9"]


def test_the_first_items_to_do_come_from_the_counting_pass_without_reading_again(tmp_path):
    manifest, store, _ = mixed_root(tmp_path)
    state = store.state()
    plan = make_plan(str(manifest), SPEC, state, keep_todo_items=2)
    manifest.unlink()
    todo = iter_todo(str(manifest), SPEC, state, plan=plan)
    assert [next(todo).id, next(todo).id] == ["r6", "r7"]
    with pytest.raises(ManifestError, match="manifest not found"):
        next(todo)
