"""`pusa-batch submit`: send the same `pusa-batch run` to a Ray cluster as a Ray Job.

The job's entrypoint is `python -m pusa_batch run MANIFEST -o OUTPUT --pipeline PIPELINE
--address auto --no-progress [...]`, run in a copy of `working_dir` on the head node; the run
itself is resumable, so a job that dies can simply be submitted again.

Decisions (and trade-offs a user should know):
- Code: without `--pip`, this very `pusa_batch` package directory is shipped as a `py_modules`
  entry, so the cluster runs exactly the submitter's code; the cluster's Python must already
  have torch, ray, diffusers, transformers, PyAV... installed. `--pip "pusa-batch==X"` (or any
  pip specs) makes Ray install them into the job's environment instead (slower first start, but
  nothing needed on the nodes beyond Ray).
- Paths: relative manifest and pipeline paths are relative to `working_dir` and travel with it;
  absolute paths are read on the cluster as they are. The output root must be an fsspec URL or
  an absolute path every node sees (a relative one would land in Ray's temporary copy of the
  working dir). Weights are never shipped (`*.safetensors`, `*.pt`, ... are excluded and Ray caps
  the upload size): the pipeline TOML must point at paths the nodes can read.
- Secrets: `--storage-option K=V` values are put in the entrypoint, which anyone able to read the
  cluster's job list can see (the dashboard, `ray job list`); runtime_env env_vars are shown
  there too, so they are no better. Prefer credentials from the nodes' own environment (an
  instance role, AWS_* variables or a credentials file on the nodes). Echoed lines redact them.
- Ray token auth (Ray >= 2.52): when RAY_AUTH_MODE is unset and a token is available
  (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token), token mode is enabled for this
  process so the client sends it; a 401/403 becomes a `PusaBatchError` saying how to give it.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pusa_batch
from pusa_batch.engine.config import RunConfig
from pusa_batch.errors import PusaBatchError, UsageError
from pusa_batch.store.io import redact_url

Echo = Callable[[str], None]

BASE_EXCLUDES = (
    ".git",
    "**/__pycache__",
    ".pytest_cache",
    ".ruff_cache",
    ".mypy_cache",
    ".venv",
    "venv",
    ".cache",
    "*.egg-info",
    "*.mp4",
    "*.safetensors",
    "*.pt",
    "*.pth",
    "*.ckpt",
    "*.bin",
    "*.gguf",
)
SECRET_WORDS = ("secret", "token", "password", "key", "credential")
POLL_S = 1.0


# RunConfig field -> the `run` flag that sets it; every one a user can give `run` reaches the job.
RUN_FLAGS: dict[str, str] = {
    "workers": "--workers",
    "gpus_per_worker": "--gpus-per-worker",
    "cpus_per_worker": "--cpus-per-worker",
    "max_workers": "--max-workers",
    "resources": "--resources",
    "node_labels": "--node-label",
    "max_retries": "--max-retries",
    "retry_failed": "--retry-failed",
    "regenerate_changed": "--regenerate-changed",
    "longest_first": "--longest-first",
    "batch_size": "--batch-size",
    "lease_stale_s": "--lease-stale-s",
    "lease_wait": "--no-wait",
    "trust_index": "--trust-index",
    "storage_timeout_s": "--storage-timeout",
    "strict_columns": "--strict-columns",
}
ADDRESS_VARIABLES = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")
GCS_PORT = 6379
DASHBOARD_PORT = 8265


@dataclass(frozen=True)
class JobRequest:
    """The run to send (`config`, built and checked as `run` builds it) and where to send it.

    `address` is the dashboard's; None reads RAY_API_SERVER_ADDRESS, then RAY_ADDRESS.
    `storage_options` are the "KEY=VALUE" pairs as given on the command line.
    """

    config: RunConfig
    address: str | None = None
    working_dir: str = "."
    pip: tuple[str, ...] = ()
    storage_options: tuple[str, ...] = ()
    weights_storage_options: tuple[str, ...] = ()

    @property
    def manifest(self) -> str:
        return self.config.manifest

    @property
    def output(self) -> str:
        return self.config.output

    @property
    def pipeline(self) -> str:
        return self.config.pipeline


@dataclass(frozen=True)
class JobPlan:
    """What is sent: the entrypoint argv, the runtime_env, and notes for the user."""

    argv: tuple[str, ...]
    runtime_env: dict[str, Any]
    notes: tuple[str, ...]

    @property
    def entrypoint(self) -> str:
        return shlex.join(self.argv)

    @property
    def shown_entrypoint(self) -> str:
        """The entrypoint with storage option values hidden, for printing."""
        return shlex.join(redact_argv(self.argv))


def submit_job(request: JobRequest, wait: bool, echo: Echo) -> int:
    """Submit the run; with `wait`, stream its logs and return the job's exit status."""
    plan = plan_job(request)
    address, address_note = dashboard_address(request.address, os.environ)
    for note in (*plan.notes, *([address_note] if address_note else [])):
        echo(f"note: {note}")
    client = connect(address)
    try:
        job_id = client.submit_job(
            entrypoint=plan.entrypoint,
            runtime_env=plan.runtime_env,
            metadata={"tool": "pusa-batch", "output": redact_url(request.output)},
        )
    except Exception as exc:  # noqa: BLE001 - Ray raises RuntimeError / AuthenticationError
        raise _client_error(exc, address) from exc
    ray_cli = "RAY_AUTH_MODE=token ray" if os.environ.get("RAY_AUTH_MODE") == "token" else "ray"
    echo(f"Submitted job {job_id} to {address}")
    echo(f"  entrypoint: {plan.shown_entrypoint}")
    echo(f"  follow its logs: {ray_cli} job logs --follow {job_id} --address {address}")
    echo(f"  progress of the run: pusa-batch status {redact_url(request.output)}")
    echo(f"  stop it: {ray_cli} job stop {job_id} --address {address}")
    if not wait:
        return 0
    try:
        follow_logs(client, job_id, echo)
        return job_exit_code(client.get_job_info(job_id), echo)
    except KeyboardInterrupt:
        echo(f"Stopped following; job {job_id} goes on. Stop it with: ray job stop {job_id}")
        return 130


