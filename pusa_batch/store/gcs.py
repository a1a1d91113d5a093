"""GCS uploads with a generation precondition: one multipart request to the JSON API.

`ifGenerationMatch=N` writes only if the object's generation is still N, and `0` only if there is
no object. GCS honours it on every upload type; fake-gcs-server, the emulator the tests run
against, only on multipart ones, and gcsfs's own exclusive mode (`open(..., "xb")`, experimental
by its docs) goes through a resumable upload. So our conditional writes build the request
themselves, the way gcsfs builds its simple uploads.
"""

from __future__ import annotations

import json
from typing import Any

GCS_PROTOCOLS = frozenset({"gs", "gcs"})
NO_OBJECT = "0"  # the generation to match for "create only"
_BOUNDARY = "pusa-batch-upload"


def multipart_body(key: str, data: bytes) -> bytes:
    """The object's metadata (its name), then its bytes."""
    head = (
        f"--{_BOUNDARY}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n"
        f"{json.dumps({'name': key})}\r\n"
        f"--{_BOUNDARY}\r\nContent-Type: application/octet-stream\r\n\r\n"
    )
    return head.encode() + data + f"\r\n--{_BOUNDARY}--".encode()


def upload_if_generation(fs: Any, path: str, data: bytes, generation: str) -> str:
    """Write `data` to `path` (a gcsfs path) only if its generation is `generation`; the new
    generation. A failed precondition raises FileExistsError (gcsfs's mapping of HTTP 412)."""
    bucket, key, _ = fs.split_path(path)
    location = getattr(fs, "_location", "https://storage.googleapis.com")
    try:
        uploaded = fs.call(
            "POST",
            location + "/upload/storage/v1/b/{}/o",
            bucket,
            uploadType="multipart",
            ifGenerationMatch=generation,
            headers={"Content-Type": f'multipart/related; boundary="{_BOUNDARY}"'},
            data=multipart_body(key, data),
            json_out=True,
        )
    finally:
        fs.invalidate_cache(path)
    return str(uploaded["generation"])
