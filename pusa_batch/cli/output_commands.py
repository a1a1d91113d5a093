"""Commands on a run's outputs (export, gallery) and the manifest builders."""

from __future__ import annotations

import dataclasses
import enum
import os
import socket
from pathlib import Path

import typer

from pusa_batch.cli.app import (
    PipelineOpt,
    StorageOpt,
    err,
    load_spec_or_none,
    out,
    parse_storage_options,
    print_json,
    safe_text,
)
from pusa_batch.tasks import TASKS

# ---------------------------------------------------------------- using the outputs


class ExportFormat(str, enum.Enum):
    vbench = "vbench"
    hf = "hf"
    webdataset = "webdataset"


class VBenchMode(str, enum.Enum):
    standard = "standard"
    custom = "custom"


class VBenchLayout(str, enum.Enum):
    flat = "flat"
    per_dimension = "per-dimension"


TaskChoice = enum.Enum("TaskChoice", {task: task for task in TASKS}, type=str)


class GroupBy(str, enum.Enum):
    auto = "auto"
    prompt = "prompt"
    base = "base"
    none = "none"


def legacy_spelling(new: str | None, old: str | None, old_flag: str, new_flag: str) -> str | None:
    """The value of a renamed option, from its new or (with a notice) its old spelling."""
    if old is not None and new is not None:
        raise typer.BadParameter(f"give it once, as {new_flag}", param_hint=old_flag)
    if old is not None:
        err.print(f"note: {old_flag} is deprecated here; use {new_flag}", highlight=False)
    return new if new is not None else old


def export(
    output: str = typer.Argument(..., metavar="ROOT", help="Output root of a run."),
    format: ExportFormat = typer.Option(..., "--format", "-f", help="The layout to write."),
    dest: str | None = typer.Option(
        None, "--dest", help="Where to write (default: hf into the root, else required)."
    ),
    legacy_dest: str | None = typer.Option(
        None, "-o", "--output", hidden=True, help="Deprecated spelling of --dest."
    ),
    shard_size: str = typer.Option("1GB", help="WebDataset shard size, e.g. 1GB, 500MB."),
    vbench_mode: VBenchMode = typer.Option(
        VBenchMode.standard,
        help="VBench: standard (VBench's suite, prompts read from file names) | custom (also "
        "DEST/vbench_prompts.json for --mode custom_input --prompt_file).",
    ),
    vbench_layout: VBenchLayout = typer.Option(
        VBenchLayout.flat,
        help="VBench: flat (DEST/videos/) | per-dimension (DEST/videos/{dimension}/, the "
        "dimensions read from --vbench-prompts).",
    ),
    vbench_prompts: str | None = typer.Option(
        None,
        metavar="DIR",
        help="VBench's prompts/prompts_per_dimension folder (for --vbench-layout).",
    ),
    push_to_hub: str | None = typer.Option(
        None,
        "--push-to-hub",
        metavar="REPO",
        help="hf only: then upload the export to this Hub dataset repo (OWNER/NAME; created "
        "private if missing; log in with `hf auth login` or set HF_TOKEN).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the export's summary as JSON."),
    storage_option: list[str] | None = StorageOpt,
) -> int:
    """Lay a run out for evaluation suites and dataset loaders."""
    from pusa_batch.outputs.hf import export_hf
    from pusa_batch.outputs.vbench import export_vbench
    from pusa_batch.outputs.webdataset import export_webdataset
    from pusa_batch.store.store import Store

    dest = legacy_spelling(dest, legacy_dest, "-o/--output", "--dest")
    format, vbench_mode, vbench_layout = format.value, vbench_mode.value, vbench_layout.value
    options = parse_storage_options(storage_option)
    store = Store(output, options)
    store.require_existing("export")
    vbench_set = (vbench_mode, vbench_layout, vbench_prompts) != ("standard", "flat", None)
    if format != "vbench" and vbench_set:
        raise typer.BadParameter(
            "--vbench-* options are for --format vbench", param_hint="--format"
        )
    if push_to_hub is not None and format != "hf":
        raise typer.BadParameter("--push-to-hub is for --format hf", param_hint="--push-to-hub")
    if push_to_hub is not None:
        from pusa_batch.outputs.hf import check_repo_id, local_export_folder

        check_repo_id(push_to_hub)
        hub_folder = local_export_folder(store, dest)  # before exporting: a bucket is refused
    if format == "hf":
        summary = export_hf(store, dest, storage_options=options, repo_id=push_to_hub)
    elif dest is None:
        raise typer.BadParameter(f"--format {format} needs --dest", param_hint="--dest")
    elif format == "vbench":
        summary = export_vbench(
            store,
            dest,
            mode=vbench_mode,
            layout=vbench_layout,
            prompts_dir=vbench_prompts,
            storage_options=options,
        )
    else:
        summary = export_webdataset(store, dest, shard_size, storage_options=options)
    if as_json:
        hub = push_export(hub_folder, push_to_hub) if push_to_hub is not None else None
        print_json({**dataclasses.asdict(summary), "pushed_to": hub})
        return 0
    out.print(
        f"exported {summary.exported} video(s) ({summary.bytes / 1e6:.1f} MB) as {format} "
        f"to {summary.dest}",
        highlight=False,
    )
    for item_id in summary.skipped[:20]:
        out.print(f"  skipped {item_id}: video missing or shorter than recorded", markup=False)
    if format == "vbench":
        out.print(f"  VBench's --videos_path: {summary.dest}/videos", markup=False, highlight=False)
    for warning in summary.warnings:
        out.print(f"  warning: {warning}", markup=False, highlight=False)
    if push_to_hub is not None:
        pushed = push_export(hub_folder, push_to_hub)
        out.print(
            f"pushed {pushed['files']} file(s) to the Hub dataset {push_to_hub}: {pushed['url']}",
            markup=False,
            highlight=False,
        )
    return 0


