"""B7: `run --batch-size 4` against `--batch-size 1`, end-to-end items/s on equal-shape items.

One embedded local Ray serves every run; each `run` call starts its worker, loads the pipeline,
generates every item and returns, and is timed from call to return. The two settings alternate
(1, 4, 4, 1, ...) and the figure is the median over rounds of the per-round ratio
items/s(batch 4) / items/s(batch 1). Target >= 1.3.

Batching shares the sampler's forward passes, so it can only pay where sampling is most of an
item's work, as it is on a GPU (a real DiT's 50 steps against one VAE decode). The default shape
(9x32x32, 48 steps on the tiny model) is such a case; at the tiny pipeline's own default
(17x64x64, 4 steps) the decode is about 8x the sampling and no batching could reach 1.3x (the
per-stage times printed for each setting show which regime a shape is in). Also printed: how many
items were sampled in a batch of more than one (batching must form, not just be allowed).

`--inject-slowdown S` adds S seconds to every item of the batch-4 runs.

    python benchmarks/b7_batching.py [--items 32] [--rounds 2] [--shape 9x32x32x48] [--workers 1]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench_common import Target, add_slowdown_flag, load_average, result_line, slowdown
from engine_runs import (
    engine_run,
    median_ratio,
    parse_shape,
    quiet_ray,
    stages_text,
    start_local_ray,
    write_manifest,
)

TARGET = Target(">=", 1.3)
BATCH = 4


def batched_share(marks: list[dict]) -> float:
    """The share of items that were sampled together with at least one other."""
    return sum(m.get("sample_batch", 1) > 1 for m in marks) / len(marks) if marks else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2, help="each runs both settings once")
    parser.add_argument("--shape", type=parse_shape, default=parse_shape("9x32x32x48"))
    parser.add_argument("--workers", type=int, default=1)
    add_slowdown_flag(parser, f"S seconds more per item of the batch-{BATCH} runs")
    args = parser.parse_args()
    slow = slowdown(args)
    quiet_ray()
    print(
        f"B7 config: {args.items} items of {args.shape}, {args.workers} worker(s), batch "
        f"{BATCH} vs 1, {args.rounds} round(s), load {load_average()}"
        + (f", injected slowdown {slow:g} s per batch-{BATCH} item" if slow else ""),
        flush=True,
    )
    start_local_ray(args.workers)
    pairs = []
    with tempfile.TemporaryDirectory(prefix="pusa-b7-") as tmp:
        manifest = write_manifest(Path(tmp), args.items, args.shape)
        for n in range(args.rounds):
            rates = {}
            for batch in (1, BATCH) if n % 2 == 0 else (BATCH, 1):
                out = Path(tmp) / f"round{n}-batch{batch}"
                timed, marks = engine_run(
                    f"batch {batch}",
                    manifest,
                    out,
                    slow if batch == BATCH else 0.0,
                    workers=args.workers,
                    batch_size=batch,
                )
                rates[batch] = timed.e2e_rate
                print(
                    f"  round {n + 1}: {timed.describe()}; {batched_share(marks):.0%} of items "
                    f"batched; {stages_text(marks)}",
                    flush=True,
                )
            pairs.append((rates[BATCH], rates[1]))
    print(f"B7 load average at the end: {load_average()}")
    print(result_line("B7", f"batch{BATCH}_over_batch1_e2e", median_ratio(pairs), TARGET))


if __name__ == "__main__":
    main()
