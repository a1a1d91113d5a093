"""VBench's layout: videos named from their prompts, in a folder that holds nothing but them.

``export --format vbench --dest D`` writes::

    D/videos/{prompt}-{index}.mp4               --vbench-layout flat (the default)
    D/videos/{dimension}/{prompt}-{index}.mp4   --vbench-layout per-dimension
    D/vbench_map.jsonl                          each video: file, id, prompt, index, seed, dimension
    D/vbench_prompts.json                       --vbench-mode custom: {file name: prompt}
    D/vbench_prompts/{dimension}.json           --vbench-mode custom, per-dimension

and VBench reads it as::

    vbench evaluate --videos_path D/videos --dimension subject_consistency
    vbench evaluate --videos_path D/videos/color --dimension color              # per-dimension
    vbench evaluate --mode custom_input --videos_path D/videos \\
        --prompt_file D/vbench_prompts.json --dimension subject_consistency

Nothing but videos goes into a videos folder: VBench's standard and category modes take every
video's extension from the first name ``os.listdir`` gives, so one other file listed first (as
tmpfs lists the newest) makes it find no video at all. A re-export deletes what an earlier one
wrote and this one does not (the videos its map lists, its prompt files, and the map that
exports before this layout wrote inside the videos folder); other files are kept, and named in a
warning when they sit in a videos folder.

Names: ``vbench_name(prompt, index)`` (``/``, ``\\`` and control characters become ``_``; names
over 255 bytes are cut and get ``~`` + 8 hex of sha1(prompt)). ``index`` counts the videos sharing
a file stem, ordered by (seed, id). Modes:

- ``standard``: VBench looks each prompt of its suite up as ``{prompt}-{0..4}.mp4``, so the
  summary warns about prompts with other than 5 videos and prompts a file name cannot hold as
  they are.
- ``custom``: also writes the ``{video path: prompt}`` JSON that VBench's ``--prompt_file``
  asserts (keys relative to the videos folder, which VBench joins them to; ASCII-escaped, as
  VBench opens it with the platform's encoding). VBench's custom mode refuses object_class,
  multiple_objects, scene, appearance_style, color and spatial_relationship.

The per-dimension layout puts each video in the folder of every VBench prompt file
(``--vbench-prompts``, VBench's ``prompts/prompts_per_dimension``) that lists its prompt; a
manifest's rows carry no dimension, and VBench's files are what decides it. Videos whose prompt
no file lists are left out, with a warning.
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from pusa_batch.errors import ExportError
from pusa_batch.manifest.builders_vbench import (
    VBENCH_SAMPLES,
    read_vbench_suites,
    vbench_dimensions_of,
    vbench_name,
)
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

VIDEOS = "videos"
VBENCH_MAP = "vbench_map.jsonl"
PROMPT_FILE = "vbench_prompts.json"
PROMPT_FILES = "vbench_prompts"  # per-dimension prompt files: vbench_prompts/{dimension}.json
MODES = ("standard", "custom")
LAYOUTS = ("flat", "per-dimension")
LISTED = 10  # prompts or files named in one warning


@dataclass(frozen=True)
class VBenchVideo:
    """One video file of the export."""

    id: str
    prompt: str
    seed: int | None
    name: str  # VBench's file name, {prompt}-{index}.mp4
    index: int
    dimension: str | None = None  # its per-dimension folder; None in the flat layout

    @property
    def folder(self) -> str:
        """The videos folder holding it, relative to the destination."""
        return f"{VIDEOS}/{self.dimension}" if self.dimension else VIDEOS

    @property
    def path(self) -> str:
        return f"{self.folder}/{self.name}"

    def map_row(self) -> dict:
        return {
            "file_name": self.name,
            "video": self.path,
            "id": self.id,
            "prompt": self.prompt,
            "index": self.index,
            "seed": self.seed,
            "dimension": self.dimension,
        }


def _stem(name: str) -> str:
    """``a cat-3.mp4`` -> ``a cat``."""
    return name.rsplit("-", 1)[0]


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
        groups[_stem(vbench_name(prompt, 0))].append(marker)
    out = []
    for stem in sorted(groups):
        ordered = sorted(groups[stem], key=lambda m: (item_fields(m).get("seed") or 0, m["id"]))
        for index, marker in enumerate(ordered):
            out.append((marker, vbench_name(item_fields(marker)["prompt"], index), index))
    return out


def flat_videos(markers: list[dict]) -> list[VBenchVideo]:
    """Every done item as one video of ``videos/``."""
    return [
        VBenchVideo(m["id"], item_fields(m)["prompt"], item_fields(m).get("seed"), name, index)
        for m, name, index in vbench_names(markers)
    ]


def by_dimension(
    videos: list[VBenchVideo], dimensions_of: Mapping[str, Iterable[str]]
) -> tuple[list[VBenchVideo], list[str]]:
    """Each video once per dimension whose prompt file lists its prompt, and the prompts that
    none lists (sorted)."""
    placed, unplaced = [], set()
    for video in videos:
        dimensions = list(dimensions_of.get(video.prompt, ()))
        if not dimensions:
            unplaced.add(video.prompt)
        placed += [
            VBenchVideo(video.id, video.prompt, video.seed, video.name, video.index, d)
            for d in dimensions
        ]
    return placed, sorted(unplaced)


def custom_prompt_files(videos: list[VBenchVideo]) -> dict[str, dict[str, str]]:
    """{prompt file: {file name in its videos folder: prompt}}, for VBench's --prompt_file."""
    files: dict[str, dict[str, str]] = defaultdict(dict)
    for video in videos:
        target = f"{PROMPT_FILES}/{video.dimension}.json" if video.dimension else PROMPT_FILE
        files[target][video.name] = video.prompt
    return {name: dict(sorted(entries.items())) for name, entries in sorted(files.items())}


