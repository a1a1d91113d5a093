"""B2 as CI meets it: a short run prints its result line, and diffusers' `WanPipeline` on Pusa's
schedule gives our latents and frames bit for bit (same noise, same embeddings)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

B2 = Path(__file__).resolve().parents[1] / "benchmarks" / "b2_vs_diffusers.py"


@pytest.fixture(scope="module")
def output(tmp_path_factory) -> str:
    cache = tmp_path_factory.mktemp("pusa-cache")
    done = subprocess.run(
        [sys.executable, str(B2), "--repeats", "1", "--no-large"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PUSA_BATCH_CACHE": str(cache)},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def figure(output: str, label: str) -> float:
    return float(re.search(rf"{re.escape(label)}=(\S+?)[;,\s]", output + " ")[1])


def test_prints_one_result_line_for_the_default_size(output):
    lines = [line for line in output.splitlines() if line.startswith("B2 sampler_time_ratio")]
    assert len(lines) == 1
    assert re.fullmatch(
        r"B2 sampler_time_ratio_ours_over_diffusers=\d+\.\d{3} target<=1 (pass|miss)", lines[0]
    )


def test_both_pipelines_encode_prompts_identically(output):
    assert figure(output, "prompt embeddings max|d|") == 0.0


def test_diffusers_on_pusas_schedule_gives_our_latents_and_frames(output):
    assert figure(output, "timesteps max|d|") == 0.0
    assert figure(output, "uint8 frames (aligned) max|d|") == 0.0


def test_diffusers_stock_schedule_differs_from_pusas(output):
    assert figure(output, "vs stock Euler max|d|") > 1e-3
