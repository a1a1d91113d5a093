"""What the driver tells about a run while it goes on: `run.json` (which `pusa-batch status`
reads), each worker's figures, the counts of items pending and in flight, and the pool's gauges.

`StatusKeeping` is a part of `Driver`: it reads the driver's slots and counts.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any

from pusa_batch.engine.config import RunSummary
from pusa_batch.store.io import redact_text

log = logging.getLogger(__name__)


class StatusKeeping:
    def _record_metrics(self) -> None:
        self.metrics.queue(len(self.queue), self.in_flight())
        counts: dict[str, int] = {}
        for slot in self.slots:
            counts[slot.state.value] = counts.get(slot.state.value, 0) + 1
        self.metrics.workers(counts)

    def in_flight(self) -> int:
        """Items at workers (or held from one that became unreachable), not yet back."""
        return sum(len(s.inflight) + (s.held is not None) for s in self.slots)

    def pending(self) -> int:
        """Items not yet done nor finally failed (queued, in flight or still in the manifest)."""
        return max(0, self.todo - self.generated - len(self.failures))

    def active_s(self) -> float:
        if self.all_loaded_at is None or self.last_result_at is None:
            return 0.0
        return max(0.0, self.last_result_at - self.all_loaded_at)

    def worker_stats(self) -> dict[str, dict[str, Any]]:
        return {
            s.wid: {
                "state": "lost" if s.lost else s.state.value,
                "item": s.status[0] if s.inflight else None,
                "step": s.status[1],
                "steps": s.status[2],
                "done": s.done,
                "busy_s": round(s.busy_s, 3),
                "load_s": s.info.get("load_s"),
                "deaths": s.deaths,
                "reason": s.reason,
                "node_id": s.node_id,
            }
            for s in self.slots
        }

    def write_status(self, state: str = "running", summary: RunSummary | None = None) -> None:
        """Write `run.json`, which `pusa-batch status` reads while the run goes on."""
        elapsed = time.monotonic() - self.started
        status = {
            "state": state,
            "manifest": self.config.manifest,
            "pipeline": self.config.pipeline,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "updated_at": time.time(),
            "elapsed_s": round(elapsed, 3),
            "generated": self.generated,
            "failed": len(self.failures),
            "pending": self.pending(),
            "in_flight": self.in_flight(),
            "items_per_s": round(self.generated / elapsed, 4) if elapsed > 0 else 0.0,
            "workers": self.worker_stats(),
        }
        if summary:
            status.update(
                total=summary.total, done_before=summary.done_before, skipped=summary.skipped
            )
        try:
            if self.lease is not None and not self.lease.still_held():
                return  # run.json is the new holder's now
            self.store.write_run_info(status)
        except Exception as exc:  # progress is best effort; the run itself must not stop for it
            log.warning("could not write run.json: %s", redact_text(str(exc)))
