"""The doctor's checks, one function each: `check_*(ctx, ...) -> Check`.

Each reads what it needs through the shared `Context` (headers and meta models read once) and
raises a `PusaBatchError` for a failure that `doctor.diagnose` turns into a "fail" line.
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from pusa_batch.doctor.context import (
    Check,
    Context,
    Tensors,
    count,
    dit_config_source,
    file_count,
    models,
    read_tensors,
    tiny_cache_dir,
)
from pusa_batch.doctor.memory import latent_frames, rope_limit
from pusa_batch.errors import CheckpointError
from pusa_batch.models.loading import check_keys, read_torch_tensors
from pusa_batch.models.mochi_keys import check_state_dict
from pusa_batch.models.wan import check_attention_backend
from pusa_batch.models.wan_keys import is_wan_format, strip_prefix, wan_name_to_diffusers
from pusa_batch.pipelines.spec import PipelineSpec

_DIFFUSERS_MOCHI = ("transformer_blocks.", "patch_embed.", "time_embed.")


def label(part: str) -> str:
    return part if part.startswith("lora[") else f"weights.{part}"


def check_files(ctx: Context) -> Check:
    spec = ctx.spec
    if ctx.paths is None:
        where = tiny_cache_dir(spec.weights.tiny)
        detail = f"tiny twin not in the cache ({where}): it will be generated on first use"
        return Check("files", "warn", detail)
    if ctx.problems:
        lines = missing_file_lines(ctx.problems, spec.download, spec.source.parent)
        return Check("files", "fail", "; ".join(line.strip() for line in lines), lines)
    files = file_count(ctx.paths) + len(spec.loras)
    where = f"tiny twin in {tiny_cache_dir(spec.weights.tiny)}" if spec.weights.tiny else "weights"
    return Check("files", "ok", f"{files} files ({where}, {len(spec.loras)} LoRA file(s))")


NO_DOWNLOAD_HINT = (
    "  (the pipeline file names no download command for these: see pipelines/README.md, "
    '"The model zoo", or add [weights.download])'
)


def missing_file_lines(
    problems: Mapping[str, list[str]], download: Callable[[str], str | None], folder: Path
) -> tuple[str, ...]:
    """One line per missing file, each group of parts followed by the command that fetches them
    (run in `folder`, the pipeline file's, as `(cd FOLDER && COMMAND)`)."""
    groups: dict[str | None, list[str]] = {}
    for part, found in problems.items():
        groups.setdefault(download(part), []).extend(f"{label(part)}: {p}" for p in found)
    lines: list[str] = []
    for command, entries in groups.items():
        lines += entries
        if command is None:
            lines.append(NO_DOWNLOAD_HINT)
        else:
            lines.append(f"  fetch: (cd {shlex.quote(str(folder))} && {command})")
    return tuple(lines)


def check_transformer_keys(ctx: Context, component: str) -> Check:
    if ctx.spec.family == "mochi":
        return check_dit_keys(ctx, component)
    model = ctx.expert(component)
    tensors = ctx.tensors(component)
    got = {k: torch.empty(s, device="meta") for k, (_, s) in _diffusers_names(tensors).items()}
    expected = {k: v.shape for k, v in model.state_dict().items()}
    check_keys(expected, got, str(tensors.path))
    cfg = model.config
    return Check(
        f"keys: {component}",
        "ok",
        f"{len(expected)} tensors match config.json ({cfg.num_layers} layers, "
        f"dim {cfg.inner_dim}, {count(tensors.numel())} parameters)",
    )


def _diffusers_names(tensors: Tensors) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Header keys in diffusers names; unconvertible original-Wan keys keep their own name."""
    entries = strip_prefix(tensors.entries)
    if not is_wan_format(entries):
        return entries
    return {(wan_name_to_diffusers(k) or k): v for k, v in entries.items()}


def check_dit_keys(ctx: Context, component: str) -> Check:
    """The Mochi DiT: genmo names, strict, against `PusaMochiTransformer` on meta (the loader's
    own check, so the doctor and `load_mochi_transformer` accept the same files)."""
    tensors = ctx.tensors(component)
    source = dit_config_source(tensors.path)
    got = tensors.as_meta()
    if any(k.startswith(_DIFFUSERS_MOCHI) for k in got):
        raise CheckpointError(
            f"{tensors.path}: keys are in diffusers' MochiTransformer3DModel layout; convert them "
            "with pusa_batch.models.mochi_keys.diffusers_to_genmo (Pusa V0.5 loads genmo names)"
        )
    model = ctx.expert(component)
    check_state_dict(model, got, f"{tensors.path} (config: {source})")
    cfg = model.config
    return Check(
        f"keys: {component}",
        "ok",
        f"{len(got)} tensors match {source} ({cfg.depth} layers, dim {cfg.hidden_size_x}, "
        f"{count(tensors.numel())} parameters)",
    )


def check_module_keys(ctx: Context, component: str) -> Check:
    """VAE and text encoder: built on `meta` from config.json, compared with the headers."""
    path = ctx.paths[component]
    module = ctx.module(component)
    tensors = ctx.tensors(component)
    expected = {k: v.shape for k, v in module.state_dict().items()}
    tied = getattr(module, "_tied_weights_keys", None)
    for alias, target in (tied if isinstance(tied, dict) else {}).items():
        if alias not in tensors.entries and target in tensors.entries:
            expected.pop(alias, None)  # a tied weight is saved once, under either name
    got = tensors.as_meta()
    check_keys(expected, got, str(path))
    return Check(
        f"keys: {component}",
        "ok",
        f"{len(got)} tensors match config.json "
        f"({type(module).__name__}, {count(tensors.numel())} parameters)",
    )


def check_lora(ctx: Context, index: int) -> Check:
    from pusa_batch.models.lora import merge_lightx2v_lora, merge_pusa_lora

    lora = ctx.spec.loras[index]
    name = f"lora[{index}] {lora.path.name}"
    target = lora_target(ctx.spec, index)
    tensors = _lora_as_meta(lora.path)
    # The merge's own validation, on meta tensors: the same keys and shapes pass or fail.
    merge = merge_pusa_lora if lora.kind == "pusa" else merge_lightx2v_lora
    report = merge(ctx.expert(target), tensors, lora.alpha, source=str(lora.path))
    return Check(
        name,
        "ok",
        f"{lora.kind} LoRA: {len(tensors)} tensors fit {report.merged} weights of {target} "
        f"({report.summary()})",
    )


def lora_target(spec: PipelineSpec, index: int) -> str:
    low = spec.family == "wan2.2" and spec.loras[index].expert == "low"
    return "transformer_2" if low else "transformer"


def _lora_as_meta(path: Path) -> dict[str, torch.Tensor]:
    """LoRA tensors as meta tensors of their shapes (`alpha` scalars keep a dummy value)."""
    if path.suffix == ".safetensors":
        shapes = {k: s for k, (_, s) in read_tensors(path).entries.items()}
    else:
        shapes = {k: tuple(v.shape) for k, v in read_torch_tensors(path).items()}
    return {
        k: torch.ones(s) if math.prod(s) == 1 else torch.empty(s, device="meta")
        for k, s in shapes.items()
    }


def check_dtypes(ctx: Context) -> Check:
    device, dtype = ctx.run()
    check_attention_backend(ctx.spec.options.attention)
    run = f"run: {device.type} {short(dtype)} (options.dtype = {ctx.spec.options.dtype})"
    if ctx.paths is None:
        return Check("dtype", "ok", f"tiny twin not built yet; {run}")
    found = {c: ctx.tensors(c).dtypes() for c in models(ctx.spec) if c not in ctx.problems}
    listing = ", ".join(f"{c} {'/'.join(d)}" for c, d in found.items()) or "no weights found"
    mochi = ctx.spec.family == "mochi"
    trained = "Mochi and T5 are bf16/fp32 models" if mochi else "Wan and umT5 are bf16 models"
    warnings = [
        f"{c} has fp16 weights ({trained}; fp16 can overflow)"
        for c, d in found.items()
        if "fp16" in d
    ]
    if device.type == "cpu" and dtype == torch.bfloat16:
        warnings.append('bf16 on the CPU is slow and lossy; use dtype = "auto" (fp32 on CPU)')
    if dtype == torch.float16:
        model = "the Mochi DiT" if mochi else "Wan"
        warnings.append(f"options.dtype = fp16 can overflow in {model}; use bf16 on CUDA")
    status = "warn" if warnings else "ok"
    return Check("dtype", status, "; ".join([f"{listing}; {run}", *warnings]))


def short(dtype: torch.dtype) -> str:
    return {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}[dtype]


def check_defaults(ctx: Context) -> Check:
    spec, d = ctx.spec, ctx.spec.defaults
    r = spec.temporal_factor
    problems = []
    if d.num_frames < r + 1 or (d.num_frames - 1) % r:
        examples = "163, 19" if r == 6 else "81, 17"
        problems.append(f"num_frames = {d.num_frames} is not {r}k+1 ({examples}, ...)")
    for key in ("height", "width"):
        value = getattr(d, key)
        if value < spec.spatial_multiple or value % spec.spatial_multiple:
            problems.append(f"{key} = {value} is not a multiple of {spec.spatial_multiple}")
    if d.steps < 1:
        problems.append(f"steps = {d.steps} must be >= 1")
    if d.guidance_scale < 1:
        problems.append(f"guidance_scale = {d.guidance_scale} must be >= 1")
    grid = (latent_frames(spec), d.height // 16, d.width // 16)
    limit = rope_limit(ctx)
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
