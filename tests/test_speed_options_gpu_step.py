"""`benchmarks/gpu_step.py` on a machine without a GPU: it says why it skips, and its whole code
path runs on the CPU at the tiny config (`--device cpu --tiny`), so a GPU run finds no typo."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import gpu_step  # noqa: E402

from pusa_batch.models.wan import WanConfig  # noqa: E402


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is here: it would run")
def test_without_cuda_it_prints_the_skip_reason_and_exits_0(tmp_path):
    done = subprocess.run(
        [sys.executable, str(BENCH / "gpu_step.py"), "--out", str(tmp_path / "t.md")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "SKIP: no CUDA GPU" in done.stdout and "--device cpu --tiny" in done.stdout
    assert not (tmp_path / "t.md").exists()


def test_the_cpu_path_writes_every_row_of_the_table(tmp_path, capsys):
    out = tmp_path / "gpu_step.md"
    args = ["--device", "cpu", "--tiny", "--quick", "--compile-backend", "aot_eager"]
    assert gpu_step.main([*args, "--out", str(out)]) == 0
    table = out.read_text()
    assert table.startswith("# gpu_step: CPU")
    for variant in gpu_step.VARIANTS:
        assert f"| 480p | {variant} |" in table and f"| 720p | {variant} |" in table
    assert "not run: flash_attn not installed" in table or "not run: a CUDA kernel" in table
    assert "(partial" not in table
    assert "| size | variant | s/step | peak GiB | MFU | note |" in capsys.readouterr().out


def test_the_flop_count_of_the_14b_forward_is_the_stated_formula():
    cfg = WanConfig.from_dict(gpu_step.WAN14B)
    assert cfg == WanConfig()  # the 14B config is also WanConfig's default
    grid = (21, 45, 80)  # 1280x720x81
    n, d, f, text = math.prod(grid), 5120, 13824, 512
    blocks = 40 * (
        12 * n * d * d + 4 * n * n * d + 4 * text * d * d + 4 * n * text * d + 4 * n * d * f
    )
    assert gpu_step.forward_flops(cfg, grid) == pytest.approx(blocks, rel=2e-3)
    assert gpu_step.forward_flops(cfg, grid) / 1e15 == pytest.approx(6.52, abs=0.01)
    assert gpu_step.rule_of_thumb_flops(cfg, grid) / 1e15 == pytest.approx(6.81, abs=0.01)
    assert gpu_step.forward_flops(cfg, grid, batch=2) == 2 * gpu_step.forward_flops(cfg, grid)


def test_mfu_peaks_are_known_by_device_name():
    assert gpu_step.peak_tflops("NVIDIA H200") == 989
    assert gpu_step.peak_tflops("NVIDIA H100 80GB HBM3") == 989
    assert gpu_step.peak_tflops("NVIDIA A100-SXM4-80GB") == 312
    assert gpu_step.peak_tflops("NVIDIA L40S") == 362
    assert gpu_step.peak_tflops("NVIDIA GeForce RTX 4090") is None
