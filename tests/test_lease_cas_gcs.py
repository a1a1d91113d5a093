"""The compare-and-swap's calls on GCS and S3 error codes, without a GCS server.

`GcsJsonApi` keeps objects and generations the way the GCS JSON API does and answers gcsfs's
`call()` as gcsfs would: a media GET returns the body with `x-goog-generation`, an upload with
`ifGenerationMatch` that does not hold raises FileExistsError (gcsfs's mapping of 412).
"""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError
from s3fs.errors import translate_boto_error

from pusa_batch.store.conditional import (
    VersionChanged,
    _s3_lost_race,
    guarantee,
    read_versioned,
    replace_if,
)
from pusa_batch.store.io import RetryPolicy, Root

UPLOAD = "https://storage.googleapis.com/upload/storage/v1/b/{}/o"


class GcsJsonApi:
    protocol = ("gs", "gcs")
    _location = "https://storage.googleapis.com"

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], tuple[bytes, int]] = {}
        self.next_generation = 1700000000000001
        self.requests: list[tuple[str, str, dict]] = []

    def split_path(self, path: str) -> tuple[str, str, None]:
        bucket, _, key = path.partition("/")
        return bucket, key, None

    def invalidate_cache(self, path: str | None = None) -> None:
        pass

    def call(self, method: str, path: str, *args, json_out=False, **kwargs):
        self.requests.append((method, path.format(*args), kwargs))
        if method == "GET" and path == "b/{}/o/{}" and kwargs.get("alt") == "media":
            if tuple(args) not in self.objects:
                raise FileNotFoundError(args)
            data, generation = self.objects[tuple(args)]
            return {"X-Goog-Generation": str(generation)}, data
        if method == "POST" and path == UPLOAD and kwargs.get("uploadType") == "media":
            key = (args[0], kwargs["name"])
            wanted = kwargs.get("ifGenerationMatch")
            current = self.objects.get(key, (b"", 0))[1]
            if wanted is not None and int(wanted) != current:
                raise FileExistsError(key)  # gcsfs: HTTP 412 precondition failed
            self.objects[key] = (kwargs["data"], self.next_generation)
            self.next_generation += 1
            assert json_out
            return {"name": key[1], "generation": str(self.objects[key][1])}
        raise AssertionError(f"a request GCS would not get: {method} {path} {kwargs}")


@pytest.fixture
def gcs() -> tuple[Root, GcsJsonApi]:
    api = GcsJsonApi()
    api.objects[("bkt", "run/lease.json")] = (b"stale record", 1700000000000000)
    return Root(api, "bkt/run", "gs://bkt/run", RetryPolicy(attempts=1)), api


def test_gcs_reads_body_and_generation_from_one_get(gcs):
    root, api = gcs
    assert guarantee(root) == "gcs"
    assert read_versioned(root, "lease.json").version == "1700000000000000"
    assert [r[:2] for r in api.requests] == [("GET", "b/bkt/o/run/lease.json")]


def test_gcs_replaces_only_the_generation_read(gcs):
    root, api = gcs
    stale = read_versioned(root, "lease.json")
    new_version = replace_if(root, "lease.json", b"first taker", stale.version)
    method, path, params = api.requests[-1]
    assert (method, path, params["ifGenerationMatch"]) == (
        "POST",
        UPLOAD.format("bkt"),
        stale.version,
    )
    assert read_versioned(root, "lease.json").version == new_version != stale.version


def test_of_two_gcs_takers_of_one_generation_the_second_loses(gcs):
    root, api = gcs
    stale = read_versioned(root, "lease.json")
    replace_if(root, "lease.json", b"first taker", stale.version)
    with pytest.raises(VersionChanged):
        replace_if(root, "lease.json", b"second taker", stale.version)
    assert api.objects[("bkt", "run/lease.json")][0] == b"first taker"


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
