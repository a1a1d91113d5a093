"""`run`'s pre-run check remembers the slow checks that passed, per set of unchanged files."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from doctor_support import rewrite

from pusa_batch.doctor import context
from pusa_batch.doctor.preflight import diagnose, preflight
from pusa_batch.doctor.remembered import records_dir
from pusa_batch.errors import PipelineError
from pusa_batch.models.tiny import ensure_tiny_model
from pusa_batch.pipelines.spec import load_pipeline_spec

WEIGHTS = "diffusion_pytorch_model.safetensors"


@pytest.fixture
def spec(cache, tmp_path, monkeypatch):
    """A pipeline on a private copy of the tiny twin, with its own record folder."""
    model = Path(shutil.copytree(ensure_tiny_model("wan2.1"), tmp_path / "model"))
    monkeypatch.setenv("PUSA_BATCH_CACHE", str(tmp_path / "records"))
    path = tmp_path / "pipe.toml"
    path.write_text(
        f'family = "wan2.1"\n[weights]\nroot = "{model}"\n'
        "[defaults]\nnum_frames = 17\nheight = 64\nwidth = 64\nsteps = 4\n"
        "[options]\ntext_max_length = 32\n"
    )
    return load_pipeline_spec(path)


def no_meta_builds(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise RuntimeError("a component was built on meta")

    monkeypatch.setattr(context, "build_on_meta", refuse)
    monkeypatch.setattr(context, "PusaWanTransformer", refuse)


def test_a_second_check_of_unchanged_files_takes_the_verdicts_it_had(spec, monkeypatch):
    first = preflight(spec)
    no_meta_builds(monkeypatch)
    assert preflight(spec).checks == first.checks


def test_a_weight_file_rewritten_after_a_pass_is_checked_again(spec):
    preflight(spec)
    old, new = "blocks.1.attn1.to_q.weight", "blocks.1.attn1.query.weight"
    file = spec.weights.components()["transformer"] / WEIGHTS
    rewrite(file, lambda sd: sd.__setitem__(new, sd.pop(old)))
    with pytest.raises(PipelineError, match=f"missing key\\(s\\): {old}"):
        preflight(spec)


def test_a_failing_check_leaves_no_record(spec):
    file = spec.weights.components()["vae"] / WEIGHTS
    file.write_bytes(file.read_bytes()[:-100])
    with pytest.raises(PipelineError, match="truncated"):
        preflight(spec)
    assert not list(records_dir().glob("*.json"))


def test_the_memory_verdict_is_taken_afresh_from_remembered_parts(spec, monkeypatch):
    preflight(spec)
    no_meta_builds(monkeypatch)
    report = diagnose(spec, memory_budget=1000, remembered=True)
    (memory,) = [c for c in report.checks if c.name == "memory"]
    assert memory.status == "fail" and "does not fit" in memory.detail


def test_doctor_checks_afresh_after_a_remembered_pass(spec, monkeypatch):
    preflight(spec)
    no_meta_builds(monkeypatch)
    (vae,) = [c for c in diagnose(spec).checks if c.name == "keys: vae"]
    assert vae.status == "fail" and "built on meta" in vae.detail


def test_an_unreadable_record_is_checked_afresh(spec, monkeypatch):
    preflight(spec)
    for record in records_dir().glob("*.json"):
        record.write_text("{not json")
    no_meta_builds(monkeypatch)
    with pytest.raises(PipelineError, match="built on meta"):
        preflight(spec)
