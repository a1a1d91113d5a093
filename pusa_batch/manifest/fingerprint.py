"""Fingerprints: the sha256 of everything that changes an item's video, one item or a column
at a time.

Decisions:
- A fingerprint is the sha256 of one JSON text (`fingerprint_payload`). For plain t2v rows (no
  input media) `chunk_fingerprints` writes that text column-wise with Arrow around a template cut
  from the same payload, and hashes it row by row from one buffer: the same bytes as
  `item_fingerprint`, checked on the first such row of every call, at about a tenth of the cost.
- What never enters it: the row number, the id, and the user's own columns (`Item.extra`):
  relabelling a manifest regenerates nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pusa_batch import tasks as task_rules
from pusa_batch.errors import InputMediaError
from pusa_batch.item import Item
from pusa_batch.manifest.check import ID_TEXTS, UNPROBED_VIDEO_FRAMES, CheckedChunk
from pusa_batch.manifest.check_cells import as_written
from pusa_batch.manifest.schema import COLUMNS

log = logging.getLogger(__name__)

SAMPLER_VERSION = "1"

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
# A number column's cells as written serve only error messages.
TEMPLATE_COLUMNS = frozenset(
    {"id", ID_TEXTS, "task", "image", "images", "video", "video_b", "cond_frames"}
    | {"noise_multipliers", *ROW_FIELDS}
    | {as_written(name) for name, kind in ROW_FIELDS.items() if kind in ("int", "float")}
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
