"""B4: a resume over 1,000,000 manifest rows with 990,000 done, up to the first dispatch.

What `run` does between taking the lease and handing the first item to a worker: read the root's
state (`Store.state`), the counting pass (`make_plan`) and the dispatch pass's first item
(`iter_todo`). The root is faked fast (`fake_root.py`): the done rows' index parts as a long run
leaves them (tiers of compactions, each row's real fingerprint), 100 real commits since the last
compaction and 50 failure records; the 10,000 rows still to do are the manifest's last, so the
dispatch pass reads up to its very end. Each measurement runs in a fresh process, which reports
its seconds, its peak RSS and its storage calls (a counting filesystem).

- local, trusting the index (`--trust-index`): the target, <= 10 s and <= 1 GiB;
- local, verified (the default of `run`): one listing each of `videos/` and `items/`, of hard
  links (`--verified-rows`, 100,000 rows by default: a million links take minutes to make;
  the target scales with the rows);
- S3 (a moto server on localhost), trusting the index;
- the baseline, measured in the same run: the old per-row plan (each row made an `Item`,
  fingerprinted alone and looked up in dicts), timed over 50,000 rows and scaled to the
  manifest, twice (it read the manifest once to count and once to dispatch).

    python benchmarks/b4_resume_plan.py [--rows N] [--verified-rows N] [--skip-s3] [--skip-verified]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

import fake_root  # noqa: E402
from bench_common import peak_rss_bytes, python_as_run_starts  # noqa: E402

from pusa_batch.pipelines.spec import load_pipeline_spec  # noqa: E402

TINY = HERE.parent / "pipelines" / "tiny.toml"
DONE_SHARE = 0.99
RECENT = 100
FAILED = 50
BASELINE_ROWS = 50_000
TARGET_S = 10.0
TARGET_RSS_MB = 1024.0
SLOWDOWN_ENV = "PUSA_BENCH_SLOWDOWN"


# --------------------------------------------------------------------------- the measured side


def measure(args: dict) -> dict:
    """state + counting pass + first dispatched item, in this (fresh) process."""
    import fsspec
    from test_store_fswrap import CountingFS

    from pusa_batch.engine.plan import Rules, iter_todo, make_plan
    from pusa_batch.store.store import Store

    spec = load_pipeline_spec(TINY)
    inner, _ = fsspec.core.url_to_fs(args["url"], **args["options"])
    counting = CountingFS(inner)
    store = Store(args["url"], args["options"], filesystem=counting)
    rss_before = peak_rss_bytes() / 2**20
    started, cpu_started = time.perf_counter(), time.process_time()
    state = store.state(verify=args["verify"])
    read_s = time.perf_counter() - started
    plan = make_plan(args["manifest"], spec, state, Rules())
    counted_s = time.perf_counter() - started
    first = next(iter_todo(args["manifest"], spec, state, Rules(), plan=plan))
    time.sleep(args["slowdown"])
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "cpu_s": time.process_time() - cpu_started,
        "state_s": read_s,
        "count_s": counted_s - read_s,
        "first_s": seconds - counted_s,
        "rss_mb": peak_rss_bytes() / 2**20,
        "rss_before_mb": rss_before,
        "calls": dict(counting.calls),
        "first": first.id,
        "kinds": {
            k: getattr(plan.counts, k) for k in ("total", "done", "pending", "failed", "todo")
        },
        "damaged": plan.counts.damaged,
        "state_bytes_per_done": (state.done.keys.nbytes + state.done.values.nbytes)
        / max(1, state.done_count()),
    }


def measured(url: str, options: dict, manifest: Path, verify: bool, slowdown: float) -> dict:
    """`measure` in a child process (so its RSS is the plan's, not the setup's)."""
    args = {"url": url, "options": options, "manifest": str(manifest), "verify": verify}
    args["slowdown"] = slowdown
    done = subprocess.run(
        [*python_as_run_starts(__file__), "--measure", json.dumps(args)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"measurement failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- the baseline


def old_per_row_pass(manifest: Path, spec, rows: int, done: dict[str, str]) -> float:
    """Seconds for `rows` rows of the old plan's pass: an Item, a fingerprint and dict lookups
    per row."""
    from pusa_batch.manifest.read import item_fingerprint, iter_items

    identity = spec.identity()
    started = time.perf_counter()
    for n, item in enumerate(iter_items(str(manifest), spec, chunk_rows=8192)):
        if n == rows:
            break
        fp = item_fingerprint(item, identity, temporal_factor=spec.temporal_factor)
        _ = done.get(item.id) == fp
    return time.perf_counter() - started


# --------------------------------------------------------------------------- roots


def fill(store, folder: Path | None, manifest_rows: int, fps) -> None:
    """Index parts for the done rows but the last RECENT, which are committed for real."""

    n_done = len(fps)
    compacted = fps.slice(0, n_done - RECENT)
    fake_root.write_parts(store, compacted)
    if folder is not None:
        fake_root.link_files(folder, n_done - RECENT)
    commits = range(n_done - RECENT, n_done)
    failures = range(n_done, n_done + min(FAILED, (manifest_rows - n_done) // 2))  # some pend
    fake_root.commit_and_fail(store, commits, failures, fps)


def line(name: str, figures: dict, value: float, target: float, unit_digits: int = 3) -> str:
    extra = " ".join(f"{k}={v}" for k, v in figures.items())
    verdict = "pass" if value <= target else "miss"
    return f"B4 {name}={value:.{unit_digits}f} {extra} target<={target:g} {verdict}".replace(
        "  ", " "
    )


def describe(label: str, result: dict) -> None:
    print(
        f"  {label}: {result['seconds']:.2f} s, {result['cpu_s']:.2f} s of CPU (state "
        f"{result['state_s']:.2f}, count pass "
        f"{result['count_s']:.2f}, first item {result['first_s']:.2f}), peak RSS "
        f"{result['rss_mb']:.0f} MB ({result['rss_before_mb']:.0f} before planning), "
        f"first={result['first']} {result['kinds']} damaged={result['damaged']}, state "
        f"{result['state_bytes_per_done']:.0f} B per done item, "
        f"calls {result['calls']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="manifest rows")
    parser.add_argument("--skip-s3", action="store_true", help="local disk only")
    parser.add_argument("--skip-verified", action="store_true", help="no verified local root")
    parser.add_argument(
        "--verified-rows",
        type=int,
        default=100_000,
        help="manifest rows of the verified root (its videos and markers are hard links: a "
        "million of each take minutes to make); the target scales with them",
    )
    parser.add_argument(
        "--inject-slowdown",
        type=float,
        default=None,
        metavar="S",
        help=f"add S seconds to each measured plan (default: ${SLOWDOWN_ENV} or 0); the "
        "verdicts must then read miss",
    )
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(json.loads(args.measure))))
        return
    slowdown = args.inject_slowdown
    slowdown = max(0.0, float(os.environ.get(SLOWDOWN_ENV) or 0) if slowdown is None else slowdown)
    from pusa_batch.store.store import Store

    spec = load_pipeline_spec(TINY)
    rows = args.rows
    n_done = int(rows * DONE_SHARE)
    tag = "1m" if rows == 1_000_000 else str(rows)
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory() as tmp:
        manifest = Path(tmp) / "manifest.csv"
        began = time.perf_counter()
        fake_root.write_manifest(manifest, rows)
        fps = fake_root.fingerprints(manifest, spec, n_done)
        local = f"{tmp}/trusted"
        fill(Store(local), None, rows, fps)
        print(f"  setup: manifest, fingerprints and root in {time.perf_counter() - began:.1f} s")
        trusted = measured(local, {}, manifest, verify=False, slowdown=slowdown)
        describe("local, trusting the index", trusted)

        done = {fake_root.item_id(n): fps[n].as_py() for n in range(min(n_done, BASELINE_ROWS))}
        sample = min(rows, BASELINE_ROWS)
        baseline = old_per_row_pass(manifest, spec, sample, done) * rows / sample * 2
        print(f"  baseline: the old per-row pass, {sample} rows, scaled: {baseline:.1f} s")
        figures = {
            "cpu_s": f"{trusted['cpu_s']:.1f}",
            "rss_mb": f"{trusted['rss_mb']:.0f}",
            "baseline_s": f"{baseline:.1f}",
        }
        print(line(f"resume_{tag}_first_dispatch_s", figures, trusted["seconds"], TARGET_S))
        print(line(f"resume_{tag}_peak_rss_mb", {}, trusted["rss_mb"], TARGET_RSS_MB, 0))

        if not args.skip_verified:
            v_rows = min(rows, args.verified_rows)
            v_done = int(v_rows * DONE_SHARE)
            began = time.perf_counter()
            folder = Path(tmp) / "verified"
            v_manifest = manifest if v_rows == rows else Path(tmp) / "verified.csv"
            if v_rows != rows:
                fake_root.write_manifest(v_manifest, v_rows)
            fill(Store(str(folder)), folder, v_rows, fps.slice(0, v_done))
            print(f"  setup: verified root (hard links) in {time.perf_counter() - began:.1f} s")
            verified = measured(str(folder), {}, v_manifest, verify=True, slowdown=slowdown)
            describe(f"local, verified, {v_rows} rows", verified)
            figures = {"cpu_s": f"{verified['cpu_s']:.1f}", "rss_mb": f"{verified['rss_mb']:.0f}"}
            v_tag = "1m" if v_rows == 1_000_000 else str(v_rows)
            name = f"resume_{v_tag}_verified_first_dispatch_s"
            target = TARGET_S * v_rows / 1_000_000
            print(line(name, figures, verified["seconds"], target))
    if args.skip_s3:
        return
    from s3server import s3_server

    with s3_server() as server, tempfile.TemporaryDirectory() as tmp:
        manifest = Path(tmp) / "manifest.csv"
        fake_root.write_manifest(manifest, rows)
        url = f"{server.make_bucket('b4-bench')}/resume"
        began = time.perf_counter()
        fill(Store(url, server.storage_options), None, rows, fps)
        print(f"  setup: S3 root in {time.perf_counter() - began:.1f} s")
        s3 = measured(url, server.storage_options, manifest, verify=False, slowdown=slowdown)
        describe("S3 (moto), trusting the index", s3)
        figures = {
            "cpu_s": f"{s3['cpu_s']:.1f}",
            "calls": sum(s3["calls"].values()),
            "rss_mb": f"{s3['rss_mb']:.0f}",
        }
        print(line(f"resume_{tag}_s3_first_dispatch_s", figures, s3["seconds"], TARGET_S))
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
