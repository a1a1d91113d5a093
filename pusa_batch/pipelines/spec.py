"""The TOML pipeline spec: which weights, which LoRAs, the item defaults and the run options.

`load_pipeline_spec(path)` parses and validates a file once; the result is frozen. Every problem
is a `PipelineError` naming the file and the key. Relative weight paths are resolved against the
TOML file's folder and `~` is expanded. `pipelines/README.md` documents every key.

Download commands (`[weights.download]`, a `[[lora]]`'s `download`) are shell commands kept as
written, run from the TOML file's folder: `PipelineSpec.download(part)` gives the one that fetches
a part, for `doctor` to print beside a missing file. A file without them works as before.

Weights from URLs: any weight path (`root`, a component, a LoRA) may be an fsspec URL (`s3://`,
`gs://`, `https://` for one file, `file:///` for a shared file system to copy from), kept as a
`WeightURL`; `[staging]` says where a node's cache is and gives fsspec options per protocol.
`pipelines.staging.stage_pipeline` turns such a spec into one with local paths. `identity()`
lists remote weights as it lists local ones (names and sizes): the same files on S3 or on disk
give the same identity, so item fingerprints survive a move; URLs, endpoints and storage options
(secrets) are never part of it.

`[limits]` (the largest item `validate` accepts) and `[device]` (`memory_gib`: the memory one
worker may plan for, in place of what its device reports) live in `limits.py`.

Families: `wan2.1` and `wan2.2` (Pusa V1, 4x temporal VAE) and `mochi` (Pusa V0.5, 6x temporal
VAE, its own defaults: 848x480x163 at 30 fps, cfg 4.5, the linear-quadratic schedule).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from pusa_batch.errors import PipelineError
from pusa_batch.item import FITS
from pusa_batch.models.layouts import DECLARED as DECLARED_LAYOUTS
from pusa_batch.models.layouts import root_components
from pusa_batch.models.teacache import COEFFICIENTS as TEACACHE_MODELS
from pusa_batch.models.tiny import TINY_VERSION
from pusa_batch.pipelines.limits import (
    MOCHI_LIMITS,
    DeviceSettings,
    Limits,
    limits_problem,
    parse_device,
)
from pusa_batch.weights import StagingConfig, WeightURL, is_url, list_source, url_problem
from pusa_batch.weights.fetch import MIB
from pusa_batch.weights.remote import SIDECAR_SUFFIX, SUMS_FILE
from pusa_batch.weights.urls import PROTOCOL_ALIASES

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

FAMILIES = ("wan2.1", "wan2.2", "mochi")
COMPONENTS = ("transformer", "transformer_2", "dit", "vae", "text_encoder", "tokenizer")
FAMILY_COMPONENTS = {
    "wan2.1": ("transformer", "vae", "text_encoder", "tokenizer"),
    "wan2.2": ("transformer", "transformer_2", "vae", "text_encoder", "tokenizer"),
    "mochi": ("dit", "vae", "text_encoder", "tokenizer"),
}
TEMPORAL_FACTORS = {"wan2.1": 4, "wan2.2": 4, "mochi": 6}
MOCHI_DIT_FILE = "pusa_v0_dit.safetensors"  # = models.mochi.CHECKPOINT_NAME (no torch import here)
SCHEDULES = ("auto", "shifted", "linear_quadratic")
CONDITION_LATENTS = ("sample", "mean")
MOCHI_ONLY_OPTIONS = ("condition_latents", "normalize_condition")
DTYPES = ("auto", "bf16", "fp16", "fp32")
ATTENTIONS = ("sdpa", "flash", "sage")  # flash and sage: checked installed by doctor and load
IDLE_EXPERT = ("keep", "offload")
NUMERICS = ("fp32", "upstream")  # docs/parity.md
LORA_KINDS = ("pusa", "lightx2v")
EXPERTS = ("high", "low")
TOP_KEYS = (
    "name",
    "family",
    "weights",
    "lora",
    "defaults",
    "options",
    "limits",
    "device",
    "staging",
)
STAGING_KEYS = ("cache", "chunk_mb", "parallel", "storage_options")
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

    def check_weights(self) -> None:
        """Raise `PipelineError` naming every weight or LoRA path that does not exist (a URL is
        listed: LIST / HEAD requests, no object read; `WeightsError` if it cannot be)."""
        comps = self.weights.components().items()
        missing = [f"weights.{c} = {p}" for c, p in comps if not self._exists(p)]
        missing += [f"lora.path = {lo.path}" for lo in self.loras if not self._exists(lo.path)]
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
        """
        self.check_weights()
        if self.weights.tiny is not None:
            weights: Any = f"tiny:{self.weights.tiny}-{TINY_VERSION}"
        else:
            weights = {c: self._listing(p) for c, p in self.weights.components().items()}
            if self.weights.dit is not None:
                weights["dit"] = self._dit_listing(self.weights.dit)
        loras = [[self._listing(lo.path), lo.alpha, lo.kind, lo.expert] for lo in self.loras]
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

    def _listing(self, path: WeightPath) -> list[tuple[str, int]]:
        if isinstance(path, Path):
            return _file_listing(path)
        return list_source(path, self.staging.options_for(path)).listing()

    def _dit_listing(self, dit: WeightPath) -> list[tuple[str, int]]:
        """The DiT file, and the `config.json` beside it (its dims) when there is one."""
        if isinstance(dit, Path):
            config = dit.parent / "config.json"
            extra = _file_listing(config) if dit.is_file() and config.is_file() else []
            return _file_listing(dit) + extra
        source = list_source(dit, self.staging.options_for(dit), ("config.json",))
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


