"""Whole runs against a real S3 API (moto_server): the CLI end to end, a driver killed and the
run resumed, exports of the resumed run, and a storage outage (the server frozen) mid-run.

Every run is a real `python -m pusa_batch run` (or, where the CLI lacks a knob, a script calling
`pusa_batch.engine.run.run`) with the tiny pipeline and an embedded local Ray. Outputs are read back
through s3fs, as a user of the bucket would.

No timed asserts: the kill and the freeze are triggered by the first committed marker, and those
runs use the demo rows at `SLOW_STEPS` steps on one worker, so that several seconds of sampling
remain after any first commit: the run cannot end before the kill or the freeze lands.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import av
import pandas as pd
import pytest
import s3fs
from s3server import REGION, S3Server, _free_port, _moto_command, _wait_until_up

from pusa_batch.pipelines.spec import load_pipeline_spec

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "manifests" / "demo.csv"
TINY = ROOT / "pipelines" / "tiny.toml"
BUCKET = "pusa-test"
# moto accepts any credentials; distinctive ones let us look for leaks in what a run writes
KEY = "AKIAPUSARUNS3LEAKCHECK"
SECRET = "pusa-run-s3-secret-9f2c4e71"
IDS = sorted(pd.read_csv(DEMO)["id"])
RUN_TIMEOUT_S = 600
SLOW_STEPS = 300  # about 1.5 s an item on the tiny model, one worker: 5 items left = several s
FINAL_LAYOUT = re.compile(
    r"^(videos/[^/]+\.mp4|items/[^/]+\.json|index/part-\d{6}(-t\d+)?\.parquet|index\.parquet|run\.json)$"
)

pytestmark = pytest.mark.slow

# ------------------------------------------------------------------------------------- helpers


def options(endpoint: str, **extra) -> dict:
    return {
        "key": KEY,
        "secret": SECRET,
        "client_kwargs": {"endpoint_url": endpoint, "region_name": REGION},
        **extra,
    }


def option_flags(storage_options: dict) -> list[str]:
    flags = []
    for key, value in storage_options.items():
        flags += ["--storage-option", f"{key}={json.dumps(value)}"]
    return flags


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "pusa_batch", *args]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        cli_command(*args), capture_output=True, text=True, timeout=RUN_TIMEOUT_S, cwd=ROOT
    )


def run_args(url: str, storage_options: dict, manifest: Path = DEMO, workers: int = 2) -> list[str]:
    return [
        "run",
        str(manifest),
        "-o",
        url,
        "--pipeline",
        str(TINY),
        "--workers",
        str(workers),
        "--no-progress",
        *option_flags(storage_options),
    ]


def slow_demo(folder: Path) -> Path:
    """The demo rows at SLOW_STEPS steps each, their media paths made absolute."""
    table = pd.read_csv(DEMO, dtype=str, keep_default_na=False)
    table["image"] = [str(DEMO.parent / p) if p else "" for p in table["image"]]
    table["steps"] = str(SLOW_STEPS)
    path = folder / "slow_demo.csv"
    table.to_csv(path, index=False)
    return path


def filesystem(storage_options: dict) -> s3fs.S3FileSystem:
    return s3fs.S3FileSystem(**storage_options, skip_instance_cache=True, use_listings_cache=False)


def new_root() -> tuple[str, str]:
    """A fresh prefix in the bucket: (s3:// URL, bucket path)."""
    path = f"{BUCKET}/run-s3-{uuid.uuid4().hex[:10]}"
    return f"s3://{path}", path


def objects(fs: s3fs.S3FileSystem, path: str) -> dict[str, int]:
    """Every object under `path`, relative name -> size."""
    fs.invalidate_cache()
    return {
        name[len(path) + 1 :]: info["size"] for name, info in fs.find(path, detail=True).items()
    }


def markers(fs: s3fs.S3FileSystem, path: str) -> dict[str, dict]:
    fs.invalidate_cache()
    try:
        names = fs.ls(f"{path}/items", detail=False)
    except FileNotFoundError:
        return {}
    return {Path(n).stem: json.loads(fs.cat_file(n)) for n in names if n.endswith(".json")}


def expected_video(item_id: str) -> tuple[int, int, int, float]:
    """(frames, width, height, fps) the demo row asks for, the pipeline's defaults filling gaps."""
    row = pd.read_csv(DEMO).set_index("id").loc[item_id]
    defaults = load_pipeline_spec(TINY).defaults
    frames = defaults.num_frames if pd.isna(row["num_frames"]) else int(row["num_frames"])
    return frames, defaults.width, defaults.height, float(defaults.fps)


def decode(data: bytes) -> tuple[int, int, int, float]:
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        size = stream.codec_context.width, stream.codec_context.height
        return frames, *size, float(stream.average_rate)


def wait_for(predicate, timeout_s: float, what: str, poll_s: float = 0.2) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout_s} s")
        time.sleep(poll_s)


