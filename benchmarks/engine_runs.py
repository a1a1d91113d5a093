"""What the engine benchmarks (B1/B8/B9, B6, B7) share: manifests of equal items, one timed run of
a side, and the figures read from when each video landed.

Every side writes one mp4 per item into a folder; a side's figures come from the moment it was
launched, the moment it returned, and the modification time of each video (written under a
temporary name and renamed, so its time is its commit). The same formulas serve every side:

- end to end: items / (returned - launched), start-up included;
- steady: (items - 1) / (last commit - first commit), after the first commit;
- first item: first commit - launched.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pusa_batch.engine.runner import PipelineRunner

HERE = Path(__file__).resolve().parent
TINY = HERE.parent / "pipelines" / "tiny.toml"


@dataclass(frozen=True)
class Shape:
    frames: int
    height: int
    width: int
    steps: int

    def __str__(self) -> str:
        return f"{self.frames}x{self.height}x{self.width}, {self.steps} steps"


DEFAULT_SHAPE = Shape(17, 64, 64, 4)  # the tiny pipeline's own defaults


def write_manifest(folder: Path, items: int, shape: Shape, name: str = "manifest.csv") -> Path:
    """`items` t2v rows of one shape, each its own prompt and seed."""
    header = "id,task,prompt,num_frames,height,width,steps,seed"
    rows = [
        f"c{n:03d},t2v,benchmark clip {n},{shape.frames},{shape.height},{shape.width},"
        f"{shape.steps},{n}"
        for n in range(items)
    ]
    path = folder / name
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


@dataclass(frozen=True)
class SideRun:
    """One timed run of one side: wall-clock seconds (time.time) and each video's commit."""

    side: str
    launched: float
    returned: float
    commits: tuple[float, ...]  # sorted

    @property
    def items(self) -> int:
        return len(self.commits)

    @property
    def e2e_rate(self) -> float:
        return self.items / (self.returned - self.launched)

    @property
    def steady_rate(self) -> float:
        span = self.commits[-1] - self.commits[0]
        return (self.items - 1) / span if self.items > 1 and span > 0 else float("nan")

    @property
    def first_item_s(self) -> float:
        return self.commits[0] - self.launched

    def describe(self) -> str:
        return (
            f"{self.side}: {self.items} items, {self.returned - self.launched:.1f} s, "
            f"first at {self.first_item_s:.1f} s, {self.e2e_rate:.2f} items/s end to end, "
            f"{self.steady_rate:.2f} steady"
        )


def commit_times(folder: Path) -> tuple[float, ...]:
    """The modification time of every finished video under `folder` (temporaries excluded)."""
    return tuple(sorted(p.stat().st_mtime for p in folder.rglob("*.mp4") if p.name[0] != "."))


def run_processes(
    side: str,
    commands: Sequence[Sequence[str]],
    out: Path,
    env: Mapping[str, str] | None = None,
    stderr_to: Path | None = None,
) -> SideRun:
    """Start the commands at once, wait for all, and time them as one side. With `stderr_to`,
    the first command's stderr is kept there (the run side's JSON events)."""
    launched = time.time()
    procs = [
        subprocess.Popen(
            list(cmd),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=None if env is None else dict(env),
        )
        for cmd in commands
    ]
    outputs = [proc.communicate() for proc in procs]
    returned = time.time()
    if stderr_to is not None:
        stderr_to.write_text(outputs[0][1])
    for proc, (_, stderr) in zip(procs, outputs, strict=True):
        if proc.returncode != 0:
            raise RuntimeError(f"{side}: exit {proc.returncode}: {stderr.strip()[-2000:]}")
    return SideRun(side, launched, returned, commit_times(out))


def timed_call(side: str, call: Callable[[], object], out: Path) -> SideRun:
    """Time an in-process call (e.g. `run(config)` on an already started Ray) as one side."""
    launched = time.time()
    call()
    return SideRun(side, launched, time.time(), commit_times(out))


def python(script: str, *args: str) -> list[str]:
    return [sys.executable, str(HERE / script), *map(str, args)]


def ratio(measured: float, baseline: float) -> float:
    """How many times the baseline's rate the measured side reached (1 = as fast)."""
    return measured / baseline


def median_ratio(pairs: Sequence[tuple[float, float]]) -> float:
    """The median over rounds of measured / baseline, each pair measured in one round."""
    return statistics.median(ratio(m, b) for m, b in pairs)


class SlowedRunner(PipelineRunner):
    """The real runner, with `slowdown_s` more per item's finish (an injected slowdown)."""

    def __init__(self, pipeline_path: str, slowdown_s: float):
        super().__init__(pipeline_path)
        self.slowdown_s = slowdown_s

    def finish(self, item, latents):
        time.sleep(self.slowdown_s)
        return super().finish(item, latents)


def pickled_by_value() -> None:
    """Ray's workers cannot import this folder: send `SlowedRunner` by value instead."""
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])


def quiet_ray() -> None:
    """No Ray start-up chatter in a benchmark's report."""
    import logging

    logging.getLogger("ray").setLevel(logging.ERROR)


def parse_shape(text: str) -> Shape:
    """FRAMESxHEIGHTxWIDTHxSTEPS, e.g. 9x32x32x24."""
    try:
        frames, height, width, steps = (int(v) for v in text.lower().split("x"))
    except ValueError as e:
        raise ValueError(f"shape {text!r}: write FRAMESxHEIGHTxWIDTHxSTEPS, e.g. 9x32x32x24") from e
    return Shape(frames, height, width, steps)


def start_local_ray(workers: int) -> None:
    """One embedded local Ray for a benchmark's in-process runs, as `run` would start it."""
    import logging
    import os

    import ray

    ray.init(
        num_cpus=max(os.cpu_count() or 1, workers),
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        logging_level=logging.WARNING,
        log_to_driver=False,
    )


def markers(out: Path) -> list[dict]:
    """Every committed item's marker (its timings and sample_batch)."""
    import json

    return [json.loads(p.read_text()) for p in sorted((out / "items").glob("*.json"))]


def engine_run(
    side: str, manifest: Path, out: Path, slow: float, **settings
) -> tuple[SideRun, list[dict]]:
    """`run` in this process on the started Ray; with `slow`, through `SlowedRunner`."""
    import functools

    from pusa_batch.engine.config import RunConfig
    from pusa_batch.engine.run import run

    config = RunConfig(str(manifest), str(out), str(TINY), **settings)
    make_runner = None
    if slow:
        pickled_by_value()
        make_runner = functools.partial(SlowedRunner, str(TINY), slow)
    timed = timed_call(side, lambda: run(config, make_runner=make_runner), out / "videos")
    return timed, markers(out)


def stage_ms(marks: list[dict], stage: str) -> float:
    """The median of one stage's seconds over items, in ms (sample: per item of its batch)."""
    if stage == "sample":
        values = [m["timings"]["sample"] / m.get("sample_batch", 1) for m in marks]
    else:
        values = [m["timings"].get(stage, 0.0) for m in marks]
    return statistics.median(values) * 1e3 if values else float("nan")


def stages_text(marks: list[dict]) -> str:
    parts = ", ".join(f"{s} {stage_ms(marks, s):.0f}" for s in ("sample", "decode", "encode"))
    return f"median ms per item: {parts}"
