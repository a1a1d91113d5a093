"""Doctor on the real Wan2.1-T2V-14B layout: sparse shards (headers real, data holes), seconds."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from doctor_support import write_sparse_safetensors

from pusa_batch.doctor.preflight import diagnose, estimate_memory
from pusa_batch.models.tiny import ensure_tiny_model
from pusa_batch.models.wan import PusaWanTransformer, WanConfig
from pusa_batch.models.wan_keys import diffusers_name_to_wan
from pusa_batch.pipelines.spec import load_pipeline_spec

SHARDS = 6


@pytest.fixture(scope="module")
def full_size(tmp_path_factory) -> tuple[Path, dict[str, tuple[int, ...]]]:
    """A diffusers `transformer/` folder of the 14B model: config, 6 sparse shards, an index."""
    folder = tmp_path_factory.mktemp("wan14b") / "transformer"
    folder.mkdir()
    config = WanConfig()  # the 14B defaults
    (folder / "config.json").write_text(json.dumps(config.to_dict()))
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in PusaWanTransformer(config).state_dict().items()}
    keys, weight_map = sorted(shapes), {}
    for i in range(SHARDS):
        name = f"diffusion_pytorch_model-{i + 1:05d}-of-{SHARDS:05d}.safetensors"
        part = keys[i::SHARDS]
        write_sparse_safetensors(folder / name, {k: shapes[k] for k in part})
        weight_map |= {k: name for k in part}
    index = {"metadata": {}, "weight_map": weight_map}
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    return folder, shapes


@pytest.fixture(scope="module")
def tiny_parts(cache) -> Path:
    return ensure_tiny_model("wan2.1")


def pusa_lora_shapes(shapes: dict[str, tuple[int, ...]], rank: int) -> dict:
    """Rank-`rank` PEFT LoRA over q/k/v/o and the FFN of all 40 blocks, in Wan names."""
    out = {}
    for key, (out_f, in_f) in ((k, s) for k, s in shapes.items() if len(s) == 2):
        wan = diffusers_name_to_wan(key.removesuffix(".weight"))
        if wan and wan.split(".", 2)[-1] in ("self_attn.q", "cross_attn.o", "ffn.0", "ffn.2"):
            out[f"diffusion_model.{wan}.lora_A.default.weight"] = (rank, in_f)
            out[f"diffusion_model.{wan}.lora_B.default.weight"] = (out_f, rank)
    return out


def write_spec(folder: Path, transformer: Path, tiny: Path, lora: Path) -> Path:
    path = folder / "pusa-14b.toml"
    parts = "\n".join(f'{c} = "{tiny / c}"' for c in ("vae", "text_encoder", "tokenizer"))
    path.write_text(
        f'family = "wan2.1"\n[weights]\ntransformer = "{transformer}"\n{parts}\n'
        f'[[lora]]\npath = "{lora}"\nalpha = 1.4\n'
    )  # defaults: 81 frames at 1280x720, as the real pipeline
    return path


def test_full_size_checkpoint_is_checked_in_seconds_without_reading_data(
    full_size, tiny_parts, tmp_path
):
    folder, shapes = full_size
    lora = tmp_path / "pusa_v1.safetensors"
    write_sparse_safetensors(lora, pusa_lora_shapes(shapes, rank=512))
    spec = load_pipeline_spec(write_spec(tmp_path, folder, tiny_parts, lora))
    report = diagnose(spec, memory_budget=1 << 50)
    status = {c.name: (c.status, c.detail) for c in report.checks}
    assert report.ok, status
    assert status["keys: transformer"][0] == "ok" and "40 layers" in status["keys: transformer"][1]
    assert "160 weights of transformer" in status["lora[0] pusa_v1.safetensors"][1]


def test_full_size_memory_estimate_counts_every_parameter(full_size, tiny_parts, tmp_path):
    folder, shapes = full_size
    lora = tmp_path / "lora.safetensors"
    write_sparse_safetensors(lora, pusa_lora_shapes(shapes, rank=4))
    spec = load_pipeline_spec(write_spec(tmp_path, folder, tiny_parts, lora))
    parts = estimate_memory(spec)  # a CPU run: fp32
    params = sum(math.prod(s) for s in shapes.values())
    assert params > 14e9
    assert parts["transformer"] == 4 * params
    assert parts["activations"] > 0


def test_full_size_missing_shard_fails_naming_it(full_size, tiny_parts, tmp_path):
    folder, shapes = full_size
    name = f"diffusion_pytorch_model-00004-of-{SHARDS:05d}.safetensors"
    broken = tmp_path / "transformer"
    broken.mkdir()
    for file in folder.iterdir():  # links: a copy would write the sparse holes out
        if file.name != name:
            (broken / file.name).symlink_to(file)
    lora = tmp_path / "lora.safetensors"
    write_sparse_safetensors(lora, pusa_lora_shapes(shapes, rank=4))
    report = diagnose(load_pipeline_spec(write_spec(tmp_path, broken, tiny_parts, lora)))
    files = next(c for c in report.checks if c.name == "files")
    assert files.status == "fail" and name in files.detail
