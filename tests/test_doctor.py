"""`diagnose(spec)`: the tiny twins pass; broken copies of them fail, naming the file or key."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from doctor_support import rewrite, statuses
from model_support import diffusers_to_wan
from safetensors.torch import load_file, save_file

from pusa_batch.cli import main as cli
from pusa_batch.doctor.preflight import diagnose, estimate_memory
from pusa_batch.models.tiny import ensure_tiny_model
from pusa_batch.pipelines.spec import load_pipeline_spec

PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"
WEIGHTS = "diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def tiny_root(cache) -> Path:
    """The tiny Wan2.1 twin in the session's shared cache (the `cache` fixture)."""
    return ensure_tiny_model("wan2.1")


@pytest.fixture
def model(tiny_root, tmp_path) -> Path:
    """A private copy of the tiny twin in diffusers layout, free to break."""
    return Path(shutil.copytree(tiny_root, tmp_path / "model"))


def write_spec(folder: Path, model: Path, loras: str = "", options: str = "") -> Path:
    path = folder / "pipe.toml"
    path.write_text(
        f'family = "wan2.1"\n[weights]\nroot = "{model}"\n{loras}\n'
        "[defaults]\nnum_frames = 17\nheight = 64\nwidth = 64\nsteps = 4\n"
        f"[options]\ntext_max_length = 32\n{options}\n"
    )
    return path


def run(folder: Path, model: Path, **kwargs):
    return diagnose(load_pipeline_spec(write_spec(folder, model, **kwargs)))


def check(report, name: str):
    (found,) = [c for c in report.checks if c.name.startswith(name)]
    return found


