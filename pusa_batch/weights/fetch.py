"""One remote file into its blob: parallel ranged reads into a `.part`, resumed after an
interruption, verified before it is renamed into place.

The `.part` is written chunk by chunk (64 MiB by default) by up to `parallel` threads; after each
chunk the `.part.json` record lists the chunks written. A later attempt trusts a recorded chunk
only if the `.part` still reaches its end, and fetches the rest with range reads. Nothing is used
before it passes: the file's version is still the listed one (one HEAD), then `verify`: the size
the listing gave, the sha256 where a checksum file records one, and for `.safetensors` that the
header's last tensor ends exactly at the end of the file.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from pusa_batch.errors import WeightsError
from pusa_batch.weights.cache import CacheLayout, read_json, write_json
from pusa_batch.weights.remote import Reader, RemoteFile

MIB = 1024**2
MAX_HEADER_BYTES = 100_000_000  # as models.loading.read_safetensors_header


@dataclass(frozen=True)
class Chunks:
    size: int
    chunk: int

    @property
    def count(self) -> int:
        return math.ceil(self.size / self.chunk)

    def span(self, index: int) -> tuple[int, int]:
        start = index * self.chunk
        return start, min(self.size, start + self.chunk)

    def bytes_of(self, indices: set[int]) -> int:
        return sum(end - start for start, end in map(self.span, indices))


def written_chunks(record: dict | None, part: Path, chunks: Chunks) -> set[int]:
    """Chunks the record lists whose bytes the `.part` still holds (it may have been cut)."""
    if not record or record.get("size") != chunks.size or record.get("chunk") != chunks.chunk:
        return set()
    try:
        have = part.stat().st_size
    except OSError:
        return set()
    listed = {i for i in record.get("done", []) if isinstance(i, int) and 0 <= i < chunks.count}
    return {i for i in listed if chunks.span(i)[1] <= have}


def recorded_bytes(layout: CacheLayout, key: str) -> int:
    """Bytes another process has written into `key`'s `.part` so far (0 if none)."""
    record = read_json(layout.sibling(key, ".part.json"))
    if not record or not record.get("chunk"):
        return 0
    chunks = Chunks(int(record.get("size", 0)), int(record["chunk"]))
    return chunks.bytes_of(written_chunks(record, layout.sibling(key, ".part"), chunks))


