"""Hugging Face ``videofolder``: ``videos/{id}.mp4``, ``metadata.parquet`` and a dataset card.

``file_name`` is relative to the metadata file, with flat columns (see ``HF_SCHEMA``). Parquet, not
JSON lines: pyarrow infers JSON types block by block, so a run whose first rows have no input
image breaks ``datasets``' JSON reader.

The card (``README.md``) has the YAML front matter the Hub and ``datasets`` read: ``configs``
(``data_files``: the metadata and ``videos/*.mp4``, so ``load_dataset(FOLDER)`` reads only those
even in an output root full of markers), ``dataset_info.features``, the license, and a body that
says how the videos were made. The license is derived from the model family the items record:
pipeline files carry none. The card is rewritten by each export; a ``README.md`` that another
hand wrote is never overwritten (the export stops first, naming it).

``hub_upload(folder, repo_id)`` plans an upload of an exported folder (one commit of the card,
the metadata and the videos it names); ``push_to_hub(plan)`` is the only call that goes online.
"""

from __future__ import annotations

import dataclasses
import io
import os
import shlex
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import metadata as package_metadata
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from pusa_batch.errors import ExportError
from pusa_batch.outputs.common import (
    HF_SCHEMA,
    ExportSummary,
    copy_all,
    done_markers,
    item_fields,
    item_record,
    open_destination,
)
from pusa_batch.store.index import video_path
from pusa_batch.store.io import redact_text
from pusa_batch.store.parts import EXTRA, extra_column
from pusa_batch.store.store import Store

HF_METADATA = "metadata.parquet"
HF_CARD = "README.md"
CARD_MARK = "<!-- pusa-batch: written by `pusa-batch export --format hf`, rewritten by each -->"
VIDEO_GLOB = "videos/*.mp4"


@dataclass(frozen=True)
class WeightsLicense:
    """The license of a model family's weights, and where that statement comes from."""

    license: str  # a Hub license id
    basis: str


FAMILY_LICENSES = {
    "wan2.1": WeightsLicense(
        "apache-2.0",
        "Wan2.1 (Wan-AI/Wan2.1-T2V-14B-Diffusers) is Apache-2.0; the Pusa code "
        "(Yaofang-Liu/Pusa-VidGen) is Apache-2.0 by its LICENSE file; confirm the Pusa V1 "
        "weights' terms on their model card (RaphaelLiu/PusaV1) before you redistribute",
    ),
    "wan2.2": WeightsLicense(
        "apache-2.0",
        "Wan2.2 (Wan-AI/Wan2.2-T2V-A14B-Diffusers) is Apache-2.0; the Pusa code "
        "(Yaofang-Liu/Pusa-VidGen) is Apache-2.0 by its LICENSE file; confirm the Pusa LoRAs' "
        "terms on their model card (RaphaelLiu/Pusa-Wan2.2-V1) before you redistribute",
    ),
    "mochi": WeightsLicense(
        "apache-2.0",
        "Mochi 1 preview (genmo/mochi-1-preview) is Apache-2.0; the Pusa code "
        "(Yaofang-Liu/Pusa-VidGen) is Apache-2.0 by its LICENSE file; confirm the Pusa V0.5 "
        "DiT's terms on its model card (RaphaelLiu/Pusa-V0.5) before you redistribute",
    ),
}
UNKNOWN_LICENSE = WeightsLicense(
    "other", "the items record no model family, so no license could be derived"
)
TASK_CATEGORIES = {"images": "image-to-video"}  # every item also has a prompt: text-to-video
SIZE_CATEGORIES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"))

