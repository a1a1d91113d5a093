"""Header twins, for `doctor`: a remote source checked without downloading its weights.

A twin is a local folder laid out as the source, holding its small files whole (configs,
indexes, tokenizers: fetched once into the cache, where a later run finds them) and each
`.safetensors` file as its header only: two range reads (the 8-byte length N, then N bytes of
JSON), written at the start of a sparse file cut to the remote size, so the doctor's header
reader and its truncation check see what the remote file holds. Tensor data are never read.
Weights in torch's formats have no header to read by range: a `.pt` that is the source itself
(a LoRA, a DiT file) is staged whole; those inside a folder are left out.

Twins live under `<cache>/headers/` and are never given to a loader. Where the same listing has
been staged already, the staged tree is used instead.
"""

from __future__ import annotations

from pathlib import Path

from pusa_batch.weights.cache import file_lock, link_into, publish, sizes_match, tree_key
from pusa_batch.weights.fetch import parse_header
from pusa_batch.weights.prune import record_use
from pusa_batch.weights.remote import Reader, RemoteFile, Source
from pusa_batch.weights.staging import (
    SourceRequest,
    StagingConfig,
    Tally,
    ensure_blob,
    list_for,
    local_path,
)

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


def header_twin(request: SourceRequest, config: StagingConfig) -> Path:
    """The local path doctor reads for `request`: its staged tree when there is one, else its
    header twin (built on first use). Raises `WeightsError` naming the URL."""
    source = list_for(request, config)
    layout = config.layout()
    key = tree_key(source, config.endpoint_for(source.url))
    sizes = [(f.rel, f.size) for f in source.files]
    if layout.tree(key).is_dir() and sizes_match(layout.tree(key), sizes):
        return local_path(layout.tree(key), source)
    twin = layout.headers(key)
    with file_lock(twin.with_name(twin.name + ".lock")):
        if not twin.is_dir():
            publish(lambda tmp: _build(source, config, tmp), twin)
        record_use(layout, "headers", key, str(source.url))
    return local_path(twin, source)


def _build(source: Source, config: StagingConfig, tmp: Path) -> None:
    tally = Tally(0, 0, None)
    for file in source.files:
        target = tmp / file.rel
        if file.rel.endswith(".safetensors"):
            write_header_only(Reader(file, config.options_for(file.url)), target)
        elif not file.rel.endswith(TORCH_SUFFIXES) or (source.is_file and file is source.files[0]):
            link_into(ensure_blob(file, config, None, tally), target)


def write_header_only(reader: Reader, target: Path) -> None:
    """The safetensors header of `reader.file` at the start of a sparse file of its size."""
    file: RemoteFile = reader.file
    first8 = reader.read(0, 8)
    read: list[bytes] = []
    parse_header(first8, lambda n: read.append(reader.read(8, 8 + n)) or read[0], file)
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("wb") as out:
        out.write(first8 + read[0])
        out.truncate(file.size)  # a hole: no disk used past the header