def push_export(folder, repo: str) -> dict:
    from pusa_batch.outputs.hf import hub_upload, push_to_hub

    upload = hub_upload(folder, repo)
    return {"repo": repo, "files": len(upload.operations), "url": str(push_to_hub(upload))}


def gallery(
    output: str = typer.Argument(..., metavar="ROOT", help="Output root of a run."),
    html: str | None = typer.Option(
        None,
        "--html",
        metavar="PAGE",
        help="HTML page to write (default: gallery.html in the root).",
    ),
    legacy_page: str | None = typer.Option(
        None, "--output", "-o", hidden=True, help="Deprecated spelling of --html."
    ),
    group_by: GroupBy = typer.Option(
        GroupBy.auto,
        "--group-by",
        help="prompt (seeds side by side) | base (a sweep's grid side by side) | none | auto "
        "(base for a sweep, else prompt when a prompt has several items, else none).",
    ),
    video_base: str | None = typer.Option(
        None, help="URL prefix the page uses for videos (e.g. an https mirror of an s3:// root)."
    ),
    storage_option: list[str] | None = StorageOpt,
) -> int:
    """Write a static HTML page to look at a run: summary, filters, videos grouped by prompt."""
    from pusa_batch.outputs.gallery import write_gallery
    from pusa_batch.store.store import Store

    page = legacy_spelling(html, legacy_page, "-o/--output", "--html PAGE")
    options = parse_storage_options(storage_option)
    summary = write_gallery(
        Store(output, options), page, video_base=video_base, group_by=group_by.value
    )
    out.print(
        f"wrote {summary.page}: {summary.done} done, {summary.failed} failed item(s), "
        f"grouped by {summary.grouping}",
        highlight=False,
    )
    return 0


def verify(
    output: str = typer.Argument(..., help="Output root of a run."),
    repair: bool = typer.Option(
        False,
        help="Restore markers from the index where the video is whole, index again the done "
        "items the index lost, and remove the rest (the next run makes them again).",
    ),
    checksums: bool = typer.Option(
        False,
        "--checksums",
        help="Also compare each done video's sha256 with the recorded one (reads every video).",
    ),
    storage_option: list[str] | None = StorageOpt,
) -> int:
    """Check every done item's video and marker against the index (exit 1 if any is damaged)."""
    from pusa_batch.store.store import Store

    store = Store(output, parse_storage_options(storage_option))
    store.require_existing("verify")
    if not repair:
        return _verify(store, checksums, repair=False)
    # --repair writes markers and index parts: never beside a live run (exit 3, as for `run`)
    lease = store.acquire_lease(_owner("verify --repair"), wait=False)
    if lease.note:
        err.print(lease.note, markup=False, highlight=False)
    try:
        return _verify(store, checksums, repair=True)
    finally:
        lease.release()


def _owner(command: str) -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "command": command}


def _verify(store, checksums: bool, repair: bool) -> int:
    state = store.state()
    if checksums:
        state.damaged.update(store.checksum_damage(state))
    done = len(state.done_ids() - set(state.damaged))
    index_ok = _report_index(store, state, repair) and _report_final_index(store, repair)
    if not state.damaged:
        out.print(f"{store.url}: {done} done item(s), none damaged", highlight=False)
        return 0 if index_ok else 1
    err.print(f"{store.url}: {len(state.damaged)} damaged item(s), {done} whole:", highlight=False)
    outcome = store.repair(state) if repair else {}
    for item_id, why in sorted(state.damaged.items()):
        done_about_it = f" -> {outcome[item_id]}" if item_id in outcome else ""
        err.print(f"  {safe_text(item_id)}: {why}{done_about_it}", markup=False, highlight=False)
    if not repair:
        err.print("A run of the same manifest makes them again; --repair mends what it can now.")
    restored = sum(1 for v in outcome.values() if v.startswith("marker restored"))
    return 0 if repair and index_ok and restored == len(state.damaged) else 1


def _report_final_index(store, repair: bool) -> bool:
    """index.parquet, where there is one, must read; --repair writes it again from the parts."""
    if store.root.size("index.parquet") is None or store.has_final_index():
        return True
    if repair:
        rows = store.write_final_index()
        err.print(f"{store.url}: index.parquet was unreadable; wrote it again ({rows} rows)")
        return True
    err.print(
        f"{store.url}: index.parquet is unreadable; the next run or --repair writes it again",
        markup=False,
        highlight=False,
    )
    return False


