"""Issue 13's held-out corpus, run from outside: each case it found is a clear error with exit 2
(or the documented code), never a traceback, a secret or a memory blow-up."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from pusa_batch.cli.main import main
from pusa_batch.errors import RowProblem
from pusa_batch.manifest.read import validate_manifest

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "pipelines" / "tiny.toml")
IMAGE = str(ROOT / "manifests" / "media" / "red_ball.png")
SECRET = "SECRETVALUE42"


@pytest.fixture(autouse=True)
def no_cached_s3_clients():
    """The s3:// cases here make s3fs clients without an endpoint; fsspec caches them by their
    arguments, and a later test's `s3://` (its endpoint from the environment) must not get one."""
    yield
    from s3fs import S3FileSystem

    S3FileSystem.clear_instance_cache()


def validate(capsys, *args: str) -> tuple[int, str]:
    code = main(["validate", *args, "-p", TINY])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_a_lone_surrogate_in_a_jsonl_value_is_a_row_error(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"id": "s", "task": "t2v", "prompt": "a\\ud800b"}\n')
    [problem] = validate_manifest(str(path)).problems
    assert (problem.row, problem.column) == (1, "prompt")
    assert "lone UTF-16 surrogate" in problem.message


def test_a_surrogate_pair_is_one_character_and_passes(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"id": "s", "task": "t2v", "prompt": "a \\ud83d\\ude00 b"}\n')
    assert validate_manifest(str(path)).ok


def test_a_lone_surrogate_in_a_key_names_the_line(tmp_path, capsys):
    path = tmp_path / "m.jsonl"
    path.write_text('{"id": "s", "task": "t2v", "prompt": "a", "\\udc00": 1}\n')
    code, text = validate(capsys, str(path))
    assert code == 2 and "line 1: a key holds a lone UTF-16 surrogate" in text


@pytest.mark.parametrize("suffix", [".csv.gz", ".jsonl.gz"])
def test_a_truncated_gzip_manifest_is_exit_2_naming_the_file(tmp_path, capsys, suffix):
    rows = (
        "id,task,prompt\n" + "".join(f"r{i},t2v,prompt {i}\n" for i in range(50))
        if suffix == ".csv.gz"
        else "".join(
            json.dumps({"id": f"r{i}", "task": "t2v", "prompt": "p"}) + "\n" for i in range(50)
        )
    )
    path = tmp_path / f"m{suffix}"
    path.write_bytes(gzip.compress(rows.encode())[:60])
    code, text = validate(capsys, str(path))
    assert code == 2
    assert f"{path}: the compressed file ends early" in text


def _capped_memory_validate(manifest: Path, limit_bytes: int) -> subprocess.CompletedProcess:
    code = (
        "import resource, sys\n"
        f"resource.setrlimit(resource.RLIMIT_AS, ({limit_bytes}, {limit_bytes}))\n"
        "from pusa_batch.cli.main import main\n"
        f"sys.exit(main(['validate', {str(manifest)!r}, '-p', {TINY!r}]))\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT
    )


