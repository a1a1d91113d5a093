"""The measured side of B1, B8 and B9: `pusa_batch.engine.run.run` as a user's script calls it.

Embedded local Ray, the tiny pipeline unless told, `--workers` workers. With `--slowdown S`
each item's finish sleeps S seconds more (a benchmark's `--inject-slowdown`), through a runner
that is the real `PipelineRunner` plus the sleep. With `--timeline FILE`, writes when each
start-up stage began (wall clock), for B8's breakdown.

    python benchmarks/run_side.py MANIFEST OUT [--workers 2] [--batch-size 1] [--slowdown S]
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path

from engine_runs import TINY, SlowedRunner, pickled_by_value

from pusa_batch.engine.config import ActorLoaded, ItemDone, Phase, RunConfig
from pusa_batch.engine.run import run


class Timeline:
    """An `on_event` hook noting when each start-up stage began and when the first item landed."""

    def __init__(self) -> None:
        self.marks: list[tuple[float, str]] = [(time.time(), "imported")]
        self.first_done = False

    def __call__(self, event) -> None:
        if isinstance(event, Phase):
            self.marks.append((time.time(), event.name))
        elif isinstance(event, ActorLoaded):
            self.marks.append((time.time(), f"{event.worker} loaded in {event.seconds:.1f} s"))
        elif isinstance(event, ItemDone) and not self.first_done:
            self.first_done = True
            self.marks.append((time.time(), "first item committed"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("manifest")
    parser.add_argument("out")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--pipeline", default=str(TINY))
    parser.add_argument("--slowdown", type=float, default=0.0)
    parser.add_argument("--timeline", type=Path)
    args = parser.parse_args()
    timeline = Timeline()
    make_runner = None
    if args.slowdown:
        pickled_by_value()
        pipeline = str(Path(args.pipeline).resolve())
        make_runner = functools.partial(SlowedRunner, pipeline, args.slowdown)
    config = RunConfig(
        args.manifest, args.out, args.pipeline, workers=args.workers, batch_size=args.batch_size
    )
    summary = run(config, timeline, make_runner=make_runner)
    timeline.marks.append((time.time(), "run returned"))
    if args.timeline:
        args.timeline.write_text(json.dumps(timeline.marks))
    print(json.dumps({"generated": summary.generated, "failed": summary.failed}))


if __name__ == "__main__":
    main()
