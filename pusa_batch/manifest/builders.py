"""Manifest builders: from a folder of images, a prompt list, VBench's prompt suite, and sweeps.

Every builder streams rows into `manifest_write` (Parquet, CSV or JSONL by suffix), validates
the result with the validator `run` uses, and returns a `BuildSummary`.

Ids are deterministic and safe (``[A-Za-z0-9._-]``, at most 128 characters):
- folder: the image's path relative to the folder, without extension, ``/`` joined as ``__``;
  accents are transliterated (``café`` -> ``cafe``), other unsafe runs become ``_``, and a part
  that lost characters (``猫``) gets an 8-hex hash of the original. Two images with the same stem
  (``cat.png`` + ``cat.jpg``) are both kept, each with its extension in the id (``cat.png``,
  ``cat.jpg``), and the summary notes it: adding ``cat.jpg`` later renames ``cat``.
- prompts and VBench: ``{slug}-{sha1(prompt)[:8]}-s{seed}``, e.g. ``a-red-fox-in-snow-3f2a1c9b-s0``;
  the slug is the prompt's first words in lower-case ASCII joined by ``-`` (at most 40 characters,
  ``p`` when none survive, as for ``猫``). The k-th repeat (k >= 1) of the same hash is
  ``{slug}-{hash}.{k}-s{seed}``. Ids depend on the prompt alone (and its earlier repeats), so
  appending prompts never changes earlier ids.
- sweeps: ``{base_id}--{column}_{value}--...``; rows without an id keep none (the manifest derives
  one from the row's content, which differs per grid point).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np
import pyarrow.parquet as pq

from pusa_batch.cells import is_empty
from pusa_batch.errors import ManifestError
from pusa_batch.manifest.read import iter_raw_chunks, manifest_format, validate_manifest
from pusa_batch.manifest.write import as_int, plain_value, write_rows

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
CHUNK_ROWS = 20_000
MAX_ID = 128
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Skipped:
    source: str  # the file or "file:line" that produced no row
    reason: str


@dataclass(frozen=True)
class BuildSummary:
    out: str
    rows: int
    task_counts: Mapping[str, int]
    skipped: tuple[Skipped, ...] = ()
    notes: tuple[str, ...] = ()
    validated: bool = False  # False when the builder was called with validate=False


# --------------------------------------------------------------------------- ids and names


def _hash(text: str, n: int = 8) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:n]


def safe_id(text: str) -> str:
    """One id part: transliterated, unsafe runs to ``_``, hashed when characters were lost."""
    decomposed = unicodedata.normalize("NFKD", text)
    base = "".join(c for c in decomposed if not unicodedata.combining(c))
    ascii_text = base.encode("ascii", "ignore").decode("ascii")
    safe = _UNSAFE.sub("_", ascii_text)
    if safe.startswith("."):  # no hidden names, no "." or ".."
        safe = "_" + safe[1:]
    if len(ascii_text) < len(base) or not safe:
        safe = f"{safe}-{_hash(text)}" if safe else _hash(text)
    return cap_id(safe)


def cap_id(text: str) -> str:
    """Ids longer than 128 characters keep their head and end in a hash of the whole."""
    if len(text) <= MAX_ID:
        return text
    return f"{text[: MAX_ID - 11]}-{_hash(text, 10)}"


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
    tail = f"~{_hash(prompt)}{tail}"
    budget = 255 - len(tail.encode("utf-8"))
    cut = stem.encode("utf-8")[:budget].decode("utf-8", "ignore")
    return cut + tail


SLUG_CHARS = 40
PROMPT_HASH = 8  # hex digits of sha1(prompt) in a prompt id


def prompt_slug(prompt: str) -> str:
    """The prompt's first words, lower-case ASCII joined by ``-`` (<= 40 characters, else ``p``)."""
    decomposed = unicodedata.normalize("NFKD", prompt)
    base = "".join(c for c in decomposed if not unicodedata.combining(c))
    words = re.findall(r"[a-z0-9]+", base.encode("ascii", "ignore").decode("ascii").lower())
    slug = words[0][:SLUG_CHARS] if words else "p"
    for word in words[1:]:
        if len(slug) + 1 + len(word) > SLUG_CHARS:
            break
        slug = f"{slug}-{word}"
    return slug


