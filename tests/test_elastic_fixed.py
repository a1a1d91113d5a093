"""`--workers N` on a cluster whose node is lost: the lost worker is not a failure, and another
is started in its place (it waits for room; here none comes, and the head finishes the run).

The same two-node scenario as `test_elastic.py` (its helpers): N=2 on a head with one CPU, so w1
waits until the second node joins, takes work there and is lost with it.
"""

from __future__ import annotations

import pytest
from test_elastic import nodes, run_on_two_nodes  # noqa: F401 - `nodes` is a fixture

from pusa_batch.engine.config import WorkersStarting


@pytest.mark.slow
def test_a_fixed_pool_replaces_a_worker_lost_with_its_node(nodes, tmp_path, monkeypatch):  # noqa: F811
    outcome = run_on_two_nodes(nodes, tmp_path, monkeypatch, workers=2)
    outcome.check_the_lost_node_was_no_failure()
    started = [e.count for e in outcome.scenario.events if isinstance(e, WorkersStarting)]
    assert started == [2, 3]  # w2 replaces w1
    assert outcome.summary.workers["w2"]["state"] == "loading"  # no room came for it
