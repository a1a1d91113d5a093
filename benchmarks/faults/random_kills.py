"""Fault campaign: the driver SIGKILLed at a random moment, then the same command run again.

Each round starts `pusa-batch run` on a fresh root (tiny pipeline, embedded local Ray), kills
its whole process group at a random time after the first commit, records what is committed,
reruns the same command at once, and checks the final root: every id done once, nothing lost,
no item committed before the kill made again. With `--actor-kills P`, a round is, with
probability P, an actor round: the Ray actor (`ray::Worker`) is SIGKILLed first, at a random
time after the first commit, and the driver once Ray has restarted it and it has committed
again. Prints one line per round and a summary line.

    python benchmarks/faults/random_kills.py [--rounds N] [--items N] [--seed S] [--actor-kills P]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "pipelines" / "tiny.toml"


def markers(out: Path) -> dict[str, dict]:
    found = {}
    for path in (out / "items").glob("*.json") if (out / "items").exists() else ():
        try:
            found[path.stem] = json.loads(path.read_text())
        except ValueError:
            continue
    return found


def command(manifest: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "pusa_batch", "run", str(manifest), "-o", str(out),
            "--pipeline", str(TINY), "--workers", "1", "--no-progress"]  # fmt: skip


def actors(driver_pid: int) -> set[int]:
    """Pids of the run's Ray actors: processes under the driver titled `ray::Worker`."""
    sys.path.insert(0, str(ROOT / "tests"))
    from process_support import descendants

    found = set()
    for pid in descendants(driver_pid):
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
        except OSError:
            continue
        if title.startswith(b"ray::Worker"):
            found.add(pid)
    return found


def kill_an_actor(driver: subprocess.Popen, out: Path, rng: random.Random) -> dict:
    """SIGKILL the actor at a random time; wait until a restarted one has committed again."""
    time.sleep(rng.uniform(0.0, 3.0))
    victims = actors(driver.pid)
    if not victims or driver.poll() is not None:
        return {"actor_killed": False}
    done_then = set(markers(out))
    os.kill(min(victims), signal.SIGKILL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and driver.poll() is None:
        if actors(driver.pid) - victims and set(markers(out)) - done_then:
            break
        time.sleep(0.1)
    return {"actor_killed": True, "done_at_actor_kill": len(done_then)}


def one_round(folder: Path, items: int, rng: random.Random, actor_round: bool = False) -> dict:
    manifest = folder / "m.csv"
    rows = [f"k{n:03d},t2v,a scene {n},{n},5,32,32,150" for n in range(items)]
    manifest.write_text("id,task,prompt,seed,num_frames,height,width,steps\n" + "\n".join(rows))
    out = folder / "out"
    driver = subprocess.Popen(command(manifest, out), start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 300
    while not markers(out) and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if not markers(out):  # Ray did not start (a busy machine): this round saw no fault
        driver.wait()
        return {"setup_failed": driver.returncode}
    actor = kill_an_actor(driver, out, rng) if actor_round else {}
    time.sleep(rng.uniform(0.0, 3.0 if actor_round else 6.0))
    killed_at = time.monotonic()
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    time.sleep(0.5)
    before = markers(out)
    resumed = subprocess.run(command(manifest, out), capture_output=True, text=True, timeout=600)
    after = markers(out)
    videos = {p.stem for p in (out / "videos").glob("*.mp4")}
    ids = {f"k{n:03d}" for n in range(items)}
    failed = [json.loads(p.read_text()) for p in (out / "failures").glob("*.json")]
    return {
        **actor,
        "failure_records": len(failed),
        "rc": resumed.returncode,
        "done_at_kill": len(before),
        "lost": len(ids - set(after) - videos),
        "missing_at_end": len(ids - set(after)),
        "regenerated": sum(
            after[i]["committed_at"] != m["committed_at"] for i, m in before.items()
        ),
        "extra_videos": len(videos - ids),
        "resume_s": round(time.monotonic() - killed_at, 1),
        "mid_run": len(before) < items,
        "took_over": "run that is gone" in resumed.stderr,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--items", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--actor-kills", type=float, default=0.0, help="share of rounds that kill an actor first"
    )
    args = parser.parse_args()
    rng = random.Random(args.seed)
    results = []
    for n in range(args.rounds):
        actor_round = rng.random() < args.actor_kills
        for _ in range(3):
            with tempfile.TemporaryDirectory() as tmp:
                result = one_round(Path(tmp), args.items, rng, actor_round)
            if "setup_failed" not in result:
                break
            print(f"round {n + 1}: setup failed, again", flush=True)
        results.append(result)
        print(f"round {n + 1}: {json.dumps(result)}", flush=True)
    bad = sum(r["rc"] != 0 or r["missing_at_end"] or r["regenerated"] or r["extra_videos"]
              or r["failure_records"]
              or (r["mid_run"] and not r["took_over"]) for r in results)  # fmt: skip
    print(
        f"FAULTS random_driver_kills rounds={len(results)} items={args.items * len(results)} "
        f"lost={sum(r['missing_at_end'] for r in results)} "
        f"regenerated={sum(r['regenerated'] for r in results)} "
        f"mid_run_kills={sum(r['mid_run'] for r in results)} "
        f"actor_kills={sum(r.get('actor_killed', False) for r in results)} "
        f"taken_over_at_once={sum(r['took_over'] for r in results)} "
        f"{'pass' if not bad else 'miss'}"
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
