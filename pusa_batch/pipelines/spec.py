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

Where it lives: the frozen dataclasses and the families they name in `spec_types.py`, the TOML
tables parsed into them in `spec_parse.py`, the checks of their values in `spec_checks.py`. This
module is the face: import the public names from here.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from pusa_batch.errors import PipelineError
from pusa_batch.pipelines.limits import DeviceSettings, Limits
from pusa_batch.pipelines.spec_checks import (
    ATTENTIONS,
    CONDITION_LATENTS,
    DTYPES,
    EXPERTS,
    IDLE_EXPERT,
    LORA_KINDS,
    NUMERICS,
    SCHEDULES,
)
from pusa_batch.pipelines.spec_parse import STAGING_KEYS, TOP_KEYS, parse_pipeline_spec
from pusa_batch.pipelines.spec_types import (
    COMPONENTS,
    DIFFUSERS_VAE_TILE,
    FAMILIES,
    FAMILY_COMPONENTS,
    IDENTITY_OPTIONS,
    MOCHI_DEFAULTS,
    MOCHI_DIT_FILE,
    MOCHI_ONLY_OPTIONS,
    MOCHI_OPTIONS,
    TEMPORAL_FACTORS,
    VAE_TILE_OPTIONS,
    Defaults,
    LoraSpec,
    Options,
    PipelineSpec,
    WeightPath,
    WeightPaths,
)

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

__all__ = [
    "ATTENTIONS",
    "COMPONENTS",
    "CONDITION_LATENTS",
    "DIFFUSERS_VAE_TILE",
    "DTYPES",
    "EXPERTS",
    "FAMILIES",
    "FAMILY_COMPONENTS",
    "IDENTITY_OPTIONS",
    "IDLE_EXPERT",
    "LORA_KINDS",
    "MOCHI_DEFAULTS",
    "MOCHI_DIT_FILE",
    "MOCHI_ONLY_OPTIONS",
    "MOCHI_OPTIONS",
    "NUMERICS",
    "SCHEDULES",
    "STAGING_KEYS",
    "TEMPORAL_FACTORS",
    "TOP_KEYS",
    "VAE_TILE_OPTIONS",
    "Defaults",
    "DeviceSettings",
    "Limits",
    "LoraSpec",
    "Options",
    "PipelineSpec",
    "WeightPath",
    "WeightPaths",
    "load_pipeline_spec",
    "parse_pipeline_spec",
]


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
