"""B1, B8, B9: `run`'s throughput and start-up against a plain loop and against Ray Data.

The same manifest of equal tiny items (the tiny pipeline's defaults: 17x64x64, 4 steps, where the
VAE decode takes several times as long as the sampling) goes through three sides, each a fresh
process tree launched from here, so each pays its own imports, Ray start and pipeline loads:

- run: the command a user types, `python -m pusa_batch run MANIFEST -o OUT --pipeline tiny.toml
  --workers W --log-format json`, on its embedded local Ray (its JSON events give the start-up
  breakdown printed under each round);
- loop: `--workers` plain processes, each loading the pipeline and looping over every W-th item:
  generate, encode the mp4, write the file (`plain_loop.py`), the fastest thing without an engine;
- ray-data: a Ray Data `map_batches` job with the same `Pipeline` in a callable class,
  `--workers` actors (`peer_ray_data.py`).

Rounds interleave the sides (the order reverses every round) and each figure is the median over
rounds of the per-round ratio, so the machine's load hits both sides of a ratio alike:

- B1 e2e_ratio: run's items/s / the loop's, launch to return (start-up included); target >= 0.80;
- B1 steady_ratio: the same after each side's first commit; target >= 0.95;
- B8 first_item_extra_s: run's time to its first committed video minus the loop's; target <= 5;
- B9 e2e_ratio_vs_ray_data and steady_ratio_vs_ray_data: run's items/s / Ray Data's; >= 1.0.

The tiny model is made (or found) before the first round, so no side pays for creating it.

`--inject-slowdown S` adds S seconds to every item of the run side (its measured side), through
`slowdown_site/sitecustomize.py`, which that command's processes import from PYTHONPATH.

    python benchmarks/b1_throughput.py [--items 60] [--rounds 2] [--workers 2] [--no-peer]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench_common import Target, add_slowdown_flag, load_average, result_line, slowdown
from engine_runs import (
    DEFAULT_SHAPE,
    HERE,
    TINY,
    SideRun,
    median_ratio,
    python,
    run_processes,
    write_manifest,
)

from pusa_batch.models.tiny import ensure_tiny_model

SLOWDOWN_SITE = HERE / "slowdown_site"
DELAY_ENV = "PUSA_BENCH_ITEM_DELAY_S"  # read by slowdown_site/sitecustomize.py

TARGETS = {
    "e2e_ratio": Target(">=", 0.80),
    "steady_ratio": Target(">=", 0.95),
    "first_item_extra_s": Target("<=", 5.0),
    "e2e_ratio_vs_ray_data": Target(">=", 1.0),
    "steady_ratio_vs_ray_data": Target(">=", 1.0),
}


@dataclass(frozen=True)
class Round:
    runs: dict[str, SideRun]  # by side


def figures(rounds: Sequence[Round]) -> dict[str, float]:
    """Each figure as the median over rounds of run's rate / the baseline's (B8: a difference)."""
    out = {
        "e2e_ratio": median_ratio(
            [(r.runs["run"].e2e_rate, r.runs["loop"].e2e_rate) for r in rounds]
        ),
        "steady_ratio": median_ratio(
            [(r.runs["run"].steady_rate, r.runs["loop"].steady_rate) for r in rounds]
        ),
        "first_item_extra_s": statistics.median(
            r.runs["run"].first_item_s - r.runs["loop"].first_item_s for r in rounds
        ),
    }
    if all("ray-data" in r.runs for r in rounds):
        peer = [(r.runs["run"], r.runs["ray-data"]) for r in rounds]
        out["e2e_ratio_vs_ray_data"] = median_ratio([(a.e2e_rate, b.e2e_rate) for a, b in peer])
        out["steady_ratio_vs_ray_data"] = median_ratio(
            [(a.steady_rate, b.steady_rate) for a, b in peer]
        )
    return out


def result_lines(values: dict[str, float]) -> list[str]:
    ids = {"e2e_ratio": "B1", "steady_ratio": "B1", "first_item_extra_s": "B8"}
    return [
        result_line(ids.get(name, "B9"), name, value, TARGETS[name], 2 if "_s" in name else 3)
        for name, value in values.items()
    ]


def side_commands(side: str, manifest: Path, out: Path, workers: int) -> list[list[str]]:
    if side == "loop":
        return [
            python("plain_loop.py", manifest, out, "--shard", k, "--of", workers)
            for k in range(workers)
        ]
    if side == "ray-data":
        return [python("peer_ray_data.py", manifest, out, "--concurrency", workers)]
    return [
        [
            sys.executable, "-m", "pusa_batch", "run", str(manifest), "-o", str(out),
            "--pipeline", str(TINY), "--workers", str(workers), "--log-format", "json",
        ]
    ]  # fmt: skip


def slowed_environment(slow: float, environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The run side's environment: with a slowdown, the site hook first on PYTHONPATH."""
    env = dict(environ)
    if slow:
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(SLOWDOWN_SITE), environ.get("PYTHONPATH", "")) if p
        )
        env[DELAY_ENV] = f"{slow:g}"
    return env


