"""`pusa-batch verify OUT [--checksums] [--repair]` as a user runs it: a missing root, a video
overwritten with as many bytes, done items the index lost, a part of a foreign schema."""

from __future__ import annotations

import io
import json
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import BUCKET

from pusa_batch.cli.main import main
from pusa_batch.store.store import Store


def committed(url: str, storage_options: dict | None = None) -> Store:
    """a and b committed and compacted into one part."""
    store = Store(url, storage_options)
    for item_id in ("a", "b"):
        store.commit(item_id, b"video " + item_id.encode(), {"fingerprint": "f"})
    store.compact_index()
    return store


@pytest.fixture
def root(tmp_path) -> Store:
    return committed(str(tmp_path / "out"))


def overwrite_same_size(store: Store, item_id: str) -> None:
    size = store.root.size(f"videos/{item_id}.mp4")
    store.root.write_bytes(f"videos/{item_id}.mp4", b"x" * size)


def drop_parts(store: Store) -> None:
    for name in store.root.list_names("index"):
        store.root.delete(f"index/{name}")


def test_a_root_that_does_not_exist_is_exit_2(tmp_path, capsys):
    assert main(["verify", str(tmp_path / "no-such-run")]) == 2
    assert "no output root at" in capsys.readouterr().err
    assert not (tmp_path / "no-such-run").exists()


def test_checksums_find_a_video_overwritten_with_as_many_bytes(root, capsys):
    overwrite_same_size(root, "b")
    assert main(["verify", root.url, "--checksums"]) == 1
    assert "b: video's sha256 differs from the recorded one" in capsys.readouterr().err


def test_repair_drops_an_overwritten_video_so_the_next_run_makes_it_again(root):
    overwrite_same_size(root, "b")
    main(["verify", root.url, "--checksums", "--repair"])
    assert root.root.size("videos/b.mp4") is None and root.state().done_ids() == {"a"}


def test_done_items_the_index_lost_are_reported(root, capsys):
    drop_parts(root)
    assert main(["verify", root.url]) == 1
    assert "2 done item(s) found from their markers, missing from the index" in (
        capsys.readouterr().err
    )


def test_repair_indexes_the_lost_items_again(root):
    drop_parts(root)
    assert main(["verify", root.url, "--repair"]) == 0
    state = root.state()
    assert state.rebuilt == {} and state.done_ids() == {"a", "b"}


def test_a_part_of_a_foreign_schema_is_reported_not_a_traceback(root, capsys):
    sink = io.BytesIO()
    pq.write_table(pa.table({"x": [1]}), sink)
    root.root.write_bytes("index/part-000009-t0.parquet", sink.getvalue())
    assert main(["verify", root.url]) == 1
    assert "unreadable index part(s): index/part-000009-t0.parquet" in capsys.readouterr().err


def test_on_s3_checksums_find_a_video_overwritten_with_as_many_bytes(s3, capsys):
    url = f"s3://{BUCKET}/{uuid.uuid4().hex[:10]}"
    store = committed(url, s3.storage_options)
    overwrite_same_size(store, "a")
    options = [f"--storage-option={k}={json.dumps(v)}" for k, v in s3.storage_options.items()]
    assert main(["verify", url, "--checksums", *options]) == 1
    assert "a: video's sha256 differs" in capsys.readouterr().err
