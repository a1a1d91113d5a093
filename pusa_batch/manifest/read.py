"""Manifests: streaming loader, whole-file validator, resolved `Item`s and their fingerprints.

The schema (columns, defaults, `Item`) is in `manifest_schema`; `manifests/README.md` is the
user-facing description of both.

Decisions:
- A fingerprint is the sha256 of one JSON text (`fingerprint_payload`). For plain t2v rows (no
  input media) `chunk_fingerprints` writes that text column-wise with Arrow around a template cut
  from the same payload, and hashes it row by row from one buffer: the same bytes as
  `item_fingerprint`, checked on the first such row of every call, at about a tenth of the cost.
- The plan's second pass reads only the rows its first pass chose (`iter_chosen_items`): other
  chunks are parsed but never checked, and reading stops after the last chosen chunk.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import re
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pusa_batch import tasks as task_rules
from pusa_batch.errors import InputMediaError, ManifestError, RowProblem
from pusa_batch.item import Item
from pusa_batch.manifest.check import ID_TEXTS, UNPROBED_VIDEO_FRAMES, CheckedChunk, ChunkChecker
from pusa_batch.manifest.schema import COLUMNS, REQUIRED_COLUMNS, manifest_folder, rules_from_spec

log = logging.getLogger(__name__)

SAMPLER_VERSION = "1"
MAX_PROBLEMS_KEPT = 1000
FORMATS = {".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".pq": "parquet"}
FORMATS |= {".jsonl": "jsonl", ".ndjson": "jsonl"}
COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst")


class ManifestWarning(UserWarning):
    """Something in the manifest is ignored (for example an unknown column)."""


# --------------------------------------------------------------------------- loading


def manifest_format(path: str) -> str:
    name = path.lower().split("?", 1)[0]
    for comp in COMPRESSIONS:
        name = name.removesuffix(comp)
    for ext, kind in FORMATS.items():
        if name.endswith(ext):
            return kind
    raise ManifestError(
        f"{path}: unknown manifest format. Use a .csv, .tsv, .parquet or .jsonl file "
        "(optionally .gz-compressed for CSV and JSONL)."
    )


def iter_raw_chunks(
    path: str, chunk_rows: int = 65536, *, storage_options: dict | None = None
) -> Iterator[pd.DataFrame]:
    """Yield the manifest as DataFrames of at most `chunk_rows` rows, cells as stored.

    CSV cells come as text (empty cell = NaN); Parquet and JSONL keep their types (lists stay
    lists). Local paths and fsspec URLs both work; the file is never read whole.
    """
    kind = manifest_format(path)
    opts = storage_options or {}
    try:
        with fsspec.open(path, "rb", compression="infer", **opts) as f:
            if kind == "parquet":
                yield from _parquet_chunks(f, chunk_rows)
            elif kind == "jsonl":
                yield from _jsonl_chunks(f, chunk_rows, path)
            else:
                yield from _csv_chunks(f, chunk_rows, "\t" if kind == "tsv" else ",")
    except FileNotFoundError as e:
        raise ManifestError(f"{path}: manifest not found.") from e
    except pd.errors.EmptyDataError:
        raise ManifestError(
            f"{path}: the manifest is empty; it needs a header row (id,task,prompt,...) and rows"
        ) from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, pa.ArrowException) as e:
        if isinstance(e, ManifestError):
            raise
        raise ManifestError(
            f"{path}: cannot read the manifest as {kind} ({e}); is it a whole {kind} file?"
        ) from None


def _csv_chunks(f: Any, chunk_rows: int, sep: str) -> Iterator[pd.DataFrame]:
    reader = pd.read_csv(  # raises EmptyDataError for a file with no header at all
        f,
        sep=sep,
        dtype=str,
        keep_default_na=False,
        na_values=[""],
        index_col=False,
        chunksize=chunk_rows,
    )
    while True:
        with warnings.catch_warnings():  # pandas only warns when a row has too many cells
            warnings.simplefilter("error", pd.errors.ParserWarning)
            try:
                chunk = next(reader)
            except StopIteration:
                return
            except pd.errors.ParserWarning as e:
                raise pd.errors.ParserError(
                    "a row has more cells than the header; quote cells that contain commas"
                ) from e
        yield chunk


def _parquet_chunks(f: Any, chunk_rows: int) -> Iterator[pd.DataFrame]:
    parquet = pq.ParquetFile(f)
    empty = True
    for batch in parquet.iter_batches(batch_size=chunk_rows):
        empty = False
        yield batch.to_pandas()
    if empty:
        yield parquet.schema_arrow.empty_table().to_pandas()


def _refuse_constant(name: str) -> None:
    """JSON's NaN / Infinity would pass for an empty cell and silently take the default."""
    raise ValueError(
        f"{name} is not a value a manifest can hold; leave the key out for the default."
    )


