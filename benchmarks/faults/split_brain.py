"""Fault: split brain. The first driver is paused (SIGSTOP of the driver and every process under
it: its embedded Ray and actors, as a frozen VM) past its lease's staleness; a second driver on
the same output root takes the lease over; the first is resumed (SIGCONT) while the second runs.

Each round: the first `pusa-batch run` (`--lease-stale-s S`) is paused once it has committed an
item; once lease.json's heartbeat is S s old (read from the root, not guessed) the same command
starts again; once that one holds the lease and has committed an item of its own, the first is
resumed. Figures: time from SIGCONT to the first driver's exit (time to detect) and its exit
code and message; items overwritten (a marker written by the first driver's Ray after the
takeover; markers carry their Ray node id); failure records the first left for items done;
whether run.json still belongs to the second; and, for the whole root, lost / duplicated.

    python benchmarks/faults/split_brain.py [--rounds N] [--items N] [--stale-s S]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from fault_support import (
    each_round,
    figures,
    first_traceback,
    ids_of,
    markers,
    run_command,
    signal_group,
    verdict,
    wait_for,
    write_manifest,
)
from process_support import descendants


def lease(out: Path) -> dict:
    try:
        return json.loads((out / "lease.json").read_text())
    except (OSError, ValueError):
        return {}


def committed_unix(marker: dict) -> float:
    return datetime.fromisoformat(marker["committed_at"]).timestamp()


def freeze(pid: int, sig: int, pids: list[int] | None = None) -> list[int]:
    """Send `sig` to the driver and every process under it (its Ray actors have process groups
    of their own); returns the pids signalled."""
    pids = [pid, *descendants(pid)] if pids is None else pids
    for each in pids:
        try:
            os.kill(each, sig)
        except ProcessLookupError:
            pass
    return pids


def start(manifest: Path, out: Path, stale_s: float, log: Path) -> subprocess.Popen:
    with open(log, "wb") as sink:
        return subprocess.Popen(
            run_command(manifest, out, "--lease-stale-s", str(stale_s)),
            start_new_session=True,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )


def one_round(folder: Path, items: int, stale_s: float, steps: int) -> dict:
    manifest = write_manifest(folder, items, steps=steps)
    out = folder / "out"
    first = start(manifest, out, stale_s, folder / "first.log")
    second = None
    try:
        wait_for(lambda: markers(out) or first.poll() is not None, "the first commit")
        if first.poll() is not None:
            return {"setup_failed": first_traceback((folder / "first.log").read_text())}
        frozen = freeze(first.pid, signal.SIGSTOP)
        paused = markers(out)
        first_node = {m["node_id"] for m in paused.values()}
        token = lease(out).get("token")
        wait_for(
            lambda: time.time() - float(lease(out).get("heartbeat_unix", 0)) >= stale_s,
            "the paused lease to go stale",
        )
        second = start(manifest, out, stale_s, folder / "second.log")
        wait_for(lambda: lease(out).get("token") not in (None, token), "the takeover", 300)
        taken_at = time.time()
        wait_for(
            lambda: (
                any(committed_unix(m) > taken_at for m in markers(out).values())
                or second.poll() is not None
            ),
            "a commit by the second driver",
        )
        freeze(first.pid, signal.SIGCONT, frozen)
        resumed = time.monotonic()
        first.wait(timeout=600)
        detect_s = time.monotonic() - resumed
        second.wait(timeout=900)
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                signal_group(process.pid, signal.SIGCONT)
                signal_group(process.pid, signal.SIGKILL)
    time.sleep(1.0)
    done = markers(out)
    overwritten = [
        i for i, m in done.items() if m["node_id"] in first_node and committed_unix(m) > taken_at
    ]
    failures = {p.stem for p in (out / "failures").glob("*.json")}
    run_info = json.loads((out / "run.json").read_text())
    first_log = (folder / "first.log").read_text(errors="replace")
    return {
        "first_rc": first.returncode,
        "second_rc": second.returncode,
        "done_at_pause": len(paused),
        "detect_s": round(detect_s, 1),
        "first_said_lost": "lost the lease" in " ".join(first_log.split()),
        "overwritten": len(overwritten),
        "failure_records_left": len(failures & set(done)),
        "run_json_state": run_info.get("state"),
        "run_json_is_second": run_info.get("pid") == second.pid,
        **verdict(out, ids_of(manifest), paused),
    }


def in_a_folder(args) -> dict:
    with tempfile.TemporaryDirectory(prefix="pbsb-") as tmp:
        return one_round(Path(tmp), args.items, args.stale_s, args.steps)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--items", type=int, default=8)
    parser.add_argument("--stale-s", type=float, default=6.0)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    results = list(each_round(args.rounds, lambda: in_a_folder(args)))
    ok = all(
        r["first_rc"] != 0
        and r["second_rc"] == 0
        and r["first_said_lost"]
        and not r["overwritten"]
        and not r["lost"]
        and not r["duplicated"]
        and not r["regenerated"]
        and not r["failure_records_left"]
        and r["run_json_is_second"]
        for r in results
    )
    print(
        figures(
            "split_brain",
            ok,
            rounds=len(results),
            items=args.items * len(results),
            overwritten=sum(r["overwritten"] for r in results),
            lost=sum(r["lost"] for r in results),
            duplicated=sum(r["duplicated"] for r in results),
            regenerated=sum(r["regenerated"] for r in results),
            detect_s_max=max(r["detect_s"] for r in results),
            run_json_taken_back=sum(not r["run_json_is_second"] for r in results),
        )
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
