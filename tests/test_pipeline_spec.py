"""The TOML pipeline spec: parsing, path resolution, validation errors and the identity hash."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from pusa_batch.errors import PipelineError
from pusa_batch.pipelines.spec import load_pipeline_spec

PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"

WAN21 = """
family = "wan2.1"
[weights]
root = "zoo/Wan2.1"
[[lora]]
path = "zoo/pusa_v1.pt"
alpha = 1.4
[defaults]
num_frames = 17
height = 64
width = 64
"""

WAN22 = """
family = "wan2.2"
[weights]
root = "zoo/Wan2.2"
[[lora]]
path = "zoo/high.safetensors"
alpha = 1.4
expert = "high"
[[lora]]
path = "zoo/low.safetensors"
alpha = 1.4
expert = "low"
"""


def write(folder: Path, text: str, name: str = "p.toml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def fake_weights(folder: Path, components: tuple[str, ...], size: int = 10) -> None:
    for comp in components:
        (folder / comp).mkdir(parents=True, exist_ok=True)
        (folder / comp / "config.json").write_text("{}")
        (folder / comp / "model.safetensors").write_bytes(b"x" * size)


@pytest.fixture
def wan21(tmp_path) -> Path:
    fake_weights(tmp_path / "zoo/Wan2.1", ("transformer", "vae", "text_encoder", "tokenizer"))
    (tmp_path / "zoo/pusa_v1.pt").write_bytes(b"lora")
    return write(tmp_path, WAN21)


@pytest.mark.parametrize("path", sorted(PIPELINES.glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_pipeline_parses(path):
    spec = load_pipeline_spec(path)
    assert spec.name == path.stem
    assert (spec.defaults.num_frames - 1) % spec.temporal_factor == 0
    assert spec.defaults.height % spec.spatial_multiple == 0


def test_tiny_pipeline_uses_the_generated_twin():
    spec = load_pipeline_spec(PIPELINES / "tiny.toml")
    assert (spec.family, spec.weights.tiny, spec.loras) == ("wan2.1", "wan2.1", ())
    assert spec.experts == ("transformer",)


def test_real_wan22_pipeline_has_two_experts_with_their_own_loras():
    spec = load_pipeline_spec(PIPELINES / "pusa-wan2.2-a14b.toml")
    assert spec.experts == ("transformer", "transformer_2")
    assert [lo.expert for lo in spec.loras] == ["high", "low"]
    assert spec.options.switch_boundary == 0.875
    assert spec.defaults.fps == 24


def test_real_wan21_pipeline_matches_pusa_scripts():
    spec = load_pipeline_spec(PIPELINES / "pusa-v1-wan2.1-t2v-14b.toml")
    d = spec.defaults
    assert (d.width, d.height, d.num_frames, d.fps, d.steps) == (1280, 720, 81, 25, 30)
    assert (d.guidance_scale, d.shift) == (3.0, 5.0)
    assert d.negative_prompt.startswith("Bright tones, overexposed")
    assert [(lo.path.name, lo.alpha) for lo in spec.loras] == [("pusa_v1.pt", 1.4)]


def test_relative_paths_resolve_against_the_toml_folder(wan21, tmp_path):
    spec = load_pipeline_spec(wan21)
    assert spec.weights.transformer == tmp_path / "zoo/Wan2.1/transformer"
    assert spec.weights.tokenizer == tmp_path / "zoo/Wan2.1/tokenizer"
    assert spec.loras[0].path == tmp_path / "zoo/pusa_v1.pt"


def test_a_component_path_overrides_root(tmp_path):
    text = WAN21.replace('root = "zoo/Wan2.1"', 'root = "zoo/Wan2.1"\nvae = "/abs/vae"')
    spec = load_pipeline_spec(write(tmp_path, text))
    assert spec.weights.vae == Path("/abs/vae")


def test_home_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    spec = load_pipeline_spec(write(tmp_path, WAN21.replace('"zoo/Wan2.1"', '"~/w"')))
    assert spec.weights.vae == tmp_path / "w" / "vae"


def test_missing_defaults_and_options_take_built_in_values(wan21):
    spec = load_pipeline_spec(wan21)
    assert spec.defaults.steps == 30 and spec.defaults.fps == 25
    assert spec.options.dtype == "auto" and spec.options.text_max_length == 512


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ('family = "wan2.1"', 'family = "wan9"', "family"),
        ("[defaults]", "colour = 1\n[defaults]", "colour"),
        ("num_frames = 17", "num_frames = 16", "defaults.num_frames"),
        ("height = 64", "height = 60", "defaults.height"),
        ("height = 64", 'height = "64"', "defaults.height"),
        ("width = 64", "width = 64\nsteps = 0", "defaults.steps"),
        ("width = 64", "width = 64\nguidance_scale = true", "defaults.guidance_scale"),
        ("width = 64", "width = 64\nframes = 3", "defaults.frames"),
        ("alpha = 1.4", "alpha = -1", "lora[0].alpha"),
        ("alpha = 1.4", 'alpha = 1.4\nexpert = "high"', "lora[0].expert"),
        ("alpha = 1.4", 'alpha = 1.4\nkind = "dora"', "lora[0].kind"),
        (
            'root = "zoo/Wan2.1"',
            'root = "zoo/Wan2.1"\ntransformer_2 = "x"',
            "weights.transformer_2",
        ),
        ('root = "zoo/Wan2.1"', 'transformer = "x"', "weights.vae"),
        ('root = "zoo/Wan2.1"', 'rooot = "zoo"', "weights.rooot"),
        ("[defaults]", '[options]\ndtype = "fp8"\n[defaults]', "options.dtype"),
        ("[defaults]", '[options]\nattention = "xformers"\n[defaults]', "options.attention"),
        ("[defaults]", '[options]\ndevice = "tpu"\n[defaults]', "options.device"),
        ("[defaults]", "[options]\nswitch_boundary = 1.5\n[defaults]", "options.switch_boundary"),
    ],
)
def test_bad_values_name_the_file_and_the_key(tmp_path, old, new, key):
    path = write(tmp_path, WAN21.replace(old, new, 1))
    with pytest.raises(PipelineError) as err:
        load_pipeline_spec(path)
    assert str(path) in str(err.value)
    assert key in str(err.value)


def test_wan22_lora_needs_an_expert(tmp_path):
    path = write(tmp_path, WAN22.replace('expert = "low"', ""))
    with pytest.raises(PipelineError, match=r"lora\[1\]\.expert"):
        load_pipeline_spec(path)


def test_tiny_takes_no_other_weights(tmp_path):
    text = 'family = "wan2.1"\n[weights]\ntiny = "wan2.1"\nvae = "v"\n'
    with pytest.raises(PipelineError, match="tiny"):
        load_pipeline_spec(write(tmp_path, text))
    text = 'family = "wan2.1"\n[weights]\ntiny = "wan2.2"\n'
    with pytest.raises(PipelineError, match="weights.tiny"):
        load_pipeline_spec(write(tmp_path, text))


def test_invalid_toml_and_missing_file_are_pipeline_errors(tmp_path):
    with pytest.raises(PipelineError, match="not valid TOML"):
        load_pipeline_spec(write(tmp_path, "family = \n"))
    with pytest.raises(PipelineError, match="not found"):
        load_pipeline_spec(tmp_path / "absent.toml")


def test_spec_is_frozen(wan21):
    spec = load_pipeline_spec(wan21)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.family = "wan2.2"


def test_check_weights_names_every_missing_path(tmp_path):
    spec = load_pipeline_spec(write(tmp_path, WAN21))
    with pytest.raises(PipelineError) as err:
        spec.check_weights()
    assert "weights.transformer" in str(err.value)
    assert "pusa_v1.pt" in str(err.value)


# ------------------------------------------------------------------------------------ identity


def test_identity_is_stable_across_loads(wan21):
    assert load_pipeline_spec(wan21).identity() == load_pipeline_spec(wan21).identity()


def test_identity_ignores_defaults_and_runtime_options(wan21, tmp_path):
    base = load_pipeline_spec(wan21).identity()
    text = WAN21.replace("num_frames = 17", "num_frames = 21") + (
        '[options]\ndevice = "cpu"\nbatched_cfg = true\ntext_encoder_offload = true\n'
    )
    assert load_pipeline_spec(write(tmp_path, text, "other.toml")).identity() == base


LIGHTX2V = '[[lora]]\npath = "zoo/pusa_v1.pt"\nalpha = 1.0\nkind = "lightx2v"\n[defaults]'


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("alpha = 1.4", "alpha = 1.3"),
        ("[defaults]", "[options]\ntext_max_length = 256\n[defaults]"),
        ("[defaults]", '[options]\ndtype = "bf16"\n[defaults]'),
        ("[defaults]", LIGHTX2V),
    ],
)
def test_identity_changes_with_what_changes_the_frames(wan21, tmp_path, old, new):
    changed = write(tmp_path, WAN21.replace(old, new, 1), "changed.toml")
    assert load_pipeline_spec(changed).identity() != load_pipeline_spec(wan21).identity()


def test_identity_changes_when_a_weight_file_changes_size(wan21, tmp_path):
    before = load_pipeline_spec(wan21).identity()
    (tmp_path / "zoo/Wan2.1/transformer/model.safetensors").write_bytes(b"y" * 11)
    assert load_pipeline_spec(wan21).identity() != before


def test_identity_does_not_read_weight_contents(wan21, tmp_path):
    before = load_pipeline_spec(wan21).identity()
    (tmp_path / "zoo/Wan2.1/transformer/model.safetensors").write_bytes(b"z" * 10)
    assert load_pipeline_spec(wan21).identity() == before


def test_identity_of_a_wan22_pipeline_covers_the_switch_boundary(tmp_path):
    fake_weights(
        tmp_path / "zoo/Wan2.2",
        ("transformer", "transformer_2", "vae", "text_encoder", "tokenizer"),
    )
    for name in ("high", "low"):
        (tmp_path / f"zoo/{name}.safetensors").write_bytes(b"l")
    base = load_pipeline_spec(write(tmp_path, WAN22)).identity()
    moved = WAN22 + "[options]\nswitch_boundary = 0.9\n"
    assert load_pipeline_spec(write(tmp_path, moved, "moved.toml")).identity() != base


def test_identity_of_a_tiny_pipeline_needs_no_files():
    spec = load_pipeline_spec(PIPELINES / "tiny.toml")
    other = load_pipeline_spec(PIPELINES / "tiny-wan22.toml")
    assert len(spec.identity()) == 16
    assert spec.identity() != other.identity()


def test_identity_ignores_hidden_download_metadata(wan21, tmp_path):
    before = load_pipeline_spec(wan21).identity()
    meta = tmp_path / "zoo/Wan2.1/transformer/.cache/huggingface/download/model.metadata"
    meta.parent.mkdir(parents=True)
    meta.write_text("etag and a timestamp")
    assert load_pipeline_spec(wan21).identity() == before
