"""`plan_job` and the job's exit status, without a cluster: what is sent and what is refused.
(The round trip through a real Ray cluster is in test_submit_cluster.py.)"""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

import pusa_batch
from pusa_batch.engine.config import RunConfig
from pusa_batch.engine.submit import (
    RUN_FLAGS,
    JobRequest,
    dashboard_address,
    job_exit_code,
    plan_job,
    submit_job,
)
from pusa_batch.errors import PusaBatchError, UsageError

TINY = Path(__file__).resolve().parents[1] / "pipelines" / "tiny.toml"
HEADER = "id,task,prompt,num_frames,height,width,steps,seed"


@pytest.fixture
def project(tmp_path):
    """A working dir with a manifest and the tiny pipeline, as a user would ship it."""
    (tmp_path / "manifests").mkdir()
    (tmp_path / "manifests" / "run.csv").write_text(HEADER + "\ncat,t2v,a cat,5,32,32,2,1\n")
    shutil.copy(TINY, tmp_path / "tiny.toml")
    return tmp_path


def request(project: Path, working_dir: str | None = None, **overrides) -> JobRequest:
    """A request as `submit` builds it; run settings (workers, batch_size, ...) go to RunConfig."""
    config_fields = {"manifest": "manifests/run.csv", "output": "s3://bucket/run1"}
    config_fields["pipeline"] = "tiny.toml"
    request_fields = {"address": "http://head:8265", "working_dir": working_dir or str(project)}
    for name in ("manifest", "output", "pipeline"):
        if name in overrides:
            config_fields[name] = overrides.pop(name)
    for name in ("address", "pip", "storage_options", "weights_storage_options"):
        if name in overrides:
            request_fields[name] = overrides.pop(name)
    return JobRequest(config=RunConfig(**config_fields, **overrides), **request_fields)


def test_the_entrypoint_is_the_same_run_joining_the_cluster(project):
    plan = plan_job(request(project, workers=4, storage_options=("anon=false",)))
    assert list(plan.argv) == [
        "python", "-m", "pusa_batch", "run", "manifests/run.csv", "-o", "s3://bucket/run1",
        "--pipeline", "tiny.toml", "--workers", "4", "--storage-option", "anon=false",
        "--address", "auto", "--no-progress",
    ]  # fmt: skip


def test_the_entrypoint_flags_exist_in_the_run_command(project):
    from typer.main import get_command

    from pusa_batch.cli.main import app

    run = get_command(app).commands["run"]
    flags = {opt for param in run.params for opt in param.opts + param.secondary_opts}
    plan = plan_job(request(project, workers=2, storage_options=("a=b",)))
    assert {arg for arg in plan.argv if arg.startswith("-")} <= flags | {"-m"}


def run_command_flags() -> set[str]:
    from typer.main import get_command

    from pusa_batch.cli.main import app

    run = get_command(app).commands["run"]
    return {opt for param in run.params for opt in param.opts if opt.startswith("--")}


def test_every_run_option_a_user_can_set_has_a_way_to_the_job():
    where_the_job_says = {"--output", "--pipeline", "--storage-option", "--address", "--progress"}
    where_the_job_says |= {"--weights-storage-option"}  # passed as given, like --storage-option
    where_the_job_says |= {"--help"}
    # how this terminal shows the run; the job's log is plain text
    where_the_job_says |= {"--dry-run", "--json", "--log-format", "--quiet", "--verbose"}
    assert run_command_flags() - where_the_job_says == set(RUN_FLAGS.values())


def test_every_run_setting_that_differs_from_the_default_reaches_the_entrypoint(project):
    settings = {
        "workers": 3,
        "gpus_per_worker": 0.5,
        "cpus_per_worker": 4.0,
        "resources": {"accelerator_type:H100": 0.001},
        "node_labels": {"pool": "gpu", "zone": "!us-east-1a"},
        "max_retries": 5,
        "retry_failed": True,
        "regenerate_changed": True,
        "longest_first": True,
        "batch_size": 4,
        "lease_stale_s": 30.0,
        "lease_wait": False,
        "trust_index": True,
        "storage_timeout_s": 90.0,
        "strict_columns": True,
    }
    auto = {"max_workers": 6}  # caps --workers auto, so not with workers=3
    assert set(settings) | set(auto) == set(RUN_FLAGS)
    argv = list(plan_job(request(project, **settings)).argv)
    tail = argv[argv.index("tiny.toml") + 1 : argv.index("--address")]
    assert tail == [
        "--workers", "3", "--gpus-per-worker", "0.5", "--cpus-per-worker", "4.0",
        "--resources", '{"accelerator_type:H100": 0.001}', "--node-label", "pool=gpu",
        "--node-label", "zone=!us-east-1a", "--max-retries", "5", "--retry-failed",
        "--regenerate-changed", "--longest-first", "--batch-size", "4", "--lease-stale-s", "30.0",
        "--no-wait", "--trust-index", "--storage-timeout", "90.0", "--strict-columns",
    ]  # fmt: skip