def fetch_blob(
    reader: Reader,
    layout: CacheLayout,
    key: str,
    *,
    chunk_bytes: int,
    parallel: int,
    sha256: tuple[str, str] | None,
    on_bytes: Callable[[int], None],
    on_verify: Callable[[], None] = lambda: None,
) -> Path:
    """Fetch `reader.file` into `layout.blob(key)` (the caller holds the key's lock).

    `sha256` is (hex digest, the checksum file that gives it) or None. `on_bytes(n)` is called
    as chunks land, including once for the bytes a resumed `.part` already held; `on_verify()`
    before a sha256 is computed.
    """
    file = reader.file
    part, record_path = layout.sibling(key, ".part"), layout.sibling(key, ".part.json")
    record = read_json(record_path)
    chunk = int(record["chunk"]) if record and record.get("size") == file.size else chunk_bytes
    chunks = Chunks(file.size, max(1, chunk))
    done = written_chunks(record, part, chunks)
    if done:
        on_bytes(chunks.bytes_of(done))
    missing = [i for i in range(chunks.count) if i not in done]
    part.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(part, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        with ThreadPoolExecutor(max_workers=max(1, min(parallel, len(missing)))) as pool:
            futures = [pool.submit(_fetch_chunk, reader, fd, chunks, i) for i in missing]
            try:
                for future in as_completed(futures):
                    index = future.result()
                    done.add(index)
                    record = {"size": file.size, "chunk": chunks.chunk, "done": sorted(done)}
                    write_json(record_path, record)
                    on_bytes(chunks.bytes_of({index}))
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
        os.fsync(fd)
    finally:
        os.close(fd)
    if sha256 is not None:
        on_verify()
    try:
        if reader.version_now() != file.version:
            raise WeightsError(
                f"{file.url}: changed while it was staged (its version is no longer "
                f"{file.version or 'the listed one'}); stage again"
            )
        digest = verify(part, file, sha256)
    except WeightsError:
        part.unlink(missing_ok=True)  # its bytes are what the remote holds: no use resuming
        record_path.unlink(missing_ok=True)
        raise
    blob = layout.blob(key)
    os.replace(part, blob)
    facts = {"url": str(file.url), "version": file.version, "size": file.size, "sha256": digest}
    facts["mtime_ns"] = blob.stat().st_mtime_ns  # a write into the cached file changes it
    write_json(layout.sibling(key, ".json"), facts)
    record_path.unlink(missing_ok=True)
    return blob


def _fetch_chunk(reader: Reader, fd: int, chunks: Chunks, index: int) -> int:
    start, end = chunks.span(index)
    data = reader.read(start, end)
    os.pwrite(fd, data, start)
    return index


def verify(path: Path, file: RemoteFile, sha256: tuple[str, str] | None) -> str | None:
    """Raise `WeightsError` naming the file unless `path` holds it whole; the sha256 checked."""
    size = path.stat().st_size
    if size != file.size:
        raise WeightsError(
            f"{file.url}: size mismatch: {size} bytes staged, the listing says {file.size}; the "
            "file changed while it was staged: stage again"
        )
    if file.rel.endswith(".safetensors"):
        check_safetensors_end(path, file)
    if sha256 is None:
        return None
    want, where = sha256
    got = file_sha256(path)
    if got != want:
        raise WeightsError(
            f"{file.url}: sha256 mismatch: {got}, where {where} says {want}; the remote file "
            "is damaged or the checksum file is stale: upload the file (or its checksum) again"
        )
    return got


def check_safetensors_end(path: Path, file: RemoteFile) -> None:
    with path.open("rb") as fh:
        header = parse_header(fh.read(8), fh.read, file)
    end = 8 + header_length(header) + data_end(header, file)
    if end != file.size:
        raise WeightsError(
            f"{file.url}: size mismatch: its safetensors header places the data's end at byte "
            f"{end}, the file has {file.size}; it is truncated or damaged: upload it again"
        )


def header_length(header: dict) -> int:
    return int(header["__length__"])


def data_end(header: dict, file: RemoteFile | None = None) -> int:
    """Where the last tensor's bytes end, counted from the end of the header."""
    try:
        ends = [int(v["data_offsets"][1]) for k, v in header.items() if not k.startswith("__")]
    except (KeyError, TypeError, IndexError, ValueError) as e:
        where = file.url if file is not None else "safetensors file"
        raise WeightsError(f"{where}: corrupt safetensors header (a tensor without offsets)") from e
    return max(ends, default=0)


def parse_header(first8: bytes, read: Callable[[int], bytes], file: RemoteFile) -> dict:
    """A safetensors header from its first 8 bytes (little-endian u64 length N) and `read(N)`;
    the length is kept under `__length__`."""
    if len(first8) != 8:
        raise WeightsError(f"{file.url}: too short to be a safetensors file")
    (length,) = struct.unpack("<Q", first8)
    if length > MAX_HEADER_BYTES or 8 + length > file.size:
        raise WeightsError(f"{file.url}: not a safetensors file (bad header length {length})")
    try:
        header = json.loads(read(length))
    except ValueError as e:
        raise WeightsError(f"{file.url}: corrupt safetensors header ({e})") from e
    if not isinstance(header, dict):
        raise WeightsError(f"{file.url}: corrupt safetensors header (not a JSON object)")
    header["__length__"] = length
    return header


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(8 * MIB):
            digest.update(block)
    return digest.hexdigest()
