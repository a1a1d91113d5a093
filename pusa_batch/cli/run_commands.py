"""The run-side commands: validate, doctor, make-tiny-model, run, status, submit.

Each parses its options, calls the library and prints; `main.py` registers them."""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import os
import signal
import threading
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from pusa_batch.cli.app import (
    BatchSizeOpt,
    CpusPerWorkerOpt,
    GpusPerWorkerOpt,
    LeaseStaleOpt,
    LongestFirstOpt,
    MaxRetriesOpt,
    MaxWorkersOpt,
    NodeLabelOpt,
    NoWaitOpt,
    PipelineOpt,
    QuietOpt,
    RegenerateChangedOpt,
    ResourcesOpt,
    RetryFailedOpt,
    StorageOpt,
    StorageTimeoutOpt,
    TrustIndexOpt,
    VerboseOpt,
    WeightsStorageOpt,
    WorkersOpt,
    err,
    load_spec_or_none,
    local_pipeline,
    out,
    parse_labels,
    parse_resources,
    parse_storage_options,
    parse_workers,
    print_json,
    safe_text,
    verbosity,
)
from pusa_batch.cli.processes import kill_descendants
from pusa_batch.errors import Terminated, printable
from pusa_batch.store.io import redact_text

# ---------------------------------------------------------------- checking inputs


def extra_note(names) -> str:
    from pusa_batch.manifest.columns import extra_note as note

    return safe_text(note(names))


StrictColumnsOpt = typer.Option(
    False,
    "--strict-columns",
    help="Refuse every column that is not pusa-batch's (by default your own columns are "
    "carried into each item's metadata as `extra`).",
)


