"""docs/deploy/pusa-batch.sbatch submitted, unchanged, to a real single-node Slurm.

The fixture starts munged, slurmctld and slurmd (Debian's slurm-wlm 22.05) on 127.0.0.1 with a
config, a munge key, state and logs in one temp folder, as the current user, on free ports; the
test submits the script with `sbatch --wait` (2 tiny items on the tiny pipeline), checks the
output root holds each id once and `pusa-batch status` reads finished, then submits the very same
line again (the resume recipe) and checks nothing was made twice.

Skipped, with the reason, where Slurm or munge is not installed (`apt-get install -y slurmctld
slurmd slurm-client munge`; it is not in .ci/run: the install and this test together take about
3 minutes on 2 cores) or where the daemons cannot start here. Teardown stops only what the
fixture started, by pid: the jobs (scancel on this private cluster), the daemons (their pid
files), then any process left whose command line names the fixture's folder (Ray's, which runs
with RAY_TMPDIR there).
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from process_support import free_ports

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "docs" / "deploy" / "pusa-batch.sbatch"
TINY = REPO / "pipelines" / "tiny.toml"
HEADER = "id,task,prompt,num_frames,height,width,steps,seed"
ROWS = ["cat,t2v,a red cat,5,32,32,2,1", "dog,t2v,a blue dog,5,32,32,2,2"]
IDS = ["cat", "dog"]
NODE = "pbnode"
TOOLS = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "sinfo", "scancel", "squeue")
MISSING = [tool for tool in TOOLS if shutil.which(tool) is None]
# The script's own sbatch defaults are for GPU nodes; these make it fit a 2-CPU, GPU-less node.
FIT = ["--nodes=1", "--cpus-per-task=2", "--gpus-per-node=0", "--time=10"]

needs_slurm = pytest.mark.skipif(
    bool(MISSING),
    reason=f"Slurm/munge not installed ({', '.join(MISSING)} not on PATH): "
    "`apt-get install -y slurmctld slurmd slurm-client munge` to run this test; a manual "
    "run's output is recorded in docs/deploy/slurm.md",
)
# Ray's head opens more ports than these two; fixed defaults (10001, 52365...) could clash with
# another Ray on this machine, so the test gives the head free ones (RAY_HEAD_ARGS).
HEAD_PORT_FLAGS = (
    "--ray-client-server-port",
    "--dashboard-agent-listen-port",
    "--dashboard-agent-grpc-port",
    "--metrics-export-port",
    "--node-manager-port",
    "--object-manager-port",
    "--runtime-env-agent-port",
)

SLURM_CONF = """\
ClusterName=pbtest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser={user}
SlurmdUser={user}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge/sock
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
KillWait=5
NodeName={node} NodeAddr=127.0.0.1 NodeHostname=localhost CPUs={cpus} State=UNKNOWN
PartitionName=pb Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"({path.name} not written)"


