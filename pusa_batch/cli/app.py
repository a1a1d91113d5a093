"""What every command module shares: the consoles, shared option types and small helpers."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

from pusa_batch.errors import ManifestError

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

PipelineOpt = typer.Option(None, "--pipeline", "-p", help="Pipeline TOML (see pipelines/).")
StorageOpt = typer.Option(
    None,
    "--storage-option",
    help="KEY=VALUE passed to fsspec for the output root (repeatable). Never logged.",
)


def parse_storage_options(pairs: list[str] | None) -> dict:
    """`KEY=VALUE` pairs to a dict; values that parse as JSON (numbers, booleans, objects) do."""
    options: dict = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(
                f"expected KEY=VALUE, got {pair!r}", param_hint="--storage-option"
            )
        try:
            options[key] = json.loads(value)
        except ValueError:
            options[key] = value
    return options


def load_spec_or_none(pipeline: Path | None):
    if pipeline is None:
        return None
    from pusa_batch.pipelines.spec import load_pipeline_spec

    return load_pipeline_spec(pipeline)


def print_problems(error: ManifestError, limit: int = 200) -> None:
    for problem in error.problems[:limit]:
        err.print(f"  {problem}", markup=False, highlight=False)
    hidden = len(error.problems) - limit
    if hidden > 0:
        err.print(f"  ... and {hidden} more", markup=False)