def _jsonl_chunks(f: Any, chunk_rows: int, path: str) -> Iterator[pd.DataFrame]:
    records: list[dict] = []
    columns: dict[str, None] = {}
    for line_no, raw in enumerate(f, start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw, parse_constant=_refuse_constant)
        except json.JSONDecodeError as e:
            raise ManifestError(f"{path}, line {line_no}: not valid JSON ({e.msg}).") from e
        except ValueError as e:
            raise ManifestError(f"{path}, line {line_no}: {e}") from None
        if not isinstance(record, dict):
            raise ManifestError(f"{path}, line {line_no}: each line must be a JSON object.")
        columns.update(dict.fromkeys(record))
        records.append(record)
        if len(records) == chunk_rows:
            yield pd.DataFrame.from_records(records, columns=list(columns))
            records = []
    if records or not columns:
        yield pd.DataFrame.from_records(records, columns=list(columns))


# --------------------------------------------------------------------------- validation


@dataclass
class ValidationReport:
    rows: int
    problems: list[RowProblem]  # the first MAX_PROBLEMS_KEPT, in row order
    task_counts: dict[str, int]
    problem_count: int = 0  # all problems found, kept or not
    bad_rows: int = 0
    unknown_columns: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.problem_count == 0

    def summary(self, path: str, shown: int = 20) -> str:
        lines = [f"{path}: {self.problem_count} problem(s) in {self.bad_rows} of {self.rows} rows."]
        lines += [f"  {p}" for p in self.problems[:shown]]
        if self.problem_count > shown:
            lines.append(
                f"  ... and {self.problem_count - shown} more (`pusa-batch validate` lists all)."
            )
        return "\n".join(lines)

    def raise_for_problems(self, path: str) -> None:
        if not self.ok:
            raise ManifestError(self.summary(path), self.problems)


def _check_header(columns: list[str]) -> tuple[list[RowProblem], list[str]]:
    problems = [
        RowProblem(0, None, name, f"the manifest has no '{name}' column; add it.")
        for name in REQUIRED_COLUMNS
        if name not in columns
    ]
    unknown = []
    for name in (c for c in columns if c not in COLUMNS):
        problem = _near_miss(str(name))
        if problem is None:
            unknown.append(name)
        else:
            problems.append(RowProblem(0, None, str(name), problem))
    return problems, unknown


_MANGLED = re.compile(r"^(?P<name>.+)\.(?P<n>\d+)$")  # how pandas renames a repeated header


def _near_miss(name: str) -> str | None:
    """The problem with a column that is not ours but looks like one of ours, else None."""
    mangled = _MANGLED.match(name)
    if mangled and mangled["name"] in COLUMNS:
        return f"the column '{mangled['name']}' appears more than once; keep one."
    close = difflib.get_close_matches(name.strip().lower(), list(COLUMNS), n=1, cutoff=0.75)
    if close:
        return (
            f"unknown column '{name}': did you mean '{close[0]}'? Rename it; as it is, its "
            "values would be ignored and the default used."
        )
    return None


