"""`run` and its dry run with the user's own manifest columns: named once, never a reason to
regenerate, and refused by `--strict-columns` before anything starts (issue 13)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pusa_batch.cli.main import main
from pusa_batch.manifest.read import item_fingerprint, iter_items
from pusa_batch.pipelines.spec import load_pipeline_spec
from pusa_batch.store.store import Store

TINY = Path(__file__).resolve().parents[1] / "pipelines" / "tiny.toml"
HEADER = "id,task,prompt,seed,num_frames,height,width,steps,category"


def manifest(folder: Path, name: str, category: str) -> Path:
    rows = [f"r{n},t2v,prompt {n},{n},9,32,32,2,{category}" for n in range(2)]
    path = folder / name
    path.write_text("\n".join([HEADER, *rows]) + "\n")
    return path


@pytest.fixture
def done_root(tmp_path) -> Path:
    """A root where both items of the 'cats' manifest are done, as a worker records them."""
    spec = load_pipeline_spec(str(TINY))
    store = Store(str(tmp_path / "out"))
    for item in iter_items(str(manifest(tmp_path, "cats.csv", "cats")), spec):
        fingerprint = item_fingerprint(item, spec.identity(), temporal_factor=spec.temporal_factor)
        store.commit(item.id, b"video", {"item": item.to_dict(), "fingerprint": fingerprint})
    return tmp_path / "out"


def test_a_relabelled_rerun_generates_nothing_and_names_the_extra_columns_once(
    tmp_path, done_root, capsys
):
    relabelled = manifest(tmp_path, "felines.csv", "felines")
    argv = ["run", str(relabelled), "-o", str(done_root), "-p", str(TINY), "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "0 generated, 2 already done" in printed
    assert printed.count("carried as extra metadata: category") == 1


def test_the_dry_run_names_the_extra_columns(tmp_path, done_root, capsys):
    argv = ["run", str(manifest(tmp_path, "m.csv", "cats")), "-o", str(done_root)]
    assert main([*argv, "-p", str(TINY), "--dry-run"]) == 0
    assert "carried as extra metadata: category" in capsys.readouterr().out


def test_strict_columns_stops_the_run_before_it_creates_the_root(tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["run", str(manifest(tmp_path, "m.csv", "cats")), "-o", str(out), "-p", str(TINY)]
    assert main([*argv, "--strict-columns"]) == 2
    assert "unknown column 'category'" in capsys.readouterr().err
    assert not out.exists()
