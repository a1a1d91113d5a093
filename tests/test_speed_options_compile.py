"""`compile = true`: each DiT block through torch.compile, same outputs as eager to 1e-5.

The parity test compiles with inductor, the backend the option uses (it builds C++ kernels on
the CPU: about 10-25 s cold on a busy 2-core machine, marked `slow`, still run in CI). The
pipeline test checks the plumbing with the "aot_eager" backend (graph capture without code
generation: a second or two), so the option's path is covered without a second inductor build.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from pipeline_support import make_item

from pusa_batch.models.wan import PusaWanTransformer, WanConfig
from pusa_batch.pipelines import load_pipeline
from pusa_batch.pipelines.spec import load_pipeline_spec

PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"
TINY = {
    "patch_size": (1, 2, 2),
    "num_attention_heads": 2,
    "attention_head_dim": 16,
    "text_dim": 32,
    "freq_dim": 32,
    "ffn_dim": 64,
    "num_layers": 3,
    "rope_max_seq_len": 64,
}


@pytest.mark.slow
def test_inductor_compiled_blocks_match_eager_and_compile_once_for_all_blocks():
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    model = PusaWanTransformer(WanConfig.from_dict(TINY)).eval()
    keys = list(model.state_dict())
    gen = torch.Generator().manual_seed(1)
    x, ctx = torch.randn(2, 16, 3, 4, 6, generator=gen), torch.randn(2, 7, 32, generator=gen)
    t = torch.tensor([[0.0, 900.0, 900.0], [200.0, 500.0, 500.0]])
    with torch.no_grad():
        eager = model(x, t, ctx)
        torch._dynamo.reset()
        counters.clear()
        compiled = model.compile_blocks()(x, t, ctx)
    assert (compiled - eager).abs().max().item() <= 1e-5
    assert counters["stats"]["unique_graphs"] == 1  # the blocks share one graph
    assert list(model.state_dict()) == keys  # names unchanged: loading and LoRAs still fit


def test_the_compile_option_compiles_every_expert_after_the_lora_merge(cache, monkeypatch):
    original = PusaWanTransformer.compile_blocks
    compiled: list[PusaWanTransformer] = []

    def fast(self, backend="inductor", **options):
        compiled.append(self)
        return original(self, backend="aot_eager", **options)

    monkeypatch.setattr(PusaWanTransformer, "compile_blocks", fast)
    spec = load_pipeline_spec(PIPELINES / "tiny-wan22.toml")
    eager = load_pipeline(spec)
    spec_on = dataclasses.replace(spec, options=dataclasses.replace(spec.options, compile=True))
    pipe = load_pipeline(spec_on)
    assert compiled == list(pipe.experts.values())
    assert all(b._compiled_call_impl is not None for m in compiled for b in m.blocks)
    item = make_item(spec, steps=4)
    prepared = pipe.prepare(item)
    assert (pipe.sample(prepared) - eager.sample(prepared)).abs().max().item() <= 1e-5
    assert pipe.describe()["compile"] is True
