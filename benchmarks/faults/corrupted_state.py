"""Fault: a finished root damaged by hand, then `verify`, `verify --repair` and the same command.

Each round makes a root with `pusa-batch run`, then, at random ids:
1. deletes one video, truncates another, truncates a third item's marker, and leaves stale temp
   files (`videos/ID.mp4.tmp`, `.tmp/...`); `verify` must report the three (exit 1),
   `verify --repair` must restore the marker whose video is whole, and the rerun must make the
   two broken videos again, nothing else, and remove the temp files;
2. corrupts the index part: `status` and the rerun must not print a traceback, the part must go
   to `index/quarantine/`, and nothing may be made again;
3. replaces `videos/` with a symlink to a folder outside: the rerun must be refused (exit 2) with
   nothing written outside.
Figures per round: what each step found, regenerated ids, and lost / duplicated at the end.

    python benchmarks/faults/corrupted_state.py [--rounds N] [--items N] [--seed S]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
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
    write_manifest,
)


def rerun(command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=900)


def changed(before: dict[str, dict], out: Path) -> list[str]:
    after = markers(out)
    return sorted(
        i
        for i, m in before.items()
        if after.get(i, {}).get("commit_token") != m.get("commit_token")
    )


def files_damage(out: Path, chosen: list[str]) -> None:
    gone, short_video, short_marker = chosen
    (out / "videos" / f"{gone}.mp4").unlink()
    video = out / "videos" / f"{short_video}.mp4"
    video.write_bytes(video.read_bytes()[:100])
    marker = out / "items" / f"{short_marker}.json"
    marker.write_bytes(marker.read_bytes()[:40])
    (out / "videos" / f"{gone}.mp4.tmp").write_bytes(b"half a video")
    (out / ".tmp").mkdir(exist_ok=True)
    (out / ".tmp" / "deadbeef-x.mp4").write_bytes(b"half a video")


def one_round(folder: Path, items: int, rng: random.Random) -> dict:
    manifest = write_manifest(folder, items, steps=4)
    out = folder / "out"
    command = run_command(manifest, out)
    made = rerun(command)
    if made.returncode != 0:
        return {"setup_failed": first_traceback(made.stderr) or made.stderr[-300:]}
    ids = sorted(ids_of(manifest))
    chosen = rng.sample(ids, 3)
    result: dict = {"deleted_video": chosen[0], "truncated_video": chosen[1],
                    "truncated_marker": chosen[2]}  # fmt: skip
    # 1. files
    before = markers(out)
    files_damage(out, chosen)
    checked = cli("verify", str(out))
    result["verify_rc"] = checked.returncode
    result["verify_named"] = sum(i in checked.stdout + checked.stderr for i in chosen)
    repaired = cli("verify", str(out), "--repair")
    result["repair_rc"] = repaired.returncode
    result["marker_restored"] = chosen[2] in markers(out)
    first = rerun(command)
    result["rerun_rc"] = first.returncode
    result["regenerated"] = changed(before, out)
    result["expected_regenerated"] = sorted(chosen[:2])
    result["temp_left"] = sorted(
        str(p.relative_to(out)) for p in [*out.glob("videos/*.tmp"), *out.glob(".tmp/*")]
    )
    # 2. the index part
    before = markers(out)
    parts = sorted((out / "index").glob("part-*.parquet"))
    parts[0].write_bytes(b"PAR1 garbage")
    status = cli("status", str(out))
    second = rerun(command)
    said = status.stdout + status.stderr + second.stdout + second.stderr
    result["index_status_rc"] = status.returncode
    result["index_rerun_rc"] = second.returncode
    result["index_traceback"] = "Traceback" in said
    result["index_quarantined"] = (out / "index" / "quarantine" / parts[0].name).exists()
    result["index_regenerated"] = len(changed(before, out))
    # 3. a symlinked videos/
    outside = folder / "elsewhere"
    shutil.move(out / "videos", outside)
    os.symlink(outside, out / "videos")
    shutil.copy(outside / f"{ids[0]}.mp4", folder / "keep.mp4")
    (outside / f"{ids[0]}.mp4").unlink()  # a done item to make again: a write would land outside
    listed = sorted(p.name for p in outside.iterdir())
    third = rerun(command)
    result["symlink_rc"] = third.returncode
    result["symlink_said"] = " ".join((third.stderr or third.stdout).split())[:200]
    result["symlink_outside_untouched"] = sorted(p.name for p in outside.iterdir()) == listed
    os.unlink(out / "videos")
    shutil.move(outside, out / "videos")
    shutil.move(folder / "keep.mp4", out / "videos" / f"{ids[0]}.mp4")
    return {**result, **{f"final_{k}": v for k, v in verdict(out, set(ids)).items()}}


def in_a_folder(items: int, rng: random.Random) -> dict:
    with tempfile.TemporaryDirectory(prefix="pbcs-") as tmp:
        return one_round(Path(tmp), items, rng)


def passed(r: dict) -> bool:
    return (
        r.get("verify_rc") == 1 and r["verify_named"] == 3 and r["marker_restored"]
        and r["rerun_rc"] == 0 and r["regenerated"] == r["expected_regenerated"]
        and not r["temp_left"] and r["index_status_rc"] == 0 and r["index_rerun_rc"] == 0
        and not r["index_traceback"] and r["index_quarantined"] and not r["index_regenerated"]
        and r["symlink_rc"] == 2 and r["symlink_outside_untouched"]
        and not r["final_lost"] and not r["final_duplicated"]
    )  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--items", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    results = list(each_round(args.rounds, lambda: in_a_folder(args.items, rng)))
    ok = all(passed(r) for r in results)
    print(
        figures(
            "corrupted_state",
            ok,
            rounds=len(results),
            items=args.items * len(results),
            damaged_made=3 * len(results),
            damaged_found=sum(r.get("verify_named", 0) for r in results),
            regenerated_beyond_the_damaged=sum(
                len(set(r.get("regenerated", [])) - set(r.get("expected_regenerated", [])))
                for r in results
            ),
            temp_left=sum(len(r.get("temp_left", [])) for r in results),
            symlink_refused=sum(r.get("symlink_rc") == 2 for r in results),
            lost=sum(r.get("final_lost", 0) for r in results),
        )
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