def split_in_two(folder: Path) -> list[str]:
    """Split `folder`'s single safetensors file into 2 shards with an index, as HF does."""
    sd = load_file(folder / WEIGHTS)
    (folder / WEIGHTS).unlink()
    keys = sorted(sd)
    names = [f"diffusion_pytorch_model-0000{i}-of-00002.safetensors" for i in (1, 2)]
    weight_map = {}
    for name, part in zip(names, (keys[: len(keys) // 2], keys[len(keys) // 2 :]), strict=True):
        save_file({k: sd[k] for k in part}, folder / name)
        weight_map |= {k: name for k in part}
    index = {"metadata": {}, "weight_map": weight_map}
    (folder / f"{WEIGHTS}.index.json").write_text(json.dumps(index))
    return names


def pusa_lora(shapes: dict[str, torch.Size], prefix: str = "diffusion_model.") -> dict:
    """A Wan-named PEFT LoRA (rank 4) over every block's self-attention q and FFN linears."""
    wan = {"attn1.to_q": "self_attn.q", "ffn.net.0.proj": "ffn.0", "ffn.net.2": "ffn.2"}
    sd = {}
    for i in range(2):
        for ours, theirs in wan.items():
            out_f, in_f = shapes[f"blocks.{i}.{ours}.weight"]
            sd[f"{prefix}blocks.{i}.{theirs}.lora_A.default.weight"] = torch.zeros(4, in_f)
            sd[f"{prefix}blocks.{i}.{theirs}.lora_B.default.weight"] = torch.zeros(out_f, 4)
    return sd


def base_shapes(model: Path) -> dict[str, torch.Size]:
    return {k: v.shape for k, v in load_file(model / "transformer" / WEIGHTS).items()}


# ------------------------------------------------------------------------------ tiny twins


def test_tiny_twin_in_the_cache_passes_every_check(tiny_root):
    report = diagnose(load_pipeline_spec(PIPELINES / "tiny.toml"))
    assert set(statuses(report).values()) == {"ok"}, report.checks
    assert report.ok
    assert (
        report.summary()
        == f"{len(report.checks)} checks: {len(report.checks)} ok, 0 warnings, 0 failed"
    )
    names = [c.name for c in report.checks]
    assert names == [
        "files",
        "keys: transformer",
        "keys: vae",
        "keys: text_encoder",
        "dtype",
        "memory",
        "defaults",
    ]


def test_tiny_twin_not_built_warns_and_is_not_generated(tmp_path, monkeypatch):
    monkeypatch.setenv("PUSA_BATCH_CACHE", str(tmp_path / "cache"))
    report = diagnose(load_pipeline_spec(PIPELINES / "tiny-wan22.toml"))
    files = check(report, "files")
    assert files.status == "warn" and "generated on first use" in files.detail
    assert report.ok
    assert report.summary().endswith("1 warning, 0 failed")
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*"))


def test_a_copy_in_diffusers_layout_passes(model, tmp_path):
    report = run(tmp_path, model)
    assert set(statuses(report).values()) == {"ok"}, report.checks


# ------------------------------------------------------------------------------ files, keys


def test_sharded_transformer_with_index_passes(model, tmp_path):
    split_in_two(model / "transformer")
    report = run(tmp_path, model)
    assert check(report, "files").status == "ok"
    assert check(report, "keys: transformer").status == "ok"


def test_missing_shard_fails_naming_it(model, tmp_path):
    names = split_in_two(model / "transformer")
    (model / "transformer" / names[1]).unlink()
    report = run(tmp_path, model)
    files = check(report, "files")
    assert files.status == "fail"
    assert names[1] in files.detail and "weights.transformer" in files.detail
    assert check(report, "keys: transformer").status == "warn"  # not checked, not a 2nd fail
    assert not report.ok


def test_missing_component_folder_fails_naming_the_key(model, tmp_path):
    shutil.rmtree(model / "vae")
    files = check(run(tmp_path, model), "files")
    assert files.status == "fail" and "weights.vae" in files.detail


def test_renamed_key_fails_naming_both_names(model, tmp_path):
    old, new = "blocks.1.attn1.to_q.weight", "blocks.1.attn1.query.weight"
    rewrite(model / "transformer" / WEIGHTS, lambda sd: sd.__setitem__(new, sd.pop(old)))
    keys = check(run(tmp_path, model), "keys: transformer")
    assert keys.status == "fail"
    assert f"missing key(s): {old}" in keys.detail
    assert f"unexpected key(s): {new}" in keys.detail


def test_mis_shaped_key_fails_naming_key_and_shapes(model, tmp_path):
    key = "proj_out.weight"
    rewrite(model / "transformer" / WEIGHTS, lambda sd: sd.__setitem__(key, torch.zeros(64, 32)))
    keys = check(run(tmp_path, model), "keys: transformer")
    assert keys.status == "fail"
    assert f"{key} (64, 32) (model wants (64, 64))" in keys.detail


def test_renamed_vae_key_fails(model, tmp_path):
    file = model / "vae" / WEIGHTS
    old = sorted(load_file(file))[0]
    rewrite(file, lambda sd: sd.__setitem__(old + "_renamed", sd.pop(old)))
    keys = check(run(tmp_path, model), "keys: vae")
    assert keys.status == "fail" and old in keys.detail


def test_truncated_file_fails(model, tmp_path):
    file = model / "transformer" / WEIGHTS
    data = file.read_bytes()
    file.write_bytes(data[:-100])
    keys = check(run(tmp_path, model), "keys: transformer")
    assert keys.status == "fail" and "truncated" in keys.detail and str(file) in keys.detail


def test_original_wan_layout_passes(model, tmp_path):
    folder = model / "transformer"
    wan = diffusers_to_wan(load_file(folder / WEIGHTS))
    (folder / WEIGHTS).unlink()
    save_file({f"model.diffusion_model.{k}": v for k, v in wan.items()}, folder / WEIGHTS)
    config = {
        "model_type": "t2v",
        "dim": 64,
        "num_heads": 4,
        "num_layers": 2,
        "ffn_dim": 128,
        "text_dim": 32,
        "freq_dim": 256,
        "in_dim": 16,
        "out_dim": 16,
    }
    (folder / "config.json").write_text(json.dumps(config))
    keys = check(run(tmp_path, model), "keys: transformer")
    assert keys.status == "ok", keys.detail


# ------------------------------------------------------------------------------ LoRAs


def lora_entry(path: Path, kind: str = "pusa") -> str:
    return f'[[lora]]\npath = "{path}"\nalpha = 1.4\nkind = "{kind}"\n'


def test_lora_for_this_base_passes_in_safetensors_and_pt(model, tmp_path):
    lora = pusa_lora(base_shapes(model))
    save_file(lora, tmp_path / "lora.safetensors")
    torch.save(lora, tmp_path / "lora.pt")
    entries = lora_entry(tmp_path / "lora.safetensors") + lora_entry(tmp_path / "lora.pt")
    report = run(tmp_path, model, loras=entries)
    for name in ("lora[0] lora.safetensors", "lora[1] lora.pt"):
        assert check(report, name).status == "ok", check(report, name).detail
        assert "6 weights of transformer" in check(report, name).detail


def test_lora_with_wrong_shapes_fails_naming_the_module(model, tmp_path):
    shapes = dict(base_shapes(model))
    shapes["blocks.0.attn1.to_q.weight"] = torch.Size((5120, 5120))  # a 14B LoRA's layer
    save_file(pusa_lora(shapes), tmp_path / "lora.safetensors")
    lora = check(run(tmp_path, model, loras=lora_entry(tmp_path / "lora.safetensors")), "lora[0]")
    assert lora.status == "fail"
    assert "blocks.0.self_attn.q: delta (5120, 5120) vs weight (64, 64)" in lora.detail


def test_lora_with_renamed_keys_fails_naming_them(model, tmp_path):
    lora = pusa_lora(base_shapes(model), prefix="")
    for part in "AB":
        lora[f"blocks.0.attn.q.lora_{part}.default.weight"] = lora.pop(
            f"blocks.0.self_attn.q.lora_{part}.default.weight"
        )
    save_file(lora, tmp_path / "lora.safetensors")
    found = check(run(tmp_path, model, loras=lora_entry(tmp_path / "lora.safetensors")), "lora[0]")
    assert found.status == "fail"
    assert "blocks.0.attn.q: no such weight in the transformer" in found.detail


def test_missing_lora_file_fails_in_files(model, tmp_path):
    report = run(tmp_path, model, loras=lora_entry(tmp_path / "absent.safetensors"))
    assert check(report, "files").status == "fail"
    assert "lora[0]" in check(report, "files").detail
    assert check(report, "lora[0]").status == "warn"


# ------------------------------------------------------------------------------ dtype, memory


def test_fp16_weights_warn(model, tmp_path):
    file = model / "transformer" / WEIGHTS
    save_file({k: v.half() for k, v in load_file(file).items()}, file)
    dtype = check(run(tmp_path, model), "dtype")
    assert dtype.status == "warn" and "transformer has fp16 weights" in dtype.detail


def test_cpu_run_in_bf16_warns(model, tmp_path):
    dtype = check(run(tmp_path, model, options='dtype = "bf16"\ndevice = "cpu"'), "dtype")
    assert dtype.status == "warn" and "run: cpu bf16" in dtype.detail


def test_cuda_asked_without_cuda_fails(model, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    dtype = check(run(tmp_path, model, options='device = "cuda"'), "dtype")
    assert dtype.status == "fail" and "CUDA" in dtype.detail


def test_memory_estimate_counts_weights_at_the_run_dtype(model, tmp_path):
    spec = load_pipeline_spec(write_spec(tmp_path, model, options='device = "cpu"'))
    parts = estimate_memory(spec)
    params = sum(v.numel() for v in load_file(model / "transformer" / WEIGHTS).values())
    assert parts["transformer"] == 4 * params  # fp32 on the CPU
    bf16 = estimate_memory(
        dataclasses.replace(spec, options=dataclasses.replace(spec.options, dtype="bf16"))
    )
    assert parts["transformer"] / 2 < bf16["transformer"] < parts["transformer"]  # fp32 norms


def test_memory_against_a_budget_fails_above_and_warns_near_it(model, tmp_path):
    spec = load_pipeline_spec(write_spec(tmp_path, model))
    total = sum(estimate_memory(spec).values())
    assert check(diagnose(spec, memory_budget=total - 1), "memory").status == "fail"
    assert check(diagnose(spec, memory_budget=int(total / 0.95)), "memory").status == "warn"
    assert check(diagnose(spec, memory_budget=2 * total), "memory").status == "ok"


def test_memory_on_a_cpu_run_compares_with_host_ram(model, tmp_path):
    memory = check(run(tmp_path, model, options='device = "cpu"'), "memory")
    assert "CPU run: host RAM" in memory.detail and "available" in memory.detail


def test_activations_grow_with_the_token_count(model, tmp_path):
    spec = load_pipeline_spec(write_spec(tmp_path, model))
    bigger = dataclasses.replace(spec.defaults, num_frames=33, width=128)  # 9 vs 5 latent frames
    more = estimate_memory(dataclasses.replace(spec, defaults=bigger))["activations"]
    assert more == estimate_memory(spec)["activations"] * 9 * 2 // 5


# ------------------------------------------------------------------------------ defaults


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"num_frames": 16}, "num_frames = 16"),
        ({"width": 100}, "width = 100"),
        ({"height": 16 * 1100}, "rope_max_seq_len 1024"),
    ],
)
def test_invalid_defaults_fail_naming_the_key(model, tmp_path, change, named):
    spec = load_pipeline_spec(write_spec(tmp_path, model))
    spec = dataclasses.replace(spec, defaults=dataclasses.replace(spec.defaults, **change))
    defaults = check(diagnose(spec, memory_budget=1 << 50), "defaults")
    assert defaults.status == "fail" and named in defaults.detail


