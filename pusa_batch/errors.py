"""Typed errors. The CLI turns each into one `Error: ...` line and an exit code."""

from __future__ import annotations

from dataclasses import dataclass


class PusaBatchError(Exception):
    """Base class for every error a user can act on."""

    exit_code = 1


def printable(text: object) -> str:
    """The text with every character a terminal would act on or hide escaped as Python writes it
    (ESC as \\x1b, NUL, newline, bidi and zero-width marks as \\u202e...): a message quoting a
    manifest can neither clear the screen nor reorder what it says."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class Terminated(KeyboardInterrupt):
    """SIGTERM (what `timeout`, systemd, Slurm and Kubernetes send) during a run: unwound like
    Ctrl-C, so the lease is released and the counts are printed."""


MAX_MESSAGE = 600  # characters of one row problem's message


@dataclass(frozen=True)
class RowProblem:
    """One problem found in one manifest row (row is 1-based, as a user counts data rows)."""

    row: int
    id: str | None
    column: str
    message: str

    def __str__(self) -> str:
        """At most MAX_MESSAGE characters in all: a cell quoted whole could be megabytes."""
        who = f"row {self.row}" + (f" (id {_cut(printable(self.id))})" if self.id else "")
        head = f"{who}, column '{_cut(printable(self.column))}': "
        message, room = self.message, MAX_MESSAGE - len(head)
        if len(message) > room:
            message = f"{message[: room - 40]} ... ({len(message):,} characters in all)"
        return head + message


def _cut(text: str, most: int = 60) -> str:
    return text if len(text) <= most else f"{text[: most - 7]}...{text[-4:]}"


class ManifestError(PusaBatchError):
    """The manifest cannot be used. Carries every bad row found, not only the first."""

    exit_code = 2

    def __init__(self, message: str, problems: list[RowProblem] | None = None):
        self.problems = list(problems or [])
        super().__init__(message)


class TaskError(PusaBatchError):
    """A conditioning request that a task cannot honour (bad positions, counts, multipliers)."""

    exit_code = 2

    def __init__(self, column: str, message: str):
        self.column = column
        self.message = message
        super().__init__(f"{column}: {message}")


class InputMediaError(PusaBatchError):
    """An input image or video is missing, unreadable or too short."""

    exit_code = 2


class PipelineError(PusaBatchError):
    """A pipeline definition or its weights are wrong (missing files, keys, shapes)."""

    exit_code = 2


class CheckpointError(PipelineError):
    """A checkpoint's keys or shapes do not match the architecture."""


class WeightsError(PipelineError):
    """Weights named by URL cannot be listed, fetched, verified or staged; the message names the
    URL (redacted) and the fix."""


class StoreError(PusaBatchError):
    """The output root cannot be read or written."""


class StoreConfigError(StoreError):
    """The output root cannot be used as given: credentials, bucket, options, a read-only
    filesystem, a folder where a file belongs. Fixed by the user, so exit 2 as for bad input."""

    exit_code = 2


class CorruptRecordError(StoreError):
    """A JSON file of the root (run.json, a marker, a failure record) is not valid JSON."""

    exit_code = 2


class StoreUnreachableError(StoreError):
    """The storage endpoint stopped answering and the retries ran out."""


class LeaseError(StoreError):
    """Another live run holds the output root."""

    exit_code = 3


class ChangedItemsError(PusaBatchError):
    """Items already done have a different fingerprint now; refusing to skip or overwrite them."""

    exit_code = 2

    def __init__(self, changed_ids: list[str]):
        self.changed_ids = changed_ids
        shown = ", ".join(changed_ids[:20]) + (" ..." if len(changed_ids) > 20 else "")
        super().__init__(
            f"{len(changed_ids)} item(s) already done have changed since they were generated: "
            f"{shown}. Rerun with --regenerate-changed to replace them, or give them new ids."
        )


class WorkerError(PusaBatchError):
    """The run lost every Ray worker (none could start, or all crashed past their restarts)."""


class ExportError(PusaBatchError):
    """An export or gallery request that cannot be honoured (bad shard size, bad destination)."""

    exit_code = 2


class ManyChangedItemsError(ChangedItemsError):
    """`ChangedItemsError` when only the first of many changed ids were kept (memory stays flat)."""

    def __init__(self, changed_ids: list[str], total: int):
        super().__init__(changed_ids)
        self.total = total
        shown = ", ".join(changed_ids[:20])
        self.args = (
            f"{total} item(s) already done have changed since they were generated, among them: "
            f"{shown} ... Rerun with --regenerate-changed to replace them, or give them new ids.",
        )


class UsageError(PusaBatchError):
    """A command's options cannot work together or with the environment; the message says why."""

    exit_code = 2


class RootNotFoundError(StoreError):
    """A command that reads an output root was pointed at one that does not exist."""

    exit_code = 2


class UnsafeRootError(StoreError):
    """An output root whose layout would make writes land outside it (a symlinked folder)."""

    exit_code = 2


class RayStartError(PusaBatchError):
    """The embedded Ray would not start, or the cluster given could not be joined."""
