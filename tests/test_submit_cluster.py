"""`pusa-batch submit` against a real local Ray cluster with token auth (Ray 2.60), as a user runs
it: `ray start --head` in its own temp dir, ports and token file; the CLI in a subprocess.

`ray start` alone does not create a token: with RAY_AUTH_MODE=token it needs one already (here a
file named by RAY_AUTH_TOKEN_PATH), and with RAY_AUTH_MODE unset it turns token mode on only if
a token exists. The clients below leave RAY_AUTH_MODE unset and rely on `submit` enabling it.

Teardown never runs `ray stop` (it stops every Ray on the machine, other tests' too): it stops
the `ray start --block` process it started, then kills what is left of that process tree.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests
from process_support import descendants, free_ports

pytestmark = pytest.mark.slow

TINY = Path(__file__).resolve().parents[1] / "pipelines" / "tiny.toml"
HEADER = "id,task,prompt,num_frames,height,width,steps,seed"
ROWS = ["cat,t2v,a red cat,5,32,32,2,1", "dog,t2v,a blue dog,5,32,32,2,2"]
PORT_FLAGS = (
    "--port",
    "--dashboard-port",
    "--ray-client-server-port",
    "--dashboard-agent-listen-port",
    "--dashboard-agent-grpc-port",
    "--metrics-export-port",
    "--node-manager-port",
    "--object-manager-port",
    "--runtime-env-agent-port",
)


def stop_cluster(head: subprocess.Popen) -> None:
    tree = descendants(head.pid)
    head.send_signal(signal.SIGTERM)  # `ray start --block` shuts its node down on SIGTERM
    try:
        head.wait(timeout=30)
    except subprocess.TimeoutExpired:
        head.kill()
    for pid in tree + descendants(head.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def wait_for_dashboard(url: str, head: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if head.poll() is not None:
            raise RuntimeError(f"ray start exited with {head.returncode}")
        try:
            if requests.get(f"{url}/api/version", timeout=2).status_code in (200, 401, 403):
                return
        except requests.RequestException:
            pass
        time.sleep(1)
    raise TimeoutError(f"no Ray dashboard at {url} after {timeout_s} s")


@pytest.fixture(scope="module")
def cluster():
    """(dashboard address, token file, base env without any RAY_* auth setting)."""
    temp = Path(tempfile.mkdtemp(prefix="pbray-", dir="/tmp"))  # short: unix socket paths
    token = temp / "token"
    token.write_text(secrets.token_hex(16))
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    ports = free_ports(len(PORT_FLAGS))
    port_args = [
        arg for flag, port in zip(PORT_FLAGS, ports, strict=True) for arg in (flag, str(port))
    ]
    command = [
        shutil.which("ray") or "ray",
        "start",
        "--head",
        "--block",
        "--node-ip-address",
        "127.0.0.1",
        "--dashboard-host",
        "127.0.0.1",
        "--num-cpus",
        "2",
        "--disable-usage-stats",
        "--temp-dir",
        str(temp / "ray"),
        *port_args,
    ]
    head_env = {**base_env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    log = open(temp / "ray-start.log", "wb")  # noqa: SIM115 - closed in teardown
    head = subprocess.Popen(
        command, env=head_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    address = f"http://127.0.0.1:{ports[1]}"
    try:
        wait_for_dashboard(address, head)
        yield address, token, base_env, temp
    finally:
        stop_cluster(head)
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def pusa_batch(args: list[str], env: dict, cwd: Path, timeout_s: float = 240):
    return subprocess.run(
        [sys.executable, "-m", "pusa_batch", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def job_folder(temp: Path, name: str, rows: list[str]) -> Path:
    folder = temp / name
    folder.mkdir()
    (folder / "manifest.csv").write_text("\n".join([HEADER, *rows]) + "\n")
    shutil.copy(TINY, folder / "tiny.toml")
    return folder


def test_a_submitted_run_succeeds_and_leaves_its_outputs(cluster):
    address, token, env, temp = cluster
    folder = job_folder(temp, "good", ROWS)
    output = temp / "out-good"
    result = pusa_batch(
        [
            "submit",
            "manifest.csv",
            "-o",
            str(output),
            "-p",
            "tiny.toml",
            "--address",
            address,
            "--workers",
            "1",
            "--wait",
        ],
        env={**env, "RAY_AUTH_TOKEN_PATH": str(token)},
        cwd=folder,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ray job logs --follow" in result.stdout
    assert f"pusa-batch status {output}" in result.stdout
    assert "2 items: 2 generated" in result.stdout  # the job's own summary, streamed back
    assert sorted(p.name for p in (output / "videos").iterdir()) == ["cat.mp4", "dog.mp4"]
    assert sorted(p.name for p in (output / "items").iterdir()) == ["cat.json", "dog.json"]


def test_a_failing_run_returns_the_jobs_exit_code(cluster):
    address, token, env, temp = cluster
    folder = job_folder(
        temp, "bad", ["cat,t2v,a red cat,5,32,32,2,1", "dog,nope,a dog,5,32,32,2,2"]
    )
    result = pusa_batch(
        [
            "submit",
            "manifest.csv",
            "-o",
            str(temp / "out-bad"),
            "-p",
            "tiny.toml",
            "--address",
            address,
            "--wait",
        ],
        env={**env, "RAY_AUTH_TOKEN_PATH": str(token)},
        cwd=folder,
    )
    assert result.returncode == 2, result.stdout + result.stderr  # ManifestError's exit code
    assert "dog" in result.stdout and "task" in result.stdout


def test_a_wrong_token_is_a_clear_error(cluster):
    address, _, env, temp = cluster
    folder = job_folder(temp, "wrong-token", ROWS)
    result = pusa_batch(
        [
            "submit",
            "manifest.csv",
            "-o",
            str(temp / "out-x"),
            "-p",
            "tiny.toml",
            "--address",
            address,
        ],
        env={**env, "RAY_AUTH_TOKEN": "not-the-token"},
        cwd=folder,
    )
    assert result.returncode == 1
    assert "has no valid token" in result.stderr
    assert "RAY_AUTH_TOKEN" in result.stderr and "Traceback" not in result.stderr


def wait_for_markers(items: Path, count: int, timeout_s: float = 240) -> list[str]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = sorted(p.name for p in items.glob("*.json")) if items.is_dir() else []
        if len(found) >= count:
            return found
        time.sleep(0.2)
    raise TimeoutError(f"fewer than {count} item(s) committed under {items}")


def test_a_stopped_job_resubmitted_resumes_where_it_stopped(cluster):
    address, token, env, temp = cluster
    ids = [f"s{n:02d}" for n in range(12)]
    rows = [f"{i},t2v,clip {n},9,64,64,8,{n}" for n, i in enumerate(ids)]
    folder = job_folder(temp, "stopped", rows)
    output = temp / "out-stopped"
    args = ["submit", "manifest.csv", "-o", str(output), "-p", "tiny.toml"]
    args += ["--address", address, "--workers", "1"]
    auth = {**env, "RAY_AUTH_TOKEN_PATH": str(token)}
    first = pusa_batch(args, env=auth, cwd=folder)
    assert first.returncode == 0, first.stdout + first.stderr
    (job_id,) = [line.split()[2] for line in first.stdout.splitlines() if "Submitted job" in line]
    before = wait_for_markers(output / "items", 1)
    stop = subprocess.run(
        [shutil.which("ray") or "ray", "job", "stop", job_id, "--address", address],
        env={**auth, "RAY_AUTH_MODE": "token"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert stop.returncode == 0, stop.stdout + stop.stderr
    stopped = sorted(p.name for p in (output / "items").glob("*.json"))
    assert len(stopped) < len(ids), "the job finished before it could be stopped"
    committed = {n: (output / "items" / n).read_text() for n in stopped}

    again = pusa_batch([*args, "--wait"], env=auth, cwd=folder)
    assert again.returncode == 0, again.stdout + again.stderr
    assert sorted(p.name for p in (output / "items").iterdir()) == [f"{i}.json" for i in ids]
    assert sorted(p.name for p in (output / "videos").iterdir()) == [f"{i}.mp4" for i in ids]
    assert all((output / "items" / n).read_text() == m for n, m in committed.items())
    assert before and f"{len(ids) - len(stopped)} generated" in again.stdout