def test_an_auto_pool_cap_reaches_the_entrypoint(project):
    argv = list(plan_job(request(project, max_workers=6)).argv)
    assert argv[argv.index("tiny.toml") + 1 : argv.index("--address")] == ["--max-workers", "6"]


def test_default_run_settings_add_no_flags(project):
    argv = list(plan_job(request(project)).argv)
    assert argv[argv.index("tiny.toml") + 1 :] == ["--address", "auto", "--no-progress"]


def test_the_address_comes_from_the_environment_when_not_given():
    env = {"RAY_ADDRESS": "http://b:8265", "RAY_API_SERVER_ADDRESS": "http://a:8265"}
    assert dashboard_address(None, env) == ("http://a:8265", None)
    assert dashboard_address(None, {"RAY_ADDRESS": "http://b:8265"}) == ("http://b:8265", None)
    assert dashboard_address("http://c:8265", env) == ("http://c:8265", None)


def test_a_bare_host_and_port_is_taken_as_http_with_a_note():
    address, note = dashboard_address("head:8265", {})
    assert address == "http://head:8265" and "http://head:8265" in note


@pytest.mark.parametrize("given", ["head:6379", "http://head:6379", "ray://head:10001"])
def test_a_gcs_or_client_address_is_refused_at_once(given):
    with pytest.raises(UsageError, match="dashboard") as refused:
        dashboard_address(given, {})
    assert refused.value.exit_code == 2


def test_no_address_anywhere_says_how_to_give_one():
    with pytest.raises(UsageError, match="--address http://HEAD:8265.*RAY_API_SERVER_ADDRESS"):
        dashboard_address(None, {})


def test_without_pip_this_package_is_shipped_as_a_py_module(project):
    env = plan_job(request(project)).runtime_env
    assert env["py_modules"] == [str(Path(pusa_batch.__file__).resolve().parent)]
    assert "pip" not in env
    assert env["working_dir"] == str(project.resolve())


def test_pip_specs_replace_the_shipped_package(project):
    env = plan_job(request(project, pip=("pusa-batch==0.1.0",))).runtime_env
    assert env["pip"] == ["pusa-batch==0.1.0"] and "py_modules" not in env


def test_git_caches_videos_and_weights_are_not_uploaded(project):
    excludes = plan_job(request(project)).runtime_env["excludes"]
    assert {".git", "**/__pycache__", "*.mp4", "*.safetensors"} <= set(excludes)


def test_an_output_inside_the_working_dir_is_not_uploaded(project):
    plan = plan_job(request(project, output=str(project / "outputs" / "run1")))
    assert "/outputs/run1" in plan.runtime_env["excludes"]


def test_input_videos_are_uploaded_when_the_manifest_has_some(project):
    (project / "manifests" / "run.csv").write_text(
        "id,task,prompt,video\nx,extend,a clip,clips/a.mp4\n"
    )
    assert "*.mp4" not in plan_job(request(project)).runtime_env["excludes"]


def test_an_absolute_manifest_inside_the_working_dir_becomes_relative(project):
    plan = plan_job(request(project, manifest=str(project / "manifests" / "run.csv")))
    assert plan.argv[4] == "manifests/run.csv"


def test_an_absolute_manifest_outside_the_working_dir_is_kept_with_a_note(project):
    plan = plan_job(request(project, manifest="/data/shared/run.csv"))
    assert plan.argv[4] == "/data/shared/run.csv"
    assert any("/data/shared/run.csv" in note and "cluster" in note for note in plan.notes)


def test_a_manifest_missing_from_the_working_dir_is_refused(project):
    with pytest.raises(PusaBatchError, match="manifests/nope.csv.*--working-dir"):
        plan_job(request(project, manifest="manifests/nope.csv"))


