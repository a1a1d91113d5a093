"""`run --batch-size`: items sharing a batch key are sampled together and match batch 1.

The worker's stages are checked first on a `WorkerCore` in this process with a scripted runner
(no Ray, no model; each test waits for states, never for time), then one real batched run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from pusa_batch.engine.contract import Outcome, Result, Task
from pusa_batch.engine.dispatch import worker_depth
from pusa_batch.engine.worker import WorkerCore, WorkerSettings
from pusa_batch.item import Item
from pusa_batch.manifest.read import iter_items
from pusa_batch.pipelines import load_pipeline
from pusa_batch.pipelines.spec import load_pipeline_spec
from pusa_batch.video import decode_mp4

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "pipelines" / "tiny.toml"


# -- the worker's stages, scripted ---------------------------------------------------------


def make_item(n: int, prefix: str = "a", *, key: str = "", prompt: str = "fine") -> Item:
    """Items with equal `key`s (their negative prompt) may share a batch."""
    return Item(
        id=f"{prefix}{n}", row=n + 1, task="t2v", prompt=prompt, negative_prompt=key,
        images=(), video=None, video_b=None, cond_frames=None, noise_multipliers=None,
        num_frames=9, height=32, width=32, fps=8, seed=n, steps=2, guidance_scale=1.0,
        shift=5.0,
    )  # fmt: skip


class ScriptedRunner:
    """An `ItemRunner` whose stages are gates the test opens; it records every sampled group.

    An item's batch key is its negative prompt; an item whose prompt is "bad" fails to sample,
    alone or in a batch; one whose prompt is "unpreparable" fails to prepare."""

    def __init__(self) -> None:
        self.prepare_gate, self.finish_gate = threading.Event(), threading.Event()
        self.prepare_gate.set()
        self.finish_gate.set()
        self.groups: list[list[str]] = []

    def load(self) -> dict:
        return {}

    def prepare(self, item: Item) -> Item:
        self.prepare_gate.wait()
        if item.prompt == "unpreparable":
            raise ValueError(f"cannot prepare {item.id}")
        return item

    def batch_key(self, prepared: Item) -> str:
        return prepared.negative_prompt

    def sample(self, prepared: Item, on_step) -> str:
        self.groups.append([prepared.id])
        if prepared.prompt == "bad":
            raise RuntimeError(f"{prepared.id} cannot be sampled")
        return f"latents of {prepared.id}"

    def sample_batch(self, prepared: list[Item], on_step) -> list[str]:
        self.groups.append([p.id for p in prepared])
        if any(p.prompt == "bad" for p in prepared):
            raise RuntimeError("a batch with a bad item")
        return [f"latents of {p.id}" for p in prepared]

    def finish(self, item: Item, latents: str) -> tuple[bytes, dict]:
        self.finish_gate.wait()
        assert latents == f"latents of {item.id}"
        return b"mp4 bytes", {}


def scripted_worker(tmp_path: Path, batch_size: int) -> tuple[WorkerCore, ScriptedRunner]:
    runner = ScriptedRunner()
    settings = WorkerSettings("w0", str(tmp_path / "out"), {}, None, batch_size=batch_size)
    return WorkerCore(lambda: runner, settings), runner


def start_items(worker: WorkerCore, items: list[Item]) -> tuple[list[threading.Thread], dict]:
    """Each item's `run` in its own thread, as the actor's thread pool calls it."""
    results: dict[str, Result] = {}

    def call(item: Item) -> None:
        results[item.id] = worker.run(Task(item, "fp", 1, time.time()))

    threads = [threading.Thread(target=call, args=(item,), daemon=True) for item in items]
    for thread in threads:
        thread.start()
    return threads, results


def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Wait for a state of the worker (the deadline is a hang guard, not a measurement)."""
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, f"still waiting for {what}"
        time.sleep(0.005)


def finish_all(threads: list[threading.Thread]) -> None:
    for thread in threads:
        thread.join(timeout=30)
        assert not thread.is_alive()


def marker(tmp_path: Path, item_id: str) -> dict:
    return json.loads((tmp_path / "out" / "items" / f"{item_id}.json").read_text())


def test_a_worker_holds_a_waiting_batch_a_sampled_batch_and_one_more():
    assert [worker_depth(n, overlap=True) for n in (1, 2, 4)] == [3, 5, 9]
    assert [worker_depth(n, overlap=False) for n in (1, 4)] == [1, 4]


def test_the_sampler_waits_for_items_still_being_prepared_to_fill_its_batch(tmp_path):
    worker, runner = scripted_worker(tmp_path, batch_size=4)
    runner.prepare_gate.clear()
    threads, results = start_items(worker, [make_item(n) for n in range(8)])
    wait_until(lambda: worker._to_prepare == 8, "every item to reach prepare")
    runner.prepare_gate.set()
    finish_all(threads)
    assert [len(group) for group in runner.groups] == [4, 4]  # prepared in lock order
    assert all(marker(tmp_path, f"a{n}")["sample_batch"] == 4 for n in range(8))
    assert all(r.outcome is Outcome.DONE for r in results.values())


