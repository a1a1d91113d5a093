"""A tiny Pusa V0.5 twin in the on-disk layout our Mochi loaders read.

    out_dir/
      pusa_v0_dit.safetensors   genmo key names, tiny dims
      config.json               the tiny dims (the real release ships no config.json; the
                                loader then uses the 10B defaults)
      vae/                      diffusers AutoencoderKLMochi (12 latent channels, 6x time, 8x space)
      text_encoder/             transformers T5EncoderModel
      tokenizer/                a T5 tokenizer (Unigram over a small word list), built offline

`layout="original"` writes the VAE as genmo's two halves instead, `encoder.safetensors` and
`decoder.safetensors` beside the DiT (Pusa V0.5's `RaphaelLiu/Pusa-V0.5` layout), the same
weights renamed by `models.original_mochi.diffusers_to_genmo_vae`; the T5 stays in
`text_encoder/` and `tokenizer/` (the real release ships none: its TOML names them).

Every file is a pure function of `seed`: the same seed gives the same bytes.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from pusa_batch.models.mochi import CHECKPOINT_NAME, TEXT_TOKENS, MochiConfig, PusaMochiTransformer

# Dims chosen so genmo's FeedForward width (rounded to 256) equals diffusers' (4 * 2 * d) // 3.
TINY_CONFIG = MochiConfig(
    depth=2,
    num_heads=4,
    hidden_size_x=192,
    hidden_size_y=96,
    t5_feat_dim=32,
    t5_token_length=TEXT_TOKENS,
)
WORD_LIST = (
    "a an the of and in on at with to from over under near into video photo shot scene "
    "cat dog fox bird horse fish person man woman child car boat train tree flower river "
    "sea sky sun moon city street forest mountain hill field beach snow rain fire water "
    "red green blue white black yellow orange small big old young bright dark slow fast "
    "runs walks flies swims jumps sits looks turns moves stands camera pans zooms close up"
)


def tiny_vocab() -> list[tuple[str, float]]:
    """T5 layout: <pad> 0, </s> 1, <unk> 2, then scored pieces ("▁" marks a word start)."""
    words = WORD_LIST.split()
    chars = sorted(set("".join(words)) | set("0123456789.,!?'-"))
    scored = [(f"\u2581{w}", -float(i + 1)) for i, w in enumerate(words)]
    pieces = [("\u2581", -200.0)] + [(c, -300.0) for c in chars]
    return [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + scored + pieces


def init_tiny_weights(model: torch.nn.Module, seed: int) -> None:
    """Seeded, non-trivial weights: fan-in scaled matrices, norms near 1, small biases."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            noise = torch.randn(p.shape, generator=gen)
            if name == "pos_frequencies":
                p.copy_(noise * 0.1)
            elif p.ndim >= 2:
                p.copy_(noise / p[0].numel() ** 0.5)
            elif "norm" in name:
                p.copy_(1 + 0.1 * noise)
            else:
                p.copy_(0.1 * noise)


def make_tiny_mochi_dit(seed: int = 0, config: MochiConfig = TINY_CONFIG) -> PusaMochiTransformer:
    model = PusaMochiTransformer(config)
    init_tiny_weights(model, seed)
    return model.eval()


def _write_tokenizer(out: Path) -> None:
    from transformers import T5Tokenizer

    tokenizer = T5Tokenizer(vocab=tiny_vocab(), extra_ids=0, model_max_length=512)
    tokenizer.save_pretrained(out)


def _write_text_encoder(out: Path, seed: int, dim: int) -> None:
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=len(tiny_vocab()),
        d_model=dim,
        d_kv=8,
        d_ff=64,
        num_layers=1,
        num_heads=4,
        feed_forward_proj="gated-gelu",
        relative_attention_num_buckets=8,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        T5EncoderModel(config).eval().save_pretrained(out)


def _build_vae(seed: int):
    from diffusers import AutoencoderKLMochi

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        vae = AutoencoderKLMochi(
            encoder_block_out_channels=(32, 32, 32, 32),
            decoder_block_out_channels=(32, 32, 32, 32),
            layers_per_block=(1, 1, 1, 1, 1),
            add_attention_block=(False, False, False, False, False),
        )
    return vae.eval()


def _write_vae(out: Path, seed: int) -> None:
    _build_vae(seed).save_pretrained(out)


def _write_genmo_vae(out: Path, seed: int) -> None:
    """genmo's `encoder.safetensors` and `decoder.safetensors` in `out`."""
    from safetensors.torch import save_file

    from pusa_batch.models.original_mochi import diffusers_to_genmo_vae

    for name, state in diffusers_to_genmo_vae(_build_vae(seed)).items():
        save_file(state, str(out / name))


def make_tiny_mochi(out_dir: str | Path, *, seed: int = 0, layout: str = "diffusers") -> Path:
    """Write the tiny twin to `out_dir` (created if needed) in `layout` ("diffusers": the VAE
    in `vae/`; "original": genmo's VAE halves in the root) and return it."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dit = make_tiny_mochi_dit(seed)
    state = {k: v.contiguous() for k, v in dit.state_dict().items()}
    save_file(state, str(out / CHECKPOINT_NAME))
    (out / "config.json").write_text(json.dumps(TINY_CONFIG.to_dict(), indent=2) + "\n")
    if layout == "original":
        _write_genmo_vae(out, seed + 1)
    else:
        _write_vae(out / "vae", seed + 1)
    _write_text_encoder(out / "text_encoder", seed + 2, TINY_CONFIG.t5_feat_dim)
    _write_tokenizer(out / "tokenizer")
    return out
