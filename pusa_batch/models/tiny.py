"""Tiny twins of the real Wan checkpoints: same classes, same on-disk layout, random weights.

`make_tiny_model("wan2.1", dir)` writes what `Wan-AI/Wan2.1-T2V-14B-Diffusers` holds
(`model_index.json`, `transformer/`, `vae/`, `text_encoder/`, `tokenizer/`, `scheduler/`), built
by diffusers' and transformers' own `save_pretrained`, so file names, config keys and state-dict
key names are theirs. `wan2.2` adds `transformer_2/` (the low-noise expert) and `boundary_ratio`,
as `Wan-AI/Wan2.2-T2V-A14B-Diffusers` does. `mochi` is the Pusa V0.5 twin written by
`models/tiny_mochi.make_tiny_mochi` (`pusa_v0_dit.safetensors`, `vae/`, `text_encoder/`,
`tokenizer/`). Weights come from a fixed seed: the same bytes every time with the same library
versions.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from pathlib import Path

from pusa_batch.errors import PipelineError

TINY_VERSION = "v1"
TINY_KINDS = ("wan2.1", "wan2.2", "mochi")
TINY_SEED = 20250717

# Transformer: 4 heads x 16 = 64 wide, 2 blocks; RoPE splits the 16 head dims into t8/h4/w4.
TRANSFORMER_CONFIG = {
    "patch_size": (1, 2, 2),
    "num_attention_heads": 4,
    "attention_head_dim": 16,
    "in_channels": 16,
    "out_channels": 16,
    "text_dim": 32,
    "freq_dim": 256,
    "ffn_dim": 128,
    "num_layers": 2,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
    "rope_max_seq_len": 1024,
}

# VAE: the real z_dim 16 and 4x temporal / 8x spatial compression, only narrower.
VAE_CONFIG = {
    "base_dim": 8,
    "z_dim": 16,
    "dim_mult": [1, 2, 2, 2],
    "num_res_blocks": 1,
    "attn_scales": [],
    "temperal_downsample": [False, True, True],
}

TEXT_ENCODER_CONFIG = {
    "d_model": 32,
    "d_kv": 8,
    "d_ff": 64,
    "num_layers": 2,
    "num_decoder_layers": 0,
    "num_heads": 4,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "feed_forward_proj": "gated-gelu",
    "dropout_rate": 0.0,
    "pad_token_id": 0,
    "eos_token_id": 1,
    "decoder_start_token_id": 0,
}

BOUNDARY_RATIO = 0.875

# A small vocabulary of words that video prompts use; everything else falls back to characters.
_WORD_TEXT = """
a an the and or of in on at to with from by for over under into through near behind above
is are was be being slowly quickly gently camera pans zooms tracks static shot close up wide
aerial view scene video frame light dark bright sunset sunrise night day morning evening rain
snow fog wind water ocean sea river lake beach wave waves sky cloud clouds sun moon star stars
city street road car cars train bus bike bicycle boat ship plane bird birds cat dog horse fish
man woman boy girl child people person crowd walking running dancing jumping flying swimming
sitting standing smiling looking playing holding eating drinking talking singing riding
tree trees forest grass flower flowers mountain mountains hill field garden park house room
window door table chair red green blue yellow white black orange purple pink gray brown golden
small large big tiny old young new beautiful cinematic realistic detailed blurry overexposed
static blurred details subtitles style artwork painting still overall quality worst low jpeg
compression artifacts ugly incomplete extra fingers poorly drawn hands faces deformed
disfigured misshapen limbs fused motionless cluttered background three legs many walking
backwards fire smoke glass metal wood stone snowflakes leaves falling rising moving turning
"""


def _check_kind(kind: str) -> None:
    if kind not in TINY_KINDS:
        raise PipelineError(f"unknown tiny model kind {kind!r}: use one of {', '.join(TINY_KINDS)}")


def tiny_vocab() -> list[tuple[str, float]]:
    """T5-style Unigram vocabulary: <pad>=0, </s>=1, <unk>=2, then words, then characters."""
    chars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,;:!?'\"-()/&%+"
    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -3.0)]
    seen = {p for p, _ in pieces}
    for word in _WORD_TEXT.split():
        piece = "▁" + word
        if piece not in seen:
            seen.add(piece)
            pieces.append((piece, -5.0 - 0.01 * len(pieces)))
    for ch in chars:
        for piece in (ch, "▁" + ch):
            if piece not in seen:
                seen.add(piece)
                pieces.append((piece, -12.0))
    return pieces


def _build_tokenizer():
    from transformers import T5Tokenizer

    return T5Tokenizer(vocab=tiny_vocab(), extra_ids=0, model_max_length=512)


_SEED_LOCK = threading.Lock()


def _seeded(seed: int, build):
    """Build a module from a seeded RNG without touching the caller's global RNG.

    torch's global RNG is process-wide, so concurrent builds in threads take turns.
    """
    import torch

    with _SEED_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build().eval()


def _build_components(kind: str) -> dict:
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    tokenizer = _build_tokenizer()
    text_config = UMT5Config(vocab_size=len(tokenizer), **TEXT_ENCODER_CONFIG)
    parts = {
        "tokenizer": tokenizer,
        "text_encoder": _seeded(TINY_SEED, lambda: UMT5EncoderModel(text_config)),
        "vae": _seeded(TINY_SEED + 1, lambda: AutoencoderKLWan(**VAE_CONFIG)),
        "transformer": _seeded(TINY_SEED + 2, lambda: WanTransformer3DModel(**TRANSFORMER_CONFIG)),
        "scheduler": UniPCMultistepScheduler(
            prediction_type="flow_prediction",
            use_flow_sigmas=True,
            num_train_timesteps=1000,
            flow_shift=5.0,
        ),
    }
    if kind == "wan2.2":
        parts["transformer_2"] = _seeded(
            TINY_SEED + 3, lambda: WanTransformer3DModel(**TRANSFORMER_CONFIG)
        )
        parts["boundary_ratio"] = BOUNDARY_RATIO
    return parts


def tiny_marker(kind: str) -> str:
    """The file whose presence says a cached `kind` twin is complete (it is renamed into place)."""
    _check_kind(kind)
    return "pusa_v0_dit.safetensors" if kind == "mochi" else "model_index.json"


def make_tiny_model(kind: str, out_dir: str | os.PathLike) -> Path:
    """Write a tiny `kind` twin ("wan2.1", "wan2.2" or "mochi") into `out_dir` (created; must
    be empty)."""
    _check_kind(kind)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise PipelineError(f"cannot write a tiny model into {out}: the folder is not empty")
    out.mkdir(parents=True, exist_ok=True)
    from pusa_batch.models.text import no_hub_progress_bars

    if kind == "mochi":
        from pusa_batch.models.tiny_mochi import make_tiny_mochi

        with _SEED_LOCK, no_hub_progress_bars():
            return make_tiny_mochi(out, seed=TINY_SEED)
    from diffusers import WanPipeline

    pipe = WanPipeline(**_build_components(kind))
    with no_hub_progress_bars():
        pipe.save_pretrained(out, safe_serialization=True)
    return out


def default_cache_root() -> Path:
    root = os.environ.get("PUSA_BATCH_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "pusa-batch"
    return base / "tiny"


def ensure_tiny_model(kind: str, cache_root: str | os.PathLike | None = None) -> Path:
    """The tiny `kind` twin in the cache, built on first use.

    Safe when several processes call it at once: each builds in its own temporary folder next to
    the target and renames it into place; the losers of the race discard their copy.
    """
    _check_kind(kind)
    root = Path(cache_root) if cache_root is not None else default_cache_root()
    target = root / f"{kind}-{TINY_VERSION}"
    marker = tiny_marker(kind)
    if (target / marker).is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{kind}-building-", dir=root))
    try:
        make_tiny_model(kind, tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / marker).is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
