"""The `mochi` family in the pipeline TOML: weights, V0.5 defaults, options, identity."""

from __future__ import annotations

from pathlib import Path

import pytest

from pusa_batch.errors import PipelineError
from pusa_batch.pipelines.spec import load_pipeline_spec

PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"

MOCHI = """
family = "mochi"
[weights]
root = "zoo/mochi"
dit = "zoo/pusa/pusa_v0_dit.safetensors"
"""

WAN21 = """
family = "wan2.1"
[weights]
root = "zoo/wan"
"""


def write(folder: Path, text: str, name: str = "p.toml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


@pytest.fixture
def zoo(tmp_path) -> Path:
    for comp in ("vae", "text_encoder", "tokenizer"):
        (tmp_path / "zoo/mochi" / comp).mkdir(parents=True)
        (tmp_path / "zoo/mochi" / comp / "model.safetensors").write_bytes(b"x" * 10)
    (tmp_path / "zoo/pusa").mkdir(parents=True)
    (tmp_path / "zoo/pusa/pusa_v0_dit.safetensors").write_bytes(b"d" * 10)
    return tmp_path


def test_mochi_has_six_frames_per_latent_and_a_16_pixel_grid(zoo):
    spec = load_pipeline_spec(write(zoo, MOCHI))
    assert (spec.temporal_factor, spec.spatial_multiple) == (6, 16)
    assert spec.experts == ("dit",)


def test_weights_take_the_dit_file_and_the_other_components_from_root(zoo):
    spec = load_pipeline_spec(write(zoo, MOCHI))
    assert spec.weights.dit == zoo / "zoo/pusa/pusa_v0_dit.safetensors"
    assert spec.weights.vae == zoo / "zoo/mochi/vae"
    assert spec.weights.tokenizer == zoo / "zoo/mochi/tokenizer"
    assert spec.weights.transformer is None


def test_root_alone_finds_the_dit_where_the_tiny_twin_writes_it(tmp_path):
    spec = load_pipeline_spec(write(tmp_path, 'family = "mochi"\n[weights]\nroot = "z"\n'))
    assert spec.weights.dit == tmp_path / "z/pusa_v0_dit.safetensors"


def test_omitted_defaults_are_the_v05_release_values(zoo):
    d = load_pipeline_spec(write(zoo, MOCHI)).defaults
    assert (d.width, d.height, d.num_frames, d.fps) == (848, 480, 163, 30)
    assert (d.steps, d.guidance_scale, d.seed, d.negative_prompt) == (30, 4.5, 1710977262, "")


def test_omitted_options_follow_the_release(zoo):
    spec = load_pipeline_spec(write(zoo, MOCHI))
    o = spec.options
    assert spec.schedule == "linear_quadratic" and o.threshold_noise == 0.025
    assert (o.condition_latents, o.normalize_condition, o.text_max_length) == ("sample", False, 256)


def test_wan_keeps_the_shifted_schedule():
    assert load_pipeline_spec(PIPELINES / "tiny.toml").schedule == "shifted"


def test_real_mochi_pipeline_matches_the_release():
    spec = load_pipeline_spec(PIPELINES / "pusa-v0.5-mochi.toml")
    d = spec.defaults
    assert (spec.family, d.width, d.height, d.num_frames, d.fps) == ("mochi", 848, 480, 163, 30)
    assert (d.guidance_scale, d.seed, d.negative_prompt) == (4.5, 1710977262, "")
    assert spec.weights.dit.name == "pusa_v0_dit.safetensors"
    assert spec.loras == ()


@pytest.mark.parametrize(
    ("addition", "key"),
    [
        ('transformer = "x"\n', "weights.transformer"),
        ('transformer_2 = "x"\n', "weights.transformer_2"),
        ('[[lora]]\npath = "l.pt"\nalpha = 1.0\n', "lora"),
        ("[defaults]\nnum_frames = 17\n", "defaults.num_frames"),
        ("[defaults]\nheight = 484\n", "defaults.height"),
        ('[options]\ncondition_latents = "mode"\n', "options.condition_latents"),
        ('[options]\nschedule = "cosine"\n', "options.schedule"),
        ("[options]\nthreshold_noise = 1.5\n", "options.threshold_noise"),
        ('[options]\nattention = "flash"\n', "options.attention"),
    ],
)
def test_bad_mochi_values_name_the_file_and_the_key(zoo, addition, key):
    path = write(zoo, MOCHI + addition)
    with pytest.raises(PipelineError) as err:
        load_pipeline_spec(path)
    assert str(path) in str(err.value) and key in str(err.value)


def test_num_frames_error_asks_for_6k_plus_1(zoo):
    with pytest.raises(PipelineError, match=r"6k\+1"):
        load_pipeline_spec(write(zoo, MOCHI + "[defaults]\nnum_frames = 17\n"))


@pytest.mark.parametrize("option", ['condition_latents = "mean"', "normalize_condition = true"])
def test_wan_pipelines_refuse_mochi_only_options(tmp_path, option):
    with pytest.raises(PipelineError, match="only mochi pipelines"):
        load_pipeline_spec(write(tmp_path, WAN21 + f"[options]\n{option}\n"))


def test_tiny_mochi_needs_no_files():
    spec = load_pipeline_spec(PIPELINES / "tiny-mochi.toml")
    assert spec.weights.tiny == "mochi"
    assert spec.identity() != load_pipeline_spec(PIPELINES / "tiny.toml").identity()


@pytest.mark.parametrize(
    "options",
    [
        'condition_latents = "mean"',
        "normalize_condition = true",
        "threshold_noise = 0.05",
        'schedule = "shifted"',
        'dtype = "bf16"',
    ],
)
def test_identity_changes_with_what_changes_mochi_frames(zoo, options):
    base = load_pipeline_spec(write(zoo, MOCHI)).identity()
    changed = write(zoo, MOCHI + f"[options]\n{options}\n", "changed.toml")
    assert load_pipeline_spec(changed).identity() != base


def test_identity_ignores_the_unused_shift(zoo):
    base = load_pipeline_spec(write(zoo, MOCHI)).identity()
    changed = write(zoo, MOCHI + "[defaults]\nshift = 3.0\n", "changed.toml")
    assert load_pipeline_spec(changed).identity() == base


def test_identity_covers_a_config_json_beside_the_dit(zoo):
    base = load_pipeline_spec(write(zoo, MOCHI)).identity()
    (zoo / "zoo/pusa/config.json").write_text('{"depth": 2}')
    assert load_pipeline_spec(write(zoo, MOCHI)).identity() != base


def test_a_wan_spec_naming_its_own_schedule_keeps_its_identity(tmp_path):
    for comp in ("transformer", "vae", "text_encoder", "tokenizer"):
        (tmp_path / "zoo/wan" / comp).mkdir(parents=True)
    base = load_pipeline_spec(write(tmp_path, WAN21)).identity()
    named = write(tmp_path, WAN21 + '[options]\nschedule = "shifted"\n', "named.toml")
    assert load_pipeline_spec(named).identity() == base
