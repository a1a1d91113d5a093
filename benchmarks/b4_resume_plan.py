"""B4: resume planning over 100,000 manifest entries with 99,000 done.

The done items sit as a finished run leaves them: one compacted index part, plus a few hundred
real commits since the last compaction and a few failure records. `plan()` is timed on local
disk and on a moto S3 server, and its storage calls are counted by a wrapping filesystem; the
same is done with 10,000 done items to show that the call count does not depend on it.

    python benchmarks/b4_resume_plan.py [--skip-s3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path

import fsspec

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from s3server import s3_server  # noqa: E402
from test_store_fswrap import CountingFS  # noqa: E402

from pusa_batch.store.index import INDEX_DIR, encode_part, part_name  # noqa: E402
from pusa_batch.store.store import Store  # noqa: E402

N_ENTRIES = 100_000
N_RECENT = 300
N_FAILED = 50
TARGET_S = 3.0


def item_id(n: int) -> str:
    return f"item-{n:06d}"


def fingerprint(n: int) -> str:
    return f"{n * 2654435761 % 2**32:08x}{'0' * 56}"


def compacted_marker(n: int) -> dict:
    """What a real commit records, for an item of a finished run."""
    return {
        "id": item_id(n),
        "fingerprint": fingerprint(n),
        "video": f"videos/{item_id(n)}.mp4",
        "video_bytes": 1_500_000 + n,
        "video_sha256": f"{n:064x}",
        "committed_at": "2026-01-01T00:00:00.000+00:00",
        "commit_token": f"{1_700_000_000_000_000_000 + n:020d}-{n:012x}",
        "prompt": f"a slow dolly shot of scene {n}, golden hour, 35mm film grain",
        "task": "t2v",
        "seed": n,
        "num_frames": 81,
        "height": 480,
        "width": 832,
        "steps": 10,
        "timings": {"sample_s": 61.2, "decode_s": 4.1, "encode_s": 0.6},
    }


def fill_root(url: str, options: dict, n_done: int) -> None:
    store = Store(url, options)
    n_compacted = n_done - N_RECENT
    markers = [compacted_marker(n) for n in range(n_compacted)]
    store.root.write_bytes(f"{INDEX_DIR}/{part_name(1)}", encode_part(markers))
    for n in range(n_compacted, n_done):
        store.commit(item_id(n), b"\0" * 2048, {"fingerprint": fingerprint(n), "seed": n})
    for n in range(n_done, n_done + N_FAILED):
        store.record_failure(item_id(n), {"error_type": "OutOfMemoryError", "attempts": 3})


def timed_plan(url: str, options: dict, entries: list, repeats: int) -> tuple[float, int, dict]:
    """Best of `repeats` runs of plan(); calls counted on the last one."""
    best, counting = float("inf"), None
    for _ in range(repeats):
        inner, _ = fsspec.core.url_to_fs(url, **options)
        counting = CountingFS(inner)
        store = Store(url, options, filesystem=counting)
        start = time.perf_counter()
        plan = store.plan(entries)
        best = min(best, time.perf_counter() - start)
    return best, counting.total, plan.counts() | {"calls": dict(counting.calls)}


def measure(label: str, make_url, options: dict, repeats: int) -> float:
    entries = [(item_id(n), fingerprint(n)) for n in range(N_ENTRIES)]
    results = {}
    for n_done in (99_000, 10_000):
        url = make_url()
        start = time.perf_counter()
        fill_root(url, options, n_done)
        setup_s = time.perf_counter() - start
        seconds, calls, counts = timed_plan(url, options, entries, repeats)
        results[n_done] = (seconds, calls)
        print(f"  {label} done={n_done}: setup {setup_s:.1f} s, plan {seconds:.3f} s, {counts}")
    (seconds, calls), (_, calls_10k) = results[99_000], results[10_000]
    same = "yes" if calls == calls_10k else "no"
    print(
        f"B4 resume_plan_{label}_calls={calls} calls_at_10k_done={calls_10k} same={same} "
        f"(recent markers={N_RECENT}, failures={N_FAILED})"
    )
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-s3", action="store_true", help="local disk only")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        local_s = measure("local", lambda: f"{tmp}/{uuid.uuid4().hex[:8]}", {}, repeats=3)
    verdict = "pass" if local_s <= TARGET_S else "miss"
    print(f"B4 resume_plan_local_seconds={local_s:.3f} target<={TARGET_S:g} {verdict}")
    if args.skip_s3:
        return
    with s3_server() as server:
        bucket = server.make_bucket("b4-bench")
        new_url = lambda: f"{bucket}/{uuid.uuid4().hex[:8]}"  # noqa: E731
        s3_s = measure("s3", new_url, server.storage_options, repeats=1)
    print(
        f"B4 resume_plan_s3_seconds={s3_s:.3f} (moto_server on localhost; its per-request "
        "cost dominates: the time is the recent markers, not the 99,000 indexed items)"
    )


if __name__ == "__main__":
    main()
