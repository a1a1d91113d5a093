"""Weights from URLs: each node stages what its pipeline names once, into a content-addressed
cache, and the loaders read the staged local paths.

A weight path in a pipeline TOML may be an fsspec URL (`s3://`, `gs://`, `https://` for single
files, `file:///` for a shared file system to copy from; a plain path is read in place, as
before). `stage_sources` lists each source (LIST / HEAD only), fetches what the cache lacks with
parallel range reads under a per-file fcntl lock, resumes interrupted `.part` files, verifies
size, sha256 (where a `<name>.sha256` or `SHA256SUMS` file gives one) and safetensors
completeness, and returns local paths; progress goes to a callback as `StagingProgress`.
`header_twin` gives doctor a local folder with small files whole and safetensors headers only.

Modules: `urls` (pure), `remote` (fsspec listings and ranged reads), `cache` (layout, keys, the
lock), `fetch` (one file into its blob), `staging`, `headers`.
"""

from __future__ import annotations

from pusa_batch.weights.cache import CACHE_ENV, CacheLayout, default_cache_root
from pusa_batch.weights.headers import header_twin
from pusa_batch.weights.remote import Source, list_source
from pusa_batch.weights.staging import (
    OnProgress,
    SourceRequest,
    StagingConfig,
    StagingProgress,
    stage_sources,
)
from pusa_batch.weights.urls import WeightURL, is_url, protocol_of, url_problem

__all__ = [
    "CACHE_ENV",
    "CacheLayout",
    "OnProgress",
    "Source",
    "SourceRequest",
    "StagingConfig",
    "StagingProgress",
    "WeightURL",
    "default_cache_root",
    "header_twin",
    "is_url",
    "list_source",
    "protocol_of",
    "stage_sources",
    "url_problem",
]
