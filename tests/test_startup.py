"""When a run starts Ray: while the plan is counted if a row is surely pending, else only once the
plan has found work; never for a run that has nothing to do or stops at its plan."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from pusa_batch.engine import run as engine_run
from pusa_batch.engine import startup
from pusa_batch.engine.config import RunConfig
from pusa_batch.errors import ChangedItemsError, RayStartError
from pusa_batch.manifest.read import item_fingerprint, iter_items
from pusa_batch.pipelines.spec import load_pipeline_spec
from pusa_batch.store.store import Store

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "pipelines" / "tiny.toml"
DEMO = ROOT / "manifests" / "demo.csv"


@pytest.fixture
def starts(monkeypatch) -> list[bool]:
    """Each Ray start asked for (none succeeds: no Ray here), and, for each plan counted,
    whether a start was already under way when it began."""
    seen: list = []

    def no_ray(config, address):
        seen.append("ray")
        raise RayStartError("no Ray in this test")

    real_plan = engine_run.make_plan

    def plan(*args, **kwargs):
        seen.append(any(t.name.startswith("startup") for t in threading.enumerate()))
        return real_plan(*args, **kwargs)

    monkeypatch.setattr(startup, "ray_init", no_ray)
    monkeypatch.setattr(engine_run, "make_plan", plan)
    return seen


def commit_demo(out: Path, fingerprint: str | None = None) -> None:
    """Every demo item committed, with its real fingerprint unless one is given."""
    spec = load_pipeline_spec(TINY)
    store = Store(str(out))
    for item in iter_items(str(DEMO), spec):
        real = item_fingerprint(item, spec.identity(), temporal_factor=4)
        store.commit(item.id, b"\x00mp4", {"fingerprint": fingerprint or real})


def run(out: Path, **options):
    config = RunConfig(str(DEMO), str(out), str(TINY), workers=1, **options)
    return engine_run.run(config, make_runner=object)  # no check: only Ray's start is watched


def test_a_fresh_root_starts_ray_while_the_plan_is_counted(tmp_path, starts):
    with pytest.raises(RayStartError):
        run(tmp_path / "out")
    plans = [seen for seen in starts if seen != "ray"]
    assert plans == [True] and starts.count("ray") == 1  # the start runs beside the plan


def test_a_root_holding_every_row_counts_its_plan_before_starting_ray(tmp_path, starts):
    commit_demo(tmp_path / "out", fingerprint="made-by-another-pipeline")
    with pytest.raises(RayStartError):
        run(tmp_path / "out", regenerate_changed=True)
    assert starts == [False, "ray"]


def test_a_run_stopped_by_changed_items_starts_no_ray(tmp_path, starts):
    commit_demo(tmp_path / "out", fingerprint="made-by-another-pipeline")
    with pytest.raises(ChangedItemsError):
        run(tmp_path / "out")
    assert starts == [False]


def test_a_run_with_nothing_to_do_starts_no_ray(tmp_path, starts):
    commit_demo(tmp_path / "out")
    summary = run(tmp_path / "out")
    assert summary.generated == 0 and starts == [False]
