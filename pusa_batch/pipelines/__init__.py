"""Pipelines: a TOML spec (`spec.py`) and the loaded model families behind one `Pipeline` API.

`load_pipeline(spec)` is the family registry. It names each family's module as a string and
imports it only when that family is loaded, so reading a spec never imports torch and no family
module imports this one (no cycle between the registry and the families). Weight URLs are staged
on this node first (`staging.stage_pipeline`): the families only ever see local paths.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pusa_batch.pipelines.spec import MOCHI_DIT_FILE, PipelineSpec, load_pipeline_spec
from pusa_batch.pipelines.staging import stage_pipeline

if TYPE_CHECKING:
    import torch

    from pusa_batch.pipelines.base import Pipeline
    from pusa_batch.weights import OnProgress

__all__ = [
    "FAMILY_CLASSES",
    "PipelineSpec",
    "component_paths",
    "load_pipeline",
    "load_pipeline_spec",
    "stage_pipeline",
]

FAMILY_CLASSES: dict[str, str] = {
    "wan2.1": "pusa_batch.pipelines.wan:WanPipeline",
    "wan2.2": "pusa_batch.pipelines.wan:WanPipeline",
    "mochi": "pusa_batch.pipelines.mochi:MochiPipeline",
}


def family_class(family: str) -> Any:
    module, _, name = FAMILY_CLASSES[family].partition(":")
    return getattr(importlib.import_module(module), name)


def component_paths(spec: PipelineSpec) -> dict[str, Path]:
    """Each component's folder or file; the tiny twins are made on first use."""
    spec.check_weights()
    if spec.weights.tiny is not None:
        from pusa_batch.models.tiny import ensure_tiny_model

        root = ensure_tiny_model(spec.weights.tiny)
        paths = {c: root / c for c in ("vae", "text_encoder", "tokenizer", *spec.experts)}
        if spec.family == "mochi":
            paths["dit"] = root / MOCHI_DIT_FILE
        return paths
    return spec.weights.components()


def load_pipeline(
    spec: PipelineSpec | str | Path,
    device: str | torch.device | None = None,
    *,
    storage_options: dict | None = None,
    on_staging: OnProgress | None = None,
) -> Pipeline:
    """Load every component once; `spec` may be a path to a pipeline TOML file.

    `storage_options` are fsspec's, for remote input media. Weight URLs are staged into this
    node's cache first, with `StagingProgress` events to `on_staging`.
    """
    from pusa_batch.pipelines.device import resolve_device, resolve_dtype

    if not isinstance(spec, PipelineSpec):
        spec = load_pipeline_spec(spec)
    dev = resolve_device(device if device is not None else spec.options.device)
    dtype = resolve_dtype(spec.options.dtype, dev)
    spec = stage_pipeline(spec, on_staging)
    return family_class(spec.family).build(spec, component_paths(spec), dev, dtype, storage_options)
