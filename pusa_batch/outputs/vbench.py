"""VBench's layout: one folder of videos named from their prompts, as VBench reads them.

``dest/{vbench_name(prompt, index)}`` (see ``builders.vbench_name``: the prompt is kept verbatim
except ``/``, ``\\`` and control characters, which become ``_``; names over 255 bytes are cut and
get ``~`` + 8 hex of sha1(prompt)). ``index`` counts the videos sharing a file stem, ordered by
(seed, id), so two prompts that sanitise alike share one index sequence rather than overwrite
each other. ``dest/vbench_map.jsonl`` maps each file name to its id; videos listed by an earlier
export's map and not rewritten are deleted, other files are kept.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict

from pusa_batch.errors import ExportError
from pusa_batch.manifest.builders import vbench_name
from pusa_batch.outputs.common import (
    Destination,
    ExportSummary,
    copy_all,
    done_markers,
    item_fields,
    jsonl_bytes,
    open_destination,
)
from pusa_batch.store.store import Store

VBENCH_MAP = "vbench_map.jsonl"


def vbench_names(markers: list[dict]) -> list[tuple[dict, str, int]]:
    """(marker, file name, index) per item: indices count per file stem, by (seed, id)."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for marker in markers:
        prompt = item_fields(marker).get("prompt") or ""
        if not prompt.strip():
            raise ExportError(
                f"item {marker['id']!r} has an empty prompt: VBench names videos by prompt, "
                "so export only runs whose every item has a prompt"
            )
        groups[vbench_name(prompt, 0)[: -len("-0.mp4")]].append(marker)
    out = []
    for stem in sorted(groups):
        ordered = sorted(groups[stem], key=lambda m: (item_fields(m).get("seed") or 0, m["id"]))
        for index, marker in enumerate(ordered):
            out.append((marker, vbench_name(item_fields(marker)["prompt"], index), index))
    return out


def export_vbench(
    store: Store, dest: str | os.PathLike, *, storage_options: dict | None = None
) -> ExportSummary:
    """Videos as ``dest/{prompt}-{index}.mp4`` for VBench, plus ``dest/vbench_map.jsonl``."""
    markers, skipped = done_markers(store)
    named = vbench_names(markers)
    target = open_destination(dest, storage_options)
    previous = _previous_vbench_files(target)
    linked = copy_all(store, target, [(m, name) for m, name, _ in named])
    for stale in previous - {name for _, name, _ in named}:
        target.fs.rm_file(target.path(stale))
    rows = [
        {
            "file_name": name,
            "id": m["id"],
            "prompt": item_fields(m)["prompt"],
            "index": index,
            "seed": item_fields(m).get("seed"),
        }
        for m, name, index in named
    ]
    target.write(VBENCH_MAP, jsonl_bytes(rows))
    return ExportSummary(
        format="vbench",
        dest=target.display,
        exported=len(named),
        bytes=sum(m["video_bytes"] for m in markers),
        linked=linked,
        skipped=skipped,
        files=(VBENCH_MAP,),
        prompts=len({name.rsplit("-", 1)[0] for _, name, _ in named}),
    )


def _previous_vbench_files(target: Destination) -> set[str]:
    """Videos an earlier export listed in its map and that still exist (VBench would score
    every video in the folder, so the ones this export does not rewrite are deleted)."""
    try:
        text = target.fs.cat_file(target.path(VBENCH_MAP)).decode()
    except FileNotFoundError:
        return set()
    names = {json.loads(line).get("file_name") for line in text.splitlines() if line.strip()}
    return {n for n in names if n and "/" not in n and target.fs.exists(target.path(n))}
