"""`pusa-batch status`: what an output root says about its run, live or finished.

Everything comes from the output root (the only state): the done/failed ledger, `run.json`
(which the engine's driver rewrites every few seconds), `lease.json` and `failures/`. With a
manifest, its entries are planned against the root to count pending and changed items.

Run states:
- running: the lease is held and fresh, and run.json (if any) was updated recently;
- stale: a lease whose heartbeat is older than its `stale_after_s`, or run.json says running
  but was not updated for more than `STALE_AFTER_S` (the driver is probably gone);
- stopped: run.json says running but the lease was released (the run ended on an error or an
  interrupt; rerun to resume), or the lease's holder is a process of this machine that no longer
  runs (killed), or lease.json is not a lease record;
- finished: the last run wrote its final run.json;
- not started: no run.json and no lease (a root that does not exist at all is an error).

While a run goes on, the items its workers hold (`in_flight` in run.json) are counted apart:
neither done nor pending.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from pusa_batch.engine.plan import count_plan
from pusa_batch.errors import PipelineError, StoreError
from pusa_batch.store.holder import holder_is_gone
from pusa_batch.store.index import RootState
from pusa_batch.store.lease import LEASE_FILE
from pusa_batch.store.store import RUN_FILE, Store

STALE_AFTER_S = 120.0
UNREADABLE_LEASE = {"unreadable": True, "heartbeat_unix": 0}
MAX_ERRORS = 10
MAX_CHANGED_IDS = 20
WORKER_KEYS = ("state", "item", "step", "steps", "done", "load_s", "deaths", "reason")


def read_status(
    output: str,
    storage_options: Mapping[str, Any] | None = None,
    manifest: str | None = None,
    spec: Any | None = None,
    *,
    now: float | None = None,
) -> dict[str, Any]:
    """A JSON-ready report of the run in `output` (see `format_status` for the text form).

    `spec` (a `PipelineSpec`) is needed to fingerprint the manifest's items and so to count
    changed ones; without it the spec recorded in run.json ("pipeline") is tried.
    """
    now = time.time() if now is None else now
    store = Store(output, dict(storage_options or {}))
    store.require_existing("status")
    run_info = store.read_run_info()
    lease = _read_lease(store)
    root_state = store.state()  # one read of the root serves the counts, the plan and the errors
    counts: dict[str, Any] = dict(store.status_counts(root_state))
    counts.update(total=None, pending=None, changed=None)
    notes: list[str] = index_notes(root_state)
    if run_info is None and store.root.size(RUN_FILE) is not None:
        notes.append(f"{RUN_FILE} is unreadable (not a run record); the next run writes it again")
    changed_ids: list[str] = []
    if manifest is not None:
        spec, note = _spec_for_manifest(spec, run_info)
        if note:
            notes.append(note)
        changed_ids = _plan_manifest(root_state, manifest, spec, counts)
    state, reason = run_state(run_info, lease, now)
    _count_in_flight(counts, run_info if state == "running" else None)
    return {
        "output": store.url,
        "manifest": manifest,
        "state": state,
        "state_reason": reason,
        "counts": counts,
        "changed_ids": changed_ids[:MAX_CHANGED_IDS],
        "run": _run_summary(run_info, state, now),
        "lease": _lease_summary(lease, now),
        "workers": _workers(run_info),
        "errors": last_errors(store, state=root_state),
        "notes": notes,
    }


def _read_lease(store: Store) -> dict | None:
    """lease.json's record; one that is not a record (torn, garbage) reads as UNREADABLE_LEASE."""
    try:
        lease = store.root.read_json(LEASE_FILE)
    except StoreError:
        if store.root.size(LEASE_FILE) is None:
            raise
        return dict(UNREADABLE_LEASE)
    if lease is None or (isinstance(lease, dict) and "heartbeat_unix" in lease):
        return lease
    return dict(UNREADABLE_LEASE)


def index_notes(state: RootState) -> list[str]:
    """What the index lacks, which the next run (or `verify --repair`) mends: counted done."""
    notes = []
    if state.corrupt_parts:
        notes.append(
            f"{len(state.corrupt_parts)} unreadable index part(s); the next run moves them to "
            "index/quarantine/"
        )
    if state.rebuilt:
        notes.append(
            f"{len(state.rebuilt)} done item(s) found from their markers, missing from the index; "
            "the next run or `pusa-batch verify --repair` indexes them again"
        )
    return notes


