"""LoRA files in each key layout through `doctor` and a real pipeline load (`run` loads the same
way): what upstream merges is merged, what it skips is skipped and recorded, the rest refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from pusa_batch.doctor.preflight import diagnose
from pusa_batch.errors import CheckpointError
from pusa_batch.models.tiny import ensure_tiny_model
from pusa_batch.pipelines import load_pipeline
from pusa_batch.pipelines.spec import load_pipeline_spec

pytest_plugins = ["pipeline_support"]
WEIGHTS = "diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def root(cache) -> Path:
    return ensure_tiny_model("wan2.1")


@pytest.fixture(scope="module")
def shapes(root) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in load_file(root / "transformer" / WEIGHTS).items()}


def lightx2v(shapes, *, alpha: bool = True, diffs: bool = True) -> dict[str, torch.Tensor]:
    """Kijai/LightX2V layout: `diffusion_model.` prefix, Wan names, lora_down/up, .alpha, diffs."""
    sd = {}
    for i in range(2):
        out_f, in_f = shapes[f"blocks.{i}.attn2.to_v.weight"]
        module = f"diffusion_model.blocks.{i}.cross_attn.v"
        sd[f"{module}.lora_down.weight"] = torch.full((8, in_f), 0.01)
        sd[f"{module}.lora_up.weight"] = torch.full((out_f, 8), 0.01)
        if alpha:
            sd[f"{module}.alpha"] = torch.tensor(8.0)
        if diffs:
            sd[f"{module}.diff"] = torch.ones(out_f, in_f)
            sd[f"{module}.diff_b"] = torch.ones(out_f)
            sd[f"diffusion_model.blocks.{i}.diff_m"] = torch.ones(
                shapes[f"blocks.{i}.scale_shift_table"]
            )
    return sd


def spec_file(folder: Path, root: Path, lora: Path, kind: str) -> Path:
    path = folder / "pipe.toml"
    path.write_text(
        f'family = "wan2.1"\n[weights]\nroot = "{root}"\n'
        f'[[lora]]\npath = "{lora}"\nalpha = 1.0\nkind = "{kind}"\n'
        "[defaults]\nnum_frames = 17\nheight = 64\nwidth = 64\nsteps = 4\nguidance_scale = 1.0\n"
        "[options]\ntext_max_length = 32\n"
    )
    return path


def lora_check(spec_path: Path):
    (found,) = [
        c for c in diagnose(load_pipeline_spec(spec_path)).checks if c.name.startswith("lora[0]")
    ]
    return found


def test_doctor_says_what_is_merged_and_what_upstream_skips(root, shapes, tmp_path):
    save_file(lightx2v(shapes), tmp_path / "x.safetensors")
    found = lora_check(spec_file(tmp_path, root, tmp_path / "x.safetensors", "lightx2v"))
    assert found.status == "ok", found.detail
    assert "fit 2 weights of transformer" in found.detail
    assert "2 with the file's .alpha, alpha 1 unused" in found.detail
    assert "ignored as upstream does: 2 .diff, 2 .diff_b, 2 .diff_m" in found.detail


def test_doctor_and_load_refuse_keys_that_cannot_be_placed_naming_them(root, shapes, tmp_path):
    sd = lightx2v(shapes)
    sd["diffusion_model.blocks.0.diff_m"] = torch.ones(3, 3)  # not the block's modulation
    sd["diffusion_model.blocks.1.cross_attn.v.lora_mid.weight"] = torch.ones(8, 8)
    save_file(sd, tmp_path / "x.safetensors")
    spec = spec_file(tmp_path, root, tmp_path / "x.safetensors", "lightx2v")
    found = lora_check(spec)
    assert found.status == "fail"
    assert "diffusion_model.blocks.0.diff_m" in found.detail
    assert "diffusion_model.blocks.1.cross_attn.v.lora_mid.weight (not a LoRA key)" in found.detail
    with pytest.raises(CheckpointError, match="cannot be placed") as info:
        load_pipeline(load_pipeline_spec(spec), device="cpu")
    assert "diffusion_model.blocks.0.diff_m" in str(info.value)


def test_a_loaded_pipeline_records_each_merge_in_its_description(root, shapes, tmp_path):
    save_file(lightx2v(shapes, alpha=False), tmp_path / "x.safetensors")
    spec = load_pipeline_spec(spec_file(tmp_path, root, tmp_path / "x.safetensors", "lightx2v"))
    described = load_pipeline(spec, device="cpu").describe()
    (merge,) = described["lora_merges"]["transformer"]
    assert merge["lora"] == described["loras"]["transformer"][0]
    assert (merge["kind"], merge["merged"], merge["ranks"]) == ("lightx2v", 2, [8])
    assert (merge["alpha_from_file"], merge["alpha_from_strength"]) == (0, 2)
    assert merge["ignored"] == {"diff": 2, "diff_b": 2, "diff_m": 2}


def test_a_lightx2v_file_without_alpha_merges_at_strength_over_rank(root, shapes, tmp_path):
    sd = lightx2v(shapes, alpha=False, diffs=False)
    save_file(sd, tmp_path / "x.safetensors")
    spec = load_pipeline_spec(spec_file(tmp_path, root, tmp_path / "x.safetensors", "lightx2v"))
    pipe = load_pipeline(spec, device="cpu")
    base = load_file(root / "transformer" / WEIGHTS)["blocks.0.attn2.to_v.weight"]
    got = pipe.experts["transformer"].blocks[0].attn2.to_v.weight.detach().float()
    down = sd["diffusion_model.blocks.0.cross_attn.v.lora_down.weight"]
    up = sd["diffusion_model.blocks.0.cross_attn.v.lora_up.weight"]
    assert torch.allclose(got, base.float() + (1.0 / 8) * (up @ down), atol=1e-5)
