"""`diagnose(spec)` on the mochi family: the tiny Pusa V0.5 twin passes, broken copies of it fail
naming the cause, the real V0.5 pipeline without its downloads reports the missing files, and a
full-size 10B DiT is checked from its header alone."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from doctor_support import rewrite, statuses, write_sparse_safetensors
from safetensors.torch import load_file, save_file

from pusa_batch.cli import main as cli
from pusa_batch.doctor.preflight import diagnose, estimate_memory
from pusa_batch.models.mochi import CHECKPOINT_NAME, MochiConfig, PusaMochiTransformer
from pusa_batch.models.mochi_keys import genmo_to_diffusers
from pusa_batch.models.tiny import ensure_tiny_model
from pusa_batch.pipelines.spec import load_pipeline_spec

PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"
CHECK_NAMES = [
    "files",
    "keys: dit",
    "keys: vae",
    "keys: text_encoder",
    "dtype",
    "memory",
    "defaults",
]


@pytest.fixture(scope="module")
def tiny_root(cache) -> Path:
    """The tiny Mochi twin in the session's shared cache (the `cache` fixture)."""
    return ensure_tiny_model("mochi")


@pytest.fixture
def model(tiny_root, tmp_path) -> Path:
    """A private copy of the twin in the real layout (DiT file, vae/, text_encoder/, tokenizer/)."""
    return Path(shutil.copytree(tiny_root, tmp_path / "model"))


def write_spec(folder: Path, model: Path, weights: str = "") -> Path:
    path = folder / "pipe.toml"
    path.write_text(
        f'family = "mochi"\n[weights]\nroot = "{model}"\n{weights}\n'
        "[defaults]\nnum_frames = 19\nheight = 64\nwidth = 64\nsteps = 4\n"
    )
    return path


def run(folder: Path, model: Path, **kwargs):
    return diagnose(load_pipeline_spec(write_spec(folder, model, **kwargs)))


def check(report, name: str):
    (found,) = [c for c in report.checks if c.name == name]
    return found


# ------------------------------------------------------------------------------ passing


def test_tiny_mochi_twin_in_the_cache_passes_every_check(tiny_root):
    report = diagnose(load_pipeline_spec(PIPELINES / "tiny-mochi.toml"))
    assert [c.name for c in report.checks] == CHECK_NAMES
    assert set(statuses(report).values()) == {"ok"}, report.checks
    assert "2 layers, dim 192" in check(report, "keys: dit").detail
    assert "AutoencoderKLMochi" in check(report, "keys: vae").detail
    assert "T5EncoderModel" in check(report, "keys: text_encoder").detail


def test_tiny_mochi_twin_not_built_warns_and_is_not_generated(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    (cache / "tiny" / "mochi-v1" / "vae").mkdir(parents=True)  # a build cut short: no DiT file
    monkeypatch.setenv("PUSA_BATCH_CACHE", str(cache))
    report = diagnose(load_pipeline_spec(PIPELINES / "tiny-mochi.toml"))
    files = check(report, "files")
    assert files.status == "warn" and "generated on first use" in files.detail
    assert report.ok
    assert not (cache / "tiny" / "mochi-v1" / CHECKPOINT_NAME).exists()


def test_a_copy_in_the_release_layout_passes(model, tmp_path):
    report = run(tmp_path, model)
    assert set(statuses(report).values()) == {"ok"}, report.checks


def test_dit_given_as_its_folder_passes(model, tmp_path):
    report = run(tmp_path, model, weights=f'dit = "{model}"')
    assert check(report, "keys: dit").status == "ok", check(report, "keys: dit").detail


def test_dit_as_a_pt_file_passes_with_its_dtype(model, tmp_path):
    dit = model / "pusa_v0_dit.pt"
    torch.save({k: v.bfloat16() for k, v in load_file(model / CHECKPOINT_NAME).items()}, dit)
    report = run(tmp_path, model, weights=f'dit = "{dit}"')
    assert check(report, "keys: dit").status == "ok", check(report, "keys: dit").detail
    assert "dit bf16" in check(report, "dtype").detail


# ------------------------------------------------------------------------------ broken copies


def test_renamed_dit_key_fails_naming_both_names(model, tmp_path):
    old, new = "blocks.1.attn.proj_x.weight", "blocks.1.attn.out_x.weight"
    rewrite(model / CHECKPOINT_NAME, lambda sd: sd.__setitem__(new, sd.pop(old)))
    keys = check(run(tmp_path, model), "keys: dit")
    assert keys.status == "fail"
    assert f"missing: {old}" in keys.detail and f"unexpected: {new}" in keys.detail
    assert str(model / CHECKPOINT_NAME) in keys.detail


def test_dit_against_a_config_of_other_dims_fails_naming_the_config(model, tmp_path):
    config = model / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "depth": 3}))
    keys = check(run(tmp_path, model), "keys: dit")
    assert keys.status == "fail"
    assert "blocks.2." in keys.detail and str(config) in keys.detail


def test_dit_without_config_is_checked_against_the_10b_layout(model, tmp_path):
    (model / "config.json").unlink()  # a tiny DiT with no config.json: the loader assumes 10B
    keys = check(run(tmp_path, model), "keys: dit")
    assert keys.status == "fail" and "the 10B defaults" in keys.detail
    # Block 1 is the tiny file's last (no text-stream update), one of 48 in the 10B layout.
    assert "missing: blocks.1.attn.proj_y.bias" in keys.detail
    assert "x_embedder.proj.weight (192, 12, 2, 2) (expected (3072, 12, 2, 2))" in keys.detail


