"""Exports and the gallery of a real run: the engine with the tiny pipeline on a local Ray, once."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from test_export_support import write_png

from pusa_batch.engine.config import RunConfig, Started
from pusa_batch.engine.run import run
from pusa_batch.outputs.gallery import write_gallery
from pusa_batch.outputs.hf import export_hf
from pusa_batch.outputs.vbench import export_vbench
from pusa_batch.outputs.webdataset import export_webdataset
from pusa_batch.store.store import Store
from pusa_batch.video import decode_mp4

TINY = Path(__file__).resolve().parents[1] / "pipelines" / "tiny.toml"
MANIFEST = """id,task,prompt,image,num_frames,height,width,steps,seed
sun.1,t2v,a sunrise,,9,32,32,2,7
sun.2,t2v,a sunrise,,9,32,32,2,5
pic,i2v,a moving picture,pic.png,9,32,32,2,4
"""


@pytest.fixture(scope="module")
def output(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("engine")
    (folder / "manifest.csv").write_text(MANIFEST)
    image = write_png(folder / "pic.png", 1)
    config = RunConfig(
        manifest=str(folder / "manifest.csv"),
        output=str(folder / "out"),
        pipeline=str(TINY),
        workers=1,
        max_retries=0,
        status_every_s=0.2,
    )

    def break_image_once_planned(event) -> None:  # so the item fails inside the worker
        if isinstance(event, Started):
            image.write_bytes(image.read_bytes()[:40])

    run(config, break_image_once_planned)
    return folder / "out"


def test_hf_export_of_a_real_run_matches_the_videos(output, tmp_path):
    summary = export_hf(Store(str(output)), tmp_path)
    rows = {r["id"]: r for r in pq.read_table(tmp_path / "metadata.parquet").to_pylist()}
    assert set(rows) == {"sun.1", "sun.2"} and summary.exported == 2
    for row in rows.values():
        frames, fps = decode_mp4(tmp_path / row["file_name"])
        assert (frames.shape[0], frames.shape[1], frames.shape[2]) == (row["frames"], 32, 32)
        assert row["pipeline"] == "tiny" and row["steps"] == 2 and row["sample_s"] > 0


def test_vbench_export_of_a_real_run_orders_by_seed(output, tmp_path):
    export_vbench(Store(str(output)), tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "vbench_map.jsonl").read_text().splitlines()]
    assert [(r["file_name"], r["id"]) for r in rows] == [
        ("a sunrise-0.mp4", "sun.2"),
        ("a sunrise-1.mp4", "sun.1"),
    ]


def test_webdataset_export_of_a_real_run(output, tmp_path):
    summary = export_webdataset(Store(str(output)), tmp_path)
    with tarfile.open(tmp_path / summary.files[0]) as tar:
        names = sorted(tar.getnames())
    assert names == ["sun%2E1.json", "sun%2E1.mp4", "sun%2E2.json", "sun%2E2.mp4"]


def test_gallery_of_a_real_run_shows_the_failure(output):
    summary = write_gallery(Store(str(output)))
    page = (output / "gallery.html").read_text()
    assert (summary.done, summary.failed) == (2, 1)
    assert 'data-id="pic"' in page and 'data-status="failed"' in page
