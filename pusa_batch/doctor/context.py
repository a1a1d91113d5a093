"""What the doctor's checks read: component paths, missing files, safetensors headers, and the
models built on the `meta` device from their configs (no memory, no tensor data).

Families differ only here: Wan has `transformer/` (and Wan2.2 `transformer_2/`) folders in
diffusers layout, a Wan VAE and umT5; Mochi has one genmo-layout DiT file
(`pusa_v0_dit.safetensors`, with an optional `config.json` beside it, else the 10B defaults), a
Mochi VAE and T5. The original layouts (models/layouts.py: Wan-AI's `Wan2.1_VAE.pth` and umT5
`.pth`, genmo's `encoder`/`decoder.safetensors`, a single-file DiT) are read the same way, their
headers renamed to the loading class's keys (`component_tensors`) and their modules built on
`meta` from their shapes; a `.pth` is memory-mapped, its tensors never read.

Weights named by URL are read through header twins (`pipelines.staging.header_twins`): their
small files fetched whole, each safetensors header by two range reads, no tensor data.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pusa_batch.errors import CheckpointError
from pusa_batch.models.layouts import component_problems
from pusa_batch.models.loading import (
    read_header,
    read_transformer_config,
    weight_files,
)
from pusa_batch.models.mochi import CHECKPOINT_NAME, PusaMochiTransformer, load_mochi_config
from pusa_batch.models.original_headers import original_header, original_on_meta
from pusa_batch.models.tiny import TINY_VERSION, default_cache_root, tiny_marker
from pusa_batch.models.wan import PusaWanTransformer
from pusa_batch.pipelines.device import resolve_device, resolve_dtype
from pusa_batch.pipelines.spec import PipelineSpec
from pusa_batch.pipelines.staging import header_twins

GIB = 1024**3
_DTYPE_NAMES = {"F32": "fp32", "BF16": "bf16", "F16": "fp16", "F64": "fp64"}
_TORCH_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}
_TOKENIZER_FILES = ("tokenizer.json", "spiece.model", "tokenizer_config.json")
_TORCH_SUFFIXES = (".pt", ".pth", ".bin")

Denoiser = PusaWanTransformer | PusaMochiTransformer


@dataclass(frozen=True)
class Check:
    """One check's verdict. `detail` is the whole finding on one line (for errors and logs);
    `lines`, when given, is the same finding as the terminal shows it, one entry per line."""

    name: str
    status: str  # "ok" | "warn" | "fail"
    detail: str
    lines: tuple[str, ...] = ()


@dataclass(frozen=True)
class Tensors:
    """One component's weights as its safetensors headers describe them."""

    path: Path
    entries: dict[str, tuple[str, tuple[int, ...]]]  # key -> (dtype, shape)

    def numel(self) -> int:
        return sum(math.prod(shape) for _, shape in self.entries.values())

    def dtypes(self) -> list[str]:
        return sorted({_DTYPE_NAMES.get(d, d.lower()) for d, _ in self.entries.values()})

    def as_meta(self) -> dict[str, torch.Tensor]:
        return {k: torch.empty(s, device="meta") for k, (_, s) in self.entries.items()}


def read_tensors(path: Path) -> Tensors:
    """Header union over every shard; fails on keys in two shards or truncated files.

    A `.pt` file (a Mochi DiT may be one) is memory-mapped: shapes and dtypes, no data read.
    """
    return Tensors(path, read_header(path))


def tiny_cache_dir(kind: str) -> Path:
    """Where `ensure_tiny_model(kind)` keeps (or would build) the tiny twin."""
    return default_cache_root() / f"{kind}-{TINY_VERSION}"


def models(spec: PipelineSpec) -> list[str]:
    """The components with weights: the denoiser(s), the VAE and the text encoder."""
    return [*spec.experts, "vae", "text_encoder"]


