"""B6: one worker's items/s with decode/encode/commit overlapped with sampling vs run serially.

One embedded local Ray serves every run; the same equal items go through `run` on one worker
with `overlap=True` (prepare ahead, finish in its own lane while the next item samples) and
`overlap=False` (one item at a time), alternating (serial, overlapped, overlapped, serial, ...).
The figure is the median over rounds of the per-round ratio of steady items/s (after each run's
first commit: loading the pipeline is the same in both and overlap cannot change it), with the
end-to-end ratio printed beside. Target >= 1.1.

Overlap can at best turn sample + finish into max(sample, finish) per item (printed as the ideal,
from the serial runs' stage times). The default shape (9x32x32, 48 steps on the tiny model) is
sampling-dominated, as on a GPU, with the decode, encode and commit to hide behind it. On a CPU
both stages need the interpreter lock between their (small) torch calls, so they slow each other
down and the figure stays well under the ideal; the per-stage times printed for each mode show
that, and the sampler-busy fraction what overlap did to the sampler (busy s / steady window).

`--inject-slowdown S` adds S seconds to every item of the overlapped runs.

    python benchmarks/b6_overlap.py [--items 16] [--rounds 3] [--shape 9x32x32x48]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from bench_common import Target, add_slowdown_flag, load_average, result_line, slowdown
from engine_runs import (
    SideRun,
    engine_run,
    median_ratio,
    parse_shape,
    quiet_ray,
    stage_ms,
    stages_text,
    start_local_ray,
    write_manifest,
)

TARGET = Target(">=", 1.1)
FINISH = ("decode", "encode", "write")


def ideal_ratio(marks: list[dict]) -> float:
    """The most overlap could give, from serial stage times: (sample + finish) / the longer."""
    sample = stage_ms(marks, "sample")
    finish = sum(stage_ms(marks, stage) for stage in FINISH)
    return (sample + finish) / max(sample, finish)


def busy_fraction(marks: list[dict], timed: SideRun) -> float:
    """Sampler seconds over the steady window (first to last commit), one worker."""
    span = timed.commits[-1] - timed.commits[0] if timed.items > 1 else 0.0
    busy = sum(m["timings"]["sample"] for m in marks[1:]) if span else 0.0
    return busy / span if span else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3, help="each runs both modes once")
    parser.add_argument("--shape", type=parse_shape, default=parse_shape("9x32x32x48"))
    add_slowdown_flag(parser, "S seconds more per item of the overlapped runs")
    args = parser.parse_args()
    slow = slowdown(args)
    quiet_ray()
    print(
        f"B6 config: {args.items} items of {args.shape}, one worker, overlapped vs serial, "
        f"{args.rounds} round(s), load {load_average()}"
        + (f", injected slowdown {slow:g} s per overlapped item" if slow else ""),
        flush=True,
    )
    start_local_ray(1)
    steady, e2e, ideal = [], [], []
    with tempfile.TemporaryDirectory(prefix="pusa-b6-") as tmp:
        manifest = write_manifest(Path(tmp), args.items, args.shape)
        for n in range(args.rounds):
            runs = {}
            for overlap in (False, True) if n % 2 == 0 else (True, False):
                mode = "overlapped" if overlap else "serial"
                out = Path(tmp) / f"round{n}-{mode}"
                timed, marks = engine_run(
                    mode, manifest, out, slow if overlap else 0.0, workers=1, overlap=overlap
                )
                runs[overlap] = timed
                if not overlap:
                    ideal.append(ideal_ratio(marks))
                print(
                    f"  round {n + 1}: {timed.describe()}; sampler busy "
                    f"{busy_fraction(marks, timed):.2f}; {stages_text(marks)}",
                    flush=True,
                )
            steady.append((runs[True].steady_rate, runs[False].steady_rate))
            e2e.append((runs[True].e2e_rate, runs[False].e2e_rate))
    print(f"B6 end-to-end ratio (not gated): {median_ratio(e2e):.3f}")
    print(f"B6 ideal ratio from the serial stage times: {statistics.median(ideal):.3f}")
    print(f"B6 load average at the end: {load_average()}")
    print(result_line("B6", "overlapped_over_serial_steady", median_ratio(steady), TARGET))


if __name__ == "__main__":
    main()
