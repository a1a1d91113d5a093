"""The `pusa-batch` app: every command registered in one visible list, and `main()`.

`main` turns the library's typed errors into one `Error: ...` line and their exit code, and usage
errors into click's own message and exit code 2.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable

import typer

from pusa_batch import __version__
from pusa_batch.cli import cache_commands, output_commands, run_commands
from pusa_batch.cli.app import err, out, safe_text
from pusa_batch.errors import PusaBatchError, Terminated
from pusa_batch.redaction import redact_text, secrets_of

# Typer >= 0.20 raises its vendored click's usage errors, all `typer.TyperException`s with `show`;
# older Typers raise click's own.
if hasattr(typer, "TyperException"):
    USAGE_ERRORS: tuple[type[Exception], ...] = (typer.TyperException,)
else:  # pragma: no cover - typer < 0.20
    import click

    USAGE_ERRORS = (click.ClickException,)

COMMANDS: tuple[tuple[str, Callable[..., int]], ...] = (
    ("validate", run_commands.validate),
    ("doctor", run_commands.doctor),
    ("make-tiny-model", run_commands.make_tiny_model),
    ("run", run_commands.run),
    ("status", run_commands.status),
    ("verify", output_commands.verify),
    ("submit", run_commands.submit),
    ("export", output_commands.export),
    ("gallery", output_commands.gallery),
)
MANIFEST_COMMANDS: tuple[tuple[str, Callable[..., int]], ...] = (
    ("from-folder", output_commands.manifest_from_folder),
    ("from-prompts", output_commands.manifest_from_prompts),
    ("from-vbench", output_commands.manifest_from_vbench),
    ("sweep", output_commands.manifest_sweep),
)
CACHE_COMMANDS: tuple[tuple[str, Callable[..., int]], ...] = (
    ("list", cache_commands.cache_list),
    ("prune", cache_commands.cache_prune),
)


def _version(value: bool) -> None:
    if value:
        out.print(f"pusa-batch {__version__}")
        raise typer.Exit()


def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Show the version."
    ),
) -> None:
    """Batch, resumable video generation with Pusa on Ray."""


HELP_OPTIONS = {"help_option_names": ["-h", "--help"]}


def build_app() -> typer.Typer:
    app = typer.Typer(
        name="pusa-batch",
        help="Batch, resumable video generation with Pusa on Ray.",
        no_args_is_help=True,
        add_completion=True,  # --install-completion / --show-completion for bash, zsh, fish
        pretty_exceptions_enable=False,
        context_settings=HELP_OPTIONS,
    )
    app.callback()(_root)
    for name, command in COMMANDS:
        app.command(name)(command)
    manifest_app = typer.Typer(
        help="Build manifests from folders, prompt lists and sweeps.",
        no_args_is_help=True,
        context_settings=HELP_OPTIONS,
    )
    for name, command in MANIFEST_COMMANDS:
        manifest_app.command(name)(command)
    app.add_typer(manifest_app, name="manifest")
    cache_app = typer.Typer(
        help="The node's weight cache: list it, prune it.",
        no_args_is_help=True,
        context_settings=HELP_OPTIONS,
    )
    for name, command in CACHE_COMMANDS:
        cache_app.command(name)(command)
    app.add_typer(cache_app, name="cache")
    return app


app = build_app()


TRACEBACK_ENV = "PUSA_BATCH_TRACEBACK"


def argv_secrets(argv: list[str]) -> tuple[str, ...]:
    """What the command line holds that must never be printed: URL userinfo and the values of
    storage options, wherever an error's text repeats them (a library's own message may)."""
    found: list[str] = []
    for arg in argv:
        if "://" in arg:
            found += secrets_of(arg, {})
    for flag, value in zip(argv, argv[1:], strict=False):
        if flag.endswith("storage-option"):
            found.append(value.partition("=")[2] or value)
    return tuple(found)


def wants_json_log(args: list[str]) -> bool:
    """`--log-format json` was given: errors, too, are one JSON line for the log pipeline."""
    pairs = zip(args, args[1:], strict=False)
    return "--log-format=json" in args or any(a == "--log-format" and b == "json" for a, b in pairs)


def _json_error(kind: str, message: str, exit_code: int) -> None:
    record = {"ts": round(time.time(), 3), "event": "error", "error_type": kind}
    record.update(message=message, exit_code=exit_code)
    sys.stderr.write(json.dumps(record) + "\n")
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    """Entry point: typed errors become one `Error: ...` line and their exit code; anything
    else is one redacted line too (exit 1), its traceback shown only with PUSA_BATCH_TRACEBACK=1."""
    args = list(sys.argv[1:] if argv is None else argv)
    secrets = argv_secrets(args)
    try:
        result = app(args=argv, prog_name="pusa-batch", standalone_mode=False)
    except PusaBatchError as error:
        text = safe_text(redact_text(str(error), secrets))
        if wants_json_log(args):
            _json_error(type(error).__name__, text, error.exit_code)
        else:
            err.print(f"Error: {text}", markup=False, highlight=False)
        return error.exit_code
    except typer.Exit as done:
        return done.exit_code
    except typer.Abort:
        err.print("Aborted.")
        return 130
    except KeyboardInterrupt as stopped:
        if isinstance(stopped, Terminated) or _sigterm_received():
            err.print("Terminated (SIGTERM). Run the same command again to resume.")
            return 143
        err.print("Interrupted. Run the same command again to resume.")
        return 130
    except USAGE_ERRORS as error:  # click's own message (usage and the problem), exit 2
        error.show()
        return error.exit_code
    except Exception as error:  # a bug: still one line, never a secret
        if os.environ.get(TRACEBACK_ENV):
            raise
        text = safe_text(redact_text(f"{type(error).__name__}: {error}", secrets))
        err.print(
            f"Error: unexpected {text}\nThis is a bug in pusa-batch; please report it with the "
            f"output of the same command run with {TRACEBACK_ENV}=1.",
            markup=False,
            highlight=False,
        )
        return 1
    return result if isinstance(result, int) else 0


def _sigterm_received() -> bool:
    run = sys.modules.get("pusa_batch.engine.run")  # set only where a run started
    return bool(run and run.SIGTERM_RECEIVED.is_set())


if __name__ == "__main__":
    sys.exit(main())