def test_a_huge_frame_range_is_refused_without_expanding_it(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text(f"id,task,prompt,image,cond_frames\nh,i2v,a,{IMAGE},0..1000000000000\n")
    done = _capped_memory_validate(path, 4 * 2**30)  # expanding it would need terabytes
    assert done.returncode == 2, done.stderr[-2000:]
    assert (
        "lists 1,000,000,000,001 frames; a cell lists at most 100,000" in done.stdout + done.stderr
    )


def test_a_frame_list_of_200001_entries_gives_a_short_message(tmp_path, capsys):
    path = tmp_path / "m.jsonl"
    frames = list(range(200_001))
    path.write_text(
        json.dumps({"id": "h", "task": "i2v", "prompt": "a", "image": IMAGE, "cond_frames": frames})
        + "\n"
    )
    code, text = validate(capsys, str(path))
    assert code == 2 and "lists 200,001 frames" in text
    assert len(text) < 2000


def test_a_row_problem_message_is_cut_to_a_readable_length():
    problem = RowProblem(1, "a", "prompt", "x" * 100_000)
    assert len(str(problem)) < 700 and "100,000 characters in all" in str(problem)


def test_a_manifest_url_with_credentials_never_prints_them(capsys):
    code, text = validate(capsys, f"s3://AKIAEXAMPLE:{SECRET}@bkt/m.csv")
    assert code == 2 and "Traceback" not in text
    assert SECRET not in text and "AKIAEXAMPLE" not in text
    assert "cannot open the manifest" in text


def test_an_input_url_with_credentials_is_masked_in_the_libraries_text_too(tmp_path, capsys):
    path = tmp_path / "m.csv"
    path.write_text(f"id,task,prompt,image\nb,i2v,x,s3://AKIAEXAMPLE:{SECRET}@bkt/a.png\n")
    code, text = validate(capsys, str(path))
    assert code == 2 and SECRET not in text and "AKIAEXAMPLE" not in text


def test_a_storage_option_without_equals_is_not_echoed(tmp_path, capsys):
    code = main(["run", "m.csv", "-p", TINY, "-o", str(tmp_path / "o"), "--storage-option", SECRET])
    text = capsys.readouterr().err
    assert code == 2 and SECRET not in text and "no '='" in text


def test_a_storage_option_that_is_broken_json_is_exit_2_naming_the_key(tmp_path, capsys):
    broken = 'client_kwargs={"endpoint_url": X'
    code = main(["run", "m.csv", "-p", TINY, "-o", str(tmp_path / "o"), "--storage-option", broken])
    text = capsys.readouterr().err
    assert code == 2 and "client_kwargs's value starts like JSON but does not parse" in text


def test_a_negative_gpus_per_worker_is_exit_2(tmp_path, capsys):
    manifest = tmp_path / "m.csv"
    manifest.write_text("id,task,prompt\na,t2v,x\n")
    args = ["run", str(manifest), "-p", TINY, "-o", str(tmp_path / "o"), "--dry-run"]
    assert main([*args, "--gpus-per-worker", "-1"]) == 2
    assert "gpus_per_worker must be 0 or more" in capsys.readouterr().err


def test_an_unexpected_error_is_one_redacted_line_without_a_traceback(monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError(f"boom near s3://AKIAEXAMPLE:{SECRET}@bkt/x and {SECRET}")

    monkeypatch.setattr("pusa_batch.manifest.read.validate_manifest", broken)
    code, text = validate(capsys, f"s3://AKIAEXAMPLE:{SECRET}@bkt/m.csv")
    assert code == 1
    assert "Error: unexpected RuntimeError: boom" in text and "PUSA_BATCH_TRACEBACK=1" in text
    assert SECRET not in text and "Traceback" not in text


def test_with_json_logs_an_error_is_a_json_event_too(tmp_path, capsys):
    args = ["run", str(tmp_path / "missing.csv"), "-p", TINY, "-o", str(tmp_path / "o")]
    assert main([*args, "--log-format", "json"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    record = json.loads(last)
    assert record["event"] == "error" and record["exit_code"] == 2
    assert record["error_type"] == "ManifestError" and "manifest not found" in record["message"]


def test_an_endpoint_is_shown_in_errors_while_keys_and_its_password_are_not():
    from pusa_batch.redaction import redact_text, secrets_of

    options = {
        "key": "AKIAEXAMPLE",
        "secret": SECRET,
        "client_kwargs": {"endpoint_url": "http://user:PASSWORD99@10.0.0.5:9000"},
    }
    text = redact_text(
        'Could not connect to "http://10.0.0.5:9000/b" as AKIAEXAMPLE with PASSWORD99',
        secrets_of("s3://b/x", options),
    )
    assert "http://10.0.0.5:9000/b" in text
    assert "AKIAEXAMPLE" not in text and "PASSWORD99" not in text
