"""`manifest from-vbench`: VBench's standard prompt suite as a manifest, and VBench's file names.

VBench names each video ``{prompt}-{index}.mp4`` and matches it by the exact prompt text
(`vbench_name`); its prompt files are ``prompts/prompts_per_dimension/{dimension}.txt``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import fsspec

from pusa_batch.errors import ManifestError
from pusa_batch.manifest.builders import (
    BuildSummary,
    check_defaults,
    finish_build,
    list_files,
    open_text,
    prompt_id,
    short_hash,
)


def vbench_name(prompt: str, index: int) -> str:
    """VBench's ``{prompt}-{index}.mp4`` file name, kept verbatim whenever it is safe.

    VBench matches videos by the exact prompt text, so only what POSIX and object stores cannot
    hold is changed: ``/``, ``\\`` and control characters become ``_``. Names longer than 255
    UTF-8 bytes (the usual file-name limit) keep the longest prefix that fits, cut on a character
    boundary, followed by ``~`` and 8 hex of sha1(prompt), so distinct prompts stay distinct.
    """
    if not prompt.strip():
        raise ValueError("vbench_name needs a non-empty prompt")
    if index < 0:
        raise ValueError(f"vbench index must be >= 0, got {index}")
    stem = re.sub(r"[/\\\x00-\x1f\x7f]", "_", prompt)
    tail = f"-{index}.mp4"
    if len((stem + tail).encode("utf-8")) <= 255:
        return stem + tail
    tail = f"~{short_hash(prompt)}{tail}"
    budget = 255 - len(tail.encode("utf-8"))
    cut = stem.encode("utf-8")[:budget].decode("utf-8", "ignore")
    return cut + tail


# --------------------------------------------------------------------------- from_vbench

VBENCH_SAMPLES = 5  # videos per prompt that VBench's standard mode scores (indices 0-4)
# VBench's evaluation dimensions that share another one's prompt file (VBench's prompts/README.md)
VBENCH_SUITE_OF = {
    "background_consistency": "scene",
    "aesthetic_quality": "overall_consistency",
    "imaging_quality": "overall_consistency",
    "motion_smoothness": "subject_consistency",
    "dynamic_degree": "subject_consistency",
}


def vbench_prompt_folder(prompts_dir: str) -> str:
    """The folder of ``{dimension}.txt`` files: ``prompts_dir`` itself, or its
    ``prompts_per_dimension`` (VBench's ``prompts/``) or ``prompts/prompts_per_dimension``
    (a VBench checkout)."""
    fs, base = fsspec.core.url_to_fs(str(prompts_dir))
    for sub in ("prompts_per_dimension", "prompts/prompts_per_dimension"):
        if fs.isdir(f"{base.rstrip('/')}/{sub}"):
            return f"{str(prompts_dir).rstrip('/')}/{sub}"
    return str(prompts_dir)


def read_vbench_suites(prompts_dir: str) -> dict[str, tuple[str, ...]]:
    """{dimension: its prompts in file order}, one per ``{dimension}.txt`` of VBench's
    ``prompts_per_dimension`` folder; lines are stripped (as VBench does), blank ones skipped."""
    folder = vbench_prompt_folder(prompts_dir)
    files, _ = list_files(folder, (".txt",))
    suites = {}
    for rel, path in sorted(files.items()):
        if "/" in rel:
            continue  # the suite is the folder's own .txt files
        with open_text(path) as f:
            prompts = tuple(line.strip() for line in f if line.strip())
        if prompts:
            suites[rel[: -len(".txt")]] = prompts
    if not suites:
        raise ManifestError(
            f"{prompts_dir}: no VBench prompt files ({{dimension}}.txt); give VBench's "
            "prompts/prompts_per_dimension folder"
        )
    return suites


def vbench_dimensions_of(suites: Mapping[str, Sequence[str]]) -> dict[str, tuple[str, ...]]:
    """{prompt: the dimensions whose prompt file lists it, sorted}."""
    found: dict[str, list[str]] = {}
    for dimension in sorted(suites):
        for prompt in suites[dimension]:
            if dimension not in found.setdefault(prompt, []):
                found[prompt].append(dimension)
    return {prompt: tuple(dims) for prompt, dims in found.items()}


def select_vbench_suites(available: Sequence[str], requested: Sequence[str]) -> list[str]:
    """The prompt files to build from, sorted: all of them, or the requested dimensions (an
    evaluation dimension without its own file, e.g. ``dynamic_degree``, names the file it uses)."""
    if not requested:
        return sorted(available)
    chosen, unknown = set(), []
    for name in requested:
        suite = name if name in available else VBENCH_SUITE_OF.get(name)
        if suite in available:
            chosen.add(suite)
        else:
            unknown.append(name)
    if unknown:
        raise ManifestError(
            f"no VBench prompt file for dimension(s) {', '.join(unknown)}; "
            f"the folder has: {', '.join(sorted(available))}"
        )
    return sorted(chosen)


def from_vbench(
    prompts_dir: str,
    out: str,
    *,
    dimensions: Sequence[str] = (),
    samples: int = VBENCH_SAMPLES,
    validate: bool = True,
    spec: Any = None,
    **defaults: Any,
) -> BuildSummary:
    """VBench's standard prompt suite: one t2v row per prompt and seed ``0 .. samples - 1``.

    ``prompts_dir`` is VBench's ``prompts/prompts_per_dimension`` folder (one
    ``{dimension}.txt`` each; VBench's ``prompts/`` or a checkout's root also work), and
    ``dimensions`` keeps only those files. A prompt listed by several dimensions is one set of
    rows: VBench scores each video under every dimension of its prompt. Ids as `prompt_id`.
    """
    prompts_dir, out = os.fspath(prompts_dir), os.fspath(out)
    if samples < 1:
        raise ManifestError(f"samples must be >= 1, got {samples}")
    check_defaults(defaults, ("id", "task", "prompt", "seed"))
    suites = read_vbench_suites(prompts_dir)
    chosen = select_vbench_suites(list(suites), dimensions)
    prompts = list(dict.fromkeys(p for dimension in chosen for p in suites[dimension]))
    counts = ", ".join(f"{d} {len(suites[d])}" for d in chosen)
    notes = [f"{len(prompts)} prompt(s) from VBench dimension(s): {counts}"]
    repeats = sum(len(suites[d]) for d in chosen) - len(prompts)
    if repeats:
        notes.append(f"{repeats} line(s) repeat a prompt listed before: each prompt is built once")
    rows = (
        {"id": prompt_id(prompt, seed), "task": "t2v", "prompt": prompt, "seed": seed, **defaults}
        for prompt in prompts
        for seed in range(samples)
    )
    columns = ["id", "task", "prompt", "seed", *defaults]
    return finish_build(out, rows, columns, (), notes, validate, spec)
