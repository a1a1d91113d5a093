"""The run's metrics on the cluster's Prometheus endpoint: a real local Ray exporting on a port of
its own, a run of two tiny items, then `GET /metrics` until the driver's series arrive (Ray
exports every `metrics_report_interval_ms`; the wait is a hang guard, never a measurement).
"""

from __future__ import annotations

import logging
import re
import socket
import time
from pathlib import Path

import pytest
import requests

from pusa_batch.engine.config import RunConfig
from pusa_batch.engine.metrics import RunMetrics
from pusa_batch.engine.run import run

TINY = Path(__file__).resolve().parents[1] / "pipelines" / "tiny.toml"
ROWS = ["cat,t2v,a red cat,5,32,32,2,1", "dog,t2v,a blue dog,5,32,32,2,2"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def metrics_ray():
    """A local Ray whose metrics agent exports on a known port, twice a second."""
    import ray

    port = free_port()
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        _metrics_export_port=port,
        _system_config={"metrics_report_interval_ms": 500},
        logging_level="WARNING",
        log_to_driver=False,
    )
    yield port
    ray.shutdown()


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """(labels, value) of every sample of `name` in a Prometheus text page."""
    found = []
    for line in text.splitlines():
        match = re.match(rf"^{re.escape(name)}\{{(.*)\}} (\S+)$", line)
        if match:
            labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(1)))
            found.append((labels, float(match.group(2))))
    return found


def scrape_until(port: int, ready, timeout_s: float = 120) -> str:
    deadline = time.monotonic() + timeout_s
    text = ""
    while time.monotonic() < deadline:
        try:
            text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        except requests.RequestException:
            text = ""
        if ready(text):
            return text
        time.sleep(0.5)
    raise TimeoutError("the metrics never showed up; last page:\n" + text[-3000:])


def test_a_run_exports_its_items_stages_and_queue(metrics_ray, tmp_path):
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("\n".join(["id,task,prompt,num_frames,height,width,steps,seed", *ROWS]))
    out = tmp_path / "out"
    summary = run(RunConfig(str(manifest), str(out), str(TINY), workers=1, status_every_s=0.2))
    assert summary.generated == 2

    def ours(text: str, name: str) -> list[tuple[dict[str, str], float]]:
        return [(k, v) for k, v in samples(text, name) if str(out) in k.get("run", "")]

    def done(text: str) -> float:
        return sum(v for _, v in ours(text, "ray_pusa_batch_items_done_total"))

    text = scrape_until(metrics_ray, lambda page: done(page) >= 2)
    assert done(text) == 2
    assert {k["worker"] for k, _ in ours(text, "ray_pusa_batch_items_done_total")} == {"w0"}
    counts = {k["stage"]: v for k, v in ours(text, "ray_pusa_batch_stage_seconds_count")}
    for stage in ("queue", "prepare", "sample", "decode", "encode", "write"):
        assert counts.get(stage) == 2, (stage, counts)
    assert ours(text, "ray_pusa_batch_queue_depth"), "no queue depth gauge"
    assert ours(text, "ray_pusa_batch_in_flight"), "no in-flight gauge"
    assert {k["state"] for k, _ in ours(text, "ray_pusa_batch_workers")} >= {"ready", "loading"}


def test_metrics_never_stop_a_run(caplog):
    metrics = RunMetrics("r")

    def broken(*args, **kwargs):
        raise RuntimeError("no metrics agent")

    metrics._metric = broken  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING, logger="pusa_batch.engine.metrics"):
        for _ in range(3):
            metrics.item_done("w0", {"sample": 1.0})
            metrics.queue(3, 1)
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 2 and "item_done" in warned[0] and "queue" in warned[1]  # once each