# ---------------------------------------------------------------------------- the plan


def plan_job(request: JobRequest) -> JobPlan:
    """Check the request and build the entrypoint and runtime_env (no network)."""
    working_dir = Path(request.working_dir).expanduser().resolve()
    if not working_dir.is_dir():
        raise PusaBatchError(
            f"--working-dir {request.working_dir} is not a folder: give the folder that holds "
            "the manifest and the pipeline TOML (it is shipped to the cluster as the job's cwd)"
        )
    notes: list[str] = []
    manifest = job_path(request.manifest, working_dir, "manifest", notes)
    pipeline = job_path(request.pipeline, working_dir, "pipeline", notes)
    check_output(request.output, notes)
    check_weights_not_shipped(_local(pipeline, working_dir), working_dir)
    argv = build_argv(request, manifest, pipeline)
    runtime_env: dict[str, Any] = {
        "working_dir": str(working_dir),
        "excludes": excludes(request.output, working_dir, _local(manifest, working_dir)),
    }
    if request.pip:
        runtime_env["pip"] = list(request.pip)
    else:
        runtime_env["py_modules"] = [str(Path(pusa_batch.__file__).resolve().parent)]
    if any(_looks_secret(p) for p in (*request.storage_options, *request.weights_storage_options)):
        notes.append(
            "storage options are visible in the job's entrypoint to anyone who can list the "
            "cluster's jobs; prefer credentials from the nodes' environment"
        )
    return JobPlan(tuple(argv), runtime_env, tuple(notes))


def build_argv(request: JobRequest, manifest: str, pipeline: str) -> list[str]:
    argv = ["python", "-m", "pusa_batch", "run", manifest, "-o", request.output]
    argv += ["--pipeline", pipeline, *run_flags(request.config)]
    for pair in request.storage_options:
        argv += ["--storage-option", pair]
    for pair in request.weights_storage_options:
        argv += ["--weights-storage-option", pair]
    return argv + ["--address", "auto", "--no-progress"]


def run_flags(config: RunConfig) -> list[str]:
    """The `run` flags for every setting of `config` that differs from `run`'s default."""
    defaults = RunConfig(config.manifest, config.output, config.pipeline)
    flags: list[str] = []
    for name, flag in RUN_FLAGS.items():
        value = getattr(config, name)
        if value == getattr(defaults, name):
            continue
        if isinstance(value, bool):
            flags += [flag]
        elif name == "node_labels":  # repeated: --node-label KEY=VALUE
            flags += [arg for key, rule in value.items() for arg in (flag, f"{key}={rule}")]
        elif isinstance(value, Mapping):
            flags += [flag, json.dumps(dict(value), sort_keys=True)]
        else:
            flags += [flag, str(value)]
    return flags


