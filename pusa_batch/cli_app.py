"""The Typer app, its consoles and the helpers every command module shares."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

from pusa_batch import __version__
from pusa_batch.errors import ManifestError

app = typer.Typer(
    name="pusa-batch",
    help="Batch, resumable video generation with Pusa on Ray.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
manifest_app = typer.Typer(help="Build manifests from folders, prompt lists and sweeps.")
app.add_typer(manifest_app, name="manifest")

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
    from pusa_batch.pipeline import load_pipeline_spec

    return load_pipeline_spec(pipeline)


def print_problems(error: ManifestError, limit: int = 200) -> None:
    for problem in error.problems[:limit]:
        err.print(f"  {problem}", markup=False, highlight=False)
    hidden = len(error.problems) - limit
    if hidden > 0:
        err.print(f"  ... and {hidden} more", markup=False)


def version_callback(value: bool) -> None:
    if value:
        out.print(f"pusa-batch {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(
        False, "--version", callback=version_callback, is_eager=True, help="Show the version."
    ),
) -> None:
    """Batch, resumable video generation with Pusa on Ray."""