DECODING = """\
## Decoding the videos

`datasets` decodes the `video` column with `torchcodec`, which needs FFmpeg's shared libraries.
With a CPU-only torch 2.13 (tried with torch 2.13.0+cpu and Debian 12's FFmpeg 5.1):

- `pip install "torchcodec==0.13.*"` plus FFmpeg's libraries, major version 4 to 8 (Debian 12:
  `apt-get install ffmpeg`): `ds[0]["video"]` is then a `torchcodec.decoders.VideoDecoder`.
  torchcodec 0.14 and later on PyPI are CUDA builds, which fail to load on a CPU-only torch
  (`libnvrtc.so.13` missing); 0.10 and older do not load against torch 2.13 (undefined symbols);
  without FFmpeg's libraries every torchcodec fails to load (`libavutil.so.*` missing). With a
  CUDA torch, install the torchcodec release made for that torch.
- Without torchcodec (always works; pusa-batch's tests do this): read the column undecoded and
  decode with PyAV (`pip install av`; its wheels bundle FFmpeg):

```python
import av
from datasets import Video, load_dataset

ds = load_dataset("{where}", split="train")
ds = ds.cast_column("video", Video(decode=False))  # {{"path": ..., "bytes": None}} per row
with av.open(ds[0]["video"]["path"]) as container:
    frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
```
"""


@dataclass(frozen=True)
class PipelineSeen:
    name: str | None
    family: str | None
    identity: str | None
    videos: int


@dataclass(frozen=True)
class CardFacts:
    """What a dataset card says about an export: read from the markers and `run.json`."""

    exported: int
    skipped: int
    video_bytes: int
    tasks: tuple[tuple[str, int], ...]
    sizes: tuple[tuple[str, int], ...]  # "1280x720, 81 frames at 25 fps" -> videos
    pipelines: tuple[PipelineSeen, ...]
    has_images: bool
    command: str | None  # the run command, as run.json records the last run
    exported_with: str  # pusa-batch's version at export
    licenses: tuple[WeightsLicense, ...]
    schema: pa.Schema = HF_SCHEMA  # the metadata's columns (with `extra` when items carry it)


def hf_table(markers: list[dict]) -> pa.Table:
    """`HF_SCHEMA`'s columns, plus `extra` (a struct of the user's own manifest columns) when
    any item carries some."""
    rows = [{"file_name": video_path(m["id"]), **item_record(m)} for m in markers]
    table = pa.Table.from_pylist(rows, schema=HF_SCHEMA)
    extra = [item_fields(m).get("extra") for m in markers]
    if any(extra):
        table = table.append_column(EXTRA, extra_column(extra))
    return table


def export_hf(
    store: Store,
    dest: str | os.PathLike | None = None,
    *,
    storage_options: dict | None = None,
    repo_id: str | None = None,
) -> ExportSummary:
    """A ``videofolder`` dataset: ``videos/{id}.mp4``, ``metadata.parquet`` and ``README.md``.

    With ``dest=None`` the metadata and the card are written into the output root itself, beside
    the videos (nothing is copied); ``datasets.load_dataset(ROOT)`` then reads only what the card's
    ``configs`` name. ``repo_id`` is the Hub repository the card's loading example names (else
    the folder). A ``README.md`` already there that pusa-batch did not write stops the export
    before anything is written.
    """
    markers, skipped = done_markers(store)
    data = io.BytesIO()
    table = hf_table(markers)
    pq.write_table(table, data, compression="zstd")
    facts = card_facts(markers, skipped, run_command(store.read_run_info(), store.url))
    facts = dataclasses.replace(facts, schema=table.schema)
    linked = 0
    if dest is None:
        where = store.url
        check_card_is_ours(_read_or_none(lambda: store.root.read_bytes(HF_CARD)), where)
        card = dataset_card(facts, repo_id or where)
        store.root.write_bytes(HF_METADATA, data.getvalue())
        store.root.write_bytes(HF_CARD, card.encode())
    else:
        target = open_destination(dest, storage_options, store)
        where = target.display
        check_card_is_ours(_read_or_none(lambda: target.fs.cat_file(target.path(HF_CARD))), where)
        linked = copy_all(store, target, [(m, video_path(m["id"])) for m in markers])
        target.write(HF_METADATA, data.getvalue())
        target.write(HF_CARD, dataset_card(facts, repo_id or where).encode())
    return ExportSummary(
        format="hf",
        dest=where,
        exported=len(markers),
        bytes=sum(m["video_bytes"] for m in markers),
        linked=linked,
        skipped=skipped,
        files=(HF_METADATA, HF_CARD),
    )


