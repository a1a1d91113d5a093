"""Issue 13's third outside corpus: inputs the run would overwrite, sweeps too big to write,
lease records with impossible heartbeats, read-only roots, escapes in what a root holds. Each is a
clear message and exit 2 (or a takeover with a notice); nothing the user wrote is lost."""

from __future__ import annotations

import hashlib
import subprocess
import time
import warnings
from pathlib import Path

import pytest

from pusa_batch.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "pipelines" / "tiny.toml")
ROWS = "id,task,prompt,seed,num_frames,height,width,steps\na,t2v,a cat,1,5,32,32,2\n"


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("inside", ["index.parquet", "run.json", "videos/m.csv", "items/m.csv"])
def test_a_manifest_where_the_run_writes_is_refused_and_left_as_it_was(tmp_path, capsys, inside):
    out = tmp_path / "out"
    manifest = out / inside
    manifest.parent.mkdir(parents=True)
    manifest.write_text(ROWS)
    before = digest(manifest)
    assert main(["run", str(manifest), "-o", str(out), "-p", TINY, "--workers", "1"]) == 2
    message = capsys.readouterr().err
    assert "would be lost" in message and str(manifest) in message
    assert digest(manifest) == before


def sweep(tmp_path: Path, *args: str) -> int:
    base = tmp_path / "base.csv"
    if not base.exists():
        base.write_text(ROWS)
    return main(["manifest", "sweep", str(base), *args])


def test_a_sweep_over_a_huge_range_is_refused_at_once(tmp_path, capsys):
    started = time.monotonic()
    assert sweep(tmp_path, "--grid", "seed=0..99999999", "-o", str(tmp_path / "s.csv")) == 2
    assert "at most 100,000" in capsys.readouterr().err
    assert time.monotonic() - started < 30 and not (tmp_path / "s.csv").exists()


def test_a_sweep_whose_grid_makes_too_many_rows_is_refused_naming_the_sizes(tmp_path, capsys):
    grid = ["--grid", "seed=0..99999", "--grid", "steps=1..20"]
    assert sweep(tmp_path, *grid, "-o", str(tmp_path / "s.csv")) == 2
    assert "2,000,000 rows" in capsys.readouterr().err


def test_a_sweep_onto_its_own_base_manifest_is_refused_and_the_base_kept(tmp_path, capsys):
    base = tmp_path / "base.csv"
    base.write_text(ROWS)
    assert sweep(tmp_path, "--grid", "seed=0..2", "-o", str(base)) == 2
    assert "the base manifest itself" in capsys.readouterr().err
    assert base.read_text() == ROWS