def prompt_key(prompt: str) -> int:
    """The prompt's hash as an integer: what repeats are counted by (8 bytes of memory each)."""
    return int(_hash(prompt, PROMPT_HASH), 16)


def prompt_id(prompt: str, seed: int, repeat: int = 0) -> str:
    """``{slug}-{hash}-s{seed}`` (``{slug}-{hash}.{repeat}-s{seed}`` for a later repeat)."""
    occurrence = f".{repeat}" if repeat else ""
    return cap_id(f"{prompt_slug(prompt)}-{prompt_key(prompt):0{PROMPT_HASH}x}{occurrence}-s{seed}")


# --------------------------------------------------------------------------- reading


def _open_text(path: str):
    return fsspec.open(str(path), "r", encoding="utf-8-sig", newline="")


def iter_rows(path: str) -> Iterator[tuple[int, dict]]:
    """(1-based row number, row without its empty cells) from any manifest, streamed."""
    number = 0
    for df in iter_raw_chunks(str(path), CHUNK_ROWS):
        for record in df.to_dict("records"):
            number += 1
            plain = {str(k): plain_value(v) for k, v in record.items()}
            yield number, {k: v for k, v in plain.items() if not is_empty(v)}


def _columns_of(path: str) -> list[str]:
    """Every column of a manifest in first-seen order (JSONL rows may differ in their keys)."""
    if manifest_format(path) == "parquet":
        with fsspec.open(str(path), "rb") as f:
            return list(pq.ParquetFile(f).schema_arrow.names)
    seen: dict[str, None] = {}
    for df in iter_raw_chunks(str(path), CHUNK_ROWS):
        seen.update(dict.fromkeys(str(c).strip() for c in df.columns))
    return list(seen)


def _finish(out, rows: Iterable[dict], columns, skipped, notes, validate, spec) -> BuildSummary:
    """Write, then check the result with the validator `run` uses (raises its ManifestError)."""
    count, tasks = write_rows(rows, out, columns, CHUNK_ROWS)
    notes = list(notes)
    if validate:
        report = validate_manifest(out, spec, check_files=True)
        report.raise_for_problems(out)
        if report.unknown_columns:
            notes.append(f"columns the manifest ignores: {', '.join(report.unknown_columns)}")
    return BuildSummary(out, count, dict(tasks), tuple(skipped), tuple(notes), validate)


def _check_defaults(defaults: Mapping[str, Any], owned: Sequence[str]) -> None:
    clash = [k for k in defaults if k in owned]
    if clash:
        raise ManifestError(f"{', '.join(clash)} is set by the builder itself; remove it")


# --------------------------------------------------------------------------- from_folder


def _list_files(root: str, suffixes: tuple[str, ...]) -> tuple[dict[str, str], list[Skipped]]:
    """{relative posix path: url or local path} of files with these suffixes; hidden skipped."""
    fs, base = fsspec.core.url_to_fs(str(root))
    if not fs.isdir(base):
        raise ManifestError(f"{root}: not a folder (or it does not exist)")
    found, hidden = {}, []
    for path in sorted(fs.find(base)):
        rel = path[len(base.rstrip("/")) :].lstrip("/")
        if not rel.lower().endswith(suffixes):
            continue
        if any(part.startswith(".") for part in rel.split("/")):
            hidden.append(Skipped(rel, "hidden file (name starts with '.')"))
            continue
        found[rel] = path if "://" not in str(root) else fs.unstrip_protocol(path)
    return found, hidden


def _stem(rel: str) -> str:
    return os.path.splitext(rel)[0]


def _path_id(rel: str) -> str:
    return cap_id("__".join(safe_id(part) for part in rel.split("/")))


def _image_cell(path: str, out: str) -> str:
    """Relative to the manifest's folder when the image lies under it (portable), else absolute."""
    if "://" in path or "://" in str(out):
        return path
    folder = os.path.dirname(os.path.abspath(out))
    full = os.path.abspath(path)
    return os.path.relpath(full, folder) if full.startswith(folder + os.sep) else full