def test_a_relative_output_is_refused(project):
    with pytest.raises(PusaBatchError, match="relative.*absolute path.*s3://"):
        plan_job(request(project, output="outputs/run1"))


def test_a_local_output_gets_a_shared_filesystem_note(project):
    plan = plan_job(request(project, output="/mnt/shared/run1"))
    assert any("every node" in note for note in plan.notes)


def test_weights_inside_the_working_dir_are_refused(project):
    (project / "weights").mkdir()
    (project / "weights" / "model.safetensors").write_bytes(b"0")
    (project / "real.toml").write_text(
        'name = "real"\nfamily = "wan2.1"\n[weights]\ntransformer = "weights/model.safetensors"\n'
        'vae = "weights/model.safetensors"\ntext_encoder = "weights/model.safetensors"\n'
        'tokenizer = "weights"\n'
    )
    with pytest.raises(PusaBatchError, match="weights inside the working dir are not shipped"):
        plan_job(request(project, pipeline="real.toml"))


def test_a_missing_working_dir_is_refused(project):
    with pytest.raises(PusaBatchError, match="--working-dir"):
        plan_job(request(project, working_dir=str(project / "nope")))


def test_storage_option_values_are_hidden_when_shown_and_secrets_get_a_note(project):
    plan = plan_job(request(project, storage_options=("secret=hunter2", "anon=false")))
    assert "hunter2" in plan.entrypoint
    assert "hunter2" not in plan.shown_entrypoint and "secret=***" in plan.shown_entrypoint
    assert any("visible" in note for note in plan.notes)


def job_info(status: str, message: str = "", driver_exit_code: int | None = None):
    return SimpleNamespace(status=status, message=message, driver_exit_code=driver_exit_code)


@pytest.mark.parametrize(
    ("info", "code"),
    [
        (job_info("SUCCEEDED"), 0),
        (job_info("FAILED", "Job entrypoint command failed with exit code 2", 2), 2),
        (job_info("FAILED", "Job entrypoint command failed with exit code 3, last logs"), 3),
        (job_info("STOPPED", "Job was intentionally stopped."), 1),
    ],
)
def test_the_exit_status_follows_the_job(info, code):
    lines: list[str] = []
    assert job_exit_code(info, lines.append) == code
    assert lines


class RecordingClient:
    """Stands in for Ray's JobSubmissionClient to see what submit sends (the real round trip is
    in test_submit_cluster.py)."""

    def __init__(self):
        self.sent: dict = {}

    def submit_job(self, **kwargs):
        self.sent = kwargs
        return "raysubmit_1"


def test_job_metadata_and_printed_lines_hide_url_secrets(project, monkeypatch):
    client = RecordingClient()
    monkeypatch.setattr("pusa_batch.engine.submit.connect", lambda address: client)
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    lines: list[str] = []
    output = "s3://KEY:SECRET@bucket/run1?X-Amz-Signature=SIGNED"
    assert submit_job(request(project, output=output), wait=False, echo=lines.append) == 0
    metadata = str(client.sent["metadata"])
    assert "SECRET" not in metadata and "SIGNED" not in metadata
    assert not [line for line in lines if "SECRET" in line or "SIGNED" in line]
    follow = [line for line in lines if "job logs" in line or "job stop" in line]
    assert follow and all("RAY_AUTH_MODE=token ray job" in line for line in follow)


def test_a_pipeline_whose_weights_are_urls_is_submitted_with_its_local_paths_checked(project):
    (project / "remote.toml").write_text(
        'family = "wan2.1"\n[weights]\nroot = "s3://models/wan/"\n'
        f'[[lora]]\npath = "{project / "lora.safetensors"}"\nalpha = 1.0\n'
    )
    with pytest.raises(PusaBatchError, match="weights inside the working dir are not shipped"):
        plan_job(request(project, pipeline="remote.toml"))
    (project / "remote.toml").write_text(
        'family = "wan2.1"\n[weights]\nroot = "s3://models/wan/"\n'
    )
    assert "remote.toml" in plan_job(request(project, pipeline="remote.toml")).argv


def test_weight_storage_options_reach_the_entrypoint_as_given(project):
    plan = plan_job(request(project, weights_storage_options=("s3:anon=true",)))
    at = plan.argv.index("--weights-storage-option")
    assert plan.argv[at + 1] == "s3:anon=true"
