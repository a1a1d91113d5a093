"""B5: validate a 1,000,000-row text-to-video Parquet manifest (no file inputs).

Prints `B5 validate_1m_seconds=<x> target<=10 pass|miss` and the peak RSS growth during
validation. With `--rows N` the target scales with the rows (10 s per million, i.e. at least
100,000 rows/s, and never under 1 s) and the figure is named `validate_<N>_seconds`.
`--inject-slowdown S` adds S seconds inside the timed validation.

    python benchmarks/b5_validate_1m.py [--rows N] [--no-ids] [--inject-slowdown S]
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from bench_common import Target, add_slowdown_flag, result_line, slowdown

from pusa_batch.manifest.read import validate_manifest

ROWS_PER_SECOND = 100_000  # the target: 10 s for a million rows
MIN_TARGET_S = 1.0  # a small run's fixed cost (opening the file, the first chunk)


def target(rows: int) -> Target:
    return Target("<=", max(MIN_TARGET_S, rows / ROWS_PER_SECOND))


def figure_name(rows: int) -> str:
    return "validate_1m_seconds" if rows == 1_000_000 else f"validate_{rows}_seconds"


def write_manifest(path: Path, rows: int, with_ids: bool) -> None:
    """Rows of varied prompts and seeds, written in row groups so nothing big sits in memory."""
    rng = np.random.default_rng(0)
    words = np.array(["a cat", "a dog", "surfing", "at dusk", "in the rain", "slow motion"])
    writer = None
    for start in range(0, rows, 100_000):
        n = min(100_000, rows - start)
        picks = rng.integers(0, len(words), size=(n, 3))
        prompts = [" ".join(words[p]) + f" #{start + k}" for k, p in enumerate(picks)]
        columns = {
            "task": pa.array(["t2v"] * n),
            "prompt": pa.array(prompts),
            "seed": pa.array(rng.integers(0, 2**32 - 1, size=n, dtype=np.int64)),
        }
        if with_ids:
            columns = {"id": pa.array([f"clip-{start + k:07d}" for k in range(n)]), **columns}
        table = pa.table(columns)
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table)
    writer.close()


class PeakRss:
    """Samples RSS every 10 ms (ru_maxrss cannot be reset, so sample /proc instead)."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def now() -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * resource.getpagesize()
        except OSError:
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.now())
            time.sleep(0.01)

    def __enter__(self) -> PeakRss:
        self.start = self.now()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.now())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--no-ids", action="store_true", help="let the validator derive every id")
    add_slowdown_flag(parser, "S seconds more inside the timed validation")
    args = parser.parse_args(argv)
    slow = slowdown(args)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "t2v.parquet"
        write_manifest(path, args.rows, with_ids=not args.no_ids)
        size_mb = path.stat().st_size / 1e6
        with PeakRss() as rss:
            t0 = time.perf_counter()
            report = validate_manifest(str(path))
            time.sleep(slow)
            seconds = time.perf_counter() - t0
    if report.rows != args.rows or not report.ok:
        print(f"B5 error: rows={report.rows} problems={report.problem_count}", file=sys.stderr)
        return 1
    print(result_line("B5", figure_name(args.rows), seconds, target(args.rows), digits=2))
    growth = (rss.peak - rss.start) / 2**20
    print(
        f"B5 peak_rss_growth_mb={growth:.0f} rows={report.rows} "
        f"ids={'derived' if args.no_ids else 'given'} "
        f"parquet_mb={size_mb:.0f} rows_per_second={report.rows / seconds:,.0f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
