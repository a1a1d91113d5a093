"""B10: the index's work at the end of a run, and its cost over a whole run.

1. End of a run over a root with 990,000 items done and 10 made by this run: the last compaction
   (`Store.compact_index`) and the final `index.parquet` (`Store.write_final_index` with the
   run's state), timed in a fresh process with its peak RSS. The done items sit in the tiers a
   run of 200-item compactions leaves (`fake_root.py`); the previous run's index.parquet is
   there. Target: <= 2 s and <= 300 MB. Baseline, measured here: the old final index, which
   parsed and flattened every marker, timed on 50,000 markers and scaled to 990,000.
2. A run of n items, committed 200 at a time as the workers' commits leave them (pointer, video,
   marker), each batch followed by `Store.compact_index`: the index's total seconds, and the rows
   and bytes the tier merges rewrite per item, at n = 25,000 and n = 100,000. A quadratic index
   (the old rule: merging everything whenever there were more than 32 parts, counted here on
   the same batches) rewrites about 4x more per item at 4n; log-structured tiers about
   log(4n)/log(n) more. Target: the index bytes written per item at 4n <= 1.5x those at n.

    python benchmarks/b10_index.py [--done N] [--run-items N] [--skip-run]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import fake_root  # noqa: E402
from bench_common import peak_rss_bytes, python_as_run_starts, rss_bytes  # noqa: E402

from pusa_batch.store.store import Store  # noqa: E402

NEW_ITEMS = 10
BASELINE_MARKERS = 50_000
TARGET_S = 2.0
TARGET_RSS_MB = 300.0
TARGET_GROWTH = 1.5
SLOWDOWN_ENV = "PUSA_BENCH_SLOWDOWN"


# --------------------------------------------------------------------------- 1. end of a run


def end_of_run(args: dict) -> dict:
    """In a fresh process: the run's last compaction and its final index."""
    from pusa_batch.store.index import RootState

    store = Store(args["url"])
    state = RootState()  # the run's own state found nothing damaged (B4 times reading it)
    before = rss_bytes() / 2**20
    started, cpu = time.perf_counter(), time.process_time()
    compacted = store.compact_index()
    compact_s = time.perf_counter() - started
    rows = store.write_final_index(state)
    time.sleep(args["slowdown"])
    return {
        "seconds": time.perf_counter() - started,
        "compact_s": compact_s,
        "cpu_s": time.process_time() - cpu,
        "rss_mb": peak_rss_bytes() / 2**20,
        "rss_before_mb": before,
        "folded": compacted.folded,
        "merged_parts": compacted.merged_parts,
        "rows": rows,
    }


