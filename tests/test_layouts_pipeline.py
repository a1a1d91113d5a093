"""One `[weights] root`, either layout: the tiny twins written by `make-tiny-model --layout
original|diffusers` from one seed make the same videos through the real pipeline, and `doctor`
checks both from headers only."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from pipeline_support import make_item

from pusa_batch.cli import main as cli
from pusa_batch.doctor.preflight import diagnose
from pusa_batch.errors import PipelineError
from pusa_batch.models.layouts import WAN_T5_FILE, WAN_VAE_FILE
from pusa_batch.models.loading import read_state_dict
from pusa_batch.models.tiny import make_tiny_model
from pusa_batch.pipelines import load_pipeline
from pusa_batch.pipelines.spec import load_pipeline_spec

WAN_DEFAULTS = "[defaults]\nnum_frames = 9\nheight = 32\nwidth = 32\nsteps = 3\nseed = 0\n"
MOCHI_DEFAULTS = "[defaults]\nnum_frames = 13\nheight = 32\nwidth = 32\nsteps = 3\n"


@pytest.fixture(scope="module")
def twins(tmp_path_factory) -> dict[tuple[str, str], Path]:
    """Every kind in both layouts, from the same (non-default) seed."""
    base = tmp_path_factory.mktemp("layouts")
    return {
        (kind, layout): make_tiny_model(kind, base / f"{kind}-{layout}", layout=layout, seed=7)
        for kind in ("wan2.1", "wan2.2", "mochi")
        for layout in ("diffusers", "original")
    }


def write_spec(folder: Path, family: str, weights: str, name: str = "p.toml") -> Path:
    defaults = MOCHI_DEFAULTS if family == "mochi" else WAN_DEFAULTS
    options = "" if family == "mochi" else "[options]\ntext_max_length = 32\n"
    path = folder / name
    path.write_text(f'family = "{family}"\n[weights]\n{weights}\n{defaults}{options}')
    return path


def spec_for(twins, kind: str, layout: str, folder: Path):
    return load_pipeline_spec(
        write_spec(folder, kind, f'root = "{twins[kind, layout]}"', f"{kind}-{layout}.toml")
    )


def files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_the_original_layouts_hold_the_files_the_pusa_readme_downloads(twins):
    shards = [f"diffusion_pytorch_model-0000{i}-of-00002.safetensors" for i in (1, 2)]
    dit = ["config.json", *shards, "diffusion_pytorch_model.safetensors.index.json"]
    text = ["google/umt5-xxl/tokenizer.json", "google/umt5-xxl/tokenizer_config.json"]
    assert files(twins["wan2.1", "original"]) == sorted([WAN_VAE_FILE, WAN_T5_FILE, *dit, *text])
    experts = [f"{e}/{f}" for e in ("high_noise_model", "low_noise_model") for f in dit]
    assert files(twins["wan2.2", "original"]) == sorted(
        [WAN_VAE_FILE, WAN_T5_FILE, *experts, *text]
    )
    mochi = files(twins["mochi", "original"])
    assert [f for f in mochi if "/" not in f] == [
        "config.json",
        "decoder.safetensors",
        "encoder.safetensors",
        "pusa_v0_dit.safetensors",
    ]


def test_the_original_dit_and_vae_carry_the_original_key_names(twins):
    root = twins["wan2.1", "original"]
    dit = read_state_dict(root)
    assert "blocks.0.self_attn.q.weight" in dit and "head.modulation" in dit
    vae = read_state_dict(root / WAN_VAE_FILE)
    assert "decoder.upsamples.0.residual.0.gamma" in vae and "conv1.weight" in vae
    t5 = read_state_dict(root / WAN_T5_FILE)
    assert "blocks.1.ffn.gate.0.weight" in t5 and "token_embedding.weight" in t5


@pytest.mark.parametrize(("kind", "task"), [("wan2.1", "i2v"), ("wan2.2", "t2v"), ("mochi", "i2v")])
def test_both_layouts_make_the_same_video(twins, tmp_path, image, kind, task):
    frames = {}
    for layout in ("diffusers", "original"):
        pipe = load_pipeline(spec_for(twins, kind, layout, tmp_path), "cpu")
        item = make_item(pipe.spec, task=task, image=image if task == "i2v" else None)
        frames[layout] = pipe.generate(item)
    assert frames["original"].shape == frames["diffusers"].shape
    assert np.array_equal(frames["original"], frames["diffusers"])


def test_another_seed_gives_other_weights(twins, tmp_path):
    other = make_tiny_model("wan2.1", tmp_path / "other", layout="original", seed=8)
    ours = read_state_dict(twins["wan2.1", "original"] / WAN_VAE_FILE)
    theirs = read_state_dict(other / WAN_VAE_FILE)
    assert not torch.equal(ours["encoder.conv1.weight"], theirs["encoder.conv1.weight"])


def test_a_comfyui_single_file_dit_makes_the_same_video(twins, tmp_path):
    """The DiT as one file, every key under `model.diffusion_model.`, beside the original root's
    VAE and umT5 (a `config.json` beside it gives the tiny dims; the real ones read off shapes)."""
    root = twins["wan2.1", "original"]
    single = tmp_path / "comfy" / "wan_t2v_tiny.safetensors"
    single.parent.mkdir()
    state = {f"model.diffusion_model.{k}": v for k, v in read_state_dict(root).items()}
    safetensors.torch.save_file(state, str(single))
    (single.parent / "config.json").write_bytes((root / "config.json").read_bytes())
    weights = f'root = "{root}"\ntransformer = "{single}"'
    comfy = load_pipeline(load_pipeline_spec(write_spec(tmp_path, "wan2.1", weights)), "cpu")
    plain = load_pipeline(spec_for(twins, "wan2.1", "diffusers", tmp_path), "cpu")
    item = make_item(plain.spec)
    assert np.array_equal(comfy.generate(item), plain.generate(item))
    report = diagnose(comfy.spec)
    assert [c.status for c in report.checks if c.name == "keys: transformer"] == ["ok"]


@pytest.mark.parametrize("kind", ["wan2.1", "wan2.2", "mochi"])
def test_doctor_checks_the_original_layout_from_headers_only(twins, tmp_path, kind, monkeypatch):
    spec = spec_for(twins, kind, "original", tmp_path)
    real_load = torch.load

    def header_only_load(*args, **kwargs):
        assert kwargs.get("mmap") is True and kwargs.get("weights_only") is True
        return real_load(*args, **kwargs)

    def no_tensor_data(*args, **kwargs):
        raise AssertionError("doctor read tensor data")

    monkeypatch.setattr(torch, "load", header_only_load)
    monkeypatch.setattr(safetensors.torch, "load_file", no_tensor_data)
    monkeypatch.setattr("pusa_batch.models.loading.load_file", no_tensor_data)
    report = diagnose(spec)
    statuses = {c.name: c.status for c in report.checks}
    assert all(s != "fail" for s in statuses.values()), report.checks
    keys = [n for n in statuses if n.startswith("keys: ")]
    assert len(keys) == len(spec.experts) + 2 and all(statuses[n] == "ok" for n in keys)


def test_doctor_names_a_key_the_original_vae_lacks(twins, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(twins["wan2.1", "original"], root)
    state = torch.load(root / WAN_VAE_FILE, weights_only=True)
    del state["decoder.head.2.bias"]
    torch.save(state, root / WAN_VAE_FILE)
    spec = load_pipeline_spec(write_spec(tmp_path, "wan2.1", f'root = "{root}"'))
    (vae,) = [c for c in diagnose(spec).checks if c.name == "keys: vae"]
    assert vae.status == "fail" and "decoder.conv_out.bias" in vae.detail
    with pytest.raises(PipelineError, match="decoder.conv_out.bias"):
        load_pipeline(spec, "cpu")


def test_the_cli_writes_either_layout_with_a_seed(tmp_path, capsys):
    out = tmp_path / "o"
    args = ["make-tiny-model", str(out), "--kind", "mochi", "--layout", "original", "--seed", "7"]
    assert cli.main(args) == 0
    assert "original layout" in capsys.readouterr().out
    assert (out / "encoder.safetensors").is_file() and not (out / "vae").exists()
    assert cli.main(["make-tiny-model", str(tmp_path / "x"), "--layout", "comfy"]) == 2
