"""pusa-batch: batch, resumable video generation with Pusa's frame-level timesteps.

The library's face. Every name is imported on first use (PEP 562), so `import pusa_batch` costs
neither torch nor Ray::

    from pusa_batch import RunConfig, run

    summary = run(RunConfig("manifest.csv", "out/", "pipelines/tiny.toml", workers=2))
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_FACE: dict[str, str] = {
    "run": "pusa_batch.engine.run",
    "RunConfig": "pusa_batch.engine.config",
    "RunSummary": "pusa_batch.engine.config",
    "read_status": "pusa_batch.engine.status",
    "validate_manifest": "pusa_batch.manifest.read",
    "iter_items": "pusa_batch.manifest.read",
    "Item": "pusa_batch.item",
    "load_pipeline_spec": "pusa_batch.pipelines.spec",
    "PipelineSpec": "pusa_batch.pipelines.spec",
    "load_pipeline": "pusa_batch.pipelines",
    "Store": "pusa_batch.store.store",
    "PusaBatchError": "pusa_batch.errors",
    "ManifestError": "pusa_batch.errors",
    "PipelineError": "pusa_batch.errors",
}
_MODULES = ("errors",)

__all__ = ["__version__", *_FACE, *_MODULES]


def __getattr__(name: str) -> Any:
    if name in _FACE:
        value = getattr(importlib.import_module(_FACE[name]), name)
    elif name in _MODULES:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
