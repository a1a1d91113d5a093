"""docs/deploy/rayjob.yaml and weights.yaml: valid YAML, what KubeRay requires, and an entrypoint
the real CLI accepts.

No Kubernetes here, and the KubeRay CRD's OpenAPI schema ships in no PyPI or npm package (it lives
in the KubeRay repository and its Helm chart), so the rules are checked explicitly, as the
ray.io/v1 RayJob CRD and KubeRay's admission checks of KubeRay 1.7 state them: the required fields
(headGroupSpec.template, workerGroupSpecs[*].groupName/minReplicas/maxReplicas/template, at least
one container, rayStartParams values as strings), the enums (submissionMode, authOptions.mode),
the name length, 0 <= minReplicas <= replicas <= maxReplicas, a TTL only with
shutdownAfterJobFinishes, token auth only with Ray >= 2.52. Ray's own reader of a RayCluster
spec (the KubeRay autoscaler's config, installed with ray) must also accept the cluster spec and
find the GPUs. The entrypoint's flags are checked against `pusa-batch run --help` and then parsed
by the real CLI in a --dry-run with local stand-ins for the bucket paths.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path, PurePosixPath

import pytest
import yaml

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "docs" / "deploy"
IMAGE_ROOT = PurePosixPath("/opt/pusa-batch")  # where the image holds this repository
SUBMISSION_MODES = {"K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"}
MAX_RAYJOB_NAME = 47  # KubeRay: a RayCluster name is at most 53 characters, a RayJob's 6 fewer
DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
QUANTITY = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)(([KMGTPE]i)|[numkMGTPE]|[eE][+-]?\d+)?$")


def load(name: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all((DEPLOY / name).read_text()) if doc is not None]


@pytest.fixture(scope="module")
def rayjob() -> dict:
    (doc,) = load("rayjob.yaml")
    return doc


@pytest.fixture(scope="module")
def weights() -> dict[str, dict]:
    return {doc["kind"]: doc for doc in load("weights.yaml")}


def cluster(rayjob: dict) -> dict:
    return rayjob["spec"]["rayClusterSpec"]


def groups(rayjob: dict) -> list[tuple[str, dict]]:
    spec = cluster(rayjob)
    return [("head", spec["headGroupSpec"])] + [
        (g["groupName"], g) for g in spec["workerGroupSpecs"]
    ]


def gpus(container: dict) -> int:
    return int(container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))


@functools.cache
def help_flags(*command: str) -> set[str]:
    """Every option name `pusa-batch COMMAND --help` lists (wide, so no name is cut)."""
    shown = subprocess.run(
        [sys.executable, "-m", "pusa_batch", *command, "--help"],
        env={**os.environ, "COLUMNS": "300", "NO_COLOR": "1"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    flags: set[str] = set()
    for line in shown.stdout.splitlines():
        for token in line.strip("│ \t*").replace(",", " ").split():
            if not token.startswith("-"):
                break  # an option row is its names, then its type and help
            flags.add(token)
    assert "--help" in flags, shown.stdout
    return flags


def run_argv(entrypoint: str) -> list[str]:
    argv = shlex.split(entrypoint)
    assert argv[:2] == ["pusa-batch", "run"], argv
    return argv[2:]


def option_value(argv: list[str], *names: str) -> str:
    for i, arg in enumerate(argv):
        if arg in names:
            return argv[i + 1]
        for name in names:
            if arg.startswith(f"{name}="):
                return arg.split("=", 1)[1]
    raise AssertionError(f"{names[0]} not in {argv}")


def test_the_files_are_yaml_of_the_right_kinds(rayjob, weights):
    assert rayjob["apiVersion"] == "ray.io/v1" and rayjob["kind"] == "RayJob"
    assert set(weights) == {"PersistentVolumeClaim", "Job"}
    assert weights["PersistentVolumeClaim"]["apiVersion"] == "v1"
    assert weights["Job"]["apiVersion"] == "batch/v1"


def test_the_rayjob_has_what_kuberay_requires(rayjob):
    name = rayjob["metadata"]["name"]
    assert DNS1035.match(name) and len(name) <= MAX_RAYJOB_NAME, name
    spec = rayjob["spec"]
    assert isinstance(spec["entrypoint"], str) and spec["entrypoint"].strip()
    assert spec["submissionMode"] in SUBMISSION_MODES
    assert spec["shutdownAfterJobFinishes"] is True
    ttl = spec["ttlSecondsAfterFinished"]
    assert isinstance(ttl, int) and ttl >= 0
    assert isinstance(spec.get("backoffLimit", 0), int) and spec.get("backoffLimit", 0) >= 0
    if spec.get("backoffLimit"):
        assert spec["submissionMode"] != "InteractiveMode"  # KubeRay refuses retries there

    ray_cluster = cluster(rayjob)
    assert ray_cluster["headGroupSpec"]["template"]["spec"]["containers"]
    assert ray_cluster["workerGroupSpecs"], "no worker group"
    version = tuple(int(part) for part in ray_cluster["rayVersion"].split("."))
    auth = ray_cluster.get("authOptions", {})
    assert auth.get("mode") == "token", "the cluster must use Ray's token auth"
    assert version >= (2, 52, 0), "token auth needs Ray >= 2.52"
    assert "enableK8sTokenAuth" not in auth, "KubeRay does not support it for RayJob"

    for group_name, group in groups(rayjob):
        params = group["rayStartParams"]
        assert isinstance(params, dict), group_name
        assert all(isinstance(v, str) for v in params.values()), f"{group_name}: not strings"
        containers = group["template"]["spec"]["containers"]
        assert containers and containers[0]["image"], group_name
        for kind in ("requests", "limits"):
            for key, value in containers[0]["resources"].get(kind, {}).items():
                assert QUANTITY.match(str(value)), f"{group_name} {kind}.{key}={value!r}"

    for group in ray_cluster["workerGroupSpecs"]:
        assert DNS1035.match(group["groupName"]), group["groupName"]
        low, count, high = group["minReplicas"], group["replicas"], group["maxReplicas"]
        assert all(isinstance(n, int) for n in (low, count, high))
        assert 0 <= low <= count <= high, (low, count, high)
        assert gpus(group["template"]["spec"]["containers"][0]) >= 1, "a GPU worker group"


def test_every_ray_pod_gets_the_s3_secret_and_no_inline_credentials(rayjob):
    for group_name, group in groups(rayjob):
        container = group["template"]["spec"]["containers"][0]
        refs = [e["secretRef"]["name"] for e in container.get("envFrom", []) if "secretRef" in e]
        assert refs == ["pusa-s3"], f"{group_name}: the workers commit to S3 themselves"
        inline = [e["name"] for e in container.get("env", []) if "value" in e]
        assert not [n for n in inline if n.startswith("AWS_")], inline
    assert "AWS_SECRET_ACCESS_KEY:" not in (DEPLOY / "rayjob.yaml").read_text()


def test_rays_own_kuberay_reader_accepts_the_cluster_and_finds_the_gpus(rayjob):
    try:
        from ray.autoscaler._private.kuberay.autoscaling_config import (
            _derive_autoscaling_config_from_ray_cr,
        )
    except ImportError as exc:  # a private module of Ray's: gone in some other release
        pytest.skip(f"Ray's KubeRay autoscaler config reader is not importable: {exc}")
    ray_cr = {
        "metadata": {"name": rayjob["metadata"]["name"], "namespace": "default"},
        "spec": cluster(rayjob),
    }
    config = _derive_autoscaling_config_from_ray_cr(ray_cr)  # also runs Ray's config schema
    node_types = config["available_node_types"]
    assert node_types["headgroup"]["resources"]["CPU"] == 0  # num-cpus "0": no actor there
    for group in cluster(rayjob)["workerGroupSpecs"]:
        wanted = gpus(group["template"]["spec"]["containers"][0])
        assert node_types[group["groupName"]]["resources"]["GPU"] == wanted
        assert node_types[group["groupName"]]["min_workers"] == group["minReplicas"]


def test_the_entrypoint_uses_only_real_run_flags(rayjob):
    argv = run_argv(rayjob["spec"]["entrypoint"])
    flags = help_flags("run")
    used = {arg.split("=", 1)[0] for arg in argv if arg.startswith("-")}
    assert used <= flags, f"not `pusa-batch run` options: {sorted(used - flags)}"
    assert option_value(argv, "--address") == "auto"  # the driver runs on the head
    assert "--storage-option" not in used, "credentials come from the Secret, not the entrypoint"
    total_gpus = sum(
        g["replicas"] * gpus(g["template"]["spec"]["containers"][0])
        for g in cluster(rayjob)["workerGroupSpecs"]
    )
    assert int(option_value(argv, "--workers")) == total_gpus, "one actor per GPU"


def test_the_real_cli_parses_the_entrypoint(rayjob, tmp_path):
    """`pusa-batch run ... --dry-run` with the bucket paths swapped for local ones."""
    argv = run_argv(rayjob["spec"]["entrypoint"])
    local = {
        argv[0]: str(REPO / "manifests" / "demo.csv"),
        option_value(argv, "-o", "--output"): str(tmp_path / "out"),
        option_value(argv, "-p", "--pipeline"): str(REPO / "pipelines" / "tiny.toml"),
    }
    swapped = [local.get(arg, arg) for arg in argv]
    shown = subprocess.run(
        [sys.executable, "-m", "pusa_batch", "run", *swapped, "--dry-run"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "Nothing was started or written." in shown.stdout
    assert not (tmp_path / "out").exists()


def test_the_weights_volume_holds_what_the_pipeline_reads(rayjob, weights):
    argv = run_argv(rayjob["spec"]["entrypoint"])
    pipeline = PurePosixPath(option_value(argv, "-p", "--pipeline"))
    assert pipeline.parent == IMAGE_ROOT / "pipelines"
    toml = tomllib.loads((REPO / "pipelines" / pipeline.name).read_text())

    claim = weights["PersistentVolumeClaim"]["metadata"]["name"]
    mounts = set()
    for group_name, group in groups(rayjob):
        pod = group["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        for mount in pod["containers"][0]["volumeMounts"]:
            source = volumes[mount["name"]].get("persistentVolumeClaim")
            if source:
                assert source["claimName"] == claim, group_name
                assert mount.get("readOnly") is True, group_name
                mounts.add(PurePosixPath(mount["mountPath"]))
    assert len(mounts) == 1, mounts  # head (the pre-run check) and workers alike
    (mount,) = mounts

    def on_volume(path: str) -> bool:
        resolved = PurePosixPath(os.path.normpath(pipeline.parent / path))
        return resolved.is_relative_to(mount)

    paths = [toml["weights"]["root"]] + [lora["path"] for lora in toml.get("lora", [])]
    assert all(on_volume(p) for p in paths), f"{paths} not under {mount}"

    job = weights["Job"]["spec"]["template"]["spec"]
    container = job["containers"][0]
    assert PurePosixPath(container["workingDir"]) == pipeline.parent  # where the TOML says to run
    job_mounts = {PurePosixPath(m["mountPath"]) for m in container["volumeMounts"]}
    assert mount in job_mounts
    assert {v["persistentVolumeClaim"]["claimName"] for v in job["volumes"]} == {claim}
    wanted = [toml["weights"]["download"]["root"]]
    wanted += [lora["download"] for lora in toml.get("lora", []) if "download" in lora]
    script = [line.strip() for line in container["args"][0].splitlines() if line.strip()]
    assert script == wanted, "the Job must run the pipeline file's own download commands"


OPERATORS = set("();<>|&")


def doc_commands(doc: Path) -> list[tuple[str, list[str]]]:
    """(`pusa-batch` command, its arguments) for each one in the doc's ```bash blocks and inline
    code; the arguments after `pusa-batch.sbatch` count as `run`'s."""
    text = doc.read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    inline = re.findall(r"(?<!`)`([^`\n]*pusa-batch[^`\n]*)`(?!`)", text)
    found = []
    for block in [*blocks, *inline]:
        for line in block.replace("\\\n", " ").splitlines():
            lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
            lexer.whitespace_split = True
            segment: list[str] = []
            for token in [*lexer, ";"]:
                if set(token) <= OPERATORS:
                    found += _pusa_command(segment)
                    segment = []
                else:
                    segment.append(token)
    return found


def _pusa_command(tokens: list[str]) -> list[tuple[str, list[str]]]:
    for i, token in enumerate(tokens):
        if token == "pusa-batch" and i + 1 < len(tokens):
            return [(tokens[i + 1], tokens[i + 2 :])]
        if token.endswith("pusa-batch.sbatch"):
            return [("run", tokens[i + 1 :])]
    return []


def test_the_deploy_docs_use_only_real_flags():
    commands = [c for doc in ("slurm.md", "kuberay.md") for c in doc_commands(DEPLOY / doc)]
    assert {"run", "status", "submit", "doctor"} <= {name for name, _ in commands}, commands
    known: dict[str, set[str]] = {}
    for name, args in commands:
        flags = known.setdefault(name, help_flags(name))
        used = {a.split("=", 1)[0] for a in args if a.startswith("-") and a != "-"}
        assert used <= flags, f"pusa-batch {name}: not its options: {sorted(used - flags)}"
