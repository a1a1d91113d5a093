"""A rerun finds done items whose files were damaged and makes them again; `verify` reports them.

Real CLI subprocesses on the tiny pipeline with an embedded local Ray.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from test_builders_run import cli

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "pipelines" / "tiny.toml"
ROWS = ["a,t2v,a red cat,1", "b,t2v,a blue dog,2", "c,t2v,the sea,3"]


def run(manifest: Path, out: Path) -> subprocess.CompletedProcess:
    return cli("run", manifest, "-o", out, "--pipeline", TINY, "--workers", "1", "--no-progress")


@pytest.fixture(scope="module")
def done_root(tmp_path_factory):
    folder = tmp_path_factory.mktemp("damaged")
    manifest = folder / "m.csv"
    manifest.write_text("id,task,prompt,seed,num_frames,height,width,steps\n")
    with manifest.open("a") as f:
        f.writelines(f"{row},5,32,32,2\n" for row in ROWS)
    out = folder / "out"
    first = run(manifest, out)
    assert first.returncode == 0, first.stderr[-3000:]
    return manifest, out


def test_a_rerun_with_nothing_to_do_rewrites_no_file(done_root):
    manifest, out = done_root
    files = {
        p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != "run.json"
    }
    again = run(manifest, out)
    assert again.returncode == 0 and "Nothing new to generate" in again.stdout
    after = {
        p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != "run.json"
    }
    assert after == files


def test_a_rerun_remakes_a_deleted_video_and_a_truncated_marker(done_root):
    manifest, out = done_root
    (out / "videos" / "a.mp4").unlink()
    marker = out / "items" / "b.json"
    marker.write_bytes(marker.read_bytes()[:40])
    before = json.loads((out / "items" / "c.json").read_text())["committed_at"]

    found = cli("verify", out)
    assert found.returncode == 1
    assert "a: video missing" in found.stderr and "b: marker is 40 bytes" in found.stderr

    again = run(manifest, out)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "2 generated, 1 already done" in again.stdout
    assert "have missing or truncated files and are generated again" in again.stderr
    assert (out / "videos" / "a.mp4").stat().st_size > 0
    assert json.loads(marker.read_text())["id"] == "b"
    assert json.loads((out / "items" / "c.json").read_text())["committed_at"] == before

    clean = cli("verify", out)
    assert clean.returncode == 0 and "none damaged" in clean.stdout


def test_verify_repair_restores_a_marker_from_the_index(done_root):
    manifest, out = done_root
    marker = out / "items" / "c.json"
    whole = marker.read_bytes()
    marker.write_bytes(whole[:10])
    repaired = cli("verify", out, "--repair")
    assert repaired.returncode == 0, repaired.stderr
    assert "c: marker is 10 bytes" in repaired.stderr and "marker restored" in repaired.stderr
    assert marker.read_bytes() == whole


def test_verify_repair_is_refused_while_a_run_holds_the_root(done_root):
    from pusa_batch.store.store import Store

    manifest, out = done_root
    marker = out / "items" / "c.json"
    whole = marker.read_bytes()
    marker.write_bytes(whole[:10])
    lease = Store(str(out)).acquire_lease({"command": "run"}, wait=False)
    try:
        refused = cli("verify", out, "--repair")
    finally:
        lease.release()
    assert refused.returncode == 3, refused.stderr
    assert "another run holds" in refused.stderr and "Traceback" not in refused.stderr
    assert marker.read_bytes() == whole[:10]  # nothing mended beside the live run

    mended = cli("verify", out, "--repair")
    assert mended.returncode == 0, mended.stderr
    assert marker.read_bytes() == whole and not (out / "lease.json").exists()
