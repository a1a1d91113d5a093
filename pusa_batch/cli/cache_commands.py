"""`pusa-batch cache list` and `cache prune`: the node's weight cache, seen and trimmed."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from pusa_batch.cli.app import out, print_json, safe_text

CacheDirOpt = typer.Option(
    None,
    "--cache",
    help="The weight cache (default: $PUSA_BATCH_CACHE/weights, else ~/.cache/pusa-batch/weights;"
    " a pipeline's [staging] cache names another).",
)


def _layout(cache: Path | None):
    from pusa_batch.weights.cache import CacheLayout, default_cache_root

    root = cache.expanduser() if cache is not None else default_cache_root()
    if root.exists() and not root.is_dir():
        from pusa_batch.errors import UsageError

        raise UsageError(f"--cache {root} is a file: give the weight cache's folder")
    return CacheLayout(root)


def _age(seconds: float) -> str:
    for unit, scale in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= scale:
            return f"{seconds / scale:.0f}{unit} ago"
    return "just now"


def _row(entry, now: float) -> dict:
    return {
        "kind": "source" if entry.kind == "trees" else "header twin",
        "key": entry.key,
        "url": entry.url,
        "bytes": entry.bytes,
        "last_used_unix": round(entry.last_used, 3),
        "last_used": _age(now - entry.last_used),
    }


def cache_list(
    cache: Path | None = CacheDirOpt,
    as_json: bool = typer.Option(False, "--json", help="Print the entries as JSON."),
) -> int:
    """What the weight cache holds: each staged source, its size and when a run last used it."""
    from pusa_batch.weights.prune import blob_sizes, cache_entries, disk_bytes, size_text

    layout = _layout(cache)
    entries = cache_entries(layout)
    total = disk_bytes(entries, blob_sizes(layout))
    now = time.time()
    rows = [_row(e, now) for e in reversed(entries)]  # most recently used first
    if as_json:
        print_json({"cache": str(layout.root), "bytes": total, "entries": rows})
        return 0
    if not rows:
        out.print(f"{layout.root}: empty", highlight=False, markup=False)
        return 0
    for row in rows:
        url = row["url"] or "(URL not recorded)"
        out.print(
            f"{size_text(row['bytes']):>9}  {row['last_used']:>9}  {row['kind']:<11}  "
            f"{safe_text(url)}",
            highlight=False,
            markup=False,
        )
    out.print(
        f"{layout.root}: {len(rows)} entr{'y' if len(rows) == 1 else 'ies'}, "
        f"{size_text(total)} on disk",
        highlight=False,
        markup=False,
    )
    return 0


def cache_prune(
    cache: Path | None = CacheDirOpt,
    older_than: str | None = typer.Option(
        None, help="Remove what no run used for this long (30d, 12h, 90m; a bare number is days)."
    ),
    max_size: str | None = typer.Option(
        None, help="Then remove the least recently used until the cache holds at most this (200GB)."
    ),
    everything: bool = typer.Option(False, "--all", help="Remove every entry."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Say what would go; remove nothing."),
) -> int:
    """Trim the weight cache (with no option: what no run used for 30 days).

    Never removes what a run is staging now, nor what was used in the last 10 minutes.
    """
    from pusa_batch.weights.prune import PruneRule, parse_duration, parse_size, prune, size_text

    if older_than is None and max_size is None and not everything:
        older_than = "30d"
    rule = PruneRule(
        older_than_s=parse_duration(older_than) if older_than is not None else None,
        max_bytes=parse_size(max_size) if max_size is not None else None,
        everything=everything,
    )
    layout = _layout(cache)
    report = prune(layout, rule, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    for entry in report.removed:
        out.print(
            f"{verb} {size_text(entry.bytes):>9}  {safe_text(entry.url or entry.key)}",
            highlight=False,
            markup=False,
        )
    for busy in report.skipped_busy:
        out.print(f"kept {busy}: a run is staging it now", highlight=False, markup=False)
    out.print(
        f"{layout.root}: {verb} {len(report.removed)} entr"
        f"{'y' if len(report.removed) == 1 else 'ies'}, {size_text(report.freed_bytes)} freed"
        f"{' (estimated)' if dry_run else ''}, {size_text(report.left_bytes)} left",
        highlight=False,
        markup=False,
    )
    return 0
