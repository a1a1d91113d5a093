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
    Rules,
    classify,
    count_plan,
    iter_todo,
)
from pusa_batch.engine.run import run
from pusa_batch.errors import ChangedItemsError
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
