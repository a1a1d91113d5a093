"""Big output roots written fast, for B4 and B10: a manifest of N t2v rows and a root whose first
rows are done, as a long run leaves it (helpers only: no benchmark here).

The done rows' index parts are written column-wise in the store's part form, with each row's
real fingerprint (computed as the plan computes it), in the tiers a run of compactions of
`PER_COMPACTION` items would have left (a base-FANOUT count of compactions). Videos and markers,
when asked for, are hard links to one file each (their sizes are what verification reads), so a
million of them take seconds.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from pusa_batch.manifest.read import chunk_fingerprints, iter_checked_chunks, plain_t2v_template
from pusa_batch.store.parts import FANOUT, FLAT_PREFIX, INDEX_DIR, part_name, table_bytes
from pusa_batch.store.store import Store

PER_COMPACTION = 200  # RunConfig.compact_every_items
VIDEO_BYTES = 16
MARKER_BYTES = 600  # what the parts record (and the linked marker files measure)
LINKS_PER_FILE = 60_000  # under ext4's 65,000 hard links per inode
COMMITTED_AT = "2026-01-01T00:00:00.000+00:00"


def item_id(n: int) -> str:
    return f"clip-{n:07d}"


def prompt(n: int) -> str:
    return f"a slow dolly shot of scene {n}, golden hour, 35mm film grain"


def write_manifest(path: Path, rows: int) -> None:
    """id, task, prompt, seed: one CSV, written column-wise."""
    numbers = np.arange(rows)
    ids = pc.binary_join_element_wise(
        "clip-", pc.utf8_lpad(pa.array(numbers).cast(pa.string()), 7, "0"), ""
    )
    prompts = pc.binary_join_element_wise(
        "a slow dolly shot of scene ",
        pa.array(numbers).cast(pa.string()),
        ", golden hour, 35mm film grain",
        "",
    )
    table = pa.table(
        {"id": ids, "task": pa.array(["t2v"] * rows), "prompt": prompts, "seed": numbers}
    )
    pacsv.write_csv(table, path)


def fingerprints(manifest: Path, spec, rows: int) -> pa.Array:
    """The fingerprints of the manifest's first `rows` rows, as the plan computes them."""
    identity = spec.identity()
    template = plain_t2v_template(identity)
    found: list[str] = []
    for chunk in iter_checked_chunks(str(manifest), spec, chunk_rows=65_536):
        wanted = min(chunk.n, rows - len(found))
        if wanted <= 0:
            break
        found += chunk_fingerprints(
            chunk,
            np.arange(wanted),
            identity,
            temporal_factor=spec.temporal_factor,
            template=template,
        )
    return pa.array(found, pa.string())


def tier_sizes(
    items: int, per_compaction: int = PER_COMPACTION, fanout: int = FANOUT
) -> list[tuple[int, int]]:
    """(tier, items) of each part a run of `items` items leaves, biggest first."""
    compactions, rest = divmod(items, per_compaction)
    sizes = []
    tier = 0
    while compactions:
        compactions, digit = divmod(compactions, fanout)
        sizes += [(tier, per_compaction * fanout**tier)] * digit
        tier += 1
    sizes = sorted(sizes, reverse=True)
    if rest:
        sizes.append((0, rest))
    return sizes


def part_rows(first: int, count: int, fps: pa.Array, marker_bytes: int) -> pa.Table:
    """Rows `first`..`first+count-1` in the store's part form (see store/parts.py)."""
    numbers = pa.array(np.arange(first, first + count))
    text = numbers.cast(pa.string())
    ids = pc.binary_join_element_wise("clip-", pc.utf8_lpad(text, 7, "0"), "")
    fingerprint = fps.slice(first, count)
    token = pc.binary_join_element_wise(
        "17000000000", pc.utf8_lpad(text, 9, "0"), "-000000000000", ""
    )
    video = pc.binary_join_element_wise("videos/", ids, ".mp4", "")
    sha = pc.utf8_reverse(fingerprint)
    prompts = pc.binary_join_element_wise(
        "a slow dolly shot of scene ", text, ", golden hour, 35mm film grain", ""
    )
    marker = pc.binary_join_element_wise(
        '{"commit_token": "',
        token,
        '", "committed_at": "' + COMMITTED_AT + '", "fingerprint": "',
        fingerprint,
        '", "id": "',
        ids,
        '", "item": {"prompt": "',
        prompts,
        '", "seed": ',
        text,
        ', "task": "t2v"}, "timings": {"decode_s": 4.1, "sample_s": 61.2}, "video": "',
        video,
        f'", "video_bytes": {VIDEO_BYTES}, "video_sha256": "',
        sha,
        '"}',
        "",
    )
    flat = {
        "prompt": prompts,
        "seed": numbers,
        "task": pa.array(["t2v"] * count),
        "nested_json": pa.array(
            ['{"item": {}, "timings": {"decode_s": 4.1, "sample_s": 61.2}}'] * count
        ),
    }
    columns = {
        "id": ids,
        "fingerprint": fingerprint,
        "video_bytes": pa.array(np.full(count, VIDEO_BYTES, dtype=np.int64)),
        "marker_bytes": pa.array(np.full(count, marker_bytes, dtype=np.int64)),
        "video": video,
        "video_sha256": sha,
        "committed_at": pa.array([COMMITTED_AT] * count),
        "commit_token": token,
        "marker_json": marker,
        **{FLAT_PREFIX + k: v for k, v in flat.items()},
    }
    return pa.table(columns)


def write_parts(store: Store, fps: pa.Array, marker_bytes: int = MARKER_BYTES) -> list[str]:
    """The done rows (0..len(fps)-1) as tiered parts; returns their paths."""
    written, first = [], 0
    for number, (tier, size) in enumerate(tier_sizes(len(fps)), start=1):
        rel = f"{INDEX_DIR}/{part_name(number, tier)}"
        store.root.write_bytes(rel, table_bytes(part_rows(first, size, fps, marker_bytes)))
        written.append(rel)
        first += size
    return written


def link_files(folder: Path, count: int, marker_bytes: int = MARKER_BYTES) -> None:
    """videos/{id}.mp4 and items/{id}.json for the first `count` ids, hard links to one file of
    the recorded size each."""
    for sub, suffix, size in (("videos", ".mp4", VIDEO_BYTES), ("items", ".json", marker_bytes)):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        source = None
        for n in range(count):
            if n % LINKS_PER_FILE == 0:
                source = folder / f".source-{sub}-{n}"
                source.write_bytes(b"\0" * size)
            os.link(source, folder / sub / f"{item_id(n)}{suffix}")


def commit_and_fail(store: Store, commits: range, failures: range, fps: pa.Array) -> None:
    """Real commits (markers written since the last compaction) and failure records."""
    for n in commits:
        store.commit(item_id(n), b"\0" * VIDEO_BYTES, {"fingerprint": fps[n].as_py(), "seed": n})
    for n in failures:
        store.record_failure(item_id(n), {"error_type": "OutOfMemoryError", "attempts": 3})
