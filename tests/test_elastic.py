"""The elastic pool: `--workers auto` on a cluster grows when a node joins and shrinks when one is
lost, and a lost node is not a worker failure (its items go back uncharged).

The end-to-end test runs a real two-node Ray cluster on 127.0.0.1 with token auth: a head with
one CPU, then a second node with one CPU that joins mid-run, takes work, and is SIGKILLed (its
raylet, workers and agents) while it samples. Nothing is timed: a test runner gates the sampling
on files the event hook writes, so every step waits for what the run shows.
- On the head, sampling waits until the second node has been lost, so the head cannot drain the
  queue before the second node takes its share.
- On the second node, the first item goes through; the second blocks at its first step until the
  node is killed (it never ends there).
The head's health checks run every 0.5 s, so Ray marks the killed node dead within seconds.

Teardown never runs `ray stop` (it stops every Ray on the machine, other tests' too): each node's
`ray start --block` process tree is killed by pid.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import typer
from process_support import descendants, free_ports
from ray import cloudpickle
from ray.core.generated.common_pb2 import ActorDiedErrorContext, NodeDeathInfo
from ray.exceptions import ActorDiedError, ActorUnavailableError

from pusa_batch.cli.app import parse_labels, parse_resources, parse_workers
from pusa_batch.engine.config import (
    ActorFailed,
    ActorLoaded,
    ItemDone,
    ItemFailed,
    RunConfig,
    WorkerLeft,
    WorkersStarting,
    WorkerStatus,
)
from pusa_batch.engine.dispatch import Driver, Slot, labels_match, room
from pusa_batch.engine.run import run
from pusa_batch.engine.runner import PipelineRunner

TINY = Path(__file__).resolve().parents[1] / "pipelines" / "tiny.toml"
IDS = [f"e{n}" for n in range(6)]
GATE_S = 240  # the longest a gated sample waits before it gives up (a hang guard)

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray's workers cannot import tests/


# -- the pool's arithmetic, without Ray -----------------------------------------------------


def test_room_counts_whole_workers_per_node_on_alive_matching_nodes():
    nodes = {
        "a": {"Labels": {"pool": "gpu", "zone": "z1"}},
        "b": {"Labels": {"pool": "gpu", "zone": "z2"}},
        "c": {"Labels": {"pool": "cpu"}},
    }
    free = {
        "a": {"CPU": 8.0, "GPU": 3.0, "accelerator_type:H100": 1.0},
        "b": {"CPU": 1.5, "GPU": 4.0, "accelerator_type:H100": 1.0},
        "c": {"CPU": 32.0},
        "gone": {"CPU": 64.0, "GPU": 8.0},  # not among the alive nodes
    }
    gpu = {"CPU": 1.0, "GPU": 1.0}
    assert room(free, nodes, gpu, {}) == 3 + 1  # b: 1.5 CPUs hold one worker, not 1.5
    assert room(free, nodes, {**gpu, "accelerator_type:H100": 0.001}, {}) == 4
    assert room(free, nodes, {"CPU": 1.0}, {"pool": "cpu"}) == 32
    assert room(free, nodes, gpu, {"zone": "!z1"}) == 1
    assert room(free, nodes, gpu, {"zone": "in(z1,z2)", "pool": "gpu"}) == 4
    assert room({None: {"CPU": 3.0}}, {}, {"CPU": 2.0}, {}) == 1  # the cluster as one node


def test_label_selectors_follow_ray():
    labels = {"pool": "gpu", "zone": "z1"}
    assert labels_match(labels, {"pool": "gpu"})
    assert not labels_match(labels, {"pool": "cpu"})
    assert labels_match(labels, {"zone": "!z2"}) and not labels_match(labels, {"zone": "!z1"})
    assert labels_match(labels, {"zone": "in(z0, z1)"})
    assert not labels_match(labels, {"zone": "!in(z0,z1)"})
    assert not labels_match(labels, {"missing": "x"}) and labels_match(labels, {"missing": "!x"})


def test_run_settings_for_the_pool_are_checked():
    base = ("m.csv", "out", "p.toml")
    assert RunConfig(*base, max_workers=4, resources={"accelerator_type:H100": 0.001})
    with pytest.raises(ValueError, match="max_workers caps workers=auto"):
        RunConfig(*base, workers=2, max_workers=4)
    with pytest.raises(ValueError, match="GPU is set by cpus_per_worker / gpus_per_worker"):
        RunConfig(*base, resources={"GPU": 1})
    with pytest.raises(ValueError, match="gen must be a positive number"):
        RunConfig(*base, resources={"gen": 0})
    with pytest.raises(ValueError, match="max_workers must be at least 1"):
        RunConfig(*base, max_workers=0)


def test_cli_values_for_the_pool():
    assert parse_workers(None) is None and parse_workers("auto") is None
    assert parse_workers("AUTO") is None and parse_workers("3") == 3
    with pytest.raises(typer.BadParameter, match="a number or auto"):
        parse_workers("many")
    assert parse_resources('{"accelerator_type:H100": 0.001}') == {"accelerator_type:H100": 0.001}
    with pytest.raises(typer.BadParameter, match="JSON object"):
        parse_resources("[1]")
    with pytest.raises(typer.BadParameter, match="not JSON"):
        parse_resources("{gen: 1}")
    assert parse_labels(["pool=gpu", "zone=!z1"]) == {"pool": "gpu", "zone": "!z1"}
    with pytest.raises(typer.BadParameter, match="KEY=VALUE"):
        parse_labels(["pool"])


def actor_died(message: str, reason: int = 0) -> ActorDiedError:
    context = ActorDiedErrorContext(
        error_message=message, actor_id=b"\x01" * 16, node_death_info=NodeDeathInfo(reason=reason)
    )
    return ActorDiedError(context)


def test_a_lost_node_is_told_apart_from_a_crashed_process():
    class Cluster:  # what `_node_gone` reads of the driver: the nodes Ray marked dead
        def __init__(self, dead: set[str]):
            self.dead = dead

        def _dead_nodes(self) -> set[str]:
            return self.dead

    slot = Slot("w0", None, node_id="n1")
    gone = functools.partial(Driver._node_gone, Cluster(set()), slot)
    preempted = actor_died("node drained", NodeDeathInfo.AUTOSCALER_DRAIN_PREEMPTED)
    assert preempted.preempted and gone(preempted) == "its node was preempted"
    died = actor_died("The actor died because its node has died. Node Id: n1")
    assert gone(died) == "its node is gone"
    crashed = actor_died("The actor died because its worker process has died.")
    assert gone(crashed) is None
    unavailable = ActorUnavailableError("Socket closed", b"\x01" * 16)
    assert gone(unavailable) is None  # says nothing: the node's state decides
    marked = functools.partial(Driver._node_gone, Cluster({"n1"}), slot)
    assert marked(unavailable) == "its node is gone" and marked(crashed) == "its node is gone"


# -- a real two-node cluster ------------------------------------------------------------------


def kill_tree(process: subprocess.Popen) -> None:
    """SIGKILL a node's `ray start --block` and everything under it, as a lost VM would go."""
    for pid in [process.pid, *descendants(process.pid)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait(timeout=30)


class Nodes:
    """`ray start` nodes on 127.0.0.1, each with its own ports, temp dir and log."""

    HEALTH = {
        "health_check_initial_delay_ms": 500,
        "health_check_period_ms": 500,
        "health_check_timeout_ms": 1000,
        "health_check_failure_threshold": 3,
    }

    def __init__(self, temp: Path):
        self.temp = temp
        self.token = temp / "token"
        self.token.write_text(secrets.token_hex(16))
        base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        self.env = {**base, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token)}
        self.processes: list[subprocess.Popen] = []
        self.port: int | None = None

    def start(
        self, name: str, *, head: bool = False, labels: dict[str, str] | None = None
    ) -> subprocess.Popen:
        ports = free_ports(8)
        command = [shutil.which("ray") or "ray", "start", "--block", "--disable-usage-stats"]
        if head:
            self.port = ports[6]
            command += ["--head", "--port", str(self.port), "--include-dashboard", "false"]
            command += ["--ray-client-server-port", str(ports[7])]
            command += ["--system-config", json.dumps(self.HEALTH)]
        else:
            command += ["--address", f"127.0.0.1:{self.port}"]
        command += [
            "--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--resources", '{"gen": 4}',
            "--temp-dir", str(self.temp / name),
            "--node-manager-port", str(ports[0]), "--object-manager-port", str(ports[1]),
            "--metrics-export-port", str(ports[2]), "--dashboard-agent-listen-port", str(ports[3]),
            "--dashboard-agent-grpc-port", str(ports[4]), "--runtime-env-agent-port", str(ports[5]),
        ]  # fmt: skip
        if labels:
            command += ["--labels", ",".join(f"{k}={v}" for k, v in labels.items())]
        log = open(self.temp / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        process = subprocess.Popen(
            command, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        self.processes.append(process)
        return process

    def stop_all(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                tree = descendants(process.pid)
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    pass
                for pid in [process.pid, *tree]:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass


def wait_for(predicate, what: str, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"still waiting for {what}")
        time.sleep(0.2)


def wait_until_exists(path: Path) -> None:
    deadline = time.monotonic() + GATE_S
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)


class GatedRunner(PipelineRunner):
    """The tiny pipeline with gates (see the module docstring): on the head node sampling waits
    for `released`; elsewhere a worker's second sample blocks at its first step (for good)."""

    def __init__(self, pipeline_path: str, head_node: str, released: str):
        super().__init__(pipeline_path)
        self.head_node, self.released = head_node, Path(released)
        self.sampled = 0

    def sample(self, prepared, on_step):
        import ray

        if ray.get_runtime_context().get_node_id() == self.head_node:
            wait_until_exists(self.released)
            return super().sample(prepared, on_step)
        self.sampled += 1
        if self.sampled == 1:
            return super().sample(prepared, on_step)

        def blocked(step: int, steps: int) -> None:
            on_step(step, steps)
            wait_until_exists(self.released)

        return super().sample(prepared, blocked)


class Scenario:
    """The event hook that drives the cluster: node 2 joins once w0 is loaded; it is killed
    once its worker, having committed an item, samples another; the head is released once the
    driver has let that worker go."""

    def __init__(self, nodes: Nodes, released: Path):
        self.nodes, self.released = nodes, released
        self.events: list = []
        self.second: subprocess.Popen | None = None
        self.joined_worker: str | None = None
        self.second_done: set[str] = set()
        self.killed_item: str | None = None

    def __call__(self, event) -> None:
        self.events.append(event)
        if isinstance(event, ActorLoaded) and event.worker == "w0" and self.second is None:
            self.second = self.nodes.start("node2")
        elif isinstance(event, ActorLoaded) and event.worker != "w0":
            self.joined_worker = event.worker
        elif isinstance(event, ItemDone) and event.worker == self.joined_worker:
            self.second_done.add(event.id)
        elif (
            isinstance(event, WorkerStatus)
            and event.worker == self.joined_worker
            and self.second_done
            and event.item is not None
            and event.item not in self.second_done
            and self.killed_item is None
        ):
            self.killed_item = event.item
            kill_tree(self.second)
        elif isinstance(event, WorkerLeft):
            self.released.touch()


@pytest.fixture
def nodes():
    temp = Path(tempfile.mkdtemp(prefix="pbel-", dir="/tmp"))  # short: unix socket paths
    cluster = Nodes(temp)
    try:
        yield cluster
    finally:
        cluster.stop_all()
        shutil.rmtree(temp, ignore_errors=True)


@dataclass
class Outcome:
    summary: Any
    scenario: Scenario
    head_node: str
    out: Path

    def check_the_lost_node_was_no_failure(self) -> dict[str, dict]:
        """Every id once, no failure of any kind, nothing charged; returns the markers."""
        events, summary = self.scenario.events, self.summary
        assert self.scenario.killed_item, "the second node never sampled a second item"
        assert not [e for e in events if isinstance(e, (ActorFailed, ItemFailed))]
        left = [e for e in events if isinstance(e, WorkerLeft)]
        assert [e.worker for e in left] == [self.scenario.joined_worker] == ["w1"]
        assert "node" in left[0].reason
        assert summary.generated == len(IDS) and summary.failed == 0
        assert summary.workers["w1"]["state"] == "lost" and summary.workers["w1"]["deaths"] == 0
        assert summary.workers["w0"]["state"] == "ready" and summary.workers["w0"]["deaths"] == 0
        done = {p.stem: json.loads(p.read_text()) for p in (self.out / "items").glob("*.json")}
        assert sorted(done) == IDS
        videos = sorted(p.name for p in (self.out / "videos").iterdir())
        assert videos == [f"{i}.mp4" for i in IDS]
        second_node = {m["node_id"] for m in done.values()} - {self.head_node}
        assert len(second_node) == 1, "no item was committed on the second node"
        on_second = {i for i, m in done.items() if m["node_id"] in second_node}
        assert on_second == self.scenario.second_done
        assert all(m["attempts"] == 1 for m in done.values()), "a lost node charged an attempt"
        assert done[self.scenario.killed_item]["node_id"] == self.head_node
        return done


def connect_to_head(nodes: Nodes, monkeypatch) -> str:
    """`ray.init` this process to the started head with its token (retried while the head
    starts listening); returns the head's address."""
    import ray
    from ray._private.authentication_test_utils import reset_auth_token_state

    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(nodes.token))
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    reset_auth_token_state()  # Ray reads the auth settings once per process, and caches them
    address = f"127.0.0.1:{nodes.port}"
    connect = {"address": address, "logging_level": "WARNING", "log_to_driver": False}
    deadline = time.monotonic() + 120
    while True:  # the head takes a few seconds to listen
        try:
            ray.init(**connect)
            return address
        except Exception:  # noqa: BLE001 - not up yet
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def run_on_two_nodes(nodes: Nodes, tmp_path: Path, monkeypatch, **settings) -> Outcome:
    """The scenario: a head with one CPU, a second node joining once w0 is loaded, then lost."""
    import ray
    from ray._private.authentication_test_utils import reset_auth_token_state

    nodes.start("head", head=True)
    address = connect_to_head(nodes, monkeypatch)
    released = tmp_path / "released"
    try:
        (head_node,) = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
        rows = [f"{i},t2v,clip {n},5,32,32,3,{n}" for n, i in enumerate(IDS)]
        manifest = tmp_path / "manifest.csv"
        manifest.write_text("\n".join(["id,task,prompt,num_frames,height,width,steps,seed", *rows]))
        out = tmp_path / "out"
        scenario = Scenario(nodes, released)
        config = RunConfig(
            str(manifest),
            str(out),
            str(TINY),
            address=address,
            resources={"gen": 1},
            status_every_s=0.2,
            pool_poll_s=1.0,
            **settings,
        )
        runner = functools.partial(GatedRunner, str(TINY), head_node, str(released))
        summary = run(config, scenario, make_runner=runner)
    finally:
        released.touch()
        ray.shutdown()
        monkeypatch.undo()
        reset_auth_token_state()  # the next test's Ray reads this process's own settings
    return Outcome(summary, scenario, head_node, out)


@pytest.mark.slow
def test_a_node_that_joins_gets_work_and_a_lost_node_is_not_a_failure(nodes, tmp_path, monkeypatch):
    outcome = run_on_two_nodes(nodes, tmp_path, monkeypatch, workers=None)  # auto
    outcome.check_the_lost_node_was_no_failure()
    started = [e.count for e in outcome.scenario.events if isinstance(e, WorkersStarting)]
    assert started == [1, 2]  # one per free CPU, then one more when the node joined; none after
    assert set(outcome.summary.workers) == {"w0", "w1"}
