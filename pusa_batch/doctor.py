"""`pusa-batch doctor`: check a pipeline in seconds, without reading any tensor data.

`diagnose(spec)` runs small checks, each returning a `Check(name, status, detail)` with status
"ok", "warn" or "fail": the files exist (every shard an index lists), the safetensors headers have
exactly the keys and shapes of a model built on the `meta` device from its config, the LoRAs fit
their base, the weight and run dtypes, a memory estimate against the device, and the defaults.
Only headers are read (`.pt` LoRAs are memory-mapped, their tensors never touched), so a 14B
checkpoint is checked as fast as a tiny one. A tiny spec is checked in the cache, never built.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

from pusa_batch.errors import CheckpointError, PipelineError, PusaBatchError
from pusa_batch.models.loading import (
    check_keys,
    read_safetensors_header,
    read_transformer_config,
    weight_files,
)
from pusa_batch.models.tiny import TINY_VERSION, default_cache_root
from pusa_batch.models.wan import FP32_MODULES, PusaWanTransformer, check_attention_backend
from pusa_batch.models.wan_keys import is_wan_format, strip_prefix, wan_name_to_diffusers
from pusa_batch.pipeline import resolve_device, resolve_dtype
from pusa_batch.pipeline_spec import PipelineSpec

STATUSES = ("ok", "warn", "fail")
GIB = 1024**3
_DTYPE_NAMES = {"F32": "fp32", "BF16": "bf16", "F16": "fp16", "F64": "fp64"}
_TOKENIZER_FILES = ("tokenizer.json", "spiece.model", "tokenizer_config.json")


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # "ok" | "warn" | "fail"
    detail: str


@dataclass(frozen=True)
class Report:
    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        return all(c.status != "fail" for c in self.checks)

    def summary(self) -> str:
        n = {s: sum(c.status == s for c in self.checks) for s in STATUSES}
        warnings = "warning" if n["warn"] == 1 else "warnings"
        return (
            f"{len(self.checks)} checks: {n['ok']} ok, {n['warn']} {warnings}, {n['fail']} failed"
        )


@dataclass(frozen=True)
class Tensors:
    """One component's weights as its safetensors headers describe them."""

    path: Path
    entries: dict[str, tuple[str, tuple[int, ...]]]  # key -> (dtype, shape)

    def numel(self) -> int:
        return sum(math.prod(shape) for _, shape in self.entries.values())

    def dtypes(self) -> list[str]:
        return sorted({_DTYPE_NAMES.get(d, d.lower()) for d, _ in self.entries.values()})


# ------------------------------------------------------------------------------ reading