def _report_index(store, state, repair: bool) -> bool:
    """Say what the index lacks (unreadable parts, done items it lost); with `repair`, mend it.
    True when the index is whole (now)."""
    if not state.corrupt_parts and not state.rebuilt:
        return True
    if repair:
        err.print(f"{store.url}: {store.heal_index(state)}", markup=False, highlight=False)
        return True
    if state.corrupt_parts:
        names = ", ".join(state.corrupt_parts)
        err.print(f"{store.url}: unreadable index part(s): {names}", markup=False, highlight=False)
    err.print(
        f"{store.url}: {len(state.rebuilt)} done item(s) found from their markers, missing from "
        "the index; a run or --repair indexes them again (none is regenerated)",
        markup=False,
        highlight=False,
    )
    return False


# ---------------------------------------------------------------- building manifests


def print_build(summary) -> int:
    tasks = ", ".join(f"{task} {n}" for task, n in sorted(summary.task_counts.items()))
    out.print(f"wrote {summary.rows} row(s) to {summary.out} ({tasks})", highlight=False)
    for skipped in summary.skipped[:50]:
        out.print(f"  skipped {skipped.source}: {skipped.reason}", markup=False, highlight=False)
    if len(summary.skipped) > 50:
        out.print(f"  ... and {len(summary.skipped) - 50} more skipped")
    for note in summary.notes:
        out.print(f"  note: {note}", markup=False, highlight=False)
    return 0


def manifest_from_folder(
    images: Path = typer.Argument(..., help="Folder of images (searched recursively)."),
    output: Path = typer.Option(
        ..., "-o", "--output", help="Manifest to write (.parquet/.csv/.jsonl)."
    ),
    prompts: Path | None = typer.Option(
        None, help="Folder of .txt prompts (default: beside images)."
    ),
    task: TaskChoice = typer.Option(TaskChoice("i2v"), help="Task of every row."),
    strict: bool = typer.Option(False, help="Unpaired images or prompts are an error, not a skip."),
    pipeline: Path | None = PipelineOpt,
) -> int:
    """One row per image, its prompt from the .txt of the same name."""
    from pusa_batch.manifest.builders import from_folder

    summary = from_folder(
        str(images),
        str(output),
        prompts_dir=str(prompts) if prompts else None,
        task=task.value,
        strict=strict,
        spec=load_spec_or_none(pipeline),
    )
    return print_build(summary)


def manifest_from_prompts(
    prompts: Path = typer.Argument(..., help="Prompts: .txt (one per line), .jsonl or .csv."),
    output: Path = typer.Option(..., "-o", "--output", help="Manifest to write."),
    task: TaskChoice = typer.Option(TaskChoice("t2v"), help="Task of every row."),
    seeds_per_prompt: int = typer.Option(1, help="Rows (seeds) per prompt."),
    seed_start: int = typer.Option(0, help="First seed."),
    pipeline: Path | None = PipelineOpt,
) -> int:
    """One row per prompt and seed; ids read like the prompt (a-red-fox-3f2a1c9b-s0) and stay
    the same when prompts are appended."""
    from pusa_batch.manifest.builders import from_prompts

    summary = from_prompts(
        str(prompts),
        str(output),
        task=task.value,
        seeds_per_prompt=seeds_per_prompt,
        seed_start=seed_start,
        spec=load_spec_or_none(pipeline),
    )
    return print_build(summary)


def manifest_from_vbench(
    prompts: Path = typer.Argument(
        ..., help="VBench's prompts/prompts_per_dimension folder (one {dimension}.txt each)."
    ),
    output: Path = typer.Option(..., "-o", "--output", help="Manifest to write."),
    dimension: list[str] | None = typer.Option(
        None,
        metavar="NAME",
        help="Only this dimension's prompts (repeatable; default: every file).",
    ),
    samples: int = typer.Option(5, help="Videos per prompt (seeds 0..N-1); VBench scores 5."),
    pipeline: Path | None = PipelineOpt,
) -> int:
    """VBench's standard prompt suite: t2v rows, each prompt once, seeds 0..samples-1."""
    from pusa_batch.manifest.builders_vbench import from_vbench

    summary = from_vbench(
        str(prompts),
        str(output),
        dimensions=dimension or (),
        samples=samples,
        spec=load_spec_or_none(pipeline),
    )
    return print_build(summary)


def manifest_sweep(
    base: Path = typer.Argument(..., help="Base manifest."),
    grid: list[str] = typer.Option(..., help="COLUMN=VALUES, e.g. seed=0..4 (repeatable)."),
    output: Path = typer.Option(..., "-o", "--output", help="Manifest to write."),
    pipeline: Path | None = PipelineOpt,
) -> int:
    """Every base row over the Cartesian product of the grids."""
    from pusa_batch.manifest.builders_sweep import parse_grid, sweep

    columns = dict(parse_grid(spec) for spec in grid)
    summary = sweep(str(base), str(output), columns, spec=load_spec_or_none(pipeline))
    return print_build(summary)