def first_commit_or_exit(fs, path: str, process: subprocess.Popen) -> bool:
    """True once one item is committed; raises if the run ended before (nothing to interrupt)."""
    if process.poll() is not None:
        raise RuntimeError(f"the run exited ({process.returncode}) before any item was seen")
    fs.invalidate_cache()
    return fs.exists(f"{path}/items") and len(fs.ls(f"{path}/items")) >= 1


def leaked_credentials(fs: s3fs.S3FileSystem, path: str) -> list[str]:
    return [
        name
        for name in objects(fs, path)
        if KEY.encode() in (data := fs.cat_file(f"{path}/{name}")) or SECRET.encode() in data
    ]


def assert_each_id_committed_once(fs: s3fs.S3FileSystem, path: str) -> None:
    """One marker and one video of the recorded size per id; index.parquet lists each id once."""
    names = objects(fs, path)
    assert sorted(n for n in names if n.startswith("items/")) == [f"items/{i}.json" for i in IDS]
    assert sorted(n for n in names if n.startswith("videos/")) == [f"videos/{i}.mp4" for i in IDS]
    for item_id, meta in markers(fs, path).items():
        assert names[f"videos/{item_id}.mp4"] == meta["video_bytes"]
    index = pd.read_parquet(io.BytesIO(fs.cat_file(f"{path}/index.parquet")))
    assert sorted(index["id"]) == IDS


# ------------------------------------------------------------------------------- 1. a full run


@pytest.fixture(scope="module")
def full_run(s3):
    url, path = new_root()
    result = cli(*run_args(url, options(s3.endpoint)))
    return result, path, filesystem(options(s3.endpoint))


def test_full_run_through_the_cli_exits_0_and_generates_every_row(full_run):
    result, _, _ = full_run
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{len(IDS)} generated" in result.stdout


def test_full_run_writes_every_video_marker_and_the_index_as_objects(full_run):
    _, path, fs = full_run
    names = objects(fs, path)
    for item_id in IDS:
        assert f"videos/{item_id}.mp4" in names and f"items/{item_id}.json" in names
    index = pd.read_parquet(io.BytesIO(fs.cat_file(f"{path}/index.parquet")))
    assert sorted(index["id"]) == IDS


def test_full_run_leaves_only_the_final_mp4s_under_videos(full_run):
    _, path, fs = full_run
    videos = sorted(n for n in objects(fs, path) if n.startswith("videos/"))
    assert videos == [f"videos/{i}.mp4" for i in IDS]


def test_every_mp4_in_the_bucket_decodes_to_the_requested_frames_size_and_fps(full_run):
    _, path, fs = full_run
    for item_id in IDS:
        data = fs.cat_file(f"{path}/videos/{item_id}.mp4")
        assert decode(data) == expected_video(item_id), item_id


def test_no_object_written_by_the_run_contains_the_credentials(full_run):
    _, path, fs = full_run
    assert len(objects(fs, path)) > 2 * len(IDS)  # videos, markers, index, run.json: all read
    assert leaked_credentials(fs, path) == []


def test_the_cli_prints_neither_the_key_nor_the_secret(full_run):
    result, _, _ = full_run
    for text in (result.stdout, result.stderr):
        assert KEY not in text and SECRET not in text


# ------------------------------------------------------------ 2. a killed driver, then resumed


@dataclass(frozen=True)
class Interrupted:
    url: str
    path: str
    fs: s3fs.S3FileSystem
    options: dict
    before: dict[str, dict]  # markers committed when the driver was killed
    lease_at_kill: dict | None
    resumed: subprocess.CompletedProcess  # the same CLI command, right after the kill
    after: dict[str, dict]


def kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def settle(fs, path: str, quiet_s: float = 3.0, timeout_s: float = 60.0) -> dict[str, dict]:
    """Markers once none has appeared for `quiet_s` (orphaned Ray workers may still commit)."""
    seen, since = markers(fs, path), time.monotonic()
    deadline = since + timeout_s
    while time.monotonic() - since < quiet_s and time.monotonic() < deadline:
        time.sleep(0.5)
        now = markers(fs, path)
        if set(now) != set(seen):
            seen, since = now, time.monotonic()
    return seen