def start_up(launched: float, events: list[dict]) -> str:
    """`run`'s start-up stages from its JSON events, as seconds since launch:
    '1.1 validating the manifest, 1.2 starting Ray, ...'."""
    marks = []
    for event in events:
        kind = event.get("event")
        if kind == "phase":
            marks.append((event["ts"], event["name"]))
        elif kind == "actor_loaded":
            marks.append((event["ts"], f"{event['worker']} loaded in {event['seconds']:.1f} s"))
        elif kind == "item_done" and not any(m[1] == "first item committed" for m in marks):
            marks.append((event["ts"], "first item committed"))
        elif kind == "finished":
            marks.append((event["ts"], "finished"))
    return ", ".join(f"{t - launched:.1f} {label}" for t, label in marks)


def json_events(text: str) -> list[dict]:
    events = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if isinstance(event, dict) and "ts" in event:
                events.append(event)
    return events


def measure(items: int, rounds: int, workers: int, peer: bool, slow: float) -> list[Round]:
    sides = ["loop", "run", *(["ray-data"] if peer else [])]
    done = []
    with tempfile.TemporaryDirectory(prefix="pusa-b1-") as tmp:
        manifest = write_manifest(Path(tmp), items, DEFAULT_SHAPE)
        for n in range(rounds):
            runs = {}
            for side in sides if n % 2 == 0 else sides[::-1]:
                out = Path(tmp) / f"round{n}-{side}"
                events = Path(tmp) / f"round{n}-{side}-stderr.txt"
                runs[side] = run_processes(
                    side,
                    side_commands(side, manifest, out, workers),
                    out,
                    env=slowed_environment(slow) if side == "run" else None,
                    stderr_to=events if side == "run" else None,
                )
                print(f"  round {n + 1}: {runs[side].describe()}", flush=True)
                if side == "run":
                    marks = start_up(runs[side].launched, json_events(events.read_text()))
                    print(f"    run start-up (s): {marks}", flush=True)
            done.append(Round(runs))
    return done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=2, help="each runs every side once")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-peer", action="store_true", help="skip the Ray Data side (B9)")
    add_slowdown_flag(parser, "S seconds more per item of the run side")
    args = parser.parse_args()
    slow = slowdown(args)
    print(
        f"B1 config: {args.items} items of {DEFAULT_SHAPE} on the tiny pipeline, "
        f"{args.workers} workers, {args.rounds} round(s), load {load_average()}"
        + (f", injected slowdown {slow:g} s per run item" if slow else ""),
        flush=True,
    )
    ensure_tiny_model("wan2.1")  # made once here, not inside the first round's first side
    rounds = measure(args.items, args.rounds, args.workers, not args.no_peer, slow)
    print(f"B1 load average at the end: {load_average()}")
    for line in result_lines(figures(rounds)):
        print(line)


if __name__ == "__main__":
    main()