def _listed(names: Iterable[str], quoted: bool = True) -> str:
    """The first few names, then how many more."""
    names = [repr(n) if quoted else n for n in names]
    shown = ", ".join(names[:LISTED])
    return shown + (f" and {len(names) - LISTED} more" if len(names) > LISTED else "")


def sample_count_warning(videos: list[VBenchVideo]) -> str | None:
    """The prompts with other than 5 videos (VBench's standard mode scores indices 0-4)."""
    counts = Counter(prompt for prompt, _ in {(v.prompt, v.id) for v in videos})
    odd = sorted((p, n) for p, n in counts.items() if n != VBENCH_SAMPLES)
    if not odd:
        return None
    return (
        f"{len(odd)} prompt(s) have other than {VBENCH_SAMPLES} videos; VBench's standard mode "
        f"scores {VBENCH_SAMPLES} per prompt (indices 0-{VBENCH_SAMPLES - 1}: more are ignored, "
        f"fewer reported missing): {_listed((f'{p!r} ({n})' for p, n in odd), quoted=False)}"
    )


def renamed_prompt_warning(videos: list[VBenchVideo]) -> str | None:
    """The prompts a file name cannot hold verbatim: VBench's standard mode will not find them."""
    renamed = sorted({v.prompt for v in videos if _stem(v.name) != v.prompt})
    if not renamed:
        return None
    return (
        f"{len(renamed)} prompt(s) cannot be file names as they are ('/', '\\' or control "
        "characters, or over 255 bytes), so VBench's standard mode, which looks videos up by "
        "the exact prompt, will not find them; --vbench-mode custom gives VBench the prompts "
        f"in a file: {_listed(renamed)}"
    )


def unplaced_warning(prompts: list[str]) -> str | None:
    if not prompts:
        return None
    return (
        f"{len(prompts)} prompt(s) are in no VBench prompt file of --vbench-prompts, so their "
        f"videos are left out of the per-dimension layout: {_listed(prompts)}"
    )


# --------------------------------------------------------------------------- the export


