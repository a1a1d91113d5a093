"""The command line as a user meets it: help, exit codes, messages, and the demo job end to end."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import av
import pandas as pd
import pytest

from pusa_batch.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "manifests" / "demo.csv"
TINY = ROOT / "pipelines" / "tiny.toml"
PUBLIC_COMMANDS = [
    "run",
    "validate",
    "status",
    "submit",
    "doctor",
    "make-tiny-model",
    "manifest",
    "export",
    "gallery",
    "verify",
    "cache",
]


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "pusa_batch", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
    )


def test_help_lists_every_public_command(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    for command in PUBLIC_COMMANDS:
        assert command in text


def test_run_help_documents_the_contract_flags(capsys):
    assert main(["run", "--help"]) == 0
    text = capsys.readouterr().out
    for flag in ["--output", "-o", "--pipeline", "--workers", "--address", "--retry-failed"]:
        assert flag in text


def test_validate_accepts_the_demo_manifest(capsys):
    assert main(["validate", str(DEMO), "--pipeline", str(TINY)]) == 0
    assert "6 row(s) OK" in capsys.readouterr().out


def test_validate_lists_every_bad_row_and_exits_2(tmp_path, capsys):
    manifest = tmp_path / "bad.csv"
    manifest.write_text(
        "id,task,prompt,seed,width\n"
        "ok,t2v,a cat,1,\n"
        "two,dance,a dog,2,\n"
        "three,t2v,a bird,abc,\n"
        "ok,t2v,again,4,\n"
        "five,t2v,odd size,5,70\n"
    )
    assert main(["validate", str(manifest), "--pipeline", str(TINY)]) == 2
    text = capsys.readouterr().err
    for row, column in [(2, "task"), (3, "seed"), (4, "id"), (5, "width")]:
        assert f"row {row}" in text and f"'{column}'" in text


def test_validate_json_report_parses(tmp_path, capsys):
    manifest = tmp_path / "bad.csv"
    manifest.write_text("id,task,prompt\nx,t2v,\n")
    assert main(["validate", str(manifest), "--json"]) == 2
    report = json.loads(capsys.readouterr().out)
    assert report["problem_count"] >= 1


def test_run_refuses_a_bad_manifest_before_loading_a_model(tmp_path, capsys):
    manifest = tmp_path / "bad.csv"
    manifest.write_text("id,task,prompt\nx,i2v,needs an image\n")
    code = main(["run", str(manifest), "-o", str(tmp_path / "out"), "--pipeline", str(TINY)])
    assert code == 2
    assert "row 1" in capsys.readouterr().err
    assert not (tmp_path / "out" / "videos").exists()


def test_bad_storage_option_is_a_usage_error(tmp_path, capsys):
    code = main(
        ["run", str(DEMO), "-o", str(tmp_path), "--pipeline", str(TINY), "--storage-option", "x"]
    )
    assert code == 2
    assert "KEY=VALUE" in capsys.readouterr().err


def test_invalid_run_settings_are_a_usage_error_naming_the_setting(tmp_path, capsys):
    code = main(["run", str(DEMO), "-o", str(tmp_path), "--pipeline", str(TINY), "--workers", "0"])
    assert code == 2
    assert "workers must be at least 1" in capsys.readouterr().err


def decode(path: Path) -> tuple[int, int, int, float]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        return (
            frames,
            stream.codec_context.width,
            stream.codec_context.height,
            float(stream.average_rate),
        )


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    first = cli("run", str(DEMO), "-o", str(out), "--pipeline", str(TINY), "--workers", "2")
    return out, first


def test_demo_run_succeeds(demo_run):
    out, first = demo_run
    assert first.returncode == 0, first.stderr[-3000:]
    assert "6 generated" in first.stdout


def test_demo_run_writes_one_decodable_mp4_per_row(demo_run):
    out, _ = demo_run
    rows = pd.read_csv(DEMO)
    for _, row in rows.iterrows():
        frames = 17 if pd.isna(row["num_frames"]) else int(row["num_frames"])
        assert decode(out / "videos" / f"{row['id']}.mp4") == (frames, 64, 64, 8.0)


def test_demo_run_writes_metadata_and_index(demo_run):
    out, _ = demo_run
    ids = set(pd.read_csv(DEMO)["id"])
    assert {p.stem for p in (out / "items").glob("*.json")} == ids
    meta = json.loads((out / "items" / "ball-rolls.json").read_text())
    assert meta["item"]["task"] == "i2v" and meta["conditioning"]["latent_indices"] == [0]
    image = ROOT / "manifests" / "media" / "red_ball.png"
    sha = hashlib.sha256(image.read_bytes()).hexdigest()
    assert [(i["column"], i["sha256"]) for i in meta["inputs"]] == [("images", sha)]
    index = pd.read_parquet(out / "index.parquet")
    assert sorted(index["id"]) == sorted(ids)


def test_demo_rerun_writes_nothing_new_and_says_so(demo_run):
    out, _ = demo_run
    before = {p: p.stat().st_mtime_ns for p in (out / "videos").iterdir()}
    again = cli("run", str(DEMO), "-o", str(out), "--pipeline", str(TINY), "--workers", "2")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Nothing new to generate" in again.stdout
    assert {p: p.stat().st_mtime_ns for p in (out / "videos").iterdir()} == before
