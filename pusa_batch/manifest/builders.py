"""Manifest builders: from a folder of images and a prompt list (VBench's prompt suite is in
`builders_vbench`, sweeps in `builders_sweep`), and what every builder shares.

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


def short_hash(text: str, n: int = 8) -> str:
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
        safe = f"{safe}-{short_hash(text)}" if safe else short_hash(text)
    return cap_id(safe)


def cap_id(text: str) -> str:
    """Ids longer than 128 characters keep their head and end in a hash of the whole."""
    if len(text) <= MAX_ID:
        return text
    return f"{text[: MAX_ID - 11]}-{short_hash(text, 10)}"


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
    return int(short_hash(prompt, PROMPT_HASH), 16)


def prompt_id(prompt: str, seed: int, repeat: int = 0) -> str:
    """``{slug}-{hash}-s{seed}`` (``{slug}-{hash}.{repeat}-s{seed}`` for a later repeat)."""
    occurrence = f".{repeat}" if repeat else ""
    return cap_id(f"{prompt_slug(prompt)}-{prompt_key(prompt):0{PROMPT_HASH}x}{occurrence}-s{seed}")


# --------------------------------------------------------------------------- reading


def open_text(path: str):
    return fsspec.open(str(path), "r", encoding="utf-8-sig", newline="")


def iter_rows(path: str) -> Iterator[tuple[int, dict]]:
    """(1-based row number, row without its empty cells) from any manifest, streamed."""
    number = 0
    for df in iter_raw_chunks(str(path), CHUNK_ROWS):
        for record in df.to_dict("records"):
            number += 1
            plain = {str(k): plain_value(v) for k, v in record.items()}
            yield number, {k: v for k, v in plain.items() if not is_empty(v)}


def columns_of(path: str) -> list[str]:
    """Every column of a manifest in first-seen order (JSONL rows may differ in their keys)."""
    if manifest_format(path) == "parquet":
        with fsspec.open(str(path), "rb") as f:
            return list(pq.ParquetFile(f).schema_arrow.names)
    seen: dict[str, None] = {}
    for df in iter_raw_chunks(str(path), CHUNK_ROWS):
        seen.update(dict.fromkeys(str(c).strip() for c in df.columns))
    return list(seen)


def finish_build(
    out, rows: Iterable[dict], columns, skipped, notes, validate, spec
) -> BuildSummary:
    """Write, then check the result with the validator `run` uses (raises its ManifestError).
    With `validate`, the rows go to a hidden name beside `out`, renamed only once they pass: a
    build that fails leaves no file behind."""
    notes = list(notes)
    if not validate:
        count, tasks = write_rows(rows, out, columns, CHUNK_ROWS)
        return BuildSummary(out, count, dict(tasks), tuple(skipped), tuple(notes), validate)
    fs, target = fsspec.core.url_to_fs(str(out))
    folder, _, name = target.rpartition("/")
    pending = f"{folder}/.{name}.pending-{os.getpid()}{_suffix(name)}"
    pending_url = pending if "://" not in str(out) else fs.unstrip_protocol(pending)
    try:
        count, tasks = write_rows(rows, pending_url, columns, CHUNK_ROWS)
        try:
            report = validate_manifest(pending_url, spec, check_files=True)
        except ManifestError as e:
            raise ManifestError(str(e).replace(pending_url, str(out)), e.problems) from None
        report.raise_for_problems(str(out))
        fs.mv(pending, target)
    finally:
        if fs.exists(pending):
            fs.rm(pending)
    if report.extra_columns:
        notes.append(report.extra_note())
    return BuildSummary(out, count, dict(tasks), tuple(skipped), tuple(notes), validate)


def _suffix(name: str) -> str:
    """The format's suffixes (`.csv`, `.jsonl.gz`), so the hidden file reads as `out` does."""
    lower = name.lower()
    for comp in ("", ".gz", ".bz2", ".xz", ".zst"):
        for ext in (".csv", ".tsv", ".parquet", ".pq", ".jsonl", ".ndjson"):
            if lower.endswith(ext + comp):
                return name[len(name) - len(ext + comp) :]
    return os.path.splitext(name)[1]


def check_defaults(defaults: Mapping[str, Any], owned: Sequence[str]) -> None:
    clash = [k for k in defaults if k in owned]
    if clash:
        raise ManifestError(f"{', '.join(clash)} is set by the builder itself; remove it")


# --------------------------------------------------------------------------- from_folder


def list_files(root: str, suffixes: tuple[str, ...]) -> tuple[dict[str, str], list[Skipped]]:
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
        with open_text(path) as f:
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
    check_defaults(defaults, ("id", "task", "prompt", "image"))
    images, skipped = list_files(images_dir, IMAGE_SUFFIXES)
    prompt_root = images_dir if prompts_dir is None else prompts_dir
    prompts, hidden = list_files(prompt_root, (".txt",))
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
            "id": item_id if counts[item_id] == 1 else cap_id(f"{item_id}-{short_hash(rel)}"),
            "task": task,
            "prompt": prompt,
            "image": _image_cell(images[rel], out),
            **defaults,
        }
        for item_id, rel, prompt in planned
    ]
    columns = ["id", "task", "prompt", "image", *defaults]
    return finish_build(out, rows, columns, skipped, notes, validate, spec)


# --------------------------------------------------------------------------- from_prompts


def _iter_txt(path: str) -> Iterator[tuple[int, dict]]:
    with open_text(path) as f:
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
    check_defaults(defaults, ("id", "prompt"))
    columns = ["id", "task", "prompt", "seed", *defaults]
    if not str(path).lower().endswith(".txt"):
        found = columns_of(path)
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

    return finish_build(out, rows(), columns, skipped, (), validate, spec)