def pid_from(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def stop_pid(pid: int | None, timeout_s: float = 15) -> None:
    if pid is None:
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def pids_naming(folder: Path) -> list[int]:
    """Live processes (not this one) whose command line names `folder`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(folder) in cmdline:
            found.append(int(entry.name))
    return found


class Slurm:
    """A private one-node Slurm: `env` makes the Slurm clients talk to it."""

    def __init__(self, root: Path):
        self.root = root
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "SLURM_"))}
        self.env["SLURM_CONF"] = str(root / "slurm.conf")

    def start(self) -> None:
        root = self.root
        for sub in ("munge", "state", "spool", "rt", "shared"):
            (root / sub).mkdir(mode=0o700)
        key = root / "munge" / "key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        munge = root / "munge"
        self.daemon(
            "munged",
            ["munged", "--force", f"--key-file={key}", f"--socket={munge}/sock"]
            + [f"--pid-file={munge}/pid", f"--log-file={munge}/log", f"--seed-file={munge}/seed"],
            munge / "log",
        )
        ctld_port, slurmd_port = free_ports(2)
        (root / "slurm.conf").write_text(
            SLURM_CONF.format(
                root=root,
                user=getpass.getuser(),
                node=NODE,
                ctld_port=ctld_port,
                slurmd_port=slurmd_port,
                cpus=2,
            )
        )
        conf = str(root / "slurm.conf")
        self.daemon("slurmctld", ["slurmctld", "-f", conf, "-i"], root / "slurmctld.log")
        self.daemon("slurmd", ["slurmd", "-f", conf, "-N", NODE], root / "slurmd.log")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            state = self.client(["sinfo", "-h", "-n", NODE, "-o", "%T"]).stdout.strip()
            if state in ("idle", "mixed", "allocated"):
                return
            time.sleep(0.5)
        pytest.skip(
            f"slurmd never became idle here (node state {state!r}):\n"
            + tail(root / "slurmctld.log")
            + "\n"
            + tail(root / "slurmd.log")
        )

    def daemon(self, name: str, argv: list[str], log: Path) -> None:
        started = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=60)
        if started.returncode != 0:
            pytest.skip(
                f"{name} cannot start in this environment (exit {started.returncode}): "
                + (started.stderr.strip() or started.stdout.strip() or tail(log))
            )

    def client(self, argv: list[str], **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(
            argv, env=self.env, capture_output=True, text=True, timeout=kwargs.pop("timeout", 30)
        )

    def stop(self) -> None:
        root = self.root
        if (root / "slurmctld.pid").exists():
            self.client(["scancel", "--full", "--user", getpass.getuser()])
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and self.client(["squeue", "-h"]).stdout.strip():
                time.sleep(0.5)
        stop_pid(pid_from(root / "slurmd.pid"))
        stop_pid(pid_from(root / "slurmctld.pid"))
        stop_pid(pid_from(root / "munge" / "pid"))
        for pid in pids_naming(root):  # Ray's processes (RAY_TMPDIR), slurmstepd, if any is left
            stop_pid(pid, timeout_s=5)


@pytest.fixture(scope="module")
def slurm():
    root = Path(tempfile.mkdtemp(prefix="pbslurm-", dir="/tmp"))  # short: unix socket paths
    cluster = Slurm(root)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


def submit(slurm: Slurm, job: Path, output: Path, cache: Path, name: str):
    """sbatch --wait the script with this test's fitting options; (exit code, job log)."""
    ray_port, dashboard_port, *more = free_ports(2 + len(HEAD_PORT_FLAGS))
    head_args = " ".join(f"{flag} {port}" for flag, port in zip(HEAD_PORT_FLAGS, more))
    env = {
        **slurm.env,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{slurm.env.get('PATH', '')}",
        "PUSA_BATCH_CACHE": str(cache),
        "RAY_PORT": str(ray_port),
        "RAY_DASHBOARD_PORT": str(dashboard_port),
        "RAY_HEAD_ARGS": head_args,
        "RAY_TMPDIR": str(slurm.root / "rt"),
        "PUSA_SHARED_DIR": str(slurm.root / "shared"),
        "RAY_WAIT_S": "120",
    }
    log = job / f"{name}.log"
    argv = ["sbatch", "--wait", "--parsable", *FIT, f"--output={log}", f"--chdir={job}"]
    argv += [str(SCRIPT), "manifest.csv", "-o", str(output), "--pipeline", str(TINY)]
    argv += ["--workers", "1"]
    try:
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=420)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the Slurm job ran over 420 s:\n{tail(log, 60)}")
    return done.returncode, (log.read_text() if log.exists() else done.stderr)


def each_once(folder: Path, suffix: str) -> list[str]:
    names = sorted(p.name for p in folder.iterdir())
    assert all(name.endswith(suffix) for name in names), names
    return [name.removesuffix(suffix) for name in names]


def status(output: Path, manifest: Path) -> dict:
    shown = subprocess.run(
        [sys.executable, "-m", "pusa_batch", "status", str(output), "--manifest", str(manifest)]
        + ["--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shown.returncode == 0, shown.stdout + shown.stderr
    return json.loads(shown.stdout)


def test_the_sbatch_script_is_valid_bash():
    checked = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    if shutil.which("shellcheck"):
        linted = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True)
        assert linted.returncode == 0, linted.stdout
    assert os.access(SCRIPT, os.X_OK), "the script should be executable"
    lines = SCRIPT.read_text().splitlines()
    first_command = next(i for i, line in enumerate(lines) if line and not line.startswith("#"))
    directives = [i for i, line in enumerate(lines) if line.startswith("#SBATCH")]
    assert directives and max(directives) < first_command, "sbatch stops reading at a command"


@pytest.mark.slow
@needs_slurm
def test_the_sbatch_recipe_runs_and_a_resubmission_resumes(slurm, cache):
    job = slurm.root / "job"
    job.mkdir()
    manifest = job / "manifest.csv"
    manifest.write_text("\n".join([HEADER, *ROWS]) + "\n")
    output = slurm.root / "out"  # the "shared filesystem" of a one-node cluster

    code, log = submit(slurm, job, output, cache, "first")
    assert code == 0, log
    assert "Ray ready: 1 node(s)" in log, log
    assert "2 items: 2 generated, 0 already done, 0 failed" in log, log
    assert each_once(output / "videos", ".mp4") == IDS
    assert each_once(output / "items", ".json") == IDS
    report = status(output, manifest)
    assert report["state"] == "finished", report
    assert report["counts"]["done"] == 2 and report["counts"]["pending"] == 0, report
    assert list((slurm.root / "shared").iterdir()) == [], "the job's Ray token was not removed"

    code, log = submit(slurm, job, output, cache, "again")  # the resume recipe: the same line
    assert code == 0, log
    assert "2 items: 0 generated, 2 already done, 0 failed" in log, log
    assert each_once(output / "videos", ".mp4") == IDS
    assert each_once(output / "items", ".json") == IDS
    report = status(output, manifest)
    assert report["state"] == "finished" and report["counts"]["pending"] == 0, report
