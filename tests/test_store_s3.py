"""The store against a real S3 API (moto_server on localhost), plus the `s3` fixture.

The session-scoped `s3` fixture lives in conftest.py.
"""

from __future__ import annotations

import json
import logging
import uuid

import pytest
from conftest import BUCKET
from store_support import planned

from pusa_batch.errors import StoreError
from pusa_batch.store.store import Store


def s3_root() -> str:
    return f"s3://{BUCKET}/{uuid.uuid4().hex[:10]}"


def test_commit_is_visible_through_a_second_client(s3):
    writer = Store(s3_root(), s3.storage_options)
    writer.commit("a", b"video-bytes", {"fingerprint": "f1"})
    reader = Store(writer.url, dict(s3.storage_options, skip_instance_cache=True))
    assert planned(reader, [("a", "f1")]).done == ("a",)
    with reader.open_video("a") as handle:
        assert handle.read() == b"video-bytes"


def test_a_marker_written_by_another_client_is_seen_despite_listing_caches(s3):
    reader = Store(s3_root(), s3.storage_options)
    assert planned(reader, [("a", "f1")]).pending == ("a",)  # fills s3fs's listing cache
    writer = Store(reader.url, dict(s3.storage_options, skip_instance_cache=True))
    writer.commit("a", b"v", {"fingerprint": "f1"})
    assert planned(reader, [("a", "f1")]).done == ("a",)


def test_the_lease_uses_exclusive_create_so_a_second_run_is_refused(s3):
    first = Store(s3_root(), s3.storage_options)
    second = Store(first.url, dict(s3.storage_options, skip_instance_cache=True))
    lease = first.acquire_lease({"run_id": "one"})
    with pytest.raises(StoreError, match="run_id.*one"):
        second.acquire_lease({"run_id": "two"})
    lease.release()
    second.acquire_lease({"run_id": "two"}).release()


def test_credentials_never_reach_files_repr_logs_or_errors(s3, caplog):
    fake_key, fake_secret = "AKIAFAKEKEY0001", "fake/secret+Value0002"
    options = dict(s3.storage_options, key=fake_key, secret=fake_secret)
    url = s3_root()
    caplog.set_level(logging.DEBUG, logger="pusa_batch")
    store = Store(url, options)
    store.commit("a", b"v", {"fingerprint": "f1", "prompt": "p"})
    store.record_failure("b", {"error_type": "OOM", "message": "boom"})
    store.write_run_info({"run_id": "r"})
    store.acquire_lease({"run_id": "r"})
    store.compact_index()
    store.write_final_index()
    with pytest.raises(StoreError) as refused:
        store.acquire_lease({"run_id": "other"})
    with pytest.raises(StoreError) as bad_metadata:
        store.commit("c", b"v", {"fingerprint": object()})

    fs = store.root.fs
    contents = b"".join(fs.cat_file(p) for p in fs.find(store.root.root))
    texts = [
        contents.decode("latin-1"),
        repr(store),
        store.url,
        str(refused.value),
        str(bad_metadata.value),
        "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("pusa_batch")),
        json.dumps(store.read_item("a")),
    ]
    for text in texts:
        assert fake_key not in text and fake_secret not in text
    assert repr(store) == f"Store('{url}')"