def validate(
    manifest: str = typer.Argument(..., help="Manifest: .csv, .parquet or .jsonl, a path or URL."),
    pipeline: str | None = PipelineOpt,
    check_files: bool = typer.Option(True, help="Probe every input file's header."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    strict_columns: bool = StrictColumnsOpt,
) -> int:
    """Check every row before any model is loaded; list all bad rows (exit 2 if any)."""
    from pusa_batch.manifest.read import validate_manifest

    report = validate_manifest(
        str(manifest),
        load_spec_or_none(pipeline),
        check_files=check_files,
        strict_columns=strict_columns,
    )
    if as_json:
        out.print_json(data=dataclasses.asdict(report))
    elif report.problems:
        shown = safe_text(redact_text(manifest))
        err.print(f"{shown}: {report.problem_count} problem(s) in {report.rows} row(s):")
        for problem in report.problems:
            err.print(f"  {safe_text(redact_text(str(problem)))}", markup=False, highlight=False)
        if report.problem_count > len(report.problems):
            err.print(f"  ... and {report.problem_count - len(report.problems)} more")
    else:
        tasks = ", ".join(f"{task} {n}" for task, n in sorted(report.task_counts.items()))
        shown = safe_text(redact_text(manifest))
        out.print(f"{shown}: {report.rows} row(s) OK ({tasks})", markup=False, highlight=False)
        if report.extra_columns:
            out.print(f"  {safe_text(report.extra_note())}", markup=False, highlight=False)
    return 2 if report.problems else 0


def doctor(
    pipeline: str = typer.Option(..., "--pipeline", "-p", help="Pipeline TOML."),
    as_json: bool = typer.Option(False, "--json", help="Print the checks as JSON."),
) -> int:
    """Check a pipeline's files, keys, shapes, LoRAs and memory without loading weights."""
    from pusa_batch.doctor.preflight import diagnose

    report = diagnose(load_spec_or_none(pipeline))
    if as_json:
        checks = [dataclasses.asdict(check) for check in report.checks]
        print_json({"ok": report.ok, "summary": report.summary(), "checks": checks})
        return 0 if report.ok else 2
    for check in report.checks:
        word, colour = DOCTOR_MARKS[check.status]
        text = escape(f"{check.name}: {'' if check.lines else check.detail}".rstrip())
        out.print(f"  [{colour}]{word:>4}[/]  {text}", highlight=False)
        for line in check.lines:  # one missing file per line, then the command that fetches it
            out.print(f"{'':10}{line}", markup=False, highlight=False)
    out.print(f"{report.summary()}", highlight=False)
    return 0 if report.ok else 2


DOCTOR_MARKS = {"ok": ("ok", "green"), "warn": ("warn", "yellow"), "fail": ("FAIL", "red")}


class TinyKind(str, enum.Enum):
    wan21 = "wan2.1"
    wan22 = "wan2.2"
    mochi = "mochi"


class TinyLayout(str, enum.Enum):
    diffusers = "diffusers"
    original = "original"


TINY_SEED = 20250717  # = models.tiny.TINY_SEED (the help must not import torch)


def make_tiny_model(
    directory: Path = typer.Argument(..., help="Folder to write the tiny checkpoint into."),
    kind: TinyKind = typer.Option(TinyKind.wan21, help="The family of the real checkpoint."),
    layout: TinyLayout = typer.Option(
        TinyLayout.diffusers,
        help="diffusers: the -Diffusers repos' folders; original: what the Pusa README "
        "downloads (Wan2.1_VAE.pth, umT5 .pth, DiT shards; genmo's VAE halves).",
    ),
    seed: int = typer.Option(
        TINY_SEED, help="Weights seed: the same seed gives the same weights in either layout."
    ),
) -> int:
    """Write a tiny random-weight twin of a real Pusa checkpoint, in the real on-disk layout."""
    from pusa_batch.models.tiny import make_tiny_model as make

    path = make(kind.value, directory, layout=layout.value, seed=seed)
    out.print(f"wrote tiny {kind.value} model ({layout.value} layout) to {path}", highlight=False)
    return 0


# ---------------------------------------------------------------- running


class LogFormat(str, enum.Enum):
    text = "text"
    json = "json"


def run_config(manifest, output, pipeline, storage_option, weights_storage_option, **options):
    from pusa_batch.engine.config import RunConfig

    try:
        return RunConfig(
            manifest=str(manifest),
            output=str(output),
            pipeline=str(local_pipeline(pipeline)),
            storage_options=parse_storage_options(storage_option),
            weights_storage_options=parse_storage_options(
                weights_storage_option, "--weights-storage-option"
            ),
            **options,
        )
    except ValueError as error:  # RunConfig names every bad setting at once
        raise typer.BadParameter(str(error)) from None


RUN_SETTINGS = (
    "gpus_per_worker",
    "cpus_per_worker",
    "max_workers",
    "max_retries",
    "retry_failed",
    "regenerate_changed",
    "longest_first",
    "batch_size",
    "lease_stale_s",
    "trust_index",
    "storage_timeout_s",
    "strict_columns",
)


def run_settings(given: dict) -> dict:
    """The RunConfig settings among a command's parameters (`--no-wait` is lease_wait=False);
    `run` and `submit` share them, so a submitted run is the same run."""
    return {
        **{name: given[name] for name in RUN_SETTINGS},
        "workers": parse_workers(given["workers"]),
        "resources": parse_resources(given["resources"]),
        "node_labels": parse_labels(given["node_label"]),
        "lease_wait": not given["no_wait"],
    }


def summary_dict(summary) -> dict:
    data = dataclasses.asdict(summary)
    data["exit_code"] = summary.exit_code
    data["wall_s"] = round(summary.wall_s, 3)
    return data


def print_summary(summary, level: int = 0) -> None:
    out.print(
        f"{summary.total} items: {summary.generated} generated, "
        f"{summary.done_before} already done, "
        f"{summary.failed + summary.failed_before} failed  ({summary.wall_s:.1f}s)",
        highlight=False,
    )
    if level < 0:
        return
    if summary.extra_columns:
        out.print(extra_note(summary.extra_columns), markup=False, highlight=False)
    if summary.total and summary.generated == 0 and not summary.failed:
        if summary.failed_before:
            out.print(
                f"Nothing new to generate: {summary.failed_before} item(s) failed in an earlier "
                "run and are skipped; add --retry-failed to try them again.",
                highlight=False,
            )
        else:
            out.print("Nothing new to generate: every item is already done.", highlight=False)
    if summary.failures:
        table = Table("id", "error", "attempts", "message", title="Failed items")
        for failure in summary.failures[:50]:
            table.add_row(
                str(failure.get("id")),
                str(failure.get("error_type")),
                str(failure.get("attempts")),
                str(failure.get("message", ""))[:120],
            )
        out.print(table)
    out.print(f"Outputs: {summary.output}  (videos/, items/, index.parquet)", highlight=False)


def run(
    manifest: str = typer.Argument(..., help="Manifest: .csv, .parquet or .jsonl, a path or URL."),
    output: str = typer.Option(..., "-o", "--output", help="Output root: a path or fsspec URL."),
    pipeline: str = typer.Option(..., "--pipeline", "-p", help="Pipeline TOML (see pipelines/)."),
    workers: str | None = WorkersOpt,
    address: str | None = typer.Option(
        None,
        help="Ray cluster to join: auto, ray://HOST:10001 or HOST:6379 "
        "(default: RAY_ADDRESS, else an embedded local Ray).",
    ),
    storage_option: list[str] | None = StorageOpt,
    weights_storage_option: list[str] | None = WeightsStorageOpt,
    gpus_per_worker: float | None = GpusPerWorkerOpt,
    cpus_per_worker: float = CpusPerWorkerOpt,
    max_workers: int | None = MaxWorkersOpt,
    resources: str | None = ResourcesOpt,
    node_label: list[str] | None = NodeLabelOpt,
    max_retries: int = MaxRetriesOpt,
    retry_failed: bool = RetryFailedOpt,
    regenerate_changed: bool = RegenerateChangedOpt,
    longest_first: bool = LongestFirstOpt,
    batch_size: int = BatchSizeOpt,
    lease_stale_s: float = LeaseStaleOpt,
    no_wait: bool = NoWaitOpt,
    trust_index: bool = TrustIndexOpt,
    storage_timeout_s: float = StorageTimeoutOpt,
    strict_columns: bool = StrictColumnsOpt,
    progress: bool = typer.Option(True, help="Show the live progress view."),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Print the plan (done/pending/changed/failed) and stop: no Ray."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the summary (or plan) as JSON."),
    log_format: LogFormat = typer.Option(
        LogFormat.text,
        "--log-format",
        help="text: the live view; json: one JSON event per line on stderr, for log pipelines.",
    ),
    quiet: bool = QuietOpt,
    verbose: bool = VerboseOpt,
) -> int:
    """Generate every pending item of MANIFEST into OUTPUT; rerun to resume."""
    from pusa_batch.engine.heap import keep_one_heap

    keep_one_heap()  # first, before Arrow's first allocation: the driver's memory stays flat
    level = verbosity(quiet, verbose)
    config = run_config(
        manifest,
        output,
        pipeline,
        storage_option,
        weights_storage_option,
        address=address,
        **run_settings(locals()),
    )
    if dry_run:
        return print_preview(config, as_json)
    from pusa_batch.cli.live import LiveRunView
    from pusa_batch.engine.run import SIGTERM_RECEIVED
    from pusa_batch.engine.run import run as run_engine

    if log_format is LogFormat.json:
        from pusa_batch.cli.jsonlog import JsonEventLog

        log = JsonEventLog(verbosity=level)
        with log:
            summary = run_engine(config, log)
    else:
        live = LiveRunView(err, enabled=progress and not as_json, verbosity=level)
        try:
            with live, _second_interrupt_stops_at_once():
                summary = run_engine(config, live)
        except KeyboardInterrupt as stopped:
            view = live.view
            pending = max(0, view.pending - view.done - view.failed)
            terminated = isinstance(stopped, Terminated) or SIGTERM_RECEIVED.is_set()
            err.print(
                f"{'Terminated (SIGTERM)' if terminated else 'Interrupted'}: {view.done} "
                f"committed this run, {pending} pending; run the same command to resume.",
                highlight=False,
            )
            return 143 if terminated else 130
    if as_json:
        print_json(summary_dict(summary))
    else:
        print_summary(summary, level)
    return summary.exit_code


