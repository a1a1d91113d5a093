"""An item's memory estimate against its worker's device: the estimate grows with the item, the
doctor and a loaded pipeline give the same figures, and `prepare` refuses an item that clearly
cannot fit before it allocates anything. `[device] memory_gib` caps what a worker plans for."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from pipeline_support import make_item

from pusa_batch.cli import main as cli
from pusa_batch.doctor.preflight import diagnose, estimate_memory
from pusa_batch.errors import PipelineError
from pusa_batch.models.mochi import MochiConfig, PusaMochiTransformer
from pusa_batch.models.tiny import ensure_tiny_model
from pusa_batch.models.wan import PusaWanTransformer, WanConfig
from pusa_batch.pipelines import load_pipeline
from pusa_batch.pipelines.device import DeviceMemory, device_memory
from pusa_batch.pipelines.limits import GIB
from pusa_batch.pipelines.memory_fit import (
    FIT_MARGIN,
    ItemSize,
    ItemTooLargeError,
    activation_bytes,
    check_fits,
)
from pusa_batch.pipelines.spec import load_pipeline_spec

TINY = Path(__file__).resolve().parents[1] / "pipelines" / "tiny.toml"
BIG = {"num_frames": 81, "height": 512, "width": 512}  # 21,504 tokens: ~44 MB on the tiny twin


def capped_spec(folder: Path, device_table: str) -> Path:
    path = folder / "capped.toml"
    path.write_text(TINY.read_text() + f"\n[device]\n{device_table}\n")
    return path


@pytest.fixture(scope="module")
def spec(cache):
    ensure_tiny_model("wan2.1")  # the doctor reads the twin's files
    return load_pipeline_spec(TINY)


@pytest.fixture(scope="module")
def pipe(spec):
    """The tiny twin with a 10 MiB cap: its weights (1.6 MiB) and small items fit, BIG not."""
    capped = dataclasses.replace(
        spec, device=dataclasses.replace(spec.device, memory_gib=10 / 1024)
    )
    return load_pipeline(capped)


def on_meta(model_class, config):
    with torch.device("meta"):
        return model_class(config)


WAN = on_meta(PusaWanTransformer, WanConfig(num_attention_heads=4, attention_head_dim=16))
MOCHI = on_meta(
    PusaMochiTransformer,
    MochiConfig(depth=1, num_heads=2, hidden_size_x=64, hidden_size_y=32, t5_feat_dim=32),
)


@pytest.mark.parametrize(("model", "factor"), [(WAN, 4), (MOCHI, 6)], ids=["wan", "mochi"])
@pytest.mark.parametrize(
    "bigger",
    [
        {"num_frames": 17 + 24},
        {"height": 96},
        {"width": 96},
        {"batch": 2},
        {"cfg_batched": True},
    ],
)
def test_the_estimate_grows_with_frames_size_batch_and_batched_cfg(model, factor, bigger):
    base = ItemSize(num_frames=17, height=64, width=64)
    small = activation_bytes(model, base, factor, 2)
    assert activation_bytes(model, dataclasses.replace(base, **bigger), factor, 2) > small > 0


def test_the_estimate_is_arithmetic_on_the_config_of_a_model_on_meta():
    size = ItemSize(num_frames=81, height=720, width=1280)
    tokens = 21 * 45 * 80
    per_token = 3 * 64 + 2 * WAN.config.ffn_dim
    assert activation_bytes(WAN, size, 4, 2) == tokens * per_token * 2 + tokens * 64 * 4


def test_the_doctor_and_a_loaded_pipeline_give_the_same_figures(spec, pipe):
    doctor = estimate_memory(spec)
    fit = pipe.memory
    at_defaults = fit.item_size(make_item(spec))
    assert fit.activation_bytes(at_defaults) == doctor.pop("activations")
    assert fit.resident_bytes() == sum(doctor.values())


def test_an_item_over_the_cap_is_refused_with_the_estimate_the_device_and_the_fixes(spec, pipe):
    calls = pipe.text.calls
    with pytest.raises(ItemTooLargeError) as refused:
        pipe.prepare(make_item(spec, id="big", **BIG))
    message = str(refused.value)
    assert message.startswith("item big: 81 frames at 512x512 needs about 42 MiB")
    assert "the [device] memory_gib cap (10 MiB) leaves 8.4" in message
    for fix in ("smaller size", "vae_tiling = true", "text_encoder_offload", "bigger device"):
        assert fix in message
    assert pipe.text.calls == calls  # refused before its prompt was encoded


def test_an_item_that_fits_under_the_cap_is_prepared(spec, pipe):
    prepared = pipe.prepare(make_item(spec, id="small", num_frames=9, height=32, width=32))
    assert prepared.item_id == "small"


def test_an_item_is_refused_only_when_half_its_estimate_would_not_fit():
    memory = DeviceMemory(capacity=1000, in_use=400, where="a device")
    size = ItemSize(num_frames=9, height=32, width=32)
    check_fits("edge", size, int(600 * FIT_MARGIN), memory, "fixes")  # at the margin: tried
    with pytest.raises(ItemTooLargeError, match="item edge: .* leaves 600 B"):
        check_fits("edge", size, int(600 * FIT_MARGIN) + 2, memory, "fixes")


def test_a_cpu_worker_without_a_cap_plans_for_the_host_ram_available():
    memory = device_memory(torch.device("cpu"), cap=None, resident=123)
    assert memory.capacity > 0 and memory.in_use == 0  # its weights are already out of it
    assert memory.where.startswith("the host RAM available (")


def test_a_cap_replaces_the_device_memory_and_counts_the_weights_in_use():
    memory = device_memory(torch.device("cpu"), cap=GIB, resident=123)
    assert (memory.capacity, memory.in_use) == (GIB, 123)
    assert memory.where == "the [device] memory_gib cap (1 GiB)"


def test_a_device_memory_cap_is_read_from_the_pipeline_file(tmp_path):
    spec = load_pipeline_spec(capped_spec(tmp_path, "memory_gib = 20"))
    assert spec.device.memory_bytes == 20 * GIB
    assert load_pipeline_spec(TINY).device.memory_bytes is None


def test_a_cap_leaves_the_pipeline_identity_alone(tmp_path, spec):
    capped = load_pipeline_spec(capped_spec(tmp_path, "memory_gib = 20"))
    assert capped.identity() == spec.identity()  # items done before the cap stay done


@pytest.mark.parametrize(
    ("table", "named"),
    [
        ("memory_gib = 0", "device.memory_gib: must be a positive number of GiB"),
        ("memory_gib = -4", "device.memory_gib: must be a positive number of GiB"),
        ('memory_gib = "20"', "device.memory_gib: must be a positive number of GiB"),
        ("memory_gib = true", "device.memory_gib: must be a positive number of GiB"),
        ("memory_gib = nan", "device.memory_gib: must be a positive number of GiB"),
        ("memory = 20", "device.memory: unknown key; allowed here: memory_gib"),
    ],
)
def test_a_bad_device_table_is_refused_naming_the_key(tmp_path, table, named):
    with pytest.raises(PipelineError, match=named) as refused:
        load_pipeline_spec(capped_spec(tmp_path, table))
    assert refused.value.exit_code == 2


def test_the_cli_exits_2_on_a_bad_device_table(tmp_path, capsys):
    assert cli.main(["doctor", "--pipeline", str(capped_spec(tmp_path, "memory_gib = 0"))]) == 2
    assert "device.memory_gib" in capsys.readouterr().err


def test_the_doctor_checks_the_pipeline_against_its_cap(tmp_path, spec):
    spec = load_pipeline_spec(capped_spec(tmp_path, "memory_gib = 0.0009765625"))  # 1 MiB
    (memory,) = [c for c in diagnose(spec).checks if c.name == "memory"]
    assert memory.status == "fail" and "the [device] memory_gib cap 1 MiB" in memory.detail
