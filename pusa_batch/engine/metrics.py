"""The run's Ray metrics, for the cluster's Prometheus endpoint (`ray_pusa_batch_*`).

Decisions:
- The driver records them: it sees every result (with the worker's per-stage timings) and the
  queue, so workers need no metrics code and a run on an embedded Ray exports the same series.
- Series (Prometheus names; every one has a `run` label, the output root):
  `ray_pusa_batch_items_done_total{worker}`, `ray_pusa_batch_items_failed_total{worker, error,
  final}` (every failed attempt; `final="true"` once recorded), `ray_pusa_batch_stage_seconds`
  (a histogram by `worker` and `stage`: queue, prepare, sample, decode, encode, write),
  `ray_pusa_batch_queue_depth`, `ray_pusa_batch_in_flight`, `ray_pusa_batch_workers{state}`
  (loading, ready, restarting) and `ray_pusa_batch_staging_bytes_total{worker}` (weight bytes
  fetched while staging).
- Metric objects are made on first use, since `ray.util.metrics` needs a connected Ray.
- Metrics never stop a run: a failure to record is logged once and that series is dropped.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

log = logging.getLogger(__name__)

PREFIX = "pusa_batch_"
STAGE_BOUNDARIES = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000]
STAGES = ("prepare", "sample", "decode", "encode", "write", "finish", "queue")
WORKER_STATES = ("loading", "ready", "restarting")

F = TypeVar("F", bound=Callable[..., None])


def _best_effort(method: F) -> F:
    @functools.wraps(method)
    def wrapper(self: RunMetrics, *args: Any, **kwargs: Any) -> None:
        if method.__name__ in self._broken:
            return
        try:
            method(self, *args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - a metric must never stop a run
            self._broken.add(method.__name__)
            log.warning("metrics: %s is not recorded (%s: %s)", method.__name__, type(exc), exc)

    return wrapper  # type: ignore[return-value]


class RunMetrics:
    """Thin, lazy wrappers over `ray.util.metrics` Counter / Gauge / Histogram."""

    def __init__(self, run_label: str = ""):
        self.tags = {"run": run_label}
        self._made: dict[str, Any] = {}
        self._broken: set[str] = set()

    def _metric(self, kind: str, name: str, description: str, tag_keys: tuple[str, ...], **kw):
        if name not in self._made:
            from ray.util import metrics

            cls = {"counter": metrics.Counter, "gauge": metrics.Gauge}.get(kind)
            if kind == "histogram":
                self._made[name] = metrics.Histogram(
                    PREFIX + name, description, kw["boundaries"], tag_keys=("run", *tag_keys)
                )
            else:
                self._made[name] = cls(PREFIX + name, description, tag_keys=("run", *tag_keys))
        return self._made[name]

    @_best_effort
    def item_done(self, worker: str, timings: Mapping[str, float]) -> None:
        self._metric("counter", "items_done", "Items committed", ("worker",)).inc(
            1, tags={**self.tags, "worker": worker}
        )
        stages = self._metric(
            "histogram",
            "stage_seconds",
            "Seconds an item spent in each stage",
            ("worker", "stage"),
            boundaries=STAGE_BOUNDARIES,
        )
        for stage, seconds in timings.items():
            if stage in STAGES:
                stages.observe(float(seconds), tags={**self.tags, "worker": worker, "stage": stage})

    @_best_effort
    def item_failed(self, worker: str, error_type: str, final: bool) -> None:
        self._metric(
            "counter", "items_failed", "Item attempts that failed", ("worker", "error", "final")
        ).inc(
            1,
            tags={**self.tags, "worker": worker, "error": error_type, "final": str(final).lower()},
        )

    @_best_effort
    def queue(self, queued: int, in_flight: int) -> None:
        self._metric("gauge", "queue_depth", "Items queued at the driver", ()).set(
            queued, tags=self.tags
        )
        self._metric("gauge", "in_flight", "Items held by workers", ()).set(
            in_flight, tags=self.tags
        )

    @_best_effort
    def workers(self, counts: Mapping[str, int]) -> None:
        gauge = self._metric("gauge", "workers", "Workers in the pool, by state", ("state",))
        for state in WORKER_STATES:
            gauge.set(counts.get(state, 0), tags={**self.tags, "state": state})

    @_best_effort
    def staged_bytes(self, worker: str, nbytes: int) -> None:
        self._metric("counter", "staging_bytes", "Weight bytes staged to nodes", ("worker",)).inc(
            nbytes, tags={**self.tags, "worker": worker}
        )