@pytest.fixture(scope="module")
def interrupted(s3, tmp_path_factory):
    url, path = new_root()
    opts = options(s3.endpoint)
    fs = filesystem(opts)
    logs = tmp_path_factory.mktemp("interrupted")
    manifest = slow_demo(logs)
    with open(logs / "killed.log", "wb") as log:
        driver = subprocess.Popen(
            cli_command(*run_args(url, opts, manifest, workers=1)),
            cwd=ROOT,
            start_new_session=True,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for(lambda: first_commit_or_exit(fs, path, driver), RUN_TIMEOUT_S, "a commit")
        finally:
            kill_group(driver)
    time.sleep(1.0)
    kill_group(driver)  # whatever of its local Ray outlived the first signal
    before = settle(fs, path)
    lease = (
        json.loads(fs.cat_file(f"{path}/lease.json")) if fs.exists(f"{path}/lease.json") else None
    )
    resumed = cli(*run_args(url, opts, manifest, workers=1))
    after = markers(fs, path)
    observed = {
        "before": sorted(before),
        "resumed_rc": resumed.returncode,
        "resumed": resumed.stdout,
    }
    (logs / "observed.json").write_text(json.dumps(observed))  # for whoever debugs a failure
    return Interrupted(url, path, fs, opts, before, lease, resumed, after)


def test_the_kill_lands_mid_run(interrupted):
    assert 1 <= len(interrupted.before) < len(IDS)


def test_the_killed_driver_leaves_its_lease_behind(interrupted):
    assert interrupted.lease_at_kill is not None
    assert interrupted.lease_at_kill["owner"]["command"] == "run"


def test_the_same_command_right_after_the_kill_takes_the_dead_lease_over_and_completes(
    interrupted,
):
    resumed = interrupted.resumed
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "took over the lease of a run that is gone" in " ".join(resumed.stderr.split())
    generated, done = len(IDS) - len(interrupted.before), len(interrupted.before)
    assert f"{generated} generated, {done} already done" in resumed.stdout
    assert not interrupted.fs.exists(f"{interrupted.path}/lease.json")  # released at the end


def test_after_the_resume_every_id_is_committed_exactly_once(interrupted):
    assert_each_id_committed_once(interrupted.fs, interrupted.path)


def test_items_committed_before_the_kill_are_not_generated_again(interrupted):
    after = interrupted.after
    assert {i: after[i]["committed_at"] for i in interrupted.before} == {
        i: m["committed_at"] for i, m in interrupted.before.items()
    }
    assert {i: after[i]["video_sha256"] for i in interrupted.before} == {
        i: m["video_sha256"] for i, m in interrupted.before.items()
    }


def test_the_resumed_root_holds_no_partial_or_pending_objects(interrupted):
    names = objects(interrupted.fs, interrupted.path)
    assert [n for n in names if not FINAL_LAYOUT.match(n)] == []


# ------------------------------------------------------------------ 3. exports of the resumed run


@pytest.fixture(scope="module")
def exported(interrupted):
    flags = option_flags(interrupted.options)
    wds = cli(
        "export",
        interrupted.url,
        "--format",
        "webdataset",
        "--dest",
        f"{interrupted.url}-wds",
        "--shard-size",
        "100KB",
        *flags,
    )
    hf = cli("export", interrupted.url, "--format", "hf", "--dest", f"{interrupted.url}-hf", *flags)
    return interrupted, wds, hf


def shard_samples(fs: s3fs.S3FileSystem, path: str) -> tuple[list[str], list[str], list[str]]:
    """(shard names, member names of every shard, the id inside every sample's json)."""
    shards = sorted(n for n in objects(fs, path) if n.endswith(".tar"))
    members, ids = [], []
    for shard in shards:
        with tarfile.open(fileobj=io.BytesIO(fs.cat_file(f"{path}/{shard}"))) as tar:
            for member in tar.getmembers():
                members.append(member.name)
                if member.name.endswith(".json"):
                    ids.append(json.loads(tar.extractfile(member).read())["id"])
    return shards, members, ids


def test_webdataset_export_to_s3_holds_every_id_once(exported):
    interrupted, wds, _ = exported
    assert wds.returncode == 0, wds.stderr[-3000:]
    shards, members, ids = shard_samples(interrupted.fs, f"{interrupted.path}-wds")
    assert len(shards) > 1  # 100 KB shards: the ~40-75 KB videos spread over several
    assert sorted(ids) == IDS
    keys = sorted(Path(m).stem for m in members)
    assert keys == sorted([Path(m).stem for m in members if m.endswith(".json")] * 2)


def test_hf_export_to_s3_lists_every_id_once_with_its_video(exported):
    interrupted, _, hf = exported
    assert hf.returncode == 0, hf.stderr[-3000:]
    fs, path = interrupted.fs, f"{interrupted.path}-hf"
    table = pd.read_parquet(io.BytesIO(fs.cat_file(f"{path}/metadata.parquet")))
    assert sorted(table["id"]) == IDS
    names = objects(fs, path)
    for _, row in table.iterrows():
        assert names[row["file_name"]] == row["video_bytes"]


# ------------------------------------------------------- 4. the S3 server frozen during a run

PAUSE_S = 8.0
# Timeouts short enough that the pause produces real errors, and no botocore retries. s3fs retries
# a timed-out call 5 times (~6 s with 1 s timeouts), less than the pause: calls that start early in
# the pause also need the store's own retry policy (5 attempts, jittered backoff) to ride it out.
FLAKY_CLIENT = {
    "config_kwargs": {"connect_timeout": 1, "read_timeout": 1, "retries": {"max_attempts": 0}},
}


@dataclass(frozen=True)
class Frozen:
    result: subprocess.CompletedProcess
    path: str
    fs: s3fs.S3FileSystem
    seen_before_pause: int
    resumed_at: float  # wall clock when the server got SIGCONT


@pytest.fixture(scope="module")
def frozen_run(tmp_path_factory):
    """A run on a moto server of its own, SIGSTOPped for PAUSE_S once an item is committed."""
    logs = tmp_path_factory.mktemp("frozen")
    manifest = slow_demo(logs)
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    with open(logs / "moto.log", "wb") as moto_log:
        moto = subprocess.Popen(_moto_command(port), stdout=moto_log, stderr=subprocess.STDOUT)
    try:
        _wait_until_up(endpoint, moto, 30)
        opts = options(endpoint)
        fs = filesystem(opts)
        S3Server(endpoint).make_bucket(BUCKET)
        url, path = new_root()
        with open(logs / "run.log", "wb") as log:
            driver = subprocess.Popen(
                cli_command(*run_args(url, {**opts, **FLAKY_CLIENT}, manifest, workers=1)),
                cwd=ROOT,
                start_new_session=True,
                stdout=subprocess.PIPE,
                stderr=log,
            )
        try:
            wait_for(lambda: first_commit_or_exit(fs, path, driver), RUN_TIMEOUT_S, "a commit")
            seen = len(markers(fs, path))
            os.kill(moto.pid, signal.SIGSTOP)
            try:
                time.sleep(PAUSE_S)
            finally:
                os.kill(moto.pid, signal.SIGCONT)
            resumed_at = time.time()
            stdout, _ = driver.communicate(timeout=RUN_TIMEOUT_S)
        finally:
            kill_group(driver)
        result = subprocess.CompletedProcess(
            driver.args, driver.returncode, stdout.decode(), (logs / "run.log").read_text()
        )
        yield Frozen(result, path, fs, seen, resumed_at)
    finally:
        moto.terminate()
        moto.wait(timeout=10)


def test_a_run_through_a_frozen_server_exits_0(frozen_run):
    result = frozen_run.result
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{len(IDS)} generated" in result.stdout


def test_the_outage_landed_mid_run(frozen_run):
    """Items were committed before the pause and after it: the run had to get through it."""
    done = markers(frozen_run.fs, frozen_run.path)
    committed = [datetime.fromisoformat(m["committed_at"]).timestamp() for m in done.values()]
    assert 1 <= frozen_run.seen_before_pause < len(IDS)
    assert max(committed) > frozen_run.resumed_at


def test_after_the_outage_every_id_is_committed_exactly_once(frozen_run):
    assert_each_id_committed_once(frozen_run.fs, frozen_run.path)


def test_storage_retries_absorb_the_outage_so_no_item_needs_a_second_attempt(frozen_run):
    done = markers(frozen_run.fs, frozen_run.path)
    assert {i: m["attempts"] for i, m in done.items()} == dict.fromkeys(IDS, 1)
    assert not frozen_run.fs.exists(f"{frozen_run.path}/failures")