def _read_prompt(path: str) -> str | None:
    try:
        with _open_text(path) as f:
            return f.read().strip() or None
    except UnicodeDecodeError:
        return None


def from_folder(
    images_dir: str,
    out: str,
    *,
    prompts_dir: str | None = None,
    task: str = "i2v",
    strict: bool = False,
    validate: bool = True,
    spec: Any = None,
    **defaults: Any,
) -> BuildSummary:
    """One row per image found recursively, its prompt read from the ``.txt`` of the same stem.

    ``a/b/cat.png`` pairs with ``{prompts_dir}/a/b/cat.txt`` (or ``a/b/cat.txt`` beside it when
    ``prompts_dir`` is None). Unpaired images and prompts, empty or non-UTF-8 prompt files are
    skipped and listed in the summary; with ``strict`` they raise `ManifestError` instead.
    ``defaults`` become columns of every row (``num_frames=81``, ``seed=0``, ...).
    """
    images_dir, out = os.fspath(images_dir), os.fspath(out)
    prompts_dir = None if prompts_dir is None else os.fspath(prompts_dir)
    _check_defaults(defaults, ("id", "task", "prompt", "image"))
    images, skipped = _list_files(images_dir, IMAGE_SUFFIXES)
    prompt_root = images_dir if prompts_dir is None else prompts_dir
    prompts, hidden = _list_files(prompt_root, (".txt",))
    skipped += hidden if prompts_dir is not None else []
    prompt_of = {_stem(rel): path for rel, path in prompts.items()}
    by_stem: dict[str, list[str]] = {}
    for rel in images:
        by_stem.setdefault(_stem(rel), []).append(rel)

    notes, planned = [], []
    for stem in sorted(by_stem):
        rels = sorted(by_stem[stem])
        if len(rels) > 1:
            notes.append(f"same stem {stem!r} for {', '.join(rels)}: ids keep the extension")
        prompt_path = prompt_of.get(stem)
        if prompt_path is None:
            reason = f"no prompt file {stem}.txt in {prompt_root}"
            skipped += [Skipped(rel, reason) for rel in rels]
            continue
        prompt = _read_prompt(prompt_path)
        if prompt is None:
            skipped += [
                Skipped(rel, f"empty or non-UTF-8 prompt file {prompt_path}") for rel in rels
            ]
            continue
        for rel in rels:
            planned.append((_path_id(rel if len(rels) > 1 else stem), rel, prompt))
    skipped += [
        Skipped(rel, f"prompt without an image ({'/'.join(IMAGE_SUFFIXES)}) of the same stem")
        for rel in sorted(prompts)
        if _stem(rel) not in by_stem
    ]
    if strict and skipped:
        listed = "; ".join(f"{s.source}: {s.reason}" for s in skipped[:20])
        more = f" (and {len(skipped) - 20} more)" if len(skipped) > 20 else ""
        raise ManifestError(f"{len(skipped)} file(s) cannot be paired: {listed}{more}")

    counts = Counter(item_id for item_id, _, _ in planned)
    rows = [
        {
            "id": item_id if counts[item_id] == 1 else cap_id(f"{item_id}-{_hash(rel)}"),
            "task": task,
            "prompt": prompt,
            "image": _image_cell(images[rel], out),
            **defaults,
        }
        for item_id, rel, prompt in planned
    ]
    columns = ["id", "task", "prompt", "image", *defaults]
    return _finish(out, rows, columns, skipped, notes, validate, spec)


# --------------------------------------------------------------------------- from_prompts


def _iter_txt(path: str) -> Iterator[tuple[int, dict]]:
    with _open_text(path) as f:
        for number, line in enumerate(f, start=1):
            text = line.strip()
            if text and not text.startswith("#"):
                yield number, {"prompt": text}


def _iter_prompt_records(path: str) -> Iterator[tuple[int, dict]]:
    if str(path).lower().endswith(".txt"):
        return _iter_txt(path)
    return iter_rows(path)  # .jsonl / .csv / .tsv / .parquet (and .gz), as manifests are read