def test_a_slow_finish_keeps_the_sampler_from_running_ahead_so_the_next_batch_fills(tmp_path):
    worker, runner = scripted_worker(tmp_path, batch_size=2)
    runner.prepare_gate.clear()
    runner.finish_gate.clear()  # finishing is the slow stage: nothing gets through it yet
    threads, _ = start_items(worker, [make_item(n) for n in range(5)])
    wait_until(lambda: worker._to_prepare == 5, "every item to reach prepare")
    runner.prepare_gate.set()
    wait_until(lambda: len(runner.groups) == 2 and len(worker._waiting) == 1, "two batches")
    # 2 x batch_size sampled items wait in the finish lane: the fifth item waits for the
    # sampler, not behind the finish, and is sampled only once the lane drains
    assert worker._to_finish == 4 and not worker._sampling
    runner.finish_gate.set()
    finish_all(threads)
    assert [len(g) for g in runner.groups] == [2, 2, 1]
    assert worker._to_finish == 0 and worker._to_prepare == 0 and not worker._waiting


def test_items_with_another_batch_key_are_sampled_in_their_own_batch(tmp_path):
    worker, runner = scripted_worker(tmp_path, batch_size=4)
    runner.prepare_gate.clear()
    items = [make_item(0, key="x"), make_item(1, key="y"), make_item(2, key="x")]
    threads, _ = start_items(worker, [*items, make_item(3, key="y")])
    wait_until(lambda: worker._to_prepare == 4, "every item to reach prepare")
    runner.prepare_gate.set()
    finish_all(threads)
    assert sorted(sorted(group) for group in runner.groups) == [["a0", "a2"], ["a1", "a3"]]


def test_a_failed_batch_is_sampled_again_item_by_item_and_fails_only_its_bad_item(tmp_path):
    worker, runner = scripted_worker(tmp_path, batch_size=3)
    runner.prepare_gate.clear()
    items = [make_item(0), make_item(1, "b", prompt="bad"), make_item(2)]
    threads, results = start_items(worker, items)
    wait_until(lambda: worker._to_prepare == 3, "every item to reach prepare")
    runner.prepare_gate.set()
    finish_all(threads)
    assert sorted(runner.groups[0]) == ["a0", "a2", "b1"]
    assert sorted(runner.groups[1:]) == [["a0"], ["a2"], ["b1"]]
    assert results["b1"].outcome is Outcome.FAILED and results["b1"].error.stage == "sample"
    assert all(results[i].outcome is Outcome.DONE for i in ("a0", "a2"))
    assert marker(tmp_path, "a0")["sample_batch"] == 1  # made alone, and recorded so
    assert worker._to_finish == 0


def test_an_item_that_cannot_be_prepared_fails_alone_and_holds_up_no_batch(tmp_path):
    worker, runner = scripted_worker(tmp_path, batch_size=3)
    runner.prepare_gate.clear()
    items = [make_item(0), make_item(1, "u", prompt="unpreparable"), make_item(2)]
    threads, results = start_items(worker, items)
    wait_until(lambda: worker._to_prepare == 3, "every item to reach prepare")
    runner.prepare_gate.set()
    finish_all(threads)
    assert results["u1"].outcome is Outcome.FAILED and results["u1"].error.stage == "prepare"
    assert [sorted(group) for group in runner.groups] == [["a0", "a2"]]
    assert marker(tmp_path, "a0")["sample_batch"] == 2


# -- a real batched run --------------------------------------------------------------------


@pytest.fixture(scope="module")
def batched_run(tmp_path_factory):
    """8 equal items, one worker, --batch-size 4, at the tiny pipeline's default size, where
    the VAE decode takes several times as long as the sampling: the slow stage is finishing."""
    folder = tmp_path_factory.mktemp("batch")
    manifest = folder / "m.csv"
    rows = "".join(f"p{i},t2v,prompt number {i},{i},16\n" for i in range(8))
    manifest.write_text("id,task,prompt,seed,steps\n" + rows)
    out = folder / "out"
    done = subprocess.run(
        [sys.executable, "-m", "pusa_batch", "run", str(manifest), "-o", str(out),
         "--pipeline", str(TINY), "--workers", "1", "--batch-size", "4"],
        capture_output=True, text=True, timeout=600, env={**os.environ},
    )  # fmt: skip
    return manifest, out, done


def test_a_batched_run_generates_every_item(batched_run):
    manifest, out, done = batched_run
    assert done.returncode == 0, done.stderr[-3000:]
    assert {p.stem for p in (out / "videos").glob("*.mp4")} == {f"p{i}" for i in range(8)}


def test_most_items_of_a_batched_run_share_the_samplers_forward(batched_run):
    _, out, _ = batched_run
    batches = [json.loads(p.read_text())["sample_batch"] for p in (out / "items").glob("*.json")]
    assert sum(b > 1 for b in batches) > len(batches) / 2, batches
    assert max(batches) <= 4


def test_batched_items_look_like_their_batch_1_generation(batched_run):
    manifest, out, _ = batched_run
    spec = load_pipeline_spec(TINY)
    pipeline = load_pipeline(spec)
    for item in iter_items(str(manifest), spec):
        frames, _ = decode_mp4(out / "videos" / f"{item.id}.mp4")
        alone, _ = decode_mp4(_encode(pipeline.generate(item), item.fps))
        assert np.abs(frames.astype(int) - alone).mean() < 1.0  # of 255: codec-level noise


def _encode(frames: np.ndarray, fps: int) -> bytes:
    from pusa_batch.video import encode_mp4

    return encode_mp4(frames, fps)
