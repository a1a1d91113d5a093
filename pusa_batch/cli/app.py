"""What every command module shares: the consoles, shared option types and small helpers."""

from __future__ import annotations

import json
import re
from pathlib import Path

import typer
from rich.console import Console

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

PipelineOpt = typer.Option(None, "--pipeline", "-p", help="Pipeline TOML (see pipelines/).")
StorageOpt = typer.Option(
    None,
    "--storage-option",
    help="KEY=VALUE passed to fsspec for the output root (repeatable). Never logged.",
)

WeightsStorageOpt = typer.Option(
    None,
    "--weights-storage-option",
    help="[PROTOCOL:]KEY=VALUE passed to fsspec for weight URLs in the pipeline (repeatable). "
    "Never logged.",
)

# The run options, shared by `run` and `submit` (which sends them to the cluster's run).
WorkersOpt = typer.Option(
    None,
    "--workers",
    metavar="N|auto",
    help="Actors to start, or auto (the default): on a cluster one per free GPU (without GPUs, "
    "one per --cpus-per-worker free CPUs), more as nodes join, up to --max-workers; on an "
    "embedded local Ray one per GPU, else 1.",
)
GpusPerWorkerOpt = typer.Option(None, help="GPUs per actor (default 1 with GPUs).")
CpusPerWorkerOpt = typer.Option(
    1.0, help="CPUs per actor (without GPUs, also its torch threads and its --workers auto slot)."
)
MaxWorkersOpt = typer.Option(
    None, help="The most actors --workers auto grows to (default: no cap)."
)
ResourcesOpt = typer.Option(
    None,
    "--resources",
    metavar="JSON",
    help="Custom Ray resources each actor needs, e.g. '{\"accelerator_type:H100\": 0.001}', to "
    "place actors on suitable nodes.",
)
NodeLabelOpt = typer.Option(
    None,
    "--node-label",
    metavar="KEY=VALUE",
    help="Place actors only on nodes with this Ray label (repeatable; VALUE may be !v, in(a,b)).",
)
MaxRetriesOpt = typer.Option(2, help="Retries of a failing item before it is recorded.")
RetryFailedOpt = typer.Option(False, help="Run again the items that failed before.")
RegenerateChangedOpt = typer.Option(False, help="Replace done items whose inputs changed.")
LongestFirstOpt = typer.Option(False, help="Dispatch the costliest items first.")
BatchSizeOpt = typer.Option(1, help="Items sharing one forward when shapes match.")
TrustIndexOpt = typer.Option(
    False,
    "--trust-index",
    help="Skip checking done items' videos and markers against the index (two listings).",
)
NoWaitOpt = typer.Option(
    False,
    "--no-wait",
    help="Exit 3 at once when another run's lease has missed heartbeats, instead of waiting.",
)
StorageTimeoutOpt = typer.Option(
    30.0,
    "--storage-timeout",
    help="Seconds an unreachable output root is retried before the run stops.",
)
LeaseStaleOpt = typer.Option(
    120.0, help="Seconds without a heartbeat after which another run's lease is taken over."
)


QuietOpt = typer.Option(False, "--quiet", "-q", help="Print only errors and the final result.")
VerboseOpt = typer.Option(
    False, "--verbose", "-v", help="Also print each stage, worker and item as it happens."
)


def verbosity(quiet: bool, verbose: bool) -> int:
    """-1 quiet, 0 normal, 1 verbose; both flags at once is a usage error."""
    if quiet and verbose:
        raise typer.BadParameter("give --quiet or --verbose, not both", param_hint="-q/-v")
    return -1 if quiet else (1 if verbose else 0)


def print_json(data: object) -> None:
    """JSON on stdout, plain (no colour codes), for scripts and log pipelines."""
    out.print_json(data=data, highlight=False)


def parse_storage_options(pairs: list[str] | None, flag: str = "--storage-option") -> dict:
    """`KEY=VALUE` pairs to a dict; values that parse as JSON (numbers, booleans, objects) do."""
    options: dict = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:  # the text itself is not shown: it may be the secret
            raise typer.BadParameter(
                f"expected KEY=VALUE, got {len(pair)} characters with no '=' before a value "
                "(not shown: it may be a secret)",
                param_hint=flag,
            )
        try:
            options[key] = json.loads(value)
        except ValueError as error:
            if value.lstrip()[:1] in ("{", "["):
                raise typer.BadParameter(
                    f"{safe_text(key)}'s value starts like JSON but does not parse ({error.msg} "
                    f"at character {error.pos}); write it as a JSON object, e.g. "
                    f'{safe_text(key)}=\'{{"endpoint_url": "http://host:9000"}}\'',
                    param_hint=flag,
                ) from None
            options[key] = value
    return options


def parse_workers(value: str | None) -> int | None:
    """`--workers`: a number, or auto (None)."""
    if value is None or value.strip().lower() == "auto":
        return None
    try:
        return int(value)
    except ValueError:
        raise typer.BadParameter(
            f"expected a number or auto, got {value!r}", param_hint="--workers"
        ) from None


def parse_resources(value: str | None) -> dict:
    """`--resources`: a JSON object of resource names and amounts."""
    if not value:
        return {}
    try:
        resources = json.loads(value)
    except ValueError as error:
        raise typer.BadParameter(f"not JSON: {error}", param_hint="--resources") from None
    if not isinstance(resources, dict):
        raise typer.BadParameter(
            "expected a JSON object such as '{\"accelerator_type:H100\": 0.001}'",
            param_hint="--resources",
        )
    return resources


def parse_labels(pairs: list[str] | None) -> dict:
    """`--node-label KEY=VALUE` pairs to a label selector."""
    labels: dict = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint="--node-label")
        labels[key.strip()] = value.strip()
    return labels


_URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")


def local_pipeline(pipeline: str | Path) -> Path:
    """The pipeline TOML as a local path; a URL is refused (its weights may be URLs, the TOML
    itself is read on the driver and shipped)."""
    if _URL_SCHEME.match(str(pipeline)):
        from pusa_batch.errors import PipelineError
        from pusa_batch.store.io import redact_url

        raise PipelineError(
            f"{redact_url(str(pipeline))}: the pipeline TOML must be a local file (its weight "
            "paths may be URLs); copy it here and pass its path to --pipeline."
        )
    return Path(pipeline)


def load_spec_or_none(pipeline: str | Path | None):
    if pipeline is None:
        return None
    from pusa_batch.pipelines.spec import load_pipeline_spec

    return load_pipeline_spec(local_pipeline(pipeline))


def safe_text(text: object) -> str:
    """Text from a manifest or a root, printable line by line: control characters (ESC...),
    bidi and zero-width marks escaped as Python writes them; its own newlines kept."""
    from pusa_batch.errors import printable

    return "\n".join(printable(line) for line in str(text).split("\n"))
