"""Replace one small file only if it is still the version a caller read (compare-and-swap).

What a version is, and what makes the swap atomic, by backend (`guarantee(root)`):
- "s3": the ETag, read from the same GET as the body; the swap is a PutObject with `If-Match`
  (412 PreconditionFailed or 409 ConditionalRequestConflict: another writer got there first);
- "gcs": the generation, read from the same GET as the body; the swap is a multipart upload
  with `ifGenerationMatch` (412);
- "local": a digest of the content; a writer first creates a claim on that version
  exclusively (a hard link, `.tmp/<name>.claim-<version>-<n>`), re-reads the file, then renames
  its new content over it, so of two writers of the same version exactly one wins. A claim left
  by a writer that died in between (its process is gone, or it is `CLAIM_STALE_S` old) is
  superseded by claim n+1;
- "none" (memory and other fsspec filesystems): check, then write. Not atomic: two writers can
  both pass the check, and the last write wins.

A lost swap raises `VersionChanged`, a FileExistsError, so `Root.call` passes it through
untouched and never retries it.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import time
from dataclasses import dataclass
from typing import Any

import fsspec.asyn

from pusa_batch.store.gcs import GCS_PROTOCOLS, upload_if_generation
from pusa_batch.store.holder import holder_is_gone, this_process
from pusa_batch.store.io import TMP_DIR, Root

S3_PROTOCOLS = frozenset({"s3", "s3a"})
CLAIM_STALE_S = 30.0  # a claim is held for milliseconds; one this old was left by a dead writer
MAX_CLAIMS = 8  # claims per version: each one past the first needs the one before abandoned
_LOST_RACE_CODES = frozenset({"PreconditionFailed", "ConditionalRequestConflict"})


class VersionChanged(FileExistsError):
    """The file is no longer the version the caller read: another writer got there first."""


@dataclass(frozen=True)
class Versioned:
    data: bytes
    version: str


def guarantee(root: Root) -> str:
    """How `replace_if` is made atomic on this root: "s3", "gcs", "local" or "none"."""
    if S3_PROTOCOLS & root.protocols:
        return "s3"
    if GCS_PROTOCOLS & root.protocols:
        return "gcs"
    return "local" if root.is_local else "none"


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:32]


def read_versioned(root: Root, rel: str) -> Versioned | None:
    """The file's bytes and their version, from one read; None if there is no such file."""
    kind = guarantee(root)
    path = root.path(rel)
    try:
        if kind == "s3":
            return root.call("read", rel, lambda: _s3_get(root.fs, path))
        if kind == "gcs":
            return root.call("read", rel, lambda: _gcs_get(root.fs, path))
        data = root.read_bytes(rel)
    except FileNotFoundError:
        return None
    return Versioned(data, digest(data))


def replace_if(root: Root, rel: str, data: bytes, version: str) -> str:
    """Write `data` to `rel` only if the file is still `version`; return the new version.

    Raises VersionChanged if another writer replaced or deleted the file since it was read.
    """
    kind = guarantee(root)
    path = root.path(rel)
    if kind == "s3":
        return root.call("write", rel, lambda: _s3_put_if(root.fs, path, data, version))
    if kind == "gcs":
        return root.call("write", rel, lambda: _gcs_put_if(root.fs, path, data, version))
    if kind == "local":
        return _local_replace_if(root, rel, data, version)
    current = read_versioned(root, rel)
    if current is None or current.version != version:
        raise VersionChanged(root.where(rel))
    root.write_bytes(rel, data)
    return digest(data)


# S3: one GET for body and ETag; PutObject with If-Match.
def _s3_get(fs: Any, path: str) -> Versioned:
    bucket, key, _ = fs.split_path(path)
    response = fs.call_s3("get_object", Bucket=bucket, Key=key)
    data = fsspec.asyn.sync(fs.loop, response["Body"].read)
    return Versioned(data, response["ETag"])


def _s3_put_if(fs: Any, path: str, data: bytes, etag: str) -> str:
    bucket, key, _ = fs.split_path(path)
    try:
        response = fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, IfMatch=etag)
    except FileNotFoundError:  # deleted since it was read (a release)
        raise VersionChanged(path) from None
    except OSError as exc:
        if _s3_lost_race(exc):
            raise VersionChanged(path) from None
        raise
    finally:
        fs.invalidate_cache(path)
    return response["ETag"]


def _s3_lost_race(exc: BaseException) -> bool:
    """A precondition that did not hold, from s3fs's translated error or botocore's own."""
    for err in (exc, exc.__cause__):
        response = getattr(err, "response", None)
        if isinstance(response, dict):
            code = response.get("Error", {}).get("Code")
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in _LOST_RACE_CODES or status == 412:
                return True
    return False


# GCS: one GET (alt=media) for body and generation; a multipart upload with ifGenerationMatch.
def _gcs_get(fs: Any, path: str) -> Versioned:
    bucket, key, _ = fs.split_path(path)
    headers, data = fs.call("GET", "b/{}/o/{}", bucket, key, alt="media")
    generation = headers.get("x-goog-generation") or headers.get("X-Goog-Generation")
    if not generation:  # pragma: no cover - every GCS media download carries it
        raise OSError(f"no x-goog-generation header on {path}")
    return Versioned(data, str(generation))


def _gcs_put_if(fs: Any, path: str, data: bytes, generation: str) -> str:
    try:
        return upload_if_generation(fs, path, data, generation)
    except (FileExistsError, FileNotFoundError):  # 412: replaced since; 404: deleted since
        raise VersionChanged(path) from None


# Local disk: an exclusive claim on the version read, then an atomic rename.
def _local_replace_if(root: Root, rel: str, data: bytes, version: str) -> str:
    claimed = _claim(root, rel, version)
    try:
        current = read_versioned(root, rel)
        superseded = root.size(_claim_name(rel, version, claimed + 1)) is not None
        if current is None or current.version != version or superseded:
            raise VersionChanged(root.where(rel))
        root.write_bytes(rel, data)  # a temporary file renamed over `rel`: never absent
    finally:
        root.delete_many(_claim_name(rel, version, n) for n in range(claimed + 1))
    return digest(data)


def _claim_name(rel: str, version: str, n: int) -> str:
    return f"{TMP_DIR}/{posixpath.basename(rel)}.claim-{version}-{n}"


def _claim(root: Root, rel: str, version: str) -> int:
    """Create the first free claim on `version`; return its number, or raise VersionChanged
    when a live writer holds one (it is replacing that version now)."""
    me = json.dumps({**this_process(), "claimed_unix": time.time()}).encode()
    n, attempts = 0, 0
    while n < MAX_CLAIMS and attempts < 4 * MAX_CLAIMS:
        attempts += 1
        name = _claim_name(rel, version, n)
        try:
            root.create_exclusive(name, me)
            return n
        except FileExistsError:
            pass
        holder = _read_claim(root, name)
        if holder is None:  # released between our create and our read: try it again
            continue
        if not _abandoned(holder):
            raise VersionChanged(root.where(rel))
        n += 1
    raise VersionChanged(root.where(rel))


def _read_claim(root: Root, name: str) -> dict | None:
    try:
        data = root.read_bytes(name)
    except FileNotFoundError:
        return None
    try:
        holder = json.loads(data)
    except ValueError:
        return {"claimed_unix": 0}
    return holder if isinstance(holder, dict) else {"claimed_unix": 0}


def _abandoned(holder: dict) -> bool:
    try:
        age = time.time() - float(holder.get("claimed_unix", 0))
    except (TypeError, ValueError):
        age = CLAIM_STALE_S
    return holder_is_gone(holder) or age >= CLAIM_STALE_S
