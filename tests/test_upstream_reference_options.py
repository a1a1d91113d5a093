"""The two pipeline options docs/parity.md describes: `numerics` and `deterministic`.

`numerics = "upstream"` rounds the noise and the initial state to bf16 values the way the
official pipelines hold them (Pusa V1: noise, conditioning latents and the noised conditioned
frames; Pusa V0.5: the noise); the default "fp32" keeps them as made. `deterministic = true` sets
torch's determinism settings when the pipeline loads (on the worker); the check runs in a child
process so that this one's settings stay as they were.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pipeline_support import make_item

from pusa_batch.errors import PipelineError
from pusa_batch.pipelines import load_pipeline
from pusa_batch.pipelines.spec import load_pipeline_spec
from pusa_batch.sampler import ConditioningSpec, initial_latents, make_noise, shifted_sigmas

PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"


def pipeline_file(tmp_path: Path, base: str, **options) -> Path:
    """`base` (a file in pipelines/) with extra [options] keys, written under tmp_path."""
    lines = (PIPELINES / base).read_text().splitlines()
    at = lines.index("[options]") + 1
    extra = [f"{k} = {json.dumps(v)}" for k, v in options.items()]
    path = tmp_path / f"{base.removesuffix('.toml')}-{len(list(tmp_path.iterdir()))}.toml"
    path.write_text("\n".join(lines[:at] + extra + lines[at:]) + "\n")
    return path


def is_bf16(x: torch.Tensor) -> bool:
    return torch.equal(x, x.to(torch.bfloat16).to(x.dtype))


# --- parsing -----------------------------------------------------------------------------------


def test_the_options_parse_and_default_to_fp32_and_off(tmp_path):
    default = load_pipeline_spec(PIPELINES / "tiny.toml").options
    assert (default.numerics, default.deterministic) == ("fp32", False)
    spec = load_pipeline_spec(
        pipeline_file(tmp_path, "tiny.toml", numerics="upstream", deterministic=True)
    )
    assert (spec.options.numerics, spec.options.deterministic) == ("upstream", True)


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"numerics": "bf16"}, "options.numerics"),
        ({"deterministic": "yes"}, "options.deterministic"),
    ],
)
def test_bad_values_name_the_key(tmp_path, options, key):
    with pytest.raises(PipelineError, match=key):
        load_pipeline_spec(pipeline_file(tmp_path, "tiny.toml", **options))


def test_numerics_upstream_is_part_of_the_identity_and_fp32_hashes_as_before(tmp_path, cache):
    base = load_pipeline_spec(PIPELINES / "tiny.toml").identity()
    explicit = load_pipeline_spec(pipeline_file(tmp_path, "tiny.toml", numerics="fp32"))
    upstream = load_pipeline_spec(pipeline_file(tmp_path, "tiny.toml", numerics="upstream"))
    deterministic = load_pipeline_spec(pipeline_file(tmp_path, "tiny.toml", deterministic=True))
    assert explicit.identity() == base == deterministic.identity()
    assert upstream.identity() != base


# --- the sampler's rounding ---------------------------------------------------------------------


def test_initial_latents_round_to_bf16_as_asked():
    noise = make_noise((1, 4, 5, 3, 3), 0)
    clean = torch.randn(1, 4, 2, 3, 3, generator=torch.Generator().manual_seed(1))
    cond = ConditioningSpec((0, 3), clean, (0.0, 0.3))
    sigmas = shifted_sigmas(4)
    plain = initial_latents(noise, sigmas, cond)
    state = initial_latents(noise, sigmas, cond, rounding="state")
    only_noise = initial_latents(noise, sigmas, cond, rounding="noise")
    assert not is_bf16(plain) and is_bf16(state)
    assert state.dtype == plain.dtype == torch.float32
    bf = lambda t: t.to(torch.bfloat16).float()  # noqa: E731
    mixed = ((1 - torch.tensor(0.3)) * bf(clean[:, :, 1]) + 0.3 * bf(noise[:, :, 3])).float()
    assert torch.equal(state[:, :, 3], bf(mixed))
    assert torch.equal(state[:, :, 0], bf(clean[:, :, 0]))
    free = [1, 2, 4]
    assert torch.equal(only_noise[:, :, free], bf(noise[:, :, free]))
    assert torch.equal(only_noise[:, :, 0], clean[:, :, 0])  # the clean latent as given
    with pytest.raises(ValueError, match="rounding"):
        initial_latents(noise, sigmas, cond, rounding="bf16")


# --- numerics reaches the sampler ---------------------------------------------------------------


def first_input(pipe, item) -> torch.Tensor:
    """The latents the denoiser sees at the first step: the sampler's initial state."""
    model = pipe.dit if pipe.spec.family == "mochi" else pipe.experts["transformer"]
    seen = []
    hook = model.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    try:
        pipe.sample(pipe.prepare(item))
    finally:
        hook.remove()
    return seen[0]


