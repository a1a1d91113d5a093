"""On-disk layouts of the real checkpoints, told apart by the files a `[weights] root` holds.

Two layouts per family (`LAYOUTS`):

- `diffusers`: the `-Diffusers` repositories, one folder per component (`transformer/`,
  `transformer_2/`, `vae/`, `text_encoder/`, `tokenizer/`); for Mochi, our twin's layout: the genmo
  DiT file `pusa_v0_dit.safetensors` beside the diffusers `vae/`, `text_encoder/`, `tokenizer/`
  of `genmo/mochi-1-preview`.
- `original`: what the Pusa README has users download.
  Wan2.1 (`Wan-AI/Wan2.1-T2V-14B`): the DiT shards `diffusion_pytorch_model-0000i-of-0000n.
  safetensors` with their index and an original-format `config.json` in the root itself,
  `Wan2.1_VAE.pth`, `models_t5_umt5-xxl-enc-bf16.pth` and the tokenizer folder `google/umt5-xxl/`
  (Wan2.1 `wan/configs/wan_t2v_14B.py`: t5_checkpoint, t5_tokenizer, vae_checkpoint).
  Wan2.2 (`Wan-AI/Wan2.2-T2V-A14B`): the same files, the two experts in `high_noise_model/` and
  `low_noise_model/`. Mochi (`RaphaelLiu/Pusa-V0.5`, genmo's layout): `pusa_v0_dit.safetensors`
  (or genmo's own `dit.safetensors`) beside the VAE halves `encoder.safetensors` and
  `decoder.safetensors` (Pusa-VidGen `demos/cli_test_ti2v_release.py` 63-66); the T5 is not part
  of that repository (its `text_encoder`/`tokenizer` are given in the TOML, or sit in the root).

`root_components(root, family, declared)` gives each component's path under a root: the layout the
root's files show when it exists (`detect_layout`), else `declared` ("auto" reads as
"diffusers"). Each component's own path then says how to read it (`component_kind`): a folder or
a single `.safetensors` DiT (ComfyUI-style, `model.diffusion_model.` prefix), a Wan VAE or umT5 as
one original `.pth` file, a genmo VAE as the folder holding its two halves.

Torch-free: the spec parser imports this module.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

LAYOUTS = ("diffusers", "original")
DECLARED = ("auto", *LAYOUTS)

WAN_VAE_FILE = "Wan2.1_VAE.pth"
WAN_T5_FILE = "models_t5_umt5-xxl-enc-bf16.pth"
WAN_TOKENIZER_DIR = "google/umt5-xxl"
WAN22_EXPERT_DIRS = {"transformer": "high_noise_model", "transformer_2": "low_noise_model"}
MOCHI_DIT_FILES = ("pusa_v0_dit.safetensors", "dit.safetensors")  # Pusa V0.5, then genmo's own
MOCHI_VAE_FILES = ("encoder.safetensors", "decoder.safetensors")
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
_TOKENIZER_FILES = ("tokenizer.json", "spiece.model", "tokenizer_config.json")


def original_components(family: str) -> dict[str, str]:
    """{component: path relative to the root} of the original layout ("" is the root itself)."""
    if family == "mochi":
        return {
            "dit": MOCHI_DIT_FILES[0],
            "vae": "",
            "text_encoder": "text_encoder",
            "tokenizer": "tokenizer",
        }
    experts = dict(WAN22_EXPERT_DIRS) if family == "wan2.2" else {"transformer": ""}
    return {
        **experts,
        "vae": WAN_VAE_FILE,
        "text_encoder": WAN_T5_FILE,
        "tokenizer": WAN_TOKENIZER_DIR,
    }


def diffusers_components(family: str) -> dict[str, str]:
    comps = {
        "wan2.1": ("transformer", "vae", "text_encoder", "tokenizer"),
        "wan2.2": ("transformer", "transformer_2", "vae", "text_encoder", "tokenizer"),
        "mochi": ("dit", "vae", "text_encoder", "tokenizer"),
    }[family]
    return {c: MOCHI_DIT_FILES[0] if c == "dit" else c for c in comps}


def layout_components(family: str, layout: str) -> dict[str, str]:
    return original_components(family) if layout == "original" else diffusers_components(family)


def detect_layout(root: Path, family: str) -> str | None:
    """The layout ("diffusers" or "original") the files in `root` show; None when they show
    neither (or `root` is missing). A root holding both (a `-Diffusers` copy downloaded over the
    original) reads as diffusers."""
    if not root.is_dir():
        return None
    if family == "mochi":
        if (root / "vae").is_dir():
            return "diffusers"
        if any((root / name).is_file() for name in MOCHI_VAE_FILES):
            return "original"
        return None
    if (root / "model_index.json").is_file() or (root / "transformer").is_dir():
        return "diffusers"
    markers = [WAN_VAE_FILE, WAN_T5_FILE, WAN_TOKENIZER_DIR]
    if family == "wan2.2":
        markers += list(WAN22_EXPERT_DIRS.values())
    if any((root / m).exists() for m in markers) or _is_original_wan_config(root / "config.json"):
        return "original"
    return None


def _is_original_wan_config(path: Path) -> bool:
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(raw, dict) and "dim" in raw and "num_heads" in raw


def mochi_dit_file(root: Any) -> Any:
    """`pusa_v0_dit.safetensors`, or genmo's `dit.safetensors` when only that one is there."""
    first, second = (root / name for name in MOCHI_DIT_FILES)
    if isinstance(root, Path) and not first.exists() and second.is_file():
        return second
    return first


