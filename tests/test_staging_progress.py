"""A loading worker's weight staging reaches the live view: the worker loads its pipeline in a
thread and answers `progress()` meanwhile, and the driver turns the latest `StagingProgress` into
`WorkerStatus(staging=...)` events before `ActorLoaded` (local Ray, the tiny pipeline).

No timed asserts: the test runner's load reports staging and then waits until the test has seen
that status (a file the event hook writes), so the order is forced, not hoped for.
"""

from __future__ import annotations

import functools
import sys
import time
from pathlib import Path

from ray import cloudpickle

from pusa_batch.cli.live import RunView
from pusa_batch.engine.config import ActorLoaded, RunConfig, WorkerStatus
from pusa_batch.engine.run import run
from pusa_batch.engine.runner import PipelineRunner
from pusa_batch.weights.staging import StagingProgress

TINY = Path(__file__).resolve().parents[1] / "pipelines" / "tiny.toml"
GB = 1_000_000_000

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray's workers cannot import tests/


class StagingRunner(PipelineRunner):
    """The tiny pipeline, whose load first reports staging 1..4 GB of 8 GB, then waits (at most
    120 s) for `seen` to exist before it finishes."""

    def __init__(self, pipeline_path: str, seen: str):
        super().__init__(pipeline_path)
        self.seen = Path(seen)

    def load(self, on_staging=None):
        on_staging(StagingProgress("listing", 0, 0, 0, 2))
        for gb in (1, 2, 3, 4):
            on_staging(StagingProgress("fetching", gb * GB, 8 * GB, 0, 2, "s3://b/dit.safetensors"))
            time.sleep(0.25)
        deadline = time.monotonic() + 120
        while not self.seen.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        on_staging(StagingProgress("ready", 8 * GB, 8 * GB, 2, 2))
        return super().load(on_staging)


def test_staging_shows_as_worker_status_before_the_worker_is_loaded(local_ray, tmp_path):
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(
        "id,task,prompt,num_frames,height,width,steps,seed\na,t2v,a cat,5,32,32,2,1\n"
    )
    seen = tmp_path / "seen"
    events: list = []

    def on_event(event) -> None:
        events.append(event)
        if isinstance(event, WorkerStatus) and (event.staging or "").endswith("/8.0 GB"):
            seen.touch()  # a byte count was shown: the load may go on

    cfg = RunConfig(str(manifest), str(tmp_path / "out"), str(TINY), workers=1, status_every_s=0.1)
    summary = run(cfg, on_event, make_runner=functools.partial(StagingRunner, str(TINY), str(seen)))
    assert summary.generated == 1 and summary.failed == 0
    loaded = next(i for i, e in enumerate(events) if isinstance(e, ActorLoaded))
    staging = [e.staging for e in events[:loaded] if isinstance(e, WorkerStatus) and e.staging]
    assert staging, "no staging status before the worker loaded"
    assert all(e.worker == "w0" for e in events[:loaded] if isinstance(e, WorkerStatus))
    assert any(t.startswith("staging ") and t.endswith("/8.0 GB") for t in staging), staging
    assert events[loaded].seconds >= 1.0  # info() answered once the load ended, not before
    # what the live view shows meanwhile
    view = RunView()
    for event in events[: events.index(next(e for e in events if isinstance(e, WorkerStatus))) + 1]:
        view.apply(event)
    assert view.workers["w0"].line() == staging[0]