# ------------------------------------------------------------------------------------ parsing


class _Where:
    """Names the file and key in every error."""

    def __init__(self, source: Path):
        self.source = source

    def fail(self, key: str, message: str) -> PipelineError:
        return PipelineError(f"{self.source}: {key}: {message}")

    def table(self, raw: Mapping[str, Any], key: str) -> Mapping[str, Any]:
        value = raw.get(key, {})
        if not isinstance(value, Mapping):
            raise self.fail(key, f"must be a table ([{key}]), got {type(value).__name__}")
        return value

    def no_unknown(self, raw: Mapping[str, Any], allowed: tuple[str, ...], prefix: str) -> None:
        unknown = sorted(set(raw) - set(allowed))
        if unknown:
            names = ", ".join(f"{prefix}{k}" for k in unknown)
            raise self.fail(names, f"unknown key; allowed here: {', '.join(allowed)}")


def load_pipeline_spec(path: str | os.PathLike) -> PipelineSpec:
    """Read and validate a pipeline TOML file."""
    source = Path(path).expanduser().resolve()
    try:
        if not stat.S_ISREG(source.stat().st_mode):  # a FIFO or a device would block reading
            raise PipelineError(
                f"{source}: not a regular file (a folder, FIFO or device); give the pipeline's "
                ".toml file"
            )
        raw = tomllib.loads(source.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise PipelineError(f"{source}: pipeline file not found") from e
    except (OSError, UnicodeDecodeError) as e:
        raise PipelineError(f"{source}: cannot read the pipeline file ({e})") from e
    except tomllib.TOMLDecodeError as e:
        raise PipelineError(f"{source}: not valid TOML ({e})") from e
    return parse_pipeline_spec(raw, source)


def parse_pipeline_spec(raw: Mapping[str, Any], source: Path) -> PipelineSpec:
    where = _Where(source)
    where.no_unknown(raw, TOP_KEYS, "")
    family = raw.get("family")
    if family not in FAMILIES:
        raise where.fail("family", f"must be one of {', '.join(FAMILIES)}, got {family!r}")
    name = raw.get("name", source.stem)
    if not isinstance(name, str) or not name:
        raise where.fail("name", "must be a non-empty string")
    raw_weights = dict(where.table(raw, "weights"))
    raw_download = where.table(raw_weights, "download")
    raw_weights.pop("download", None)
    weights = _parse_weights(where, raw_weights, family, source.parent)
    downloads = _parse_downloads(where, raw_download, raw_weights, family)
    loras = _parse_loras(where, raw.get("lora", []), family, source.parent)
    urls = [*weights.components().values(), *(lo.path for lo in loras)]
    used = sorted({u.protocol for u in urls if isinstance(u, WeightURL)})
    staging = _parse_staging(where, where.table(raw, "staging"), source.parent, used)
    mochi = family == "mochi"
    base = MOCHI_DEFAULTS if mochi else Defaults()
    defaults = _parse_dataclass(where, where.table(raw, "defaults"), base, "defaults")
    _check_defaults(where, defaults, TEMPORAL_FACTORS[family])
    raw_options = where.table(raw, "options")
    if not mochi:
        for key in sorted(set(raw_options) & set(MOCHI_ONLY_OPTIONS)):
            raise where.fail(f"options.{key}", "only mochi pipelines use it; remove it")
    options = _parse_dataclass(where, raw_options, MOCHI_OPTIONS if mochi else Options(), "options")
    _check_options(where, options, family)
    base_limits = MOCHI_LIMITS if mochi else Limits()
    limits = _parse_dataclass(where, where.table(raw, "limits"), base_limits, "limits")
    problem = limits_problem(limits)
    if problem:
        raise where.fail(*problem)
    device = parse_device(where.table(raw, "device"))
    if isinstance(device, tuple):
        raise where.fail(*device)
    return PipelineSpec(
        name, family, source, weights, loras, defaults, options, limits, downloads, staging, device
    )


def _resolve(base: Path, value: str) -> Path:
    p = Path(os.path.expanduser(value))
    return p if p.is_absolute() else (base / p).resolve()


def _weight_path(where: _Where, key: str, base: Path, value: str) -> WeightPath:
    """A URL as written (a `WeightURL`), else a path resolved against the TOML's folder."""
    if not is_url(value):
        return _resolve(base, value)
    problem = url_problem(value)
    if problem:
        raise where.fail(key, f"{problem}, got {str(WeightURL(value))!r}")
    return WeightURL(value)


def _parse_staging(
    where: _Where, raw: Mapping[str, Any], base: Path, used: list[str]
) -> StagingConfig:
    """`[staging]`: `cache` (a folder), `chunk_mb`, `parallel`, and `[staging.storage_options.
    PROTOCOL]` tables of fsspec options for the weight URLs of that protocol."""
    where.no_unknown(raw, STAGING_KEYS, "staging.")
    cache = raw.get("cache")
    if cache is not None and (not isinstance(cache, str) or not cache or is_url(cache)):
        raise where.fail("staging.cache", f"must be a local folder (a path), got {cache!r}")
    numbers = {"chunk_mb": (64, 1, 4096), "parallel": (8, 1, 64)}
    values = {}
    for key, (default, low, high) in numbers.items():
        value = raw.get(key, default)
        if not _has_type(value, int) or not low <= value <= high:
            raise where.fail(
                f"staging.{key}", f"must be an integer in {low}..{high}, got {value!r}"
            )
        values[key] = value
    options: dict[str, dict[str, Any]] = {}
    for protocol, table in where.table(raw, "storage_options").items():
        key = f"staging.storage_options.{protocol}"
        if not isinstance(table, Mapping):
            raise where.fail(key, "must be a table of fsspec options for that protocol's URLs")
        canonical = PROTOCOL_ALIASES.get(protocol.lower(), protocol.lower())
        if canonical not in used:
            uses = ", ".join(f"{u}://" for u in used) or "none"
            raise where.fail(key, f"no weight URL here is {protocol}:// (the weights use: {uses})")
        options[canonical] = dict(table)
    return StagingConfig(
        cache=_resolve(base, cache) if cache is not None else None,
        chunk_bytes=values["chunk_mb"] * MIB,
        parallel=values["parallel"],
        storage_options=options,
    )


def _parse_weights(where: _Where, raw: Mapping[str, Any], family: str, base: Path) -> WeightPaths:
    if family != "wan2.2" and "transformer_2" in raw:
        raise where.fail("weights.transformer_2", "only a wan2.2 pipeline has a second expert")
    allowed = ("tiny", "root", "layout", *FAMILY_COMPONENTS[family])
    where.no_unknown(raw, allowed, "weights.")
    for key, value in raw.items():
        if not isinstance(value, str) or not value:
            raise where.fail(f"weights.{key}", f"must be a non-empty string, got {value!r}")
    if raw.get("layout", "auto") not in DECLARED_LAYOUTS or ("layout" in raw and "root" not in raw):
        raise where.fail(
            "weights.layout",
            f"must be one of {', '.join(DECLARED_LAYOUTS)}, with a root (the layout the root holds "
            f"before it is downloaded; a root that exists is detected), got {raw['layout']!r}",
        )
    if "tiny" in raw:
        if raw["tiny"] != family:
            raise where.fail(
                "weights.tiny", f"must be {family!r} (the family), got {raw['tiny']!r}"
            )
        if len(raw) > 1:
            raise where.fail("weights", "`tiny` uses generated weights: give no other weight keys")
        return WeightPaths(tiny=family)
    root = _weight_path(where, "weights.root", base, raw["root"]) if "root" in raw else None
    # diffusers or original layout: detected from the root's files (models/layouts.py)
    under_root = {} if root is None else root_components(root, family, raw.get("layout", "auto"))
    paths: dict[str, WeightPath] = {}
    for comp in FAMILY_COMPONENTS[family]:
        if comp in raw:
            paths[comp] = _weight_path(where, f"weights.{comp}", base, raw[comp])
        elif root is not None:
            paths[comp] = under_root[comp]
        else:
            raise where.fail(f"weights.{comp}", "missing: give it, or `root` (a model folder)")
    return WeightPaths(**paths)


def _parse_downloads(
    where: _Where, raw: Mapping[str, Any], weights: Mapping[str, Any], family: str
) -> tuple[tuple[str, str], ...]:
    """(component, command) pairs: a component's own command, else `root`'s when the component
    lives under `root` (not given a path of its own)."""
    where.no_unknown(raw, ("root", *FAMILY_COMPONENTS[family]), "weights.download.")
    commands = {k: _check_command(where, f"weights.download.{k}", v) for k, v in raw.items()}
    if "tiny" in weights and commands:
        raise where.fail("weights.download", "a tiny twin is generated, never downloaded")
    pairs = []
    for comp in FAMILY_COMPONENTS[family]:
        command = commands.get(comp) or (commands.get("root") if comp not in weights else None)
        if command:
            pairs.append((comp, command))
    return tuple(pairs)


def _check_command(where: _Where, key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise where.fail(key, f"must be a shell command (a non-empty string), got {value!r}")
    return value.strip()


def _parse_loras(where: _Where, raw: Any, family: str, base: Path) -> tuple[LoraSpec, ...]:
    if not isinstance(raw, list):
        raise where.fail("lora", "must be an array of tables ([[lora]])")
    if raw and family == "mochi":
        raise where.fail("lora", "mochi pipelines take no LoRAs (Pusa V0.5 is a full fine-tune)")
    out = []
    for i, entry in enumerate(raw):
        key = f"lora[{i}]"
        if not isinstance(entry, Mapping):
            raise where.fail(key, "must be a table with path and alpha")
        where.no_unknown(entry, ("path", "alpha", "kind", "expert", "download"), f"{key}.")
        path, alpha = entry.get("path"), entry.get("alpha")
        if not isinstance(path, str) or not path:
            raise where.fail(f"{key}.path", "missing: the LoRA file (.pt or .safetensors)")
        if not _is_number(alpha) or not 0 < alpha <= 10:
            raise where.fail(f"{key}.alpha", f"must be a number in (0, 10], got {alpha!r}")
        kind = entry.get("kind", "pusa")
        if kind not in LORA_KINDS:
            raise where.fail(f"{key}.kind", f"must be one of {', '.join(LORA_KINDS)}")
        expert = entry.get("expert")
        if family == "wan2.2" and expert not in EXPERTS:
            raise where.fail(f"{key}.expert", 'wan2.2 LoRAs need expert = "high" or "low"')
        if family != "wan2.2" and expert is not None:
            raise where.fail(f"{key}.expert", "only wan2.2 pipelines have experts")
        download = entry.get("download")
        if download is not None:
            download = _check_command(where, f"{key}.download", download)
        where_from = _weight_path(where, f"{key}.path", base, path)
        lora = LoraSpec(where_from, float(alpha), kind, expert or "high", download)
        out.append(lora)
    return tuple(out)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _has_type(value: Any, want: type) -> bool:
    if want is float:
        return _is_number(value)
    if want is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, want)


def _parse_dataclass(where: _Where, raw: Mapping[str, Any], base: Any, prefix: str):
    """`base` (a dataclass instance) with the values in `raw`, each type-checked."""
    fields = asdict(base)
    where.no_unknown(raw, tuple(fields), f"{prefix}.")
    values = {}
    for key, value in raw.items():
        want = type(fields[key])
        if not _has_type(value, want):
            raise where.fail(f"{prefix}.{key}", f"must be {want.__name__}, got {value!r}")
        values[key] = float(value) if want is float else value
    return replace(base, **values)


def _check_defaults(where: _Where, d: Defaults, r: int) -> None:
    if d.num_frames < r + 1 or (d.num_frames - 1) % r:
        examples = "163, 19" if r == 6 else "81, 17"
        raise where.fail(
            "defaults.num_frames",
            f"must be {r}k+1 and >= {r + 1} ({examples}...), got {d.num_frames}",
        )
    for key in ("height", "width"):
        value = getattr(d, key)
        if value < 16 or value % 16:
            raise where.fail(f"defaults.{key}", f"must be a positive multiple of 16, got {value}")
    checks = {
        "fps": d.fps >= 1,
        "steps": 1 <= d.steps <= 1000,
        "seed": 0 <= d.seed < 2**32,
        "guidance_scale": d.guidance_scale >= 1.0,
        "shift": d.shift > 0,
    }
    for key, ok in checks.items():
        if not ok:
            raise where.fail(f"defaults.{key}", f"out of range: {getattr(d, key)!r}")
    for key in ("image_fit", "video_fit"):
        if getattr(d, key) not in FITS:
            raise where.fail(
                f"defaults.{key}", f"must be one of {', '.join(FITS)}, got {getattr(d, key)!r}"
            )


def _check_options(where: _Where, o: Options, family: str) -> None:
    choices = {
        "dtype": DTYPES,
        "attention": ATTENTIONS,
        "idle_expert": IDLE_EXPERT,
        "schedule": SCHEDULES,
        "condition_latents": CONDITION_LATENTS,
        "numerics": NUMERICS,
    }
    for key, allowed in choices.items():
        if getattr(o, key) not in allowed:
            raise where.fail(f"options.{key}", f"must be one of {', '.join(allowed)}")
    if o.device != "auto" and o.device.split(":")[0] not in ("cpu", "cuda"):
        raise where.fail("options.device", f"must be auto, cpu, cuda or cuda:N, got {o.device!r}")
    if not 0 < o.switch_boundary < 1:
        raise where.fail("options.switch_boundary", "must be between 0 and 1 (0.875 for Wan2.2)")
    if not 1 <= o.text_max_length <= 4096:
        raise where.fail("options.text_max_length", "must be in 1..4096 (Wan uses 512)")
    if o.prompt_cache_size < 0:
        raise where.fail("options.prompt_cache_size", "must be >= 0")
    if not 0 < o.threshold_noise < 1:
        raise where.fail("options.threshold_noise", "must be between 0 and 1 (Mochi uses 0.025)")
    if family == "mochi" and o.attention != "sdpa":
        raise where.fail("options.attention", 'the Mochi DiT runs on sdpa only: use "sdpa"')
    _check_speed_options(where, o, family)
    _check_vae_tile(where, o, family)


def _check_speed_options(where: _Where, o: Options, family: str) -> None:
    """`compile` and TeaCache are Wan options; the threshold is >= 0, the model one of
    upstream's polynomials."""
    if family == "mochi" and o.compile:
        raise where.fail("options.compile", "only wan pipelines compile their DiT blocks")
    if not 0 <= o.teacache_threshold <= 10:
        raise where.fail(
            "options.teacache_threshold",
            f"must be 0 (off) or a positive number up to 10, got {o.teacache_threshold:g}",
        )
    if family == "mochi" and o.teacache_threshold > 0:
        raise where.fail("options.teacache_threshold", "TeaCache is for wan pipelines only")
    if o.teacache_model not in TEACACHE_MODELS:
        raise where.fail(
            "options.teacache_model", f"must be one of {', '.join(TEACACHE_MODELS)} (upstream's)"
        )


def _check_vae_tile(where: _Where, o: Options, family: str) -> None:
    """Tile and stride: 0 (diffusers' own) or positive multiples of 8 pixels (one latent), the
    stride no larger than its tile, and only with `vae_tiling = true` on a Wan pipeline."""
    given = [k for k in VAE_TILE_OPTIONS if getattr(o, k)]
    for key in VAE_TILE_OPTIONS:
        value = getattr(o, key)
        if value < 0 or value % 8:
            raise where.fail(
                f"options.{key}", f"must be 0 or a positive multiple of 8 pixels, got {value}"
            )
    if given and family == "mochi":
        raise where.fail(f"options.{given[0]}", "only wan pipelines take VAE tile sizes")
    if given and not o.vae_tiling:
        raise where.fail(f"options.{given[0]}", "takes effect only with vae_tiling = true")
    for side in ("height", "width"):
        tile = getattr(o, f"vae_tile_{side}") or DIFFUSERS_VAE_TILE[0]
        stride = getattr(o, f"vae_tile_stride_{side}") or DIFFUSERS_VAE_TILE[1]
        if stride > tile:
            raise where.fail(
                f"options.vae_tile_stride_{side}",
                f"{stride} is larger than the tile ({tile}; vae_tile_{side}): it would leave gaps",
            )