def run_state(run_info: dict | None, lease: dict | None, now: float) -> tuple[str, str]:
    """(state, one-line reason) from run.json and lease.json; see the module docstring."""
    if lease is not None and lease.get("unreadable"):
        return "stopped", "lease.json is unreadable (not a lease record); a new run replaces it"
    if lease is not None and holder_is_gone(lease):
        return "stopped", (
            f"its driver is gone: {lease.get('host')} pid {lease.get('pid')} no longer runs; "
            "rerun to resume"
        )
    if lease is not None:
        age = now - float(lease.get("heartbeat_unix", 0))
        limit = float(lease.get("stale_after_s", STALE_AFTER_S))
        if age > limit:
            return "stale", (
                f"lease heartbeat {age:.0f} s ago (limit {limit:.0f} s): the driver on "
                f"{lease.get('host')} pid {lease.get('pid')} is probably gone; "
                "a new run takes the lease over"
            )
    if run_info is None:
        if lease is not None:
            return "running", "lease held; the driver has not written run.json yet"
        return "not started", "no run.json and no lease in this output root"
    updated_ago = now - float(run_info.get("updated_at", 0))
    if run_info.get("state") == "finished" and lease is None:
        return "finished", f"finished {_duration(updated_ago)} ago"
    if run_info.get("state") == "finished":
        return "running", "a new run holds the lease; run.json is from the previous run"
    if updated_ago > STALE_AFTER_S:
        return "stale", (
            f"run.json not updated for {_duration(updated_ago)} (driver on "
            f"{run_info.get('host')} pid {run_info.get('pid')}); rerun to resume"
        )
    if lease is None:
        return "stopped", "the run ended before finishing (error or interrupt); rerun to resume"
    return "running", f"run.json updated {_duration(updated_ago)} ago"


def last_errors(
    store: Store, limit: int = MAX_ERRORS, *, state: RootState | None = None
) -> list[dict[str, Any]]:
    """The newest `limit` failure records of items not done: id, type, message, attempts."""
    records = sorted(store.iter_failures(state), key=lambda r: str(r.get("failed_at", "")))
    return [
        {
            "id": r.get("id"),
            "error_type": r.get("error_type"),
            "message": str(r.get("message", "")),
            "attempts": r.get("attempts"),
            "failed_at": r.get("failed_at"),
        }
        for r in reversed(records[-limit:])
    ]


def _count_in_flight(counts: dict[str, Any], live_run: dict | None) -> None:
    """Items handed to workers and not yet committed are neither done nor pending."""
    in_flight = int((live_run or {}).get("in_flight") or 0)
    counts["in_flight"] = in_flight
    if counts.get("pending") is not None:
        counts["pending"] = max(0, counts["pending"] - in_flight)


def _spec_for_manifest(spec: Any | None, run_info: dict | None) -> tuple[Any | None, str | None]:
    if spec is not None:
        return spec, None
    recorded = (run_info or {}).get("pipeline")
    if not recorded:
        return None, (
            "changed items cannot be counted without the pipeline: pass --pipeline "
            "(pending counts items whose id is not done)"
        )
    from pusa_batch.pipelines.spec import load_pipeline_spec

    try:
        return load_pipeline_spec(recorded), None
    except PipelineError as exc:
        return None, (
            f"the run's pipeline {recorded} could not be loaded here ({exc}); pass --pipeline "
            "to count changed items"
        )


def _plan_manifest(state: RootState, manifest: str, spec: Any | None, counts: dict) -> list[str]:
    """Fill counts' total / pending / changed from the manifest, streamed through the run's own
    plan; return the first changed ids. Without a spec, done-ness alone is known."""
    plan = count_plan(manifest, spec, state)
    counts["done_in_root"], counts["failed_in_root"] = counts["done"], counts["failed"]
    counts["total"] = plan.total
    # the manifest's items, each counted once: done + failed + pending (+ changed) = total
    counts["done"], counts["failed"] = plan.done, plan.failed
    counts["pending"] = plan.pending + plan.damaged
    if spec is not None:
        counts["changed"] = plan.changed
        counts["done_in_manifest"] = plan.done
    return sorted(plan.changed_ids)