def test_dit_in_diffusers_layout_fails_with_the_conversion(model, tmp_path):
    file = model / CHECKPOINT_NAME
    save_file({k: v.contiguous() for k, v in genmo_to_diffusers(load_file(file)).items()}, file)
    keys = check(run(tmp_path, model), "keys: dit")
    assert keys.status == "fail" and "diffusers_to_genmo" in keys.detail


def test_missing_vae_folder_fails_naming_the_key(model, tmp_path):
    shutil.rmtree(model / "vae")
    report = run(tmp_path, model)
    files = check(report, "files")
    assert (
        files.status == "fail"
        and "weights.vae" in files.detail
        and str(model / "vae") in files.detail
    )
    assert check(report, "keys: vae").status == "warn"  # not checked, not a second failure
    assert not report.ok


def test_missing_dit_file_fails_naming_the_download(model, tmp_path):
    (model / CHECKPOINT_NAME).unlink()
    files = check(run(tmp_path, model), "files")
    assert files.status == "fail" and "weights.dit" in files.detail
    assert "RaphaelLiu/Pusa-V0.5" in files.detail


def test_renamed_text_encoder_key_fails(model, tmp_path):
    file = model / "text_encoder" / "model.safetensors"
    old = "encoder.final_layer_norm.weight"
    rewrite(file, lambda sd: sd.__setitem__("encoder.last_norm.weight", sd.pop(old)))
    keys = check(run(tmp_path, model), "keys: text_encoder")
    assert keys.status == "fail" and old in keys.detail


@pytest.mark.parametrize(
    ("change", "named"),
    [({"num_frames": 17}, "num_frames = 17 is not 6k+1"), ({"width": 72}, "width = 72")],
)
def test_bad_defaults_fail_naming_the_key(model, tmp_path, change, named):
    spec = load_pipeline_spec(write_spec(tmp_path, model))
    spec = dataclasses.replace(spec, defaults=dataclasses.replace(spec.defaults, **change))
    defaults = check(diagnose(spec, memory_budget=1 << 50), "defaults")
    assert defaults.status == "fail" and named in defaults.detail


# ------------------------------------------------------------------------------ memory


def test_memory_counts_dit_t5_and_vae_at_their_dtypes(model, tmp_path):
    spec = load_pipeline_spec(write_spec(tmp_path, model))
    parts = estimate_memory(spec)  # a CPU run: fp32
    dit = sum(v.numel() for v in load_file(model / CHECKPOINT_NAME).values())
    t5 = sum(v.numel() for v in load_file(model / "text_encoder" / "model.safetensors").values())
    assert parts["dit"] == 4 * dit
    assert parts["text_encoder"] == 4 * t5
    assert set(parts) == {"dit", "text_encoder", "vae", "activations"}


def test_activations_grow_with_mochi_tokens(model, tmp_path):
    spec = load_pipeline_spec(write_spec(tmp_path, model))
    bigger = dataclasses.replace(spec.defaults, num_frames=37, width=128)  # 7 vs 4 latent frames
    more = estimate_memory(dataclasses.replace(spec, defaults=bigger))["activations"]
    assert more == estimate_memory(spec)["activations"] * 7 * 2 // 4


# ------------------------------------------------------------------------------ the real V0.5


def test_real_v05_pipeline_without_downloads_reports_missing_files():
    report = diagnose(load_pipeline_spec(PIPELINES / "pusa-v0.5-mochi.toml"))
    assert [c.name for c in report.checks] == CHECK_NAMES
    files = check(report, "files")
    assert files.status == "fail"
    for part in ("weights.dit", "weights.vae", "weights.text_encoder", "weights.tokenizer"):
        assert part in files.detail
    assert [c.name for c in report.checks if c.status == "fail"] == ["files"]
    assert check(report, "defaults").detail == "163 frames 848x480, 30 steps, cfg 4.5"


def test_full_size_10b_dit_is_checked_from_its_header(model, tmp_path):
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in PusaMochiTransformer().state_dict().items()}
    release = tmp_path / "Pusa-V0.5"
    release.mkdir()
    write_sparse_safetensors(release / CHECKPOINT_NAME, shapes)  # no config.json, as released
    spec = load_pipeline_spec(write_spec(tmp_path, model, weights=f'dit = "{release}"'))
    report = diagnose(spec, memory_budget=1 << 50)
    keys = check(report, "keys: dit")
    assert keys.status == "ok" and "48 layers, dim 3072" in keys.detail, keys.detail
    params = sum(math.prod(s) for s in shapes.values())
    assert params > 10e9
    assert estimate_memory(spec)["dit"] == 4 * params  # a CPU run: fp32
    assert MochiConfig().depth == 48


# ------------------------------------------------------------------------------ CLI


def test_cli_doctor_exits_0_on_the_tiny_mochi_twin(tiny_root, capsys):
    assert cli.main(["doctor", "--pipeline", str(PIPELINES / "tiny-mochi.toml")]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "ok keys: dit: 51 tensors match" in out
    assert out.endswith("7 checks: 7 ok, 0 warnings, 0 failed")


def test_cli_doctor_exits_2_on_a_broken_copy(model, tmp_path, capsys):
    shutil.rmtree(model / "text_encoder")
    assert cli.main(["doctor", "--pipeline", str(write_spec(tmp_path, model))]) == 2
    out = " ".join(capsys.readouterr().out.split())
    assert "FAIL files: weights.text_encoder" in out and out.endswith("1 failed")


def test_cli_doctor_exits_2_on_the_real_v05_without_downloads(capsys):
    assert cli.main(["doctor", "--pipeline", str(PIPELINES / "pusa-v0.5-mochi.toml")]) == 2
    out = " ".join(capsys.readouterr().out.split())
    assert "FAIL files:" in out and "KeyError" not in out and out.endswith("1 failed")