def root_components(root: Any, family: str, declared: str = "auto") -> dict[str, Any]:
    """{component: path} under `root` (a Path, or a URL that is not looked into): the detected
    layout, else `declared` ("auto": diffusers)."""
    found = detect_layout(root, family) if isinstance(root, Path) else None
    layout = found or (declared if declared in LAYOUTS else "diffusers")
    out = {}
    for comp, rel in layout_components(family, layout).items():
        if comp == "dit":
            out[comp] = mochi_dit_file(root)
        else:
            out[comp] = root / rel if rel else root
    return out


# ---------------------------------------------------------------- one component, from its path


def component_kind(family: str, component: str, path: Path) -> str:
    """How the loaders read `path`: "folder" (diffusers / transformers / original Wan DiT folder),
    "single-file" (one DiT `.safetensors`), "wan-vae-file", "umt5-file" (original `.pth` or
    `.safetensors`), "genmo-vae" (a folder with encoder/decoder.safetensors), "dit-file" (Mochi).
    """
    if component == "dit":
        return "dit-file"
    if component in ("transformer", "transformer_2"):
        return "single-file" if path.is_file() else "folder"
    if component == "vae":
        if family == "mochi":
            has_halves = all((path / name).is_file() for name in MOCHI_VAE_FILES)
            return "genmo-vae" if path.is_dir() and has_halves else "folder"
        return "wan-vae-file" if path.is_file() else "folder"
    if component == "text_encoder" and family != "mochi" and path.is_file():
        return "umt5-file"
    return "folder"


def is_original_path(family: str, component: str, path: Path) -> bool:
    """True for a path only the original-layout readers take (a file VAE/umT5/DiT, genmo VAE)."""
    kind = component_kind(family, component, path)
    return kind in ("single-file", "wan-vae-file", "umt5-file", "genmo-vae")


def component_problems(family: str, component: str, path: Path) -> list[str] | None:
    """What is missing for an original-layout component at `path`; None when `path` is not one
    (the caller's own checks apply)."""
    if component == "dit" or not path.exists():
        return None
    kind = component_kind(family, component, path)
    if kind == "genmo-vae" or (family == "mochi" and component == "vae" and _has_any_half(path)):
        missing = [name for name in MOCHI_VAE_FILES if not (path / name).is_file()]
        return [f"{path}: {' and '.join(missing)} missing (genmo's VAE)"] if missing else []
    if kind in ("single-file", "wan-vae-file", "umt5-file"):
        ok = path.suffix == ".safetensors" or path.suffix in TORCH_SUFFIXES
        return [] if ok else [f"{path}: unsupported checkpoint format; use .safetensors or .pth"]
    if component == "tokenizer" and path.is_dir():
        found = any((path / f).is_file() for f in _TOKENIZER_FILES)
        return [] if found else [f"no {' / '.join(_TOKENIZER_FILES)} in {path}"]
    return None


def _has_any_half(path: Path) -> bool:
    return path.is_dir() and any((path / name).is_file() for name in MOCHI_VAE_FILES)
