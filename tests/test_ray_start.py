"""An embedded Ray that will not start (Ray's raylet has 30 s to register, which a loaded machine
can miss) is tried once more, then a typed error with what to do, not Ray's bare Exception."""

from __future__ import annotations

import pytest
import ray

from pusa_batch.engine import startup as engine_startup
from pusa_batch.engine.config import RunConfig
from pusa_batch.errors import RayStartError

TIMEOUT = "The current node timed out during startup."


def config() -> RunConfig:
    return RunConfig("m.csv", "out", "p.toml", workers=1)


def test_a_start_that_times_out_once_is_tried_again(monkeypatch):
    calls = []

    def init(**kwargs):
        calls.append(kwargs)
        if len(calls) == 1:
            raise Exception(TIMEOUT)  # noqa: TRY002 - what Ray raises

    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    engine_startup.ray_init(config(), None)
    assert len(calls) == 2


def test_a_start_that_keeps_timing_out_is_a_typed_error_saying_what_to_do(monkeypatch):
    def init(**kwargs):
        raise Exception(TIMEOUT)  # noqa: TRY002 - what Ray raises

    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    with pytest.raises(RayStartError, match="did not start.*ray start --head.*--address"):
        engine_startup.ray_init(config(), None)


def test_shutting_down_an_embedded_ray_leaves_none_of_its_processes():
    ray.init(
        num_cpus=1,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        logging_level="WARNING",
        log_to_driver=False,
    )
    node = ray._private.worker._global_node
    started = [info.process for infos in node.all_processes.values() for info in infos]
    assert any(True for _ in node.all_processes.get("monitor", ()))
    engine_startup.shutdown_ray(embedded=True)
    assert not ray.is_initialized()
    assert [p.args[0] for p in started if p.poll() is None] == []