@pytest.mark.parametrize("base", ["tiny.toml", "tiny-mochi.toml"])
def test_numerics_upstream_starts_from_bf16_values_and_the_default_does_not(
    tmp_path, cache, image, base
):
    default = load_pipeline(PIPELINES / base)
    upstream = load_pipeline(pipeline_file(tmp_path, base, numerics="upstream"))
    assert upstream.describe()["numerics"] == "upstream"
    assert default.describe()["numerics"] == "fp32"
    frames = 13 if base == "tiny-mochi.toml" else 9  # 3 latent frames
    item = make_item(
        default.spec, task="i2v", image=image, num_frames=frames, height=32, width=32,
        steps=2, guidance_scale=1.0, noise_multipliers=(0.2,),
    )  # fmt: skip
    plain, rounded = first_input(default, item), first_input(upstream, item)
    assert plain.dtype == rounded.dtype == torch.float32
    assert not is_bf16(plain[:, :, 1:])
    if base == "tiny.toml":  # Pusa V1: the whole initial state, conditioned frame included
        assert is_bf16(rounded) and not is_bf16(plain[:, :, :1])
    else:  # Pusa V0.5: the noise; its conditioned frame mixes in float32
        assert is_bf16(rounded[:, :, 1:]) and not is_bf16(rounded[:, :, :1])
    assert 0 < float((plain - rounded).abs().max()) < 0.02


# --- deterministic ------------------------------------------------------------------------------

CHILD = """
import json, os, sys
import torch
from pusa_batch.pipelines import load_pipeline

def settings():
    return {
        "algorithms": torch.are_deterministic_algorithms_enabled(),
        "warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cublas": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    }

out = {"before": settings()}
load_pipeline(sys.argv[1])
out["plain"] = settings()
load_pipeline(sys.argv[2])
out["deterministic"] = settings()
os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":16:8"
load_pipeline(sys.argv[2])
out["preset"] = os.environ["CUBLAS_WORKSPACE_CONFIG"]
print(json.dumps(out))
"""


def test_deterministic_sets_torch_determinism_at_load_in_that_process(tmp_path, cache):
    load_pipeline(PIPELINES / "tiny.toml")  # the twin exists before the child needs it
    env = {k: v for k, v in os.environ.items() if k != "CUBLAS_WORKSPACE_CONFIG"}
    env["PUSA_BATCH_CACHE"] = str(cache)
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(PIPELINES / "tiny.toml"),
         str(pipeline_file(tmp_path, "tiny.toml", deterministic=True))],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert child.returncode == 0, child.stderr
    out = json.loads(child.stdout.strip().splitlines()[-1])
    assert out["before"] == out["plain"]  # the default option touches nothing
    assert out["plain"]["algorithms"] is False and out["plain"]["cublas"] is None
    assert out["deterministic"] == {
        "algorithms": True,
        "warn_only": True,
        "cudnn_deterministic": True,
        "cudnn_benchmark": False,
        "cublas": ":4096:8",
    }
    assert out["preset"] == ":16:8"  # a value already in the environment is kept


def test_this_process_keeps_its_own_determinism_settings():
    """The check above ran in a child: nothing here was switched on."""
    assert not torch.are_deterministic_algorithms_enabled()
