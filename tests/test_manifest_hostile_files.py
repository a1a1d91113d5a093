"""Hostile manifests and pipeline files (issue 13): escaped ids, special files, unreadable shapes
and missing credentials are each a clear error, never a hang or a traceback."""

from __future__ import annotations

import json
import os

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pusa_batch.errors import ManifestError, PipelineError
from pusa_batch.manifest.read import validate_manifest
from pusa_batch.manifest.write import write_manifest
from pusa_batch.pipelines.spec import load_pipeline_spec


@pytest.mark.parametrize(
    ("char", "escaped"),
    [("\x1b", "\\x1b"), ("\x00", "\\x00"), ("\n", "\\n"), ("\u202e", "\\u202e")],
)
def test_a_bad_id_is_printed_escaped_in_the_row_prefix_too(tmp_path, char, escaped):
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"id": f"a{char}[2Jb", "task": "t2v", "prompt": "a"}) + "\n")
    [problem] = validate_manifest(str(path)).problems
    assert str(problem).isprintable()
    assert str(problem).startswith(f"row 1 (id a{escaped}[2Jb), column 'id'")


def _special(tmp_path, kind: str) -> str:
    path = tmp_path / f"{kind}.csv"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        path.symlink_to("/dev/null")  # a device (/dev/zero too, which never ends)
    else:
        path.mkdir()
    return str(path)


@pytest.mark.parametrize("kind", ["fifo", "device", "folder"])
def test_a_manifest_that_is_not_a_regular_file_is_refused_at_once(tmp_path, kind):
    with pytest.raises(ManifestError, match="not a regular file"):
        validate_manifest(_special(tmp_path, kind))


@pytest.mark.parametrize("kind", ["fifo", "device", "folder"])
def test_a_pipeline_that_is_not_a_regular_file_is_refused_at_once(tmp_path, kind):
    with pytest.raises(PipelineError, match="not a regular file"):
        load_pipeline_spec(_special(tmp_path, kind))


def test_a_deeply_nested_jsonl_value_is_a_clear_error(tmp_path):
    path = tmp_path / "m.jsonl"
    deep = "[" * 100_000 + "]" * 100_000
    path.write_text(f'{{"task": "t2v", "prompt": "a", "meta": {deep}}}\n')
    with pytest.raises(ManifestError, match="line 1: a value is nested too deeply"):
        validate_manifest(str(path))


def test_a_parquet_with_two_prompt_columns_names_the_repeat(tmp_path):
    path = tmp_path / "m.parquet"
    table = pa.table([["t2v"], ["a cat"], [3]], names=["task", "prompt", "prompt"])
    pq.write_table(table, path)
    [problem] = validate_manifest(str(path)).problems
    assert (problem.row, problem.message) == (
        0,
        "the column 'prompt' appears more than once; keep one.",
    )


def test_an_s3_input_without_credentials_is_a_row_error(tmp_path, monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    path = tmp_path / "m.csv"
    path.write_text("id,task,prompt,image\nx1,i2v,a,s3://no-bucket/x.png\n")
    options = {"client_kwargs": {"endpoint_url": "http://127.0.0.1:9"}}
    [problem] = validate_manifest(str(path), storage_options=options).problems
    assert (problem.row, problem.column) == (1, "image")
    assert "s3://no-bucket/x.png" in problem.message and "no credentials" in problem.message


def test_a_bad_row_being_written_is_printed_escaped(tmp_path):
    rows = [{"id": "a\x1b[2J", "task": "t2v", "prompt": "x", "seed": "1\x1b"}]
    with pytest.raises(ManifestError) as caught:
        write_manifest(rows, str(tmp_path / "m.csv"))
    assert "\x1b" not in str(caught.value)
    assert "row 1 (id a\\x1b[2J), column 'seed'" in str(caught.value)


def test_s3_inputs_that_are_empty_or_missing_are_named(s3, image, tmp_path):
    options = s3.storage_options
    prefix = f"s3://pusa-test/hostile-{os.getpid()}"
    with fsspec.open(f"{prefix}/ok.png", "wb", **options) as f, open(image, "rb") as source:
        f.write(source.read())
    with fsspec.open(f"{prefix}/empty.png", "wb", **options):
        pass
    path = tmp_path / "m.csv"
    rows = "".join(f"{n},i2v,x,{prefix}/{n}.png\n" for n in ("ok", "empty", "gone"))
    path.write_text("id,task,prompt,image\n" + rows)
    found = validate_manifest(str(path), storage_options=options).problems
    assert [(p.id, p.message) for p in found] == [
        ("empty", f"{prefix}/empty.png is an empty file (0 bytes); give a whole image or video."),
        ("gone", f"input file not found: {prefix}/gone.png"),
    ]
