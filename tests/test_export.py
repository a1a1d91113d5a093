"""Dataset exports: the Hugging Face videofolder, WebDataset shards (VBench: test_export_vbench)."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import webdataset as wds
from test_export_support import DONE_IDS, SCRIPT_PROMPT, build_root, commit_item, item_dict

from pusa_batch.cli.main import main
from pusa_batch.errors import ExportError
from pusa_batch.outputs.common import HF_SCHEMA
from pusa_batch.outputs.hf import export_hf
from pusa_batch.outputs.webdataset import (
    export_webdataset,
    parse_size,
    plan_shards,
    tar_file_size,
    wds_key,
)
from pusa_batch.store.store import Store
from pusa_batch.video import decode_mp4


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Store:
    return build_root(tmp_path_factory.mktemp("root"))


def video_of(store: Store, item_id: str) -> bytes:
    with store.open_video(item_id) as handle:
        return handle.read()


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --------------------------------------------------------------------------- Hugging Face


@pytest.fixture(scope="module")
def hf(root, tmp_path_factory):
    dest = tmp_path_factory.mktemp("hf")
    return export_hf(root, dest), dest


def test_hf_metadata_has_flat_columns_and_file_names_next_to_it(root, hf):
    _, dest = hf
    table = pq.read_table(dest / "metadata.parquet")
    assert table.schema.names == HF_SCHEMA.names
    rows = {r["id"]: r for r in table.to_pylist()}
    assert set(rows) == DONE_IDS
    for item_id, row in rows.items():
        assert row["file_name"] == f"videos/{item_id}.mp4"
        assert (dest / row["file_name"]).read_bytes() == video_of(root, item_id)


def test_hf_metadata_records_generation_settings_and_conditioning(hf):
    _, dest = hf
    rows = pq.read_table(dest / "metadata.parquet").to_pylist()
    row = next(r for r in rows if r["id"] == "clip.v2")
    assert (row["task"], row["seed"], row["prompt"]) == ("i2v", 9, SCRIPT_PROMPT)
    assert (row["num_frames"], row["height"], row["width"], row["fps"]) == (9, 32, 32, 8)
    assert (row["steps"], row["guidance_scale"]) == (3, 3.0)
    assert row["input_image"].endswith("input.png")
    assert row["cond_pixel_frames"] == [[0]] and row["cond_multipliers"] == [0.2]


def test_hf_without_dest_writes_metadata_into_the_output_root(tmp_path):
    store = build_root(tmp_path)
    summary = export_hf(store)
    table = pq.read_table(tmp_path / "out" / "metadata.parquet")
    assert summary.dest == store.url and summary.linked == 0
    assert sorted(table["file_name"].to_pylist()) == sorted(f"videos/{i}.mp4" for i in DONE_IDS)


def test_hf_videofolder_loads_with_datasets(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    store = build_root(tmp_path)
    export_hf(store)
    loaded = datasets.load_dataset(
        "videofolder",
        data_dir=str(tmp_path / "out"),
        split="train",
        cache_dir=str(tmp_path / "hf-cache"),
    )
    # Decoding needs torchcodec, absent here: check the files resolve, then decode them ourselves.
    loaded = loaded.cast_column("video", datasets.Video(decode=False))
    assert sorted(loaded["id"]) == sorted(DONE_IDS)
    for row in loaded:
        assert Path(row["video"]["path"]) == tmp_path / "out" / "videos" / f"{row['id']}.mp4"
        frames, fps = decode_mp4(row["video"]["path"])
        assert frames.shape[0] == row["frames"] and fps == row["fps"]


# --------------------------------------------------------------------------- WebDataset


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1GB", 10**9),
        ("500MB", 500 * 10**6),
        ("100KB", 100 * 10**3),
        ("100kb", 100 * 10**3),
        ("1.5G", 1_500_000_000),
        ("1GiB", 2**30),
        ("64MiB", 64 * 2**20),
        ("100KiB", 100 * 1024),
        ("1000", 1000),
        (4096, 4096),
    ],
)
def test_parse_size_reads_si_and_iec_units(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "GB", "1 XB", "-5MB", "0", "1iB", "ten MB"])
def test_parse_size_rejects_what_it_cannot_read(text):
    with pytest.raises(ExportError):
        parse_size(text)


def test_wds_keys_have_no_dots_and_stay_distinct():
    ids = ["a.b", "a%2Eb", "a_b", "v1.0.mp4"]
    keys = [wds_key(i) for i in ids]
    assert all("." not in k for k in keys)
    assert len(set(keys)) == len(ids)


def test_plan_shards_starts_a_new_shard_when_the_next_sample_would_overflow():
    limit = tar_file_size(8000)  # tar files grow in 10240-byte records: two 4000-byte samples
    shards = plan_shards([4000, 4000, 4000, 50_000, 10], limit)
    assert shards == [[0, 1], [2], [3], [4]]  # a sample over the limit sits alone


@pytest.fixture(scope="module")
def shards(root, tmp_path_factory):
    dest = tmp_path_factory.mktemp("wds")
    return export_webdataset(root, dest, shard_size="20KB"), dest


def test_webdataset_samples_hold_the_video_and_its_json(root, shards):
    summary, dest = shards
    urls = [str(dest / name) for name in summary.files]
    samples = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))
    assert sorted(json.loads(s["json"])["id"] for s in samples) == sorted(DONE_IDS)
    for sample in samples:
        record = json.loads(sample["json"])
        assert sample["__key__"] == wds_key(record["id"])
        assert sample["mp4"] == video_of(root, record["id"])


def test_webdataset_shards_stay_within_the_size(shards):
    summary, dest = shards
    limit = parse_size("20KB")
    assert len(summary.files) > 1
    for number, name in enumerate(summary.files):
        assert name == f"shard-{number:06d}.tar"
        with tarfile.open(dest / name) as tar:
            n_samples = len(tar.getnames()) // 2
        assert (dest / name).stat().st_size <= limit or n_samples == 1


def member_end(member: tarfile.TarInfo) -> int:
    return member.offset_data + -(-member.size // 512) * 512


def test_webdataset_shards_are_full_before_the_next_starts(shards):
    summary, dest = shards
    limit = parse_size("20KB")
    for name, following in zip(summary.files, summary.files[1:], strict=False):
        with tarfile.open(dest / name) as tar:
            used = member_end(tar.getmembers()[-1])
        with tarfile.open(dest / following) as tar:
            video, meta = tar.getmembers()[:2]
        assert tar_file_size(used + member_end(meta) - video.offset) > limit


def test_webdataset_export_replaces_stale_shards(root, tmp_path):
    many = export_webdataset(root, tmp_path, shard_size="1KB")
    few = export_webdataset(root, tmp_path, shard_size="1GB")
    assert len(many.files) == len(DONE_IDS) and few.files == ("shard-000000.tar",)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard-000000.tar"]


def test_hf_metadata_records_how_inputs_were_framed(tmp_path):
    store = build_root(tmp_path)
    commit_item(
        store, item_dict("boxed", "a framed cat", 1, task="i2v", image="in.png", fit="contain")
    )
    export_hf(store, tmp_path / "hf")
    rows = {r["id"]: r for r in pq.read_table(tmp_path / "hf" / "metadata.parquet").to_pylist()}
    assert rows["boxed"]["fit"] == "contain"


def test_a_dest_under_a_file_is_exit_2_naming_it(root, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code = main(["export", root.url, "--format", "hf", "--dest", str(blocker / "x")])
    text = capsys.readouterr().err
    assert code == 2 and "cannot create the export destination" in text and "Traceback" not in text
