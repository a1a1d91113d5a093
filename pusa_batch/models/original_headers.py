"""Original-layout components as `doctor` sees them: header entries under the names of the class
our pipeline loads them into, and that class built on `meta` from the shapes. No tensor data is
read: safetensors headers, and a `.pth` memory-mapped through `torch.load(weights_only=True,
mmap=True)` (its pickle is read, its tensors are not).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from pusa_batch.models.layouts import MOCHI_VAE_FILES, component_kind
from pusa_batch.models.loading import read_header
from pusa_batch.models.original_mochi import (
    genmo_halves_header,
    genmo_to_diffusers_entries,
    genmo_vae_on_meta,
)
from pusa_batch.models.original_wan import umt5_name, umt5_on_meta, wan_vae_names, wan_vae_on_meta


def original_header(
    family: str, component: str, path: Path
) -> dict[str, tuple[str, tuple[int, ...]]] | None:
    """{key: (dtype, shape)} of an original-layout VAE or umT5 under the names of the class our
    pipeline loads it into (`AutoencoderKLWan`, `AutoencoderKLMochi`, `UMT5EncoderModel`), read
    without tensor data (safetensors headers; a `.pth` memory-mapped through
    `torch.load(weights_only=True, mmap=True)`, so only its pickle is read). Keys the map does
    not know keep their own name, for the strict check to name. None for any other path."""
    kind = component_kind(family, component, path)
    if kind == "wan-vae-file":
        entries = read_header(path)
        vae = wan_vae_on_meta({k: s for k, (_, s) in entries.items()}, source=str(path))
        to_new = {old: new for new, old in wan_vae_names(vae).items()}
        return {to_new.get(k, k): v for k, v in entries.items()}
    if kind == "umt5-file":
        return {(umt5_name(k) or k): v for k, v in read_header(path).items()}
    if kind == "genmo-vae":
        halves = genmo_halves_header(path)
        vae = _genmo_on_meta(halves, path, genmo_vae_on_meta)
        return genmo_to_diffusers_entries(halves, vae)
    return None


def original_on_meta(family: str, component: str, path: Path) -> torch.nn.Module | None:
    """The VAE or text encoder an original-layout file describes, built on `meta` from its
    shapes (the loaders build the same); None for any other path."""
    kind = component_kind(family, component, path)
    if kind not in ("wan-vae-file", "umt5-file", "genmo-vae"):
        return None
    if kind == "genmo-vae":
        return _genmo_on_meta(genmo_halves_header(path), path, genmo_vae_on_meta)
    shapes = {k: s for k, (_, s) in read_header(path).items()}
    build = wan_vae_on_meta if kind == "wan-vae-file" else umt5_on_meta
    return build(shapes, source=str(path))


def _genmo_on_meta(halves: Mapping[str, Mapping[str, Any]], path: Path, build) -> Any:
    encoder, decoder = ({k: s for k, (_, s) in halves[n].items()} for n in MOCHI_VAE_FILES)
    return build(encoder, decoder, source=str(path))