def read_tensors(path: Path) -> Tensors:
    """Header union over every shard; fails on keys in two shards or truncated files."""
    files = weight_files(path)
    entries: dict[str, tuple[str, tuple[int, ...]]] = {}
    for file in files:
        header = read_safetensors_header(file)
        header.pop("__metadata__", None)
        clash = sorted(set(header) & set(entries))
        if clash:
            raise CheckpointError(f"{file}: key(s) also in another shard: {', '.join(clash[:10])}")
        with file.open("rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
        end = 8 + size + max((info["data_offsets"][1] for info in header.values()), default=0)
        if file.stat().st_size < end:
            raise CheckpointError(
                f"{file}: truncated ({file.stat().st_size} bytes, the header needs {end}); "
                "download it again"
            )
        entries.update((k, (v["dtype"], tuple(v["shape"]))) for k, v in header.items())
    return Tensors(path, entries)


def tiny_cache_dir(kind: str) -> Path:
    """Where `ensure_tiny_model(kind)` keeps (or would build) the tiny twin."""
    return default_cache_root() / f"{kind}-{TINY_VERSION}"


class _Context:
    """What the checks share: paths, file problems, and headers and meta models read once."""

    def __init__(self, spec: PipelineSpec, memory_budget: int | None):
        self.spec = spec
        self.memory_budget = memory_budget
        self.paths = _component_paths(spec)
        self.problems = {} if self.paths is None else _file_problems(spec, self.paths)
        self._cache: dict[tuple[str, str], Any] = {}

    def _once(self, key: tuple[str, str], make: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def tensors(self, component: str) -> Tensors:
        return self._once(("tensors", component), lambda: read_tensors(self.paths[component]))

    def expert(self, component: str) -> PusaWanTransformer:
        """The transformer built on `meta` from its config.json (no memory, no data)."""

        def build() -> PusaWanTransformer:
            config = read_transformer_config(self.paths[component])
            with torch.device("meta"):
                return PusaWanTransformer(config)

        return self._once(("expert", component), build)

    def run(self) -> tuple[torch.device, torch.dtype]:
        device = resolve_device(self.spec.options.device)
        return device, resolve_dtype(self.spec.options.dtype, device)


def _component_paths(spec: PipelineSpec) -> dict[str, Path] | None:
    """The spec's component folders; for a tiny spec the cached twin's, None if not built."""
    if spec.weights.tiny is None:
        return spec.weights.components()
    root = tiny_cache_dir(spec.weights.tiny)
    if not (root / "model_index.json").is_file():
        return None
    return {c: root / c for c in (*_models(spec), "tokenizer")}


def _file_problems(spec: PipelineSpec, paths: dict[str, Path]) -> dict[str, list[str]]:
    """{component or lora[i]: problems} for every part whose files are missing."""
    problems = {c: _component_problems(c, p) for c, p in paths.items()}
    for i, lora in enumerate(spec.loras):
        problems[f"lora[{i}]"] = [] if lora.path.is_file() else [f"{lora.path} not found"]
    return {k: v for k, v in problems.items() if v}


def _component_problems(component: str, path: Path) -> list[str]:
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


# ------------------------------------------------------------------------------ checks


def check_files(ctx: _Context) -> Check:
    spec = ctx.spec
    if ctx.paths is None:
        where = tiny_cache_dir(spec.weights.tiny)
        detail = f"tiny twin not in the cache ({where}): it will be generated on first use"
        return Check("files", "warn", detail)
    if ctx.problems:
        shown = (f"{_label(k)}: {'; '.join(v)}" for k, v in ctx.problems.items())
        return Check("files", "fail", " | ".join(shown))
    files = sum(len(list(p.iterdir())) for p in ctx.paths.values()) + len(spec.loras)
    where = f"tiny twin in {tiny_cache_dir(spec.weights.tiny)}" if spec.weights.tiny else "weights"
    return Check("files", "ok", f"{files} files ({where}, {len(spec.loras)} LoRA file(s))")


def _label(part: str) -> str:
    return part if part.startswith("lora[") else f"weights.{part}"


def check_transformer_keys(ctx: _Context, component: str) -> Check:
    name = f"keys: {component}"
    model = ctx.expert(component)
    tensors = ctx.tensors(component)
    got = {k: torch.empty(s, device="meta") for k, (_, s) in _diffusers_names(tensors).items()}
    expected = {k: v.shape for k, v in model.state_dict().items()}
    check_keys(expected, got, str(tensors.path))
    cfg = model.config
    return Check(
        name,
        "ok",
        f"{len(expected)} tensors match config.json ({cfg.num_layers} layers, "
        f"dim {cfg.inner_dim}, {_count(tensors.numel())} parameters)",
    )


def _diffusers_names(tensors: Tensors) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Header keys in diffusers names; unconvertible original-Wan keys keep their own name."""
    entries = strip_prefix(tensors.entries)
    if not is_wan_format(entries):
        return entries
    return {(wan_name_to_diffusers(k) or k): v for k, v in entries.items()}


def check_module_keys(ctx: _Context, component: str) -> Check:
    """VAE and text encoder: built on `meta` from config.json, compared with the headers."""
    path = ctx.paths[component]
    module = _build_on_meta(component, path)
    tensors = ctx.tensors(component)
    expected = {k: v.shape for k, v in module.state_dict().items()}
    tied = getattr(module, "_tied_weights_keys", None)
    for alias, target in (tied if isinstance(tied, dict) else {}).items():
        if alias not in tensors.entries and target in tensors.entries:
            expected.pop(alias, None)  # a tied weight is saved once, under either name
    got = {k: torch.empty(s, device="meta") for k, (_, s) in tensors.entries.items()}
    check_keys(expected, got, str(path))
    return Check(
        f"keys: {component}",
        "ok",
        f"{len(got)} tensors match config.json "
        f"({type(module).__name__}, {_count(tensors.numel())} parameters)",
    )


def _build_on_meta(component: str, path: Path) -> torch.nn.Module:
    """The diffusers Wan VAE or the transformers umT5 encoder, as the pipeline loads them."""
    from diffusers import AutoencoderKLWan
    from transformers import UMT5Config, UMT5EncoderModel

    with torch.device("meta"):
        if component == "vae":
            return AutoencoderKLWan.from_config(AutoencoderKLWan.load_config(str(path)))
        return UMT5EncoderModel(UMT5Config.from_pretrained(str(path)))


def check_lora(ctx: _Context, index: int) -> Check:
    from pusa_batch.models.lora import merge_lightx2v_lora, merge_pusa_lora

    lora = ctx.spec.loras[index]
    name = f"lora[{index}] {lora.path.name}"
    target = _lora_target(ctx.spec, index)
    tensors = _lora_as_meta(lora.path)
    # The merge's own validation, on meta tensors: the same keys and shapes pass or fail.
    merge = merge_pusa_lora if lora.kind == "pusa" else merge_lightx2v_lora
    count = merge(ctx.expert(target), tensors, lora.alpha, source=str(lora.path))
    return Check(
        name, "ok", f"{lora.kind} LoRA: {len(tensors)} tensors fit {count} weights of {target}"
    )


def _lora_target(spec: PipelineSpec, index: int) -> str:
    low = spec.family == "wan2.2" and spec.loras[index].expert == "low"
    return "transformer_2" if low else "transformer"


def _lora_as_meta(path: Path) -> dict[str, torch.Tensor]:
    """LoRA tensors as meta tensors of their shapes (`alpha` scalars keep a dummy value)."""
    if path.suffix == ".safetensors":
        shapes = {k: s for k, (_, s) in read_tensors(path).entries.items()}
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:  # torch raises many kinds for a bad file
            raise CheckpointError(
                f"{path}: not readable with torch.load(weights_only=True) "
                f"({e}); convert it to safetensors"
            ) from e
        for wrapper in ("state_dict", "module"):  # as `read_state_dict` unwraps them
            if isinstance(obj, dict) and set(obj) == {wrapper}:
                obj = obj[wrapper]
        if not isinstance(obj, dict):
            raise CheckpointError(f"{path}: expected a dictionary of tensors")
        shapes = {k: tuple(v.shape) for k, v in obj.items() if isinstance(v, torch.Tensor)}
    return {
        k: torch.ones(s) if math.prod(s) == 1 else torch.empty(s, device="meta")
        for k, s in shapes.items()
    }


def check_dtypes(ctx: _Context) -> Check:
    device, dtype = ctx.run()
    check_attention_backend(ctx.spec.options.attention)
    run = f"run: {device.type} {_short(dtype)} (options.dtype = {ctx.spec.options.dtype})"
    if ctx.paths is None:
        return Check("dtype", "ok", f"tiny twin not built yet; {run}")
    found = {c: ctx.tensors(c).dtypes() for c in _models(ctx.spec) if c not in ctx.problems}
    listing = ", ".join(f"{c} {'/'.join(d)}" for c, d in found.items()) or "no weights found"
    warnings = [
        f"{c} has fp16 weights (Wan and umT5 are bf16 models; fp16 can overflow)"
        for c, d in found.items()
        if "fp16" in d
    ]
    if device.type == "cpu" and dtype == torch.bfloat16:
        warnings.append('bf16 on the CPU is slow and lossy; use dtype = "auto" (fp32 on CPU)')
    if dtype == torch.float16:
        warnings.append("options.dtype = fp16 can overflow in Wan; use bf16 on CUDA")
    status = "warn" if warnings else "ok"
    return Check("dtype", status, "; ".join([f"{listing}; {run}", *warnings]))


def _short(dtype: torch.dtype) -> str:
    return {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}[dtype]


def _models(spec: PipelineSpec) -> list[str]:
    return [*spec.experts, "vae", "text_encoder"]


def estimate_memory(spec: PipelineSpec) -> dict[str, int]:
    """Bytes on the run device per part (see `_memory_parts`); reads headers and configs only."""
    ctx = _Context(spec, None)
    return _memory_parts(ctx, *ctx.run())


def check_memory(ctx: _Context) -> Check:
    device, dtype = ctx.run()
    parts = _memory_parts(ctx, device, dtype)
    total = sum(parts.values())
    limit, where = _device_memory(device, ctx.memory_budget)
    shown = ", ".join(f"{k} {_bytes(v)}" for k, v in parts.items())
    detail = f"estimate {_bytes(total)} ({shown}) vs {where}"
    if limit is None:
        return Check("memory", "warn", detail)
    if total > limit:
        return Check(
            "memory",
            "fail",
            f"{detail}: does not fit; use a smaller size, "
            'text_encoder_offload, idle_expert = "offload" or a bigger device',
        )
    return Check("memory", "warn" if total > 0.9 * limit else "ok", detail)


def _memory_parts(ctx: _Context, device: torch.device, dtype: torch.dtype) -> dict[str, int]:
    """Bytes on the run device: each resident expert (fp32 norms and modulation tables), the
    text encoder unless offloaded to the CPU, the fp32 VAE, and one forward's activations."""
    opts, size = ctx.spec.options, dtype.itemsize
    on_cpu = device.type == "cpu"
    experts = ctx.spec.experts if on_cpu or opts.idle_expert == "keep" else ctx.spec.experts[:1]
    parts = {e: _expert_bytes(ctx.expert(e), size) for e in experts}
    if on_cpu or not opts.text_encoder_offload:
        parts["text_encoder"] = ctx.tensors("text_encoder").numel() * size
    parts["vae"] = ctx.tensors("vae").numel() * 4
    parts["activations"] = activation_bytes(ctx.spec, ctx.expert("transformer"), size)
    return parts


def _expert_bytes(model: PusaWanTransformer, size: int) -> int:
    def keeps_fp32(name: str) -> bool:
        return name.endswith("scale_shift_table") or any(
            part in FP32_MODULES for part in name.split(".")
        )

    return sum(p.numel() * (4 if keeps_fp32(n) else size) for n, p in model.named_parameters())


def activation_bytes(spec: PipelineSpec, model: PusaWanTransformer, size: int) -> int:
    """Rough peak of one transformer forward at the defaults' size.

    tokens = F_lat * (H/16) * (W/16). Inside a block the residual stream, the normalised input
    and the FFN's two hidden tensors live at once: (3 * dim + 2 * ffn_dim) per token at the run
    dtype, times 2 with batched CFG, plus one fp32 (tokens, dim) tensor for the fp32 norms.
    SDPA keeps attention itself at O(tokens * dim). The VAE decode is not included.
    """
    d, cfg = spec.defaults, model.config
    tokens = _latent_frames(spec) * (d.height // 16) * (d.width // 16)
    batch = 2 if spec.options.batched_cfg and d.guidance_scale != 1.0 else 1
    return (
        batch * tokens * (3 * cfg.inner_dim + 2 * cfg.ffn_dim) * size + tokens * cfg.inner_dim * 4
    )


def _latent_frames(spec: PipelineSpec) -> int:
    return (spec.defaults.num_frames - 1) // spec.temporal_factor + 1


def _device_memory(device: torch.device, budget: int | None) -> tuple[int | None, str]:
    if budget is not None:
        return budget, f"budget {_bytes(budget)}"
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device.index or 0)
        return props.total_memory, f"{props.name}: {_bytes(props.total_memory)}"
    available = host_ram_available()
    if available is None:
        return None, "CPU run: host RAM unknown (no /proc/meminfo, no psutil)"
    return available, f"CPU run: host RAM {_bytes(available)} available"


def host_ram_available() -> int | None:
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    m = re.search(r"^MemAvailable:\s+(\d+) kB", text, re.MULTILINE)
    return int(m.group(1)) * 1024 if m else None


def check_defaults(ctx: _Context) -> Check:
    spec, d = ctx.spec, ctx.spec.defaults
    problems = []
    if d.num_frames < 5 or (d.num_frames - 1) % spec.temporal_factor:
        problems.append(f"num_frames = {d.num_frames} is not 4k+1 (81, 17, ...)")
    for key in ("height", "width"):
        value = getattr(d, key)
        if value < spec.spatial_multiple or value % spec.spatial_multiple:
            problems.append(f"{key} = {value} is not a multiple of {spec.spatial_multiple}")
    if d.steps < 1:
        problems.append(f"steps = {d.steps} must be >= 1")
    if d.guidance_scale < 1:
        problems.append(f"guidance_scale = {d.guidance_scale} must be >= 1")
    grid = (_latent_frames(spec), d.height // 16, d.width // 16)
    limit = _rope_limit(ctx)
    if not problems and limit is not None and max(grid) > limit:
        problems.append(f"latent grid {grid} exceeds the transformer's rope_max_seq_len {limit}")
    where = f"{spec.source} [defaults]"
    if problems:
        return Check("defaults", "fail", f"{where}: " + "; ".join(problems))
    size = f"{d.num_frames} frames {d.width}x{d.height}, {d.steps} steps, cfg {d.guidance_scale:g}"
    if any(lo.kind == "lightx2v" for lo in spec.loras) and (d.steps > 8 or d.guidance_scale != 1):
        return Check(
            "defaults",
            "warn",
            f"{size}: a LightX2V LoRA expects about 4 steps and guidance_scale = 1.0",
        )
    return Check("defaults", "ok", size)


def _rope_limit(ctx: _Context) -> int | None:
    """The transformer's rope_max_seq_len, or None when its config cannot be read."""
    if ctx.paths is None or "transformer" in ctx.problems:
        return None
    try:
        return ctx.expert("transformer").config.rope_max_seq_len
    except PusaBatchError:
        return None  # the keys check reports it


def _count(n: int) -> str:
    return _human(n, ((1e9, "B"), (1e6, "M"), (1e3, "K"), (1, "")))


def _bytes(n: int) -> str:
    return _human(n, ((GIB, " GiB"), (1024**2, " MiB"), (1024, " KiB"), (1, " B")))


def _human(n: int, units: tuple[tuple[float, str], ...]) -> str:
    scale, unit = next((s, u) for s, u in units if n >= s or s == 1)
    return f"{n / scale:.3g}{unit}"


# ------------------------------------------------------------------------------ entry point


def diagnose(spec: PipelineSpec, *, memory_budget: int | None = None) -> Report:
    """Every check on `spec`; `memory_budget` (bytes) replaces the device's memory if given."""
    ctx = _Context(spec, memory_budget)
    steps: list[tuple[str, list[str], Callable[[], Check]]] = [
        ("files", [], lambda: check_files(ctx))
    ]
    for expert in spec.experts:
        steps.append((f"keys: {expert}", [expert], partial(check_transformer_keys, ctx, expert)))
    for comp in ("vae", "text_encoder"):
        steps.append((f"keys: {comp}", [comp], partial(check_module_keys, ctx, comp)))
    for i, lora in enumerate(spec.loras):
        needs = [f"lora[{i}]", _lora_target(spec, i)]
        steps.append((f"lora[{i}] {lora.path.name}", needs, partial(check_lora, ctx, i)))
    steps += [
        ("dtype", [], lambda: check_dtypes(ctx)),
        ("memory", _models(spec), lambda: check_memory(ctx)),
        ("defaults", [], lambda: check_defaults(ctx)),
    ]
    return Report(tuple(_run(ctx, name, needs, step) for name, needs, step in steps))


def _run(ctx: _Context, name: str, needs: list[str], step: Callable[[], Check]) -> Check:
    if ctx.paths is None and needs:
        return Check(name, "ok", "skipped: the tiny twin is generated by our own code on first use")
    missing = [_label(n) for n in needs if n in ctx.problems]
    if missing:
        return Check(name, "warn", f"not checked: files missing for {', '.join(missing)}")
    try:
        return step()
    except PusaBatchError as e:
        return Check(name, "fail", str(e))
    except (OSError, ValueError, KeyError, RuntimeError) as e:  # unreadable configs or headers
        return Check(name, "fail", f"{type(e).__name__}: {e}")


DEVICE_CHECKS = ("dtype", "memory")


def preflight(spec: PipelineSpec, *, device_checks: bool = True) -> Report:
    """The doctor's checks as `run` uses them before starting actors: any failure raises.

    `device_checks=False` leaves out the checks about this machine's device (dtype, memory),
    for a driver that joins a cluster whose workers hold the GPUs.
    """
    report = diagnose(spec)
    failed = [
        check
        for check in report.checks
        if check.status == "fail" and (device_checks or check.name not in DEVICE_CHECKS)
    ]
    if failed:
        lines = "; ".join(f"{check.name}: {check.detail}" for check in failed)
        raise PipelineError(
            f"{spec.source}: the pipeline failed its checks ({lines}). "
            f"Run `pusa-batch doctor --pipeline {spec.source}` for the full report."
        )
    return report
