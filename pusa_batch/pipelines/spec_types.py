"""The frozen dataclasses a pipeline TOML becomes, and the families and components they name.

`PipelineSpec.identity()` hashes what decides the frames (weight names and sizes, LoRAs, the
options in `IDENTITY_OPTIONS`); `spec_parse.py` builds these from a TOML table and
`spec_checks.py` holds the checks of their values. `spec.py` is the face: import from there.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pusa_batch.errors import PipelineError, WeightsError
from pusa_batch.models.tiny import TINY_VERSION
from pusa_batch.pipelines.limits import DeviceSettings, Limits
from pusa_batch.weights import StagingConfig, WeightURL, list_source
from pusa_batch.weights.remote import SIDECAR_SUFFIX, SUMS_FILE
from pusa_batch.weights.urls import PROTOCOL_ALIASES

FAMILIES = ("wan2.1", "wan2.2", "mochi")
COMPONENTS = ("transformer", "transformer_2", "dit", "vae", "text_encoder", "tokenizer")
FAMILY_COMPONENTS = {
    "wan2.1": ("transformer", "vae", "text_encoder", "tokenizer"),
    "wan2.2": ("transformer", "transformer_2", "vae", "text_encoder", "tokenizer"),
    "mochi": ("dit", "vae", "text_encoder", "tokenizer"),
}
TEMPORAL_FACTORS = {"wan2.1": 4, "wan2.2": 4, "mochi": 6}
MOCHI_DIT_FILE = "pusa_v0_dit.safetensors"  # = models.mochi.CHECKPOINT_NAME (no torch import here)
MOCHI_ONLY_OPTIONS = ("condition_latents", "normalize_condition")
WeightPath = Path | WeightURL  # a local path, read in place, or a URL, staged on each node


@dataclass(frozen=True)
class Defaults:
    """Values an item gets when its manifest row leaves the column empty."""

    negative_prompt: str = ""
    num_frames: int = 81
    height: int = 720
    width: int = 1280
    fps: int = 25
    seed: int = 0
    steps: int = 30
    guidance_scale: float = 3.0
    shift: float = 5.0
    # The `fit` of a row that leaves it empty (`pusa_batch.item.FITS`): for image inputs, and
    # for video inputs (Pusa's scripts frame the two differently; see pusa-*.toml).
    image_fit: str = "cover"
    video_fit: str = "cover"


# Pusa V0.5's demos: 848x480x163 at 30 fps, cfg 4.5, seed 1710977262, negative prompt "" (the
# README examples use 30 steps, the scripts 64). `shift` is not used by the Mochi schedule.
MOCHI_DEFAULTS = Defaults(
    num_frames=163, height=480, width=848, fps=30, seed=1710977262, guidance_scale=4.5
)


@dataclass(frozen=True)
class Options:
    """How the pipeline runs. Only `IDENTITY_OPTIONS` and, where the family uses them, the
    schedule and Mochi conditioning options can change the frames (`PipelineSpec.identity`)."""

    dtype: str = "auto"
    device: str = "auto"
    batched_cfg: bool = False
    text_encoder_offload: bool = False
    vae_tiling: bool = False
    # The tile and stride of `vae_tiling`, in pixels (0: diffusers' own, 256 / 192). Upstream
    # Pusa tiles with (30, 52) / (15, 26) latents = 240x416 / 120x208 pixels (pusa-*.toml).
    vae_tile_height: int = 0
    vae_tile_width: int = 0
    vae_tile_stride_height: int = 0
    vae_tile_stride_width: int = 0
    attention: str = "sdpa"
    switch_boundary: float = 0.875
    text_max_length: int = 512
    idle_expert: str = "keep"
    prompt_cache_size: int = 256
    schedule: str = "auto"
    threshold_noise: float = 0.025
    condition_latents: str = "sample"
    normalize_condition: bool = False
    numerics: str = "fp32"  # "upstream": the official pipelines' bf16 start (docs/parity.md)
    deterministic: bool = False  # torch's determinism settings at load (docs/parity.md)
    compile: bool = False  # torch.compile each DiT block (Wan); same frames up to rounding
    # TeaCache (models/teacache.py): 0 = off; > 0 skips DiT blocks, upstream's tea_cache_l1_thresh
    teacache_threshold: float = 0.0
    teacache_model: str = "Wan2.1-T2V-14B"  # upstream's tea_cache_model_id: the polynomial


MOCHI_OPTIONS = Options(text_max_length=256)
IDENTITY_OPTIONS = ("dtype", "vae_tiling", "switch_boundary", "text_max_length")
DIFFUSERS_VAE_TILE = (256, 192)  # AutoencoderKLWan's own tile and stride, in pixels
VAE_TILE_OPTIONS = (
    "vae_tile_height",
    "vae_tile_width",
    "vae_tile_stride_height",
    "vae_tile_stride_width",
)


@dataclass(frozen=True)
class LoraSpec:
    path: WeightPath
    alpha: float
    kind: str = "pusa"
    expert: str = "high"
    download: str | None = None  # the shell command that fetches it, run in the TOML's folder


@dataclass(frozen=True)
class WeightPaths:
    """Resolved paths per component, or `tiny` = the kind of tiny twin to build and use."""

    tiny: str | None = None
    transformer: WeightPath | None = None
    transformer_2: WeightPath | None = None
    vae: WeightPath | None = None
    text_encoder: WeightPath | None = None
    tokenizer: WeightPath | None = None
    dit: WeightPath | None = None

    def components(self) -> dict[str, WeightPath]:
        return {c: getattr(self, c) for c in COMPONENTS if getattr(self, c) is not None}


@dataclass(frozen=True)
class PipelineSpec:
    name: str
    family: str
    source: Path
    weights: WeightPaths
    loras: tuple[LoraSpec, ...] = ()
    defaults: Defaults = field(default_factory=Defaults)
    options: Options = field(default_factory=Options)
    limits: Limits = field(default_factory=Limits)
    # (component, command) for each component a `[weights.download]` command fetches
    downloads: tuple[tuple[str, str], ...] = ()
    staging: StagingConfig = field(default_factory=StagingConfig)  # `[staging]`: URLs only
    device: DeviceSettings = field(default_factory=DeviceSettings)  # `[device]`: memory cap

    def remote_parts(self) -> dict[str, WeightURL]:
        """{component or lora[i]: URL} for every weight named by URL."""
        parts: dict[str, Any] = dict(self.weights.components())
        parts.update((f"lora[{i}]", lo.path) for i, lo in enumerate(self.loras))
        return {k: v for k, v in parts.items() if isinstance(v, WeightURL)}

    def with_weight_storage_options(self, options: Mapping[str, Any]) -> PipelineSpec:
        """The spec with more fsspec options for its weight URLs (a CLI's
        `--weights-storage-option`): a `PROTOCOL:KEY` applies to that protocol, a plain `KEY` to
        every protocol the weight URLs use. Values are never printed."""
        staging = self.staging
        used = sorted({url.protocol for url in self.remote_parts().values()})
        for key, value in options.items():
            protocol, _, name = key.rpartition(":")
            for target in [PROTOCOL_ALIASES.get(protocol, protocol)] if protocol else used:
                staging = staging.with_options(target, _nested(name, value))
        return replace(self, staging=staging)

    def download(self, part: str) -> str | None:
        """The command that fetches `part` (a component or `lora[i]`), run in `source.parent`;
        None when the file names none."""
        if part.startswith("lora["):
            return self.loras[int(part[5:-1])].download
        return dict(self.downloads).get(part)

    @property
    def temporal_factor(self) -> int:
        return TEMPORAL_FACTORS[self.family]

    @property
    def spatial_multiple(self) -> int:
        return 16  # VAE 8x and patch 2 in space, for Wan and Mochi alike

    @property
    def experts(self) -> tuple[str, ...]:
        """The denoiser components: Wan2.2's two experts, Wan2.1's transformer, Mochi's dit."""
        if self.family == "mochi":
            return ("dit",)
        return ("transformer", "transformer_2") if self.family == "wan2.2" else ("transformer",)

    @property
    def schedule(self) -> str:
        """The sigma schedule in use: `options.schedule`, with "auto" the family's own."""
        if self.options.schedule != "auto":
            return self.options.schedule
        return "linear_quadratic" if self.family == "mochi" else "shifted"

    def check_weights(self, *, local_only: bool = False) -> None:
        """Raise `PipelineError` naming every weight or LoRA path that does not exist (a URL is
        listed: LIST / HEAD requests, no object read; `WeightsError` if it cannot be). With
        `local_only`, URLs are left to the staging that lists them anyway."""
        self._check_weights(lambda p: (local_only and not isinstance(p, Path)) or self._exists(p))

    def _check_weights(self, exists: Callable[[WeightPath], bool]) -> None:
        comps = self.weights.components().items()
        missing = [f"weights.{c} = {p}" for c, p in comps if not exists(p)]
        missing += [f"lora.path = {lo.path}" for lo in self.loras if not exists(lo.path)]
        if missing:
            raise PipelineError(
                f"{self.source}: weight files not found: {'; '.join(missing)}. Download them "
                "there or edit the paths (relative paths start at the TOML file's folder)."
            )

    def identity(self) -> str:
        """Stable hash of what decides the frames: family, weight files (names and sizes, not
        contents), LoRAs and alphas, and the options in `IDENTITY_OPTIONS`. Item defaults are
        not part of it: they are resolved into each item, whose fingerprint covers them.

        Weights named by URL are listed the same way (names and sizes, checksum files left
        out), so the same files give the same identity on a disk, on S3 or staged in a cache.
        Each URL is listed once, and the identity is computed once per spec object: a run's
        plan and its dispatch use the same one, at one LIST per weight folder.
        """
        cached = self.__dict__.get("_identity")
        if cached is None:
            cached = self._identity_now(RemoteListings(self.staging))
            object.__setattr__(self, "_identity", cached)  # frozen: a memo, not a field
        return cached

    def _identity_now(self, remote: RemoteListings) -> str:
        self._check_weights(lambda p: p.exists() if isinstance(p, Path) else remote.exists(p))
        if self.weights.tiny is not None:
            weights: Any = f"tiny:{self.weights.tiny}-{TINY_VERSION}"
        else:
            comps = self.weights.components().items()
            weights = {c: self._listing(p, remote) for c, p in comps if c != "dit"}
            if self.weights.dit is not None:
                weights["dit"] = self._dit_listing(self.weights.dit, remote)
        loras = [
            [self._listing(lo.path, remote), lo.alpha, lo.kind, lo.expert] for lo in self.loras
        ]
        blob = json.dumps(
            {
                "family": self.family,
                "weights": weights,
                "loras": loras,
                "options": self._identity_options(),
            },
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def _exists(self, path: WeightPath) -> bool:
        if isinstance(path, Path):
            return path.exists()
        return list_source(path, self.staging.options_for(path), missing_ok=True) is not None

    @staticmethod
    def _listing(path: WeightPath, remote: RemoteListings) -> list[tuple[str, int]]:
        if isinstance(path, Path):
            return _file_listing(path)
        return remote.source(path).listing()

    @staticmethod
    def _dit_listing(dit: WeightPath, remote: RemoteListings) -> list[tuple[str, int]]:
        """The DiT file, and the `config.json` beside it (its dims) when there is one."""
        if isinstance(dit, Path):
            config = dit.parent / "config.json"
            extra = _file_listing(config) if dit.is_file() and config.is_file() else []
            return _file_listing(dit) + extra
        source = remote.source(dit)
        extra = [(f.rel, f.size) for f in source.files[1:] if f.rel == "config.json"]
        return source.listing() + (extra if source.is_file else [])

    def _identity_options(self) -> dict[str, Any]:
        """Only options this family uses; a Wan spec on its own schedule hashes as it always did."""
        options = {k: getattr(self.options, k) for k in IDENTITY_OPTIONS}
        if self.family != "wan2.2":
            options.pop("switch_boundary")
        if self.family == "mochi" or self.schedule != "shifted":
            options["schedule"] = self.schedule
        if self.schedule == "linear_quadratic":
            options["threshold_noise"] = self.options.threshold_noise
        if self.family == "mochi":
            options.update({k: getattr(self.options, k) for k in MOCHI_ONLY_OPTIONS})
        if self.options.numerics != "fp32":  # fp32 specs hash as they always did
            options["numerics"] = self.options.numerics
        if self.options.teacache_threshold > 0:  # TeaCache off hashes as it always did
            options["teacache"] = [self.options.teacache_threshold, self.options.teacache_model]
        tile = [getattr(self.options, k) for k in VAE_TILE_OPTIONS]
        if self.options.vae_tiling and any(tile):  # diffusers' own tiles hash as they always did
            options["vae_tile"] = tile
        return options


class RemoteListings:
    """Each weight URL listed once (LIST and HEAD requests only), for one identity. A file also
    has the `config.json` beside it looked up: a Mochi DiT's dims (a file's own listing leaves
    its siblings out, so this changes no other listing)."""

    SIBLINGS = ("config.json",)

    def __init__(self, staging: StagingConfig):
        self.staging = staging
        self._found: dict[WeightURL, Any] = {}

    def _list(self, url: WeightURL):
        if url not in self._found:
            options = self.staging.options_for(url)
            self._found[url] = list_source(url, options, self.SIBLINGS, missing_ok=True)
        return self._found[url]

    def exists(self, url: WeightURL) -> bool:
        return self._list(url) is not None

    def source(self, url: WeightURL):
        found = self._list(url)
        if found is None:
            raise WeightsError(f"{url}: not found (no file or folder there); check the URL")
        return found


def _file_listing(path: Path) -> list[tuple[str, int]]:
    """(name, size) of a file, or of every file under a folder (relative names, sorted).

    Hidden entries are skipped: `hf download --local-dir` keeps changing metadata
    under `.cache/`. So are checksum files (`*.sha256`, `SHA256SUMS`): they describe weights,
    and staging verifies with them.
    """
    if path.is_file():
        return [(path.name, path.stat().st_size)]
    listing = []
    for p in path.rglob("*"):
        rel = p.relative_to(path)
        hidden = any(part.startswith(".") for part in rel.parts)
        checksums = p.name.endswith(SIDECAR_SUFFIX) or p.name == SUMS_FILE
        if p.is_file() and not hidden and not checksums:
            listing.append((str(rel), p.stat().st_size))
    return sorted(listing)


def _nested(dotted: str, value: Any) -> dict[str, Any]:
    """`client_kwargs.endpoint_url` = v -> {"client_kwargs": {"endpoint_url": v}}."""
    head, _, rest = dotted.partition(".")
    return {head: _nested(rest, value) if rest else value}
