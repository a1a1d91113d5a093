"""PusaWanTransformer: diffusers parity, frame-level timesteps, config and dtype handling."""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch
from diffusers import WanTransformer3DModel
from torch.utils._python_dispatch import TorchDispatchMode

from pusa_batch.errors import PipelineError
from pusa_batch.models.wan import PusaWanTransformer, WanConfig

TINY = {
    "patch_size": (1, 2, 2),
    "num_attention_heads": 2,
    "attention_head_dim": 16,
    "in_channels": 16,
    "out_channels": 16,
    "text_dim": 32,
    "freq_dim": 32,
    "ffn_dim": 64,
    "num_layers": 2,
    "rope_max_seq_len": 64,
}
B, F, H, W = 2, 3, 4, 6
TOKENS_PER_FRAME = (H // 2) * (W // 2)


@pytest.fixture(scope="module")
def pair() -> tuple[WanTransformer3DModel, PusaWanTransformer]:
    """diffusers' model and ours holding the same random weights (perturbed off the init)."""
    torch.manual_seed(0)
    ref = WanTransformer3DModel(**TINY).eval()
    weights = {k: v + 0.02 * torch.randn_like(v) for k, v in ref.state_dict().items()}
    ref.load_state_dict(weights)
    ours = PusaWanTransformer(WanConfig.from_dict(dict(ref.config))).eval()
    ours.load_state_dict(weights, strict=True)
    return ref, ours


@pytest.fixture(scope="module")
def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(B, 16, F, H, W, generator=gen), torch.randn(B, 7, 32, generator=gen)


@torch.no_grad()
def test_scalar_timestep_matches_diffusers(pair, inputs):
    ref, ours = pair
    x, ctx = inputs
    t = torch.tensor([700.0, 250.0])
    expected = ref(x, t, ctx, return_dict=False)[0]
    assert (ours(x, t, ctx) - expected).abs().max().item() <= 1e-5


@torch.no_grad()
def test_per_frame_timesteps_match_diffusers_per_token_path(pair, inputs):
    ref, ours = pair
    x, ctx = inputs
    per_frame = torch.tensor([[900.0, 500.0, 0.0], [999.0, 10.0, 300.0]])
    per_token = per_frame.repeat_interleave(TOKENS_PER_FRAME, dim=1)
    expected = ref(x, per_token, ctx, return_dict=False)[0]
    got = ours(x, per_frame, ctx)
    assert got.shape == x.shape
    assert (got - expected).abs().max().item() <= 1e-5


@torch.no_grad()
def test_uniform_frame_vector_equals_scalar_exactly(pair, inputs):
    _, ours = pair
    x, ctx = inputs
    t = torch.tensor([640.0, 37.0])
    assert torch.equal(ours(x, t[:, None].expand(B, F), ctx), ours(x, t, ctx))


@torch.no_grad()
def test_a_frame_timestep_changes_the_output(pair, inputs):
    _, ours = pair
    x, ctx = inputs
    base = torch.full((B, F), 500.0)
    changed = base.clone()
    changed[:, 0] = 0.0
    assert not torch.allclose(ours(x, base, ctx), ours(x, changed, ctx))


def test_state_dict_keys_and_shapes_are_diffusers(pair):
    ref, ours = pair
    theirs = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == theirs


def test_timestep_of_wrong_width_is_refused(pair, inputs):
    _, ours = pair
    x, ctx = inputs
    with pytest.raises(ValueError, match=r"\(B,\) or \(B, 3\)"):
        ours(x, torch.zeros(B, F + 1), ctx)


def test_config_ignores_private_keys_and_names_unknown_ones():
    cfg = WanConfig.from_dict({"_class_name": "WanTransformer3DModel", **TINY})
    assert cfg.inner_dim == 32 and cfg.patch_size == (1, 2, 2)
    with pytest.raises(PipelineError, match="num_blocks"):
        WanConfig.from_dict({**TINY, "num_blocks": 3})


def test_config_round_trips_through_to_dict():
    cfg = WanConfig.from_dict(TINY)
    assert WanConfig.from_dict(cfg.to_dict()) == cfg


def test_i2v_config_is_refused_with_a_hint():
    with pytest.raises(PipelineError, match="I2V"):
        WanConfig.from_dict({**TINY, "image_dim": 1280, "added_kv_proj_dim": 32})


def test_flash_attention_without_the_package_names_the_fix():
    if importlib.util.find_spec("flash_attn") is not None:
        pytest.skip("flash-attn is installed here")
    with pytest.raises(PipelineError, match="flash-attn"):
        PusaWanTransformer(WanConfig.from_dict(TINY), attention="flash")


def test_unknown_attention_backend_is_refused():
    with pytest.raises(PipelineError, match="sdpa"):
        PusaWanTransformer(WanConfig.from_dict(TINY), attention="xformers")


@torch.no_grad()
def test_bf16_keeps_norms_modulation_and_time_embedder_in_fp32(pair, inputs):
    _, ours = pair
    model = PusaWanTransformer(WanConfig.from_dict(TINY))
    model.load_state_dict(ours.state_dict())
    model.set_dtype(torch.bfloat16)
    dtypes = {name: p.dtype for name, p in model.named_parameters()}
    fp32 = {n for n, d in dtypes.items() if d == torch.float32}
    assert fp32 == {
        n for n in dtypes if "scale_shift_table" in n or "time_embedder" in n or ".norm2." in n
    }
    x, ctx = inputs
    t = torch.tensor([700.0, 250.0])
    out = model(x, t, ctx)
    assert out.dtype == torch.bfloat16
    assert (out.float() - ours(x, t, ctx)).abs().max().item() < 0.1


class LargestTokenTensor(TorchDispatchMode):
    """Records the largest tensor with a token axis (N or B*N) that any op produces."""

    def __init__(self, tokens: int):
        super().__init__()
        self.token_dims = {tokens, B * tokens}
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and self.token_dims & set(t.shape):
                self.numel = max(self.numel, t.numel())
        return out


@torch.no_grad()
def test_no_per_token_modulation_tensor_is_built(pair, inputs):
    ref, ours = pair
    x, ctx = inputs
    tokens = F * TOKENS_PER_FRAME
    per_frame = torch.tensor([[900.0, 500.0, 0.0], [999.0, 10.0, 300.0]])
    per_token_6d = B * tokens * 6 * ours.config.inner_dim
    with LargestTokenTensor(tokens) as theirs:
        ref(x, per_frame.repeat_interleave(TOKENS_PER_FRAME, dim=1), ctx, return_dict=False)
    with LargestTokenTensor(tokens) as mine:
        ours(x, per_frame, ctx)
    assert theirs.numel >= per_token_6d  # the probe does see diffusers' (B, N, 6, D) tensor
    assert mine.numel <= per_token_6d / 3  # the FFN's (B, N, ffn_dim = 2D) is the largest


@torch.no_grad()
def test_feed_forward_in_token_chunks_matches_diffusers(pair, inputs):
    ref, ours = pair
    chunked = copy.deepcopy(ours)
    for block in chunked.blocks:
        block.ffn.min_chunk_tokens = 5  # 18 tokens -> chunks of 5, 5, 5, 3
    x, ctx = inputs
    per_frame = torch.tensor([[900.0, 500.0, 0.0], [999.0, 10.0, 300.0]])
    expected = ref(x, per_frame.repeat_interleave(TOKENS_PER_FRAME, dim=1), ctx, return_dict=False)
    assert (chunked(x, per_frame, ctx) - expected[0]).abs().max().item() <= 1e-5
