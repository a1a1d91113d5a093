"""A pipeline's weight URLs made local: staged for the loaders, or header twins for doctor.

`stage_pipeline(spec, on_progress)` stages every part named by URL (components and LoRAs; a
Mochi DiT file with the `config.json` beside it) into the node's cache and returns the same spec
with local paths, so the family loaders never see a URL. Its `identity()` equals the remote
spec's: the staged trees hold the same names and sizes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from pusa_batch.errors import WeightsError
from pusa_batch.pipelines.spec import PipelineSpec
from pusa_batch.weights import OnProgress, SourceRequest, header_twin, stage_sources

DIT_SIBLINGS = ("config.json",)  # the Mochi loader reads the dims beside the DiT file


def source_requests(spec: PipelineSpec) -> dict[str, SourceRequest]:
    """{component or lora[i]: what to stage} for every part named by URL."""
    return {
        part: SourceRequest(url, DIT_SIBLINGS if part == "dit" else ())
        for part, url in spec.remote_parts().items()
    }


def with_local_paths(spec: PipelineSpec, local: Mapping[str, Path]) -> PipelineSpec:
    components = {k: v for k, v in local.items() if not k.startswith("lora[")}
    loras = tuple(
        replace(lora, path=local.get(f"lora[{i}]", lora.path)) for i, lora in enumerate(spec.loras)
    )
    return replace(spec, weights=replace(spec.weights, **components), loras=loras)


def stage_pipeline(spec: PipelineSpec, on_progress: OnProgress | None = None) -> PipelineSpec:
    """`spec` with every weight URL replaced by its staged local path (unchanged when it names
    none). `on_progress` gets `StagingProgress` events; raises `WeightsError` naming the URL."""
    requests = source_requests(spec)
    if not requests:
        return spec
    paths = stage_sources(list(requests.values()), spec.staging, on_progress)
    return with_local_paths(spec, dict(zip(requests, paths)))


@dataclass(frozen=True)
class HeaderTwins:
    """The spec doctor checks (weight URLs replaced by header twins) and, per part that could
    not be read, the error naming its URL."""

    spec: PipelineSpec
    problems: dict[str, list[str]]
    urls: dict[str, str] = field(default_factory=dict)  # a twin's local path -> its URL

    def shown(self, text: str) -> str:
        """`text` with each twin's local path replaced by the URL it stands for."""
        for local, url in sorted(self.urls.items(), key=lambda kv: -len(kv[0])):
            text = text.replace(local, url)
        return text


def header_twins(spec: PipelineSpec) -> HeaderTwins:
    """Header twins for every weight URL of `spec`: small files and safetensors headers read by
    range, tensor data never (see `weights.headers`)."""
    local: dict[str, Path] = {}
    problems: dict[str, list[str]] = {}
    urls: dict[str, str] = {}
    for part, request in source_requests(spec).items():
        try:
            local[part] = header_twin(request, spec.staging)
            urls[str(local[part])] = str(request.url)
        except WeightsError as e:
            problems[part] = [str(e)]
            local[part] = spec.staging.layout().root / "unreadable" / part  # never exists
    return HeaderTwins(with_local_paths(spec, local), problems, urls)