class Context:
    """What the checks share: paths, file problems, and headers and meta models read once."""

    def __init__(self, spec: PipelineSpec, memory_budget: int | None):
        twins = header_twins(spec)  # weight URLs: small files whole, safetensors headers by range
        self.spec = spec = twins.spec
        self.memory_budget = memory_budget
        self.paths = component_paths(spec)
        found = {} if self.paths is None else file_problems(spec, self.paths)
        self.problems = {**found, **twins.problems}
        self.shown = twins.shown  # messages name a URL, not the cache folder standing for it
        self._cache: dict[tuple[str, str], Any] = {}
        # the memory estimate's parts per "device/dtype": remembered from an earlier pass over
        # the same files (`remembered.py`), and measured in this one
        self.known_parts: dict[str, dict[str, int]] = {}
        self.measured_parts: dict[str, dict[str, int]] = {}

    def _once(self, key: tuple[str, str], make: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def tensors(self, component: str) -> Tensors:
        return self._once(
            ("tensors", component),
            lambda: component_tensors(self.spec.family, component, self.paths[component]),
        )

    def expert(self, component: str) -> Denoiser:
        """The denoiser built on `meta` from its config (no memory, no data)."""
        model = PusaMochiTransformer if self.spec.family == "mochi" else PusaWanTransformer

        def make() -> Denoiser:
            config = self.expert_config(component)
            with torch.device("meta"):
                return model(config)

        return self._once(("expert", component), make)

    def expert_config(self, component: str) -> Any:
        """The denoiser's config, read from its files (building the model costs far more)."""
        mochi = self.spec.family == "mochi"
        build = load_mochi_config if mochi else read_transformer_config
        return self._once(("config", component), lambda: build(self.paths[component]))

    def module(self, component: str) -> torch.nn.Module:
        """The VAE or text encoder built on `meta` from its config.json."""
        return self._once(
            ("module", component),
            lambda: build_on_meta(self.spec.family, component, self.paths[component]),
        )

    def run(self) -> tuple[torch.device, torch.dtype]:
        device = resolve_device(self.spec.options.device)
        return device, resolve_dtype(self.spec.options.dtype, device)


def build_on_meta(family: str, component: str, path: Path) -> torch.nn.Module:
    """The VAE (diffusers) or text encoder (transformers) class the family's pipeline loads."""
    from diffusers import AutoencoderKLMochi, AutoencoderKLWan
    from transformers import T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

    original = original_on_meta(family, component, path)  # Wan2.1_VAE.pth, umT5 .pth, genmo VAE
    if original is not None:
        return original
    mochi = family == "mochi"
    with torch.device("meta"):
        if component == "vae":
            vae = AutoencoderKLMochi if mochi else AutoencoderKLWan
            return vae.from_config(vae.load_config(str(path)))
        if mochi:
            return T5EncoderModel(T5Config.from_pretrained(str(path)))
        return UMT5EncoderModel(UMT5Config.from_pretrained(str(path)))


def dit_config_source(dit: Path) -> str:
    """Which config a Mochi DiT is built from, as the loader decides it."""
    if (dit.parent / "config.json").is_file():
        return f"{dit.parent / 'config.json'}"
    return "the 10B defaults (no config.json beside it)"


def component_paths(spec: PipelineSpec) -> dict[str, Path] | None:
    """The spec's component paths; for a tiny spec the cached twin's, None if not built.

    A Mochi `dit` that names a folder means the `pusa_v0_dit.safetensors` in it, as the loader
    reads it.
    """
    if spec.weights.tiny is not None:
        root = tiny_cache_dir(spec.weights.tiny)
        if not (root / tiny_marker(spec.weights.tiny)).is_file():
            return None
        paths = {c: root / c for c in (*models(spec), "tokenizer")}
        if "dit" in paths:
            paths["dit"] = root / CHECKPOINT_NAME
        return paths
    paths = spec.weights.components()
    if "dit" in paths and paths["dit"].is_dir():
        paths["dit"] = paths["dit"] / CHECKPOINT_NAME
    return paths


def file_problems(spec: PipelineSpec, paths: dict[str, Path]) -> dict[str, list[str]]:
    """{component or lora[i]: problems} for every part whose files are missing."""
    problems = {c: _layout_problems(spec.family, c, p) for c, p in paths.items()}
    for i, lora in enumerate(spec.loras):
        problems[f"lora[{i}]"] = [] if lora.path.is_file() else [f"{lora.path} not found"]
    return {k: v for k, v in problems.items() if v}


def _layout_problems(family: str, component: str, path: Path) -> list[str]:
    """An original-layout file or folder (models/layouts.py) has its own checks."""
    found = component_problems(family, component, path)
    return _component_problems(component, path) if found is None else found


def component_tensors(family: str, component: str, path: Path) -> Tensors:
    """`read_tensors`, an original-layout VAE or umT5 under the loading class's names."""
    entries = original_header(family, component, path)
    return read_tensors(path) if entries is None else Tensors(path, entries)


def _component_problems(component: str, path: Path) -> list[str]:
    if component == "dit":
        return _dit_problems(path)
    if not path.is_dir():
        return [f"{path} is not a folder" if path.exists() else f"{path} missing"]
    if component == "tokenizer":
        found = any((path / f).is_file() for f in _TOKENIZER_FILES)
        return [] if found else [f"no {' / '.join(_TOKENIZER_FILES)} in {path}"]
    problems = [] if (path / "config.json").is_file() else [f"no config.json in {path}"]
    try:
        weight_files(path)
    except CheckpointError as e:
        problems.append(str(e))
    return problems


def _dit_problems(path: Path) -> list[str]:
    if not path.is_file():
        hint = f"download {CHECKPOINT_NAME} (RaphaelLiu/Pusa-V0.5)"
        return [f"{path} missing: {hint}" if not path.exists() else f"{path} is not a file"]
    if path.suffix != ".safetensors" and path.suffix not in _TORCH_SUFFIXES:
        return [f"{path}: unsupported checkpoint format; use .safetensors or .pt"]
    return []


def file_count(paths: dict[str, Path]) -> int:
    return sum(len(list(p.iterdir())) if p.is_dir() else 1 for p in paths.values())


def count(n: int) -> str:
    return _human(n, ((1e9, "B"), (1e6, "M"), (1e3, "K"), (1, "")))


def fmt_bytes(n: int) -> str:
    return _human(n, ((GIB, " GiB"), (1024**2, " MiB"), (1024, " KiB"), (1, " B")))


def _human(n: int, units: tuple[tuple[float, str], ...]) -> str:
    scale, unit = next((s, u) for s, u in units if n >= s or s == 1)
    return f"{n / scale:.3g}{unit}"
