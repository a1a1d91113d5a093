"""Fault: the output root's disk fills up mid-run (a small tmpfs, then a filler file).

Each round mounts a tmpfs (`--size`), starts `pusa-batch run` on it, fills the disk once an
item is committed, and waits for the run to end. Figures: its exit code; whether what it printed
names the full disk ("the disk is full") and never blames reachability; items whose files are
corrupt yet counted done (`pusa-batch verify`, exit 0 means none); then, once the filler is
removed, the same command's exit code, and for the root lost / duplicated / regenerated.
Mounting needs root: without it the script says so and exits 0 with `skipped`.

    python benchmarks/faults/full_disk.py [--rounds N] [--items N] [--size 4m]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fault_support import (
    cli,
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


def mount_tmpfs(where: Path, size: str) -> str | None:
    """None once mounted, else why it could not be."""
    where.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if done.returncode == 0:
        return None
    return done.stderr.strip() or f"mount exited {done.returncode}"


def fill(disk: Path) -> Path:
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while f.write(bytes(4096)):
                pass
        except OSError:  # ENOSPC
            pass
    return filler


def one_round(folder: Path, items: int, size: str, steps: int) -> dict:
    disk = folder / "disk"
    why = mount_tmpfs(disk, size)
    if why:
        return {"skipped": why}
    try:
        manifest = write_manifest(folder, items, steps=steps)
        out = disk / "out"
        command = run_command(manifest, out)
        with open(folder / "full.log", "wb") as log:
            driver = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        wait_for(lambda: markers(out) or driver.poll() is not None, "the first commit")
        if not markers(out):
            return {"setup_failed": first_traceback((folder / "full.log").read_text())}
        filler = fill(disk)
        filled = time.monotonic()
        before = markers(out)
        rc = driver.wait(timeout=900)
        ended_s = time.monotonic() - filled
        printed = (folder / "full.log").read_text(errors="replace")
        said = " ".join(printed.split())
        checked = cli("verify", str(out))
        filler.unlink()
        started = time.monotonic()
        rerun = subprocess.run(command, capture_output=True, text=True, timeout=900)
        return {
            "rc": rc,
            "done_at_fill": len(before),
            "ended_after_fill_s": round(ended_s, 1),
            "names_disk_full": "disk is full" in said,
            "blames_reachability": "cannot be reached" in said or "unreachable" in said,
            "traceback": first_traceback(printed),
            "verify_rc": checked.returncode,
            "failure_records": len(list((out / "failures").glob("*.json"))),
            "rerun_rc": rerun.returncode,
            "rerun_s": round(time.monotonic() - started, 1),
            "rerun_said": None if rerun.returncode == 0 else " ".join(rerun.stderr.split())[-400:],
            **verdict(out, ids_of(manifest), before),
            "last_line": said[-300:],
        }
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def in_a_folder(args) -> dict:
    with tempfile.TemporaryDirectory(prefix="pbdf-") as tmp:
        return one_round(Path(tmp), args.items, args.size, args.steps)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--items", type=int, default=6)
    parser.add_argument("--size", default="4m")
    parser.add_argument("--steps", type=int, default=150)
    args = parser.parse_args()
    results = []
    for result in each_round(args.rounds, lambda: in_a_folder(args)):
        results.append(result)
        if "skipped" in result:
            print(figures("full_disk", True, skipped=json.dumps(result["skipped"])))
            return 0
    ok = all(
        r["rc"] != 0
        and r["names_disk_full"]
        and not r["blames_reachability"]
        and r["verify_rc"] == 0
        and r["rerun_rc"] == 0
        and not r["lost"]
        and not r["duplicated"]
        and not r["regenerated"]
        for r in results
    )
    print(
        figures(
            "full_disk",
            ok,
            rounds=len(results),
            items=args.items * len(results),
            lost=sum(r["lost"] for r in results),
            duplicated=sum(r["duplicated"] for r in results),
            regenerated=sum(r["regenerated"] for r in results),
            corrupt_counted_done=sum(r["verify_rc"] != 0 for r in results),
            named_disk_full=sum(r["names_disk_full"] for r in results),
            blamed_reachability=sum(r["blames_reachability"] for r in results),
        )
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