def _unknown_columns_message(unknown: list[str]) -> str:
    parts = []
    for name in unknown:
        close = difflib.get_close_matches(name, list(COLUMNS), n=1)
        parts.append(f"'{name}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
    return f"ignoring unknown column(s) {', '.join(parts)}; known columns: {', '.join(COLUMNS)}."


def _checked_chunks(
    path: str,
    spec: Any | None,
    *,
    check_files: bool,
    chunk_rows: int,
    storage_options: dict | None,
) -> Iterator[tuple[CheckedChunk, list[RowProblem], list[str]]]:
    checker = ChunkChecker(
        rules_from_spec(spec),
        manifest_folder(path),
        check_files=check_files,
        storage_options=storage_options,
    )
    first_row = 1
    header: tuple[list[RowProblem], list[str]] | None = None
    for df in iter_raw_chunks(path, chunk_rows, storage_options=storage_options):
        df.columns = [str(c).strip() for c in df.columns]
        first = header is None
        if header is None:
            header = _check_header(list(df.columns))
        chunk = checker.check(df, first_row)
        first_row += len(df)
        yield chunk, (header[0] if first else []), header[1]


def validate_manifest(
    path: str,
    spec: Any | None = None,
    *,
    check_files: bool = True,
    chunk_rows: int = 65536,
    storage_options: dict | None = None,
) -> ValidationReport:
    """Check every row and report every problem (the first MAX_PROBLEMS_KEPT are kept).

    `spec` is a pipeline spec (duck-typed); None means Pusa-Wan rules and built-in defaults.
    `check_files` probes every input file's headers (images and videos are never decoded).
    """
    report = ValidationReport(rows=0, problems=[], task_counts={})
    counts: Counter[str] = Counter()
    for chunk, header_problems, unknown in _checked_chunks(
        path, spec, check_files=check_files, chunk_rows=chunk_rows, storage_options=storage_options
    ):
        report.unknown_columns = unknown
        for problem in header_problems + chunk.problems:
            report.problem_count += 1
            if len(report.problems) < MAX_PROBLEMS_KEPT:
                report.problems.append(problem)
        report.rows += chunk.n
        report.bad_rows += int(chunk.bad.sum())
        counts.update(chunk.task_counts())
    report.task_counts = dict(sorted(counts.items()))
    return report


def iter_items(
    path: str,
    spec: Any | None = None,
    *,
    check_files: bool = False,
    chunk_rows: int = 65536,
    storage_options: dict | None = None,
) -> Iterator[Item]:
    """Resolved, frozen `Item`s in manifest order, defaults filled in from `spec`.

    Raises `ManifestError` at the first chunk holding a bad row, before yielding any item of that
    chunk. Call `validate_manifest` first to see every problem at once and to probe input files.
    """
    for chunk in iter_checked_chunks(
        path, spec, check_files=check_files, chunk_rows=chunk_rows, storage_options=storage_options
    ):
        yield from chunk.items()


def iter_checked_chunks(
    path: str,
    spec: Any | None = None,
    *,
    check_files: bool = False,
    chunk_rows: int = 65536,
    storage_options: dict | None = None,
) -> Iterator[CheckedChunk]:
    """The manifest's checked chunks of `chunk_rows` rows (columns parsed, ids resolved), in
    order; `ManifestError` at the first chunk holding a bad row, as `iter_items`."""
    for chunk, header_problems, unknown in _checked_chunks(
        path, spec, check_files=check_files, chunk_rows=chunk_rows, storage_options=storage_options
    ):
        if header_problems or chunk.problems:
            report = ValidationReport(
                rows=chunk.first_row + chunk.n - 1,
                problems=(header_problems + chunk.problems)[:MAX_PROBLEMS_KEPT],
                task_counts={},
                problem_count=len(header_problems) + len(chunk.problems),
                bad_rows=int(chunk.bad.sum()),
            )
            report.raise_for_problems(path)
        if unknown and chunk.first_row == 1:
            warnings.warn(f"{path}: {_unknown_columns_message(unknown)}", ManifestWarning, 3)
        yield chunk


def chunk_items(chunk: CheckedChunk, rows: Iterable[int]) -> Iterator[Item]:
    """The chunk's items at these row offsets."""
    for row in rows:
        yield chunk._item(int(row))


def iter_chosen_items(
    path: str,
    spec: Any | None,
    chosen: Mapping[int, np.ndarray],
    *,
    chunk_rows: int,
    storage_options: dict | None = None,
) -> Iterator[Item]:
    """The items at `chosen[k]` (row offsets in chunk k of `chunk_rows` rows, counted from 0),
    in manifest order. Only those rows are checked; reading stops after the last chosen chunk.

    The manifest was checked whole before: a problem now means it changed since, and is an error.
    """
    if not chosen:
        return
    last = max(chosen)
    checker = ChunkChecker(
        rules_from_spec(spec),
        manifest_folder(path),
        check_files=False,
        storage_options=storage_options,
    )
    first_row = 1
    for index, df in enumerate(iter_raw_chunks(path, chunk_rows, storage_options=storage_options)):
        offsets = chosen.get(index)
        if offsets is not None and len(offsets):
            df.columns = [str(c).strip() for c in df.columns]
            rows = df.iloc[np.asarray(offsets, dtype=np.int64)].reset_index(drop=True)
            chunk = checker.check(rows, first_row)
            if chunk.problems:
                problem = chunk.problems[0]
                where = first_row + int(offsets[problem.row - first_row])
                raise ManifestError(
                    f"{path} changed while the run planned it: row {where}, column "
                    f"'{problem.column}': {problem.message} Rerun to plan it again."
                )
            for offset, item in zip(offsets, chunk.items(), strict=True):
                yield replace(item, row=first_row + int(offset))
        first_row += len(df)
        if index >= last:
            return


# --------------------------------------------------------------------------- fingerprint

_HASH_CACHE: dict[tuple, str] = {}


def content_hash(url: str, *, storage_options: dict | None = None) -> str:
    """sha256 of the file's bytes, streamed; cached per (url, size, mtime or etag) in-process."""
    fs, fs_path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    try:
        info = fs.info(fs_path)
    except FileNotFoundError as e:
        raise InputMediaError(f"{url}: input file not found.") from e
    stamp = next(
        (info[k] for k in ("mtime", "LastModified", "last_modified", "ETag", "etag") if k in info),
        None,
    )
    key = (url, info.get("size"), str(stamp))
    if stamp is not None and key in _HASH_CACHE:
        return _HASH_CACHE[key]
    digest = hashlib.sha256()
    with fs.open(fs_path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    value = digest.hexdigest()
    if stamp is not None:
        _HASH_CACHE[key] = value
    return value


def resolved_conditioning(item: Item, temporal_factor: int) -> list | None:
    """Per conditioned latent: index, multiplier, output pixel frames, source (None for t2v).

    The input videos' frame counts are not needed: their content hashes already cover them.
    """
    if item.task == "t2v" and not item.images and not item.video and not item.video_b:
        return None
    plan = task_rules.plan_conditioning(
        item.task,
        num_frames=item.num_frames,
        temporal_factor=temporal_factor,
        cond_frames=item.cond_frames,
        noise_multipliers=item.noise_multipliers,
        n_images=len(item.images),
        video_frames=UNPROBED_VIDEO_FRAMES if item.video else None,
        video_b_frames=UNPROBED_VIDEO_FRAMES if item.video_b else None,
    )
    return [
        [s.latent_index, s.multiplier, list(s.pixel_frames), s.source, s.image_index]
        for s in plan.slots
    ]


def _jsonable(value: Any) -> Any:
    if hasattr(value, "__dataclass_fields__"):
        return {k: _jsonable(getattr(value, k)) for k in value.__dataclass_fields__}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def fingerprint_payload(
    pipeline_identity: Any,
    *,
    task: Any,
    prompt: Any,
    negative_prompt: Any,
    images: list,
    video: Any,
    video_b: Any,
    conditioning: Any,
    num_frames: Any,
    height: Any,
    width: Any,
    fps: Any,
    seed: Any,
    steps: Any,
    guidance_scale: Any,
    shift: Any,
) -> dict:
    """Everything that changes the output video (never the row number or the id)."""
    return {
        "sampler_version": SAMPLER_VERSION,
        "pipeline": _jsonable(pipeline_identity),
        "task": task,
        "prompt": prompt,
        "negative_prompt": negative_prompt,
        "images": images,
        "video": video,
        "video_b": video_b,
        "conditioning": conditioning,
        "size": [num_frames, height, width],
        "fps": fps,
        "seed": seed,
        "steps": steps,
        "guidance_scale": guidance_scale,
        "shift": shift,
    }


def fingerprint_text(payload: dict) -> str:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)


def item_fingerprint(
    item: Item,
    pipeline_identity: Any,
    *,
    hash_file: Callable[[str], str] = content_hash,
    temporal_factor: int = 4,
) -> str:
    """sha256 over everything that changes the output video (never the row number or the id)."""
    payload = fingerprint_payload(
        pipeline_identity,
        task=item.task,
        prompt=item.prompt,
        negative_prompt=item.negative_prompt,
        images=[hash_file(p) for p in item.images],
        video=hash_file(item.video) if item.video else None,
        video_b=hash_file(item.video_b) if item.video_b else None,
        conditioning=resolved_conditioning(item, temporal_factor),
        num_frames=item.num_frames,
        height=item.height,
        width=item.width,
        fps=item.fps,
        seed=item.seed,
        steps=item.steps,
        guidance_scale=float(item.guidance_scale),
        shift=float(item.shift),
    )
    if item.fit not in (None, "cover"):  # "cover", the framing before `fit`, hashes as before
        payload["fit"] = item.fit
    return hashlib.sha256(fingerprint_text(payload).encode("utf-8")).hexdigest()


# Columns of a plain t2v row that its fingerprint reads, and how each is written in the JSON.
ROW_FIELDS = {
    name: COLUMNS[name]
    for name in (
        "prompt negative_prompt num_frames height width fps seed steps guidance_scale shift"
    ).split()
}
_HOLE = "@@pusa-batch-fingerprint:{}@@"
_HOLES = re.compile('"' + re.escape(_HOLE).replace(r"\{\}", r"(\w+)") + '"')
_PLAIN_JSON_TEXT = r"^[ !#-\[\]-~]*$"  # printable ASCII but " and \: json.dumps leaves it as is


@dataclass(frozen=True)
class FingerprintTemplate:
    """The fingerprint JSON of a plain t2v row, cut around its row fields: texts[0], then
    fields[0]'s JSON, then texts[1], and so on."""

    texts: tuple[str, ...]
    fields: tuple[str, ...]


def plain_t2v_template(pipeline_identity: Any) -> FingerprintTemplate | None:
    """The template, or None if the identity itself holds a placeholder (then rows go one by
    one)."""
    holes = {name: _HOLE.format(name) for name in ROW_FIELDS}
    payload = fingerprint_payload(
        pipeline_identity,
        task="t2v",
        images=[],
        video=None,
        video_b=None,
        conditioning=None,
        **holes,
    )
    pieces = _HOLES.split(fingerprint_text(payload))
    texts, fields = tuple(pieces[0::2]), tuple(pieces[1::2])
    return FingerprintTemplate(texts, fields) if sorted(fields) == sorted(ROW_FIELDS) else None


def chunk_fingerprints(
    chunk: CheckedChunk,
    rows: np.ndarray,
    pipeline_identity: Any,
    *,
    temporal_factor: int,
    template: FingerprintTemplate | None = None,
    hash_file: Callable[[str], str] = content_hash,
) -> list[str]:
    """`item_fingerprint` of the chunk's `rows` (offsets), in order: plain t2v rows column-wise
    (see the module's decisions), the others one item at a time."""
    rows = np.asarray(rows, dtype=np.int64)
    out: list[str | None] = [None] * len(rows)
    plain = _plain_t2v_rows(chunk, rows) if template is not None else np.zeros(len(rows), bool)
    if plain.any():
        picked = rows[plain]
        texts = _fingerprint_texts(chunk, picked, template)
        digests = _sha256_each(texts)
        spot = item_fingerprint(
            chunk._item(int(picked[0])), pipeline_identity, temporal_factor=temporal_factor
        )
        if digests[0] == spot:
            for position, digest in zip(np.flatnonzero(plain), digests, strict=True):
                out[position] = digest
        else:  # a rule of item_fingerprint that the template does not follow: never guess
            log.warning("column-wise fingerprints differ from item_fingerprint; using the latter")
            plain[:] = False
    for position in np.flatnonzero(~plain):
        item = chunk._item(int(rows[position]))
        out[position] = item_fingerprint(
            item, pipeline_identity, hash_file=hash_file, temporal_factor=temporal_factor
        )
    return out  # type: ignore[return-value]


# Columns the template accounts for: a chunk with any other (a column added later that the
# fingerprint may read) is fingerprinted one item at a time.
TEMPLATE_COLUMNS = frozenset(
    {"id", ID_TEXTS, "task", "image", "images", "video", "video_b", "cond_frames"}
    | {"noise_multipliers", *ROW_FIELDS}
)


def _plain_t2v_rows(chunk: CheckedChunk, rows: np.ndarray) -> np.ndarray:
    """Rows whose fingerprint reads no input file and no conditioning: t2v, no media."""
    if not TEMPLATE_COLUMNS.issuperset(chunk.cols):
        return np.zeros(len(rows), dtype=bool)
    plain = np.asarray(chunk.cols["task"][rows] == "t2v", dtype=bool)
    if any(name in chunk.cols for name in ("image", "images")):
        plain &= np.fromiter((not chunk.images[i] for i in rows), bool, len(rows))
    for name in ("video", "video_b"):
        if name in chunk.cols:
            plain &= np.fromiter((chunk.paths[name][i] is None for i in rows), bool, len(rows))
    return plain


def _fingerprint_texts(
    chunk: CheckedChunk, rows: np.ndarray, template: FingerprintTemplate
) -> pa.Array:
    parts: list[Any] = [template.texts[0]]
    for name, text in zip(template.fields, template.texts[1:], strict=True):
        parts += [_field_json(chunk, rows, name), text]
    return pc.binary_join_element_wise(*parts, "")


def _field_json(chunk: CheckedChunk, rows: np.ndarray, name: str) -> pa.Array | str:
    """The field's JSON text for each row (or one text for all, when the column is absent)."""
    default = chunk.rules.defaults.get(name)  # the prompt has none: it is required
    kind = ROW_FIELDS[name]
    column = chunk.cols.get(name)
    if kind == "text":
        if column is None:
            return json.dumps(str(default))
        cells = column[rows]
        cells = np.where(np.equal(cells, None), str(default), cells)
        return _json_strings(cells)
    if column is None:
        return json.dumps(int(default) if kind == "int" else float(default))
    cells = column[rows]
    values = np.where(np.isnan(cells), float(default), cells)
    if kind == "int":
        return pa.array(values.astype(np.int64)).cast(pa.string())
    return _float_texts(values)


def _json_strings(cells: np.ndarray) -> pa.Array:
    """json.dumps of each text: plain ones quoted column-wise, the rest one by one."""
    texts = pa.array(cells, pa.string())
    quoted = pc.binary_join_element_wise('"', texts, '"', "")
    plain = pc.match_substring_regex(texts, _PLAIN_JSON_TEXT)
    if pc.all(plain).as_py():
        return quoted
    escaped = [json.dumps(str(t)) for t, p in zip(cells, plain.to_pylist()) if not p]
    return pc.replace_with_mask(quoted, pc.invert(plain), pa.array(escaped, pa.string()))


def _float_texts(values: np.ndarray) -> pa.Array:
    """json.dumps of each float (its repr), computed once per distinct value."""
    bits, inverse = np.unique(values.view(np.uint64), return_inverse=True)
    texts = pa.array([repr(float(v)) for v in bits.view(np.float64)], pa.string())
    return texts.take(pa.array(inverse.reshape(-1)))


def _sha256_each(texts: pa.Array) -> list[str]:
    """sha256 hex of each text, read from the array's one data buffer."""
    _, offsets_buffer, data_buffer = texts.buffers()
    offsets = np.frombuffer(offsets_buffer, dtype=np.int32)[
        texts.offset : texts.offset + len(texts) + 1
    ]
    data = memoryview(data_buffer) if data_buffer is not None else memoryview(b"")
    bounds = offsets.tolist()
    return [hashlib.sha256(data[a:b]).hexdigest() for a, b in zip(bounds[:-1], bounds[1:])]
