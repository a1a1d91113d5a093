"""Exports and the gallery between an S3 output root (moto server) and S3 or local destinations;
credentials and signed input URLs never reach what they write."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import webdataset as wds
from s3server import s3_server
from test_export_support import commit_item, item_dict, record_failure

from pusa_batch.outputs.gallery import write_gallery
from pusa_batch.outputs.hf import export_hf
from pusa_batch.outputs.vbench import export_vbench
from pusa_batch.outputs.webdataset import export_webdataset
from pusa_batch.store.store import Store

FAKE_KEY, FAKE_SECRET = "AKIAEXPORTKEY0001", "export/secret+Value0002"
SIGNED = "https://alice:hunter2pw@img.example/cat.png?X-Amz-Signature=sig123secret"
SECRETS = [FAKE_KEY, FAKE_SECRET, "hunter2pw", "sig123secret"]


@pytest.fixture(scope="module")
def s3():
    with s3_server() as server:
        yield server


@pytest.fixture(scope="module")
def options(s3) -> dict:
    return dict(s3.storage_options, key=FAKE_KEY, secret=FAKE_SECRET)


@pytest.fixture(scope="module")
def root(s3, options) -> Store:
    bucket = s3.make_bucket(f"src-{uuid.uuid4().hex[:8]}")
    store = Store(f"{bucket}/run", options)
    commit_item(store, item_dict("a", "a cat", 1))
    commit_item(store, item_dict("b.1", "a cat", 2, task="i2v", image=SIGNED))
    record_failure(
        store,
        item_dict("c", "a dog", 3, task="i2v", image=SIGNED),
        "InputMediaError",
        f"{SIGNED}: file not found",
    )
    return store


def all_text(fs, prefix: str) -> str:
    return b"".join(fs.cat_file(p) for p in fs.find(prefix)).decode("latin-1")


def local_text(folder: Path) -> str:
    return b"".join(p.read_bytes() for p in folder.rglob("*") if p.is_file()).decode("latin-1")


def test_webdataset_shards_written_to_s3_read_back(root, s3, options, tmp_path):
    dest = s3.make_bucket(f"wds-{uuid.uuid4().hex[:8]}") + "/shards"
    summary = export_webdataset(root, dest, "1MB", storage_options=options)
    fs = root.root.fs
    fs.invalidate_cache()
    fs.get([f"{dest}/{name}" for name in summary.files], str(tmp_path) + "/")
    samples = list(wds.WebDataset([str(tmp_path / n) for n in summary.files], shardshuffle=False))
    assert sorted(json.loads(s["json"])["id"] for s in samples) == ["a", "b.1"]
    assert all(s["mp4"][4:8] == b"ftyp" for s in samples)
    text = all_text(fs, dest) + repr(summary)
    assert not [s for s in SECRETS if s in text]


def test_vbench_and_hf_copy_from_s3_without_secrets(root, tmp_path):
    vbench = export_vbench(root, tmp_path / "vbench")
    hf = export_hf(root, tmp_path / "hf")
    assert (vbench.exported, vbench.linked, hf.exported) == (2, 0, 2)
    assert sorted(p.name for p in (tmp_path / "vbench" / "videos").glob("*.mp4")) == [
        "a cat-0.mp4",
        "a cat-1.mp4",
    ]
    text = local_text(tmp_path) + repr(vbench) + repr(hf)
    assert "img.example/cat.png" in text  # the input is recorded, its credentials are not
    assert not [s for s in SECRETS if s in text]


def test_gallery_inside_an_s3_root_has_no_secrets(root):
    summary = write_gallery(root)
    fs = root.root.fs
    fs.invalidate_cache()
    page = fs.cat_file(f"{root.root.root}/gallery.html").decode()
    assert 'src="videos/a.mp4"' in page and "file not found" in page
    assert summary.failed == 1 and summary.posters == 2
    # the root's own markers hold the manifest as given; only the gallery's files are ours
    text = page + all_text(fs, f"{root.root.root}/gallery_files") + repr(summary)
    assert not [s for s in SECRETS if s in text]


def test_gallery_of_an_s3_root_written_locally_uses_video_base(root, tmp_path):
    write_gallery(root, tmp_path / "index.html", video_base="https://cdn.example/run")
    page = (tmp_path / "index.html").read_text()
    assert 'src="https://cdn.example/run/videos/b.1.mp4"' in page
    assert (tmp_path / "index_files" / "posters" / "b.1.png").is_file()
    assert not [s for s in SECRETS if s in local_text(tmp_path)]