def _read_or_none(read) -> bytes | None:
    try:
        return read()
    except FileNotFoundError:
        return None


def check_card_is_ours(existing: bytes | None, where: str) -> None:
    """Refuse to overwrite a README.md that pusa-batch did not write."""
    if existing is not None and CARD_MARK.encode() not in existing:
        raise ExportError(
            f"{where}/{HF_CARD} exists and was not written by pusa-batch: move it away (the "
            "export writes its own dataset card there), or export with --dest to another folder"
        )


# ---------------------------------------------------------------------------- the card


def card_facts(markers: list[dict], skipped: Iterable[str], command: str | None) -> CardFacts:
    """The facts a card states, from the done markers and the run command (`run_command`)."""
    items = [item_fields(m) for m in markers]
    pipelines = Counter(_pipeline_key(m.get("pipeline")) for m in markers)
    families = sorted({str(family) for _, family, _ in pipelines})  # "None": not recorded
    licenses = (FAMILY_LICENSES.get(family, UNKNOWN_LICENSE) for family in families)
    return CardFacts(
        exported=len(markers),
        skipped=len(tuple(skipped)),
        video_bytes=sum(int(m.get("video_bytes") or 0) for m in markers),
        tasks=tuple(sorted(Counter(str(i.get("task")) for i in items).items())),
        sizes=tuple(sorted(Counter(_size(m, i) for m, i in zip(markers, items)).items())),
        pipelines=tuple(
            PipelineSeen(name, family, identity, n)
            for (name, family, identity), n in sorted(pipelines.items(), key=lambda kv: str(kv))
        ),
        has_images=any(i.get("images") or i.get("image") for i in items),
        command=command,
        exported_with=pusa_batch_version(),
        licenses=tuple(dict.fromkeys(licenses)),
    )


def _pipeline_key(pipeline: Any) -> tuple[str | None, str | None, str | None]:
    if isinstance(pipeline, dict):
        return pipeline.get("name"), pipeline.get("family"), pipeline.get("identity")
    return (pipeline if isinstance(pipeline, str) else None), None, None


def _size(marker: dict, item: dict) -> str:
    frames = marker.get("frames") or item.get("num_frames")
    return f"{item.get('width')}x{item.get('height')}, {frames} frames at {item.get('fps')} fps"


def run_command(run_info: dict | None, output: str) -> str | None:
    """The `pusa-batch run` command of the run `run.json` records (redacted), or None."""
    if not run_info or not run_info.get("manifest") or not run_info.get("pipeline"):
        return None
    words = ["pusa-batch", "run", str(run_info["manifest"]), "-o", output]
    return redact_text(shlex.join([*words, "--pipeline", str(run_info["pipeline"])]))


def pusa_batch_version() -> str:
    try:
        return package_metadata.version("pusa-batch")
    except package_metadata.PackageNotFoundError:
        return "unknown"


def size_category(n: int) -> str:
    return next((name for limit, name in SIZE_CATEGORIES if n < limit), "100K<n<1M")


def hf_features(schema: pa.Schema = HF_SCHEMA) -> list[dict]:
    """`dataset_info.features` in the Hub's YAML form: `video` first, then each metadata
    column but `file_name` (which the videofolder turns into `video`)."""
    features = [{"name": "video", "dtype": "video"}]
    for field in schema:
        if field.name != "file_name":
            features.append({"name": field.name, **_feature_type(field.type)})
    return features


def _feature_type(kind: pa.DataType) -> dict:
    if pa.types.is_list(kind):
        inner = _feature_type(kind.value_type)
        return {"list": inner.get("dtype", inner)}
    if pa.types.is_struct(kind):  # the Hub's form of a dict column: one feature per field
        return {"struct": [{"name": f.name, **_feature_type(f.type)} for f in kind]}
    names = {pa.string(): "string", pa.int64(): "int64", pa.float64(): "float64"}
    names |= {pa.bool_(): "bool", pa.null(): "null"}
    if kind not in names:
        raise ExportError(f"no Hugging Face feature type for the metadata column type {kind}")
    return {"dtype": names[kind]}


