"""The live run view tells the truth: no empty bar before the plan, a loading line until every
worker is ready, worker lines that say what each worker does now, and -q / -v line sets."""

from __future__ import annotations

import io

from rich.console import Console

from pusa_batch.cli.live import LiveRunView, RunView, event_line, render
from pusa_batch.engine.config import (
    ActorLoaded,
    Finished,
    ItemDone,
    ItemFailed,
    Notice,
    Phase,
    RunSummary,
    Started,
    WorkersStarting,
    WorkerStatus,
)


def text_of(view: RunView) -> str:
    console = Console(file=io.StringIO(), width=200, color_system=None)
    console.print(render(view))
    return console.file.getvalue()


def test_before_the_plan_the_view_names_the_stage_and_shows_no_bar():
    view = RunView()
    view.apply(Phase("reading the output root"))
    shown = text_of(view)
    assert "reading the output root" in shown and "elapsed" in shown
    assert "done" not in shown and "█" not in shown


def test_after_the_plan_the_bar_counts_items_already_done():
    view = RunView()
    view.apply(Started(total=30, pending=28, done_before=2))
    assert "2/30 done" in text_of(view)


def test_while_workers_load_a_line_says_how_many_are_ready():
    view = RunView()
    view.apply(Started(total=4, pending=4, done_before=0))
    view.apply(WorkersStarting(2))
    assert "loading models: 0/2 workers ready" in text_of(view)
    view.apply(ActorLoaded("w0", 3.2, 11, "node-a"))
    assert "loading models: 1/2 workers ready" in text_of(view)
    view.apply(ActorLoaded("w1", 3.4, 12, "node-a"))
    assert "loading models" not in text_of(view)


def test_a_loaded_worker_that_is_busy_shows_its_work_not_its_load_time():
    view = RunView()
    view.apply(ActorLoaded("w0", 3.2, 11, "node-a"))
    assert "idle (loaded in 3.2s on node-a)" in text_of(view)
    view.apply(WorkerStatus("w0", "cat", 2, 4, preparing="dog", finishing="fox"))
    shown = text_of(view)
    assert "sampling cat step 2/4" in shown and "preparing dog" in shown
    assert "writing fox" in shown and "loaded in" not in shown


def test_a_worker_that_only_decodes_is_not_shown_idle():
    view = RunView()
    view.apply(ActorLoaded("w0", 1.0, 11, "h"))
    view.apply(WorkerStatus("w0", None, 0, 0, finishing="cat"))
    assert "writing cat" in text_of(view) and "idle" not in text_of(view)


def test_after_the_run_every_worker_reads_finished():
    view = RunView()
    view.apply(ActorLoaded("w0", 1.0, 11, "h"))
    view.apply(WorkerStatus("w0", "cat", 1, 4))
    summary = RunSummary(1, 0, 1, 0, 0, 1.0, "out", [])
    view.apply(Finished(summary))
    shown = text_of(view)
    assert "finished" in shown and "step 1/4" not in shown


def test_the_rate_does_not_count_start_up():
    view = RunView()
    view.apply(Started(total=2, pending=2, done_before=0))
    view.started_at -= 100.0  # 100 s of start-up before any worker was ready
    view.apply(ActorLoaded("w0", 1.0, 11, "h"))
    view.first_ready_at -= 10.0
    view.apply(ItemDone("a", "w0", 1, {"sample": 1.0}))
    assert 5.0 < view.rate_per_min() < 7.0  # one item in ~10 s, not in ~110 s


def test_quiet_keeps_failures_and_drops_the_rest():
    failed = ItemFailed("a", "w0", "ValueError", "bad", 3, final=True)
    assert event_line(failed, -1).startswith("failed: a")
    assert event_line(Notice("lease taken over"), -1) is None
    assert event_line(Started(3, 3, 0), -1) is None


def test_verbose_adds_a_line_per_item_and_per_stage():
    assert event_line(ItemDone("a", "w0", 1, {"sample": 1.0}), 0) is None
    assert event_line(ItemDone("a", "w0", 1, {"sample": 1.0, "write": 0.5}), 1) == (
        "done: a on w0 (1.5s)"
    )
    assert event_line(Phase("starting Ray"), 1) == "starting Ray..."


def test_without_a_terminal_the_view_prints_plain_lines_only():
    stream = io.StringIO()
    live = LiveRunView(Console(file=stream, width=120), enabled=True)
    with live:
        live(Started(total=2, pending=2, done_before=0))
        live(ItemFailed("b", "w0", "ValueError", "bad prompt", 3, final=True))
    assert stream.getvalue().splitlines() == [
        "2 items: 0 already done, 2 to generate",
        "failed: b: ValueError: bad prompt",
    ]


def test_a_loading_worker_shows_its_weight_staging():
    view = RunView()
    view.apply(WorkersStarting(1))
    view.apply(WorkerStatus("w0", None, 0, 0, staging="staging 12.1/28.0 GB"))
    assert "w0  staging 12.1/28.0 GB" in text_of(view)
    view.apply(ActorLoaded("w0", 40.0, 11, "h"))
    assert "staging" not in text_of(view)


def test_a_worker_whose_node_left_is_shown_gone_and_not_counted_as_loading():
    from pusa_batch.engine.config import WorkerLeft

    view = RunView()
    view.apply(WorkersStarting(2))
    view.apply(WorkerLeft("w1", "its node was lost"))
    shown = text_of(view)
    assert "left the pool: its node was lost" in shown
    assert "loading models: 0/1 workers ready" in shown
    assert event_line(WorkerLeft("w1", "its node was lost")) == (
        "worker w1 left the pool: its node was lost"
    )


def test_an_items_seconds_leave_out_its_queue_wait_and_clock_readings():
    from pusa_batch.cli.live import item_seconds

    timings = {"queue": 5.0, "prepare": 0.5, "sample": 1.0, "sample_start_unix": 1.79e9}
    assert item_seconds(timings) == 1.5