def dashboard_address(given: str | None, environ: Mapping[str, str]) -> tuple[str, str | None]:
    """(the dashboard's http address, a note or None) from `--address` or the environment.

    A bare `host:port` is taken as `http://host:port`; the GCS port (6379) or a `ray://` client
    address is refused at once, since waiting on it only ends in a long timeout.
    """
    address, source = given, "--address"
    for name in ADDRESS_VARIABLES:
        if address is None and environ.get(name):
            address, source = environ[name], name
    if address is None:
        raise UsageError(
            "submit needs the Ray dashboard's address: give --address http://HEAD:8265, or set "
            "RAY_API_SERVER_ADDRESS (or RAY_ADDRESS) to it"
        )
    note = None
    if "://" not in address:
        address, note = f"http://{address}", f"{source} has no scheme: using http://{address}"
    parts = urlsplit(address)
    if parts.scheme not in ("http", "https") or parts.port == GCS_PORT:
        raise UsageError(
            f"{source}={given or address!s} is not a Ray dashboard address: submit talks to the "
            f"dashboard's Jobs API (http://HEAD:{DASHBOARD_PORT}), not to the GCS port "
            f"{GCS_PORT} or a ray:// client port"
        )
    return address, note


def job_path(path: str, working_dir: Path, what: str, notes: list[str]) -> str:
    """The path as the job sees it: relative to the shipped working dir, or absolute / URL."""
    if "://" in path:
        return path
    given = Path(path).expanduser()
    if given.is_absolute():
        if given.resolve().is_relative_to(working_dir):
            return given.resolve().relative_to(working_dir).as_posix()
        where = "found here" if given.exists() else "not found on this machine"
        notes.append(
            f"the {what} {given} is outside the working dir ({where}): the job reads "
            "it at that path on the cluster"
        )
        return str(given)
    if (working_dir / given).exists():
        return given.as_posix()
    from_cwd = given.resolve()
    if from_cwd.exists() and from_cwd.is_relative_to(working_dir):
        return from_cwd.relative_to(working_dir).as_posix()
    raise PusaBatchError(
        f"the {what} {path} is not in the working dir {working_dir}: give it relative to "
        "--working-dir (it is shipped with it), or as an absolute path that exists on the cluster"
    )


def check_output(output: str, notes: list[str]) -> None:
    if "://" in output and not output.startswith("file://"):
        return
    local = output.removeprefix("file://")
    if not Path(local).expanduser().is_absolute():
        raise PusaBatchError(
            f"the output root {output} is relative: on the cluster it would be written inside "
            "Ray's temporary copy of the working dir and lost. Give an absolute path that every "
            "node sees (a shared filesystem) or an object-store URL such as s3://bucket/run"
        )
    notes.append(
        f"the output {output} is a local path: every node of the cluster must see it (shared "
        "filesystem); otherwise use an object-store URL"
    )


def check_weights_not_shipped(pipeline: Path | None, working_dir: Path) -> None:
    """Weights are excluded from the upload: refuse a TOML whose weights live in working_dir."""
    if pipeline is None or not pipeline.exists():
        return
    from pusa_batch.pipelines.spec import load_pipeline_spec

    spec = load_pipeline_spec(pipeline)
    paths = list(spec.weights.components().values()) + [lora.path for lora in spec.loras]
    local = [p for p in paths if isinstance(p, (str, Path))]  # URLs are staged, not shipped
    inside = [p for p in local if Path(p).resolve().is_relative_to(working_dir)]
    if inside:
        shown = ", ".join(str(p) for p in inside)
        raise PusaBatchError(
            f"{pipeline}: weights inside the working dir are not shipped to the cluster (too big "
            f"for a Ray upload): {shown}. Put them on a path every node can read and point the "
            "TOML there with absolute paths"
        )


def excludes(output: str, working_dir: Path, manifest: Path | None) -> list[str]:
    """Heavy or irrelevant files never uploaded; input videos are kept if the manifest has any."""
    patterns = list(BASE_EXCLUDES)
    if manifest is not None and manifest.is_file() and manifest_uses_videos(manifest):
        patterns.remove("*.mp4")
    local = Path(output.removeprefix("file://")).expanduser()
    if "://" not in output.removeprefix("file://") and local.is_absolute():
        if local.resolve().is_relative_to(working_dir) and local.resolve() != working_dir:
            patterns.append("/" + local.resolve().relative_to(working_dir).as_posix())
    return patterns


def manifest_uses_videos(manifest: Path) -> bool:
    """True if any row names an input video (those must travel with the working dir)."""
    from pusa_batch.manifest.read import iter_raw_chunks

    for chunk in iter_raw_chunks(str(manifest)):
        for column in ("video", "video_b"):
            if column in chunk.columns and chunk[column].notna().any():
                return True
    return False