def _prompt_of(record: dict) -> str | None:
    prompt = record.get("prompt")
    return prompt.strip() if isinstance(prompt, str) and prompt.strip() else None


def _prompt_hashes(path: str) -> tuple[list[np.ndarray], set[int]]:
    """Pass 1: each prompt's `prompt_key` (8 bytes of memory per prompt) and the repeated ones."""
    chunks, current = [], []
    for _, record in _iter_prompt_records(path):
        prompt = _prompt_of(record)
        if prompt is not None:
            current.append(prompt_key(prompt))
            if len(current) >= CHUNK_ROWS:
                chunks.append(np.array(current, dtype=np.uint64))
                current = []
    chunks.append(np.array(current, dtype=np.uint64))
    values, counts = np.unique(np.concatenate(chunks), return_counts=True)
    return chunks, set(values[counts > 1].tolist())


def _first_seed(record: dict, default: int, where: str) -> int:
    seed = record.get("seed")
    try:
        return default if is_empty(seed) else as_int(seed)
    except (TypeError, ValueError) as e:
        raise ManifestError(f"{where}: seed {seed!r} is not an integer") from e


def from_prompts(
    path: str,
    out: str,
    *,
    task: str = "t2v",
    seeds_per_prompt: int = 1,
    seed_start: int = 0,
    validate: bool = True,
    spec: Any = None,
    **defaults: Any,
) -> BuildSummary:
    """One row per (prompt, seed) from a .txt (a prompt per line; blanks and ``#`` skipped),
    a .jsonl (``{"prompt": ...}`` plus any manifest columns) or a .csv with a ``prompt`` column.

    Seeds are ``seed_start .. seed_start + seeds_per_prompt - 1`` (a row's own ``seed`` replaces
    ``seed_start``); a row's own ``id`` is kept (``{id}-s{seed}`` with several seeds). Streams:
    two passes over the file, memory flat apart from 8 bytes per prompt.
    """
    path, out = os.fspath(path), os.fspath(out)
    if seeds_per_prompt < 1:
        raise ManifestError(f"seeds_per_prompt must be >= 1, got {seeds_per_prompt}")
    _check_defaults(defaults, ("id", "prompt"))
    columns = ["id", "task", "prompt", "seed", *defaults]
    if not str(path).lower().endswith(".txt"):
        found = _columns_of(path)
        if "prompt" not in found:
            raise ManifestError(f"{path}: no 'prompt' column/key; found {found or 'none'}")
        columns += [c for c in found if c not in columns]
    hash_chunks, repeated = _prompt_hashes(path)
    skipped: list[Skipped] = []

    def rows() -> Iterator[dict]:
        hashes = itertools.chain.from_iterable(c.tolist() for c in hash_chunks)
        seen: Counter[int] = Counter()
        for number, record in _iter_prompt_records(path):
            prompt = _prompt_of(record)
            if prompt is None:
                skipped.append(Skipped(f"{path}:{number}", "empty prompt"))
                continue
            key = next(hashes)
            repeat = 0
            if key in repeated:
                repeat = seen[key]
                seen[key] += 1
            own_id = record.get("id")
            first_seed = _first_seed(record, seed_start, f"{path}:{number}")
            base = {**defaults, **record, "prompt": prompt, "task": record.get("task") or task}
            for k in range(seeds_per_prompt):
                seed = first_seed + k
                if own_id is None:
                    item_id = prompt_id(prompt, seed, repeat)
                else:
                    item_id = str(own_id) if seeds_per_prompt == 1 else f"{own_id}-s{seed}"
                yield {**base, "id": item_id, "seed": seed}

    return _finish(out, rows(), columns, skipped, (), validate, spec)


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
    files, _ = _list_files(folder, (".txt",))
    suites = {}
    for rel, path in sorted(files.items()):
        if "/" in rel:
            continue  # the suite is the folder's own .txt files
        with _open_text(path) as f:
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
    _check_defaults(defaults, ("id", "task", "prompt", "seed"))
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
    return _finish(out, rows, columns, (), notes, validate, spec)


# --------------------------------------------------------------------------- sweep

_RANGE = re.compile(r"^\s*(-?\d+)\s*\.\.\s*(-?\d+)\s*$")