def child(mode: str, args: dict) -> dict:
    done = subprocess.run(
        [*python_as_run_starts(__file__), "--child", mode, json.dumps(args)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def old_final_index_seconds(root: str, markers: int) -> float:
    """The old final index on `markers` markers: each parsed from its JSON and flattened row by
    row (`flat_columns` is that flattening), then written."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pusa_batch.store.parts import flat_columns, list_parts, table_bytes

    biggest = list_parts(Store(root).root)[0]
    texts = pq.read_table(f"{root}/{biggest.rel}", columns=["marker_json"])["marker_json"]
    texts = texts.slice(0, markers).to_pylist()
    started = time.perf_counter()
    parsed = sorted((json.loads(t) for t in texts), key=lambda m: m["id"])
    table_bytes(pa.table(flat_columns(parsed)))
    return time.perf_counter() - started


def measure_end_of_run(done: int, slowdown: float) -> None:
    import pyarrow as pa
    import pyarrow.compute as pc

    with tempfile.TemporaryDirectory() as tmp:
        began = time.perf_counter()
        numbers = pa.array(range(done + NEW_ITEMS)).cast(pa.string())
        fps = pc.utf8_lpad(numbers, 64, "0")  # no plan runs here: any fingerprint will do
        root = f"{tmp}/root"
        store = Store(root)
        fake_root.write_parts(store, fps.slice(0, done))
        store.write_final_index(store.state(verify=False))  # the previous run's
        fake_root.commit_and_fail(store, range(done, done + NEW_ITEMS), range(0), fps)
        print(f"  setup: {done} done, {NEW_ITEMS} new, in {time.perf_counter() - began:.1f} s")
        result = child("end", {"url": root, "slowdown": slowdown})
        sample = min(done, BASELINE_MARKERS)
        baseline = old_final_index_seconds(root, sample) * done / sample
    print(
        f"  end of a run: {result['seconds']:.2f} s (compaction {result['compact_s']:.2f}), "
        f"{result['cpu_s']:.2f} s of CPU, peak RSS "
        f"{result['rss_mb']:.0f} MB ({result['rss_before_mb']:.0f} MB before), folded "
        f"{result['folded']}, merged {result['merged_parts']} part(s), {result['rows']} rows"
    )
    print(f"  baseline: the old final index, {sample} markers, scaled: {baseline:.1f} s")
    tag = "990k" if done == 990_000 else str(done)
    verdict = "pass" if result["seconds"] <= TARGET_S else "miss"
    print(
        f"B10 index_end_of_run_{tag}_s={result['seconds']:.3f} cpu_s={result['cpu_s']:.2f} "
        f"rss_mb={result['rss_mb']:.0f} baseline_s={baseline:.1f} target<={TARGET_S:g} {verdict}"
    )
    verdict = "pass" if result["rss_mb"] <= TARGET_RSS_MB else "miss"
    name = f"index_end_of_run_{tag}_peak_rss_mb"
    print(f"B10 {name}={result['rss_mb']:.0f} target<={TARGET_RSS_MB:g} {verdict}")


# --------------------------------------------------------------------------- 2. over a run

BATCH = fake_root.PER_COMPACTION


def marker(item: str, token: str, n: int) -> dict:
    """What a worker's commit records (store.commit's fields plus a worker's metadata)."""
    return {
        "item": {
            "id": item,
            "row": n + 1,
            "task": "t2v",
            "prompt": fake_root.prompt(n),
            "negative_prompt": "blurry, static, low quality",
            "images": [],
            "video": None,
            "video_b": None,
            "cond_frames": None,
            "noise_multipliers": None,
            "num_frames": 81,
            "height": 480,
            "width": 832,
            "fps": 16,
            "seed": n,
            "steps": 10,
            "guidance_scale": 5.0,
            "shift": 5.0,
        },
        "fingerprint": f"{n:064x}",
        "status": "done",
        "attempts": 1,
        "worker": "w0",
        "node": "gpu-node-7",
        "node_id": "f" * 56,
        "device": "cuda:0",
        "versions": {"pusa_batch": "0.3.0", "torch": "2.5.1", "diffusers": "0.32.0"},
        "timings": {"load_s": 0.0, "sample_s": 61.2, "decode_s": 4.1, "encode_s": 0.6},
        "id": item,
        "video": f"videos/{item}.mp4",
        "video_bytes": fake_root.VIDEO_BYTES,
        "video_sha256": "0" * 64,
        "committed_at": fake_root.COMMITTED_AT,
        "commit_token": token,
    }


def write_commits(folder: Path, first: int, count: int) -> None:
    """The files a commit leaves, written directly: pointer, video, marker."""
    for sub in ("recent", "videos", "items"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for n in range(first, first + count):
        item = fake_root.item_id(n)
        token = f"{time.time_ns():020d}-{uuid.uuid4().hex[:12]}"
        (folder / "recent" / f"{item}@{token}").write_bytes(b"")
        (folder / "videos" / f"{item}.mp4").write_bytes(b"\0" * fake_root.VIDEO_BYTES)
        text = json.dumps(marker(item, token, n), sort_keys=True)
        (folder / "items" / f"{item}.json").write_text(text)


def over_a_run(args: dict) -> dict:
    """Commit `items` items BATCH at a time, compacting after each batch; the index's totals."""
    folder = Path(args["folder"])
    store = Store(str(folder))
    seconds = rows = written = 0.0
    for first in range(0, args["items"], BATCH):
        write_commits(folder, first, min(BATCH, args["items"] - first))
        started = time.perf_counter()
        result = store.compact_index()
        seconds += time.perf_counter() - started
        rows += result.rewritten_rows
        written += result.written_bytes
    time.sleep(args["slowdown"])
    parts = len(list(folder.glob("index/part-*.parquet")))
    return {"seconds": seconds, "rows": rows, "bytes": written, "parts": parts}


def old_rule_rows(items: int, max_parts: int = 32) -> int:
    """Rows the old index rewrote over a run: every part merged into one whenever a compaction
    left more than `max_parts`."""
    parts = indexed = rewritten = 0
    for first in range(0, items, BATCH):
        parts, indexed = parts + 1, indexed + min(BATCH, items - first)
        if parts > max_parts:
            rewritten, parts = rewritten + indexed, 1
    return rewritten


def measure_over_runs(items: int, slowdown: float) -> None:
    results = {}
    for n in (items // 4, items):
        with tempfile.TemporaryDirectory() as tmp:
            results[n] = child("run", {"folder": f"{tmp}/root", "items": n, "slowdown": slowdown})
        r = results[n]
        print(
            f"  a run of {n} items: index {r['seconds']:.1f} s ({r['seconds'] / n * 1e3:.2f} ms "
            f"an item), merges rewrote {r['rows'] / n:.2f} rows an item, index bytes written "
            f"{r['bytes'] / n:.0f} an item, {r['parts']} part(s) left"
        )
    old = {n: old_rule_rows(n) / n for n in results}
    print(
        f"  the old rule (merge every part once there are 32), counted on the same batches: "
        f"{old[items // 4]:.1f} rows an item at {items // 4}, {old[items]:.1f} at {items}"
    )
    small, big = results[items // 4], results[items]
    growth = (big["bytes"] / items) / (small["bytes"] / (items // 4))
    rows_growth = (big["rows"] / items) / max(1e-9, small["rows"] / (items // 4))
    time_growth = (big["seconds"] / items) / (small["seconds"] / (items // 4))
    old_growth = old[items] / old[items // 4]
    verdict = "pass" if growth <= TARGET_GROWTH else "miss"
    print(
        f"B10 index_bytes_per_item_growth_4n={growth:.2f} rows_growth={rows_growth:.2f} "
        f"time_growth={time_growth:.2f} n={items} seconds={big['seconds']:.1f} "
        f"rewritten_rows_per_item={big['rows'] / items:.2f} old_rule_rows_per_item="
        f"{old[items]:.1f} old_rule_growth={old_growth:.2f} target<={TARGET_GROWTH:g} {verdict}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--done", type=int, default=990_000, help="items done before the run")
    parser.add_argument("--run-items", type=int, default=100_000, help="n of the run (part 2)")
    parser.add_argument("--skip-run", action="store_true", help="part 1 only")
    parser.add_argument(
        "--inject-slowdown",
        type=float,
        default=None,
        metavar="S",
        help=f"add S seconds to each measured side (default: ${SLOWDOWN_ENV} or 0); the "
        "verdicts must then read miss",
    )
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, payload = args.child
        work = end_of_run if mode == "end" else over_a_run
        print(json.dumps(work(json.loads(payload))))
        return
    slowdown = args.inject_slowdown
    slowdown = max(0.0, float(os.environ.get(SLOWDOWN_ENV) or 0) if slowdown is None else slowdown)
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    measure_end_of_run(args.done, slowdown)
    if not args.skip_run:  # its verdict counts bytes, which no injected delay changes
        measure_over_runs(args.run_items, slowdown)
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
