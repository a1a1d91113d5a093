"""WebDataset export: tar shards ``shard-{n:06d}.tar`` of ``{key}.mp4`` + ``{key}.json``.

Records, destinations and copies come from `common.py`, as for the other exports.
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
from dataclasses import dataclass
from datetime import datetime

from pusa_batch.errors import ExportError, StoreError
from pusa_batch.outputs.common import (
    Destination,
    ExportSummary,
    done_markers,
    item_fields,
    item_record,
    open_destination,
    ordered_map,
)
from pusa_batch.store.store import Store

SHARD_PATTERN = re.compile(r"^shard-(\d{6})\.tar$")

_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*([kmgt]?)(i?)b?\s*$", re.IGNORECASE)


def parse_size(text: str | int) -> int:
    """Bytes in "1GB", "500MB", "100KB", "1.5G", "64MiB" or "1000": K/M/G/T are SI (powers of
    1000), KiB/MiB/GiB/TiB are IEC (powers of 1024); case and the trailing B do not matter."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        match = _SIZE.match(str(text))
        if not match or (match.group(3) and not match.group(2)):
            raise ExportError(
                f"cannot read the size {text!r}: write a number with an optional unit, "
                "e.g. 1GB, 500MB, 100KB (SI) or 1GiB, 512MiB (IEC)"
            )
        prefix = match.group(2).lower()
        scale = 1024 ** "_kmgt".index(prefix) if match.group(3) else _UNITS[prefix]
        value = int(float(match.group(1)) * scale)
    if value < 1:
        raise ExportError(f"the size {text!r} must be at least 1 byte")
    return value


def wds_key(item_id: str) -> str:
    """The sample key of an id: WebDataset splits a file name at its first dot, so ``%`` becomes
    ``%25`` and ``.`` becomes ``%2E`` (reversible; the json holds the id as it is)."""
    return item_id.replace("%", "%25").replace(".", "%2E")


def _tar_info(name: str, size: int, mtime: float) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, mtime, 0o644
    return info


def _member_bytes(info: tarfile.TarInfo) -> int:
    header = len(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
    return header + -(-info.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE


def tar_file_size(member_bytes: int) -> int:
    """Size of a tar file whose members take `member_bytes`: two zero blocks, whole records."""
    end = member_bytes + 2 * tarfile.BLOCKSIZE
    return -(-end // tarfile.RECORDSIZE) * tarfile.RECORDSIZE


def plan_shards(sample_bytes: list[int], limit: int) -> list[list[int]]:
    """Group sample indices into shards whose tar file stays within `limit` bytes."""
    shards: list[list[int]] = []
    used = 0
    for index, size in enumerate(sample_bytes):
        if shards and tar_file_size(used + size) <= limit:
            shards[-1].append(index)
            used += size
        else:
            shards.append([index])
            used = size
    return shards


@dataclass(frozen=True)
class _Sample:
    marker: dict
    key: str
    json: bytes
    mtime: float

    def members(self) -> tuple[tarfile.TarInfo, tarfile.TarInfo]:
        return (
            _tar_info(f"{self.key}.mp4", self.marker["video_bytes"], self.mtime),
            _tar_info(f"{self.key}.json", len(self.json), self.mtime),
        )

    def size(self) -> int:
        return sum(_member_bytes(m) for m in self.members())


def _sample(marker: dict) -> _Sample:
    try:
        mtime = datetime.fromisoformat(marker["committed_at"]).timestamp()
    except (KeyError, TypeError, ValueError):
        mtime = 0.0
    fields = item_record(marker)
    extra = item_fields(marker).get("extra")
    if extra:  # the user's own manifest columns, as the item carries them
        fields["extra"] = extra
    record = json.dumps(fields, ensure_ascii=False, sort_keys=True).encode()
    return _Sample(marker, wds_key(marker["id"]), record, mtime)


def _read_video(store: Store, sample: _Sample) -> bytes:
    with store.open_video(sample.marker["id"]) as handle:
        data = handle.read()
    if len(data) != sample.marker["video_bytes"]:
        raise StoreError(
            f"the video of item {sample.marker['id']!r} changed during the export "
            f"({len(data)} bytes, marker says {sample.marker['video_bytes']}); rerun the export "
            "once no run writes to this output root"
        )
    return data


def _write_shard(store: Store, target: Destination, rel: str, samples: list[_Sample]) -> None:
    videos = ordered_map(lambda s: _read_video(store, s), samples)
    with (
        target.fs.open(target.path(rel), "wb") as out,
        tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar,
    ):
        for sample, video in zip(samples, videos, strict=True):
            video_info, json_info = sample.members()
            tar.addfile(video_info, io.BytesIO(video))
            tar.addfile(json_info, io.BytesIO(sample.json))


def export_webdataset(
    store: Store,
    dest: str | os.PathLike,
    shard_size: str | int = "1GB",
    *,
    storage_options: dict | None = None,
) -> ExportSummary:
    """Tar shards ``dest/shard-{n:06d}.tar`` of ``{key}.mp4`` + ``{key}.json``, ordered by id.

    Shards of an earlier export numbered past the new last one are deleted, so the folder
    always holds exactly this export.
    """
    limit = parse_size(shard_size)
    markers, skipped = done_markers(store)
    samples = [_sample(m) for m in markers]
    target = open_destination(dest, storage_options, store)
    names = []
    for number, indices in enumerate(plan_shards([s.size() for s in samples], limit)):
        names.append(f"shard-{number:06d}.tar")
        _write_shard(store, target, names[-1], [samples[i] for i in indices])
    _delete_stale_shards(target, set(names))
    return ExportSummary(
        format="webdataset",
        dest=target.display,
        exported=len(samples),
        bytes=sum(m["video_bytes"] for m in markers),
        skipped=skipped,
        files=tuple(names),
    )


def _delete_stale_shards(target: Destination, keep: set[str]) -> None:
    try:
        listed = target.fs.ls(target.root, detail=False)
    except FileNotFoundError:
        return
    for path in listed:
        name = os.path.basename(path.rstrip("/"))
        if SHARD_PATTERN.match(name) and name not in keep:
            target.fs.rm_file(path)