def _run_summary(run_info: dict | None, state: str, now: float) -> dict[str, Any] | None:
    if run_info is None:
        return None
    per_s = float(run_info.get("items_per_s") or 0.0)
    remaining = run_info.get("pending")
    eta = remaining / per_s if state == "running" and per_s > 0 and remaining else None
    return {
        "state": run_info.get("state"),
        "host": run_info.get("host"),
        "pid": run_info.get("pid"),
        "updated_at": run_info.get("updated_at"),
        "updated_ago_s": round(now - float(run_info.get("updated_at", 0)), 1),
        "elapsed_s": run_info.get("elapsed_s"),
        "generated": run_info.get("generated"),
        "failed": run_info.get("failed"),
        "remaining": remaining,
        "items_per_min": round(per_s * 60.0, 3),
        "eta_s": round(eta, 1) if eta is not None else None,
    }


def _lease_summary(lease: dict | None, now: float) -> dict[str, Any] | None:
    if lease is None:
        return None
    return {
        "host": lease.get("host"),
        "pid": lease.get("pid"),
        "started_at": lease.get("started_at"),
        "heartbeat_ago_s": round(now - float(lease.get("heartbeat_unix", 0)), 1),
    }


def _workers(run_info: dict | None) -> list[dict[str, Any]]:
    workers = (run_info or {}).get("workers") or {}
    return [{"id": wid, **{k: info.get(k) for k in WORKER_KEYS}} for wid, info in workers.items()]


# ---------------------------------------------------------------------------- text


def format_status(report: Mapping[str, Any]) -> str:
    """A few readable lines and small tables; plain text, no colour codes."""
    lines = [
        f"Output: {report['output']}",
        f"State:  {report['state']} ({report['state_reason']})",
        "Items:  " + _counts_line(report["counts"]),
    ]
    if report.get("changed_ids"):
        lines.append("Changed: " + ", ".join(report["changed_ids"]))
    run = report.get("run")
    if run:
        lines.append(_rate_line(run))
    lines.extend(f"Note: {note}" for note in report.get("notes", []))
    if report.get("workers"):
        lines += ["", "Workers:"]
        rows = [
            [
                w["id"],
                w["state"] or "",
                w["item"] or "-",
                f"{w['step']}/{w['steps']}" if w.get("steps") else "-",
                str(w["done"] if w["done"] is not None else 0),
                f"{w['load_s']:.1f}s" if w.get("load_s") is not None else "-",
            ]
            for w in report["workers"]
        ]
        lines += _table(["worker", "state", "item", "step", "done", "load"], rows)
    if report.get("errors"):
        lines += ["", f"Last errors (newest first, up to {MAX_ERRORS}):"]
        rows = [
            [str(e["id"]), str(e["error_type"]), str(e["attempts"]), _short(e["message"])]
            for e in report["errors"]
        ]
        lines += _table(["id", "error", "attempts", "message"], rows)
    return "\n".join(lines)


def _counts_line(counts: Mapping[str, Any]) -> str:
    parts = [f"{counts['done']} done", f"{counts['failed']} failed"]
    if counts.get("in_flight"):
        parts.append(f"{counts['in_flight']} in flight")
    for key in ("pending", "changed"):
        if counts.get(key) is not None:
            parts.append(f"{counts[key]} {key}")
    text = ", ".join(parts)
    if counts.get("total") is not None:
        text += f" (manifest: {counts['total']} items)"
    if counts.get("damaged"):
        text += (
            f"; {counts['damaged']} damaged (recorded done, files missing or truncated): "
            "the next run makes them again"
        )
    if counts.get("orphans"):
        text += f"; {counts['orphans']} orphan video(s) without a marker"
    return text


def _rate_line(run: Mapping[str, Any]) -> str:
    text = (
        f"Run:    {run['generated']} generated in {_duration(run['elapsed_s'] or 0)}, "
        f"{run['items_per_min']:.2f} items/min"
    )
    if run.get("eta_s") is not None:
        text += f", {run['remaining']} left, ETA {_duration(run['eta_s'])}"
    return text + f"  (run.json by {run['host']} pid {run['pid']})"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return [
        "  " + "  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]


def _short(message: str, limit: int = 100) -> str:
    line = " ".join(message.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _duration(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
