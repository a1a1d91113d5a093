"""Pusa V0.5 Mochi DiT: parity with diffusers' Mochi, and the per-frame timestep behaviour."""

import pytest
import torch
from diffusers import MochiTransformer3DModel

from pusa_batch.models.mochi import MochiConfig, PusaMochiTransformer
from pusa_batch.models.mochi_keys import genmo_to_diffusers
from pusa_batch.models.tiny_mochi import TINY_CONFIG, make_tiny_mochi_dit

B, T, H, W, L = 2, 3, 8, 8, 24


@pytest.fixture(scope="module")
def model() -> PusaMochiTransformer:
    return make_tiny_mochi_dit(seed=0)


@pytest.fixture(scope="module")
def inputs() -> dict:
    gen = torch.Generator().manual_seed(1)
    mask = torch.zeros(B, L, dtype=torch.bool)
    mask[0, :7] = True  # sample 1 is an empty prompt: no valid text token at all
    return {
        "x": torch.randn(B, 12, T, H, W, generator=gen),
        "t5_feat": torch.randn(B, L, TINY_CONFIG.t5_feat_dim, generator=gen),
        "t5_mask": mask,
    }


def run(model, inputs, sigma, **overrides):
    with torch.no_grad():
        return model(**{**inputs, **overrides}, sigma=sigma)


def diffusers_twin(model: PusaMochiTransformer, text_len: int) -> MochiTransformer3DModel:
    cfg = model.config
    twin = MochiTransformer3DModel(
        patch_size=cfg.patch_size,
        num_attention_heads=cfg.num_heads,
        attention_head_dim=cfg.head_dim,
        num_layers=cfg.depth,
        pooled_projection_dim=cfg.hidden_size_y,
        in_channels=cfg.in_channels,
        text_embed_dim=cfg.t5_feat_dim,
        max_sequence_length=text_len,
    )
    twin.load_state_dict(genmo_to_diffusers(model.state_dict()), strict=True)
    return twin.eval()


def test_uniform_sigma_matches_diffusers_mochi(model, inputs):
    sigma = torch.tensor([0.3, 0.9])
    twin = diffusers_twin(model, L)
    with torch.no_grad():
        # diffusers' MochiPipeline feeds timestep = 1000 * (1 - sigma) (inverted flow-match sigmas)
        expected = twin(
            hidden_states=inputs["x"],
            encoder_hidden_states=inputs["t5_feat"],
            timestep=(1 - sigma) * 1000,
            encoder_attention_mask=inputs["t5_mask"],
            return_dict=False,
        )[0]
    ours = run(model, inputs, sigma)
    assert ours.shape == inputs["x"].shape
    assert (ours - expected).abs().max().item() <= 1e-5


def test_uniform_frame_vector_equals_scalar_sigma(model, inputs):
    sigma = torch.tensor([0.25, 0.75])
    per_frame = sigma[:, None].expand(B, T).clone()
    assert torch.equal(run(model, inputs, sigma), run(model, inputs, per_frame))


def test_each_frame_is_modulated_by_its_own_sigma(model, inputs):
    # Swapping two frames' sigmas leaves the frame-mean (text modulation) unchanged; only the
    # per-frame modulation of the visual tokens can tell the two apart.
    a = torch.tensor([[0.2, 0.8, 0.5], [0.2, 0.8, 0.5]])
    b = torch.tensor([[0.8, 0.2, 0.5], [0.8, 0.2, 0.5]])
    diff = (run(model, inputs, a) - run(model, inputs, b)).abs()
    assert diff[:, :, :2].mean() > 1e-3


def test_a_frame_sigma_reaches_other_frames_only_through_attention(model, inputs):
    base = torch.full((B, T), 0.6)
    moved = base.clone()
    moved[:, 1] = 0.1
    full = (run(model, inputs, base) - run(model, inputs, moved)).abs()
    assert full[:, :, 1].mean() > 1e-3  # the frame itself changes
    assert full[:, :, [0, 2]].max() > 0  # others change too, through joint attention

    cut = make_tiny_mochi_dit(seed=0)
    with torch.no_grad():
        for block in cut.blocks:  # attention can no longer move information into x
            block.attn.proj_x.weight.zero_()
            block.attn.proj_x.bias.zero_()
    local = (run(cut, inputs, base) - run(cut, inputs, moved)).abs()
    assert local[:, :, 1].mean() > 1e-3
    assert local[:, :, [0, 2]].max() == 0


def test_padded_text_tokens_do_not_change_the_output(model, inputs):
    sigma = torch.tensor([0.5, 0.5])
    feat = inputs["t5_feat"].clone()
    feat[~inputs["t5_mask"]] = 100.0
    assert torch.allclose(run(model, inputs, sigma), run(model, inputs, sigma, t5_feat=feat))


def test_sigma_of_wrong_shape_is_rejected(model, inputs):
    with pytest.raises(ValueError, match=r"sigma must have shape \(2,\) or \(2, 3\)"):
        run(model, inputs, torch.zeros(B, T + 1))


def test_full_size_layout_has_genmo_names_and_ten_billion_parameters():
    with torch.device("meta"):
        model = PusaMochiTransformer(MochiConfig())
    keys = set(model.state_dict())
    last = "blocks.47."
    assert {"pos_frequencies", "t5_yproj.weight", "final_layer.mod.weight"} <= keys
    assert {
        last + "attn.qkv_y.weight",
        last + "mod_y.weight",
        last + "attn.q_norm_y.weight",
    } <= keys
    assert not any(k.startswith((last + "attn.proj_y", last + "mlp_y")) for k in keys)
    assert "blocks.46.attn.proj_y.weight" in keys and "blocks.46.mlp_y.w1.weight" in keys
    assert model.blocks[47].mod_y.weight.shape == (1536, 3072)
    assert model.blocks[0].mlp_x.w1.weight.shape == (2 * 8192, 3072)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(10.03e9, rel=1e-3)
