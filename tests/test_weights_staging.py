"""Staging weight URLs on a node, against a real S3 API (moto) behind a counting proxy: one GET
per object however many actors stage at once, none on a warm cache, resumed partial downloads,
parallel ranges, and verification that names the file it refuses."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import fsspec
import pytest
from test_weights_proxy import counting_proxy, upload, write_pipeline

from pusa_batch.errors import WeightsError
from pusa_batch.models.tiny import ensure_tiny_model
from pusa_batch.pipelines import load_pipeline
from pusa_batch.pipelines.spec import load_pipeline_spec
from pusa_batch.pipelines.staging import stage_pipeline
from pusa_batch.weights import (
    SourceRequest,
    StagingConfig,
    StagingProgress,
    WeightURL,
    stage_sources,
)
from pusa_batch.weights.staging import Tally, list_for, stage_source

REPO = Path(__file__).resolve().parents[1]
KIB = 1024
COMPONENTS = ("transformer", "vae", "text_encoder", "tokenizer")


@pytest.fixture(scope="module")
def bucket_fs(s3):
    return fsspec.filesystem("s3", **s3.storage_options, skip_instance_cache=True)


@pytest.fixture(scope="module")
def tiny_remote(s3, bucket_fs, cache) -> dict[str, int]:
    """The tiny Wan2.1 twin on S3: {key: size} of the files its four components hold."""
    sizes = upload(bucket_fs, ensure_tiny_model("wan2.1"), "pusa-test/tiny-wan21")
    return {k: v for k, v in sizes.items() if k.split("/")[2] in COMPONENTS}


@pytest.fixture
def proxy(s3):
    with counting_proxy(s3.endpoint) as p:
        yield p


def put(fs, key: str, data: bytes) -> WeightURL:
    fs.pipe_file(key, data)
    fs.invalidate_cache()
    return WeightURL(f"s3://{key}")


def config(proxy, cache: Path, **changes) -> StagingConfig:
    return StagingConfig(cache=cache, storage_options={"s3": proxy.storage_options()}, **changes)


def object_paths(sizes: dict[str, int]) -> set[str]:
    return {f"/{key}" for key in sizes}


class Interrupted(Exception):
    pass


def interrupt_after(chunks: int):
    """A progress callback that stops the staging once `chunks` chunks have landed."""
    seen = []

    def on_progress(event):
        if event.state == "fetching" and event.done_bytes:
            seen.append(event.done_bytes)
            if len(seen) >= chunks:
                raise Interrupted

    return on_progress


# ------------------------------------------------------------------ once per node, then warm

STAGE_IN_A_PROCESS = """
import json, sys
from pusa_batch.pipelines.spec import load_pipeline_spec
from pusa_batch.pipelines.staging import stage_pipeline
spec = load_pipeline_spec(sys.argv[1])
print("ready", flush=True)
sys.stdin.readline()
states = []
staged = stage_pipeline(spec, lambda e: states.append(e.state))
paths = {k: str(v) for k, v in staged.weights.components().items()}
print(json.dumps({"paths": paths, "waits": states.count("waiting")}), flush=True)
"""


def test_two_threads_and_a_second_process_fetch_each_object_once(tmp_path, s3, tiny_remote):
    with counting_proxy(s3.endpoint, slow_s=0.3) as proxy:
        path = write_pipeline(
            tmp_path, "s3://pusa-test/tiny-wan21", proxy.storage_options(), cache=tmp_path / "c"
        )
        other = subprocess.Popen(
            [sys.executable, "-c", STAGE_IN_A_PROCESS, str(path)],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert other.stdout.readline().strip() == "ready"
        spec = load_pipeline_spec(path)
        results, states = {}, []
        start = threading.Barrier(3)

        def stage(name):
            start.wait()
            results[name] = stage_pipeline(spec, lambda e: states.append(e.state))

        threads = [threading.Thread(target=stage, args=(n,)) for n in ("a", "b")]
        for t in threads:
            t.start()
        other.stdin.write("go\n")
        other.stdin.flush()
        start.wait()
        for t in threads:
            t.join(timeout=120)
        report = json.loads(other.stdout.readline())
        assert other.wait(timeout=60) == 0
    assert proxy.gets_per_object() == {p: 1 for p in object_paths(tiny_remote)}
    mine = {k: str(v) for k, v in results["a"].weights.components().items()}
    assert mine == {k: str(v) for k, v in results["b"].weights.components().items()}
    assert mine == report["paths"]
    assert states.count("waiting") + report["waits"] > 0  # the lock was contended, and held


def test_a_rerun_on_a_warm_cache_reads_no_object(tmp_path, proxy, tiny_remote):
    path = write_pipeline(
        tmp_path, "s3://pusa-test/tiny-wan21", proxy.storage_options(), cache=tmp_path / "c"
    )
    stage_pipeline(load_pipeline_spec(path))
    proxy.clear()
    staged = stage_pipeline(load_pipeline_spec(path))
    assert proxy.object_gets() == []
    assert {s.method for s in proxy.seen} <= {"GET", "HEAD"}  # listings and HEADs only
    assert (staged.weights.vae / "config.json").is_file()


def test_a_changed_remote_file_is_fetched_again_and_only_it(tmp_path, proxy, bucket_fs):
    url = put(bucket_fs, "pusa-test/changing/model/config.json", b'{"v": 1}')
    put(bucket_fs, "pusa-test/changing/model/weights.bin", os.urandom(40 * KIB))
    request = [SourceRequest(url.parent)]
    cfg = config(proxy, tmp_path / "c")
    [before] = stage_sources(request, cfg)
    put(bucket_fs, "pusa-test/changing/model/config.json", b'{"v": 2}')
    proxy.clear()
    [after] = stage_sources(request, cfg)
    assert proxy.gets_per_object() == {"/pusa-test/changing/model/config.json": 1}
    assert (after / "config.json").read_bytes() == b'{"v": 2}'
    assert (before / "config.json").read_bytes() == b'{"v": 1}'  # trees are never rewritten


def test_a_staged_tree_holds_the_remote_bytes_under_the_remote_names(tmp_path, proxy, bucket_fs):
    data = os.urandom(10 * KIB)
    url = put(bucket_fs, "pusa-test/names/model/sub/part.bin", data)
    [tree] = stage_sources([SourceRequest(url.parent.parent)], config(proxy, tmp_path / "c"))
    assert (tree / "sub" / "part.bin").read_bytes() == data


def test_a_cut_file_in_a_staged_tree_is_fetched_again_and_only_it(tmp_path, proxy, bucket_fs):
    put(bucket_fs, "pusa-test/damaged/model/a.bin", os.urandom(30 * KIB))
    put(bucket_fs, "pusa-test/damaged/model/b.bin", os.urandom(30 * KIB))
    request = [SourceRequest(WeightURL("s3://pusa-test/damaged/model"))]
    [tree] = stage_sources(request, config(proxy, tmp_path / "c"))
    os.truncate(tree / "a.bin", 100)
    proxy.clear()
    [again] = stage_sources(request, config(proxy, tmp_path / "c"))
    assert proxy.gets_per_object() == {"/pusa-test/damaged/model/a.bin": 1}
    assert (again / "a.bin").read_bytes() == bucket_fs.cat_file("pusa-test/damaged/model/a.bin")


def test_an_http_url_names_one_file_read_with_ranges(tmp_path, s3, proxy, bucket_fs):
    data = os.urandom(150 * KIB)
    bucket_fs.pipe_file("pusa-test/http/lora.safetensors.bin", data, ACL="public-read")
    url = WeightURL(f"{proxy.endpoint}/pusa-test/http/lora.safetensors.bin")
    cfg = StagingConfig(cache=tmp_path / "c", chunk_bytes=64 * KIB)
    [staged] = stage_sources([SourceRequest(url)], cfg)
    assert staged.name == "lora.safetensors.bin" and staged.read_bytes() == data
    assert [g.range is not None for g in proxy.object_gets()] == [True] * 3  # no probe GETs


def test_a_warm_http_file_is_found_with_one_head_and_no_get(tmp_path, proxy, bucket_fs):
    bucket_fs.pipe_file("pusa-test/http/warm.bin", os.urandom(KIB), ACL="public-read")
    request = [SourceRequest(WeightURL(f"{proxy.endpoint}/pusa-test/http/warm.bin"))]
    stage_sources(request, StagingConfig(cache=tmp_path / "c"))
    proxy.clear()
    stage_sources(request, StagingConfig(cache=tmp_path / "c"))
    assert [(s.method, s.path) for s in proxy.seen] == [("HEAD", "/pusa-test/http/warm.bin")]


# ------------------------------------------------------------- resumed, parallel, verified


def test_an_interrupted_download_resumes_from_its_part_file(tmp_path, proxy, bucket_fs):
    data = os.urandom(640 * KIB)
    url = put(bucket_fs, "pusa-test/resume/big.bin", data)
    cfg = config(proxy, tmp_path / "c", chunk_bytes=64 * KIB, parallel=1)
    with pytest.raises(Interrupted):
        stage_sources([SourceRequest(url)], cfg, interrupt_after(3))
    [record] = (tmp_path / "c").glob("blobs/*/*.part.json")
    kept = len(json.loads(record.read_text())["done"])
    proxy.clear()
    [staged] = stage_sources([SourceRequest(url)], cfg)
    assert staged.read_bytes() == data
    assert kept >= 3 and proxy.object_bytes() == len(data) - kept * 64 * KIB


def test_a_cut_part_file_is_trusted_only_as_far_as_it_reaches(tmp_path, proxy, bucket_fs):
    data = os.urandom(640 * KIB)
    url = put(bucket_fs, "pusa-test/cut/big.bin", data)
    cfg = config(proxy, tmp_path / "c", chunk_bytes=64 * KIB, parallel=1)
    with pytest.raises(Interrupted):
        stage_sources([SourceRequest(url)], cfg, interrupt_after(4))
    [part] = (tmp_path / "c").glob("blobs/*/*.part")
    os.truncate(part, 64 * KIB + 100)  # as a crash before the writes reached the disk
    proxy.clear()
    [staged] = stage_sources([SourceRequest(url)], cfg)
    assert staged.read_bytes() == data
    assert proxy.object_bytes() == len(data) - 64 * KIB  # only the first chunk was kept


def test_a_big_file_is_read_as_parallel_ranges_that_tile_it(tmp_path, proxy, bucket_fs):
    data = os.urandom(300 * KIB + 7)
    url = put(bucket_fs, "pusa-test/ranges/shard.bin", data)
    cfg = config(proxy, tmp_path / "c", chunk_bytes=64 * KIB, parallel=4)
    [staged] = stage_sources([SourceRequest(url)], cfg)
    ranges = sorted(
        tuple(map(int, g.range.removeprefix("bytes=").split("-"))) for g in proxy.object_gets()
    )
    assert ranges == [(s, min(s + 64 * KIB, len(data)) - 1) for s in range(0, len(data), 64 * KIB)]
    assert staged.read_bytes() == data


def test_a_file_replaced_while_staged_is_an_error_naming_it(tmp_path, proxy, bucket_fs):
    url = put(bucket_fs, "pusa-test/replaced/model/w.bin", os.urandom(200 * KIB))
    cfg = config(proxy, tmp_path / "c", chunk_bytes=64 * KIB)
    listed = list_for(SourceRequest(url.parent), cfg)
    put(bucket_fs, "pusa-test/replaced/model/w.bin", os.urandom(100 * KIB))
    with pytest.raises(
        WeightsError, match=r"s3://pusa-test/replaced/model/w\.bin: .*size mismatch"
    ):
        stage_source(listed, cfg, Tally(0, 0, None))
    assert list((tmp_path / "c").glob("blobs/*/*[0-9a-f]")) == []  # nothing kept as a blob


def test_a_truncated_safetensors_upload_is_a_size_mismatch_naming_it(
    tmp_path, proxy, bucket_fs, cache
):
    vae = ensure_tiny_model("wan2.1") / "vae" / "diffusion_pytorch_model.safetensors"
    whole = vae.read_bytes()
    url = put(bucket_fs, "pusa-test/cut-upload/vae.safetensors", whole[:-1000])
    with pytest.raises(WeightsError, match=r"cut-upload/vae\.safetensors: size mismatch: its"):
        stage_sources([SourceRequest(url)], config(proxy, tmp_path / "c"))


def test_a_sha256_sidecar_is_checked_and_a_mismatch_names_the_file(tmp_path, proxy, bucket_fs):
    data = os.urandom(50 * KIB)
    url = put(bucket_fs, "pusa-test/sums/lora.pt", data)
    put(bucket_fs, "pusa-test/sums/lora.pt.sha256", f"{'0' * 64}  lora.pt\n".encode())
    with pytest.raises(WeightsError, match=r"s3://pusa-test/sums/lora\.pt: sha256 mismatch"):
        stage_sources([SourceRequest(url)], config(proxy, tmp_path / "c"))
    put(bucket_fs, "pusa-test/sums/lora.pt.sha256", hashlib.sha256(data).hexdigest().encode())
    [staged] = stage_sources([SourceRequest(url)], config(proxy, tmp_path / "c"))
    record = next((tmp_path / "c").glob("blobs/*/*.json"), None)
    assert staged.read_bytes() == data and record is not None


def test_a_sha256sums_file_covers_the_folder_it_sits_in(tmp_path, proxy, bucket_fs):
    put(bucket_fs, "pusa-test/sumsdir/m/a.bin", b"a" * 100)
    put(bucket_fs, "pusa-test/sumsdir/m/SHA256SUMS", f"{'1' * 64}  a.bin\n".encode())
    source = WeightURL("s3://pusa-test/sumsdir/m")
    with pytest.raises(WeightsError, match=r"sumsdir/m/a\.bin: sha256 mismatch.*SHA256SUMS"):
        stage_sources([SourceRequest(source)], config(proxy, tmp_path / "c"))


# --------------------------------------------------------------------- progress and loading


def test_progress_counts_bytes_up_to_the_total(tmp_path, proxy, bucket_fs):
    data = os.urandom(256 * KIB)
    url = put(bucket_fs, "pusa-test/progress/w.bin", data)
    events = []
    cfg = config(proxy, tmp_path / "c", chunk_bytes=64 * KIB, parallel=2)
    stage_sources([SourceRequest(url)], cfg, events.append)
    fetched = [e.done_bytes for e in events if e.state == "fetching"]
    assert fetched == sorted(fetched) and fetched[-1] == len(data)
    assert (events[0].state, events[-1].state) == ("listing", "ready")
    assert events[-1].total_bytes == len(data) and events[-1].files_done == 1


def test_progress_reads_as_a_live_view_line():
    assert str(StagingProgress("fetching", 12_100_000_000, 28_000_000_000, 3, 9)) == (
        "staging 12.1/28.0 GB"
    )
    waiting = StagingProgress("waiting", 0, 28_000_000_000, 0, 9, "s3://b/w.safetensors")
    assert str(waiting) == (
        "staging 0.0/28.0 GB (another worker on this node is fetching s3://b/w.safetensors)"
    )


def test_a_shared_file_system_path_given_as_file_url_is_copied_into_the_cache(tmp_path):
    shared = tmp_path / "nfs" / "model"
    shared.mkdir(parents=True)
    (shared / "config.json").write_text("{}")
    [staged] = stage_sources(
        [SourceRequest(WeightURL(f"file://{shared}"))], StagingConfig(cache=tmp_path / "c")
    )
    assert staged.is_relative_to(tmp_path / "c") and (staged / "config.json").read_text() == "{}"


def test_load_pipeline_reads_an_s3_pipeline_from_its_staged_copy(tmp_path, proxy, tiny_remote):
    path = write_pipeline(
        tmp_path, "s3://pusa-test/tiny-wan21", proxy.storage_options(), cache=tmp_path / "c"
    )
    events = []
    pipeline = load_pipeline(path, "cpu", on_staging=events.append)
    assert pipeline.describe()["identity"] == load_pipeline_spec(path).identity()
    assert events[-1].state == "ready" and events[-1].total_bytes == sum(tiny_remote.values())


def listed_prefixes(proxy) -> list[str]:
    """The prefix of every bucket listing the proxy saw (one LIST request each)."""
    from urllib.parse import parse_qs

    return sorted(
        parse_qs(s.query).get("prefix", [""])[0] for s in proxy.seen if "list-type" in s.query
    )


def test_a_pipelines_identity_lists_each_weight_folder_once_and_then_not_again(
    tmp_path, proxy, tiny_remote
):
    path = write_pipeline(
        tmp_path, "s3://pusa-test/tiny-wan21", proxy.storage_options(), cache=tmp_path / "c"
    )
    spec = load_pipeline_spec(path)
    proxy.clear()
    first = spec.identity()
    folders = [f"tiny-wan21/{c}/" for c in sorted(COMPONENTS)]
    assert listed_prefixes(proxy) == folders
    proxy.clear()
    assert spec.identity() == first and listed_prefixes(proxy) == []  # one run, one identity


def test_a_worker_loading_an_s3_pipeline_lists_each_weight_folder_once(
    tmp_path, proxy, tiny_remote
):
    from pusa_batch.engine.runner import PipelineRunner

    path = write_pipeline(
        tmp_path, "s3://pusa-test/tiny-wan21", proxy.storage_options(), cache=tmp_path / "c"
    )
    proxy.clear()
    PipelineRunner(str(path)).load()
    assert listed_prefixes(proxy) == [f"tiny-wan21/{c}/" for c in sorted(COMPONENTS)]
