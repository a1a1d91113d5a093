"""B4: resume planning over 100,000 manifest entries with 99,000 done.

The done items sit as a finished run leaves them: one compacted index part, plus a few hundred
real commits since the last compaction and a few failure records. Reading the root's state and
classifying every entry (what `run` and `status` do) is timed on local disk and on a moto S3
server, trusting the index (`--trust-index`), and its storage calls are counted by a wrapping
filesystem; the same is done with 10,000 done items to show that the call count does not depend
on it. On local disk the default, verified state is timed too, with every compacted item's video
and marker on disk: it adds one listing each of `videos/` and `items/` (on S3, one
ListObjectsV2 page per 1,000 keys: 200 requests per 100,000 done items).

    python benchmarks/b4_resume_plan.py [--skip-s3]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import fsspec

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from s3server import s3_server  # noqa: E402
from test_store_fswrap import CountingFS  # noqa: E402

from pusa_batch.engine.plan import classify  # noqa: E402
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
        "video_bytes": 16,
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


def write_files(folder: Path, markers: list[dict]) -> list[int]:
    """Each compacted item's 16-byte video and its marker on local disk; the markers' sizes."""
    (folder / "videos").mkdir(parents=True, exist_ok=True)
    (folder / "items").mkdir(exist_ok=True)
    sizes = []
    for marker in markers:
        (folder / "videos" / f"{marker['id']}.mp4").write_bytes(b"\0" * 16)
        data = json.dumps(marker, sort_keys=True).encode()
        (folder / "items" / f"{marker['id']}.json").write_bytes(data)
        sizes.append(len(data))
    return sizes


def fill_root(url: str, options: dict, n_done: int, with_files: bool = False) -> None:
    store = Store(url, options)
    n_compacted = n_done - N_RECENT
    markers = [compacted_marker(n) for n in range(n_compacted)]
    sizes = write_files(Path(url), markers) if with_files else None
    store.root.write_bytes(f"{INDEX_DIR}/{part_name(1)}", encode_part(markers, sizes))
    for n in range(n_compacted, n_done):
        store.commit(item_id(n), b"\0" * 2048, {"fingerprint": fingerprint(n), "seed": n})
    for n in range(n_done, n_done + N_FAILED):
        store.record_failure(item_id(n), {"error_type": "OutOfMemoryError", "attempts": 3})


def timed_plan(
    url: str, options: dict, entries: list, repeats: int, verify: bool = False
) -> tuple[float, int, dict]:
    """Best of `repeats` state reads + classifications; calls counted on the last one."""
    best, counting, kinds = float("inf"), None, Counter()
    for _ in range(repeats):
        inner, _ = fsspec.core.url_to_fs(url, **options)
        counting = CountingFS(inner)
        store = Store(url, options, filesystem=counting)
        start = time.perf_counter()
        state = store.state(verify=verify)
        kinds = Counter(classify(state, i, f).value for i, f in entries)
        best = min(best, time.perf_counter() - start)
    return best, counting.total, dict(kinds) | {"calls": dict(counting.calls)}


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
    with tempfile.TemporaryDirectory() as tmp:
        url = f"{tmp}/verified"
        fill_root(url, {}, 99_000, with_files=True)
        entries = [(item_id(n), fingerprint(n)) for n in range(N_ENTRIES)]
        verified_s, calls, counts = timed_plan(url, {}, entries, repeats=3, verify=True)
    verdict = "pass" if verified_s <= TARGET_S else "miss"
    print(f"  local verified done=99000: plan {verified_s:.3f} s, {counts}")
    print(
        f"B4 resume_plan_local_verified_seconds={verified_s:.3f} calls={calls} "
        f"target<={TARGET_S:g} {verdict} (baseline: trusting the index {local_s:.3f} s)"
    )
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
