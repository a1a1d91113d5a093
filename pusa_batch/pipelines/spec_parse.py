"""A pipeline TOML's tables parsed into a `PipelineSpec`: each table's keys, types and paths.

Relative weight paths are resolved against the TOML file's folder and `~` is expanded; a URL is
kept as a `WeightURL`. The checks of the values live in `spec_checks.py`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from pusa_batch.models.layouts import DECLARED as DECLARED_LAYOUTS
from pusa_batch.models.layouts import root_components
from pusa_batch.pipelines.limits import MOCHI_LIMITS, Limits, limits_problem, parse_device
from pusa_batch.pipelines.spec_checks import (
    EXPERTS,
    LORA_KINDS,
    Where,
    check_command,
    check_defaults,
    check_options,
    has_type,
    is_number,
)
from pusa_batch.pipelines.spec_types import (
    FAMILIES,
    FAMILY_COMPONENTS,
    MOCHI_DEFAULTS,
    MOCHI_ONLY_OPTIONS,
    MOCHI_OPTIONS,
    TEMPORAL_FACTORS,
    Defaults,
    LoraSpec,
    Options,
    PipelineSpec,
    WeightPath,
    WeightPaths,
)
from pusa_batch.weights import StagingConfig, WeightURL, is_url, url_problem
from pusa_batch.weights.fetch import MIB
from pusa_batch.weights.urls import PROTOCOL_ALIASES

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


def parse_pipeline_spec(raw: Mapping[str, Any], source: Path) -> PipelineSpec:
    where = Where(source)
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
    check_defaults(where, defaults, TEMPORAL_FACTORS[family])
    raw_options = where.table(raw, "options")
    if not mochi:
        for key in sorted(set(raw_options) & set(MOCHI_ONLY_OPTIONS)):
            raise where.fail(f"options.{key}", "only mochi pipelines use it; remove it")
    options = _parse_dataclass(where, raw_options, MOCHI_OPTIONS if mochi else Options(), "options")
    check_options(where, options, family)
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


def _weight_path(where: Where, key: str, base: Path, value: str) -> WeightPath:
    """A URL as written (a `WeightURL`), else a path resolved against the TOML's folder."""
    if not is_url(value):
        return _resolve(base, value)
    problem = url_problem(value)
    if problem:
        raise where.fail(key, f"{problem}, got {str(WeightURL(value))!r}")
    return WeightURL(value)


def _parse_staging(
    where: Where, raw: Mapping[str, Any], base: Path, used: list[str]
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
        if not has_type(value, int) or not low <= value <= high:
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


def _parse_weights(where: Where, raw: Mapping[str, Any], family: str, base: Path) -> WeightPaths:
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
    if isinstance(root, Path) and root.is_file():
        raise where.fail("weights.root", f"{root} is a file: give the model's folder")
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
    where: Where, raw: Mapping[str, Any], weights: Mapping[str, Any], family: str
) -> tuple[tuple[str, str], ...]:
    """(component, command) pairs: a component's own command, else `root`'s when the component
    lives under `root` (not given a path of its own)."""
    where.no_unknown(raw, ("root", *FAMILY_COMPONENTS[family]), "weights.download.")
    commands = {k: check_command(where, f"weights.download.{k}", v) for k, v in raw.items()}
    if "tiny" in weights and commands:
        raise where.fail("weights.download", "a tiny twin is generated, never downloaded")
    pairs = []
    for comp in FAMILY_COMPONENTS[family]:
        command = commands.get(comp) or (commands.get("root") if comp not in weights else None)
        if command:
            pairs.append((comp, command))
    return tuple(pairs)


def _parse_loras(where: Where, raw: Any, family: str, base: Path) -> tuple[LoraSpec, ...]:
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
        if not is_number(alpha) or not 0 < alpha <= 10:
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
            download = check_command(where, f"{key}.download", download)
        where_from = _weight_path(where, f"{key}.path", base, path)
        lora = LoraSpec(where_from, float(alpha), kind, expert or "high", download)
        out.append(lora)
    return tuple(out)


def _parse_dataclass(where: Where, raw: Mapping[str, Any], base: Any, prefix: str):
    """`base` (a dataclass instance) with the values in `raw`, each type-checked."""
    fields = asdict(base)
    where.no_unknown(raw, tuple(fields), f"{prefix}.")
    values = {}
    for key, value in raw.items():
        want = type(fields[key])
        if not has_type(value, want):
            raise where.fail(f"{prefix}.{key}", f"must be {want.__name__}, got {value!r}")
        values[key] = float(value) if want is float else value
    return replace(base, **values)
