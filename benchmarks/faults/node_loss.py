"""Fault: a node lost mid-run on a two-node local Ray cluster (127.0.0.1, token auth).

Each round starts a head and a second node with one CPU each (`tests/test_elastic.py`'s
`Nodes`: own ports, temp dirs, fast health checks), runs `pusa-batch run --address HEAD
--workers 2` (one worker a node), and once the second node has committed an item and taken
another, SIGKILLs the second node's `ray start` tree: its raylet, workers and agents, as a lost
VM. Figures: the run's exit code, time from the kill to its end, whether it said the worker left
the pool, items charged an extra attempt, failure records, lost / duplicated / regenerated.

    python benchmarks/faults/node_loss.py [--rounds N] [--items N]
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fault_support import (
    each_round,
    figures,
    first_traceback,
    ids_of,
    markers,
    run_command,
    verdict,
    wait_for,
    write_manifest,
)
from process_support import descendants
from test_elastic import Nodes, kill_tree


def node_id_of(process: subprocess.Popen) -> str | None:
    """The node id a `ray start` tree runs under (its raylet's --node_id)."""
    for pid in descendants(process.pid):
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        for arg in args:
            if arg.startswith(b"--node_id="):
                return arg.split(b"=", 1)[1].decode()
    return None


def one_round(folder: Path, items: int, steps: int, rng: random.Random) -> dict:
    nodes = Nodes(folder)
    try:
        nodes.start("head", head=True)
        second = nodes.start("node2")
        wait_for(lambda: node_id_of(second) is not None, "the second node's raylet", 180)
        lost_node = node_id_of(second)
        manifest = write_manifest(folder, items, steps=steps)
        out = folder / "out"
        address = ["--address", f"127.0.0.1:{nodes.port}"]
        command = run_command(manifest, out, *address, workers=2)
        with open(folder / "run.log", "wb") as log:
            driver = subprocess.Popen(
                command, env=nodes.env, stdout=log, stderr=subprocess.STDOUT, cwd=folder
            )
        on_second = lambda: {i for i, m in markers(out).items() if m.get("node_id") == lost_node}  # noqa: E731
        wait_for(lambda: on_second() or driver.poll() is not None, "a commit on the second node")
        if driver.poll() is not None:
            return {"setup_failed": first_traceback((folder / "run.log").read_text())}
        time.sleep(rng.uniform(0.2, 1.5))  # into its next item
        before = markers(out)
        kill_tree(second)
        killed = time.monotonic()
        rc = driver.wait(timeout=900)
        ended_s = time.monotonic() - killed
        said = " ".join((folder / "run.log").read_text(errors="replace").split())
        done = markers(out)
        return {
            "rc": rc,
            "done_at_kill": len(before),
            "done_on_lost_node": len(on_second()),
            "ended_after_kill_s": round(ended_s, 1),
            "said_left": "left the pool" in said or "node is gone" in said,
            "extra_attempts": sum(m.get("attempts", 1) > 1 for m in done.values()),
            "failure_records": len(list((out / "failures").glob("*.json"))),
            **verdict(out, ids_of(manifest), before),
            "last_words": said[-240:],
        }
    finally:
        nodes.stop_all()


def in_a_folder(args, rng: random.Random) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="pbnl-", dir="/tmp"))  # short: unix socket paths
    try:
        return one_round(folder, args.items, args.steps, rng)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--items", type=int, default=8)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    results = list(each_round(args.rounds, lambda: in_a_folder(args, rng)))
    ok = all(
        r["rc"] == 0 and r["done_on_lost_node"] and not r["lost"] and not r["duplicated"]
        and not r["regenerated"] and not r["failure_records"] and not r["extra_attempts"]
        for r in results
    )  # fmt: skip
    print(
        figures(
            "node_loss",
            ok,
            rounds=len(results),
            nodes_lost=len(results),
            items=args.items * len(results),
            lost=sum(r["lost"] for r in results),
            duplicated=sum(r["duplicated"] for r in results),
            regenerated=sum(r["regenerated"] for r in results),
            extra_attempts=sum(r["extra_attempts"] for r in results),
            end_after_kill_s_max=max(r["ended_after_kill_s"] for r in results),
        )
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