def export_vbench(
    store: Store,
    dest: str | os.PathLike,
    *,
    mode: str = "standard",
    layout: str = "flat",
    prompts_dir: str | os.PathLike | None = None,
    storage_options: dict | None = None,
) -> ExportSummary:
    """The done videos of ``store`` laid out for VBench under ``dest`` (see the module doc)."""
    if mode not in MODES:
        raise ExportError(f"VBench mode {mode!r}: use one of {', '.join(MODES)}")
    if layout not in LAYOUTS:
        raise ExportError(f"VBench layout {layout!r}: use one of {', '.join(LAYOUTS)}")
    if layout == "per-dimension" and prompts_dir is None:
        raise ExportError(
            "the per-dimension layout needs VBench's prompt files to know each prompt's "
            "dimensions: give --vbench-prompts VBench/prompts/prompts_per_dimension"
        )
    markers, skipped = done_markers(store)
    videos = flat_videos(markers)
    warnings = []
    if layout == "per-dimension":
        suites = read_vbench_suites(os.fspath(prompts_dir))
        videos, unplaced = by_dimension(videos, vbench_dimensions_of(suites))
        warnings.append(unplaced_warning(unplaced))
    if mode == "standard":
        warnings += [sample_count_warning(videos), renamed_prompt_warning(videos)]
    prompt_files = custom_prompt_files(videos) if mode == "custom" else {}

    target = open_destination(dest, storage_options, store)
    previous = _previous_export(target)
    by_id = {m["id"]: m for m in markers}
    linked = copy_all(store, target, [(by_id[v.id], v.path) for v in videos])
    written = {v.path for v in videos} | set(prompt_files) | {VBENCH_MAP}
    _remove(target, previous - written)
    for name, entries in prompt_files.items():
        target.write(name, json.dumps(entries, indent=1).encode() + b"\n")
    target.write(VBENCH_MAP, jsonl_bytes(v.map_row() for v in videos))
    folders = sorted({v.folder for v in videos} or {VIDEOS})
    warnings += [_foreign_warning(target, f, {v.path for v in videos}) for f in folders]
    exported = {v.id for v in videos}
    return ExportSummary(
        format="vbench",
        dest=target.display,
        exported=len(exported),
        bytes=sum(by_id[i]["video_bytes"] for i in exported),
        linked=linked,
        skipped=skipped,
        files=(VBENCH_MAP, *prompt_files),
        prompts=len({_stem(v.name) for v in videos}),
        warnings=tuple(w for w in warnings if w),
    )


# --------------------------------------------------------------------------- earlier exports


def _map_paths(text: str, folder: str) -> set[str]:
    """Paths (relative to the destination) that a map lists. Rows of this layout name their
    ``video``; older rows name only ``file_name``, relative to the folder the map was in."""
    paths = set()
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a damaged map: what it lists cannot be known
        if not isinstance(row, dict):
            continue
        video, name = row.get("video"), row.get("file_name")
        if isinstance(video, str) and video.startswith(f"{VIDEOS}/"):
            paths.add(video)
        elif isinstance(name, str) and name and "/" not in name:
            paths.add(f"{folder}/{name}" if folder else name)
    return {p for p in paths if ".." not in p.split("/") and "\\" not in p}


def _previous_export(target: Destination) -> set[str]:
    """What an earlier export wrote that still exists, relative to the destination: the videos
    its map lists, its prompt files, and a map of the old layout inside ``videos/``."""
    found = set()
    for folder in ("", VIDEOS):
        map_path = f"{folder}/{VBENCH_MAP}" if folder else VBENCH_MAP
        try:
            text = target.fs.cat_file(target.path(map_path)).decode("utf-8", "replace")
        except FileNotFoundError:
            continue
        found |= _map_paths(text, folder)
        if folder:
            found.add(map_path)
    found.add(PROMPT_FILE)
    found |= {f"{PROMPT_FILES}/{n}" for n in _names_in(target, PROMPT_FILES) if n.endswith(".json")}
    return {p for p in found if target.fs.exists(target.path(p))}


def _names_in(target: Destination, folder: str) -> list[str]:
    """The entries of a destination folder (names only; none when it does not exist)."""
    try:
        entries = target.fs.ls(target.path(folder), detail=False)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(str(e).rstrip("/").rsplit("/", 1)[-1] for e in entries)


def _remove(target: Destination, paths: set[str]) -> None:
    """Delete these files, then the local folders under videos/ that they leave empty (VBench
    would list an empty folder as an entry of its videos folder)."""
    for path in sorted(paths):
        target.fs.rm_file(target.path(path))
    if not target.is_local:
        return
    folders = {os.path.dirname(p) for p in paths} - {"", VIDEOS}
    for folder in sorted(folders, key=len, reverse=True):
        full = target.path(folder)
        if os.path.isdir(full) and not os.listdir(full):
            os.rmdir(full)


def _foreign_warning(target: Destination, folder: str, ours: set[str]) -> str | None:
    """Entries of a videos folder this export did not write (VBench reads every one)."""
    foreign = [n for n in _names_in(target, folder) if f"{folder}/{n}" not in ours]
    if not foreign:
        return None
    return (
        f"{target.display}/{folder} also holds {_listed(foreign)}: VBench reads every entry of "
        "its videos folder (its standard mode takes all videos' extension from the first one "
        "listed), so move them out"
    )
