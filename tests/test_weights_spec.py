"""Weight URLs in a pipeline file: how they parse, what `[staging]` holds, and an identity that
does not depend on where the weights live (so item fingerprints survive a move to S3)."""

from __future__ import annotations

from pathlib import Path

import fsspec
import numpy as np
import pytest
from safetensors.numpy import save
from test_weights_proxy import upload, write_pipeline

from pusa_batch.errors import PipelineError, WeightsError
from pusa_batch.models.tiny import ensure_tiny_model
from pusa_batch.pipelines.spec import load_pipeline_spec
from pusa_batch.pipelines.staging import stage_pipeline
from pusa_batch.weights import WeightURL
from pusa_batch.weights.fetch import MIB

SECRET = "sup3r-secret-value"


@pytest.fixture(scope="module")
def tiny_root(cache) -> Path:
    return ensure_tiny_model("wan2.1")


@pytest.fixture(scope="module")
def remote_root(s3, tiny_root) -> str:
    """The tiny Wan2.1 twin uploaded to the test bucket."""
    fs = fsspec.filesystem("s3", **s3.storage_options, skip_instance_cache=True)
    upload(fs, tiny_root, "pusa-test/spec-tiny")
    return "s3://pusa-test/spec-tiny"


def spec_text(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "p.toml"
    path.write_text(f'family = "wan2.1"\n{body}\n')
    return path


def test_a_url_root_gives_each_component_a_url_under_it(tmp_path):
    spec = load_pipeline_spec(spec_text(tmp_path, '[weights]\nroot = "s3://models/wan/"'))
    assert spec.weights.transformer == WeightURL("s3://models/wan/transformer")
    assert spec.remote_parts()["tokenizer"].url == "s3://models/wan/tokenizer"


def test_a_local_component_beside_url_ones_stays_a_resolved_path(tmp_path):
    body = '[weights]\nroot = "gs://models/wan"\nvae = "local/vae"'
    spec = load_pipeline_spec(spec_text(tmp_path, body))
    assert spec.weights.vae == tmp_path / "local" / "vae"
    assert sorted(spec.remote_parts()) == ["text_encoder", "tokenizer", "transformer"]


def test_a_lora_may_be_an_https_url(tmp_path):
    body = (
        '[weights]\nroot = "/models/wan"\n[[lora]]\n'
        'path = "https://example.org/loras/pusa_v1.pt?download=true"\nalpha = 1.4'
    )
    spec = load_pipeline_spec(spec_text(tmp_path, body))
    assert spec.loras[0].path.name == "pusa_v1.pt"
    assert list(spec.remote_parts()) == ["lora[0]"]


def test_a_file_url_needs_an_absolute_path(tmp_path):
    with pytest.raises(PipelineError, match=r"weights\.root: a file:// URL needs an absolute"):
        load_pipeline_spec(spec_text(tmp_path, '[weights]\nroot = "file://models/wan"'))


def test_staging_keys_parse_with_the_cache_relative_to_the_file(tmp_path):
    body = (
        '[weights]\nroot = "s3://models/wan"\n[staging]\ncache = "node-cache"\nchunk_mb = 16\n'
        "parallel = 4\n[staging.storage_options.s3]\nanon = true\n"
    )
    staging = load_pipeline_spec(spec_text(tmp_path, body)).staging
    assert (staging.cache, staging.chunk_bytes, staging.parallel) == (
        tmp_path / "node-cache",
        16 * MIB,
        4,
    )
    assert staging.options_for(WeightURL("s3a://models/x")) == {"anon": True}


def test_storage_options_for_a_protocol_no_weight_uses_are_refused(tmp_path):
    body = '[weights]\nroot = "s3://models/wan"\n[staging.storage_options.gs]\ntoken = "anon"'
    with pytest.raises(PipelineError, match=r"storage_options\.gs: no weight URL here is gs://"):
        load_pipeline_spec(spec_text(tmp_path, body))


@pytest.mark.parametrize(("key", "value"), [("chunk_mb", 0), ("parallel", 65), ("cache", 3)])
def test_bad_staging_values_are_refused_naming_the_key(tmp_path, key, value):
    body = f'[weights]\nroot = "s3://models/wan"\n[staging]\n{key} = {value}'
    with pytest.raises(PipelineError, match=rf"staging\.{key}"):
        load_pipeline_spec(spec_text(tmp_path, body))


def test_storage_option_values_never_show_in_the_spec_repr(tmp_path):
    body = f'[weights]\nroot = "s3://models/wan"\n[staging.storage_options.s3]\nsecret = "{SECRET}"'
    spec = load_pipeline_spec(spec_text(tmp_path, body))
    assert SECRET not in repr(spec)
    assert spec.staging.options_for(spec.weights.vae) == {"secret": SECRET}


def test_url_user_and_password_never_show_in_the_spec_repr(tmp_path):
    body = f'[weights]\nroot = "https://me:{SECRET}@example.org/wan"'
    spec = load_pipeline_spec(spec_text(tmp_path, body))
    assert SECRET not in repr(spec) and SECRET not in str(spec.weights.vae)


def test_cli_storage_options_apply_to_every_weight_protocol_or_to_one(tmp_path):
    body = '[weights]\nroot = "s3://models/wan"\n[[lora]]\npath = "gs://l/x.pt"\nalpha = 1.0'
    spec = load_pipeline_spec(spec_text(tmp_path, body))
    both = spec.with_weight_storage_options({"client_kwargs.region_name": "eu"})
    one = spec.with_weight_storage_options({"s3:anon": True})
    assert both.staging.options_for(spec.loras[0].path) == {"client_kwargs": {"region_name": "eu"}}
    assert both.staging.options_for(spec.weights.vae) == {"client_kwargs": {"region_name": "eu"}}
    assert one.staging.storage_options == {"s3": {"anon": True}}


def test_identity_is_the_same_from_a_local_folder_and_from_its_copy_on_s3(
    tmp_path, s3, tiny_root, remote_root
):
    local_file = write_pipeline(tmp_path, str(tiny_root), None, cache=tmp_path / "c", name="l.toml")
    local = load_pipeline_spec(local_file)
    remote = load_pipeline_spec(
        write_pipeline(tmp_path, remote_root, s3.storage_options, cache=tmp_path / "c")
    )
    assert remote.identity() == local.identity()


def test_identity_is_the_same_once_the_weights_are_staged(tmp_path, s3, remote_root):
    remote = load_pipeline_spec(
        write_pipeline(tmp_path, remote_root, s3.storage_options, cache=tmp_path / "c")
    )
    staged = stage_pipeline(remote)
    assert isinstance(staged.weights.transformer, Path)
    assert staged.identity() == remote.identity()


def test_identity_ignores_checksum_files_beside_the_weights(tmp_path, tiny_root):
    import shutil

    copy = Path(shutil.copytree(tiny_root, tmp_path / "copy"))
    before = load_pipeline_spec(spec_text(tmp_path, f'[weights]\nroot = "{copy}"')).identity()
    (copy / "vae" / "diffusion_pytorch_model.safetensors.sha256").write_text("0" * 64 + "\n")
    (copy / "transformer" / "SHA256SUMS").write_text("")
    after = load_pipeline_spec(spec_text(tmp_path, f'[weights]\nroot = "{copy}"')).identity()
    assert after == before


def test_a_missing_url_is_named_by_check_weights(tmp_path, s3):
    path = write_pipeline(
        tmp_path, "s3://pusa-test/no-such-model", s3.storage_options, cache=tmp_path / "c"
    )
    with pytest.raises(PipelineError, match=r"weights\.vae = s3://pusa-test/no-such-model/vae"):
        load_pipeline_spec(path).check_weights()


def test_an_unreadable_bucket_is_a_weights_error_naming_the_url_without_secrets(tmp_path, s3):
    options = {**s3.storage_options, "secret": SECRET}
    path = write_pipeline(tmp_path, "s3://no-such-bucket-x/wan", options, cache=tmp_path / "c")
    with pytest.raises(WeightsError, match=r"s3://no-such-bucket-x/wan/\w+: cannot list") as e:
        load_pipeline_spec(path).check_weights()
    assert SECRET not in str(e.value)


def mochi_tree(folder: Path) -> Path:
    """A Mochi root as the loader lays it out (dummy bytes: names and sizes matter here, and
    a DiT that is a whole safetensors file)."""
    dit = folder / "pusa_v0_dit.safetensors"
    dit.parent.mkdir(parents=True, exist_ok=True)
    dit.write_bytes(save({"w": np.zeros(8, dtype=np.float32)}))
    for rel, size in [
        ("config.json", 20),
        ("vae/config.json", 10),
        ("text_encoder/config.json", 11),
        ("tokenizer/spiece.model", 12),
    ]:
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(b"x" * size)
    return folder


def mochi_spec(folder: Path, root: str, options: dict | None) -> Path:
    path = folder / ("remote.toml" if options else "local.toml")
    text = f'family = "mochi"\n[weights]\nroot = "{root}"\n[staging]\ncache = "{folder / "c"}"\n'
    if options:
        text += (
            f'[staging.storage_options.s3]\nkey = "{options["key"]}"\n'
            f'secret = "{options["secret"]}"\n'
            f'client_kwargs = {{ endpoint_url = "{options["client_kwargs"]["endpoint_url"]}" }}\n'
        )
    path.write_text(text)
    return path


def test_a_remote_mochi_dit_is_staged_with_the_config_beside_it(tmp_path, s3):
    local_root = mochi_tree(tmp_path / "mochi")
    fs = fsspec.filesystem("s3", **s3.storage_options, skip_instance_cache=True)
    upload(fs, local_root, "pusa-test/spec-mochi")
    remote_file = mochi_spec(tmp_path, "s3://pusa-test/spec-mochi", s3.storage_options)
    remote = load_pipeline_spec(remote_file)
    local = load_pipeline_spec(mochi_spec(tmp_path, str(local_root), None))
    staged = stage_pipeline(remote)
    assert (staged.weights.dit.parent / "config.json").read_bytes() == b"x" * 20
    assert remote.identity() == local.identity() == staged.identity()
