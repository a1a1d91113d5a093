"""`--node-label` on a real two-node Ray cluster: the pool is sized from, and placed on, the
nodes whose labels match, and the other node gets no worker and commits nothing."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
from test_elastic import Nodes, connect_to_head, wait_for

from pusa_batch.engine.config import RunConfig, WorkersStarting
from pusa_batch.engine.run import run

TINY = Path(__file__).resolve().parents[1] / "pipelines" / "tiny.toml"
IDS = [f"l{n}" for n in range(3)]


@pytest.fixture
def labelled_nodes(monkeypatch):
    """A head labelled pool=head and a second node labelled pool=gen, one CPU each."""
    import ray
    from ray._private.authentication_test_utils import reset_auth_token_state

    temp = Path(tempfile.mkdtemp(prefix="pblb-", dir="/tmp"))  # short: unix socket paths
    nodes = Nodes(temp)
    try:
        nodes.start("head", head=True, labels={"pool": "head"})
        address = connect_to_head(nodes, monkeypatch)
        nodes.start("node2", labels={"pool": "gen"})
        wait_for(lambda: len([n for n in ray.nodes() if n["Alive"]]) == 2, "the second node")
        by_pool = {n["Labels"].get("pool"): n["NodeID"] for n in ray.nodes() if n["Alive"]}
        yield address, by_pool
    finally:
        ray.shutdown()
        monkeypatch.undo()
        reset_auth_token_state()  # the next test's Ray reads this process's own settings
        nodes.stop_all()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
def test_a_node_label_places_every_worker_on_the_matching_node(labelled_nodes, tmp_path):
    address, by_pool = labelled_nodes
    rows = [f"{i},t2v,clip {n},5,32,32,2,{n}" for n, i in enumerate(IDS)]
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("\n".join(["id,task,prompt,num_frames,height,width,steps,seed", *rows]))
    out = tmp_path / "out"
    events: list = []
    config = RunConfig(
        str(manifest), str(out), str(TINY), address=address, node_labels={"pool": "gen"}
    )
    summary = run(config, events.append)
    assert summary.generated == len(IDS) and summary.failed == 0
    started = [e.count for e in events if isinstance(e, WorkersStarting)]
    assert started and max(started) == 1  # one CPU on the matching node: one worker, not two
    markers = [json.loads(p.read_text()) for p in (out / "items").glob("*.json")]
    assert sorted(m["id"] for m in markers) == IDS
    assert {m["node_id"] for m in markers} == {by_pool["gen"]}