def redact_argv(argv: tuple[str, ...] | list[str]) -> list[str]:
    """Storage option values and URL credentials or query values become `***`."""
    out = [redact_url(arg) if "://" in arg else arg for arg in argv]
    for i, arg in enumerate(out[:-1]):
        if arg == "--storage-option":
            key = out[i + 1].partition("=")[0]
            out[i + 1] = f"{key}=***"
    return out


def _local(path: str, working_dir: Path) -> Path | None:
    if "://" in path:
        return None
    p = Path(path).expanduser()
    return p if p.is_absolute() else working_dir / p


def _looks_secret(pair: str) -> bool:
    return any(word in pair.partition("=")[0].lower() for word in SECRET_WORDS)


# ---------------------------------------------------------------------------- the cluster


def enable_token_auth_if_available() -> bool:
    """Turn on Ray token auth for this process when RAY_AUTH_MODE is unset and a token exists.

    Returns whether token mode is on. `JobSubmissionClient` reads the mode when it is created,
    so call this before creating one.
    """
    mode = os.environ.get("RAY_AUTH_MODE")
    if mode is not None:
        return mode.lower() == "token"
    try:
        from ray._raylet import AuthenticationTokenLoader, Config
    except ImportError:  # an older Ray without token auth
        return False
    if not AuthenticationTokenLoader.instance().has_token(ignore_auth_mode=True):
        return False
    os.environ["RAY_AUTH_MODE"] = "token"
    Config.initialize("")  # refresh Ray's cached config so this process sees the mode
    return True


def connect(address: str) -> Any:
    """A `JobSubmissionClient` for the dashboard at `address`, with the token if there is one."""
    from ray.job_submission import JobSubmissionClient

    enable_token_auth_if_available()
    try:
        return JobSubmissionClient(address)
    except Exception as exc:  # noqa: BLE001 - ConnectionError, AuthenticationError, ValueError
        raise _client_error(exc, address) from exc


def _client_error(exc: Exception, address: str) -> PusaBatchError:
    text = str(exc)
    if type(exc).__name__ == "AuthenticationError" or re.search(r"\b40[13]\b", text):
        rejected = "has no valid token" if "403" in text or "invalid" in text else "sent no token"
        return PusaBatchError(
            f"the Ray cluster at {address} requires token authentication and this client "
            f"{rejected}. Give it the cluster's token (`ray get-auth-token` on the head node "
            "prints it): save it to ~/.ray/auth_token, or set RAY_AUTH_TOKEN=<token>, or "
            "RAY_AUTH_TOKEN_PATH=<file>; RAY_AUTH_MODE=token is then set automatically"
        )
    if isinstance(exc, ConnectionError) or "connect" in text.lower():
        return PusaBatchError(
            f"cannot reach the Ray dashboard at {address}: check the address (the dashboard "
            f"port, usually http://HEAD:8265, not the GCS port 6379) and that it is reachable "
            f"from here ({text.splitlines()[0] if text else type(exc).__name__})"
        )
    return PusaBatchError(f"the Ray cluster at {address} refused the job: {text}")


def follow_logs(client: Any, job_id: str, echo: Echo) -> None:
    """Echo the job's log lines until it ends (websocket tail, polling if that fails)."""
    printed = [0]  # characters echoed so far, kept if the tail fails half-way
    try:
        asyncio.run(_tail(client, job_id, echo, printed))
    except Exception:  # noqa: BLE001 - a dropped websocket: poll for the rest
        pass
    while True:
        terminal = client.get_job_status(job_id).is_terminal()
        logs = client.get_job_logs(job_id)
        _echo_lines(logs[printed[0] :], echo)
        printed[0] = len(logs)
        if terminal:
            return
        time.sleep(POLL_S)


async def _tail(client: Any, job_id: str, echo: Echo, printed: list[int]) -> None:
    async for chunk in client.tail_job_logs(job_id):
        _echo_lines(chunk, echo)
        printed[0] += len(chunk)


def _echo_lines(text: str, echo: Echo) -> None:
    for line in text.splitlines():
        echo(line)


def job_exit_code(info: Any, echo: Echo) -> int:
    """0 if the job SUCCEEDED; else its driver's exit code if known, else 1."""
    status = str(getattr(info.status, "value", info.status))
    if status == "SUCCEEDED":
        echo("Job succeeded.")
        return 0
    code = getattr(info, "driver_exit_code", None)
    if not code:
        found = re.search(r"exit code (\d+)", info.message or "")
        code = int(found.group(1)) if found else None
    first = (info.message or "").splitlines()[0] if info.message else ""
    echo(f"Job {status.lower()}: {first}".rstrip(": "))
    return int(code) if code else 1