# ------------------------------------------------------------------------------ CLI


def test_cli_doctor_exits_0_on_the_tiny_twin(tiny_root, capsys):
    assert cli.main(["doctor", "--pipeline", str(PIPELINES / "tiny.toml")]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "ok keys: transformer: 69 tensors match config.json" in out
    assert out.endswith("7 checks: 7 ok, 0 warnings, 0 failed")


def test_cli_doctor_exits_2_and_names_the_bad_key(model, tmp_path, capsys):
    old, new = "blocks.0.ffn.net.2.weight", "blocks.0.ffn.net.3.weight"
    rewrite(model / "transformer" / WEIGHTS, lambda sd: sd.__setitem__(new, sd.pop(old)))
    assert cli.main(["doctor", "--pipeline", str(write_spec(tmp_path, model))]) == 2
    out = " ".join(capsys.readouterr().out.split())
    assert "FAIL keys: transformer:" in out and old in out and new in out
    assert out.endswith("1 failed")


def test_lightx2v_lora_with_prefix_and_alpha_passes(model, tmp_path):
    shapes = base_shapes(model)
    lora = {}
    for i in range(2):
        out_f, in_f = shapes[f"blocks.{i}.attn2.to_v.weight"]
        module = f"diffusion_model.blocks.{i}.cross_attn.v"
        lora[f"{module}.lora_down.weight"] = torch.zeros(8, in_f)
        lora[f"{module}.lora_up.weight"] = torch.zeros(out_f, 8)
        lora[f"{module}.alpha"] = torch.tensor(8.0)
        lora[f"{module}.diff_b"] = torch.zeros(out_f)
    save_file(lora, tmp_path / "lightx2v.safetensors")
    entry = lora_entry(tmp_path / "lightx2v.safetensors", kind="lightx2v")
    report = run(tmp_path, model, loras=entry)
    assert check(report, "lora[0]").status == "ok", check(report, "lora[0]").detail
    assert check(report, "defaults").status == "warn"  # 4 steps ok, but guidance_scale 3 is not


def test_wan22_low_noise_lora_is_checked_against_transformer_2(model, tmp_path):
    shutil.copytree(model / "transformer", model / "transformer_2")
    config = model / "transformer_2" / "config.json"  # a low-noise expert with a wider FFN
    config.write_text(config.read_text().replace('"ffn_dim": 128', '"ffn_dim": 256'))
    save_file(pusa_lora(base_shapes(model)), tmp_path / "high.safetensors")
    loras = "".join(
        lora_entry(tmp_path / "high.safetensors") + f'expert = "{e}"\n' for e in ("high", "low")
    )
    spec = write_spec(tmp_path, model, loras=loras)
    spec.write_text(spec.read_text().replace('"wan2.1"', '"wan2.2"'))
    report = diagnose(load_pipeline_spec(spec))
    assert check(report, "keys: transformer_2").status == "fail"
    assert check(report, "lora[0]").status == "ok"
    low = check(report, "lora[1]")
    assert (
        low.status == "fail" and "blocks.0.ffn.0: delta (128, 64) vs weight (256, 64)" in low.detail
    )
