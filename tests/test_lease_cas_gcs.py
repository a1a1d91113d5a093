"""The compare-and-swap's calls on GCS, against fake-gcs-server through gcsfs: one GET gives
the body and its generation, a write lands only on the generation read (or, to create, on none),
and S3's error codes for a lost race."""

from __future__ import annotations

import uuid

import pytest
from botocore.exceptions import ClientError
from conftest import BUCKET
from s3fs.errors import translate_boto_error

from pusa_batch.store.conditional import (
    VersionChanged,
    _s3_lost_race,
    guarantee,
    read_versioned,
    replace_if,
)
from pusa_batch.store.io import Root
from pusa_batch.store.store import Store


@pytest.fixture
def root(gcs) -> Root:
    """A fresh output root on the GCS server, its lease.json an old record."""
    store = Store(f"gs://{BUCKET}/{uuid.uuid4().hex[:10]}", gcs.storage_options)
    store.root.write_bytes("lease.json", b"stale record")
    return store.root


def server_generation(root: Root, rel: str) -> str:
    return str(root.fs.info(root.path(rel), refresh=True)["generation"])


def test_gcs_reads_the_body_and_its_generation_together(root):
    assert guarantee(root) == "gcs"
    read = read_versioned(root, "lease.json")
    assert read.data == b"stale record"
    assert read.version == server_generation(root, "lease.json")


def test_gcs_replaces_the_generation_read_and_returns_the_new_one(root):
    stale = read_versioned(root, "lease.json")
    new_version = replace_if(root, "lease.json", b"first taker", stale.version)
    assert new_version == server_generation(root, "lease.json") != stale.version
    assert root.read_bytes("lease.json") == b"first taker"


def test_of_two_gcs_takers_of_one_generation_the_second_loses(root):
    stale = read_versioned(root, "lease.json")
    replace_if(root, "lease.json", b"first taker", stale.version)
    with pytest.raises(VersionChanged):
        replace_if(root, "lease.json", b"second taker", stale.version)
    assert root.read_bytes("lease.json") == b"first taker"


def test_a_gcs_object_deleted_since_it_was_read_is_not_written_back(root):
    read = read_versioned(root, "lease.json")
    root.fs.rm(root.path("lease.json"))
    with pytest.raises(VersionChanged):
        replace_if(root, "lease.json", b"late taker", read.version)
    assert read_versioned(root, "lease.json") is None


def test_an_exclusive_create_on_gcs_refuses_an_existing_object(root):
    root.create_exclusive("part.parquet", b"first")
    with pytest.raises(FileExistsError):
        root.create_exclusive("part.parquet", b"second")
    with pytest.raises(FileExistsError):
        root.create_exclusive("lease.json", b"over the old record")
    assert root.read_bytes("part.parquet") == b"first"
    assert root.read_bytes("lease.json") == b"stale record"


@pytest.mark.parametrize(
    ("code", "status"), [("PreconditionFailed", 412), ("ConditionalRequestConflict", 409)]
)
def test_s3_precondition_failures_as_s3fs_raises_them_are_a_lost_race(code, status):
    response = {
        "Error": {"Code": code, "Message": "no"},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    assert _s3_lost_race(translate_boto_error(ClientError(response, "PutObject")))


def test_other_s3_errors_are_not_a_lost_race():
    response = {"Error": {"Code": "AccessDenied"}, "ResponseMetadata": {"HTTPStatusCode": 403}}
    assert not _s3_lost_race(translate_boto_error(ClientError(response, "PutObject")))