@pytest.fixture
def read_only_root(tmp_path):
    """A root with two committed items, seen through a read-only bind mount (needs root: skips
    where mounting is not allowed)."""
    from pusa_batch.store.store import Store

    source, mounted = tmp_path / "src", tmp_path / "ro"
    store = Store(str(source))
    for item_id in ("a", "b"):
        store.commit(item_id, f"video {item_id}".encode(), {"fingerprint": "f"})
    store.compact_index()
    mounted.mkdir()
    steps = [["mount", "--bind", str(source), str(mounted)],
             ["mount", "-o", "remount,bind,ro", str(mounted)]]  # fmt: skip
    for step in steps:
        if subprocess.run(step, capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", str(mounted)], capture_output=True, check=False)
            pytest.skip("a read-only bind mount needs root (mount --bind); not allowed here")
    try:
        yield mounted
    finally:
        subprocess.run(["umount", str(mounted)], capture_output=True, check=False)


@pytest.mark.parametrize(
    "command",
    [
        ["verify", "{root}", "--repair"],
        ["gallery", "{root}"],
        ["export", "{root}", "--format", "hf"],
        ["run", "{manifest}", "-o", "{root}", "-p", TINY, "--workers", "1"],
    ],  # fmt: skip
    ids=["verify", "gallery", "export", "run"],
)
def test_a_read_only_root_is_named_as_such_with_exit_2(read_only_root, tmp_path, capsys, command):
    manifest = tmp_path / "m.csv"
    manifest.write_text(ROWS)
    argv = [a.format(root=read_only_root, manifest=manifest) for a in command]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "read-only" in err.lower() and "unexpected" not in err
    assert "temporary file" not in err  # no warning about a temporary that was never made


def test_status_escapes_terminal_controls_that_a_root_holds(tmp_path, capsys):
    import json

    from pusa_batch.store.store import Store

    store = Store(str(tmp_path / "out"))
    store.commit("a", b"video", {"fingerprint": "f"})
    store.record_failure("b", {"error_type": "E", "message": "msg \x1b]0;PWN\x07\x1b[2J \u202e"})
    run = {"state": "running", "host": "h\x1b[2J", "updated_at": time.time(), "workers": {}}
    store.root.write_bytes("run.json", json.dumps(run).encode())
    assert main(["status", str(tmp_path / "out")]) == 0
    shown = capsys.readouterr().out
    assert "\x1b" not in shown and "\x07" not in shown and "\u202e" not in shown
    assert "\\x1b[2J" in shown


def test_a_chained_url_whose_outer_layer_is_broken_is_exit_2_naming_the_manifest(tmp_path, capsys):
    base = tmp_path / "base.csv"
    base.write_text(ROWS)
    url = f"zip://m.csv::{base}"
    assert main(["validate", url, "-p", TINY]) == 2
    err = capsys.readouterr().err
    assert "cannot open the manifest" in err and "BadZipFile" in err and "unexpected" not in err


def test_a_row_problem_is_at_most_600_characters_however_long_its_id_and_cell():
    from pusa_batch.errors import MAX_MESSAGE, RowProblem

    problem = RowProblem(3, "x" * 300, "c" * 300, "id " + "x" * 300 + " is too long" * 1000)
    assert len(str(problem)) <= MAX_MESSAGE == 600
    assert str(problem).startswith("row 3 (id xxx") and "characters in all" in str(problem)


def validate(tmp_path: Path, name: str, text: str, capsys) -> tuple[int, str]:
    path = tmp_path / name
    path.write_text(text)
    code = main(["validate", str(path), "-p", TINY])
    return code, capsys.readouterr().err


def test_a_frame_count_below_one_is_told_to_be_at_least_one(tmp_path, capsys):
    code, err = validate(tmp_path, "m.csv", "id,task,prompt,num_frames\na,t2v,x,-3\n", capsys)
    assert code == 2 and "num_frames -3 must be at least 1" in err and "is not" not in err


def test_a_number_too_long_for_python_to_read_names_its_line_not_a_python_setting(tmp_path, capsys):
    line = '{"id": "a", "task": "t2v", "prompt": "x", "seed": ' + "9" * 5000 + "}\n"
    code, err = validate(tmp_path, "m.jsonl", line, capsys)
    assert code == 2 and "line 1: a number has more than 4,300 digits" in err
    assert "set_int_max_str_digits" not in err


def test_a_prompt_of_the_wrong_type_is_one_problem_not_also_an_empty_one(tmp_path, capsys):
    code, err = validate(tmp_path, "m.jsonl", '{"id":"a","task":"t2v","prompt":["x"]}\n', capsys)
    assert code == 2 and "expected text" in err and "is empty" not in err


def test_seeds_beyond_64_bits_are_refused_one_by_one_without_false_duplicates(tmp_path, capsys):
    rows = "task,prompt,seed\nt2v,x,18446744073709551616\nt2v,x,18446744073709551615\n"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no numpy cast warning on the way
        code, err = validate(tmp_path, "m.csv", rows, capsys)
    assert code == 2 and err.count("is outside 0..4294967295") == 2 and "duplicate" not in err


def test_a_local_manifest_with_a_question_mark_in_its_name_is_read(tmp_path, capsys):
    code, err = validate(tmp_path, "q?1.csv", ROWS, capsys)
    assert code == 0, err


def test_a_folder_given_as_the_manifest_is_not_a_regular_file_whatever_its_name(tmp_path, capsys):
    (tmp_path / "rows.csv").mkdir()
    assert main(["validate", str(tmp_path / "rows.csv"), "-p", TINY]) == 2
    assert "not a regular file" in capsys.readouterr().err


@pytest.mark.parametrize("fmt,inside", [("vbench", "videos"), ("webdataset", "items")])
def test_an_export_into_the_roots_own_layout_is_refused(tmp_path, capsys, fmt, inside):
    from pusa_batch.store.store import Store

    store = Store(str(tmp_path / "out"))
    store.commit("a", b"video a", {"fingerprint": "f", "prompt": "a cat"})
    dest = tmp_path / "out" / inside
    before = sorted(p.name for p in dest.iterdir())
    assert main(["export", str(tmp_path / "out"), "--format", fmt, "--dest", str(dest)]) == 2
    assert "inside the output root's own" in capsys.readouterr().err
    assert sorted(p.name for p in dest.iterdir()) == before


def test_a_weights_root_that_is_a_file_is_named_as_a_file(tmp_path, capsys):
    weights = tmp_path / "model.bin"
    weights.write_bytes(b"x")
    toml = tmp_path / "p.toml"
    toml.write_text(f'family = "wan2.1"\n[weights]\nroot = "{weights}"\n')
    assert main(["doctor", "-p", str(toml)]) == 2
    assert "is a file: give the model's folder" in capsys.readouterr().err


def test_a_weight_cache_that_is_a_file_is_exit_2_not_empty(tmp_path, capsys):
    blocker = tmp_path / "cache"
    blocker.write_text("x")
    assert main(["cache", "list", "--cache", str(blocker)]) == 2
    assert "is a file" in capsys.readouterr().err


def test_an_image_given_as_a_video_is_named_an_image(tmp_path, capsys):
    from PIL import Image

    Image.new("RGB", (32, 32)).save(tmp_path / "still.png")
    rows = f"id,task,prompt,video\na,extend,x,{tmp_path / 'still.png'}\n"
    code, err = validate(tmp_path, "m.csv", rows, capsys)
    assert code == 2 and "this is an image (png), not a video" in err


def test_a_limit_raised_beyond_its_ceiling_is_refused_naming_it(tmp_path, capsys):
    toml = tmp_path / "p.toml"
    toml.write_text(
        f'family = "wan2.1"\n[weights]\ntiny = "wan2.1"\n[limits]\nmax_frames = {10**20}\n'
    )
    assert main(["doctor", "-p", str(toml)]) == 2
    assert "limits.max_frames" in capsys.readouterr().err
