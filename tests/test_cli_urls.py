"""Manifest and pipeline arguments are strings, not paths: `s3://` survives to the reader (a path
type would fold it to `s3:/`), and whatever is printed about them passes the redactor."""

from __future__ import annotations

import fsspec
from s3server import ACCESS_KEY, REGION, SECRET_KEY

from pusa_batch.cli.main import main

BUCKET = "pusa-test"  # made by the session's s3 fixture
SECRET = "SECRETINQUERY7"


def s3_env(monkeypatch, s3) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint)


def test_validate_reads_a_manifest_from_an_s3_url(s3, monkeypatch, capsys):
    s3_env(monkeypatch, s3)
    fs = fsspec.filesystem("s3", **s3.storage_options)
    fs.pipe_file(f"{BUCKET}/m/manifest.csv", b"id,task,prompt\na,t2v,a red fox\n")
    assert main(["validate", f"s3://{BUCKET}/m/manifest.csv", "--no-check-files"]) == 0
    assert f"s3://{BUCKET}/m/manifest.csv: 1 row(s) OK" in capsys.readouterr().out


def test_a_missing_manifest_url_is_named_with_its_query_redacted(s3, monkeypatch, capsys):
    s3_env(monkeypatch, s3)
    code = main(["validate", f"s3://{BUCKET}/nothing.csv?token={SECRET}"])
    text = capsys.readouterr().err
    assert code == 2 and f"s3://{BUCKET}/nothing.csv?token=***" in text
    assert SECRET not in text


def test_a_pipeline_url_is_refused_as_not_local_without_its_secrets(tmp_path, capsys):
    manifest = tmp_path / "m.csv"
    manifest.write_text("id,task,prompt\na,t2v,a red fox\n")
    url = f"s3://KEYID:{SECRET}@bucket/p.toml?sig={SECRET}"
    code = main(["validate", str(manifest), "-p", url])
    text = capsys.readouterr().err
    assert code == 2 and "must be a local file" in text and SECRET not in text


def test_a_row_naming_an_input_url_with_a_secret_is_printed_redacted(tmp_path, capsys):
    manifest = tmp_path / "m.csv"
    image = f"http://user:{SECRET}@127.0.0.1:9/missing.png?token={SECRET}"
    manifest.write_text(f"id,task,prompt,image,cond_frames\na,i2v,a fox,{image},0\n")
    code = main(["validate", str(manifest)])
    text = capsys.readouterr().err
    assert code == 2 and "missing.png" in text and SECRET not in text