def card_metadata(facts: CardFacts) -> dict:
    """The YAML front matter: what the Hub's card validator and `datasets` read."""
    license_ids = sorted({lic.license for lic in facts.licenses}) or ["other"]
    categories = ["text-to-video"] + (["image-to-video"] if facts.has_images else [])
    families = sorted({p.family for p in facts.pipelines if p.family})
    return {
        "pretty_name": pretty_name(facts),
        "license": license_ids[0] if len(license_ids) == 1 else license_ids,
        "task_categories": categories,
        "tags": ["synthetic", "video-generation", "pusa", "pusa-batch", *families],
        "size_categories": [size_category(facts.exported)],
        "configs": [
            {
                "config_name": "default",
                "data_files": [{"split": "train", "path": [HF_METADATA, VIDEO_GLOB]}],
            }
        ],
        "dataset_info": {"features": hf_features(facts.schema)},
    }


def pretty_name(facts: CardFacts) -> str:
    names = sorted({p.name for p in facts.pipelines if p.name})
    return f"{', '.join(names) or 'Pusa'} videos (pusa-batch)"


def dataset_card(facts: CardFacts, where: str) -> str:
    """README.md: YAML front matter, then how the videos were made, the license, loading and
    decoding. `where` is what `load_dataset` is given in the examples (a repo id or folder)."""
    front = yaml.safe_dump(card_metadata(facts), sort_keys=False, allow_unicode=True, width=100)
    body = "\n".join(
        [
            CARD_MARK,
            "",
            f"# {pretty_name(facts)}",
            "",
            f"{facts.exported} synthetic videos: each was generated by a "
            "[Pusa](https://github.com/Yaofang-Liu/Pusa-VidGen) video diffusion model with "
            "pusa-batch, none was filmed. One row per video; `metadata.parquet` holds its "
            "prompt and settings.",
            "",
            *_how_made(facts),
            *_license_section(facts),
            "## Loading",
            "",
            "```python",
            "from datasets import load_dataset",
            "",
            f'ds = load_dataset("{where}", split="train")',
            "```",
            "",
            "Each row has the settings the item was generated with (`prompt`, `negative_prompt`, "
            "`task`, `seed`, `num_frames`, `height`, `width`, `fps`, `steps`, `guidance_scale`, "
            "`shift`), its inputs (`input_image`, `input_images`, `input_video`, "
            "`input_video_b`; URLs redacted), its conditioning (`cond_*`), the pipeline "
            "identity and the video's `sha256`.",
            "",
            DECODING.format(where=where),
        ]
    )
    return f"---\n{front}---\n{body}"


def _how_made(facts: CardFacts) -> list[str]:
    command = f"`{facts.command}`" if facts.command else "not recorded (no run.json in the root)"
    pipelines = "; ".join(
        f"{p.name or '?'} (family {p.family or '?'}, identity {p.identity or '?'}): {p.videos}"
        for p in facts.pipelines
    )
    rows = [
        ("generated by", f"{command} (as `run.json` records the last run into the output root)"),
        ("pipeline", pipelines or "none"),
        ("tasks", ", ".join(f"{task} {n}" for task, n in facts.tasks) or "none"),
        ("sizes", "; ".join(f"{size}: {n}" for size, n in facts.sizes) or "none"),
        (
            "exported",
            f"{facts.exported} video(s), {facts.video_bytes / 1e6:.1f} MB, with pusa-batch "
            f"{facts.exported_with}; {facts.skipped} done item(s) left out (video missing or "
            "shorter than recorded)",
        ),
    ]
    table = ["| | |", "|---|---|", *(f"| {k} | {_cell(v)} |" for k, v in rows)]
    return ["## How it was made", "", *table, ""]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _license_section(facts: CardFacts) -> list[str]:
    ids = ", ".join(sorted({f"`{lic.license}`" for lic in facts.licenses})) or "`other`"
    lines = [
        "## License",
        "",
        f"{ids}: derived by pusa-batch from the model family each item records, because "
        "pipeline files carry no license field:",
        "",
        *(f"- {lic.basis}." for lic in facts.licenses),
        "- a tiny twin's random weights are pusa-batch's own (Apache-2.0).",
        "",
        "Check the licenses of the weights you actually ran, and of any input images or videos, "
        "before you publish.",
        "",
    ]
    return lines


