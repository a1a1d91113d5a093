"""Issue 13's held-out corpus against output roots: a folder where a file belongs, run records of
the wrong shape, a garbage final index, Ctrl-C twice, a refused pipeline and unusable -o URLs.
Each is a clear message and the documented exit code; nothing done is lost."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pusa_batch.cli.main import main
from pusa_batch.cli.processes import descendants

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "pipelines" / "tiny.toml")
PART = "index/part-000001-t0.parquet"


def manifest(folder: Path, rows: int = 2) -> Path:
    path = folder / "m.csv"
    lines = [f"i{n},t2v,a cat {n},{n},5,32,32,2" for n in range(rows)]
    path.write_text("id,task,prompt,seed,num_frames,height,width,steps\n" + "\n".join(lines))
    return path


@pytest.fixture(scope="module")
def done_root(tmp_path_factory) -> tuple[Path, Path]:
    """(a root with two done items, its manifest), made once; tests copy it."""
    folder = tmp_path_factory.mktemp("done")
    m = manifest(folder)
    out = folder / "out"
    assert main(["run", str(m), "-o", str(out), "-p", TINY, "--workers", "1", "-q"]) == 0
    assert (out / PART).is_file()
    return out, m


@pytest.fixture
def root(done_root, tmp_path) -> tuple[Path, Path]:
    out, m = done_root
    copy = tmp_path / "out"
    shutil.copytree(out, copy, symlinks=True)
    return copy, Path(shutil.copy(m, tmp_path / "m.csv"))


def text_of(capsys) -> str:
    captured = capsys.readouterr()
    return captured.out + captured.err


def test_an_index_part_that_is_a_folder_is_quarantined_and_nothing_is_made_again(root, capsys):
    out, m = root
    (out / PART).unlink()
    (out / PART).mkdir()
    assert main(["status", str(out)]) == 0
    assert "unreadable index part" in text_of(capsys)
    assert main(["run", str(m), "-o", str(out), "-p", TINY, "--workers", "1", "-q"]) == 0
    assert "0 generated, 2 already done" in text_of(capsys)
    assert (out / "index" / "quarantine" / Path(PART).name).is_dir()
    assert pq.read_table(out / "index.parquet").num_rows == 2


@pytest.mark.parametrize("name", ["run.json", "lease.json", "index.parquet"])
def test_a_folder_where_the_root_keeps_a_file_is_exit_2_naming_it(root, capsys, name):
    out, _ = root
    (out / name).unlink(missing_ok=True)
    (out / name).mkdir()
    assert main(["status", str(out)]) == 2
    assert f"{out / name} is a folder where pusa-batch keeps a file; move it away" in text_of(
        capsys
    )


@pytest.mark.parametrize("record", ["[]", '{"updated_at": "x"}', '{"workers": [1]}', "garbage{"])
def test_a_run_record_of_another_shape_is_a_note_in_status(root, capsys, record):
    out, m = root
    (out / "run.json").write_text(record)
    assert main(["status", str(out), "--manifest", str(m)]) == 0
    text = text_of(capsys)
    assert "run.json is unreadable (not a run record)" in text and "Traceback" not in text


@pytest.mark.parametrize("record", ["[1, 2]", "garbage{"])
def test_a_failure_record_of_another_shape_still_counts_a_failed_item(root, capsys, record):
    out, m = root
    (out / "failures").mkdir(exist_ok=True)
    (out / "failures" / "i9.json").write_text(record)
    m.write_text(m.read_text() + "\ni9,t2v,a dog,9,5,32,32,2")
    assert main(["status", str(out), "--manifest", str(m)]) == 0
    assert "i9" in text_of(capsys)
    assert main(["gallery", str(out)]) == 0
    assert "1 failed item(s)" in text_of(capsys)


def test_a_garbage_final_index_is_written_again_by_a_rerun(root, capsys):
    out, m = root
    (out / "index.parquet").write_text("garbage\n")
    assert main(["run", str(m), "-o", str(out), "-p", TINY, "--workers", "1", "-q"]) == 0
    assert pq.read_table(out / "index.parquet").num_rows == 2


def test_verify_finds_a_garbage_final_index_and_repair_writes_it(root, capsys):
    out, _ = root
    (out / "index.parquet").write_text("garbage\n")
    assert main(["verify", str(out)]) == 1
    assert "index.parquet is unreadable" in text_of(capsys)
    assert main(["verify", str(out), "--repair"]) == 0
    assert pq.read_table(out / "index.parquet").num_rows == 2
    assert main(["verify", str(out)]) == 0


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_ctrl_c_twice_exits_130_at_once_and_leaves_no_process(tmp_path):
    m = tmp_path / "m.csv"
    rows = [f"i{n},t2v,a cat {n},{n},5,32,32,{2 if n == 0 else 400}" for n in range(8)]
    m.write_text("id,task,prompt,seed,num_frames,height,width,steps\n" + "\n".join(rows))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "pusa_batch", "run", str(m), "-o", str(out), "-p", TINY]
    driver = subprocess.Popen(
        [*command, "--workers", "1", "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 240
    while not list((out / "items").glob("*.json")):
        assert driver.poll() is None and time.monotonic() < deadline, "no commit"
        time.sleep(0.1)
    started = descendants(driver.pid)
    assert started  # the embedded Ray's processes and the worker
    driver.send_signal(signal.SIGINT)
    time.sleep(0.2)
    driver.send_signal(signal.SIGINT)
    _, stderr = driver.communicate(timeout=120)
    assert driver.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr
    time.sleep(5)
    alive = [p for p in started if Path(f"/proc/{p}").exists() and not _zombie(p)]
    assert alive == [], [Path(f"/proc/{p}/cmdline").read_bytes()[:80] for p in alive]
    resumed = subprocess.run(
        [*command, "--workers", "1", "-q"], capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]


def test_a_pipeline_refused_at_the_start_leaves_no_new_root(tmp_path, capsys):
    model = tmp_path / "model"
    assert main(["make-tiny-model", str(model), "--kind", "wan2.1"]) == 0
    weights = next((model / "transformer").glob("*.safetensors"))
    os.truncate(weights, 5000)
    toml = tmp_path / "p.toml"
    toml.write_text(f'name = "cut"\nfamily = "wan2.1"\n[weights]\nroot = "{model}"\n')
    out = tmp_path / "new-root"
    capsys.readouterr()
    assert main(["run", str(manifest(tmp_path)), "-o", str(out), "-p", str(toml), "-q"]) == 2
    assert "the pipeline failed its checks" in text_of(capsys)
    assert not out.exists()


def test_an_https_output_root_is_exit_2_saying_it_is_read_only(tmp_path, capsys):
    url = "https://user:SECRETPASS@127.0.0.1:9/out"
    assert main(["run", str(manifest(tmp_path)), "-o", url, "-p", TINY, "-q"]) == 2
    text = text_of(capsys)
    assert "https:// and http:// are read-only" in text and "SECRETPASS" not in text


def test_a_file_url_with_a_query_string_is_refused_and_creates_nothing(tmp_path, capsys):
    url = f"{(tmp_path / 'q').as_uri()}?token=SECRETTOKEN"
    assert main(["run", str(manifest(tmp_path)), "-o", url, "-p", TINY, "-q"]) == 2
    text = text_of(capsys)
    assert "a file:// URL takes no query string" in text and "SECRETTOKEN" not in text
    assert not any(p.name.startswith("q") for p in tmp_path.iterdir())


def test_a_marker_swapped_for_another_items_of_the_same_size_is_found_by_checksums(
    root, capsys
):
    out, _ = root
    own, other = out / "items" / "i0.json", out / "items" / "i1.json"
    size = own.stat().st_size
    swapped = json.dumps(json.loads(other.read_text()), separators=(",", ":"))
    assert len(swapped) <= size
    own.write_text(swapped + " " * (size - len(swapped)))  # as many bytes: sizes cannot tell
    assert main(["verify", str(out)]) == 0  # listings only
    capsys.readouterr()
    assert main(["verify", str(out), "--checksums"]) == 1
    assert "i0: marker is not the one the index recorded" in text_of(capsys)
    assert main(["verify", str(out), "--checksums", "--repair"]) == 0
    assert json.loads(own.read_text())["id"] == "i0"
