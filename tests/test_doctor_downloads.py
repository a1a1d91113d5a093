"""Download commands: the pipeline file names them (`[weights.download]`, a `[[lora]]`'s
`download`), `doctor` prints one missing file per line and then the command that fetches it, and
every command the repository ships is a real `hf download` call that puts the files where the
spec reads them."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from pusa_batch.cli import main as cli
from pusa_batch.doctor.checks import NO_DOWNLOAD_HINT
from pusa_batch.doctor.preflight import diagnose, preflight
from pusa_batch.errors import PipelineError
from pusa_batch.pipelines.spec import FAMILY_COMPONENTS, load_pipeline_spec

REPO = Path(__file__).resolve().parents[1]
PIPELINES = REPO / "pipelines"
SHIPPED = sorted(p for p in PIPELINES.glob("*.toml") if not p.name.startswith("tiny"))
WAN_ROOT = "hf download Wan-AI/Wan2.1-T2V-14B-Diffusers --local-dir zoo/wan"
LORA = "hf download RaphaelLiu/PusaV1 pusa_v1.pt --local-dir zoo/lora"


def write(folder: Path, body: str, family: str = "wan2.1") -> Path:
    path = folder / "pipe.toml"
    path.write_text(f'family = "{family}"\n{body}\n')
    return path


def wan_spec(folder: Path, weights: str = 'root = "zoo/wan"', download: str = "", lora: str = ""):
    body = f"[weights]\n{weights}\n[weights.download]\n{download}\n{lora}"
    return load_pipeline_spec(write(folder, body))


def files_check(report):
    (found,) = [c for c in report.checks if c.name == "files"]
    return found


# ------------------------------------------------------------------------------ the spec


def test_root_command_fetches_every_component_read_from_root(tmp_path):
    spec = wan_spec(tmp_path, download=f'root = "{WAN_ROOT}"')
    for component in FAMILY_COMPONENTS["wan2.1"]:
        assert spec.download(component) == WAN_ROOT


def test_a_component_of_its_own_path_does_not_take_roots_command(tmp_path):
    weights = 'root = "zoo/wan"\nvae = "/elsewhere/vae"'
    spec = wan_spec(tmp_path, weights=weights, download=f'root = "{WAN_ROOT}"')
    assert spec.download("vae") is None
    assert spec.download("transformer") == WAN_ROOT


def test_a_components_own_command_wins_over_roots(tmp_path):
    own = "hf download someone/vae --local-dir zoo/wan/vae"
    spec = wan_spec(tmp_path, download=f'root = "{WAN_ROOT}"\nvae = "{own}"')
    assert spec.download("vae") == own and spec.download("tokenizer") == WAN_ROOT


def test_a_lora_names_its_own_command(tmp_path):
    lora = f'[[lora]]\npath = "zoo/lora/pusa_v1.pt"\nalpha = 1.4\ndownload = "{LORA}"'
    spec = wan_spec(tmp_path, lora=lora)
    assert spec.download("lora[0]") == LORA


def test_a_file_without_download_keys_loads_as_before(tmp_path):
    spec = load_pipeline_spec(write(tmp_path, '[weights]\nroot = "zoo/wan"'))
    assert spec.downloads == () and spec.download("transformer") is None


@pytest.mark.parametrize(
    ("download", "named"),
    [
        ('dit = "hf download x"', "weights.download.dit: unknown key"),
        ("root = 3", "weights.download.root: must be a shell command"),
        ('root = "  "', "weights.download.root: must be a shell command"),
    ],
)
def test_a_bad_download_key_fails_naming_it(tmp_path, download, named):
    with pytest.raises(PipelineError, match=named):
        wan_spec(tmp_path, download=download)


def test_a_tiny_twin_takes_no_download(tmp_path):
    body = f'[weights]\ntiny = "wan2.1"\n[weights.download]\nroot = "{WAN_ROOT}"'
    with pytest.raises(PipelineError, match="weights.download: a tiny twin is generated"):
        load_pipeline_spec(write(tmp_path, body))


# ------------------------------------------------------------------------------ the doctor


def test_doctor_lists_each_missing_file_then_the_command_that_fetches_it(tmp_path):
    lora = f'[[lora]]\npath = "zoo/lora/pusa_v1.pt"\nalpha = 1.4\ndownload = "{LORA}"'
    spec = wan_spec(tmp_path, download=f'root = "{WAN_ROOT}"', lora=lora)
    files = files_check(diagnose(spec))
    folder = shlex.quote(str(tmp_path))
    assert files.status == "fail"
    assert files.lines == (
        f"weights.transformer: {tmp_path / 'zoo/wan/transformer'} missing",
        f"weights.vae: {tmp_path / 'zoo/wan/vae'} missing",
        f"weights.text_encoder: {tmp_path / 'zoo/wan/text_encoder'} missing",
        f"weights.tokenizer: {tmp_path / 'zoo/wan/tokenizer'} missing",
        f"  fetch: (cd {folder} && {WAN_ROOT})",
        f"lora[0]: {tmp_path / 'zoo/lora/pusa_v1.pt'} not found",
        f"  fetch: (cd {folder} && {LORA})",
    )


def test_doctor_without_download_keys_lists_the_files_and_points_at_the_docs(tmp_path):
    spec = load_pipeline_spec(write(tmp_path, '[weights]\nroot = "zoo/wan"'))
    lines = files_check(diagnose(spec)).lines
    assert len(lines) == 5 and lines[-1] == NO_DOWNLOAD_HINT
    assert not any("fetch:" in line for line in lines)


def test_the_one_line_detail_names_every_file_and_command(tmp_path):
    spec = wan_spec(tmp_path, download=f'root = "{WAN_ROOT}"')
    files = files_check(diagnose(spec))
    assert "\n" not in files.detail
    assert all(line.strip() in files.detail for line in files.lines)
    with pytest.raises(PipelineError, match="fetch: .*hf download Wan-AI"):
        preflight(spec)  # `run` stops with the command in its one-line error


def test_cli_doctor_prints_one_missing_file_per_line_and_the_fetch_command(capsys):
    toml = PIPELINES / "pusa-v0.5-mochi.toml"
    assert cli.main(["doctor", "--pipeline", str(toml)]) == 2
    lines = capsys.readouterr().out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:2] == ["FAIL", "files:"])
    body = [line.strip() for line in lines[start + 1 : start + 8]]
    assert body[0].startswith("weights.dit: ") and body[0].endswith(
        "pusa_v0_dit.safetensors missing: download pusa_v0_dit.safetensors (RaphaelLiu/Pusa-V0.5)"
    )
    assert body[1] == (
        f"fetch: (cd {PIPELINES} && hf download RaphaelLiu/Pusa-V0.5 pusa_v0_dit.safetensors "
        "--local-dir ../model_zoo/Pusa-V0.5)"
    )
    # the VAE is genmo's two halves in the Pusa-V0.5 root itself (its original layout)
    assert body[2] == f"weights.vae: {PIPELINES.parent / 'model_zoo/Pusa-V0.5'} missing"
    assert body[3] == (
        f"fetch: (cd {PIPELINES} && hf download RaphaelLiu/Pusa-V0.5 --local-dir "
        "../model_zoo/Pusa-V0.5)"
    )
    names = [line.split(":")[0] for line in body[4:6]]
    assert names == ["weights.text_encoder", "weights.tokenizer"]
    assert body[6].startswith(f"fetch: (cd {PIPELINES} && hf download genmo/mochi-1-preview ")


# ------------------------------------------------------------------------------ real commands


def run_hf(command: str, monkeypatch) -> dict:
    """Parse `command` with the real `hf` CLI, the download itself replaced: the call it makes."""
    download = pytest.importorskip("huggingface_hub.cli.download")
    from huggingface_hub.cli.hf import app

    calls: list[dict] = []
    monkeypatch.setattr(download, "snapshot_download", lambda **kw: calls.append(kw) or "x")
    monkeypatch.setattr(download, "hf_hub_download", lambda **kw: calls.append(kw) or "x")
    argv = shlex.split(command)
    assert argv[:2] == ["hf", "download"], command
    app(argv[1:], standalone_mode=False)
    (call,) = calls
    return call


def shipped_parts(spec) -> list[tuple[str, Path, str]]:
    parts = [(c, p, spec.download(c)) for c, p in spec.weights.components().items()]
    parts += [(f"lora[{i}]", lo.path, lo.download) for i, lo in enumerate(spec.loras)]
    return parts


@pytest.mark.parametrize("toml", SHIPPED, ids=lambda p: p.stem)
def test_every_shipped_weight_has_a_download_command(toml):
    spec = load_pipeline_spec(toml)
    assert all(command for _, _, command in shipped_parts(spec))


@pytest.mark.parametrize("toml", SHIPPED, ids=lambda p: p.stem)
def test_shipped_commands_put_the_files_where_the_spec_reads_them(toml, monkeypatch, capsys):
    spec = load_pipeline_spec(toml)
    for part, path, command in shipped_parts(spec):
        call = run_hf(command, monkeypatch)
        local_dir = (spec.source.parent / call["local_dir"]).resolve()
        if "filename" in call:  # one file: local_dir/filename is the path read
            assert local_dir / call["filename"] == path, part
        else:  # a snapshot: the component is a folder of it, every file of it allowed
            relative = path.relative_to(local_dir)
            patterns = call["allow_patterns"]
            assert patterns is None or f"{relative.parts[0]}/*" in patterns, (part, patterns)
            assert call["ignore_patterns"] is None


def test_no_doc_or_message_names_the_removed_huggingface_cli():
    texts = [REPO / "README.md", *PIPELINES.iterdir(), *(REPO / "pusa_batch").rglob("*.py")]
    named = [str(p) for p in texts if p.is_file() and "huggingface-cli download" in p.read_text()]
    assert named == []
