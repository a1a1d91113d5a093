"""Hugging Face ``videofolder``: ``videos/{id}.mp4`` plus ``metadata.parquet``.

``file_name`` is relative to the metadata file, with flat columns (see ``HF_SCHEMA``). Parquet, not
JSON lines: pyarrow infers JSON types block by block, so a run whose first rows have no input
image breaks ``datasets``' JSON reader.
"""

from __future__ import annotations

import io
import os

import pyarrow as pa
import pyarrow.parquet as pq

from pusa_batch.outputs.common import (
    HF_SCHEMA,
    ExportSummary,
    copy_all,
    done_markers,
    item_record,
    open_destination,
)
from pusa_batch.store.index import video_path
from pusa_batch.store.store import Store

HF_METADATA = "metadata.parquet"


def hf_table(markers: list[dict]) -> pa.Table:
    rows = [{"file_name": video_path(m["id"]), **item_record(m)} for m in markers]
    return pa.Table.from_pylist(rows, schema=HF_SCHEMA)


def export_hf(
    store: Store, dest: str | os.PathLike | None = None, *, storage_options: dict | None = None
) -> ExportSummary:
    """A ``videofolder`` dataset: ``videos/{id}.mp4`` and ``metadata.parquet`` beside them.

    With ``dest=None`` only the metadata file is written, into the output root itself; load it
    with ``datasets.load_dataset("videofolder", data_dir=ROOT)``.
    """
    markers, skipped = done_markers(store)
    data = io.BytesIO()
    pq.write_table(hf_table(markers), data, compression="zstd")
    linked = 0
    if dest is None:
        store.root.write_bytes(HF_METADATA, data.getvalue())
        where = store.url
    else:
        target = open_destination(dest, storage_options)
        linked = copy_all(store, target, [(m, video_path(m["id"])) for m in markers])
        target.write(HF_METADATA, data.getvalue())
        where = target.display
    return ExportSummary(
        format="hf",
        dest=where,
        exported=len(markers),
        bytes=sum(m["video_bytes"] for m in markers),
        linked=linked,
        skipped=skipped,
        files=(HF_METADATA,),
    )
