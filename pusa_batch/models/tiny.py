"""Tiny twins of the real Wan checkpoints: same classes, same on-disk layout, random weights.

`make_tiny_model("wan2.1", dir)` writes what `Wan-AI/Wan2.1-T2V-14B-Diffusers` holds
(`model_index.json`, `transformer/`, `vae/`, `text_encoder/`, `tokenizer/`, `scheduler/`), built
by diffusers' and transformers' own `save_pretrained`, so file names, config keys and state-dict
key names are theirs. `wan2.2` adds `transformer_2/` (the low-noise expert) and `boundary_ratio`,
as `Wan-AI/Wan2.2-T2V-A14B-Diffusers` does. `mochi` is the Pusa V0.5 twin written by
`models/tiny_mochi.make_tiny_mochi` (`pusa_v0_dit.safetensors`, `vae/`, `text_encoder/`,
`tokenizer/`). Weights come from a fixed seed: the same bytes every time with the same library
versions.

`layout="original"` writes the same weights (the same random state dicts, renamed by inverting
the key maps of `models.original_wan` / `models.original_mochi`) in the layout the Pusa README
has users download: for Wan, what `Wan-AI/Wan2.1-T2V-14B` holds (an original-format
`config.json` and the DiT in two `diffusion_pytorch_model-0000i-of-00002.safetensors` shards with
their index in the root, `Wan2.1_VAE.pth`, `models_t5_umt5-xxl-enc-bf16.pth` (fp32 here), the
tokenizer in `google/umt5-xxl/`), Wan2.2's experts in `high_noise_model/` and `low_noise_model/`
as `Wan-AI/Wan2.2-T2V-A14B` has them; for Mochi, genmo's VAE halves `encoder.safetensors` and
`decoder.safetensors` beside the DiT (`models/tiny_mochi.py`). The same seed in both layouts
gives the same weights, so both make the same videos.
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
TINY_LAYOUTS = ("diffusers", "original")
TINY_SEED = 20250717
TINY_SHARDS = 2  # the original-layout DiT is sharded, as the real one is (six shards)

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


def _check_kind(kind: str, layout: str = "diffusers") -> None:
    if kind not in TINY_KINDS:
        raise PipelineError(f"unknown tiny model kind {kind!r}: use one of {', '.join(TINY_KINDS)}")
    if layout not in TINY_LAYOUTS:
        raise PipelineError(
            f"unknown tiny model layout {layout!r}: use one of {', '.join(TINY_LAYOUTS)}"
        )


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


def _build_components(kind: str, seed: int = TINY_SEED) -> dict:
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    tokenizer = _build_tokenizer()
    text_config = UMT5Config(vocab_size=len(tokenizer), **TEXT_ENCODER_CONFIG)
    parts = {
        "tokenizer": tokenizer,
        "text_encoder": _seeded(seed, lambda: UMT5EncoderModel(text_config)),
        "vae": _seeded(seed + 1, lambda: AutoencoderKLWan(**VAE_CONFIG)),
        "transformer": _seeded(seed + 2, lambda: WanTransformer3DModel(**TRANSFORMER_CONFIG)),
        "scheduler": UniPCMultistepScheduler(
            prediction_type="flow_prediction",
            use_flow_sigmas=True,
            num_train_timesteps=1000,
            flow_shift=5.0,
        ),
    }
    if kind == "wan2.2":
        parts["transformer_2"] = _seeded(
            seed + 3, lambda: WanTransformer3DModel(**TRANSFORMER_CONFIG)
        )
        parts["boundary_ratio"] = BOUNDARY_RATIO
    return parts


def tiny_marker(kind: str, layout: str = "diffusers") -> str:
    """The file whose presence says a cached `kind` twin is complete (it is renamed into place)."""
    _check_kind(kind, layout)
    if kind == "mochi":
        return "pusa_v0_dit.safetensors"
    return "model_index.json" if layout == "diffusers" else "Wan2.1_VAE.pth"


def make_tiny_model(
    kind: str,
    out_dir: str | os.PathLike,
    *,
    layout: str = "diffusers",
    seed: int = TINY_SEED,
) -> Path:
    """Write a tiny `kind` twin ("wan2.1", "wan2.2" or "mochi") into `out_dir` (created; must
    be empty), in `layout` ("diffusers" or "original"); the same `seed` gives the same weights
    in either layout."""
    _check_kind(kind, layout)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise PipelineError(f"cannot write a tiny model into {out}: the folder is not empty")
    out.mkdir(parents=True, exist_ok=True)
    from pusa_batch.models.text import no_hub_progress_bars

    if kind == "mochi":
        from pusa_batch.models.tiny_mochi import make_tiny_mochi

        with _SEED_LOCK, no_hub_progress_bars():
            return make_tiny_mochi(out, seed=seed, layout=layout)
    parts = _build_components(kind, seed)
    if layout == "original":
        with no_hub_progress_bars():
            return _write_original_wan(parts, out)
    from diffusers import WanPipeline

    pipe = WanPipeline(**parts)
    with no_hub_progress_bars():
        pipe.save_pretrained(out, safe_serialization=True)
    return out


def original_wan_config(transformer) -> dict:
    """The original-format `config.json` Wan's `WanModel` writes (Wan2.1 `wan/modules/model.py`
    `WanModel.__init__`; `patch_size`, `text_dim`... are `ignore_for_config`, so not saved)."""
    c = transformer.config
    return {
        "_class_name": "WanModel",
        "_diffusers_version": "0.30.0",
        "dim": c.num_attention_heads * c.attention_head_dim,
        "eps": c.eps,
        "ffn_dim": c.ffn_dim,
        "freq_dim": c.freq_dim,
        "in_dim": c.in_channels,
        "model_type": "t2v",
        "num_heads": c.num_attention_heads,
        "num_layers": c.num_layers,
        "out_dim": c.out_channels,
        "text_len": 512,
    }


def _write_original_dit(transformer, folder: Path) -> None:
    """config.json + `diffusion_pytorch_model-0000i-of-0000n.safetensors` shards + their index,
    in original Wan key names."""
    import json

    from safetensors.torch import save_file

    from pusa_batch.models.wan_keys import diffusers_name_to_wan

    folder.mkdir(parents=True, exist_ok=True)
    weights = transformer.state_dict()
    state = {diffusers_name_to_wan(k): v.detach().clone() for k, v in weights.items()}
    keys = sorted(state)
    per_shard = -(-len(keys) // TINY_SHARDS)
    weight_map, total = {}, 0
    for i in range(TINY_SHARDS):
        name = f"diffusion_pytorch_model-{i + 1:05d}-of-{TINY_SHARDS:05d}.safetensors"
        part = {k: state[k].contiguous() for k in keys[i * per_shard : (i + 1) * per_shard]}
        save_file(part, str(folder / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, name))
        total += sum(v.numel() * v.element_size() for v in part.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps(index, indent=2, sort_keys=True) + "\n"
    )
    (folder / "config.json").write_text(
        json.dumps(original_wan_config(transformer), indent=2, sort_keys=True) + "\n"
    )


def _write_original_wan(parts: dict, out: Path) -> Path:
    import torch

    from pusa_batch.models.layouts import (
        WAN22_EXPERT_DIRS,
        WAN_T5_FILE,
        WAN_TOKENIZER_DIR,
        WAN_VAE_FILE,
    )
    from pusa_batch.models.original_wan import diffusers_to_wan_vae, transformers_to_umt5

    if "transformer_2" in parts:
        for component, folder in WAN22_EXPERT_DIRS.items():
            _write_original_dit(parts[component], out / folder)
    else:
        _write_original_dit(parts["transformer"], out)
    torch.save(diffusers_to_wan_vae(parts["vae"]), out / WAN_VAE_FILE)
    torch.save(transformers_to_umt5(parts["text_encoder"]), out / WAN_T5_FILE)
    parts["tokenizer"].save_pretrained(out / WAN_TOKENIZER_DIR)
    return out


def default_cache_root() -> Path:
    root = os.environ.get("PUSA_BATCH_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "pusa-batch"
    return base / "tiny"


def ensure_tiny_model(
    kind: str, cache_root: str | os.PathLike | None = None, *, layout: str = "diffusers"
) -> Path:
    """The tiny `kind` twin in the cache, built on first use (`layout` "original" in its own
    folder, `{kind}-original-{TINY_VERSION}`).

    Safe when several processes call it at once: each builds in its own temporary folder next to
    the target and renames it into place; the losers of the race discard their copy.
    """
    _check_kind(kind, layout)
    root = Path(cache_root) if cache_root is not None else default_cache_root()
    name = kind if layout == "diffusers" else f"{kind}-{layout}"
    target = root / f"{name}-{TINY_VERSION}"
    marker = tiny_marker(kind, layout)
    if (target / marker).is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{kind}-building-", dir=root))
    try:
        make_tiny_model(kind, tmp, layout=layout)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / marker).is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