def _parse_values(text: str) -> list:
    try:
        return json.loads(f"[{text}]")
    except json.JSONDecodeError:
        if any(c in text for c in '[]{}"'):
            raise
        # Bare words (task=i2v,t2v): each comma-separated item is JSON if it parses, else text.
        out = []
        for item in (part.strip() for part in text.split(",")):
            try:
                out.append(json.loads(item))
            except json.JSONDecodeError:
                out.append(item)
        return out


def parse_grid(spec: str) -> tuple[str, list]:
    """A grid spec -> (column, values).

    ``steps=10,20,30``, ``seed=0..4`` (inclusive) or ``noise_multipliers=[0,0.2],[0.2,0.5]``
    (comma-separated JSON values; bare words such as ``task=i2v,t2v`` are text)."""
    column, sep, text = spec.partition("=")
    column = column.strip()
    if not sep or not column or not text.strip():
        raise ManifestError(
            f"grid {spec!r}: expected column=values, e.g. steps=10,20 or seed=0..4 or "
            "noise_multipliers='[0,0.2],[0.2,0.5]'"
        )
    if column == "id":
        raise ManifestError(f"grid {spec!r}: 'id' cannot be swept; ids are built from the grid")
    if match := _RANGE.match(text):
        low, high = int(match[1]), int(match[2])
        if high < low:
            raise ManifestError(f"grid {spec!r}: range {low}..{high} is empty; write low..high")
        return column, list(range(low, high + 1))
    try:
        values = _parse_values(text)
    except json.JSONDecodeError as e:
        raise ManifestError(f"grid {spec!r}: values are not valid JSON ({e.msg})") from e
    canon = [json.dumps(v, sort_keys=True) for v in values]
    if len(set(canon)) != len(canon):
        raise ManifestError(f"grid {spec!r}: repeated values would repeat ids; remove them")
    return column, values


def _value_text(value: Any) -> str:
    if isinstance(value, list):
        return "_".join(_value_text(v) for v in value) or "empty"
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    return safe_id(str(value))


def _suffixes(column: str, values: list) -> list[str]:
    """Id part per value, e.g. 'steps_10'; hashed when two values would read the same."""
    texts = [_value_text(v) for v in values]
    if len(set(texts)) != len(texts):
        texts = [_hash(json.dumps(v, sort_keys=True)) for v in values]
    return [f"{safe_id(column)}_{t}" for t in texts]


def sweep(
    base_manifest: str,
    out: str,
    grid: Mapping[str, Sequence],
    *,
    validate: bool = True,
    spec: Any = None,
) -> BuildSummary:
    """Every base row repeated over the Cartesian product of ``grid`` (last column fastest).

    Grid values replace the base row's own. New ids are ``{base_id}--{col}_{value}--...``
    (safe, <= 128 characters, hashed tail when longer); rows without an id stay without one.
    """
    base_manifest, out = os.fspath(base_manifest), os.fspath(out)
    if not grid:
        raise ManifestError("sweep needs at least one grid column, e.g. steps=10,20")
    if "id" in grid:
        raise ManifestError("'id' cannot be swept; ids are built from the grid")
    names = list(grid)
    values = [list(grid[c]) for c in names]
    if any(not v for v in values):
        empty = [c for c, v in zip(names, values, strict=True) if not v]
        raise ManifestError(f"grid column(s) {', '.join(empty)} have no values")
    suffixes = [_suffixes(c, v) for c, v in zip(names, values, strict=True)]
    points = list(
        zip(
            itertools.product(*values),
            ("--".join(parts) for parts in itertools.product(*suffixes)),
            strict=True,
        )
    )
    base_columns = _columns_of(base_manifest)
    columns = list(dict.fromkeys(["id", *base_columns, *names]))

    def rows() -> Iterator[dict]:
        for _, row in iter_rows(base_manifest):
            base_id = row.get("id")
            for point, suffix in points:
                new = {**row, **dict(zip(names, point, strict=True))}
                new["id"] = None if is_empty(base_id) else cap_id(f"{base_id}--{suffix}")
                yield new

    return _finish(out, rows(), columns, (), (), validate, spec)