# ---------------------------------------------------------------------------- the Hub


@dataclass(frozen=True)
class HubUpload:
    """One commit to a Hub dataset repository: which local file goes to which path."""

    repo_id: str
    operations: tuple[Any, ...]  # huggingface_hub.CommitOperationAdd
    commit_message: str
    repo_type: str = "dataset"

    @property
    def paths_in_repo(self) -> tuple[str, ...]:
        return tuple(op.path_in_repo for op in self.operations)


def local_export_folder(store: Store, dest: str | os.PathLike | None) -> str:
    """The local folder an hf export to `dest` writes (the root for None), which `hub_upload`
    reads; an object store is refused before anything is exported."""
    if dest is None:
        if not store.root.is_local:
            raise ExportError(
                f"--push-to-hub uploads a local folder, and the output root {store.url} is not "
                "one: export with --dest to a local folder"
            )
        return store.root.root
    target = open_destination(dest, None, store)
    if not target.is_local:
        raise ExportError(
            f"--push-to-hub uploads a local folder, and {target.display} is not one: give "
            "--dest a local folder"
        )
    return target.root


def check_repo_id(repo_id: str) -> str:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise ExportError(f"--push-to-hub {repo_id!r}: {exc} Give it as OWNER/NAME.") from exc
    if "/" not in repo_id:
        raise ExportError(f"--push-to-hub {repo_id!r}: give the dataset repo as OWNER/NAME")
    return repo_id


def hub_upload(folder: str | os.PathLike, repo_id: str) -> HubUpload:
    """The upload of an exported folder: its card, its metadata and every video the metadata
    names, at the same relative paths. Reads the folder only; nothing goes online."""
    from huggingface_hub import CommitOperationAdd

    check_repo_id(repo_id)
    root = os.fspath(folder)
    if not os.path.isfile(os.path.join(root, HF_METADATA)):
        raise ExportError(
            f"{root} has no {HF_METADATA}: --push-to-hub uploads a local folder that "
            "`export --format hf` wrote; export to a local --dest first"
        )
    names = pq.read_table(os.path.join(root, HF_METADATA), columns=["file_name"])
    relative = [HF_CARD, HF_METADATA, *names["file_name"].to_pylist()]
    missing = [rel for rel in relative if not os.path.isfile(os.path.join(root, rel))]
    if missing:
        raise ExportError(f"{root}: files the export names are missing: {', '.join(missing[:5])}")
    operations = tuple(
        CommitOperationAdd(path_in_repo=rel, path_or_fileobj=os.path.join(root, rel))
        for rel in relative
    )
    videos = len(relative) - 2
    message = f"pusa-batch {pusa_batch_version()} export: {videos} video(s), card and metadata"
    return HubUpload(repo_id, operations, message)


def push_to_hub(upload: HubUpload, *, token: str | None = None) -> str:
    """Create the dataset repository if it is missing (private), then make one commit of the
    plan; returns the commit URL. The token comes from `hf auth login` or HF_TOKEN if not given."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    try:
        api.create_repo(upload.repo_id, repo_type=upload.repo_type, private=True, exist_ok=True)
        info = api.create_commit(
            repo_id=upload.repo_id,
            repo_type=upload.repo_type,
            operations=list(upload.operations),
            commit_message=upload.commit_message,
        )
    except Exception as exc:  # huggingface_hub raises its own, httpx's and OS errors
        raise ExportError(
            f"could not push to the Hub dataset {upload.repo_id} ({type(exc).__name__}: "
            f"{redact_text(str(exc))}); log in with `hf auth login` (or set HF_TOKEN) with "
            "write access, check the network, then rerun the export"
        ) from exc
    return str(info.commit_url)