@contextlib.contextmanager
def _second_interrupt_stops_at_once():
    """Ctrl-C unwinds the run (the lease released, the counts printed); a second Ctrl-C while
    it unwinds stops the process at once with 130, as a user pressing it twice means. Nothing
    is lost: every commit is whole, and the next run takes over the dead run's lease."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def again(signum: int, frame: object) -> None:
        os.write(2, b"\nInterrupted again: stopping now. Run the same command to resume.\n")
        kill_descendants()  # an embedded Ray's processes, which the unwinding would stop
        os._exit(130)

    def first(signum: int, frame: object) -> None:
        signal.signal(signal.SIGINT, again)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, first)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def print_preview(config, as_json: bool) -> int:
    from pusa_batch.engine.preview import format_preview, preview_run

    preview = preview_run(config)
    if as_json:
        print_json(preview.to_dict())
    else:
        out.print(format_preview(preview), markup=False, highlight=False)
    return 0


def status(
    output: str = typer.Argument(..., help="Output root of a run."),
    manifest: str | None = typer.Option(None, help="Also count pending and changed items."),
    pipeline: str | None = PipelineOpt,
    storage_option: list[str] | None = StorageOpt,
    as_json: bool = typer.Option(False, "--json", help="Print the status as JSON."),
) -> int:
    """Counts, throughput, ETA, workers and the last errors of a run, live or finished."""
    from pusa_batch.engine.status import read_status

    report = read_status(
        output,
        parse_storage_options(storage_option),
        manifest=str(manifest) if manifest else None,
        spec=load_spec_or_none(pipeline),
    )
    if as_json:
        out.print_json(data=report)
        return 0
    from pusa_batch.engine.status import format_status

    text = "\n".join(printable(line) for line in format_status(report).split("\n"))
    out.print(text, highlight=False, markup=False, soft_wrap=True)  # a root's text: escaped
    return 0


def submit(
    manifest: str = typer.Argument(..., help="Manifest, relative to the working dir shipped."),
    output: str = typer.Option(
        ..., "-o", "--output", help="Output root reachable from the cluster."
    ),
    pipeline: str = typer.Option(..., "--pipeline", "-p", help="Pipeline TOML."),
    address: str | None = typer.Option(
        None,
        help="Ray dashboard address, e.g. http://HEAD:8265 "
        "(default: RAY_API_SERVER_ADDRESS, then RAY_ADDRESS).",
    ),
    wait: bool = typer.Option(False, help="Stream the job's logs and return its exit status."),
    workers: str | None = WorkersOpt,
    working_dir: Path = typer.Option(
        Path("."), help="Folder shipped to the cluster as the job's cwd."
    ),
    pip: list[str] | None = typer.Option(
        None, help="pip spec(s) for the job's environment (default: ship this pusa_batch package)."
    ),
    storage_option: list[str] | None = StorageOpt,
    weights_storage_option: list[str] | None = WeightsStorageOpt,
    gpus_per_worker: float | None = GpusPerWorkerOpt,
    cpus_per_worker: float = CpusPerWorkerOpt,
    max_workers: int | None = MaxWorkersOpt,
    resources: str | None = ResourcesOpt,
    node_label: list[str] | None = NodeLabelOpt,
    max_retries: int = MaxRetriesOpt,
    retry_failed: bool = RetryFailedOpt,
    regenerate_changed: bool = RegenerateChangedOpt,
    longest_first: bool = LongestFirstOpt,
    batch_size: int = BatchSizeOpt,
    lease_stale_s: float = LeaseStaleOpt,
    no_wait: bool = NoWaitOpt,
    trust_index: bool = TrustIndexOpt,
    storage_timeout_s: float = StorageTimeoutOpt,
    strict_columns: bool = StrictColumnsOpt,
) -> int:
    """Send the same run to a Ray cluster as a Ray Job: every `run` option goes with it."""
    from pusa_batch.engine.submit import JobRequest, submit_job

    config = run_config(
        manifest, output, pipeline, storage_option, weights_storage_option, **run_settings(locals())
    )
    request = JobRequest(
        config=config,
        address=address,
        working_dir=str(working_dir),
        pip=tuple(pip or ()),
        storage_options=tuple(storage_option or ()),
        weights_storage_options=tuple(weights_storage_option or ()),
    )
    return submit_job(
        request,
        wait=wait,
        echo=lambda line: out.print(line, markup=False, highlight=False, soft_wrap=True),
    )
