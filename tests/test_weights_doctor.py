"""`doctor` on a pipeline whose weights are on S3: it checks them from their headers, read with
range requests, and never downloads tensor data."""

from __future__ import annotations

from pathlib import Path

import fsspec
import pytest
from test_weights_proxy import counting_proxy, upload, write_pipeline

from pusa_batch.doctor.preflight import diagnose
from pusa_batch.models.tiny import ensure_tiny_model
from pusa_batch.pipelines.spec import load_pipeline_spec

COMPONENTS = ("transformer", "vae", "text_encoder", "tokenizer")


@pytest.fixture(scope="module")
def tiny_remote(s3, cache) -> dict[str, int]:
    """The tiny Wan2.1 twin on S3: {key: size} of its components' files."""
    fs = fsspec.filesystem("s3", **s3.storage_options, skip_instance_cache=True)
    sizes = upload(fs, ensure_tiny_model("wan2.1"), "pusa-test/doctor-tiny")
    return {k: v for k, v in sizes.items() if k.split("/")[2] in COMPONENTS}


@pytest.fixture
def proxy(s3):
    with counting_proxy(s3.endpoint) as p:
        yield p


def remote_spec(tmp_path: Path, proxy, root: str = "s3://pusa-test/doctor-tiny"):
    return load_pipeline_spec(
        write_pipeline(tmp_path, root, proxy.storage_options(), cache=tmp_path)
    )


def test_doctor_passes_an_s3_pipeline_of_the_tiny_twin(tmp_path, proxy, tiny_remote):
    report = diagnose(remote_spec(tmp_path, proxy))
    assert report.ok, [(c.name, c.detail) for c in report.checks if c.status == "fail"]
    assert {c.name: c.status for c in report.checks}["keys: transformer"] == "ok"


def test_doctor_reads_safetensors_by_ranges_and_far_fewer_bytes_than_they_hold(
    tmp_path, proxy, tiny_remote
):
    diagnose(remote_spec(tmp_path, proxy))
    tensors = {f"/{k}": size for k, size in tiny_remote.items() if k.endswith(".safetensors")}
    reads = [g for g in proxy.object_gets() if g.path in tensors]
    assert reads and all(g.range is not None for g in reads)
    assert {g.path for g in reads} == set(tensors)
    assert sum(g.body_bytes for g in reads) < sum(tensors.values()) / 20


def test_doctor_fetches_small_files_whole_and_each_once(tmp_path, proxy, tiny_remote):
    diagnose(remote_spec(tmp_path, proxy))
    small = {f"/{k}" for k in tiny_remote if not k.endswith(".safetensors")}
    whole = [g for g in proxy.object_gets() if g.path in small]
    assert sorted(g.path for g in whole) == sorted(small)


def test_a_second_doctor_on_the_same_node_reads_no_object(tmp_path, proxy, tiny_remote):
    diagnose(remote_spec(tmp_path, proxy))
    proxy.clear()
    report = diagnose(remote_spec(tmp_path, proxy))
    assert report.ok and proxy.object_gets() == []


def test_doctor_on_a_missing_url_fails_the_files_check_naming_it(tmp_path, proxy, tiny_remote):
    report = diagnose(remote_spec(tmp_path, proxy, "s3://pusa-test/doctor-nothing-here"))
    files = next(c for c in report.checks if c.name == "files")
    assert files.status == "fail"
    assert "s3://pusa-test/doctor-nothing-here/transformer: not found" in files.detail
    assert "testing" not in files.detail  # the test secret, never printed


def test_a_weight_file_missing_from_the_bucket_is_named_by_its_url_not_the_cache(
    s3, tmp_path, proxy, cache
):
    fs = fsspec.filesystem("s3", **s3.storage_options, skip_instance_cache=True)
    upload(fs, ensure_tiny_model("wan2.1"), "pusa-test/doctor-no-dit")
    for key in fs.find("pusa-test/doctor-no-dit/transformer"):
        if key.endswith(".safetensors"):
            fs.rm(key)
    fs.invalidate_cache()
    report = diagnose(remote_spec(tmp_path, proxy, "s3://pusa-test/doctor-no-dit"))
    failed = " ".join(c.detail for c in report.checks if c.status != "ok")
    assert "s3://pusa-test/doctor-no-dit/transformer" in failed
    assert str(tmp_path) not in failed  # the header twin's folder in the cache
